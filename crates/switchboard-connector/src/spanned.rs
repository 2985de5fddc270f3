//! Connector files as spanned TOML: the parse that keeps byte spans, and every problem as a
//! [`Diagnostic`] at `file:line`. A leaf shared by the loader and the include resolver.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::validate::{FieldPath, Segment};

/// One problem in a connector file. `Display` is `file:line: message` (1-based line; problems
/// with the file as a whole, such as an unreadable file, are reported on line 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// A file parsed into a spanned TOML tree, for deserializing and for locating field paths.
pub(crate) struct Parsed<'a> {
    pub(crate) file: PathBuf,
    pub(crate) lines: LineIndex,
    pub(crate) root: Spanned<DeValue<'a>>,
}

impl<'a> Parsed<'a> {
    /// One line per diagnostic, whatever a message source does (`file:line: message` is parsed
    /// by editors and CI problem matchers).
    pub(crate) fn diagnostic(&self, span: Range<usize>, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: self.lines.line(span.start),
            message: message.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }

    /// A diagnostic at the value of `path` (or its nearest existing ancestor).
    pub(crate) fn at(&self, path: &FieldPath, message: String) -> Diagnostic {
        self.diagnostic(locate(&self.root, path), with_path(path, &message))
    }

    pub(crate) fn deserializer(&self) -> toml::de::Deserializer<'a> {
        let table = match self.root.get_ref() {
            DeValue::Table(t) => t.clone(),
            _ => DeTable::new(),
        };
        toml::de::Deserializer::from(Spanned::new(self.root.span(), table))
    }
}

/// TOML syntax only: every syntax error as a diagnostic, or the spanned tree.
pub(crate) fn parse_spanned<'a>(
    file: &Path,
    source: &'a str,
) -> Result<Parsed<'a>, Vec<Diagnostic>> {
    let mut parsed = Parsed {
        file: file.to_path_buf(),
        lines: LineIndex::new(source),
        root: Spanned::new(0..0, DeValue::Table(DeTable::new())),
    };
    let (doc, syntax) = DeTable::parse_recoverable(source);
    if !syntax.is_empty() {
        // The recovered tree is a guess; checking its structure would mostly report echoes of
        // the syntax errors.
        let mut out: Vec<Diagnostic> = syntax
            .iter()
            .map(|e| {
                parsed.diagnostic(
                    e.span().unwrap_or(0..0),
                    format!("TOML syntax: {}", e.message()),
                )
            })
            .collect();
        sort(&mut out);
        return Err(out);
    }
    let doc_span = doc.span();
    parsed.root = Spanned::new(doc_span, DeValue::Table(doc.into_inner()));
    Ok(parsed)
}

pub(crate) fn with_path(path: &FieldPath, message: &str) -> String {
    if path.is_root() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

pub(crate) fn sort(d: &mut [Diagnostic]) {
    // Stable: problems on one line keep the order they were found in.
    d.sort_by(|a, b| a.file.cmp(&b.file).then(a.line.cmp(&b.line)));
}

/// The span of the value at `path`, or of its nearest existing ancestor (a problem about an
/// absent key points at the table that lacks it).
pub(crate) fn locate(root: &Spanned<DeValue<'_>>, path: &FieldPath) -> Range<usize> {
    let mut cur = root;
    for seg in path.segments() {
        let next = match (seg, cur.get_ref()) {
            (Segment::Key(k), DeValue::Table(t)) => t
                .iter()
                .find(|(key, _)| key.get_ref().as_ref() == k.as_str())
                .map(|(_, v)| v),
            (Segment::Index(i), DeValue::Array(a)) => a.get(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    cur.span()
}

/// Byte offset -> 1-based line.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(source: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    pub(crate) fn line(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_index() {
        let idx = LineIndex::new("a\nbc\n\nd");
        assert_eq!(idx.line(0), 1);
        assert_eq!(idx.line(1), 1);
        assert_eq!(idx.line(2), 2);
        assert_eq!(idx.line(4), 2);
        assert_eq!(idx.line(5), 3);
        assert_eq!(idx.line(6), 4);
        assert_eq!(idx.line(100), 4);
    }

    #[test]
    fn diagnostic_display() {
        let d = Diagnostic {
            file: PathBuf::from("connectors/epic.toml"),
            line: 12,
            message: "methods[1].path: bad".into(),
        };
        assert_eq!(
            d.to_string(),
            "connectors/epic.toml:12: methods[1].path: bad"
        );
    }
}
