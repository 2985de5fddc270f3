//! Loading `connectors/*.toml`: TOML syntax, then structure (against the generated JSON Schema),
//! then semantics, every problem reported as `file:line: message` in one pass so an author fixes
//! a file in one round trip.

use std::fmt;
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::catalog::{Catalog, Connector};
use crate::include;
use crate::model::ConnectorDef;
use crate::schema::schema_ref;
use crate::shape;
use crate::validate::{validate, FieldPath, Segment};

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

/// Load and validate every `*.toml` file directly in `dir` (not recursive; other files, such as
/// `connector.schema.json`, and hidden files are ignored). Connector ids must be unique across
/// files. Returns all diagnostics of all files, sorted by file then line.
pub fn load_dir(dir: &Path) -> Result<Catalog, Vec<Diagnostic>> {
    let entries = fs::read_dir(dir).map_err(|e| {
        vec![Diagnostic {
            file: dir.to_path_buf(),
            line: 1,
            message: format!("cannot read connector directory: {e}"),
        }]
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_connector_file(p))
        .collect();
    files.sort();

    let mut diagnostics = Vec::new();
    let mut loaded: Vec<(PathBuf, usize, ConnectorDef)> = Vec::new();
    for file in files {
        match load_file_inner(&file) {
            Ok((def, id_line)) => {
                if let Some((first, _, _)) = loaded.iter().find(|(_, _, d)| d.id == def.id) {
                    diagnostics.push(Diagnostic {
                        file: file.clone(),
                        line: id_line,
                        message: format!(
                            "id: duplicate connector id `{}` (also defined in {})",
                            def.id,
                            first.display()
                        ),
                    });
                } else {
                    loaded.push((file, id_line, def));
                }
            }
            Err(mut d) => diagnostics.append(&mut d),
        }
    }
    let mut catalog = Catalog::new();
    for (file, _, def) in loaded {
        match Connector::compile(def) {
            Ok(c) => {
                catalog.insert(c);
            }
            Err(e) => diagnostics.extend(e.problems.into_iter().map(|message| Diagnostic {
                file: file.clone(),
                line: 1,
                message,
            })),
        }
    }
    if diagnostics.is_empty() {
        Ok(catalog)
    } else {
        Err(diagnostics)
    }
}

/// Load and validate one connector file.
pub fn load_file(path: &Path) -> Result<ConnectorDef, Vec<Diagnostic>> {
    load_file_inner(path).map(|(def, _)| def)
}

/// Validate connector TOML held in memory; `file` only names it in diagnostics. Handy for tests
/// of other crates: `Connector::new(load_str(Path::new("t.toml"), SRC)?)`.
pub fn load_str(file: &Path, source: &str) -> Result<ConnectorDef, Vec<Diagnostic>> {
    load_source(file, source).map(|(def, _)| def)
}

fn is_connector_file(p: &Path) -> bool {
    let hidden = p
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    !hidden && p.is_file() && p.extension().is_some_and(|e| e == "toml")
}

fn load_file_inner(path: &Path) -> Result<(ConnectorDef, usize), Vec<Diagnostic>> {
    let source = fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            message: format!("cannot read file: {e}"),
        }]
    })?;
    load_source(path, &source)
}

/// A file parsed into a spanned TOML tree, for deserializing and for locating field paths.
pub(crate) struct Parsed<'a> {
    file: PathBuf,
    lines: LineIndex,
    root: Spanned<DeValue<'a>>,
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

/// Returns the definition and the line of its `id` (for cross-file duplicate reports).
fn load_source(file: &Path, source: &str) -> Result<(ConnectorDef, usize), Vec<Diagnostic>> {
    let mut parsed = parse_spanned(file, source)?;
    let report = shape::check(schema_ref(), &mut parsed.root);
    let mut out: Vec<Diagnostic> = report
        .errors
        .iter()
        .map(|e| parsed.diagnostic(e.span.clone(), with_path(&e.path, &e.message)))
        .collect();
    if report.fatal {
        sort(&mut out);
        return Err(out);
    }

    let mut def = match ConnectorDef::deserialize(parsed.deserializer()) {
        Ok(def) => def,
        Err(e) => {
            // The structural pass should have caught this; report serde's view rather than
            // accept a file the service cannot use.
            out.push(parsed.diagnostic(e.span().unwrap_or(0..0), e.message().to_owned()));
            sort(&mut out);
            return Err(out);
        }
    };

    // Included methods follow the file's own, so field paths of the own methods stay theirs.
    let own = def.methods.len();
    let dir = file.parent().unwrap_or(Path::new("."));
    let mut stack = vec![fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf())];
    let resolved = include::resolve(dir, &def.include, &mut stack);
    out.extend(resolved.elsewhere);
    for (path, message) in resolved.here {
        out.push(parsed.at(&path, message));
    }
    def.methods.extend(resolved.methods);

    for issue in validate(&def) {
        if report.poisoned.iter().any(|p| issue.path.starts_with(p)) {
            continue;
        }
        let included = match issue.path.segments() {
            [Segment::Key(k), Segment::Index(i), ..] if k == "methods" && *i >= own => {
                resolved.origins.get(i - own)
            }
            _ => None,
        };
        match included {
            // A problem in an included method is reported on the `[[include]]` that took it.
            Some(o) => out.push(parsed.diagnostic(
                locate(
                    &parsed.root,
                    &FieldPath::root().key("include").index(o.include),
                ),
                format!(
                    "include[{}]: method `{}` from `{}`: {issue}",
                    o.include, o.method, o.library
                ),
            )),
            None => {
                out.push(parsed.diagnostic(locate(&parsed.root, &issue.path), issue.to_string()))
            }
        }
    }
    if out.is_empty() {
        let id_line = parsed
            .lines
            .line(locate(&parsed.root, &FieldPath::root().key("id")).start);
        Ok((def, id_line))
    } else {
        sort(&mut out);
        Err(out)
    }
}

fn with_path(path: &FieldPath, message: &str) -> String {
    if path.is_root() {
        message.to_owned()
    } else {
        format!("{path}: {message}")
    }
}

fn sort(d: &mut [Diagnostic]) {
    // Stable: problems on one line keep the order they were found in.
    d.sort_by(|a, b| a.file.cmp(&b.file).then(a.line.cmp(&b.line)));
}

/// The span of the value at `path`, or of its nearest existing ancestor (a problem about an
/// absent key points at the table that lacks it).
fn locate(root: &Spanned<DeValue<'_>>, path: &FieldPath) -> Range<usize> {
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
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(source: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    fn line(&self, offset: usize) -> usize {
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
