//! `element "dhcp-all-interfaces"` (DIB's `dhcp-all-interfaces`): DHCP on every Ethernet
//! interface through ifupdown. No parameters; needs `ifupdown isc-dhcp-client`.
//!
//! Writes `/etc/network/interfaces.d/imgspec-dhcp`: `auto /en*=eth`, `allow-hotplug /eth*=eth`,
//! `iface eth inet dhcp` (ifupdown maps every `en*` NIC to the logical `eth` at boot; `eth*`
//! ones when they appear); a `source /etc/network/interfaces.d/*` line in
//! `/etc/network/interfaces` if it has none (the file is created, with `lo`, if missing).

use super::{read_text, Definition, Element, Failure, ImageTree, Params, Parsed};

pub static DEFINITION: Definition = Definition {
    name: "dhcp-all-interfaces",
    version: 1,
    params: &[],
    parse,
};

fn parse(_: &Params<'_>) -> Parsed {
    Ok(Box::new(DhcpAllInterfaces))
}

#[derive(Debug)]
struct DhcpAllInterfaces;

impl Element for DhcpAllInterfaces {
    fn packages(&self) -> Vec<&'static str> {
        vec!["ifupdown", "isc-dhcp-client"]
    }

    fn apply(&self, image: &mut dyn ImageTree) -> Result<(), Failure> {
        image.write(FILE, TEXT.as_bytes(), 0o644)?;
        let old = read_text(image, "etc/network/interfaces")?;
        if let Some(new) = interfaces_with_source(old.as_deref()) {
            let mode = image.mode("etc/network/interfaces").unwrap_or(0o644);
            image.write("etc/network/interfaces", new.as_bytes(), mode)?;
        }
        Ok(())
    }
}

pub(crate) const FILE: &str = "etc/network/interfaces.d/imgspec-dhcp";
const TEXT: &str = "\
# Written by imgspec (element \"dhcp-all-interfaces\"): DHCP on every Ethernet interface.
# Predictable names (en*) are brought up at boot; old-style eth* ones when they appear.
auto /en*=eth
allow-hotplug /eth*=eth
iface eth inet dhcp
";

/// `/etc/network/interfaces` that reads `interfaces.d`, or None if it already does.
fn interfaces_with_source(old: Option<&str>) -> Option<String> {
    match old {
        None => Some(
            "# interfaces(5) file used by ifup(8) and ifdown(8)\n\
             # Include files from /etc/network/interfaces.d:\n\
             source /etc/network/interfaces.d/*\n\
             \n\
             auto lo\n\
             iface lo inet loopback\n"
                .into(),
        ),
        Some(text) => {
            let sources = text.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                matches!(w.first(), Some(&"source") | Some(&"source-directory"))
                    && w.get(1)
                        .is_some_and(|p| p.starts_with("/etc/network/interfaces.d"))
            });
            if sources {
                return None;
            }
            let mut s = text.to_string();
            if !s.is_empty() && !s.ends_with('\n') {
                s.push('\n');
            }
            s.push_str(
                "\n# Added by imgspec (element \"dhcp-all-interfaces\")\n\
                 source /etc/network/interfaces.d/*\n",
            );
            Some(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{run, text, tree};
    use super::*;

    #[test]
    fn dhcp_writes_the_mapping_and_sources_interfaces_d() {
        let mut t = tree(&[(
            "etc/network/interfaces",
            "auto lo\niface lo inet loopback\n",
        )]);
        run("dhcp-all-interfaces", &[], &mut t).unwrap();
        let d = text(&t, FILE);
        for l in [
            "auto /en*=eth",
            "allow-hotplug /eth*=eth",
            "iface eth inet dhcp",
        ] {
            assert!(d.lines().any(|x| x == l), "{l} in {d}");
        }
        assert_eq!(t.tree.entries[FILE].mode, 0o644);
        assert!(
            text(&t, "etc/network/interfaces").ends_with("\nsource /etc/network/interfaces.d/*\n")
        );
        // A file that already reads interfaces.d is left alone.
        let debian = "source /etc/network/interfaces.d/*\n";
        assert_eq!(interfaces_with_source(Some(debian)), None);
        assert_eq!(
            interfaces_with_source(Some("source-directory /etc/network/interfaces.d\n")),
            None
        );
        assert!(interfaces_with_source(None)
            .unwrap()
            .contains("source /etc/network/interfaces.d/*\n"));
    }
}
