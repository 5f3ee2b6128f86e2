//! The diagnostics of the spec front-end: one variant per kind of problem, each with a stable
//! `spec::…` code, a label on the exact span concerned and a `help` line saying what to do.
//!
//! [`SpecErrors`] is what [`super::load`] returns: every problem found across all files, sorted
//! by file and position. Messages start in lowercase, end without a period and put values in
//! backticks.

use std::fmt;
use std::sync::Arc;

use miette::{
    Diagnostic, LabeledSpan, MietteError, MietteSpanContents, Severity, SourceCode, SourceSpan,
    SpanContents,
};
use thiserror::Error;

/// The text of a spec file, named as the user knows it (`specs/common.kdl`).
///
/// As miette's source code it shows the lines around a span as they are, except when one of
/// them is longer than [`LONG_LINE`] bytes: then only a window of the span's own line is shown
/// (miette's renderer cannot place a label beyond column 65,535, and a megabyte-long line is no
/// help to read anyway).
#[derive(Clone)]
pub struct Src {
    name: String,
    text: Arc<String>,
}

/// Lines up to this many bytes are shown whole around a problem.
pub(crate) const LONG_LINE: usize = 1000;
/// The window of a longer line: from this many bytes before the span's start…
const WINDOW_BEFORE: usize = 60;
/// …and at most this many bytes in all.
const WINDOW: usize = 240;

impl Src {
    pub fn new(name: impl Into<String>, text: Arc<String>) -> Self {
        Src {
            name: name.into(),
            text,
        }
    }

    /// The file as messages name it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole text.
    pub fn inner(&self) -> &Arc<String> {
        &self.text
    }
}

impl fmt::Debug for Src {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Src").field("name", &self.name).finish()
    }
}

impl SourceCode for Src {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let text = self.text.as_str();
        let around = text.read_span(span, context_lines_before, context_lines_after)?;
        let named = |data: &'a [u8], at: SourceSpan, line, column, count| {
            Box::new(MietteSpanContents::new_named(
                self.name.clone(),
                data,
                at,
                line,
                column,
                count,
            )) as Box<dyn SpanContents<'a> + 'a>
        };
        if !around
            .data()
            .split(|&b| b == b'\n')
            .any(|line| line.len() > LONG_LINE)
        {
            let (line, column, count) = (around.line(), around.column(), around.line_count());
            return Ok(named(around.data(), *around.span(), line, column, count));
        }
        let (from, to, line, column) = window(text, span.offset());
        Ok(named(
            &text.as_bytes()[from..to],
            SourceSpan::new(from.into(), to - from),
            line,
            column,
            1,
        ))
    }
}

/// The window of the line holding `offset` that is shown when that line (or one beside it) is
/// too long: `(from, to, line, column)`, the byte range, and the line and byte column of
/// `offset` counted as miette counts them.
fn window(text: &str, offset: usize) -> (usize, usize, usize, usize) {
    let at = offset.min(text.len());
    let before = &text.as_bytes()[..at];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n' || b == b'\r')
        .map_or(0, |i| i + 1);
    let line_end = text.as_bytes()[at..]
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
        .map_or(text.len(), |i| at + i);
    let mut from = at.saturating_sub(WINDOW_BEFORE).max(line_start);
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    let mut to = (from + WINDOW).clamp(at, line_end.max(at));
    while !text.is_char_boundary(to) {
        to += 1;
    }
    // miette counts `\r\n` as one line break and a lone `\r` as one.
    let line = before
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' || (b == b'\r' && before.get(i + 1) != Some(&b'\n')))
        .count();
    (from, to, line, at - line_start)
}

/// One problem in the spec.
#[derive(Debug, Error, Diagnostic)]
pub enum SpecError {
    #[error("{message}")]
    #[diagnostic(code("spec::kdl-syntax"))]
    KdlSyntax {
        #[source_code]
        src: Src,
        #[label("{label}")]
        span: SourceSpan,
        message: String,
        label: String,
        #[help]
        help: String,
    },

    #[error("cannot read `{path}`: {reason}")]
    #[diagnostic(code("spec::unreadable"))]
    Unreadable {
        #[source_code]
        src: Option<Src>,
        #[label("imported here")]
        span: Option<SourceSpan>,
        path: String,
        reason: String,
        #[help]
        help: String,
    },

    #[error("`{path}` is not UTF-8 text: byte `0x{byte:02X}` at line {line}, column {column} (offset {offset})")]
    #[diagnostic(
        code("spec::not-utf8"),
        help("a spec file is UTF-8 text: save it as UTF-8 (or remove the byte)")
    )]
    NotUtf8 {
        #[source_code]
        src: Src,
        #[label("not UTF-8")]
        span: SourceSpan,
        path: String,
        byte: u8,
        line: usize,
        column: usize,
        offset: usize,
    },

    #[error("{message}")]
    #[diagnostic(code("spec::too-deep"))]
    TooDeep {
        #[source_code]
        src: Src,
        #[label("{label}")]
        span: SourceSpan,
        message: String,
        label: String,
        #[help]
        help: String,
    },

    #[error("{count} more problems are not shown")]
    #[diagnostic(
        code("spec::too-many"),
        help("fix the problems above and run `imgspec check` again; so many usually mean that this is not a spec file, or that a quote or a brace is missing near the first problem")
    )]
    TooMany { count: usize },

    #[error("import `{path}` is outside the folder of `{spec}`")]
    #[diagnostic(
        code("spec::import-escape"),
        help("an import names a file in `{folder}` or below it, the folder of the spec file given on the command line: move the file there")
    )]
    ImportEscape {
        #[source_code]
        src: Src,
        #[label("resolves outside `{folder}`")]
        span: SourceSpan,
        path: String,
        spec: String,
        folder: String,
    },

    #[error("import cycle: {chain}")]
    #[diagnostic(
        code("spec::import-cycle"),
        help("remove one of these imports; move what both files need into a third file that both import")
    )]
    ImportCycle {
        #[source_code]
        src: Src,
        #[label("this import closes the cycle")]
        span: SourceSpan,
        chain: String,
    },

    #[error("unknown node `{name}` {place}")]
    #[diagnostic(code("spec::unknown-node"))]
    UnknownNode {
        #[source_code]
        src: Src,
        #[label("unknown node")]
        span: SourceSpan,
        name: String,
        /// `at the top level`, `in `image``.
        place: String,
        #[help]
        help: String,
    },

    #[error("unknown property `{key}` on `{node}`")]
    #[diagnostic(code("spec::unknown-property"))]
    UnknownProperty {
        #[source_code]
        src: Src,
        #[label("unknown property")]
        span: SourceSpan,
        node: String,
        key: String,
        #[help]
        help: String,
    },

    #[error("unknown {what} `{value}`")]
    #[diagnostic(code("spec::unknown-value"))]
    UnknownValue {
        #[source_code]
        src: Src,
        #[label("unknown {what}")]
        span: SourceSpan,
        what: String,
        value: String,
        #[help]
        help: String,
    },

    #[error("{message}")]
    #[diagnostic(code("spec::bad-value"))]
    BadValue {
        #[source_code]
        src: Src,
        #[label("{label}")]
        span: SourceSpan,
        message: String,
        label: String,
        #[help]
        help: String,
    },

    /// A parameter of an element whose value the element refuses (`crate::element`).
    #[error("{message}")]
    #[diagnostic(code("spec::bad-element-param"))]
    BadElementParam {
        #[source_code]
        src: Src,
        #[label("{label}")]
        span: SourceSpan,
        message: String,
        label: String,
        #[help]
        help: String,
    },

    #[error("`{what}` must be {expected}, found {found}")]
    #[diagnostic(code("spec::wrong-type"))]
    WrongType {
        #[source_code]
        src: Src,
        #[label("expected {expected}")]
        span: SourceSpan,
        what: String,
        expected: &'static str,
        found: String,
        #[help]
        help: &'static str,
    },

    #[error("bad size `{value}`: {reason}")]
    #[diagnostic(
        code("spec::bad-size"),
        help("write a whole number and a unit: `512KiB`, `200MiB`, `2GiB`, `1TiB` (powers of 1024), `1KB`, `500MB`, `1GB` (powers of 1000), or bytes: `4096`, `512B`")
    )]
    BadSize {
        #[source_code]
        src: Src,
        #[label("not a size")]
        span: SourceSpan,
        value: String,
        reason: String,
    },

    #[error("`{node}` needs {what}")]
    #[diagnostic(code("spec::missing-argument"), help("write it as `{usage}`"))]
    MissingArgument {
        #[source_code]
        src: Src,
        #[label("missing {what}")]
        span: SourceSpan,
        node: String,
        what: String,
        usage: &'static str,
    },

    #[error("`{node}` needs the property `{key}`")]
    #[diagnostic(code("spec::missing-property"))]
    MissingProperty {
        #[source_code]
        src: Src,
        #[label("`{key}` missing")]
        span: SourceSpan,
        node: String,
        key: String,
        #[help]
        help: String,
    },

    #[error("unexpected argument to `{node}`")]
    #[diagnostic(code("spec::unexpected-argument"), help("write it as `{usage}`"))]
    UnexpectedArgument {
        #[source_code]
        src: Src,
        #[label("not expected here")]
        span: SourceSpan,
        node: String,
        usage: &'static str,
    },

    #[error("`{node}` takes no children block")]
    #[diagnostic(
        code("spec::unexpected-children"),
        help("remove the `{{ … }}` block, or move its nodes where they belong")
    )]
    UnexpectedChildren {
        #[source_code]
        src: Src,
        #[label("not expected here")]
        span: SourceSpan,
        node: String,
    },

    #[error("`{node}` is given twice")]
    #[diagnostic(
        code("spec::duplicate-node"),
        help("keep one `{node}`: an image has at most one (an image that extends another replaces its parent's)")
    )]
    DuplicateNode {
        #[source_code]
        src: Src,
        #[label("first given here")]
        first: SourceSpan,
        #[label("given again here")]
        second: SourceSpan,
        node: String,
    },

    #[error("property `{key}` is given twice")]
    #[diagnostic(code("spec::duplicate-property"), help("keep one `{key}`"))]
    DuplicateProperty {
        #[source_code]
        src: Src,
        #[label("first given here")]
        first: SourceSpan,
        #[label("given again here")]
        second: SourceSpan,
        key: String,
    },

    #[error("`{name}` is declared twice")]
    #[diagnostic(
        code("spec::duplicate-image"),
        help("rename one of them: images and templates share one namespace across all imported files")
    )]
    DuplicateImage {
        #[source_code]
        src: Src,
        /// The first declaration, when it is in the same file.
        #[label("first declared here")]
        first: Option<SourceSpan>,
        #[label("declared again here")]
        second: SourceSpan,
        name: String,
        /// The first declaration, when it is in another file.
        #[related]
        elsewhere: Vec<FirstDeclared>,
    },

    #[error("unknown image or template `{name}`")]
    #[diagnostic(code("spec::unknown-image"))]
    UnknownImage {
        #[source_code]
        src: Src,
        #[label("not declared in this file or the files it imports")]
        span: SourceSpan,
        name: String,
        #[help]
        help: String,
    },

    #[error("extends cycle: {chain}")]
    #[diagnostic(
        code("spec::extends-cycle"),
        help("an image cannot extend itself, directly or through others: remove one of these `extends`")
    )]
    ExtendsCycle {
        #[source_code]
        src: Src,
        #[label("this `extends` closes the cycle")]
        span: SourceSpan,
        chain: String,
    },

    #[error("`{name}` declares a `base` but already inherits one from `{parent}`")]
    #[diagnostic(
        code("spec::inherited-base"),
        help("remove this `base`: an image that extends another starts from its parent's root filesystem; to change the base, extend a template without one")
    )]
    InheritedBase {
        #[source_code]
        src: Src,
        #[label("second base")]
        span: SourceSpan,
        name: String,
        parent: String,
    },

    #[error("`base` must be the first layer")]
    #[diagnostic(code("spec::base-not-first"))]
    BaseNotFirst {
        #[source_code]
        src: Src,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: String,
    },

    #[error("image `{name}` has no `base`")]
    #[diagnostic(
        code("spec::missing-base"),
        help("add `base \"debian\" suite=\"bookworm\"` (or `base \"tar\" path=\"rootfs.tar\"`) as its first node, or extend an image that has one")
    )]
    MissingBase {
        #[source_code]
        src: Src,
        #[label("no base")]
        span: SourceSpan,
        name: String,
    },

    #[error("image `{name}` has no `output`")]
    #[diagnostic(
        code("spec::missing-output"),
        help("add e.g. `output \"qcow2\"` (formats: `tar`, `raw`, `qcow2`), or declare it as a `template` if it is only meant to be extended")
    )]
    MissingOutput {
        #[source_code]
        src: Src,
        #[label("no output")]
        span: SourceSpan,
        name: String,
    },

    #[error("output `{output}` of image `{name}` needs a `disk`")]
    #[diagnostic(
        code("spec::output-needs-disk"),
        help("add `disk size=\"2GiB\" {{ partition \"root\" type=\"root\" format=\"ext4\" mount=\"/\" }}`, or use `output \"tar\"` for the root filesystem alone")
    )]
    OutputNeedsDisk {
        #[source_code]
        src: Src,
        #[label("no disk to write")]
        span: SourceSpan,
        name: String,
        output: String,
    },

    #[error("outputs `qcow2` and `partition` of image `{name}` would both write `{name}.qcow2`")]
    #[diagnostic(
        code("spec::output-clash"),
        help("keep one: `qcow2` is the whole disk, `partition` the root filesystem with its kernel and initrd; for both, declare a second image that extends this one")
    )]
    OutputClash {
        #[source_code]
        src: Src,
        #[label("clashes with `qcow2`")]
        span: SourceSpan,
        name: String,
    },

    #[error("{what} of image `{name}` needs a kernel, and no package set installs one")]
    #[diagnostic(
        code("spec::no-kernel"),
        help(
            "add a kernel package to a package set, e.g. `packages \"system\" linux-image-amd64`"
        )
    )]
    NoKernel {
        #[source_code]
        src: Src,
        #[label("needs /boot/vmlinuz and /boot/initrd.img")]
        span: SourceSpan,
        name: String,
        what: String,
    },

    #[error("{message}")]
    #[diagnostic(code("spec::bootloader-partition"))]
    BootloaderPartition {
        #[source_code]
        src: Src,
        #[label("{label}")]
        span: SourceSpan,
        message: String,
        label: String,
        #[help]
        help: String,
    },

    #[error("{message}")]
    #[diagnostic(code("spec::layout-too-big"))]
    LayoutTooBig {
        #[source_code]
        src: Src,
        #[label("{label}")]
        span: SourceSpan,
        message: String,
        label: String,
        #[help]
        help: String,
    },

    #[error("only one partition may take the rest of the disk")]
    #[diagnostic(
        code("spec::unsized-partition"),
        help("give `{name}` a `size` (e.g. `size=\"1GiB\"`)")
    )]
    UnsizedPartition {
        #[source_code]
        src: Src,
        #[label("takes the rest")]
        first: SourceSpan,
        #[label("also takes the rest")]
        second: SourceSpan,
        name: String,
    },

    #[error("partition name `{name}` is used twice")]
    #[diagnostic(
        code("spec::duplicate-partition"),
        help("give each partition its own name")
    )]
    DuplicatePartition {
        #[source_code]
        src: Src,
        #[label("first used here")]
        first: SourceSpan,
        #[label("used again here")]
        second: SourceSpan,
        name: String,
    },

    #[error("two partitions are mounted at `{mount}`")]
    #[diagnostic(
        code("spec::duplicate-mount"),
        help("give each partition its own mount point")
    )]
    DuplicateMount {
        #[source_code]
        src: Src,
        #[label("first mounted here")]
        first: SourceSpan,
        #[label("mounted again here")]
        second: SourceSpan,
        mount: String,
    },

    #[error("no partition is mounted at `/`")]
    #[diagnostic(
        code("spec::missing-root"),
        help("add `partition \"root\" type=\"root\" format=\"ext4\" mount=\"/\"` to the disk")
    )]
    MissingRoot {
        #[source_code]
        src: Src,
        #[label("no root partition")]
        span: SourceSpan,
    },

    #[error("{message}")]
    #[diagnostic(code("spec::bad-partition"))]
    BadPartition {
        #[source_code]
        src: Src,
        #[label("{label}")]
        span: SourceSpan,
        message: String,
        label: String,
        #[help]
        help: String,
    },

    #[error("`{path}` {reason}")]
    #[diagnostic(code("spec::files-missing"))]
    FilesMissing {
        #[source_code]
        src: Src,
        #[label("{reason}")]
        span: SourceSpan,
        path: String,
        reason: String,
        #[help]
        help: String,
    },

    #[error("`{path}` is outside the folder of the spec file")]
    #[diagnostic(
        code("spec::files-escape"),
        help("move it into `{folder}` (or a folder below it): a build may only read files that live beside its spec")
    )]
    FilesEscape {
        #[source_code]
        src: Src,
        #[label("resolves outside `{folder}`")]
        span: SourceSpan,
        path: String,
        folder: String,
    },
}

/// The other end of a [`SpecError::DuplicateImage`] when it is in another file.
#[derive(Debug, Error, Diagnostic)]
#[error("`{name}` is first declared here")]
#[diagnostic(severity(Advice))]
pub struct FirstDeclared {
    #[source_code]
    pub src: Src,
    #[label("first declared here")]
    pub span: SourceSpan,
    pub name: String,
}

/// At most this many problems are reported one by one.
pub(crate) const MAX_SHOWN: usize = 50;

/// Every problem found in the spec files: what [`super::load`] returns when any check failed.
///
/// With one problem it reads as that problem; with several, its message counts them and each
/// is a related diagnostic.
#[derive(Debug)]
pub struct SpecErrors {
    problems: Vec<SpecError>,
}

impl SpecErrors {
    /// `problems` must not be empty. Beyond the first [`MAX_SHOWN`], one
    /// [`SpecError::TooMany`] stands for the rest: rendering each of a hundred thousand problems
    /// (a file of garbage) would take minutes and help no one.
    pub(crate) fn new(mut problems: Vec<SpecError>) -> Self {
        debug_assert!(!problems.is_empty());
        if problems.len() > MAX_SHOWN {
            let count = problems.len() - MAX_SHOWN;
            problems.truncate(MAX_SHOWN);
            problems.push(SpecError::TooMany { count });
        }
        SpecErrors { problems }
    }

    pub fn len(&self) -> usize {
        self.problems.len()
    }

    /// Always false: a `SpecErrors` holds at least one problem.
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &SpecError> {
        self.problems.iter()
    }

    /// The single problem, when there is exactly one.
    fn single(&self) -> Option<&SpecError> {
        match self.problems.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.single() {
            Some(one) => one.fmt(f),
            None => match self.problems.last() {
                Some(SpecError::TooMany { count }) => write!(
                    f,
                    "`{}` problems in the spec (the first {MAX_SHOWN} shown)",
                    MAX_SHOWN + count
                ),
                _ => write!(f, "`{}` problems in the spec", self.problems.len()),
            },
        }
    }
}

impl std::error::Error for SpecErrors {}

impl Diagnostic for SpecErrors {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.single().and_then(|one| one.code())
    }

    fn severity(&self) -> Option<Severity> {
        Some(Severity::Error)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.single().and_then(|one| one.help())
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.single().and_then(|one| one.source_code())
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.single().and_then(|one| one.labels())
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        match self.single() {
            Some(one) => one.related(),
            None => Some(Box::new(self.problems.iter().map(|p| p as &dyn Diagnostic))),
        }
    }
}

/// A help line for a name that is not one of `known`: the closest known name when it is near
/// enough to be a typo, else the list of what is allowed.
pub(crate) fn did_you_mean<'k>(name: &str, known: impl IntoIterator<Item = &'k str>) -> String {
    let known: Vec<&str> = known.into_iter().collect();
    match closest(name, &known) {
        Some(close) => format!("did you mean `{close}`?"),
        None => format!("expected one of {}", backticked(&known)),
    }
}

/// The known name nearest to `name`: within two edits (and not a whole rewrite), else the one
/// it abbreviates (`arch` for `architecture`).
pub(crate) fn closest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let chars = name.chars().count();
    let near = known
        .iter()
        // More than two characters longer or shorter is more than two edits: skip the
        // quadratic count (a name can be a megabyte long).
        .filter(|k| chars.abs_diff(k.chars().count()) <= 2)
        .map(|k| (edit_distance(name, k), *k))
        .filter(|(d, k)| *d <= 2 && *d < name.chars().count().min(k.chars().count()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k);
    let abbreviated = || {
        let mut longer = known
            .iter()
            .filter(|k| name.len() >= 3 && k.starts_with(name));
        match (longer.next(), longer.next()) {
            (Some(k), None) => Some(*k),
            _ => None,
        }
    };
    near.or_else(abbreviated)
}

/// `a`, `b`, `c`
pub(crate) fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("pakages", "packages"), 1);
        assert_eq!(edit_distance("grub-efi", "grub-efi"), 0);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn did_you_mean_suggests_close_names_else_lists() {
        assert_eq!(
            did_you_mean("pakages", ["packages", "files"]),
            "did you mean `packages`?"
        );
        assert_eq!(
            did_you_mean("arch", ["suite", "architecture"]),
            "did you mean `architecture`?"
        );
        assert_eq!(
            did_you_mean("zzz", ["packages", "files"]),
            "expected one of `packages`, `files`"
        );
    }
}
