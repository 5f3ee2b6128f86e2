//! The RPM family (Fedora, RHEL, CentOS, Rocky, AlmaLinux), as far as imgspec knows it today:
//! dnf inside an image that came from a disk or a tarball ([`install`]), and the RPM-family
//! names of the packages the plan adds to an image ([`names`]). It has no bootstrap (no
//! `base "fedora"`: no RPM mirror is reachable where imgspec is built and tested), no lock
//! store and no [`super::Family`] of its own: an image reaches it only through
//! [`manager_of`], which the `packages` step of an image without a distribution bootstrap
//! asks at run time ([`crate::steps::packages`]).
//!
//! Which package manager a tree has is decided by the tree alone, so the choice needs no key
//! part: the step's input key already fixes the tree.

pub mod install;
pub mod names;

use crate::steps::tree::Tree;
use crate::steps::StepError;
use imgspec_cache::{EntryKind, Store};

/// Step output metadata of a `packages` step that ran dnf: the program (`dnf`, `dnf5`, `yum`).
/// `imgspec lock` reads it to say that it cannot lock such a set yet.
pub const MANAGER_META: &str = "package-manager";

/// os-release `ID`s (and `ID_LIKE` words) of the RPM family: dnf installs their packages.
pub const RPM_IDS: &[&str] = &["fedora", "rhel", "centos", "rocky", "almalinux"];
/// os-release `ID`s (and `ID_LIKE` words) of the Debian family: apt installs their packages.
pub const DEB_IDS: &[&str] = &["debian", "ubuntu"];
/// dnf's programs, in the order they are looked for under `/usr/bin` (Fedora 41's `dnf` is
/// dnf5 by a link; EL 7's is `yum`).
pub const DNF_PROGRAMS: &[&str] = &["dnf", "dnf5", "yum"];

/// The package manager inside a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    /// `apt-get`: the Debian family ([`crate::distro::debian::install`]).
    Apt,
    /// dnf, by the name of its program in `/usr/bin` ([`install`]).
    Dnf(&'static str),
}

/// `KEY=value` of an os-release text, unquoted.
pub fn os_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
        Some(v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

/// The package manager of a tree from its os-release text (`ID`, then each word of `ID_LIKE`:
/// the first of [`RPM_IDS`] or [`DEB_IDS`] decides) and which programs it has (`has` answers
/// for paths like `usr/bin/apt-get`); without a known os-release, whichever of `apt-get` and
/// dnf ([`DNF_PROGRAMS`]) the tree has, apt first. `Err` says why neither can be used.
pub fn manager_of(os_release: Option<&str>, has: &dyn Fn(&str) -> bool) -> Result<Manager, String> {
    let dnf = || {
        DNF_PROGRAMS
            .iter()
            .copied()
            .find(|p| has(&format!("usr/bin/{p}")))
    };
    let apt = || has("usr/bin/apt-get");
    let id = os_release.and_then(|t| os_field(t, "ID"));
    let like = os_release
        .and_then(|t| os_field(t, "ID_LIKE"))
        .unwrap_or_default();
    let words: Vec<&str> = id
        .iter()
        .map(String::as_str)
        .chain(like.split_whitespace())
        .collect();
    let said = |what: &str| match &id {
        Some(i) => format!("its os-release says ID={i}{what}"),
        None => "it has no os-release".to_string(),
    };
    let like_part = if like.is_empty() {
        String::new()
    } else {
        format!(" ID_LIKE=\"{like}\"")
    };
    for w in &words {
        if RPM_IDS.contains(w) {
            return dnf().map(Manager::Dnf).ok_or_else(|| {
                format!(
                    "the image is of the RPM family ({}) but has no dnf (`/usr/bin/dnf`, \
                     `dnf5` or `yum`): its `packages` layers cannot install",
                    said(&like_part)
                )
            });
        }
        if DEB_IDS.contains(w) {
            return if apt() {
                Ok(Manager::Apt)
            } else {
                Err(format!(
                    "the image is of the Debian family ({}) but has no `/usr/bin/apt-get`: its \
                     `packages` layers cannot install",
                    said(&like_part)
                ))
            };
        }
    }
    if apt() {
        return Ok(Manager::Apt);
    }
    if let Some(p) = dnf() {
        return Ok(Manager::Dnf(p));
    }
    Err(format!(
        "the image has no package manager imgspec knows ({}, and it has neither \
         `/usr/bin/apt-get` nor `/usr/bin/dnf`): its `packages` layers cannot install; \
         imgspec installs with apt (debian, ubuntu) and dnf (fedora, rhel, centos, rocky, \
         almalinux)",
        said(&like_part)
    ))
}

/// [`manager_of`] for a stored tree: its `/etc/os-release` (else `/usr/lib/os-release`) and
/// programs, through the tree's own links.
pub fn manager_in(tree: &Tree, store: &Store) -> Result<Manager, StepError> {
    let os = match tree.read(store, "etc/os-release")? {
        Some(t) => Some(t),
        None => tree.read(store, "usr/lib/os-release")?,
    };
    let os = os.map(|b| String::from_utf8_lossy(&b).into_owned());
    let has = |p: &str| {
        tree.resolve(p, true).is_ok_and(|r| {
            matches!(
                tree.entries.get(&r).map(|e| &e.kind),
                Some(EntryKind::File { .. })
            )
        })
    };
    manager_of(os.as_deref(), &has).map_err(StepError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(progs: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |p: &str| progs.iter().any(|q| p == format!("usr/bin/{q}"))
    }

    #[test]
    fn os_release_decides_before_the_programs() {
        let both = with(&["apt-get", "dnf"]);
        let fedora = "NAME=\"Fedora Linux\"\nID=fedora\nVERSION_ID=41\n";
        assert_eq!(manager_of(Some(fedora), &both), Ok(Manager::Dnf("dnf")));
        let rocky = "ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n";
        assert_eq!(manager_of(Some(rocky), &both), Ok(Manager::Dnf("dnf")));
        // An unknown ID, known ID_LIKE: the first known word decides.
        let alma_like = "ID=mycorp\nID_LIKE='rhel fedora'\n";
        assert_eq!(manager_of(Some(alma_like), &both), Ok(Manager::Dnf("dnf")));
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(manager_of(Some(debian), &both), Ok(Manager::Apt));
        let mint = "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n";
        assert_eq!(manager_of(Some(mint), &both), Ok(Manager::Apt));
    }

    #[test]
    fn dnf_program_is_found_by_name() {
        let el = "ID=centos\n";
        assert_eq!(
            manager_of(Some(el), &with(&["dnf5"])),
            Ok(Manager::Dnf("dnf5"))
        );
        assert_eq!(
            manager_of(Some(el), &with(&["yum"])),
            Ok(Manager::Dnf("yum"))
        );
        assert_eq!(
            manager_of(Some(el), &with(&["yum", "dnf"])),
            Ok(Manager::Dnf("dnf"))
        );
    }

    #[test]
    fn without_a_known_os_release_the_programs_decide() {
        assert_eq!(manager_of(None, &with(&["apt-get"])), Ok(Manager::Apt));
        assert_eq!(manager_of(None, &with(&["dnf"])), Ok(Manager::Dnf("dnf")));
        assert_eq!(
            manager_of(Some("ID=fixture\n"), &with(&["apt-get", "dnf"])),
            Ok(Manager::Apt)
        );
        let e = manager_of(Some("ID=alpine\n"), &with(&[])).unwrap_err();
        assert!(e.contains("ID=alpine"), "{e}");
        assert!(
            e.contains("neither `/usr/bin/apt-get` nor `/usr/bin/dnf`"),
            "{e}"
        );
        let e = manager_of(None, &with(&[])).unwrap_err();
        assert!(e.contains("no os-release"), "{e}");
    }

    #[test]
    fn a_family_without_its_manager_is_an_error() {
        let e = manager_of(Some("ID=fedora\n"), &with(&["apt-get"])).unwrap_err();
        assert!(
            e.contains("RPM family (its os-release says ID=fedora)"),
            "{e}"
        );
        let e = manager_of(Some("ID=ubuntu\n"), &with(&["dnf"])).unwrap_err();
        assert!(e.contains("Debian family"), "{e}");
        assert!(e.contains("no `/usr/bin/apt-get`"), "{e}");
    }

    #[test]
    fn os_fields_are_unquoted_and_exact() {
        let t = "ID_LIKE=\"rhel fedora\"\nID=rocky\n";
        assert_eq!(os_field(t, "ID").as_deref(), Some("rocky"));
        assert_eq!(os_field(t, "ID_LIKE").as_deref(), Some("rhel fedora"));
        assert_eq!(os_field(t, "VERSION_ID"), None);
    }
}
