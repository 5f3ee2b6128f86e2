//! `element "locale" lang="LANG"`: the image's default locale. Needs `locales`, except for the
//! locales glibc has built in (`C`, `C.UTF-8`, `C.utf8`, `POSIX`).
//!
//! Writes `/etc/default/locale` (`LANG=lang`). For a locale that is not built in, it also
//! uncomments the `LANG CHARSET` line of `/etc/locale.gen` (an error if the file does not list
//! `lang`) and runs the image's own `locale-gen` in a chroot (`/usr/lib/locale/locale-archive`),
//! so that one needs root.

use super::{
    read_text, Definition, Element, Failure, ImageTree, Param, ParamError, Params, Parsed,
};

pub static DEFINITION: Definition = Definition {
    name: "locale",
    version: 1,
    params: &[Param::required("lang")],
    parse,
};

/// Locales glibc has built in: no `locales` package, no `locale-gen`.
const BUILTIN_LOCALES: &[&str] = &["C", "C.UTF-8", "C.utf8", "POSIX"];

fn parse(p: &Params<'_>) -> Parsed {
    let lang = p.get("lang").unwrap_or_default();
    if lang.is_empty()
        || !lang
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c))
    {
        return Err(vec![ParamError::new(
            "lang",
            format!("`{lang}` is not a locale name"),
            "not a locale name",
            "give a locale as /etc/locale.gen lists it, e.g. `en_US.UTF-8`",
        )]);
    }
    Ok(Box::new(Locale { lang: lang.into() }))
}

#[derive(Debug)]
struct Locale {
    lang: String,
}

impl Locale {
    fn builtin(&self) -> bool {
        BUILTIN_LOCALES.contains(&self.lang.as_str())
    }
}

impl Element for Locale {
    fn packages(&self) -> Vec<&'static str> {
        if self.builtin() {
            vec![]
        } else {
            vec!["locales"]
        }
    }

    fn chroot(&self) -> Option<&'static str> {
        (!self.builtin()).then_some("locale-gen runs in a chroot of the image")
    }

    fn apply(&self, image: &mut dyn ImageTree) -> Result<(), Failure> {
        let lang = &self.lang;
        if self.builtin() {
            return image.write("etc/default/locale", default_locale(lang).as_bytes(), 0o644);
        }
        let gen = read_text(image, "etc/locale.gen")?.ok_or_else(|| {
            Failure::Image(
                "the image has no /etc/locale.gen (the `locales` package writes it)".into(),
            )
        })?;
        let gen = enable_locale(&gen, lang)?;
        image.write("etc/locale.gen", gen.as_bytes(), 0o644)?;
        image.write("etc/default/locale", default_locale(lang).as_bytes(), 0o644)?;
        image.run(
            "set -e\n\
             command -v locale-gen >/dev/null || { echo 'the image has no locale-gen (package locales)' >&2; exit 1; }\n\
             locale-gen\n",
        )
    }
}

/// `/etc/locale.gen` with the line of `lang` uncommented (others kept as they are).
fn enable_locale(text: &str, lang: &str) -> Result<String, Failure> {
    let mut found = false;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let body = line.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
        let words: Vec<&str> = body.split_whitespace().collect();
        if words.len() == 2 && words[0] == lang {
            found = true;
            out.push_str(&format!("{} {}\n", words[0], words[1]));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        return Err(Failure::Image(format!(
            "locale `{lang}` is not listed in the image's /etc/locale.gen: give it as listed \
             there (`LANG CHARSET` lines), e.g. `en_US.UTF-8`"
        )));
    }
    Ok(out)
}

fn default_locale(lang: &str) -> String {
    format!("# Written by imgspec (element \"locale\")\nLANG={lang}\n")
}

#[cfg(test)]
mod tests {
    use super::super::tests::{params, run, text, tree};
    use super::super::Configured;
    use super::*;

    #[test]
    fn locale_gen_line_is_uncommented_and_unknown_locales_are_errors() {
        let gen = "# comment\n# en_US ISO-8859-1\n# en_US.UTF-8 UTF-8\n# fr_FR.UTF-8 UTF-8\n";
        assert_eq!(
            enable_locale(gen, "en_US.UTF-8").unwrap(),
            "# comment\n# en_US ISO-8859-1\nen_US.UTF-8 UTF-8\n# fr_FR.UTF-8 UTF-8\n"
        );
        let e = enable_locale(gen, "xx_YY.UTF-8").unwrap_err().to_string();
        assert!(e.contains("`xx_YY.UTF-8` is not listed"), "{e}");
        // Built-in locales: only /etc/default/locale, no chroot.
        let mut t = tree(&[]);
        run("locale", &[("lang", "C.UTF-8")], &mut t).unwrap();
        assert!(text(&t, "etc/default/locale").ends_with("\nLANG=C.UTF-8\n"));
        let chroot = |lang: &str| {
            Configured::new("locale", params(&[("lang", lang)]))
                .unwrap()
                .element()
                .chroot()
        };
        assert_eq!(chroot("C.UTF-8"), None);
        assert_eq!(chroot("POSIX"), None);
        assert!(chroot("en_US.UTF-8").is_some());
        for bad in ["", "en US", "fr_FR.UTF-8;", "../x"] {
            let e = &Configured::new("locale", params(&[("lang", bad)])).unwrap_err()[0];
            assert_eq!(e.param.as_deref(), Some("lang"), "{bad}");
        }
    }
}
