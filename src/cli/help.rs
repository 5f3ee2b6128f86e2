//! What `--help` teaches beyond the flags: example command lines for every verb, and the
//! completion scripts and man pages generated from the same clap model.

use clap::CommandFactory;

pub const CHECK: &str = "\
Examples:
  imgspec check specs/debian-efi.kdl
  imgspec check specs/*.kdl
  imgspec check --json specs/debian-efi.kdl";

pub const PLAN: &str = "\
Examples:
  imgspec plan specs/debian-efi.kdl
  imgspec plan --json specs/debian-*.kdl
  imgspec plan --dot specs/debian-*.kdl | dot -Tsvg > plan.svg";

pub const BUILD: &str = "\
Examples:
  sudo imgspec build specs/debian-efi.kdl
  sudo imgspec build specs/debian-*.kdl --image debian-bios --out-dir /srv/images
  sudo imgspec build specs/debian-efi.kdl --remote http://cache:8080/imgspec/ --remote-write";

pub const VERIFY: &str = "\
Examples:
  sudo imgspec verify specs/debian-efi.kdl
  sudo imgspec verify specs/debian-efi.kdl --against release/debian-efi/SHA256SUMS
  sudo imgspec verify specs/debian-*.kdl --image debian-bios --keep";

pub const DOCTOR: &str = "\
Examples:
  imgspec doctor specs/debian-efi.kdl
  imgspec doctor specs/*.kdl";

pub const LOCK: &str = "\
Examples:
  imgspec lock specs/debian-efi.kdl
  imgspec lock specs/debian-efi.kdl --update
  imgspec lock specs/debian-efi.kdl --update openssl libssl3";

pub const BOOT: &str = "\
Examples:
  imgspec boot out/debian-efi/debian-efi.qcow2
  imgspec boot out/debian-hybrid/debian-hybrid.qcow2 --firmware bios --timeout 300
  imgspec boot out/debian-partition/debian-partition.qcow2 --quiet";

pub const DIFF: &str = "\
Examples:
  imgspec diff release-1.0/debian-efi out/debian-efi
  imgspec diff old/debian-efi.spdx.json out/debian-efi/debian-efi.spdx.json
  imgspec diff --json release-1.0/debian-efi out/debian-efi";

pub const CACHE: &str = "\
Examples:
  imgspec cache du
  imgspec cache gc specs/*.kdl
  imgspec cache push specs/debian-efi.kdl --remote http://cache:8080/imgspec/";

pub const CACHE_LS: &str = "\
Examples:
  imgspec cache ls
  imgspec cache ls --json";

pub const CACHE_DU: &str = "\
Examples:
  imgspec cache du
  imgspec --cache-dir /var/cache/imgspec cache du";

pub const CACHE_GC: &str = "\
Examples:
  imgspec cache gc specs/*.kdl
  imgspec cache gc --max-size 20GiB
  imgspec cache gc --older-than-days 30";

pub const CACHE_VERIFY: &str = "\
Examples:
  imgspec cache verify
  imgspec --cache-dir /var/cache/imgspec cache verify";

pub const CACHE_PUSH: &str = "\
Examples:
  imgspec cache push specs/debian-efi.kdl --remote http://cache:8080/imgspec/
  IMGSPEC_REMOTE=http://cache:8080/imgspec/ imgspec cache push specs/*.kdl";

pub const CACHE_PULL: &str = "\
Examples:
  imgspec cache pull specs/debian-efi.kdl --remote http://cache:8080/imgspec/
  imgspec cache pull specs/debian-efi.kdl --remote http://lan:8080/imgspec/ --remote s3://acme/cache
  IMGSPEC_REMOTE=http://cache:8080/imgspec/ imgspec cache pull specs/*.kdl";

pub const CACHE_EXPORT: &str = "\
Examples:
  imgspec cache export specs/debian-efi.kdl -o bundle.tar.zst
  imgspec cache export specs/*.kdl --output /media/usb/imgspec.tar.zst";

pub const CACHE_IMPORT: &str = "\
Examples:
  imgspec cache import bundle.tar.zst
  imgspec --cache-dir /var/cache/imgspec cache import /media/usb/imgspec.tar.zst";

pub const COMPLETIONS: &str = "\
Examples:
  imgspec completions bash > /etc/bash_completion.d/imgspec
  imgspec completions zsh > \"${fpath[1]}/_imgspec\"
  imgspec completions fish > ~/.config/fish/completions/imgspec.fish";

pub const MAN: &str = "\
Examples:
  imgspec man | man -l -
  imgspec man build | man -l -
  imgspec man > /usr/local/share/man/man1/imgspec.1";

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut cmd = super::Cli::command();
    clap_complete::generate(shell, &mut cmd, "imgspec", out);
}

/// The man page of `imgspec` or of one of its subcommands (`cache gc` is `["cache", "gc"]`),
/// in roff; `None` when there is no such subcommand.
pub fn man_page(path: &[String]) -> Option<Vec<u8>> {
    let mut cmd = super::Cli::command();
    cmd.build();
    let mut name = String::from("imgspec");
    for p in path {
        cmd = cmd.find_subcommand(p)?.clone();
        name.push('-');
        name.push_str(p);
    }
    let cmd = cmd.name(name.clone()).bin_name(name.replace('-', " "));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).date("").render(&mut out).ok()?;
    Some(out)
}
