//! `element "cloud-init" [datasources="ConfigDrive OpenStack"]` (DIB's `cloud-init` and
//! `cloud-init-datasources`): cloud-init with that list of datasources, as Ironic config drives
//! and OpenStack metadata need. Needs `cloud-init`.
//!
//! `datasources` are separated by spaces or commas; repeats and `None` are dropped, and `None`
//! is added last. Writes `/etc/cloud/cloud.cfg.d/91-imgspec-datasources.cfg`:
//! `datasource_list: [ A, B, None ]`.

use super::{Definition, Element, Failure, ImageTree, Param, ParamError, Params, Parsed};

pub static DEFINITION: Definition = Definition {
    name: "cloud-init",
    version: 1,
    params: &[Param::optional("datasources")],
    parse,
};

const DEFAULT_DATASOURCES: &str = "ConfigDrive OpenStack";

fn parse(p: &Params<'_>) -> Parsed {
    let list = p.get("datasources").unwrap_or(DEFAULT_DATASOURCES);
    let mut datasources: Vec<String> = Vec::new();
    for d in list.split([' ', ',', '\t']).filter(|d| !d.is_empty()) {
        if !d.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(vec![ParamError::new(
                "datasources",
                format!("`{d}` is not a cloud-init datasource name"),
                "not a datasource name",
                "datasource names are letters and digits, separated by spaces or commas, e.g. \
                 `ConfigDrive`, `OpenStack`, `NoCloud`, `Ec2`",
            )]);
        }
        if d != "None" && !datasources.iter().any(|x| x == d) {
            datasources.push(d.into());
        }
    }
    if datasources.is_empty() {
        return Err(vec![ParamError::new(
            "datasources",
            format!("`{list}` names no datasource"),
            "no datasource",
            "give at least one, e.g. `ConfigDrive OpenStack` (`None` is not one: it is always \
             added last)",
        )]);
    }
    Ok(Box::new(CloudInit { datasources }))
}

#[derive(Debug)]
struct CloudInit {
    datasources: Vec<String>,
}

impl Element for CloudInit {
    fn packages(&self) -> Vec<&'static str> {
        vec!["cloud-init"]
    }

    fn apply(&self, image: &mut dyn ImageTree) -> Result<(), Failure> {
        image.write(FILE, datasources_cfg(&self.datasources).as_bytes(), 0o644)
    }
}

const FILE: &str = "etc/cloud/cloud.cfg.d/91-imgspec-datasources.cfg";

fn datasources_cfg(datasources: &[String]) -> String {
    let mut list: Vec<&str> = datasources.iter().map(String::as_str).collect();
    list.push("None");
    format!(
        "# Written by imgspec (element \"cloud-init\")\ndatasource_list: [ {} ]\n",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::super::tests::{params, run, text, tree};
    use super::super::Configured;
    use super::*;

    #[test]
    fn cloud_init_lists_datasources_then_none() {
        let mut t = tree(&[]);
        run("cloud-init", &[], &mut t).unwrap();
        assert!(text(&t, FILE).ends_with("\ndatasource_list: [ ConfigDrive, OpenStack, None ]\n"));
        run(
            "cloud-init",
            &[("datasources", "NoCloud, Ec2 None NoCloud")],
            &mut t,
        )
        .unwrap();
        assert!(text(&t, FILE).ends_with("[ NoCloud, Ec2, None ]\n"));
        for bad in ["a]b", "None", "", " , ", "Ec2;rm"] {
            let e = &Configured::new("cloud-init", params(&[("datasources", bad)])).unwrap_err()[0];
            assert_eq!(e.param.as_deref(), Some("datasources"), "{bad}");
        }
    }
}
