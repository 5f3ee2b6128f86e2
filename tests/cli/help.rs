//! What the binary teaches about itself: `--help` with examples, shell completions and man
//! pages, each checked with the real shell or roff formatter that will read it.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::Workspace;

/// Every subcommand path of the binary (`["cache", "gc"]`), read from its own `--help`.
fn subcommands(ws: &Workspace, path: &[&str]) -> Vec<Vec<String>> {
    let mut args: Vec<&str> = path.to_vec();
    args.push("--help");
    let help = ws.run(&args).ok().stdout;
    let mut out = Vec::new();
    let Some(start) = help.find("Commands:\n") else {
        return out;
    };
    for line in help[start + "Commands:\n".len()..].lines() {
        if !line.starts_with("  ") {
            break;
        }
        let name = line.split_whitespace().next().unwrap();
        if name == "help" {
            continue;
        }
        let mut p: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        p.push(name.to_string());
        let child: Vec<&str> = p.iter().map(String::as_str).collect();
        out.extend(subcommands(ws, &child));
        out.push(p);
    }
    out
}

#[test]
fn every_subcommand_help_ends_with_examples() {
    let ws = Workspace::new();
    let all = subcommands(&ws, &[]);
    for expected in ["build", "plan", "boot", "completions", "man", "cache"] {
        assert!(
            all.iter().any(|p| p == &[expected.to_string()]),
            "`{expected}` missing from {all:?}"
        );
    }
    assert!(all.iter().any(|p| p == &["cache", "gc"]), "{all:?}");
    for p in &all {
        let mut args: Vec<&str> = p.iter().map(String::as_str).collect();
        args.push("--help");
        let help = ws.run(&args).ok().stdout;
        let ex = help
            .rfind("\nExamples:\n")
            .unwrap_or_else(|| panic!("`imgspec {}` has no Examples:\n{help}", p.join(" ")));
        let lines: Vec<&str> = help[ex..].lines().skip(2).collect();
        assert!(
            (2..=3).contains(&lines.len()),
            "`imgspec {}`: {lines:?}",
            p.join(" ")
        );
        for l in lines {
            assert!(l.contains("imgspec "), "`imgspec {}`: {l}", p.join(" "));
        }
    }
}

#[test]
fn build_help_documents_its_specs() {
    let ws = Workspace::new();
    let help = ws.run(&["build", "--help"]).ok().stdout;
    assert!(help.contains("[SPECS]..."), "{help}");
    let doc = help
        .lines()
        .find(|l| l.trim_start().starts_with("[SPECS]..."))
        .unwrap();
    assert!(doc.contains("Spec files"), "{doc}");
}

#[test]
fn completion_scripts_name_every_subcommand() {
    let ws = Workspace::new();
    for shell in ["bash", "zsh", "fish"] {
        let script = ws.run(&["completions", shell]).ok().stdout;
        for sub in [
            "check",
            "plan",
            "build",
            "verify",
            "lock",
            "boot",
            "cache",
            "completions",
        ] {
            assert!(script.contains(sub), "{shell} script lacks `{sub}`");
        }
        assert!(
            script.contains("out-dir"),
            "{shell} script lacks build's flags"
        );
    }
    let r = ws.run(&["completions", "tcsh"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn bash_accepts_the_bash_completion_and_completes_subcommands() {
    let ws = Workspace::new();
    let script = ws.run(&["completions", "bash"]).ok().stdout;
    ws.write("imgspec.bash", &script);
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(ws.path("imgspec.bash"))
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    // Load it and ask it what `imgspec bu<TAB>` and `imgspec cache <TAB>` complete to.
    let probe = format!(
        "source {}\n\
         COMP_WORDS=(imgspec bu); COMP_CWORD=1; COMP_LINE='imgspec bu'; COMP_POINT=10\n\
         _imgspec imgspec bu imgspec; echo \"1:${{COMPREPLY[*]}}\"\n\
         COMP_WORDS=(imgspec cache ''); COMP_CWORD=2; COMP_LINE='imgspec cache '; COMP_POINT=14\n\
         _imgspec imgspec '' cache; echo \"2:${{COMPREPLY[*]}}\"\n",
        ws.path("imgspec.bash").display()
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &probe])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1:build"), "{stdout}");
    let cache_line = stdout.lines().find(|l| l.starts_with("2:")).unwrap();
    for sub in ["gc", "push", "pull", "export", "import"] {
        assert!(cache_line.contains(sub), "{cache_line}");
    }
}

/// Renders roff with groff as `man` does, failing on any warning.
fn groff(page: &[u8]) -> String {
    let mut child = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(page).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "groff: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn man_pages_render_with_groff() {
    let ws = Workspace::new();
    let main = Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .arg("man")
        .output()
        .unwrap();
    assert!(main.status.success());
    let text = groff(&main.stdout);
    for want in [
        "NAME",
        "imgspec - Declarative",
        "SYNOPSIS",
        "imgspec-build(1)",
        "--cache-dir",
    ] {
        assert!(text.contains(want), "no `{want}` in\n{text}");
    }
    let gc = Command::new(env!("CARGO_BIN_EXE_imgspec"))
        .args(["man", "cache", "gc"])
        .output()
        .unwrap();
    assert!(gc.status.success());
    let text = groff(&gc.stdout);
    for want in [
        "imgspec-cache-gc",
        "--max-size",
        "Examples:",
        "imgspec cache gc --max-size 20GiB",
    ] {
        assert!(text.contains(want), "no `{want}` in\n{text}");
    }
    let r = ws.run(&["man", "nosuch"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no subcommand `nosuch`"), "{}", r.stderr);
}
