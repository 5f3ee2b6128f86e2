//! `element "grub2"` (DIB's `grub2`): GRUB's tools and modules in the image, and
//! `/etc/default/grub` with `GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200"` and a
//! serial terminal, for `grub-mkconfig`, so that Ironic can install a bootloader for local boot
//! of a partition image. GRUB is not installed on any disk here: Ironic's local boot runs
//! `grub-install`. No parameters; needs [`PACKAGES`].

use super::{Definition, Element, Failure, ImageTree, Params, Parsed};

pub static DEFINITION: Definition = Definition {
    name: "grub2",
    version: 1,
    params: &[],
    parse,
};

/// GRUB's packages: both firmwares' modules and the tools (`grub-install`, `grub-mkconfig`)
/// that Ironic runs inside the image. The bootloader step needs the same set.
pub const PACKAGES: &[&str] = &[
    "grub-common",
    "grub-efi-amd64-bin",
    "grub-pc-bin",
    "grub2-common",
];

fn parse(_: &Params<'_>) -> Parsed {
    Ok(Box::new(Grub2))
}

#[derive(Debug)]
struct Grub2;

impl Element for Grub2 {
    fn packages(&self) -> Vec<&'static str> {
        PACKAGES.to_vec()
    }

    fn apply(&self, image: &mut dyn ImageTree) -> Result<(), Failure> {
        image.write("etc/default/grub", DEFAULT_TEXT.as_bytes(), 0o644)
    }
}

const DEFAULT_TEXT: &str = "\
# Written by imgspec (element \"grub2\"). Read by grub-mkconfig (update-grub) when GRUB is
# installed on the disk, e.g. by Ironic's local boot: imgspec does not run grub-install.
GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT=\"\"
GRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200\"
GRUB_TERMINAL=\"console serial\"
GRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"
GRUB_DISABLE_OS_PROBER=true
";

#[cfg(test)]
mod tests {
    use super::super::tests::{run, text, tree};

    #[test]
    fn grub2_writes_default_grub_with_the_serial_console() {
        let mut t = tree(&[]);
        run("grub2", &[], &mut t).unwrap();
        let g = text(&t, "etc/default/grub");
        assert!(g.contains("\nGRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200\"\n"));
        assert!(g.contains("\nGRUB_TERMINAL=\"console serial\"\n"));
    }
}
