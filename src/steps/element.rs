//! `element "NAME" [param=value ...]`: a built-in, parameterised customisation of the image
//! tree, doing what the diskimage-builder (DIB) element of the same purpose does.
//!
//! Makes: the input tree with the files below written (owned by root, mtimes at the image
//! epoch). Every element but `locale` is an exact edit of the tree's manifest in memory
//! ([`Tree`]): no chroot, no root needed. `locale` runs the image's own `locale-gen` in a chroot
//! ([`Session`]), so it needs root.
//!
//! The packages an element needs are not installed here: the plan adds them to the image's
//! first package set (or to a set of their own right after the base when the first set comes
//! after the element), so that they are installed by apt with the rest, and images that differ
//! only in later layers share that layer. [`packages`] lists them.
//!
//! | element | DIB element | params (default) | packages the plan adds | what it writes |
//! |---------|-------------|------------------|------------------------|----------------|
//! | `dhcp-all-interfaces` | `dhcp-all-interfaces` | — | `ifupdown isc-dhcp-client` | `/etc/network/interfaces.d/imgspec-dhcp`: `auto /en*=eth`, `allow-hotplug /eth*=eth`, `iface eth inet dhcp` (ifupdown maps every `en*` NIC to the logical `eth` at boot; `eth*` ones when they appear); a `source /etc/network/interfaces.d/*` line in `/etc/network/interfaces` if it has none (the file is created, with `lo`, if missing) |
//! | `serial-console` | `serial-console` | `port` (`ttyS0`), `speed` | — | link `/etc/systemd/system/getty.target.wants/serial-getty@PORT.service` → the image's `serial-getty@.service` (error if the image has none); with `speed`, a drop-in `serial-getty@PORT.service.d/imgspec-speed.conf` running agetty at that speed (without it the unit keeps the rate the kernel console set). The kernel command line is the bootloader's `cmdline` |
//! | `hostname` | — (DIB leaves it to cloud-init) | `name` | — | `/etc/hostname` (`NAME`); in `/etc/hosts` the `127.0.1.1` line becomes `127.0.1.1 NAME [SHORT]` (added after `127.0.0.1` if missing; a Debian-like file is created if there is none). A later `packages` layer resets `/etc/hostname` to `localhost` (host-leak scrub): put `hostname` after the package sets |
//! | `growroot` | `growroot` | — | `cloud-guest-utils` (growpart; pulls `fdisk`, `e2fsprogs`) | `/usr/local/sbin/imgspec-growroot` (0755): finds the partition of `/` from `findmnt` (major:minor → sysfs), `growpart DISK N` (`NOCHANGE` is success), then `resize2fs` (`xfs_growfs`, `btrfs filesystem resize` for those); `/etc/systemd/system/imgspec-growroot.service` (oneshot, after `local-fs.target`, before `sysinit.target`) enabled in `sysinit.target.wants`. Runs at every boot; idempotent |
//! | `cloud-init` | `cloud-init` + `cloud-init-datasources` | `datasources` (`ConfigDrive OpenStack`; spaces or commas) | `cloud-init` | `/etc/cloud/cloud.cfg.d/91-imgspec-datasources.cfg`: `datasource_list: [ A, B, None ]` |
//! | `timezone` | — | `zone` | `tzdata` | `/etc/localtime` → `/usr/share/zoneinfo/ZONE` (error if that is not a file of the image) and `/etc/timezone` |
//! | `locale` | — | `lang` | `locales` (none for `C`, `C.UTF-8`, `POSIX`: built into glibc) | the `LANG CHARSET` line of `/etc/locale.gen` uncommented (error if the file does not list `lang`), `locale-gen` run in the image (`/usr/lib/locale/locale-archive`), `/etc/default/locale` (`LANG=lang`) |
//! | `grub2` | `grub2` | — | `grub-pc-bin grub-efi-amd64-bin grub-common grub2-common` | `/etc/default/grub` with `GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200"` and a serial terminal, for `grub-mkconfig`. GRUB is not installed on any disk: Ironic's local boot runs `grub-install` |
//!
//! Key: input tree key; `element` (the name); `element-version` (the element's own version in
//! [`ELEMENT_VERSIONS`], bumped when what that element writes changes, so that changing one
//! element does not send the others' layers cold); then `param:NAME` for each parameter given,
//! sorted by name. Parameters are hashed as given: a default written out gives another key
//! (and the same tree).

use std::collections::BTreeMap;

use imgspec_cache::{EntryKind, StepOutput, Store};

use super::chroot::Session;
use super::tree::Tree;
use super::{FactError, StepContext, StepError};
use crate::plan::key::KeyBuilder;
use crate::tools::Tool;

/// Version of the `element` kind (the key's layout); each element has its own as well.
pub const VERSION: u32 = 1;

/// Each element's own version: part of its key.
pub const ELEMENT_VERSIONS: &[(&str, u32)] = &[
    ("dhcp-all-interfaces", 1),
    ("serial-console", 1),
    ("hostname", 1),
    ("growroot", 1),
    ("cloud-init", 1),
    ("timezone", 1),
    ("locale", 1),
    ("grub2", 1),
];

/// GRUB's packages for `grub2`: the Debian family's (the bootloader step's too).
pub const GRUB2_PACKAGES: &[&str] = crate::distro::debian::GRUB_PACKAGES;

/// Locales glibc has built in: no `locales` package, no `locale-gen`.
const BUILTIN_LOCALES: &[&str] = &["C", "C.UTF-8", "C.utf8", "POSIX"];

const DEFAULT_DATASOURCES: &str = "ConfigDrive OpenStack";

#[derive(Clone, Debug)]
pub struct ElementStep {
    pub name: String,
    /// Sorted by name.
    pub params: BTreeMap<String, String>,
}

/// The packages element `name` with `params` needs in the image (the plan adds them to a
/// package set before it).
pub fn packages(name: &str, params: &BTreeMap<String, String>) -> Vec<&'static str> {
    match name {
        "dhcp-all-interfaces" => vec!["ifupdown", "isc-dhcp-client"],
        "growroot" => vec!["cloud-guest-utils"],
        "cloud-init" => vec!["cloud-init"],
        "timezone" => vec!["tzdata"],
        "locale" => match params.get("lang") {
            Some(l) if BUILTIN_LOCALES.contains(&l.as_str()) => vec![],
            _ => vec!["locales"],
        },
        "grub2" => GRUB2_PACKAGES.to_vec(),
        _ => vec![],
    }
}

/// An element with its parameters checked.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Element {
    DhcpAllInterfaces,
    SerialConsole { port: String, speed: Option<u32> },
    Hostname { name: String },
    Growroot,
    CloudInit { datasources: Vec<String> },
    Timezone { zone: String },
    Locale { lang: String },
    Grub2,
}

impl ElementStep {
    pub fn hash(&self, k: &mut KeyBuilder) -> Result<(), FactError> {
        k.param("element", &self.name).param(
            "element-version",
            &element_version(&self.name).unwrap_or(0).to_string(),
        );
        for (name, value) in &self.params {
            k.param(&format!("param:{name}"), value);
        }
        Ok(())
    }

    /// Only `locale` chroots (to run `locale-gen`).
    pub fn needs_root(&self) -> bool {
        matches!(self.parse(), Ok(Element::Locale { ref lang }) if !BUILTIN_LOCALES.contains(&lang.as_str()))
    }

    pub fn tools(&self) -> Vec<Tool> {
        if self.needs_root() {
            super::run::TOOLS.to_vec()
        } else {
            vec![]
        }
    }

    /// For people: `element hostname name=web1`.
    pub fn label(&self) -> String {
        let mut s = format!("element {}", self.name);
        for (k, v) in &self.params {
            s.push_str(&format!(" {k}={v}"));
        }
        s
    }

    fn parse(&self) -> Result<Element, StepError> {
        parse(&self.name, &self.params)
            .map_err(|m| StepError::Invalid(format!("element `{}`: {m}", self.name)))
    }

    pub fn run(&self, ctx: &StepContext) -> Result<StepOutput, StepError> {
        let element = self.parse()?;
        let (_, m) = ctx.input_tree(0)?;
        let mut tree = Tree::new(m);
        match &element {
            Element::Locale { lang } if !BUILTIN_LOCALES.contains(&lang.as_str()) => {
                let m = run_locale_gen(ctx, &tree, lang).map_err(|e| in_element(e, &self.name))?;
                ctx.tree_output(&m)
            }
            _ => {
                apply(&element, &mut tree, ctx.store, ctx.epoch)
                    .map_err(|e| in_element(e, &self.name))?;
                ctx.tree_output(&tree.into_manifest())
            }
        }
    }
}

fn in_element(e: StepError, name: &str) -> StepError {
    match e {
        StepError::Invalid(m) => StepError::Invalid(format!("element `{name}`: {m}")),
        e => e,
    }
}

fn element_version(name: &str) -> Option<u32> {
    ELEMENT_VERSIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
}

/// Checks the parameters of element `name`. Spec validation already rejected unknown names and
/// parameters; the values are checked here, where what they become in the image is known.
fn parse(name: &str, params: &BTreeMap<String, String>) -> Result<Element, String> {
    let Some(&(_, required, optional)) = crate::spec::model::ELEMENTS
        .iter()
        .find(|(n, _, _)| *n == name)
    else {
        return Err("there is no such element".into());
    };
    for p in params.keys() {
        if !required.contains(&p.as_str()) && !optional.contains(&p.as_str()) {
            return Err(format!("it has no parameter `{p}`"));
        }
    }
    for p in required {
        if !params.contains_key(*p) {
            return Err(format!("it needs `{p}`"));
        }
    }
    let get = |p: &str| params.get(p).map(String::as_str);
    Ok(match name {
        "dhcp-all-interfaces" => Element::DhcpAllInterfaces,
        "serial-console" => {
            let port = get("port").unwrap_or("ttyS0");
            if port.is_empty() || !port.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!(
                    "`port` is `{port}`: give a tty name such as `ttyS0` or `ttyAMA0`"
                ));
            }
            let speed = match get("speed") {
                None => None,
                Some(s) => Some(
                    s.parse::<u32>()
                        .ok()
                        .filter(|n| BAUD_RATES.contains(n))
                        .ok_or_else(|| {
                            format!(
                                "`speed` is `{s}`: give a baud rate, one of {}",
                                BAUD_RATES
                                    .iter()
                                    .map(u32::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })?,
                ),
            };
            Element::SerialConsole {
                port: port.into(),
                speed,
            }
        }
        "hostname" => {
            let name = get("name").unwrap_or_default();
            check_hostname(name)?;
            Element::Hostname { name: name.into() }
        }
        "growroot" => Element::Growroot,
        "cloud-init" => {
            let list = get("datasources").unwrap_or(DEFAULT_DATASOURCES);
            let mut datasources: Vec<String> = Vec::new();
            for d in list.split([' ', ',', '\t']).filter(|d| !d.is_empty()) {
                if !d.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(format!(
                        "`{d}` is not a cloud-init datasource name (e.g. `ConfigDrive`, `OpenStack`, `NoCloud`, `Ec2`)"
                    ));
                }
                if d != "None" && !datasources.iter().any(|x| x == d) {
                    datasources.push(d.into());
                }
            }
            if datasources.is_empty() {
                return Err(
                    "`datasources` is empty: give at least one, e.g. `ConfigDrive OpenStack`"
                        .into(),
                );
            }
            Element::CloudInit { datasources }
        }
        "timezone" => {
            let zone = get("zone").unwrap_or_default();
            let ok = !zone.is_empty()
                && !zone.starts_with('/')
                && zone
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..")
                && zone
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/_+-".contains(c));
            if !ok {
                return Err(format!(
                    "`zone` is `{zone}`: give a zone of the tz database, e.g. `Europe/Paris` or `UTC`"
                ));
            }
            Element::Timezone { zone: zone.into() }
        }
        "locale" => {
            let lang = get("lang").unwrap_or_default();
            if lang.is_empty()
                || !lang
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c))
            {
                return Err(format!(
                    "`lang` is `{lang}`: give a locale as /etc/locale.gen lists it, e.g. `en_US.UTF-8`"
                ));
            }
            Element::Locale { lang: lang.into() }
        }
        "grub2" => Element::Grub2,
        _ => return Err("there is no such element".into()),
    })
}

const BAUD_RATES: &[u32] = &[
    1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600,
];

fn check_hostname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`name` is `{name}`: a host name is dot-separated labels of letters, digits and `-` \
             (not at either end), each at most 63 characters, e.g. `web1` or `web1.example.org`"
        ))
    }
}

/// The mode of the file at `path` in the tree, or `default` when there is none.
fn mode_or(tree: &Tree, path: &str, default: u32) -> u32 {
    tree.resolve(path, true)
        .ok()
        .and_then(|p| tree.entries.get(&p).map(|e| e.mode))
        .unwrap_or(default)
}

/// Whether `path` resolves (through the image's links) to a regular file of the tree.
fn is_file(tree: &Tree, path: &str) -> bool {
    tree.resolve(path, true).is_ok_and(|p| {
        matches!(
            tree.entries.get(&p).map(|e| &e.kind),
            Some(EntryKind::File { .. } | EntryKind::Hardlink { .. })
        )
    })
}

fn read_text(tree: &Tree, store: &Store, path: &str) -> Result<Option<String>, StepError> {
    Ok(tree
        .read(store, path)?
        .map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// The edits of every element but a generated locale.
fn apply(e: &Element, tree: &mut Tree, store: &Store, epoch: i64) -> Result<(), StepError> {
    match e {
        Element::DhcpAllInterfaces => {
            tree.put_file(store, DHCP_FILE, DHCP_TEXT.as_bytes(), 0o644, epoch)?;
            let old = read_text(tree, store, "etc/network/interfaces")?;
            if let Some(new) = interfaces_with_source(old.as_deref()) {
                let mode = mode_or(tree, "etc/network/interfaces", 0o644);
                tree.put_file(store, "etc/network/interfaces", new.as_bytes(), mode, epoch)?;
            }
        }
        Element::SerialConsole { port, speed } => {
            let template = SYSTEMD_UNIT_DIRS
                .iter()
                .map(|d| format!("{d}/serial-getty@.service"))
                .find(|p| is_file(tree, p))
                .ok_or_else(|| {
                    StepError::Invalid(
                        "the image has no `serial-getty@.service` (systemd's): install \
                         `systemd-sysv` in a package set before the element"
                            .into(),
                    )
                })?;
            tree.put_symlink(
                &format!("etc/systemd/system/getty.target.wants/serial-getty@{port}.service"),
                &format!("/{template}"),
                epoch,
            )?;
            if let Some(speed) = speed {
                tree.put_file(
                    store,
                    &format!("etc/systemd/system/serial-getty@{port}.service.d/imgspec-speed.conf"),
                    serial_speed_dropin(*speed).as_bytes(),
                    0o644,
                    epoch,
                )?;
            }
        }
        Element::Hostname { name } => {
            tree.put_file(
                store,
                "etc/hostname",
                format!("{name}\n").as_bytes(),
                mode_or(tree, "etc/hostname", 0o644),
                epoch,
            )?;
            let old = read_text(tree, store, "etc/hosts")?;
            let new = hosts_with(old.as_deref(), name);
            let mode = mode_or(tree, "etc/hosts", 0o644);
            tree.put_file(store, "etc/hosts", new.as_bytes(), mode, epoch)?;
        }
        Element::Growroot => {
            tree.put_file(
                store,
                GROWROOT_SCRIPT,
                GROWROOT_TEXT.as_bytes(),
                0o755,
                epoch,
            )?;
            tree.put_file(
                store,
                GROWROOT_UNIT,
                GROWROOT_UNIT_TEXT.as_bytes(),
                0o644,
                epoch,
            )?;
            tree.put_symlink(
                "etc/systemd/system/sysinit.target.wants/imgspec-growroot.service",
                &format!("/{GROWROOT_UNIT}"),
                epoch,
            )?;
        }
        Element::CloudInit { datasources } => {
            tree.put_file(
                store,
                CLOUD_INIT_FILE,
                cloud_init_datasources(datasources).as_bytes(),
                0o644,
                epoch,
            )?;
        }
        Element::Timezone { zone } => {
            let file = format!("usr/share/zoneinfo/{zone}");
            if !is_file(tree, &file) {
                return Err(StepError::Invalid(format!(
                    "time zone `{zone}` does not exist in the image (no file /{file}; tzdata \
                     installs them): give a zone of the tz database, e.g. `Europe/Paris` or `UTC`"
                )));
            }
            tree.put_symlink("etc/localtime", &format!("/{file}"), epoch)?;
            tree.put_file(
                store,
                "etc/timezone",
                format!("{zone}\n").as_bytes(),
                0o644,
                epoch,
            )?;
        }
        Element::Locale { lang } => {
            tree.put_file(
                store,
                "etc/default/locale",
                default_locale(lang).as_bytes(),
                0o644,
                epoch,
            )?;
        }
        Element::Grub2 => {
            tree.put_file(
                store,
                "etc/default/grub",
                GRUB_DEFAULT_TEXT.as_bytes(),
                0o644,
                epoch,
            )?;
        }
    }
    Ok(())
}

/// `locale`: enables the line in `/etc/locale.gen`, writes `/etc/default/locale`, runs the
/// image's `locale-gen`.
fn run_locale_gen(
    ctx: &StepContext,
    tree: &Tree,
    lang: &str,
) -> Result<imgspec_cache::Manifest, StepError> {
    let gen = read_text(tree, ctx.store, "etc/locale.gen")?.ok_or_else(|| {
        StepError::Invalid(
            "the image has no /etc/locale.gen (the `locales` package writes it)".into(),
        )
    })?;
    let gen = enable_locale(&gen, lang)?;
    let gen_path = tree.resolve("etc/locale.gen", true)?;
    let default_path = tree.resolve("etc/default/locale", true)?;
    let s = Session::open(ctx, 0, "locale-gen runs in a chroot of the image")?;
    let write = |rel: &str, text: &str| -> Result<(), StepError> {
        use std::os::unix::fs::PermissionsExt;
        let p = s.root.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(StepError::io(d))?;
        }
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, text).map_err(StepError::io(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
            .map_err(StepError::io(&p))
    };
    write(&gen_path, &gen)?;
    write(&default_path, &default_locale(lang))?;
    s.run(
        ctx,
        "set -e\n\
         command -v locale-gen >/dev/null || { echo 'the image has no locale-gen (package locales)' >&2; exit 1; }\n\
         locale-gen\n",
    )?;
    s.close_and_keep(ctx)
}

/// `/etc/locale.gen` with the line of `lang` uncommented (others kept as they are).
fn enable_locale(text: &str, lang: &str) -> Result<String, StepError> {
    let mut found = false;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let body = line.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
        let words: Vec<&str> = body.split_whitespace().collect();
        if words.len() == 2 && words[0] == lang {
            found = true;
            out.push_str(&format!("{} {}\n", words[0], words[1]));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        return Err(StepError::Invalid(format!(
            "locale `{lang}` is not listed in the image's /etc/locale.gen: give it as listed \
             there (`LANG CHARSET` lines), e.g. `en_US.UTF-8`"
        )));
    }
    Ok(out)
}

fn default_locale(lang: &str) -> String {
    format!("# Written by imgspec (element \"locale\")\nLANG={lang}\n")
}

const SYSTEMD_UNIT_DIRS: &[&str] = &["lib/systemd/system", "usr/lib/systemd/system"];

fn serial_speed_dropin(speed: u32) -> String {
    format!(
        "# Written by imgspec (element \"serial-console\"): the getty runs at {speed} baud.\n\
         [Service]\n\
         ExecStart=\n\
         ExecStart=-/sbin/agetty -o '-p -- \\\\u' {speed} - $TERM\n"
    )
}

const DHCP_FILE: &str = "etc/network/interfaces.d/imgspec-dhcp";
const DHCP_TEXT: &str = "\
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

const GROWROOT_SCRIPT: &str = "usr/local/sbin/imgspec-growroot";
const GROWROOT_TEXT: &str = r#"#!/bin/sh
# Written by imgspec (element "growroot"): grows the partition that holds / to the end of its
# disk, then the filesystem to the end of the partition. Run at every boot by
# imgspec-growroot.service; when there is nothing to grow, nothing changes.
set -eu
majmin=$(findmnt --noheadings --nofsroot --output MAJ:MIN --mountpoint / | head -n 1 | tr -d ' ')
sys=$(readlink -f "/sys/dev/block/$majmin")
if [ ! -f "$sys/partition" ]; then
    echo "growroot: / is not on a partition ($sys): nothing to grow"
    exit 0
fi
part=$(cat "$sys/partition")
disk=/dev/$(basename "$(dirname "$sys")")
dev=/dev/$(basename "$sys")
rc=0
out=$(growpart "$disk" "$part" 2>&1) || rc=$?
echo "$out"
case "$rc:$out" in
    0:*) ;;
    1:NOCHANGE*) ;;
    *) echo "growroot: growpart $disk $part failed ($rc)" >&2; exit 1 ;;
esac
fstype=$(findmnt --noheadings --output FSTYPE --mountpoint / | head -n 1 | tr -d ' ')
case "$fstype" in
    ext2|ext3|ext4) resize2fs "$dev" ;;
    xfs) xfs_growfs / ;;
    btrfs) btrfs filesystem resize max / ;;
    *) echo "growroot: cannot grow a $fstype filesystem" ;;
esac
"#;

const GROWROOT_UNIT: &str = "etc/systemd/system/imgspec-growroot.service";
const GROWROOT_UNIT_TEXT: &str = "\
[Unit]
Description=Grow the root partition and filesystem to the disk (imgspec growroot)
DefaultDependencies=no
After=systemd-remount-fs.service local-fs.target
Before=sysinit.target shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/imgspec-growroot
StandardOutput=journal+console

[Install]
WantedBy=sysinit.target
";

const CLOUD_INIT_FILE: &str = "etc/cloud/cloud.cfg.d/91-imgspec-datasources.cfg";

fn cloud_init_datasources(datasources: &[String]) -> String {
    let mut list: Vec<&str> = datasources.iter().map(String::as_str).collect();
    list.push("None");
    format!(
        "# Written by imgspec (element \"cloud-init\")\ndatasource_list: [ {} ]\n",
        list.join(", ")
    )
}

const GRUB_DEFAULT_TEXT: &str = "\
# Written by imgspec (element \"grub2\"). Read by grub-mkconfig (update-grub) when GRUB is
# installed on the disk, e.g. by Ironic's local boot: imgspec does not run grub-install.
GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT=\"\"
GRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200\"
GRUB_TERMINAL=\"console serial\"
GRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"
GRUB_DISABLE_OS_PROBER=true
";

#[cfg(test)]
mod tests {
    use super::*;
    use imgspec_cache::{Entry, Manifest};

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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

    fn link(p: &str, t: &str) -> Entry {
        Entry {
            kind: EntryKind::Symlink { target: t.into() },
            mode: 0o777,
            ..dir(p)
        }
    }

    /// A merged-/usr tree with a few files.
    fn tree(store: &Store, files: &[(&str, &str)]) -> Tree {
        let mut t = Tree::new(Manifest {
            entries: vec![dir(""), dir("usr"), dir("usr/lib"), link("lib", "usr/lib")],
        });
        for (p, text) in files {
            t.put_file(store, p, text.as_bytes(), 0o644, 0).unwrap();
        }
        t
    }

    fn text(t: &Tree, store: &Store, p: &str) -> String {
        String::from_utf8(t.read(store, p).unwrap().expect(p)).unwrap()
    }

    fn store() -> (tempfile::TempDir, Store) {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        (d, s)
    }

    fn run(name: &str, kv: &[(&str, &str)], t: &mut Tree, s: &Store) -> Result<(), String> {
        let e = parse(name, &params(kv))?;
        apply(&e, t, s, 1000).map_err(|e| e.to_string())
    }

    #[test]
    fn every_known_element_has_a_version_and_parses_with_its_required_params() {
        for (name, required, _) in crate::spec::model::ELEMENTS {
            assert!(element_version(name).is_some(), "{name} has no version");
            let kv: Vec<(&str, &str)> = required
                .iter()
                .map(|p| {
                    (
                        *p,
                        match *p {
                            "name" => "web1",
                            "zone" => "UTC",
                            "lang" => "en_US.UTF-8",
                            _ => "x",
                        },
                    )
                })
                .collect();
            parse(name, &params(&kv)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(ELEMENT_VERSIONS.len(), crate::spec::model::ELEMENTS.len());
    }

    #[test]
    fn unknown_elements_and_params_are_errors() {
        let e = ElementStep {
            name: "no-such".into(),
            params: BTreeMap::new(),
        };
        assert_eq!(
            e.parse().unwrap_err().to_string(),
            "element `no-such`: there is no such element"
        );
        assert!(parse("growroot", &params(&[("size", "1")])).is_err());
        assert!(parse("hostname", &params(&[])).is_err());
    }

    #[test]
    fn key_has_name_version_and_sorted_params() {
        let e = ElementStep {
            name: "serial-console".into(),
            params: params(&[("speed", "9600"), ("port", "ttyS1")]),
        };
        let mut k = KeyBuilder::new("element", VERSION);
        e.hash(&mut k).unwrap();
        let parts: Vec<(String, String)> = k
            .finish()
            .1
            .into_iter()
            .map(|p| (p.name, p.value))
            .collect();
        assert_eq!(
            parts,
            [
                ("element".to_string(), "serial-console".to_string()),
                ("element-version".into(), "1".into()),
                ("param:port".into(), "ttyS1".into()),
                ("param:speed".into(), "9600".into()),
            ]
        );
    }

    #[test]
    fn packages_of_elements() {
        assert_eq!(
            packages("dhcp-all-interfaces", &params(&[])),
            ["ifupdown", "isc-dhcp-client"]
        );
        assert_eq!(
            packages("locale", &params(&[("lang", "C.UTF-8")])),
            [] as [&str; 0]
        );
        assert_eq!(
            packages("locale", &params(&[("lang", "fr_FR.UTF-8")])),
            ["locales"]
        );
        assert!(packages("hostname", &params(&[("name", "a")])).is_empty());
        assert_eq!(packages("grub2", &params(&[])).len(), 4);
    }

    #[test]
    fn hostname_writes_hostname_and_replaces_the_127_0_1_1_line() {
        let (_d, s) = store();
        let mut t = tree(
            &s,
            &[
                ("etc/hostname", "localhost\n"),
                (
                    "etc/hosts",
                    "127.0.0.1\tlocalhost\n127.0.1.1\told\n::1 localhost\n",
                ),
            ],
        );
        run("hostname", &[("name", "web1.example.org")], &mut t, &s).unwrap();
        assert_eq!(text(&t, &s, "etc/hostname"), "web1.example.org\n");
        assert_eq!(
            text(&t, &s, "etc/hosts"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tweb1.example.org web1\n::1 localhost\n"
        );
        // No 127.0.1.1 line yet: added after 127.0.0.1.
        assert_eq!(
            hosts_with(Some("# c\n127.0.0.1 localhost\n::1 x\n"), "db"),
            "# c\n127.0.0.1 localhost\n127.0.1.1\tdb\n::1 x\n"
        );
        assert!(hosts_with(None, "db").starts_with("127.0.0.1\tlocalhost\n127.0.1.1\tdb\n"));
        for bad in ["-web", "web_1", "a..b", "", &"x".repeat(64)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dhcp_writes_the_mapping_and_sources_interfaces_d() {
        let (_d, s) = store();
        let mut t = tree(
            &s,
            &[(
                "etc/network/interfaces",
                "auto lo\niface lo inet loopback\n",
            )],
        );
        run("dhcp-all-interfaces", &[], &mut t, &s).unwrap();
        let d = text(&t, &s, DHCP_FILE);
        for l in [
            "auto /en*=eth",
            "allow-hotplug /eth*=eth",
            "iface eth inet dhcp",
        ] {
            assert!(d.lines().any(|x| x == l), "{l} in {d}");
        }
        assert_eq!(t.entries[DHCP_FILE].mode, 0o644);
        assert!(text(&t, &s, "etc/network/interfaces")
            .ends_with("\nsource /etc/network/interfaces.d/*\n"));
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

    #[test]
    fn serial_console_links_the_images_own_unit() {
        let (_d, s) = store();
        let mut t = tree(&s, &[]);
        let e = run("serial-console", &[], &mut t, &s).unwrap_err();
        assert!(e.contains("serial-getty@.service"), "{e}");
        // Merged /usr: the unit is found through /lib.
        t.put_file(
            &s,
            "lib/systemd/system/serial-getty@.service",
            b"[Unit]\n",
            0o644,
            0,
        )
        .unwrap();
        run("serial-console", &[("port", "ttyS1")], &mut t, &s).unwrap();
        let l = &t.entries["etc/systemd/system/getty.target.wants/serial-getty@ttyS1.service"];
        assert_eq!(
            l.kind,
            EntryKind::Symlink {
                target: "/lib/systemd/system/serial-getty@.service".into()
            }
        );
        assert!(!t
            .entries
            .contains_key("etc/systemd/system/serial-getty@ttyS1.service.d/imgspec-speed.conf"));
        run("serial-console", &[("speed", "9600")], &mut t, &s).unwrap();
        let dropin = text(
            &t,
            &s,
            "etc/systemd/system/serial-getty@ttyS0.service.d/imgspec-speed.conf",
        );
        assert!(
            dropin.contains("ExecStart=\nExecStart=-/sbin/agetty -o '-p -- \\\\u' 9600 - $TERM\n"),
            "{dropin}"
        );
        assert!(parse("serial-console", &params(&[("speed", "fast")])).is_err());
        assert!(parse("serial-console", &params(&[("port", "../tty")])).is_err());
    }

    #[test]
    fn timezone_links_an_existing_zone_only() {
        let (_d, s) = store();
        let mut t = tree(&s, &[("usr/share/zoneinfo/Europe/Paris", "TZif")]);
        t.put_symlink("etc/localtime", "/usr/share/zoneinfo/Etc/UTC", 0)
            .unwrap();
        let e = run("timezone", &[("zone", "Mars/Olympus")], &mut t, &s).unwrap_err();
        assert!(e.contains("time zone `Mars/Olympus` does not exist"), "{e}");
        run("timezone", &[("zone", "Europe/Paris")], &mut t, &s).unwrap();
        assert_eq!(
            t.entries["etc/localtime"].kind,
            EntryKind::Symlink {
                target: "/usr/share/zoneinfo/Europe/Paris".into()
            }
        );
        assert_eq!(text(&t, &s, "etc/timezone"), "Europe/Paris\n");
        for bad in ["../../etc/passwd", "/etc/passwd", "Europe/../UTC", "a b"] {
            assert!(
                parse("timezone", &params(&[("zone", bad)])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn locale_gen_line_is_uncommented_and_unknown_locales_are_errors() {
        let gen = "# comment\n# en_US ISO-8859-1\n# en_US.UTF-8 UTF-8\n# fr_FR.UTF-8 UTF-8\n";
        assert_eq!(
            enable_locale(gen, "en_US.UTF-8").unwrap(),
            "# comment\n# en_US ISO-8859-1\nen_US.UTF-8 UTF-8\n# fr_FR.UTF-8 UTF-8\n"
        );
        let e = enable_locale(gen, "xx_YY.UTF-8").unwrap_err().to_string();
        assert!(e.contains("`xx_YY.UTF-8` is not listed"), "{e}");
        // Built-in locales: only /etc/default/locale, no chroot.
        let (_d, s) = store();
        let mut t = tree(&s, &[]);
        run("locale", &[("lang", "C.UTF-8")], &mut t, &s).unwrap();
        assert!(text(&t, &s, "etc/default/locale").ends_with("\nLANG=C.UTF-8\n"));
        let step = |lang: &str| ElementStep {
            name: "locale".into(),
            params: params(&[("lang", lang)]),
        };
        assert!(!step("C.UTF-8").needs_root());
        assert!(step("en_US.UTF-8").needs_root());
    }

    #[test]
    fn cloud_init_lists_datasources_then_none() {
        let (_d, s) = store();
        let mut t = tree(&s, &[]);
        run("cloud-init", &[], &mut t, &s).unwrap();
        assert!(text(&t, &s, CLOUD_INIT_FILE)
            .ends_with("\ndatasource_list: [ ConfigDrive, OpenStack, None ]\n"));
        run(
            "cloud-init",
            &[("datasources", "NoCloud, Ec2 None NoCloud")],
            &mut t,
            &s,
        )
        .unwrap();
        assert!(text(&t, &s, CLOUD_INIT_FILE).ends_with("[ NoCloud, Ec2, None ]\n"));
        assert!(parse("cloud-init", &params(&[("datasources", "a]b")])).is_err());
        assert!(parse("cloud-init", &params(&[("datasources", "None")])).is_err());
    }

    #[test]
    fn growroot_installs_an_enabled_early_unit() {
        let (_d, s) = store();
        let mut t = tree(&s, &[]);
        run("growroot", &[], &mut t, &s).unwrap();
        assert_eq!(t.entries[GROWROOT_SCRIPT].mode, 0o755);
        assert_eq!(
            t.entries["etc/systemd/system/sysinit.target.wants/imgspec-growroot.service"].kind,
            EntryKind::Symlink {
                target: "/etc/systemd/system/imgspec-growroot.service".into()
            }
        );
        let unit = text(&t, &s, GROWROOT_UNIT);
        assert!(unit.contains("ExecStart=/usr/local/sbin/imgspec-growroot\n"));
        assert!(unit.contains("Before=sysinit.target"));
        assert!(unit.contains("DefaultDependencies=no"));
    }

    /// The growroot script is valid shell.
    #[test]
    fn growroot_script_parses() {
        let st = std::process::Command::new("sh")
            .args(["-n", "-c", GROWROOT_TEXT])
            .status()
            .unwrap();
        assert!(st.success());
    }

    #[test]
    fn grub2_writes_default_grub_with_the_serial_console() {
        let (_d, s) = store();
        let mut t = tree(&s, &[]);
        run("grub2", &[], &mut t, &s).unwrap();
        let g = text(&t, &s, "etc/default/grub");
        assert!(g.contains("\nGRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200\"\n"));
        assert!(g.contains("\nGRUB_TERMINAL=\"console serial\"\n"));
    }

    /// The plan puts the packages elements and users need in a package set before them.
    #[test]
    fn the_plan_installs_what_elements_need_before_them() {
        use crate::plan::plan;
        use crate::spec::model::{
            Base, Element as E, Image, Layer, OutputFormat, Packages, Spec, User, DEFAULT_EPOCH,
        };
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
            Layer::Element(E {
                name: name.into(),
                params: params(kv),
            })
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

    #[test]
    fn writes_are_owned_by_root_at_the_epoch() {
        let (_d, s) = store();
        let mut t = tree(&s, &[]);
        run("hostname", &[("name", "a")], &mut t, &s).unwrap();
        let e = &t.entries["etc/hostname"];
        assert_eq!((e.uid, e.gid, e.mode, e.mtime), (0, 0, 0o644, 1000));
        assert_eq!(t.entries["etc"].mtime, 1000);
    }
}
