//! `imgspec plan --dot`: the step graph in Graphviz's language.
//!
//! One node per step (`step<ID>`, in plan order): its label and short key, filled green when
//! cached and orange when it must be built. One edge per input, from the input to the step that
//! uses it, drawn in the colours of the images that use the step (Graphviz's `a:b` colour lists
//! draw parallel lines), so variants show which layers they share. Each image is a note node
//! (`image<N>`) in its colour with a dashed edge to each of its output steps. The output depends
//! only on the plan and the cache, in plan order: the same plan gives the same text.

use std::fmt::Write;

use imgspec_cache::StepKey;

use crate::plan::Plan;

/// Colours of images, by their order in the plan (repeated past the last).
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
];
const CACHED: &str = "#c7e9c0";
const TO_BUILD: &str = "#fdd0a2";

/// A DOT string literal: quotes and backslashes escaped, line breaks as `\n`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Shortens a long label (a `run` command) to `max` characters with an ellipsis.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max - 1).collect();
    t.push('…');
    t
}

/// The plan as a Graphviz digraph; `cached` tells whether a step's result is in the cache.
pub fn render(plan: &Plan, cached: impl Fn(&StepKey) -> bool) -> String {
    let colour = |image: &str| {
        let i = plan
            .images
            .iter()
            .position(|i| i.name == image)
            .unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let mut o = String::new();
    o.push_str("digraph imgspec {\n");
    o.push_str("  rankdir=TB;\n");
    o.push_str("  node [shape=box, style=\"rounded,filled\", fontname=\"sans-serif\"];\n");
    o.push_str("  edge [penwidth=1.5];\n");
    for s in &plan.steps {
        let is_cached = cached(&s.key);
        let images: Vec<&str> = s.uses.iter().map(|(i, _)| i.as_str()).collect();
        let label = format!(
            "{}\n{} · {}",
            shorten(&s.label, 48),
            s.key.short(),
            if is_cached { "cached" } else { "build" }
        );
        let tooltip = format!("{} ({}), used by {}", s.label, s.kind(), images.join(", "));
        let _ = writeln!(
            o,
            "  step{} [label={}, tooltip={}, fillcolor={}];",
            s.id,
            quote(&label),
            quote(&tooltip),
            quote(if is_cached { CACHED } else { TO_BUILD })
        );
    }
    for s in &plan.steps {
        let colours: Vec<&str> = s.uses.iter().map(|(i, _)| colour(i)).collect();
        for &input in &s.inputs {
            let _ = writeln!(
                o,
                "  step{input} -> step{} [color={}];",
                s.id,
                quote(&colours.join(":"))
            );
        }
    }
    for (n, img) in plan.images.iter().enumerate() {
        let c = colour(&img.name);
        let _ = writeln!(
            o,
            "  image{n} [label={}, shape=note, style=filled, fillcolor=white, color={}, fontcolor={}, penwidth=2];",
            quote(&img.name),
            quote(c),
            quote(c)
        );
        for &out in &img.outputs {
            let _ = writeln!(
                o,
                "  step{out} -> image{n} [color={}, style=dashed];",
                quote(c)
            );
        }
    }
    o.push_str("}\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_escapes_quotes_backslashes_and_newlines() {
        assert_eq!(quote("run \"a\\b\"\nx"), r#""run \"a\\b\"\nx""#);
    }

    #[test]
    fn shorten_keeps_short_labels_and_cuts_long_ones() {
        assert_eq!(shorten("abc", 5), "abc");
        assert_eq!(shorten("abcdefgh", 5), "abcd…");
    }
}
