//! The RPM-family names of the packages the plan adds to an image: the plan names them as
//! Debian does (GRUB for the bootloader, what elements and users need; keys hash those names,
//! as they always did), and dnf installs them under the names of Fedora and EL ([`NAMES`]).
//! A name not in the table is the same in both families (`sudo`, `cloud-init`, `tzdata`) or
//! is the user's own, written for the image it is in, and is passed on as it is.
//!
//! The GRUB names follow Fedora's and EL's `grub2` source package: `grub2-tools` has
//! `grub2-mkimage`, `grub2-install` and `grub2-mkconfig`; `grub2-efi-x64-modules` and
//! `grub2-pc-modules` have the modules under `/usr/lib/grub/x86_64-efi` and
//! `/usr/lib/grub/i386-pc` (the folders Debian uses too); `grub2-efi-x64` is GRUB signed by
//! the distribution and `shim-x64` the shim signed by Microsoft.

/// Debian name → the RPM-family packages that do the same; an empty list: there is none, and
/// a set asking for it cannot install on an RPM-family image.
pub const NAMES: &[(&str, &[&str])] = &[
    // GRUB: the tools, both firmwares' modules (element "grub2", bootloader).
    ("grub-common", &["grub2-tools"]),
    ("grub2-common", &["grub2-common"]),
    ("grub-efi-amd64-bin", &["grub2-efi-x64-modules"]),
    ("grub-pc-bin", &["grub2-pc-modules"]),
    ("grub-efi-arm64-bin", &["grub2-efi-aa64-modules"]),
    // secure-boot=#true.
    ("grub-efi-amd64-signed", &["grub2-efi-x64"]),
    ("shim-signed", &["shim-x64"]),
    // element "growroot": growpart.
    ("cloud-guest-utils", &["cloud-utils-growpart"]),
    // user: useradd, usermod and chpasswd are shadow-utils' (Debian's `passwd`).
    ("passwd", &["shadow-utils"]),
    // element "locale".
    ("locales", &["glibc-all-langpacks"]),
    // element "dhcp-all-interfaces" writes ifupdown's configuration: RPM-family images have
    // no ifupdown (NetworkManager does DHCP on every interface by default).
    ("ifupdown", &[]),
    ("isc-dhcp-client", &[]),
];

/// The packages dnf installs for `packages` (sorted, deduplicated), or the Debian names that
/// have no RPM-family package.
pub fn rpm_names(packages: &[String]) -> Result<Vec<String>, Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut none: Vec<String> = Vec::new();
    for p in packages {
        match NAMES.iter().find(|(deb, _)| deb == p) {
            Some((_, [])) => none.push(p.clone()),
            Some((_, rpms)) => out.extend(rpms.iter().map(|s| s.to_string())),
            None => out.push(p.clone()),
        }
    }
    if !none.is_empty() {
        return Err(none);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The Debian name `rpm` was mapped from, when it was ([`NAMES`]).
pub fn debian_name_of(rpm: &str, asked: &[String]) -> Option<&'static str> {
    NAMES
        .iter()
        .find(|(deb, rpms)| rpms.contains(&rpm) && asked.iter().any(|a| a == deb))
        .map(|(deb, _)| *deb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_plans_packages_get_rpm_names() {
        // What the plan adds for a bootloader (element "grub2"'s list), a user with sudo and
        // element "growroot", with a package of the user's own.
        let mut asked: Vec<String> = crate::element::grub2::PACKAGES
            .iter()
            .map(|p| p.to_string())
            .chain(s(&["passwd", "sudo", "cloud-guest-utils", "vim-enhanced"]))
            .collect();
        asked.sort();
        assert_eq!(
            rpm_names(&asked).unwrap(),
            s(&[
                "cloud-utils-growpart",
                "grub2-common",
                "grub2-efi-x64-modules",
                "grub2-pc-modules",
                "grub2-tools",
                "shadow-utils",
                "sudo",
                "vim-enhanced",
            ])
        );
        assert_eq!(
            rpm_names(&s(&["grub-efi-amd64-signed", "shim-signed"])).unwrap(),
            s(&["grub2-efi-x64", "shim-x64"])
        );
        assert_eq!(
            debian_name_of("cloud-utils-growpart", &asked),
            Some("cloud-guest-utils")
        );
        assert_eq!(debian_name_of("vim-enhanced", &asked), None);
    }

    #[test]
    fn debian_only_packages_are_named() {
        assert_eq!(
            rpm_names(&s(&["ifupdown", "isc-dhcp-client", "sudo"])).unwrap_err(),
            s(&["ifupdown", "isc-dhcp-client"])
        );
    }

    #[test]
    fn every_plan_package_is_mapped_or_the_same_in_both_families() {
        // The packages the plan may add: a change there must be looked at here.
        let same = ["cloud-init", "sudo", "tzdata"];
        let plan: Vec<&str> = crate::element::grub2::PACKAGES
            .iter()
            .chain(crate::distro::debian::GRUB_PACKAGES_ARM64)
            .chain(crate::distro::debian::SECURE_BOOT_PACKAGES)
            .copied()
            .chain([
                "cloud-guest-utils",
                "passwd",
                "locales",
                "ifupdown",
                "isc-dhcp-client",
            ])
            .chain(same)
            .collect();
        for p in plan {
            assert!(
                same.contains(&p) || NAMES.iter().any(|(d, _)| *d == p),
                "`{p}` has no RPM-family entry"
            );
        }
    }
}
