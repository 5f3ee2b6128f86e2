//! A cheap pass over a spec's text before kdl parses it: kdl's parser recurses once per nested
//! `{`, nested `/* */` comment and chained `/-`, so a small file of a few thousand of them
//! overflows the stack and aborts the process. This pass finds the first such construct nested
//! deeper than any spec needs, so that the file is reported instead of parsed.
//!
//! It knows just enough KDL v2 to skip what cannot nest: quoted strings (`"…"` with `\` escapes,
//! `"""…"""`), raw strings (`#"…"#`, `##"""…"""##`) and line comments.

/// Children blocks nested deeper than this are refused (a spec nests three: image, disk,
/// partition).
pub(crate) const MAX_DEPTH: usize = 64;
/// Block comments nested deeper than this are refused.
pub(crate) const MAX_COMMENT_DEPTH: usize = 16;
/// More slashdashes in a row (`/- /- /- x`) than this are refused.
pub(crate) const MAX_SLASHDASHES: usize = 16;

/// What is nested too deeply, and the byte offset where it goes past the limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooDeep {
    pub offset: usize,
    pub len: usize,
    /// `children blocks`, `block comments`, `slashdashes in a row`.
    pub what: &'static str,
    pub limit: usize,
}

impl TooDeep {
    /// The message, label and help line of its diagnostic.
    pub fn describe(&self) -> (String, String, String) {
        let limit = self.limit;
        match self.what {
            "slashdashes in a row" => (
                format!("more than {limit} slashdashes (`/-`) in a row"),
                format!("slashdash number {}", limit + 1),
                "one `/-` comments out the node, argument or block after it: remove the others"
                    .to_string(),
            ),
            "braces" => (
                format!("`{{` nested more than {limit} deep (counting those in strings and comments)"),
                format!("{limit} deep already"),
                "close the blocks left open with `}`; a string or comment full of `{` counts too".to_string(),
            ),
            "comment parts" => (
                format!("a block comment of more than {limit} parts (`*`, `/` and the text between)"),
                "this comment".to_string(),
                "shorten the comment, or use `//` line comments; a `/*` inside a string counts until the next `*/`".to_string(),
            ),
            "block comments" => (
                format!("block comments nested more than {limit} deep"),
                format!("{limit} comments deep already"),
                "close the `/*` comments with `*/` (KDL block comments nest)".to_string(),
            ),
            what => (
                format!("{what} nested more than {limit} deep"),
                format!("{limit} blocks deep already"),
                "a spec nests three levels (`image`, `disk`, `partition`): close the blocks left open with `}`, or remove what is nested this deep".to_string(),
            ),
        }
    }
}

/// Braces nested deeper than this are refused even when they are in strings or comments.
pub(crate) const MAX_ANY_DEPTH: usize = 1000;
/// More slashdashes in a row than this are refused even in strings and comments.
pub(crate) const MAX_ANY_SLASHDASHES: usize = 1000;
/// A block comment of more parts than this is refused (kdl recurses once per `*`, `/` and run
/// of other characters in a comment).
pub(crate) const MAX_COMMENT_PARTS: usize = 20_000;

/// Stack for kdl's parser: what the limits above leave it needs, with room to spare even in an
/// unoptimised build (measured: about 6 KiB per nested block, 1.6 KiB per comment part).
pub(crate) const PARSER_STACK: usize = 64 << 20;

/// The first construct of `text` nested beyond its limit, if any: [`exact`], then what
/// [`any_context`] finds.
pub(crate) fn too_deep(text: &str) -> Option<TooDeep> {
    exact(text).or_else(|| any_context(text.as_bytes()))
}

/// The limits kdl's parser needs to stay within [`PARSER_STACK`], checked without knowing
/// where strings and comments are (in a broken file kdl's error recovery may not agree with
/// [`exact`] on that): brace depth, and the parts from each `/*` to its `*/`.
fn any_context(b: &[u8]) -> Option<TooDeep> {
    let mut depth = 0usize;
    let mut slashdashes = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'-') => {
                slashdashes += 1;
                if slashdashes > MAX_ANY_SLASHDASHES {
                    return Some(TooDeep {
                        offset: i,
                        len: 2,
                        what: "slashdashes in a row",
                        limit: MAX_ANY_SLASHDASHES,
                    });
                }
                i += 2;
                continue;
            }
            c if c.is_ascii_whitespace() || c == b'\\' => {
                i += 1;
                continue;
            }
            _ => slashdashes = 0,
        }
        match b[i] {
            b'{' => {
                depth += 1;
                if depth > MAX_ANY_DEPTH {
                    return Some(TooDeep {
                        offset: i,
                        len: 1,
                        what: "braces",
                        limit: MAX_ANY_DEPTH,
                    });
                }
            }
            b'}' => depth = depth.saturating_sub(1),
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let (parts, end) = comment_parts(b, i);
                if parts > MAX_COMMENT_PARTS {
                    return Some(TooDeep {
                        offset: i,
                        len: 2,
                        what: "comment parts",
                        limit: MAX_COMMENT_PARTS,
                    });
                }
                // Each byte is looked at once: the nested comments were counted with it.
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// How many parts kdl's `commented-block` rule recurses through from the `/*` at `start` to its
/// `*/` (or the end): each `*`, `/` and run of other bytes, nested comments included. Stops
/// counting past the limit. Also returns where the count stopped.
fn comment_parts(b: &[u8], start: usize) -> (usize, usize) {
    let mut depth = 0usize;
    let mut parts = 0usize;
    let mut i = start;
    while i < b.len() && parts <= MAX_COMMENT_PARTS {
        if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                break;
            }
        } else if b[i] == b'*' || b[i] == b'/' {
            i += 1;
        } else {
            i += b[i..]
                .iter()
                .position(|&c| c == b'*' || c == b'/')
                .unwrap_or(b.len() - i);
        }
        parts += 1;
    }
    (parts, i)
}

/// The limits that a spec meets, knowing strings and comments.
fn exact(text: &str) -> Option<TooDeep> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut depth = 0usize;
    let mut slashdashes = 0usize;
    while i < b.len() {
        match b[i] {
            b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(TooDeep {
                        offset: i,
                        len: 1,
                        what: "children blocks",
                        limit: MAX_DEPTH,
                    });
                }
                slashdashes = 0;
                i += 1;
            }
            b'}' => {
                depth = depth.saturating_sub(1);
                slashdashes = 0;
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n' || c == b'\r')
                    .map_or(b.len(), |n| i + n);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match block_comment(b, i) {
                Ok(end) => i = end,
                Err(offset) => {
                    return Some(TooDeep {
                        offset,
                        len: 2,
                        what: "block comments",
                        limit: MAX_COMMENT_DEPTH,
                    })
                }
            },
            b'/' if b.get(i + 1) == Some(&b'-') => {
                slashdashes += 1;
                if slashdashes > MAX_SLASHDASHES {
                    return Some(TooDeep {
                        offset: i,
                        len: 2,
                        what: "slashdashes in a row",
                        limit: MAX_SLASHDASHES,
                    });
                }
                i += 2;
            }
            b'"' => {
                i = quoted(b, i);
                slashdashes = 0;
            }
            b'#' => {
                let hashes = b[i..].iter().take_while(|&&c| c == b'#').count();
                i = if b.get(i + hashes) == Some(&b'"') {
                    raw(b, i + hashes, hashes)
                } else {
                    i + hashes
                };
                slashdashes = 0;
            }
            c if c.is_ascii_whitespace() || c == b'\\' || c == b';' => i += 1,
            _ => {
                slashdashes = 0;
                i += 1;
            }
        }
    }
    None
}

/// The end of the (nested) block comment opening at `start`, or the offset of the opener that
/// nests too deeply.
fn block_comment(b: &[u8], start: usize) -> Result<usize, usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            if depth > MAX_COMMENT_DEPTH {
                return Err(i);
            }
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Ok(b.len())
}

/// The end of the quoted string (single- or multi-line) opening at `start`.
fn quoted(b: &[u8], start: usize) -> usize {
    let multi = b[start..].starts_with(b"\"\"\"");
    let mut i = start + if multi { 3 } else { 1 };
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' if !multi => return i + 1,
            b'"' if b[i..].starts_with(b"\"\"\"") => return i + 3,
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of the raw string whose first `"` is at `quote`, closed by a `"` and `hashes` `#`.
fn raw(b: &[u8], quote: usize, hashes: usize) -> usize {
    let multi = b[quote..].starts_with(b"\"\"\"");
    let mut i = quote + if multi { 3 } else { 1 };
    while i < b.len() {
        let closes = if multi {
            b[i..].starts_with(b"\"\"\"")
        } else {
            b[i] == b'"'
        };
        let after = i + if multi { 3 } else { 1 };
        if closes
            && b.len() >= after + hashes
            && b[after..after + hashes].iter().all(|&c| c == b'#')
        {
            return after + hashes;
        }
        i += 1;
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_specs_pass() {
        for path in ["specs/debian-efi.kdl", "tests/fixtures/spec/valid/all.kdl"] {
            let text = std::fs::read_to_string(path).unwrap();
            assert_eq!(too_deep(&text), None, "{path}");
        }
        let nested = format!("{}{}", "a {".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert_eq!(too_deep(&nested), None);
    }

    #[test]
    fn the_first_brace_beyond_the_limit_is_found() {
        let text = "{".repeat(1322);
        let found = too_deep(&text).unwrap();
        assert_eq!((found.offset, found.what), (MAX_DEPTH, "children blocks"));
        // Closed blocks do not add up.
        let flat = "a { }\n".repeat(1000);
        assert_eq!(too_deep(&flat), None);
    }

    #[test]
    fn braces_in_strings_and_comments_do_not_count() {
        let many = "{".repeat(200);
        for text in [
            format!("a \"{many}\""),
            format!("a \"\\\"{many}\""),
            format!("a \"\"\"\n{many}\n\"\"\""),
            format!("a #\"{many}\"#"),
            format!("a ##\"\"#{many}\"##"),
            format!("a #\"\"\"\n\"{many}\n\"\"\"#"),
            format!("// {many}\na"),
            format!("/* {many} */ a"),
            format!("/* /* {many} */ */ a"),
        ] {
            assert_eq!(too_deep(&text), None, "{text}");
        }
        // What follows a closed string counts again.
        let after = format!("a \"x\" {many}");
        assert_eq!(too_deep(&after).unwrap().offset, 6 + MAX_DEPTH);
    }

    #[test]
    fn what_kdl_recurses_on_is_bounded_in_any_context() {
        // Braces in a string that is never closed: kdl's recovery may see them as blocks.
        let braces = format!("a \"{}", "{".repeat(MAX_ANY_DEPTH + 1));
        assert_eq!(too_deep(&braces).unwrap().what, "braces");
        // kdl recurses once per `*` or `/` inside a comment.
        let stars = format!("/* {} */", "* ".repeat(MAX_COMMENT_PARTS));
        let found = too_deep(&stars).unwrap();
        assert_eq!((found.offset, found.what), (0, "comment parts"));
        let paths = format!("/* {} */", "a/".repeat(MAX_COMMENT_PARTS));
        assert_eq!(too_deep(&paths).unwrap().what, "comment parts");
        // Many short comments in a row are no deeper than one.
        let many = "/* a */ ".repeat(MAX_COMMENT_PARTS);
        assert_eq!(too_deep(&many), None);
        let dashes = format!("a \"{}", "/-".repeat(MAX_ANY_SLASHDASHES + 1));
        assert_eq!(too_deep(&dashes).unwrap().what, "slashdashes in a row");
    }

    /// The limits hold kdl within [`PARSER_STACK`]: the worst a limit lets through parses on a
    /// thread of that stack (an overflow would abort this test process).
    #[test]
    fn the_parser_stack_holds_what_the_limits_let_through() {
        let deepest = [
            format!("{}{}", "a {".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH)),
            format!("/* {} */", "* ".repeat(MAX_COMMENT_PARTS / 2 - 2)),
            format!("a \"{}", "{".repeat(MAX_ANY_DEPTH)),
            format!("a \"\n{}b", "/-".repeat(MAX_ANY_SLASHDASHES)),
        ];
        for text in deepest {
            assert_eq!(too_deep(&text), None);
            std::thread::scope(|s| {
                std::thread::Builder::new()
                    .stack_size(PARSER_STACK)
                    .spawn_scoped(s, || kdl::KdlDocument::parse(&text).is_ok())
                    .unwrap()
                    .join()
                    .unwrap()
            });
        }
    }

    #[test]
    fn nested_comments_and_slashdash_chains_are_bounded() {
        let comments = format!("{}{}", "/*".repeat(5000), "*/".repeat(5000));
        let found = too_deep(&comments).unwrap();
        assert_eq!(
            (found.offset, found.what),
            (2 * MAX_COMMENT_DEPTH, "block comments")
        );
        let dashes = format!("a {}b", "/-".repeat(5000));
        let found = too_deep(&dashes).unwrap();
        assert_eq!(
            (found.offset, found.what),
            (2 + 2 * MAX_SLASHDASHES, "slashdashes in a row")
        );
        let spaced = format!("a {}b", "/- ".repeat(MAX_SLASHDASHES));
        assert_eq!(too_deep(&spaced), None);
        // Slashdashes that comment out separate entries do not chain.
        let separate = "a /-b ".repeat(1000);
        assert_eq!(too_deep(&separate), None);
    }
}
