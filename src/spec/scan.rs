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

/// The first construct of `text` nested beyond its limit, if any.
pub(crate) fn too_deep(text: &str) -> Option<TooDeep> {
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
