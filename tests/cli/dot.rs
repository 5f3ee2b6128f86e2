//! `imgspec plan --dot`, read back by Graphviz itself.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::Workspace;

const VARIANTS: &str = r#"
template "common" {
    base "tar" path="rootfs.tar"
    files "overlay/"
}
image "one" extends="common" {
    run "echo \"one\" > /etc/variant"
    output "tar"
}
image "two" extends="common" {
    run "echo two > /etc/variant"
    output "tar"
}
"#;

fn graphviz(format: &str, dot: &str) -> String {
    let mut child = Command::new("dot")
        .arg(format!("-T{format}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("Graphviz's `dot` (apt-get install graphviz)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dot.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "dot: {stderr}\n{dot}"
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The plan's distinct steps (by key) and input edges (by the keys at both ends), from `--json`.
fn plan_graph(w: &Workspace) -> (Vec<String>, Vec<(String, String)>) {
    let r = w.run(&["plan", "--json", "variants.kdl"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let mut steps = Vec::new();
    let mut edges = Vec::new();
    for img in v["images"].as_array().unwrap() {
        let by_name: std::collections::HashMap<&str, &str> = img["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].as_str().unwrap(), s["key"].as_str().unwrap()))
            .collect();
        for s in img["steps"].as_array().unwrap() {
            let key = s["key"].as_str().unwrap().to_string();
            for i in s["inputs"].as_array().unwrap() {
                edges.push((by_name[i.as_str().unwrap()].to_string(), key.clone()));
            }
            steps.push(key);
        }
    }
    steps.sort();
    steps.dedup();
    edges.sort();
    edges.dedup();
    (steps, edges)
}

#[test]
fn plan_dot_is_the_plan_graph_and_graphviz_draws_it() {
    let w = Workspace::new();
    w.rootfs_tar("rootfs.tar");
    w.write("overlay/etc/motd", "hello\n");
    w.write("variants.kdl", VARIANTS);
    let (steps, edges) = plan_graph(&w);
    assert_eq!(steps.len(), 10, "{steps:?}");

    let dot = w.run(&["plan", "--dot", "variants.kdl"]).ok().stdout;
    assert_eq!(
        dot,
        w.run(&["plan", "--dot", "variants.kdl"]).ok().stdout,
        "the same plan must give the same text"
    );
    let svg = graphviz("svg", &dot);
    assert!(svg.contains("<svg"), "{svg}");

    // Graphviz's own reading of the graph: one `step` node per distinct step of the plan, one
    // step→step edge per input, an `image` node per image.
    let json: serde_json::Value = serde_json::from_str(&graphviz("json", &dot)).unwrap();
    let objects = json["objects"].as_array().unwrap();
    let name_of = |gvid: &serde_json::Value| {
        objects.iter().find(|o| &o["_gvid"] == gvid).unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let label_of = |name: &str| {
        objects.iter().find(|o| o["name"] == name).unwrap()["label"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let step_nodes: Vec<String> = objects
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_string())
        .filter(|n| n.starts_with("step"))
        .collect();
    assert_eq!(step_nodes.len(), steps.len());
    let image_nodes = objects
        .iter()
        .filter(|o| o["name"].as_str().unwrap().starts_with("image"))
        .count();
    assert_eq!(image_nodes, 2);
    // Each node's label carries its step's short key: map nodes back to the plan's keys.
    let key_of = |node: &str| {
        let label = label_of(node);
        steps
            .iter()
            .find(|k| label.contains(&k[..12]))
            .unwrap_or_else(|| panic!("no plan key in `{label}`"))
            .clone()
    };
    let mut drawn: Vec<(String, String)> = json["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (name_of(&e["tail"]), name_of(&e["head"])))
        .filter(|(t, h)| t.starts_with("step") && h.starts_with("step"))
        .map(|(t, h)| (key_of(&t), key_of(&h)))
        .collect();
    drawn.sort();
    assert_eq!(drawn, edges);
    // Quotes in a label survive the escaping.
    assert!(
        step_nodes
            .iter()
            .any(|n| label_of(n).starts_with("run `echo \"one\" > /etc/variant`\\n")),
        "{dot}"
    );
    // Steps both images use have edges in both images' colours; the others in one.
    let shared_edges = dot
        .lines()
        .filter(|l| l.contains("->") && l.contains(':'))
        .count();
    assert_eq!(
        shared_edges, 1,
        "base → files is the only shared edge\n{dot}"
    );
    assert_eq!(dot.matches("· build").count(), 10, "{dot}");

    w.run(&["build", "variants.kdl"]).ok();
    let dot = w.run(&["plan", "--dot", "variants.kdl"]).ok().stdout;
    assert_eq!(dot.matches("· cached").count(), 10, "{dot}");
    graphviz("svg", &dot);
}

#[test]
fn plan_dot_and_json_conflict() {
    let w = Workspace::new();
    let r = w.run(&["plan", "--dot", "--json", "x.kdl"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}
