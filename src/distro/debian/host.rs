//! What imgspec reads of the build host's configuration: the apt sources that give the default
//! mirror of `base "debian"`. The mirror's address is taken from here at build time and never
//! written into the project or a key.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("the host's apt sources name no archive for `{codename}`")]
    NoArchive { codename: String },
    #[error("cannot tell the host's release: /etc/os-release has no VERSION_CODENAME")]
    NoCodename,
    #[error("the host runs `{host}`: its apt sources cannot build a `{wanted}` base")]
    OtherDistro { host: String, wanted: String },
}

/// One `deb` source of the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub uri: String,
    pub suites: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSources {
    /// The host's release codename (`bookworm`).
    pub codename: String,
    pub sources: Vec<Source>,
}

impl HostSources {
    /// `deb` lines for `suite`: each host source of the host's own release, with the suite
    /// renamed (`bookworm-security` → `SUITE-security`); backports and third-party sources are
    /// left out.
    pub fn lines_for(&self, suite: &str, components: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.sources {
            for host_suite in &s.suites {
                let Some(rest) = host_suite.strip_prefix(&self.codename) else {
                    continue;
                };
                if !matches!(rest, "" | "-updates" | "-security") {
                    continue;
                }
                let line = format!("deb {} {suite}{rest} {components}", s.uri);
                if !out.contains(&line) {
                    out.push(line);
                }
            }
        }
        out
    }
}

/// Reads the host's apt sources (`sources.list`, `sources.list.d/*.list` and `*.sources`), for
/// a base of `distro` (`debian`, `ubuntu`): the host must run that distribution.
pub fn apt_sources(distro: &str) -> Result<HostSources, HostError> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let host = os_field(&os, "ID").unwrap_or_default();
    if host != distro {
        return Err(HostError::OtherDistro {
            host,
            wanted: distro.to_string(),
        });
    }
    let codename = os_field(&os, "VERSION_CODENAME").ok_or(HostError::NoCodename)?;
    let mut sources = Vec::new();
    let dir = Path::new("/etc/apt/sources.list.d");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.insert(0, Path::new("/etc/apt/sources.list").to_path_buf());
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => sources.extend(parse_deb822(&text)),
            Some("list") => sources.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    let h = HostSources { codename, sources };
    if h.lines_for(&h.codename, "main").is_empty() {
        return Err(HostError::NoArchive {
            codename: h.codename,
        });
    }
    Ok(h)
}

fn os_field(os_release: &str, name: &str) -> Option<String> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// deb822 `.sources` stanzas of type `deb` that are not disabled.
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let types = field("Types").unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb") {
            continue;
        }
        if field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        let suites: Vec<String> = field("Suites")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        for uri in field("URIs").unwrap_or_default().split_whitespace() {
            out.push(Source {
                uri: uri.to_string(),
                suites: suites.clone(),
            });
        }
    }
    out
}

/// One-line `deb [options] URI SUITE COMPONENTS...` entries.
pub fn parse_one_line(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(r) => r.split_once(']').map(|(_, r)| r).unwrap_or(""),
            None => rest,
        };
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push(Source {
                uri: uri.into(),
                suites: vec![suite.into()],
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\nURIs: http://archive.example/debian\nSuites: bookworm bookworm-updates bookworm-backports\nComponents: main\n\nTypes: deb-src\nURIs: http://archive.example/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb\nURIs: http://third.example/apt\nSuites: cloud-sdk-bookworm\n";

    #[test]
    fn maps_host_suites_to_the_requested_one() {
        let h = HostSources {
            codename: "bookworm".into(),
            sources: parse_deb822(DEB822),
        };
        assert_eq!(
            h.lines_for("trixie", "main contrib"),
            [
                "deb http://archive.example/debian trixie main contrib",
                "deb http://archive.example/debian trixie-updates main contrib",
                "deb http://security.example/debian-security trixie-security main contrib",
            ]
        );
    }

    #[test]
    fn reads_one_line_sources_with_options() {
        let s = parse_one_line(
            "# comment\ndeb [arch=amd64 signed-by=/x.gpg] http://a.example/debian bookworm main\n",
        );
        assert_eq!(
            s,
            [Source {
                uri: "http://a.example/debian".into(),
                suites: vec!["bookworm".into()]
            }]
        );
    }

    #[test]
    fn codename_from_os_release() {
        let os = "NAME=\"Debian\"\nID=debian\nVERSION_CODENAME=bookworm\n";
        assert_eq!(os_field(os, "VERSION_CODENAME"), Some("bookworm".into()));
        assert_eq!(os_field(os, "ID"), Some("debian".into()));
    }
}
