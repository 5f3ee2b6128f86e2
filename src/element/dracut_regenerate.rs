//! `element "dracut-regenerate"` (DIB's `dracut-regenerate`): the image's initramfs made again
//! with every driver, not only those of the machine it was made on. An image imported from a
//! VM or a cloud image carries an initramfs that dracut built in host-only mode for that VM's
//! virtual hardware; a bare-metal node's disk controller or network card may not be in it.
//! No parameters, no packages: it uses the image's own initramfs generator.
//!
//! For each kernel of the image (a `/lib/modules/VERSION` with its `/boot/vmlinuz-VERSION`):
//! - **dracut** (Fedora, CentOS, RHEL, …): writes `/etc/dracut.conf.d/90-imgspec-generic.conf`
//!   (`hostonly="no"`, so that later kernel updates stay generic too) and runs
//!   `dracut --force --no-hostonly --reproducible --kver VERSION` (dracut's own path:
//!   `/boot/initramfs-VERSION.img`, Debian's `/boot/initrd.img-VERSION`);
//! - **initramfs-tools** (Debian, Ubuntu): writes
//!   `/etc/initramfs-tools/conf.d/90-imgspec-generic` (`MODULES=most`, which overrides a
//!   `MODULES=dep` a hand installation may have set) and runs `update-initramfs -u -k VERSION`
//!   (`-c` when there is none yet).
//!
//! Both honour `SOURCE_DATE_EPOCH` (the image epoch), so the result is reproducible. An image
//! with no kernel, or with neither generator, is an error that says so. Runs in a chroot of the
//! image, so it needs root.

use super::{Definition, Element, Failure, ImageTree, Params, Parsed};

pub static DEFINITION: Definition = Definition {
    name: "dracut-regenerate",
    version: 1,
    params: &[],
    parse,
};

fn parse(_: &Params<'_>) -> Parsed {
    Ok(Box::new(DracutRegenerate))
}

#[derive(Debug)]
struct DracutRegenerate;

const DRACUT_CONF: &str = "etc/dracut.conf.d/90-imgspec-generic.conf";
const DRACUT_CONF_TEXT: &str =
    "# Written by imgspec (element \"dracut-regenerate\"): an initramfs with every driver,\n\
# not only those of the machine it is made on.\n\
hostonly=\"no\"\n\
hostonly_cmdline=\"no\"\n";
const INITRAMFS_TOOLS_CONF: &str = "etc/initramfs-tools/conf.d/90-imgspec-generic";
const INITRAMFS_TOOLS_CONF_TEXT: &str =
    "# Written by imgspec (element \"dracut-regenerate\"): an initramfs with every driver,\n\
# not only those of the machine it is made on.\n\
MODULES=most\n";

/// The script run in the image: every kernel's initramfs made again by the image's generator.
const SCRIPT: &str = r#"set -e
if command -v dracut >/dev/null; then gen=dracut
elif command -v update-initramfs >/dev/null; then gen=initramfs-tools
else
    echo 'the image has neither dracut nor initramfs-tools: nothing can make its initramfs' >&2
    exit 1
fi
found=
for m in /lib/modules/*/; do
    [ -d "$m" ] || continue
    k=$(basename "$m")
    [ -e "/boot/vmlinuz-$k" ] || continue
    found=1
    echo "dracut-regenerate: $gen, kernel $k"
    if [ "$gen" = dracut ]; then
        dracut --force --no-hostonly --reproducible --kver "$k"
    elif [ -e "/boot/initrd.img-$k" ]; then
        update-initramfs -u -k "$k"
    else
        update-initramfs -c -k "$k"
    fi
done
if [ -z "$found" ]; then
    echo 'the image has no kernel (no /lib/modules/VERSION with its /boot/vmlinuz-VERSION)' >&2
    exit 1
fi
"#;

impl Element for DracutRegenerate {
    fn chroot(&self) -> Option<&'static str> {
        Some("dracut or update-initramfs runs in a chroot of the image")
    }

    fn apply(&self, image: &mut dyn ImageTree) -> Result<(), Failure> {
        let dracut = ["usr/bin/dracut", "usr/sbin/dracut"]
            .iter()
            .any(|p| image.is_file(p));
        if dracut {
            image.write(DRACUT_CONF, DRACUT_CONF_TEXT.as_bytes(), 0o644)?;
        } else if image.mode("etc/initramfs-tools").is_some() {
            image.write(
                INITRAMFS_TOOLS_CONF,
                INITRAMFS_TOOLS_CONF_TEXT.as_bytes(),
                0o644,
            )?;
        }
        image.run(SCRIPT)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Configured;
    use super::*;

    #[test]
    fn takes_no_parameters_and_runs_in_a_chroot() {
        let e = Configured::new("dracut-regenerate", Default::default()).unwrap();
        assert!(e.element().chroot().is_some());
        assert!(e.element().packages().is_empty());
        let err = Configured::new(
            "dracut-regenerate",
            [("hostonly".to_string(), "no".to_string())].into(),
        )
        .unwrap_err();
        assert!(err[0].message.contains("hostonly"), "{err:?}");
    }

    /// The script, run by a real shell against a fake root: only the kernel with its modules
    /// is made again, by the generator the image has.
    #[test]
    fn the_script_picks_the_generator_and_each_kernel() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let log = root.join("log");
        let fake = |name: &str| {
            let p = bin.join(name);
            std::fs::write(
                &p,
                format!("#!/bin/sh\necho {name} \"$@\" >> {}\n", log.display()),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        };
        fake("update-initramfs");
        // The script's absolute paths, rooted in the temporary folder.
        let script = SCRIPT
            .replace("/lib/modules/", &format!("{}/lib/modules/", root.display()))
            .replace("\"/boot/", &format!("\"{}/boot/", root.display()));
        let run = || {
            std::process::Command::new("/bin/sh")
                .args(["-c", &script])
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .output()
                .unwrap()
        };
        let out = run();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("the image has no kernel"),
            "{out:?}"
        );
        for k in ["6.1.0-1", "6.1.0-2"] {
            std::fs::create_dir_all(root.join("lib/modules").join(k)).unwrap();
        }
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.1.0-2"), "k").unwrap();
        std::fs::write(root.join("boot/initrd.img-6.1.0-2"), "i").unwrap();
        assert!(run().status.success());
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "update-initramfs -u -k 6.1.0-2\n"
        );
        fake("dracut");
        std::fs::remove_file(&log).unwrap();
        assert!(run().status.success());
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "dracut --force --no-hostonly --reproducible --kver 6.1.0-2\n"
        );
    }
}
