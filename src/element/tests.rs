//! Tests of the registry, and the helpers the elements' own tests use: a real store and the
//! step's own tree adapter ([`crate::steps::element::TreeImage`]), so that what is checked is
//! what a build writes.

use std::collections::BTreeMap;

use imgspec_cache::{Entry, EntryKind, Store, TreeManifest};

use super::*;
use crate::steps::element::TreeImage;
use crate::steps::tree::Tree;

pub(super) fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A tree of a real store.
pub(super) struct TestTree {
    _dir: tempfile::TempDir,
    pub store: Store,
    pub tree: Tree,
}

impl TestTree {
    pub fn put(&mut self, path: &str, text: &str) {
        self.tree
            .put_file(&self.store, path, text.as_bytes(), 0o644, 0)
            .unwrap();
    }
}

fn dir(p: &str) -> Entry {
    Entry {
        path: p.into(),
        kind: EntryKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 0,
        xattrs: BTreeMap::new(),
    }
}

/// A merged-/usr tree with a few files.
pub(super) fn tree(files: &[(&str, &str)]) -> TestTree {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let link = Entry {
        kind: EntryKind::Symlink {
            target: "usr/lib".into(),
        },
        mode: 0o777,
        ..dir("lib")
    };
    let mut t = TestTree {
        _dir: d,
        store,
        tree: Tree::new(TreeManifest {
            entries: vec![dir(""), dir("usr"), dir("usr/lib"), link],
        }),
    };
    for (p, text) in files {
        t.put(p, text);
    }
    t
}

pub(super) fn text(t: &TestTree, p: &str) -> String {
    String::from_utf8(t.tree.read(&t.store, p).unwrap().expect(p)).unwrap()
}

/// Element `name` with `kv` applied to the tree at epoch 1000, as the step applies one that
/// needs no chroot.
pub(super) fn run(name: &str, kv: &[(&str, &str)], t: &mut TestTree) -> Result<(), String> {
    let e = Configured::new(name, params(kv)).map_err(|e| {
        e.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    assert_eq!(e.element().chroot(), None, "{name} needs a chroot");
    let mut image = TreeImage::new(&mut t.tree, &t.store, 1000);
    e.element().apply(&mut image).map_err(|e| e.to_string())
}

#[test]
fn names_are_unique_and_every_element_parses_with_its_required_params() {
    for (i, d) in ELEMENTS.iter().enumerate() {
        assert!(
            ELEMENTS[..i].iter().all(|o| o.name != d.name),
            "{} twice",
            d.name
        );
        assert!(std::ptr::eq(find(d.name).unwrap(), *d));
        let kv: Vec<(&str, &str)> = d
            .params
            .iter()
            .filter(|p| p.required)
            .map(|p| {
                (
                    p.name,
                    match p.name {
                        "name" => "web1",
                        "zone" => "UTC",
                        "lang" => "en_US.UTF-8",
                        other => panic!("give `{other}` a value here"),
                    },
                )
            })
            .collect();
        Configured::new(d.name, params(&kv)).unwrap_or_else(|e| panic!("{}: {e:?}", d.name));
    }
}

#[test]
fn unknown_elements_and_params_and_missing_params_are_errors() {
    let e = &Configured::new("no-such", params(&[])).unwrap_err()[0];
    assert_eq!(e.param, None);
    assert!(e.help.contains("`dhcp-all-interfaces`"), "{}", e.help);
    let e = &Configured::new("growroot", params(&[("size", "1")])).unwrap_err()[0];
    assert_eq!(e.param.as_deref(), Some("size"));
    assert_eq!(e.help, "`growroot` takes no parameters");
    let e = &Configured::new("hostname", params(&[])).unwrap_err()[0];
    assert_eq!(e.message, "element `hostname` needs `name`");
    let e =
        Configured::new("timezone", params(&[("zone", "UTC"), ("a", ""), ("b", "")])).unwrap_err();
    assert_eq!(e.len(), 2, "{e:?}");
}

#[test]
fn packages_of_elements() {
    let packages = |name: &str, kv: &[(&str, &str)]| {
        Configured::new(name, params(kv))
            .unwrap()
            .element()
            .packages()
    };
    assert_eq!(
        packages("dhcp-all-interfaces", &[]),
        ["ifupdown", "isc-dhcp-client"]
    );
    assert_eq!(packages("locale", &[("lang", "C.UTF-8")]), [] as [&str; 0]);
    assert_eq!(packages("locale", &[("lang", "fr_FR.UTF-8")]), ["locales"]);
    assert!(packages("hostname", &[("name", "a")]).is_empty());
    assert_eq!(packages("grub2", &[]), grub2::PACKAGES);
    assert_eq!(packages("timezone", &[("zone", "UTC")]), ["tzdata"]);
    assert_eq!(packages("cloud-init", &[]), ["cloud-init"]);
    assert_eq!(packages("growroot", &[]), ["cloud-guest-utils"]);
    assert!(packages("serial-console", &[]).is_empty());
}

#[test]
fn writes_are_owned_by_root_at_the_epoch() {
    let mut t = tree(&[]);
    run("hostname", &[("name", "a")], &mut t).unwrap();
    let e = &t.tree.entries["etc/hostname"];
    assert_eq!((e.uid, e.gid, e.mode, e.mtime), (0, 0, 0o644, 1000));
    assert_eq!(t.tree.entries["etc"].mtime, 1000);
}

/// The plan puts the packages elements and users need in a package set before them.
#[test]
fn the_plan_installs_what_elements_need_before_them() {
    use crate::plan::plan;
    use crate::spec::model::{
        Base, Image, Layer, OutputFormat, Packages, Spec, User, DEFAULT_EPOCH,
    };
    use crate::tools::Tool;
    struct NoFacts;
    impl crate::steps::Facts for NoFacts {
        fn tool_version(&self, t: &Tool) -> Result<String, crate::tools::ToolError> {
            Ok(t.program.to_string())
        }
        fn file_digest(&self, _: &std::path::Path) -> Result<String, std::io::Error> {
            Ok("0".into())
        }
    }
    let element = |name: &str, kv: &[(&str, &str)]| {
        Layer::Element(Configured::new(name, params(kv)).unwrap())
    };
    let set = |name: &str, p: &[&str]| {
        Layer::Packages(Packages {
            name: name.into(),
            packages: p.iter().map(|s| s.to_string()).collect(),
        })
    };
    let user = Layer::User(User {
        name: "ops".into(),
        groups: vec![],
        ssh_keys: vec![],
        password_hash: None,
        sudo: true,
        shell: "/bin/sh".into(),
    });
    let sets = |layers: Vec<Layer>| -> Vec<(String, Vec<String>)> {
        let mut all = vec![Layer::Base(Base::Tar {
            path: "/r.tar".into(),
        })];
        all.extend(layers);
        let spec = Spec {
            images: vec![Image {
                name: "i".into(),
                file: "/i.kdl".into(),
                epoch: DEFAULT_EPOCH,
                epoch_given: false,
                layers: all,
                bootloader: None,
                disk: None,
                outputs: vec![OutputFormat::Tar],
            }],
            sources: vec![],
        };
        plan(&spec, &NoFacts)
            .unwrap()
            .steps
            .iter()
            .filter_map(|s| match &s.action {
                crate::steps::Action::Packages(p) => Some((p.name.clone(), p.packages.clone())),
                _ => None,
            })
            .collect()
    };
    let v = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // The first set comes first: everything joins it, sorted.
    assert_eq!(
        sets(vec![
            set("system", &["udev"]),
            element("timezone", &[("zone", "UTC")]),
            user.clone(),
            set("more", &["vim"]),
        ]),
        [
            (
                "system".to_string(),
                v(&["passwd", "sudo", "tzdata", "udev"])
            ),
            ("more".to_string(), v(&["vim"])),
        ]
    );
    // An element before the first set: a set of its own after the base.
    assert_eq!(
        sets(vec![
            element("dhcp-all-interfaces", &[]),
            set("system", &["udev"]),
        ]),
        [
            ("implied".to_string(), v(&["ifupdown", "isc-dhcp-client"])),
            ("system".to_string(), v(&["udev"])),
        ]
    );
    // Elements that need nothing add nothing.
    assert!(sets(vec![element("hostname", &[("name", "a")])]).is_empty());
}

/// The layering: outside their tests, the element files use nothing of the crate (nor the
/// store), so that the spec can read elements without depending on the steps.
#[test]
fn elements_import_nothing_of_the_crate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/element");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
        for needle in ["crate::", "imgspec_cache", "std::fs", "std::process"] {
            assert!(!code.contains(needle), "{} uses `{needle}`", path.display());
        }
        seen += 1;
    }
    assert_eq!(seen, ELEMENTS.len() + 1, "a file per element, and mod.rs");
}
