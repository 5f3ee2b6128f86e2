//! The rules for values written in a spec: names (images, users, packages), paths on the host
//! (relative to the spec file, kept inside its folder) and paths in the image (absolute,
//! normalised). Each check reports through [`Cx`] and returns the checked value.

use std::path::{Component, Path, PathBuf};

use super::error::SpecError;
use super::read::{lexical_join, shown, Cx, Spanned};
use super::source::io_reason;

/// What a host path must name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    File,
    Folder,
}

/// Whether a host path must stay inside the folder of the spec file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Confined {
    Yes,
    /// Any absolute path, or a path relative to the spec file (`keyring`, which may name a
    /// keyring of the host).
    No,
}

/// Resolves a host path written in the spec against the spec file's folder: it must exist,
/// be a `need`, and (when `confined`) stay inside that folder once `..` and symlinks are
/// resolved. Returns the canonical absolute path.
pub(crate) fn resolve_path(
    cx: &mut Cx<'_>,
    path: &Spanned<String>,
    need: Need,
    confined: Confined,
) -> Option<PathBuf> {
    let escape = |cx: &mut Cx<'_>| {
        cx.report(SpecError::FilesEscape {
            src: cx.src(),
            span: path.span,
            path: path.value.clone(),
            folder: shown(&cx.file.shown_dir),
        });
        None
    };
    let missing = |cx: &mut Cx<'_>, reason: &str, help: String| {
        cx.report(SpecError::FilesMissing {
            src: cx.src(),
            span: path.span,
            path: path.value.clone(),
            reason: reason.to_string(),
            help,
        });
        None
    };
    let shown_target = shown(&lexical_join(&cx.file.shown_dir, &path.value));
    // Where a relative path starts from, for help lines.
    let relative_to = match Path::new(&path.value).is_absolute() {
        true => String::new(),
        false => format!(
            " (it is relative to the folder of `{}`)",
            cx.file.src.name()
        ),
    };
    let canonical = match cx.file.dir.join(&path.value).canonicalize() {
        Ok(canonical) => canonical,
        Err(_) if confined == Confined::Yes && escapes_lexically(&path.value) => {
            return escape(cx);
        }
        Err(e) => {
            let help = match need {
                Need::Folder => {
                    format!("create the folder `{shown_target}` or fix the path{relative_to}")
                }
                Need::File => {
                    format!("put the file at `{shown_target}` or fix the path{relative_to}")
                }
            };
            let reason = match e.kind() {
                std::io::ErrorKind::NotFound => "does not exist".to_string(),
                _ => format!("cannot be read: {}", io_reason(&e)),
            };
            return missing(cx, &reason, help);
        }
    };
    if confined == Confined::Yes && !canonical.starts_with(&cx.file.dir) {
        return escape(cx);
    }
    match need {
        Need::Folder if !canonical.is_dir() => missing(
            cx,
            "is not a folder",
            format!("`files` copies a folder's content: name a folder{relative_to}"),
        ),
        Need::File if !canonical.is_file() => {
            missing(cx, "is not a file", format!("name a file{relative_to}"))
        }
        _ => Some(canonical),
    }
}

/// Whether a relative path leaves its folder by its text alone (`../x`, `/etc`).
fn escapes_lexically(path: &str) -> bool {
    let joined = lexical_join(Path::new(""), path);
    joined.is_absolute() || joined.starts_with("..")
}

/// A path inside the image (`dest`, `mount`, `shell`): absolute, normalised (no `.`, `..`,
/// `//` or trailing `/`). `example` is a good value, for the help line.
pub(crate) fn absolute_path(
    cx: &mut Cx<'_>,
    path: &Spanned<String>,
    what: &str,
    example: &str,
) -> Option<String> {
    let normalised = normalise_absolute(&path.value);
    if normalised.is_none() {
        cx.bad_value(
            path.span,
            format!(
                "`{what}` must be an absolute path without `..`, found `{}`",
                path.value
            ),
            "not an absolute path",
            &format!("write the path inside the image from its root, e.g. `{what}=\"{example}\"`"),
        );
    }
    normalised
}

fn normalise_absolute(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let mut parts = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            part => parts.push(part),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// Image and package-set names become file and step names: letters, digits, `.`, `_`, `-`.
pub(crate) fn check_simple_name(cx: &mut Cx<'_>, name: &Spanned<String>, what: &str) {
    let mut chars = name.value.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        cx.bad_value(
            name.span,
            format!("`{}` is not a valid {what}", name.value),
            "not a valid name",
            "use letters, digits, `.`, `_` and `-`, starting with a letter or digit",
        );
    }
}

/// POSIX-portable user and group names, lowercase as Debian's `adduser` wants them.
pub(crate) fn check_user_name(cx: &mut Cx<'_>, name: &Spanned<String>, what: &str) {
    let mut chars = name.value.chars();
    let ok = name.value.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if !ok {
        cx.bad_value(
            name.span,
            format!("`{}` is not a valid {what}", name.value),
            "not a valid name",
            "use lowercase letters, digits, `_` and `-`, starting with a letter or `_`, at most 32 characters",
        );
    }
}

/// A single word of lowercase letters, digits, `.` and `-` (suites, architectures).
pub(crate) fn check_word(cx: &mut Cx<'_>, word: &Spanned<String>, what: &str, help: &str) {
    let ok = !word.value.is_empty()
        && word
            .value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-'));
    if !ok {
        cx.bad_value(
            word.span,
            format!("`{}` is not a valid {what}", word.value),
            "not valid",
            help,
        );
    }
}

/// Debian package names (Debian Policy 5.6.7), optionally with an `:ARCH` qualifier.
pub(crate) fn is_package_name(name: &str) -> bool {
    let (package, arch) = match name.split_once(':') {
        Some((package, arch)) => (package, Some(arch)),
        None => (name, None),
    };
    let mut chars = package.chars();
    package.len() >= 2
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
        && arch.is_none_or(|a| {
            !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// `to` relative to the folder `from` (both absolute and canonical): `../other/o.kdl`.
pub(crate) fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let common = from
        .components()
        .zip(to.components())
        .take_while(|(a, b)| a == b)
        .count();
    let up = from.components().count() - common;
    let mut path: PathBuf = std::iter::repeat_n(Component::ParentDir, up).collect();
    path.extend(to.components().skip(common));
    path
}

/// The whitespace-separated words of `text`.
pub(crate) fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_follow_debian_policy() {
        for ok in [
            "openssh-server",
            "g++",
            "libc6:amd64",
            "linux-image-6.1.0-9-amd64",
            "0ad",
        ] {
            assert!(is_package_name(ok), "{ok}");
        }
        for bad in ["a", "OpenSSH", "-x", "foo bar", "foo:", "foo_bar", ""] {
            assert!(!is_package_name(bad), "{bad}");
        }
    }

    #[test]
    fn image_paths_are_normalised() {
        assert_eq!(normalise_absolute("/").as_deref(), Some("/"));
        assert_eq!(
            normalise_absolute("/etc//ssh/./").as_deref(),
            Some("/etc/ssh")
        );
        assert_eq!(normalise_absolute("etc"), None);
        assert_eq!(normalise_absolute("/etc/../root"), None);
    }

    #[test]
    fn relative_paths_climb_out_of_the_common_folder() {
        let path = relative_path(Path::new("/s/a"), Path::new("/s/other/o.kdl"));
        assert_eq!(path, Path::new("../other/o.kdl"));
        let path = relative_path(Path::new("/s"), Path::new("/s/o.kdl"));
        assert_eq!(path, Path::new("o.kdl"));
    }

    #[test]
    fn lexical_escapes_are_seen_without_the_file_system() {
        assert!(escapes_lexically("../x"));
        assert!(escapes_lexically("a/../../x"));
        assert!(escapes_lexically("/etc"));
        assert!(!escapes_lexically("a/../x"));
    }
}
