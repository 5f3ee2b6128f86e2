//! `examples/`: every folder has a README, every spec passes `imgspec check`, the nginx block
//! passes `nginx -t`, the client config is what imgspec reads, and the CI files are YAML whose
//! imgspec command lines use real subcommands and flags.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::Workspace;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn every_example_spec_passes_check() {
    let ws = Workspace::new();
    let mut folders = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        folders += 1;
        assert!(
            dir.join("README.md").is_file(),
            "{} has no README.md",
            dir.display()
        );
    }
    assert!(folders >= 5, "{folders} example folders");
    let mut files = Vec::new();
    files_under(&examples(), &mut files);
    let specs: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "kdl"))
        .filter(|p| p.file_name().unwrap() != "config.kdl")
        .collect();
    assert!(specs.len() >= 4, "{specs:?}");
    for spec in specs {
        let r = ws.run(&["check", spec.to_str().unwrap()]);
        assert_eq!(r.code, 0, "{}:\n{}", spec.display(), r.stderr);
        assert!(
            r.stderr.contains("ok: image"),
            "{}: {}",
            spec.display(),
            r.stderr
        );
    }
}

#[test]
fn the_team_cache_nginx_block_passes_nginx_t() {
    let Some(nginx) = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        panic!("nginx is not installed (scripts/install-deps installs it)");
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let block = examples().join("team-cache/imgspec-cache.conf");
    let conf = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n    \
         access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    \
         fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    \
         scgi_temp_path {d}/scgi;\n    include {};\n}}\n",
        block.display()
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let out = Command::new(nginx)
        .args(["-t", "-p"])
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("syntax is ok"),
        "{stderr}"
    );
}

#[test]
fn the_client_config_has_only_what_imgspec_reads() {
    let text = std::fs::read_to_string(examples().join("team-cache/config.kdl")).unwrap();
    let doc: kdl::KdlDocument = text.parse().expect("config.kdl is KDL v2");
    let names: Vec<&str> = doc.nodes().iter().map(|n| n.name().value()).collect();
    assert_eq!(names, ["remote"], "{text}");
    let url = doc.nodes()[0].entries()[0].value().as_string().unwrap();
    assert!(url.starts_with("http://") && url.ends_with('/'), "{url}");
}

#[test]
fn the_ci_files_are_yaml_with_real_imgspec_command_lines() {
    let ws = Workspace::new();
    let python = PathBuf::from("/opt/imgspec-oslo/bin/python");
    assert!(
        python.exists(),
        "no {}: run scripts/install-deps (its venv has PyYAML)",
        python.display()
    );
    let dir = examples().join("release-pipeline");
    for file in [".github/workflows/release.yml", ".gitlab-ci.yml"] {
        let path = dir.join(file);
        let out = Command::new(&python)
            .args(["-c", "import sys, yaml; yaml.safe_load(open(sys.argv[1]))"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen = Vec::new();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let Some(at) = line.find("imgspec ") else {
                continue;
            };
            let words: Vec<&str> = line[at + "imgspec ".len()..].split_whitespace().collect();
            let Some(sub) = words.first() else { continue };
            if !["lock", "build", "verify"].contains(sub) {
                continue;
            }
            let help = ws.run(&[sub, "--help"]).ok().stdout;
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                assert!(help.contains(flag), "{file}: `imgspec {sub}` has no {flag}");
            }
            seen.push(sub.to_string());
        }
        for want in ["lock", "build", "verify"] {
            assert!(
                seen.iter().any(|s| s == want),
                "{file} never runs `imgspec {want}`"
            );
        }
    }
}

/// Every spec of `specs/` passes `imgspec check` and `imgspec plan`, but `from-vm.kdl`, which
/// wants a VM's disk at `specs/vm/` and says so. `fedora-cloud.kdl` cannot be
/// built here: its plan is made without a download (nothing of the image in the cache after).
#[test]
fn every_spec_of_specs_passes_check_and_plan() {
    let ws = Workspace::new();
    let specs = Path::new(env!("CARGO_MANIFEST_DIR")).join("specs");
    let mut files = Vec::new();
    files_under(&specs, &mut files);
    let specs: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "kdl"))
        .collect();
    assert!(specs.len() >= 9, "{specs:?}");
    for spec in specs {
        let path = spec.to_str().unwrap();
        let r = ws.run(&["check", path]);
        if path.ends_with("/from-vm.kdl") {
            assert!(r.stderr.contains("spec::files-missing"), "{}", r.stderr);
            continue;
        }
        assert_eq!(r.code, 0, "{path}:\n{}", r.stderr);
        let r = ws.run(&["plan", path]);
        assert_eq!(r.code, 0, "{path}:\n{}", r.stderr);
    }
    let r = ws
        .run(&["plan", specs_path("fedora-cloud.kdl").to_str().unwrap()])
        .ok();
    for line in [
        "base image Fedora-Cloud-Base-Generic-41-1.4.x86_64.qcow2",
        "element dracut-regenerate",
        "packages bootloader",
        "bootloader grub-efi",
        "output partition",
        "output qcow2",
    ] {
        assert!(r.stdout.contains(line), "{line}:\n{}", r.stdout);
    }
    assert!(
        !ws.path("cache/images-v1").exists(),
        "plan downloaded the image"
    );
}

fn specs_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("specs")
        .join(name)
}

/// `cache gc SPECS` keeps the downloaded disk a spec names by its SHA-256 and removes the
/// others and what an interrupted download left; nothing is downloaded.
#[test]
fn cache_gc_keeps_the_downloaded_disks_the_specs_name() {
    let ws = Workspace::new();
    let fedora = "6205ae0c524b4d1816dbd3573ce29b5c44ed26c9fbc874fbe48c41c89dd0bac2";
    let other = "ab".repeat(32);
    ws.write(&format!("cache/images-v1/{fedora}.img"), "fedora");
    ws.write(&format!("cache/images-v1/{other}.img"), "gone");
    ws.write("cache/images-v1/.dl-1.part", "half");
    let spec = specs_path("fedora-cloud.kdl");
    let r = ws.run(&["cache", "gc", spec.to_str().unwrap()]).ok();
    assert!(
        r.stdout
            .contains("removed 2 downloaded disk images no spec names, freed 8 B"),
        "{}",
        r.stdout
    );
    let left: Vec<String> = std::fs::read_dir(ws.path("cache/images-v1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [format!("{fedora}.img")]);
}
