//! Loading `connectors/*.toml`: TOML syntax, then structure (against the generated JSON Schema),
//! then semantics, every problem reported as `file:line: message` in one pass so an author fixes
//! a file in one round trip.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::catalog::{Catalog, Connector};
use crate::include;
use crate::model::ConnectorDef;
use crate::schema::schema_ref;
use crate::shape;
pub use crate::spanned::Diagnostic;
use crate::spanned::{locate, parse_spanned, sort, with_path};
use crate::validate::{validate, FieldPath, Segment};

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
    let mut patterns = crate::validate::Patterns::default();
    for (file, _, def) in loaded {
        match Connector::compile(def, &mut patterns) {
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
