//! Phase one: reading spec files and the files they `import` into raw KDL documents.
//!
//! Each file is read and parsed once, however many routes import it (files are told apart by
//! their canonical path). A KDL syntax error becomes a `spec::kdl-syntax` diagnostic per problem
//! kdl found; an import that leads back to a file still being read is a `spec::import-cycle`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kdl::{KdlDocument, KdlError};
use miette::SourceSpan;

use super::error::{SpecError, Src};
use super::read::{lexical_join, node_name, shown, Cx, FileId, FileInfo, Problems, Shape};
use super::scan;

/// A loaded file: where it is, and its nodes when it parsed.
pub(crate) struct SourceFile {
    pub info: FileInfo,
    /// None when the file is not valid KDL (already reported).
    pub doc: Option<KdlDocument>,
    /// The files it imports directly.
    pub imports: Vec<FileId>,
}

pub(crate) const IMPORT: Shape<'static> = Shape {
    usage: "import \"common.kdl\"",
    max_args: 1,
    props: &[],
    repeatable: &[],
    children: false,
};

/// Reads `paths` and everything they import, in the order first seen.
pub(crate) fn load_files(paths: &[PathBuf], problems: &mut Problems) -> Vec<SourceFile> {
    let mut loader = Loader {
        files: Vec::new(),
        by_path: HashMap::new(),
        reading: Vec::new(),
        problems,
    };
    for path in paths {
        loader.load(path, PathBuf::from(path), None);
    }
    loader.files
}

struct Loader<'p> {
    files: Vec<SourceFile>,
    by_path: HashMap<PathBuf, FileId>,
    /// The chain of files being read, outermost first: an import of one of them is a cycle.
    reading: Vec<FileId>,
    problems: &'p mut Problems,
}

/// Where an import was written, to report a file it names that cannot be read.
struct ImportSite {
    file: FileInfo,
    span: SourceSpan,
    /// The path as the import writes it.
    written: String,
}

/// A spec file larger than this is refused: specs are a few kilobytes.
pub(crate) const MAX_SPEC_BYTES: u64 = 1 << 20;

/// Where an import chain started: the folder of the spec file named on the command line, which
/// every file it imports must be in.
#[derive(Clone)]
struct Root {
    /// Canonical.
    dir: PathBuf,
    shown_dir: PathBuf,
    /// The spec file, as messages show it.
    spec: String,
}

/// Why a spec file could not be read.
enum ReadProblem {
    Io(std::io::Error),
    /// `is not a regular file`, …: a fragment of a message, and the help line.
    Refused(String, String),
}

/// Reads the spec file at `path` (canonical): a regular file of at most [`MAX_SPEC_BYTES`].
fn read_spec(path: &Path) -> Result<Vec<u8>, ReadProblem> {
    read_bounded(path, MAX_SPEC_BYTES).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidInput => ReadProblem::Refused(
            e.to_string(),
            "name a spec file: a regular `.kdl` file".to_string(),
        ),
        std::io::ErrorKind::FileTooLarge => ReadProblem::Refused(
            e.to_string(),
            "a spec file is KDL text of a few kilobytes: check that this is the file meant"
                .to_string(),
        ),
        _ => ReadProblem::Io(e),
    })
}

/// Reads the file at `path`, which must be a regular file of at most `max` bytes: opened
/// without blocking, so that a FIFO or a device is refused (`InvalidInput`: `it is not a
/// regular file`) rather than waited on or read forever, and read no further than `max`
/// (`FileTooLarge`: `it is larger than 1MiB`). For every file a user names that imgspec reads
/// whole: spec files, lock files, the config file.
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "a folder"
        } else {
            "not a regular file"
        };
        return Err(Error::new(ErrorKind::InvalidInput, format!("it is {kind}")));
    }
    let too_big = || {
        Error::new(
            ErrorKind::FileTooLarge,
            format!("it is larger than {}", super::format_size(max)),
        )
    };
    if meta.len() > max {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(too_big());
    }
    Ok(bytes)
}

/// Parses `text` on a thread with a stack of [`scan::PARSER_STACK`]: kdl's parser recurses, and
/// what [`scan::too_deep`] lets through needs more stack than a test thread has in an
/// unoptimised build. Without a thread (the system refuses one), on this one.
fn parse_kdl(text: &str) -> Result<KdlDocument, KdlError> {
    std::thread::scope(|s| {
        match std::thread::Builder::new()
            .name("kdl-parse".into())
            .stack_size(scan::PARSER_STACK)
            .spawn_scoped(s, || KdlDocument::parse(text))
        {
            Ok(handle) => handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => KdlDocument::parse(text),
        }
    })
}

/// The line and column (both from 1, the column in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

impl Loader<'_> {
    /// Loads the file at `path` (shown in messages as `shown_path`), and what it imports,
    /// unless it is loaded already. `site` and `root` are where it is imported and the spec
    /// file the import chain started from, for an import.
    fn load(
        &mut self,
        path: &Path,
        shown_path: PathBuf,
        site: Option<(&ImportSite, &Root)>,
    ) -> Option<FileId> {
        let canonical = path.canonicalize();
        let root = match site {
            Some((site, root)) => {
                // A missing file outside is refused as outside, not reported as missing.
                let inside = match &canonical {
                    Ok(canonical) => canonical.starts_with(&root.dir),
                    Err(_) => {
                        lexical_join(Path::new(""), &path.to_string_lossy()).starts_with(&root.dir)
                    }
                };
                if !inside {
                    let problem = SpecError::ImportEscape {
                        src: site.file.src.clone(),
                        span: site.span,
                        path: site.written.clone(),
                        spec: root.spec.clone(),
                        folder: shown(&root.shown_dir),
                    };
                    self.problems.push(Some(site.file.id), problem);
                    return None;
                }
                root.clone()
            }
            None => Root {
                dir: canonical
                    .as_ref()
                    .ok()
                    .and_then(|c| c.parent())
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
                shown_dir: shown_path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default(),
                spec: shown(&shown_path),
            },
        };
        let site = site.map(|s| s.0);
        let canonical = match canonical {
            Ok(canonical) => canonical,
            Err(e) => return self.unreadable(site, &shown_path, &e),
        };
        if let Some(&id) = self.by_path.get(&canonical) {
            return Some(id);
        }
        let bytes = match read_spec(&canonical) {
            Ok(bytes) => bytes,
            Err(ReadProblem::Io(e)) => return self.unreadable(site, &shown_path, &e),
            Err(ReadProblem::Refused(reason, help)) => {
                let problem = SpecError::Unreadable {
                    src: site.map(|s| s.file.src.clone()),
                    span: site.map(|s| s.span),
                    path: shown(&shown_path),
                    reason,
                    help,
                };
                self.problems.push(site.map(|s| s.file.id), problem);
                return None;
            }
        };
        let (text, bad_byte) = match String::from_utf8(bytes) {
            Ok(text) => (text, None),
            Err(e) => {
                let offset = e.utf8_error().valid_up_to();
                let byte = e.as_bytes()[offset];
                (
                    String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    Some((offset, byte)),
                )
            }
        };

        let id = self.files.len();
        let text = Arc::new(text);
        let info = FileInfo {
            id,
            dir: canonical
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            shown_dir: shown_path
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            path: canonical.clone(),
            src: Src::new(shown(&shown_path), text.clone()),
        };
        let doc = if let Some((offset, byte)) = bad_byte {
            // Up to the first bad byte the lossy text is the file's: the offset is the same.
            let (line, column) = line_column(&text, offset);
            let problem = SpecError::NotUtf8 {
                src: info.src.clone(),
                span: SourceSpan::new(offset.into(), '\u{FFFD}'.len_utf8()),
                path: shown(&shown_path),
                byte,
                line,
                column,
                offset,
            };
            self.problems.push(Some(id), problem);
            None
        } else if let Some(deep) = scan::too_deep(&text) {
            let (message, label, help) = deep.describe();
            let problem = SpecError::TooDeep {
                src: info.src.clone(),
                span: SourceSpan::new(deep.offset.into(), deep.len),
                message,
                label,
                help,
            };
            self.problems.push(Some(id), problem);
            None
        } else {
            match parse_kdl(&text) {
                Ok(doc) => Some(doc),
                Err(e) => {
                    self.report_syntax(&info, e);
                    None
                }
            }
        };
        self.by_path.insert(canonical, id);
        self.files.push(SourceFile {
            info: info.clone(),
            doc,
            imports: Vec::new(),
        });

        self.reading.push(id);
        let imports = self.imports_of(id);
        let mut imported = Vec::new();
        for (text, span) in imports {
            let site = ImportSite {
                file: info.clone(),
                span,
                written: text.clone(),
            };
            let target = info.dir.join(&text);
            if let Some(cycle) = self.cycle_through(&target) {
                let mut chain: Vec<String> = cycle
                    .iter()
                    .map(|&f| format!("`{}`", self.files[f].info.src.name()))
                    .collect();
                chain.push(chain[0].clone());
                let problem = SpecError::ImportCycle {
                    src: info.src.clone(),
                    span,
                    chain: chain.join(" → "),
                };
                self.problems.push(Some(id), problem);
                continue;
            }
            let shown_target = lexical_join(&info.shown_dir, &text);
            if let Some(target) = self.load(&target, shown_target, Some((&site, &root))) {
                imported.push(target);
            }
        }
        self.reading.pop();
        self.files[id].imports = imported;
        Some(id)
    }

    /// Reports a file that cannot be read; None, for the caller to return.
    fn unreadable(
        &mut self,
        site: Option<&ImportSite>,
        shown_path: &Path,
        error: &std::io::Error,
    ) -> Option<FileId> {
        let help = match site {
            Some(_) => {
                "check the path; an import is relative to the folder of the file that imports it"
            }
            None => "check the path; it is relative to the current folder",
        };
        let problem = SpecError::Unreadable {
            src: site.map(|s| s.file.src.clone()),
            span: site.map(|s| s.span),
            path: shown(shown_path),
            reason: io_reason(error),
            help: help.to_string(),
        };
        self.problems.push(site.map(|s| s.file.id), problem);
        None
    }

    /// The `import` nodes of a file: each one's path and the span of that path.
    fn imports_of(&mut self, id: FileId) -> Vec<(String, SourceSpan)> {
        let file = &self.files[id];
        let Some(doc) = &file.doc else {
            return Vec::new();
        };
        let mut cx = Cx {
            file: &file.info,
            problems: self.problems,
        };
        doc.nodes()
            .iter()
            .filter(|node| node_name(node) == "import")
            .filter_map(|node| {
                cx.check_shape(node, &IMPORT);
                cx.arg::<String>(node, &IMPORT, 0, "the path of the file to import")
                    .map(|path| (path.value, path.span))
            })
            .collect()
    }

    /// The files from the one `target` names to the innermost being read, if `target` is
    /// being read (so importing it again would loop).
    fn cycle_through(&self, target: &Path) -> Option<Vec<FileId>> {
        let canonical = target.canonicalize().ok()?;
        let id = *self.by_path.get(&canonical)?;
        let start = self.reading.iter().position(|&f| f == id)?;
        Some(self.reading[start..].to_vec())
    }

    fn report_syntax(&mut self, info: &FileInfo, error: KdlError) {
        for diagnostic in error.diagnostics {
            let span = diagnostic.span;
            let text = error
                .input
                .get(span.offset()..span.offset() + span.len())
                .unwrap_or_default();
            let message = diagnostic
                .message
                .as_deref()
                .map_or("invalid KDL".to_string(), sentence_case);
            let (message, label, help) = match syntax_hint(text, &message) {
                Some(hint) => hint,
                None => (
                    message,
                    diagnostic.label.unwrap_or_else(|| "here".to_string()),
                    diagnostic.help.as_deref().map_or_else(
                        || "KDL v2: strings in double quotes, properties as `key=\"value\"`, booleans `#true`/`#false`, children in `{ … }`".to_string(),
                        sentence_case,
                    ),
                ),
            };
            let problem = SpecError::KdlSyntax {
                src: info.src.clone(),
                span,
                message,
                label,
                help,
            };
            self.problems.push(Some(info.id), problem);
        }
    }
}

/// Our own message, label and help for the syntax errors people make most, where kdl's are
/// generic: `text` is what kdl's span covers, `message` kdl's message.
fn syntax_hint(text: &str, message: &str) -> Option<(String, String, String)> {
    if let "true" | "false" | "null" = text {
        return Some((
            format!("bare `{text}` is not a KDL v2 value"),
            format!("write `#{text}`"),
            "KDL v2 writes its keywords with `#`: `#true`, `#false`, `#null`".to_string(),
        ));
    }
    if message.contains("newline in single-line quoted string") {
        return Some((
            "string not closed before the end of the line".to_string(),
            "no closing `\"`".to_string(),
            "add the closing `\"`; a string on several lines is written between `\"\"\"` lines"
                .to_string(),
        ));
    }
    None
}

/// Our message style from kdl's: lowercase start, no trailing period.
fn sentence_case(message: &str) -> String {
    let message = message.trim_end_matches('.');
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// An I/O error as a message fragment: `no such file or directory`.
pub(crate) fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    sentence_case(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_case_follows_our_style() {
        assert_eq!(
            sentence_case("No closing '}' for child block."),
            "no closing '}' for child block"
        );
    }

    #[test]
    fn io_reason_drops_the_os_error_number() {
        let e = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(!io_reason(&e).contains("os error"));
        let e = std::fs::read("/definitely/not/here").unwrap_err();
        assert_eq!(io_reason(&e), "no such file or directory");
    }
}
