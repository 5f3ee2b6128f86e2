//! Reading raw KDL nodes: typed arguments and properties with their spans, and the checks every
//! node shares (argument count, unknown or repeated properties, children block), each reported
//! as a [`SpecError`] into [`Problems`] instead of stopping at the first.
//!
//! Node readers elsewhere in `spec` describe a node with a [`Shape`] and fetch its values
//! through [`Cx::arg`], [`Cx::prop`] and friends, which report wrong types and missing values.

use std::path::{Component, Path, PathBuf};

use kdl::{KdlEntry, KdlNode, KdlValue};
use miette::{Diagnostic, SourceSpan};

use super::error::{did_you_mean, SpecError, Src};

/// Index of a file in the list of loaded files, in the order they were first seen.
pub(crate) type FileId = usize;

/// A loaded spec file: where it is and how messages name it.
#[derive(Clone, Debug)]
pub(crate) struct FileInfo {
    pub id: FileId,
    /// Canonical absolute path.
    pub path: PathBuf,
    /// Canonical absolute folder: what relative paths in the file are resolved against.
    pub dir: PathBuf,
    /// The folder as messages show it (the folder of the path the user gave).
    pub shown_dir: PathBuf,
    /// The text, named with the path as the user gave it (`specs/common.kdl`).
    pub src: Src,
}

/// The problems found so far, each with the file it is in (for a stable reading order).
#[derive(Default)]
pub(crate) struct Problems {
    list: Vec<(Option<FileId>, SpecError)>,
}

impl Problems {
    pub fn push(&mut self, file: Option<FileId>, problem: SpecError) {
        self.list.push((file, problem));
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The problems by file (in load order), then by position; problems without a file first.
    pub fn into_sorted(mut self) -> Vec<SpecError> {
        self.list.sort_by_key(|(file, problem)| {
            let offset = problem
                .labels()
                .and_then(|mut labels| labels.next())
                .map_or(0, |label| label.offset());
            (file.map_or(0, |f| f + 1), offset)
        });
        self.list.into_iter().map(|(_, p)| p).collect()
    }
}

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spanned<T> {
    pub value: T,
    pub span: SourceSpan,
}

/// A Rust type that a KDL value can be read as.
pub(crate) trait FromValue: Sized {
    /// How messages name the expected type: `a string`.
    const EXPECTED: &'static str;
    /// What to write instead, for the help line of a wrong type.
    const HINT: &'static str;
    fn from_value(value: &KdlValue) -> Option<Self>;
}

impl FromValue for String {
    const EXPECTED: &'static str = "a string";
    const HINT: &'static str = "put the value in double quotes, e.g. `\"bookworm\"`";
    fn from_value(value: &KdlValue) -> Option<Self> {
        value.as_string().map(str::to_string)
    }
}

impl FromValue for i128 {
    const EXPECTED: &'static str = "an integer";
    const HINT: &'static str = "write a whole number without quotes, e.g. `1686355200`";
    fn from_value(value: &KdlValue) -> Option<Self> {
        value.as_integer()
    }
}

impl FromValue for bool {
    const EXPECTED: &'static str = "a boolean";
    const HINT: &'static str = "write `#true` or `#false` (KDL v2 booleans start with `#`)";
    fn from_value(value: &KdlValue) -> Option<Self> {
        value.as_bool()
    }
}

/// A string, or an integer read as its decimal text (`speed=115200`, `size=4096`).
#[derive(Clone, Debug)]
pub(crate) struct Scalar(pub String);

impl FromValue for Scalar {
    const EXPECTED: &'static str = "a string or an integer";
    const HINT: &'static str = "put the value in double quotes, e.g. `\"200MiB\"`";
    fn from_value(value: &KdlValue) -> Option<Self> {
        match value {
            KdlValue::String(s) => Some(Scalar(s.clone())),
            KdlValue::Integer(i) => Some(Scalar(i.to_string())),
            _ => None,
        }
    }
}

/// What a node accepts, beside its children (which the node's reader walks itself).
pub(crate) struct Shape<'s> {
    /// How to write the node, for help lines: `files "overlay/" [dest="/"]`.
    pub usage: &'static str,
    /// How many arguments it takes at most.
    pub max_args: usize,
    /// The properties it knows.
    pub props: &'s [&'s str],
    /// The properties that may be given more than once.
    pub repeatable: &'s [&'s str],
    /// Whether it may have a `{ … }` block.
    pub children: bool,
}

/// Any number of arguments.
pub(crate) const MANY: usize = usize::MAX;

/// Where a node is read: the file, and the list problems go to.
pub(crate) struct Cx<'a> {
    pub file: &'a FileInfo,
    pub problems: &'a mut Problems,
}

impl Cx<'_> {
    pub fn report(&mut self, problem: SpecError) {
        self.problems.push(Some(self.file.id), problem);
    }

    pub fn src(&self) -> Src {
        self.file.src.clone()
    }

    /// Runs a node reader; its result counts only if it reported no problem, so that a node
    /// already found wrong does not also cause follow-up errors elsewhere.
    pub fn clean<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let before = self.problems.len();
        let value = read(self);
        value.filter(|_| self.problems.len() == before)
    }

    /// Reports what `node` has beyond `shape`: extra arguments, unknown or repeated properties,
    /// a children block it does not take.
    pub fn check_shape(&mut self, node: &KdlNode, shape: &Shape<'_>) {
        let name = node_name(node);
        for entry in args(node).skip(shape.max_args) {
            self.report(SpecError::UnexpectedArgument {
                src: self.src(),
                span: entry.span(),
                node: name.clone(),
                usage: shape.usage,
            });
        }
        let mut seen: Vec<(&str, SourceSpan)> = Vec::new();
        for (key, entry) in props(node) {
            if !shape.props.contains(&key) {
                let help = if shape.props.is_empty() {
                    format!(
                        "`{name}` takes no properties; write it as `{}`",
                        shape.usage
                    )
                } else {
                    did_you_mean(key, shape.props.iter().copied())
                };
                self.report(SpecError::UnknownProperty {
                    src: self.src(),
                    span: key_span(entry),
                    node: name.clone(),
                    key: key.to_string(),
                    help,
                });
            } else if !shape.repeatable.contains(&key) {
                match seen.iter().find(|(k, _)| *k == key) {
                    Some((_, first)) => self.report(SpecError::DuplicateProperty {
                        src: self.src(),
                        first: *first,
                        second: key_span(entry),
                        key: key.to_string(),
                    }),
                    None => seen.push((key, key_span(entry))),
                }
            }
        }
        if let (false, Some(children)) = (shape.children, node.children()) {
            self.report(SpecError::UnexpectedChildren {
                src: self.src(),
                span: children.span(),
                node: name,
            });
        }
    }

    /// The argument at `index`, which the node needs; `what` names it for messages
    /// (`a name`).
    pub fn arg<T: FromValue>(
        &mut self,
        node: &KdlNode,
        shape: &Shape<'_>,
        index: usize,
        what: &str,
    ) -> Option<Spanned<T>> {
        match args(node).nth(index) {
            Some(entry) => self.typed(entry, &node_name(node)),
            None => {
                self.missing_argument(node, shape, what);
                None
            }
        }
    }

    /// Reports that `node` lacks an argument (`what`: `a name`).
    pub fn missing_argument(&mut self, node: &KdlNode, shape: &Shape<'_>, what: &str) {
        self.report(SpecError::MissingArgument {
            src: self.src(),
            span: node.name().span(),
            node: node_name(node),
            what: what.to_string(),
            usage: shape.usage,
        });
    }

    /// The arguments from `from` on (wrong types are reported and left out).
    pub fn args_from<T: FromValue>(&mut self, node: &KdlNode, from: usize) -> Vec<Spanned<T>> {
        let name = node_name(node);
        args(node)
            .skip(from)
            .filter_map(|entry| self.typed(entry, &name))
            .collect()
    }

    /// The property `key`, if given (the last one, if repeated).
    pub fn prop<T: FromValue>(&mut self, node: &KdlNode, key: &str) -> Option<Spanned<T>> {
        let entry = props(node).filter(|(k, _)| *k == key).last()?.1;
        self.typed(entry, key)
    }

    /// The property `key`, which the node needs; `help` says what to write when it is missing.
    pub fn required_prop<T: FromValue>(
        &mut self,
        node: &KdlNode,
        key: &str,
        help: impl Into<String>,
    ) -> Option<Spanned<T>> {
        if !props(node).any(|(k, _)| k == key) {
            self.report(SpecError::MissingProperty {
                src: self.src(),
                span: node.name().span(),
                node: node_name(node),
                key: key.to_string(),
                help: help.into(),
            });
            return None;
        }
        self.prop(node, key)
    }

    /// Every value of a property that may be repeated, in order.
    pub fn props_all<T: FromValue>(&mut self, node: &KdlNode, key: &str) -> Vec<Spanned<T>> {
        props(node)
            .filter(|(k, _)| *k == key)
            .filter_map(|(_, entry)| self.typed(entry, key))
            .collect()
    }

    /// One of a fixed set of names (`what` names the set: `bootloader`).
    pub fn choice<T: Copy>(
        &mut self,
        value: &Spanned<String>,
        what: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        let found = options.iter().find(|(name, _)| *name == value.value);
        if found.is_none() {
            self.unknown_value(value, what, options.iter().map(|(name, _)| *name));
        }
        found.map(|(_, v)| *v)
    }

    /// Reports a name that is not one of `known` (`what` names the set: `element`).
    pub fn unknown_value<'k>(
        &mut self,
        value: &Spanned<String>,
        what: &str,
        known: impl IntoIterator<Item = &'k str>,
    ) {
        self.report(SpecError::UnknownValue {
            src: self.src(),
            span: value.span,
            what: what.to_string(),
            value: value.value.clone(),
            help: did_you_mean(&value.value, known),
        });
    }

    /// A size, as [`super::parse_size`] reads it.
    pub fn size(&mut self, value: Spanned<Scalar>) -> Option<u64> {
        super::parse_size(&value.value.0)
            .map_err(|reason| {
                self.report(SpecError::BadSize {
                    src: self.src(),
                    span: value.span,
                    value: value.value.0.clone(),
                    reason,
                })
            })
            .ok()
    }

    /// Reports a value that breaks a rule of its own (`message`), with the label and help given.
    pub fn bad_value(&mut self, span: SourceSpan, message: String, label: &str, help: &str) {
        self.report(SpecError::BadValue {
            src: self.src(),
            span,
            message,
            label: label.to_string(),
            help: help.to_string(),
        });
    }

    /// Reports a node that is not allowed where it is; `known` are the nodes that are.
    pub fn unknown_node(&mut self, node: &KdlNode, place: &str, known: &[&str]) {
        self.report(SpecError::UnknownNode {
            src: self.src(),
            span: node.name().span(),
            name: node_name(node),
            place: place.to_string(),
            help: did_you_mean(node.name().value(), known.iter().copied()),
        });
    }

    fn typed<T: FromValue>(&mut self, entry: &KdlEntry, what: &str) -> Option<Spanned<T>> {
        let span = value_span(entry);
        match T::from_value(entry.value()) {
            Some(value) => Some(Spanned { value, span }),
            None => {
                self.report(SpecError::WrongType {
                    src: self.src(),
                    span,
                    what: what.to_string(),
                    expected: T::EXPECTED,
                    found: describe(entry.value()),
                    help: T::HINT,
                });
                None
            }
        }
    }
}

pub(crate) fn node_name(node: &KdlNode) -> String {
    node.name().value().to_string()
}

/// The child nodes of `node` (none without a block).
pub(crate) fn children(node: &KdlNode) -> &[KdlNode] {
    node.children().map_or(&[], |doc| doc.nodes())
}

/// How many arguments `node` has.
pub(crate) fn arg_count(node: &KdlNode) -> usize {
    args(node).count()
}

fn args(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_none())
}

fn props(node: &KdlNode) -> impl Iterator<Item = (&str, &KdlEntry)> {
    node.entries()
        .iter()
        .filter_map(|e| e.name().map(|name| (name.value(), e)))
}

fn key_span(entry: &KdlEntry) -> SourceSpan {
    entry.name().map_or(entry.span(), |name| name.span())
}

/// The span of an entry's value alone: an entry's span covers `key=value`, and the value's
/// text is its end.
fn value_span(entry: &KdlEntry) -> SourceSpan {
    let span = entry.span();
    match entry.format() {
        Some(format) if format.value_repr.len() <= span.len() => {
            let len = format.value_repr.len();
            SourceSpan::new((span.offset() + span.len() - len).into(), len)
        }
        _ => span,
    }
}

/// How messages name the type of a value that was not what was expected.
fn describe(value: &KdlValue) -> String {
    match value {
        KdlValue::String(s) => format!("the string `\"{s}\"`"),
        KdlValue::Integer(i) => format!("the integer `{i}`"),
        KdlValue::Float(f) => format!("the number `{f}`"),
        KdlValue::Bool(b) => format!("`#{b}`"),
        KdlValue::Null => "`#null`".to_string(),
    }
}

/// `base` joined with `rel` without touching the file system: `.` dropped, `..` removing the
/// previous component when it can. For naming files in messages as the user would.
pub(crate) fn lexical_join(base: &Path, rel: &str) -> PathBuf {
    let mut out = PathBuf::new();
    for component in base.join(rel).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

/// Shows a path with `/` separators, `.` for the empty path.
pub(crate) fn shown(path: &Path) -> String {
    let text = path.display().to_string();
    if text.is_empty() {
        ".".to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_join_resolves_dots() {
        assert_eq!(
            lexical_join(Path::new("specs"), "./a.kdl"),
            Path::new("specs/a.kdl")
        );
        assert_eq!(
            lexical_join(Path::new("specs/x"), "../a.kdl"),
            Path::new("specs/a.kdl")
        );
        assert_eq!(
            lexical_join(Path::new(""), "../a.kdl"),
            Path::new("../a.kdl")
        );
        assert_eq!(
            lexical_join(Path::new("/"), "../a.kdl"),
            Path::new("/a.kdl")
        );
    }

    #[test]
    fn value_span_points_at_the_value_of_a_property() {
        let text = "base \"tar\"   path = \"x.tar\"";
        let doc = kdl::KdlDocument::parse(text).unwrap();
        let entry = &doc.nodes()[0].entries()[1];
        let span = value_span(entry);
        assert_eq!(
            &text[span.offset()..span.offset() + span.len()],
            "\"x.tar\""
        );
    }
}
