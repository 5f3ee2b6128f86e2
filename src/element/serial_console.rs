//! `element "serial-console" [port="ttyS0"] [speed=115200]` (DIB's `serial-console`): a getty
//! on a serial port. Needs no package (systemd's `serial-getty@.service` must be in the image).
//!
//! Writes the link `/etc/systemd/system/getty.target.wants/serial-getty@PORT.service` → the
//! image's `serial-getty@.service` (an error if the image has none); with `speed`, a drop-in
//! `serial-getty@PORT.service.d/imgspec-speed.conf` running agetty at that speed (without it
//! the unit keeps the rate the kernel console set). The kernel command line is the
//! bootloader's `cmdline`.

use super::{Definition, Element, Failure, ImageTree, Param, ParamError, Params, Parsed};

pub static DEFINITION: Definition = Definition {
    name: "serial-console",
    version: 1,
    params: &[Param::optional("port"), Param::optional("speed")],
    parse,
};

/// The rates agetty is given.
const BAUD_RATES: &[u32] = &[
    1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600,
];

fn parse(p: &Params<'_>) -> Parsed {
    let mut refused = Vec::new();
    let port = p.get("port").unwrap_or("ttyS0");
    if port.is_empty() || !port.chars().all(|c| c.is_ascii_alphanumeric()) {
        refused.push(ParamError::new(
            "port",
            format!("`{port}` is not a tty name"),
            "not a tty name",
            "give the name of a tty in /dev, letters and digits, e.g. `ttyS0` or `ttyAMA0`",
        ));
    }
    let speed = p.get("speed").and_then(|s| {
        let rate = s.parse::<u32>().ok().filter(|n| BAUD_RATES.contains(n));
        if rate.is_none() {
            refused.push(ParamError::new(
                "speed",
                format!("`{s}` is not a baud rate"),
                "not a baud rate",
                format!(
                    "give one of {}",
                    BAUD_RATES
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        rate
    });
    if !refused.is_empty() {
        return Err(refused);
    }
    Ok(Box::new(SerialConsole {
        port: port.into(),
        speed,
    }))
}

#[derive(Debug)]
struct SerialConsole {
    port: String,
    speed: Option<u32>,
}

/// Where systemd's own units are (the first is `/usr/lib` on a merged-/usr image).
const SYSTEMD_UNIT_DIRS: &[&str] = &["lib/systemd/system", "usr/lib/systemd/system"];

impl Element for SerialConsole {
    fn apply(&self, image: &mut dyn ImageTree) -> Result<(), Failure> {
        let port = &self.port;
        let template = SYSTEMD_UNIT_DIRS
            .iter()
            .map(|d| format!("{d}/serial-getty@.service"))
            .find(|p| image.is_file(p))
            .ok_or_else(|| {
                Failure::Image(
                    "the image has no `serial-getty@.service` (systemd's): install \
                     `systemd-sysv` in a package set before the element"
                        .into(),
                )
            })?;
        image.symlink(
            &format!("etc/systemd/system/getty.target.wants/serial-getty@{port}.service"),
            &format!("/{template}"),
        )?;
        if let Some(speed) = self.speed {
            image.write(
                &format!("etc/systemd/system/serial-getty@{port}.service.d/imgspec-speed.conf"),
                speed_dropin(speed).as_bytes(),
                0o644,
            )?;
        }
        Ok(())
    }
}

fn speed_dropin(speed: u32) -> String {
    format!(
        "# Written by imgspec (element \"serial-console\"): the getty runs at {speed} baud.\n\
         [Service]\n\
         ExecStart=\n\
         ExecStart=-/sbin/agetty -o '-p -- \\\\u' {speed} - $TERM\n"
    )
}

#[cfg(test)]
mod tests {
    use imgspec_cache::EntryKind;

    use super::super::tests::{params, run, text, tree};
    use super::super::Configured;

    #[test]
    fn serial_console_links_the_images_own_unit() {
        let mut t = tree(&[]);
        let e = run("serial-console", &[], &mut t).unwrap_err();
        assert!(e.contains("serial-getty@.service"), "{e}");
        // Merged /usr: the unit is found through /lib.
        t.put("lib/systemd/system/serial-getty@.service", "[Unit]\n");
        run("serial-console", &[("port", "ttyS1")], &mut t).unwrap();
        let l = &t.tree.entries["etc/systemd/system/getty.target.wants/serial-getty@ttyS1.service"];
        assert_eq!(
            l.kind,
            EntryKind::Symlink {
                target: "/lib/systemd/system/serial-getty@.service".into()
            }
        );
        assert!(!t
            .tree
            .entries
            .contains_key("etc/systemd/system/serial-getty@ttyS1.service.d/imgspec-speed.conf"));
        run("serial-console", &[("speed", "9600")], &mut t).unwrap();
        let dropin = text(
            &t,
            "etc/systemd/system/serial-getty@ttyS0.service.d/imgspec-speed.conf",
        );
        assert!(
            dropin.contains("ExecStart=\nExecStart=-/sbin/agetty -o '-p -- \\\\u' 9600 - $TERM\n"),
            "{dropin}"
        );
    }

    #[test]
    fn bad_ports_and_speeds_are_refused_by_name() {
        for (k, v) in [
            ("speed", "fast"),
            ("speed", "9601"),
            ("speed", "-9600"),
            ("speed", ""),
            ("port", "../tty"),
            ("port", "ttyS0 "),
            ("port", ""),
        ] {
            let e = &Configured::new("serial-console", params(&[(k, v)])).unwrap_err()[0];
            assert_eq!(e.param.as_deref(), Some(k), "{k}={v}");
        }
        // Both at once: both said.
        let e = Configured::new("serial-console", params(&[("port", "a/b"), ("speed", "1")]))
            .unwrap_err();
        let refused: Vec<_> = e.iter().map(|e| e.param.as_deref()).collect();
        assert_eq!(refused, [Some("port"), Some("speed")]);
    }
}
