//! `[[include]]`: methods shared through library files (`connectors/_fhir/us_core.toml`),
//! taken by name and narrowed per vendor (description, scope, `require_one_of`, dropped params,
//! per-param upstream name, pattern, enum, bounds). Resolved by the loader before validation, so
//! an included method is checked and compiled exactly like one written in the connector file.
//!
//! Problems in the including file come back as field paths (the loader turns them into lines);
//! problems inside a library file are reported as `library:line` diagnostics of that file.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::model::{IncludeDef, LibraryDef, MethodDef, NarrowDef};
use crate::spanned::{parse_spanned, Diagnostic};
use crate::validate::FieldPath;

/// Where an appended method came from: the index of the `[[include]]` entry that took it.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub include: usize,
    pub library: String,
    pub method: String,
}

/// What resolving a file's includes produced.
#[derive(Debug, Default)]
pub(crate) struct Resolved {
    /// The included, narrowed methods, in include order.
    pub methods: Vec<MethodDef>,
    /// One per entry of `methods`.
    pub origins: Vec<Origin>,
    /// Problems in the including file, by field path.
    pub here: Vec<(FieldPath, String)>,
    /// Problems inside library files.
    pub elsewhere: Vec<Diagnostic>,
}

/// Resolve `includes` of a file in `dir`. `stack` holds the files being loaded (outermost first)
/// so that a cycle is reported instead of followed.
pub(crate) fn resolve(dir: &Path, includes: &[IncludeDef], stack: &mut Vec<PathBuf>) -> Resolved {
    let mut out = Resolved::default();
    for (k, inc) in includes.iter().enumerate() {
        let at = FieldPath::root().key("include").index(k);
        let Some(path) = library_path(dir, &inc.library) else {
            out.here.push((
                at.key("library"),
                format!(
                    "library `{}` must be a relative path to a .toml file inside the connector directory (no `..`)",
                    inc.library
                ),
            ));
            continue;
        };
        let key = fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if stack.contains(&key) {
            let chain: Vec<String> = stack
                .iter()
                .chain(std::iter::once(&key))
                .map(|p| {
                    p.file_name()
                        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
                })
                .collect();
            out.here.push((
                at.key("library"),
                format!("include cycle: {}", chain.join(" -> ")),
            ));
            continue;
        }
        let Some(library) = load_library(&path, &key, stack, &mut out.elsewhere) else {
            out.here.push((
                at.key("library"),
                format!(
                    "library `{}` cannot be used (see its own diagnostics)",
                    inc.library
                ),
            ));
            continue;
        };
        take(k, &at, inc, library, &mut out);
    }
    out
}

/// `dir/relative`, refusing absolute paths, `..` and anything but `.toml`.
fn library_path(dir: &Path, relative: &str) -> Option<PathBuf> {
    let rel = Path::new(relative);
    let plain = rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    (plain && rel.extension().is_some_and(|e| e == "toml")).then(|| dir.join(rel))
}

/// The methods a library offers (its own, then those it includes), or `None` after reporting
/// why it cannot be read.
fn load_library(
    path: &Path,
    key: &Path,
    stack: &mut Vec<PathBuf>,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Vec<MethodDef>> {
    let source = match fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => {
            diagnostics.push(Diagnostic {
                file: path.to_path_buf(),
                line: 1,
                message: format!("cannot read library: {e}"),
            });
            return None;
        }
    };
    let parsed = match parse_spanned(path, &source) {
        Ok(p) => p,
        Err(mut d) => {
            diagnostics.append(&mut d);
            return None;
        }
    };
    let def = match LibraryDef::deserialize(parsed.deserializer()) {
        Ok(def) => def,
        Err(e) => {
            diagnostics.push(parsed.diagnostic(e.span().unwrap_or(0..0), e.message().to_owned()));
            return None;
        }
    };
    stack.push(key.to_path_buf());
    let dir = path.parent().unwrap_or(Path::new("."));
    let nested = resolve(dir, &def.include, stack);
    stack.pop();
    diagnostics.extend(nested.elsewhere);
    let ok = nested.here.is_empty();
    for (at, message) in nested.here {
        diagnostics.push(parsed.at(&at, message));
    }
    if !ok {
        return None;
    }
    let mut methods = def.methods;
    methods.extend(nested.methods);
    Some(methods)
}

/// Apply one `[[include]]` entry: pick its methods from `library` and narrow them.
fn take(k: usize, at: &FieldPath, inc: &IncludeDef, library: Vec<MethodDef>, out: &mut Resolved) {
    let offered: Vec<&str> = library.iter().map(|m| m.id.as_str()).collect();
    let mut taken = BTreeSet::new();
    for (j, id) in inc.methods.iter().enumerate() {
        let Some(method) = library.iter().find(|m| &m.id == id) else {
            out.here.push((
                at.key("methods").index(j),
                format!(
                    "unknown method `{id}` in library `{}` (it offers: {})",
                    inc.library,
                    offered.join(", ")
                ),
            ));
            continue;
        };
        if !taken.insert(id.as_str()) {
            out.here.push((
                at.key("methods").index(j),
                format!("method `{id}` is taken twice"),
            ));
            continue;
        }
        let mut method = method.clone();
        if let Some(n) = inc.narrow.get(id) {
            narrow(&at.key("narrow").key(id), &mut method, n, &mut out.here);
        }
        out.methods.push(method);
        out.origins.push(Origin {
            include: k,
            library: inc.library.clone(),
            method: id.clone(),
        });
    }
    for id in inc.narrow.keys() {
        if !inc.methods.contains(id) {
            out.here.push((
                at.key("narrow").key(id),
                format!("narrows `{id}`, which this include does not take"),
            ));
        }
    }
}

fn narrow(at: &FieldPath, m: &mut MethodDef, n: &NarrowDef, here: &mut Vec<(FieldPath, String)>) {
    if let Some(d) = &n.description {
        m.description = Some(d.clone());
    }
    if let Some(s) = &n.scope {
        m.scope = Some(s.clone());
    }
    if let Some(r) = &n.require_one_of {
        m.require_one_of = r.clone();
    }
    if let Some(r) = &n.body_required {
        match m.body.as_mut() {
            Some(body) => body.required = r.clone(),
            None => here.push((at.key("body_required"), format!("`{}` takes no body", m.id))),
        }
    }
    if let Some(c) = n.conditional_identifier {
        m.conditional_identifier = c;
    }
    for (i, name) in n.drop_params.iter().enumerate() {
        let before = m.params.len();
        m.params.retain(|p| &p.name != name);
        if m.params.len() == before {
            here.push((
                at.key("drop_params").index(i),
                format!("`{}` has no param `{name}` to drop", m.id),
            ));
        }
    }
    for (name, o) in &n.params {
        let Some(p) = m.params.iter_mut().find(|p| &p.name == name) else {
            here.push((
                at.key("params").key(name),
                format!(
                    "`{}` has no param `{name}` (dropped, or never declared)",
                    m.id
                ),
            ));
            continue;
        };
        if let Some(v) = &o.upstream_name {
            p.upstream_name = Some(v.clone());
        }
        if let Some(v) = o.required {
            p.required = v;
        }
        if let Some(v) = &o.allowed {
            p.allowed = v.clone();
        }
        if let Some(v) = &o.pattern {
            p.pattern = Some(v.clone());
        }
        if let Some(v) = o.minimum {
            p.minimum = Some(v);
        }
        if let Some(v) = o.maximum {
            p.maximum = Some(v);
        }
        if let Some(v) = &o.description {
            p.description = Some(v.clone());
        }
    }
}
