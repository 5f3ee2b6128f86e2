//! `element "hostname" name="NAME"`: the image's host name (DIB leaves it to cloud-init). Needs
//! no package.
//!
//! Writes `/etc/hostname` (`NAME`); in `/etc/hosts` the `127.0.1.1` line becomes
//! `127.0.1.1 NAME [SHORT]` (added after `127.0.0.1` if missing; a Debian-like file is created
//! if there is none). A later `packages` layer resets `/etc/hostname` to `localhost` (host-leak
//! scrub): put `hostname` after the package sets.

use super::{
    read_text, Definition, Element, Failure, ImageTree, Param, ParamError, Params, Parsed,
};

pub static DEFINITION: Definition = Definition {
    name: "hostname",
    version: 1,
    params: &[Param::required("name")],
    parse,
};

fn parse(p: &Params<'_>) -> Parsed {
    let name = p.get("name").unwrap_or_default();
    if !is_hostname(name) {
        return Err(vec![ParamError::new(
            "name",
            format!("`{name}` is not a host name"),
            "not a host name",
            "a host name is dot-separated labels of letters, digits and `-` (not at either \
             end), each at most 63 characters, at most 253 in all, e.g. `web1` or \
             `web1.example.org`",
        )]);
    }
    Ok(Box::new(Hostname { name: name.into() }))
}

fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[derive(Debug)]
struct Hostname {
    name: String,
}

impl Element for Hostname {
    fn apply(&self, image: &mut dyn ImageTree) -> Result<(), Failure> {
        let name = &self.name;
        let mode = image.mode("etc/hostname").unwrap_or(0o644);
        image.write("etc/hostname", format!("{name}\n").as_bytes(), mode)?;
        let old = read_text(image, "etc/hosts")?;
        let new = hosts_with(old.as_deref(), name);
        let mode = image.mode("etc/hosts").unwrap_or(0o644);
        image.write("etc/hosts", new.as_bytes(), mode)
    }
}

/// `/etc/hosts` with a `127.0.1.1` line for `name` (`FQDN SHORT` when it has a domain).
fn hosts_with(old: Option<&str>, name: &str) -> String {
    let short = name.split('.').next().unwrap_or(name);
    let ours = if short != name {
        format!("127.0.1.1\t{name} {short}")
    } else {
        format!("127.0.1.1\t{name}")
    };
    let Some(old) = old else {
        return format!(
            "127.0.0.1\tlocalhost\n{ours}\n\n\
             # The following lines are desirable for IPv6 capable hosts\n\
             ::1     localhost ip6-localhost ip6-loopback\n\
             ff02::1 ip6-allnodes\n\
             ff02::2 ip6-allrouters\n"
        );
    };
    let first = |l: &str| l.split_whitespace().next().map(str::to_string);
    let mut out: Vec<String> = Vec::new();
    let mut placed = false;
    for line in old.lines() {
        if first(line).as_deref() == Some("127.0.1.1") {
            if !placed {
                out.push(ours.clone());
                placed = true;
            }
            continue;
        }
        out.push(line.to_string());
    }
    if !placed {
        let at = out
            .iter()
            .position(|l| first(l).as_deref() == Some("127.0.0.1"))
            .map_or(0, |i| i + 1);
        out.insert(at, ours);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::super::tests::{params, run, text, tree};
    use super::super::Configured;
    use super::*;

    #[test]
    fn hostname_writes_hostname_and_replaces_the_127_0_1_1_line() {
        let mut t = tree(&[
            ("etc/hostname", "localhost\n"),
            (
                "etc/hosts",
                "127.0.0.1\tlocalhost\n127.0.1.1\told\n::1 localhost\n",
            ),
        ]);
        run("hostname", &[("name", "web1.example.org")], &mut t).unwrap();
        assert_eq!(text(&t, "etc/hostname"), "web1.example.org\n");
        assert_eq!(
            text(&t, "etc/hosts"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tweb1.example.org web1\n::1 localhost\n"
        );
        // No 127.0.1.1 line yet: added after 127.0.0.1.
        assert_eq!(
            hosts_with(Some("# c\n127.0.0.1 localhost\n::1 x\n"), "db"),
            "# c\n127.0.0.1 localhost\n127.0.1.1\tdb\n::1 x\n"
        );
        assert!(hosts_with(None, "db").starts_with("127.0.0.1\tlocalhost\n127.0.1.1\tdb\n"));
    }

    #[test]
    fn bad_host_names_are_refused() {
        let long = format!("{}.{}", "a".repeat(63), "b".repeat(63));
        assert!(is_hostname(&long));
        let too_long = [long.as_str(); 3].join(".");
        for bad in [
            "-web",
            "web-",
            "web_1",
            "a..b",
            ".a",
            "",
            &"x".repeat(64),
            &too_long,
        ] {
            assert!(!is_hostname(bad), "{bad}");
            let e = &Configured::new("hostname", params(&[("name", bad)])).unwrap_err()[0];
            assert_eq!(e.param.as_deref(), Some("name"));
        }
        assert!(Configured::new("hostname", params(&[("name", "1")])).is_ok());
    }
}
