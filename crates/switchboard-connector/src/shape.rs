//! Structural check of a parsed connector file against the generated JSON Schema, before serde
//! sees it. Serde stops at the first error (and loses spans inside the internally tagged `auth`
//! entries); this walk reports every unknown key, wrong type and missing key with its span, then
//! repairs the tree (drops unknown keys, substitutes placeholders) so that the semantic checks can
//! still run and report their problems too, in the same pass. The schema is the one committed as
//! `connectors/connector.schema.json`, so editors and the loader agree on the format by
//! construction.

use std::borrow::Cow;
use std::ops::Range;

use serde_json::{Map, Value};
use toml::de::{DeArray, DeTable, DeValue};
use toml::Spanned;

use crate::validate::FieldPath;

/// One structural problem.
#[derive(Debug, Clone)]
pub(crate) struct ShapeError {
    pub span: Range<usize>,
    pub path: FieldPath,
    pub message: String,
}

/// Result of the walk.
#[derive(Debug, Default)]
pub(crate) struct ShapeReport {
    pub errors: Vec<ShapeError>,
    /// Paths whose value was replaced or defaulted during repair: semantic issues at or below
    /// them would be about the placeholder, not about the file, and are suppressed.
    pub poisoned: Vec<FieldPath>,
    /// The document could not be repaired into something deserializable.
    pub fatal: bool,
}

/// Check `root` against `schema` (a draft-07 document with `definitions`) and repair it in place.
pub(crate) fn check(schema: &Value, root: &mut Spanned<DeValue<'_>>) -> ShapeReport {
    let empty = Map::new();
    let defs = schema
        .get("definitions")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut w = Walker {
        defs,
        report: ShapeReport::default(),
    };
    let ok = w.node(schema, root, &FieldPath::root());
    w.report.fatal = !ok;
    w.report
}

struct Walker<'s> {
    defs: &'s Map<String, Value>,
    report: ShapeReport,
}

impl<'s> Walker<'s> {
    fn error(&mut self, span: Range<usize>, path: &FieldPath, message: impl Into<String>) {
        self.report.errors.push(ShapeError {
            span,
            path: path.clone(),
            message: message.into(),
        });
    }

    fn poison(&mut self, path: FieldPath) {
        self.report.poisoned.push(path);
    }

    fn resolve(&self, mut schema: &'s Value) -> &'s Value {
        // Bounded: schemars never emits reference cycles without an intermediate object.
        for _ in 0..16 {
            let Some(name) = schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/definitions/"))
            else {
                break;
            };
            match self.defs.get(name) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    /// Returns false when the value cannot be accepted and the caller must drop or replace it.
    fn node(
        &mut self,
        schema: &'s Value,
        value: &mut Spanned<DeValue<'_>>,
        path: &FieldPath,
    ) -> bool {
        let schema = self.resolve(schema);
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for sub in all {
                if !self.node(sub, value, path) {
                    return false;
                }
            }
        }
        let union = schema
            .get("oneOf")
            .or_else(|| schema.get("anyOf"))
            .and_then(Value::as_array);
        if let Some(branches) = union {
            let branches: Vec<&'s Value> = branches
                .iter()
                .filter(|b| !is_null_schema(self.resolve(b)))
                .collect();
            let ok = match branches.as_slice() {
                [only] => self.node(only, value, path),
                _ => self.union(&branches, value, path),
            };
            if !ok {
                return false;
            }
        }
        if let Some(allowed) = local_strings(schema) {
            return self.strings(&allowed, value, path);
        }
        if let Some(types) = type_list(schema) {
            if !types.iter().any(|t| type_matches(t, value.get_ref())) {
                let expected = types
                    .iter()
                    .map(|t| type_noun(t))
                    .collect::<Vec<_>>()
                    .join(" or ");
                let found = value_noun(value.get_ref());
                self.error(
                    value.span(),
                    path,
                    format!("expected {expected}, found {found}"),
                );
                return false;
            }
        }
        let span = value.span();
        match value.get_mut() {
            DeValue::Table(t) => self.table(schema, t, span, path),
            DeValue::Array(a) => match schema.get("items") {
                Some(items) => self.array(items, a, path),
                None => true,
            },
            DeValue::Integer(i) => {
                if i64::from_str_radix(i.as_str(), i.radix()).is_err() {
                    self.error(span, path, "integer out of range");
                    return false;
                }
                true
            }
            _ => true,
        }
    }

    fn strings(
        &mut self,
        allowed: &[String],
        value: &Spanned<DeValue<'_>>,
        path: &FieldPath,
    ) -> bool {
        let list = allowed
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        match value.get_ref() {
            DeValue::String(s) if allowed.iter().any(|a| a == s.as_ref()) => true,
            DeValue::String(s) => {
                let hint = suggest(s, allowed.iter().map(String::as_str))
                    .map(|m| format!(" (did you mean \"{m}\"?)"))
                    .unwrap_or_default();
                self.error(
                    value.span(),
                    path,
                    format!("\"{s}\" is not one of {list}{hint}"),
                );
                false
            }
            other => {
                let found = value_noun(other);
                self.error(
                    value.span(),
                    path,
                    format!("expected one of {list}, found {found}"),
                );
                false
            }
        }
    }

    fn union(
        &mut self,
        branches: &[&'s Value],
        value: &mut Spanned<DeValue<'_>>,
        path: &FieldPath,
    ) -> bool {
        let strings: Option<Vec<Vec<String>>> =
            branches.iter().map(|b| self.strings_of(b)).collect();
        if let Some(strings) = strings {
            let all: Vec<String> = strings.into_iter().flatten().collect();
            return self.strings(&all, value, path);
        }
        if let Some((key, cases)) = self.discriminator(branches) {
            let span = value.span();
            let DeValue::Table(t) = value.get_ref() else {
                let found = value_noun(value.get_ref());
                self.error(span, path, format!("expected a table, found {found}"));
                return false;
            };
            let names: Vec<String> = cases.iter().map(|(n, _)| n.clone()).collect();
            let Some((_, tag)) = t.iter().find(|(k, _)| k.get_ref().as_ref() == key) else {
                self.error(
                    span,
                    path,
                    format!("missing required key `{key}` (one of {})", names.join(", ")),
                );
                return false;
            };
            if !self.strings(&names, tag, &path.key(&key)) {
                return false;
            }
            let chosen = match tag.get_ref() {
                DeValue::String(s) => cases.iter().find(|(n, _)| n == s.as_ref()).map(|(_, b)| *b),
                _ => None,
            };
            return match chosen {
                Some(branch) => self.node(branch, value, path),
                None => false,
            };
        }
        // Generic fallback (not produced for the current model): accept the first branch that
        // validates cleanly.
        for b in branches {
            let mut probe = Walker {
                defs: self.defs,
                report: ShapeReport::default(),
            };
            let mut copy = value.clone();
            if probe.node(b, &mut copy, path) && probe.report.errors.is_empty() {
                return true;
            }
        }
        self.error(value.span(), path, "does not match any allowed form");
        false
    }

    fn strings_of(&self, schema: &'s Value) -> Option<Vec<String>> {
        let schema = self.resolve(schema);
        if let Some(s) = local_strings(schema) {
            return Some(s);
        }
        let branches = schema
            .get("oneOf")
            .or_else(|| schema.get("anyOf"))?
            .as_array()?;
        let parts: Option<Vec<Vec<String>>> = branches.iter().map(|b| self.strings_of(b)).collect();
        parts.map(|p| p.into_iter().flatten().collect())
    }

    /// For unions of tables told apart by a constant property (`type = "static_bearer"`).
    fn discriminator(&self, branches: &[&'s Value]) -> Option<(String, Vec<(String, &'s Value)>)> {
        let first = self.resolve(branches.first()?);
        let props = first.get("properties")?.as_object()?;
        'keys: for key in props.keys() {
            let mut cases = Vec::new();
            for b in branches {
                let b = self.resolve(b);
                let c = b
                    .get("properties")
                    .and_then(|p| p.get(key))
                    .and_then(|p| p.get("const"))
                    .and_then(Value::as_str);
                match c {
                    Some(c) => cases.push((c.to_owned(), b)),
                    None => continue 'keys,
                }
            }
            return Some((key.clone(), cases));
        }
        None
    }

    fn table(
        &mut self,
        schema: &'s Value,
        t: &mut DeTable<'_>,
        span: Range<usize>,
        path: &FieldPath,
    ) -> bool {
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let closed = matches!(additional, Some(Value::Bool(false)));
        let extra_schema = additional.filter(|a| a.is_object());
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut ok = true;
        let mut remove: Vec<String> = Vec::new();
        // Required keys an unknown key was probably meant to be (`pth` -> `path`): the "did you
        // mean" already says it, so no separate "missing required key" for them.
        let mut meant: Vec<String> = Vec::new();
        for (k, v) in t.iter_mut() {
            let key: &str = k.get_ref().as_ref();
            let child = path.key(key);
            let sub = props.and_then(|p| p.get(key)).or(extra_schema);
            let Some(sub) = sub else {
                if closed {
                    let known = props.map(|p| p.keys().map(String::as_str).collect::<Vec<_>>());
                    let known = known.unwrap_or_default();
                    let hint = match suggest(key, known.iter().copied()) {
                        Some(m) => {
                            meant.push(m.to_owned());
                            format!("did you mean `{m}`?")
                        }
                        None => format!("expected one of: {}", known.join(", ")),
                    };
                    self.error(k.span(), path, format!("unknown key `{key}`; {hint}"));
                    remove.push(key.to_owned());
                }
                continue;
            };
            if self.node(sub, v, &child) {
                continue;
            }
            if !required.contains(&key) {
                // The default applies instead; it may trip checks that are not the file's fault.
                remove.push(key.to_owned());
                self.poison(child);
            } else if let Some((d, likely)) = self.placeholder(sub, Some(v.get_ref())) {
                *v.get_mut() = d;
                // A likely correction ("GETT" -> "GET") only stands in for this key; an arbitrary
                // stand-in may skew checks anywhere in the element.
                self.poison(if likely { child } else { child.element() });
            } else {
                remove.push(key.to_owned());
                ok = false;
            }
        }
        for key in &remove {
            t.remove(key.as_str());
        }
        for key in required {
            if t.contains_key(key) || remove.iter().any(|r| r == key) {
                continue;
            }
            if !meant.iter().any(|m| m == key) {
                self.error(span.clone(), path, format!("missing required key `{key}`"));
            }
            let sub = props.and_then(|p| p.get(key));
            match sub.and_then(|s| self.placeholder(s, None)) {
                Some((d, _)) => {
                    t.insert(
                        Spanned::new(span.clone(), Cow::Owned(key.to_owned())),
                        Spanned::new(span.clone(), d),
                    );
                    self.poison(path.key(key).element());
                }
                None => ok = false,
            }
        }
        ok
    }

    fn array(&mut self, items: &'s Value, a: &mut DeArray<'_>, path: &FieldPath) -> bool {
        let mut keep = Vec::with_capacity(a.len());
        for (i, item) in a.iter_mut().enumerate() {
            keep.push(self.node(items, item, &path.index(i)));
        }
        if keep.iter().all(|k| *k) {
            return true;
        }
        // Dropping an element shifts the indices after it: suppress everything under the array.
        let old = std::mem::replace(a, DeArray::new());
        *a = old
            .into_iter()
            .zip(keep)
            .filter_map(|(item, k)| k.then_some(item))
            .collect();
        self.poison(path.clone());
        true
    }

    /// A stand-in for a required value that was missing or invalid: the allowed string closest
    /// to what was written (then `true`: a likely correction), else the first allowed string, an
    /// empty string or an empty array. `None` when no neutral value exists.
    fn placeholder(
        &self,
        schema: &'s Value,
        current: Option<&DeValue<'_>>,
    ) -> Option<(DeValue<'static>, bool)> {
        if let Some(allowed) = self.strings_of(schema) {
            if let Some(DeValue::String(written)) = current {
                if let Some(m) = suggest(written, allowed.iter().map(String::as_str)) {
                    return Some((DeValue::String(Cow::Owned(m.to_owned())), true));
                }
            }
            let first = allowed.into_iter().next()?;
            return Some((DeValue::String(Cow::Owned(first)), false));
        }
        let schema = self.resolve(schema);
        let types = type_list(schema)?;
        if types.contains(&"string") {
            Some((DeValue::String(Cow::Borrowed("")), false))
        } else if types.contains(&"array") {
            Some((DeValue::Array(DeArray::new()), false))
        } else {
            None
        }
    }
}

fn is_null_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

/// The strings a schema allows by itself (`const` or `enum`).
fn local_strings(schema: &Value) -> Option<Vec<String>> {
    if let Some(c) = schema.get("const").and_then(Value::as_str) {
        return Some(vec![c.to_owned()]);
    }
    let e = schema.get("enum")?.as_array()?;
    e.iter().map(|v| v.as_str().map(str::to_owned)).collect()
}

/// The JSON types a schema allows (`null` dropped: TOML cannot express it, absence stands in).
fn type_list(schema: &Value) -> Option<Vec<&str>> {
    let types: Vec<&str> = match schema.get("type")? {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    Some(types.into_iter().filter(|t| *t != "null").collect())
}

fn type_matches(ty: &str, v: &DeValue<'_>) -> bool {
    matches!(
        (ty, v),
        ("string", DeValue::String(_))
            | ("integer", DeValue::Integer(_))
            | ("number", DeValue::Integer(_) | DeValue::Float(_))
            | ("boolean", DeValue::Boolean(_))
            | ("array", DeValue::Array(_))
            | ("object", DeValue::Table(_))
    )
}

fn type_noun(ty: &str) -> &'static str {
    match ty {
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean",
        "array" => "an array",
        "object" => "a table",
        _ => "a value",
    }
}

fn value_noun(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The closest candidate within a small edit distance (typos like `pth`, `get`, `requried`).
fn suggest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = ["path", "params", "paging", "verb", "require_one_of"];
        assert_eq!(suggest("pth", keys.iter().copied()), Some("path"));
        assert_eq!(
            suggest("requre_one_of", keys.iter().copied()),
            Some("require_one_of")
        );
        assert_eq!(suggest("zzzzzz", keys.iter().copied()), None);
        assert_eq!(suggest("get", ["GET", "POST"].into_iter()), Some("GET"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
