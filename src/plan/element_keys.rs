//! The keys of every element, with every form its parameters are written in, pinned as the code
//! before elements became data (issue 11) computed them: spec text → model → plan → key. The
//! element's key parts (name, own version, parameters sorted by name, as written) and the
//! packages it adds before itself (the input the key hashes) must stay byte for byte the same,
//! or every cached element layer goes cold. When a change is meant, bump that element's version
//! and update its line here.

use std::path::Path;

use crate::spec;
use crate::steps::{Action, Facts};
use crate::tools::{Tool, ToolError};

struct ConstFacts;

impl Facts for ConstFacts {
    fn tool_version(&self, tool: &Tool) -> Result<String, ToolError> {
        Ok(format!("{} 1.0", tool.program))
    }
    fn file_digest(&self, _: &Path) -> Result<String, std::io::Error> {
        Ok(blake3::hash(b"rootfs.tar").to_hex().to_string())
    }
}

/// (element node as written, key of its step) for an image `base "tar"` + that element.
const CASES: &[(&str, &str)] = &[
    (
        r#"element "dhcp-all-interfaces""#,
        "a3c9502b4ecfe8b84ca45b6fe2ebe535c591f37bd1a18a07a0d1f4e7a3d69b0d",
    ),
    (
        r#"element "serial-console""#,
        "acdb9645661aa57cf4f8e81b3fedcc6c53a03135bf7fe7815007dae56260f75d",
    ),
    (
        r#"element "serial-console" port="ttyS1""#,
        "d634c56b952d8bec9717c46a3333932ee8c7a2518c077d01bf0ee00bd15cbc3c",
    ),
    (
        r#"element "serial-console" port="ttyS0""#,
        "86bae0ee6506476e3fc57144a10666852e2a9c8417c3d8b7861a9ecf59c7f626",
    ),
    (
        r#"element "serial-console" speed=115200"#,
        "7367863a27fa26c1f7c4bd59f8f848c39348472451bdbb816f3f59c718846323",
    ),
    (
        r#"element "serial-console" speed="115200""#,
        "7367863a27fa26c1f7c4bd59f8f848c39348472451bdbb816f3f59c718846323",
    ),
    (
        r#"element "serial-console" speed=0x1c200"#,
        "7367863a27fa26c1f7c4bd59f8f848c39348472451bdbb816f3f59c718846323",
    ),
    (
        r#"element "serial-console" speed="9600" port="ttyAMA0""#,
        "bc94a8c4fbd00f184893d1a744ce02747f8e4755bc9183a79cab6daffed5f6b3",
    ),
    (
        r#"element "hostname" name="web1""#,
        "e2e2d849e6f6e03f55c85a7910daa7749ed6b29bb144143a230538137d8f876b",
    ),
    (
        r#"element "hostname" name="web1.example.org""#,
        "48cf8b1f4bc82387ecb5d4f36051893ea04ba8f0f9f19a67117fa191caaafb4e",
    ),
    (
        r#"element "growroot""#,
        "8be8e9555d8cc14dd66507c6212155d7988aab3ffb8a6cf3f6ba48e84047358c",
    ),
    (
        r#"element "cloud-init""#,
        "349541db248b732e63e6e4f9367c10d16fedb3a7fef32c5180b47f774a76f8a5",
    ),
    (
        r#"element "cloud-init" datasources="ConfigDrive OpenStack""#,
        "2da5d2d0b5d2368b7a08612bf3ba50d4cac1bba90c6ce5156d794b3998997b11",
    ),
    (
        r#"element "cloud-init" datasources="NoCloud, Ec2 None NoCloud""#,
        "0b2c1e8349a4f35f75bbf0236113ce08360aeeeb599000a4f6511000f3580b64",
    ),
    (
        r#"element "timezone" zone="Europe/Paris""#,
        "4c5fc421963ade52cacd1de3ae410b68cc184ecc11642cec92ab31386774e468",
    ),
    (
        r#"element "timezone" zone="UTC""#,
        "edac5503074a5947827f531d851a85fcea08a0c39189fc50228559ef009fa6e4",
    ),
    (
        r#"element "locale" lang="C.UTF-8""#,
        "850cf1b0bb411de5dabb5dab4ffb5cdce11cc8ad49ecb312733e33f937ff9f8d",
    ),
    (
        r#"element "locale" lang="POSIX""#,
        "8d2218947c7a8d11d20435b901c9bbd4ed484a7bd96776595d27b0fba76c17e2",
    ),
    (
        r#"element "locale" lang="fr_FR.UTF-8""#,
        "8e7564c2b016a7e272cad989eebcb4e4989dea9ca3a8a7e901fb10af4cbee4c4",
    ),
    (
        r#"element "grub2""#,
        "921fdb6c071e8a19deafc3ead92f06fb2002377871cb718cfa4275dfa2527a34",
    ),
    (
        r#"element "dracut-regenerate""#,
        "e1ae6874ac486eb5e5c3cb576a78d55248f8adf9951726ec01675ab28dbc1e84",
    ),
];

/// Every element in one image, after a package set, with a user between them: the chain of
/// element keys (each the input of the next).
const CHAIN: &str = r#"
    packages "system" udev
    element "dhcp-all-interfaces"
    element "serial-console" port="ttyS1" speed=57600
    element "timezone" zone="Europe/Paris"
    element "locale" lang="fr_FR.UTF-8"
    element "cloud-init" datasources="ConfigDrive NoCloud"
    element "growroot"
    element "grub2"
    user "ops" groups="adm" sudo=#true shell="/bin/sh"
    element "hostname" name="web1.example.org"
"#;

const CHAIN_KEYS: &[(&str, &str)] = &[
    (
        "element dhcp-all-interfaces",
        "acc09ec275262228e79bbf30e34d55bed6e39b5d4b76384f79c6646141dc2088",
    ),
    (
        "element serial-console port=ttyS1 speed=57600",
        "daaae08dac1983fdb23ce98533f12226d76acd42364c3a0ff101b298085b0ba1",
    ),
    (
        "element timezone zone=Europe/Paris",
        "ce7a37baad8c6a9070934dbd189d36432c8dbc69dbb33fb3f25b9d99bb3a368e",
    ),
    (
        "element locale lang=fr_FR.UTF-8",
        "c998f41dcdee29fcb939570ad07b57b60b0e3b289f4185d5427022caa5bf63dc",
    ),
    (
        "element cloud-init datasources=ConfigDrive NoCloud",
        "d71dea656339b3de68fb4e9efa187029d25b1a312f637519b7e2d76d852407b2",
    ),
    (
        "element growroot",
        "55bcd0768b80385904755b5a73812c4e532e4df19697feb27009251273a081a4",
    ),
    (
        "element grub2",
        "5ad396f67ae1001e0c6ea4cc11177b9511d42ba11afab32a80801d037feb25f3",
    ),
    (
        "element hostname name=web1.example.org",
        "b98d959b9b57434bfe8b872c173a0a52613bf94b3cc7ff08dcfde6bd71d6b1be",
    ),
];

fn plan_of(body: &str) -> crate::plan::Plan {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("rootfs.tar"), b"").unwrap();
    let file = d.path().join("keys.kdl");
    std::fs::write(
        &file,
        format!(
            "image \"keys\" {{\n    base \"tar\" path=\"rootfs.tar\"\n    {body}\n    output \"tar\"\n}}\n"
        ),
    )
    .unwrap();
    let spec = spec::load(&[file]).unwrap_or_else(|e| panic!("{body}: {e:?}"));
    crate::plan::plan(&spec, &ConstFacts).unwrap()
}

/// (label, full key) of each element step of the plan, in order.
fn element_keys(plan: &crate::plan::Plan) -> Vec<(String, String)> {
    plan.steps
        .iter()
        .filter(|s| matches!(s.action, Action::Element(_)))
        .map(|s| (s.label.clone(), s.key.to_hex()))
        .collect()
}

#[test]
fn element_keys_are_pinned() {
    let mut got = Vec::new();
    for (node, _) in CASES {
        let keys = element_keys(&plan_of(node));
        assert_eq!(keys.len(), 1, "{node}");
        got.push((*node, keys[0].1.clone()));
    }
    let want: Vec<(&str, String)> = CASES.iter().map(|(n, k)| (*n, k.to_string())).collect();
    if got != want {
        for (n, k) in &got {
            eprintln!("    (r#\"{n}\"#, \"{k}\"),");
        }
    }
    assert_eq!(got, want);
}

#[test]
fn a_chain_of_element_keys_is_pinned() {
    let got = element_keys(&plan_of(CHAIN));
    let want: Vec<(String, String)> = CHAIN_KEYS
        .iter()
        .map(|(l, k)| (l.to_string(), k.to_string()))
        .collect();
    if got != want {
        for (l, k) in &got {
            eprintln!("    (\"{l}\", \"{k}\"),");
        }
    }
    assert_eq!(got, want);
}
