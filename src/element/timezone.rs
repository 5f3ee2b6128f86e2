//! `element "timezone" zone="ZONE"`: the image's time zone. Needs `tzdata`.
//!
//! Writes the link `/etc/localtime` → `/usr/share/zoneinfo/ZONE` (an error if that is not a
//! file of the image) and `/etc/timezone` (`ZONE`). `zone` is a name of the tz database: no
//! leading `/`, no empty, `.` or `..` component.

use super::{Definition, Element, Failure, ImageTree, Param, ParamError, Params, Parsed};

pub static DEFINITION: Definition = Definition {
    name: "timezone",
    version: 1,
    params: &[Param::required("zone")],
    parse,
};

fn parse(p: &Params<'_>) -> Parsed {
    let zone = p.get("zone").unwrap_or_default();
    let ok = !zone.is_empty()
        && !zone.starts_with('/')
        && zone
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
    if !ok {
        return Err(vec![ParamError::new(
            "zone",
            format!("`{zone}` is not a time zone name"),
            "not a zone of the tz database",
            "give a zone of the tz database, e.g. `Europe/Paris` or `UTC`",
        )]);
    }
    Ok(Box::new(Timezone { zone: zone.into() }))
}

#[derive(Debug)]
struct Timezone {
    zone: String,
}

impl Element for Timezone {
    fn packages(&self) -> Vec<&'static str> {
        vec!["tzdata"]
    }

    fn apply(&self, image: &mut dyn ImageTree) -> Result<(), Failure> {
        let zone = &self.zone;
        let file = format!("usr/share/zoneinfo/{zone}");
        if !image.is_file(&file) {
            return Err(Failure::Image(format!(
                "time zone `{zone}` does not exist in the image (no file /{file}; tzdata \
                 installs them): give a zone of the tz database, e.g. `Europe/Paris` or `UTC`"
            )));
        }
        image.symlink("etc/localtime", &format!("/{file}"))?;
        image.write("etc/timezone", format!("{zone}\n").as_bytes(), 0o644)
    }
}

#[cfg(test)]
mod tests {
    use imgspec_cache::EntryKind;

    use super::super::tests::{params, run, text, tree};
    use super::super::Configured;

    #[test]
    fn timezone_links_an_existing_zone_only() {
        let mut t = tree(&[("usr/share/zoneinfo/Europe/Paris", "TZif")]);
        t.tree
            .put_symlink("etc/localtime", "/usr/share/zoneinfo/Etc/UTC", 0)
            .unwrap();
        let e = run("timezone", &[("zone", "Mars/Olympus")], &mut t).unwrap_err();
        assert!(e.contains("time zone `Mars/Olympus` does not exist"), "{e}");
        run("timezone", &[("zone", "Europe/Paris")], &mut t).unwrap();
        assert_eq!(
            t.tree.entries["etc/localtime"].kind,
            EntryKind::Symlink {
                target: "/usr/share/zoneinfo/Europe/Paris".into()
            }
        );
        assert_eq!(text(&t, "etc/timezone"), "Europe/Paris\n");
        for bad in [
            "../../etc/passwd",
            "/etc/passwd",
            "Europe/../UTC",
            "a b",
            "",
            "a//b",
        ] {
            let e = &Configured::new("timezone", params(&[("zone", bad)])).unwrap_err()[0];
            assert_eq!(e.param.as_deref(), Some("zone"), "{bad}");
        }
    }
}
