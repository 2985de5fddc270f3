//! Validation of a caller's `params` against a method's parameter definitions, before anything
//! is sent upstream. Messages say what was expected and never echo the value (it may be
//! patient data).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};

use regex::Regex;
use serde::Serialize;
use serde_json::{Map, Value};
use switchboard_connector::{MethodDef, ParamDef, ParamLocation, ParamType};

/// Longest accepted value (characters), per value of a repeated parameter.
pub const MAX_VALUE_CHARS: usize = 1024;
/// Most values accepted for one repeated parameter.
pub const MAX_REPEATED_VALUES: usize = 50;
const MAX_FIELD_CHARS: usize = 64;

/// One problem with one parameter. Serialised into the `errors` member of an
/// `invalid_params` problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParamError {
    /// The parameter (`identifier`, `identifier[1]` for one value of a repeated parameter, or
    /// `params` for rules spanning several parameters).
    pub field: String,
    /// What was expected.
    pub message: String,
}

impl ParamError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parameters that passed [`validate_params`], in the method's declaration order, converted to
/// their wire form. `Debug` shows names only, never values.
#[derive(Clone, Default)]
pub struct ValidParams {
    pub(crate) items: Vec<ValidParam>,
}

#[derive(Clone)]
pub(crate) struct ValidParam {
    /// The caller's name (used for `{name}` path placeholders).
    pub name: String,
    /// The name sent upstream.
    pub wire: String,
    pub location: ParamLocation,
    pub value: ValidValue,
}

#[derive(Clone)]
pub(crate) enum ValidValue {
    /// Path, query and header values in text form (several for a repeated parameter).
    Text(Vec<String>),
    /// Body values keep their JSON type.
    Json(Value),
}

impl ValidParams {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the caller supplied `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.items.iter().any(|p| p.name == name)
    }

    pub(crate) fn find(&self, name: &str, location: ParamLocation) -> Option<&ValidParam> {
        self.items
            .iter()
            .find(|p| p.location == location && p.name == name)
    }
}

impl fmt::Debug for ValidParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.items.iter().map(|p| &p.name))
            .finish()
    }
}

/// Checks `params` against `method`: unknown names, missing required ones, types, enums,
/// patterns, bounds, arrays only where `repeated`, empty and overlong values, and
/// `require_one_of`. Every problem found is reported, not just the first. `null` counts as
/// absent. Path parameters are always required and may not be `.` or `..`.
pub fn validate_params(
    method: &MethodDef,
    params: &Map<String, Value>,
) -> Result<ValidParams, Vec<ParamError>> {
    let mut errors = Vec::new();
    for key in params.keys() {
        if !method.params.iter().any(|p| &p.name == key) {
            errors.push(ParamError::new(
                printable_field(key),
                "unknown parameter for this method",
            ));
        }
    }

    let mut items = Vec::with_capacity(params.len());
    for def in &method.params {
        let value = match params.get(&def.name) {
            None | Some(Value::Null) => {
                if def.required || def.location == ParamLocation::Path {
                    errors.push(ParamError::new(&def.name, "is required"));
                }
                continue;
            }
            Some(v) => v,
        };
        if let Some(valid) = validate_one(def, value, &mut errors) {
            items.push(ValidParam {
                name: def.name.clone(),
                wire: def.wire_name().to_owned(),
                location: def.location,
                value: valid,
            });
        }
    }

    if !method.require_one_of.is_empty() {
        let present = |name: &String| matches!(params.get(name), Some(v) if !v.is_null());
        let satisfied = method
            .require_one_of
            .iter()
            .any(|set| set.iter().all(present));
        if !satisfied {
            let sets: Vec<String> = method
                .require_one_of
                .iter()
                .map(|set| format!("[{}]", set.join(", ")))
                .collect();
            errors.push(ParamError::new(
                "params",
                format!(
                    "supply every parameter of at least one of these combinations: {}",
                    sets.join(" or ")
                ),
            ));
        }
    }

    if errors.is_empty() {
        Ok(ValidParams { items })
    } else {
        Err(errors)
    }
}

/// Compiles and caches every pattern of `method` (e.g. when connectors are loaded) so the
/// first call does not pay for it. Returns the first invalid pattern's error.
pub fn precompile_patterns(method: &MethodDef) -> Result<(), regex::Error> {
    for p in &method.params {
        if let Some(pattern) = &p.pattern {
            if compiled(pattern).is_none() {
                return Err(build_full_match(pattern).unwrap_err());
            }
        }
    }
    Ok(())
}

fn validate_one(def: &ParamDef, value: &Value, errors: &mut Vec<ParamError>) -> Option<ValidValue> {
    if def.kind == ParamType::Json {
        return Some(if def.location == ParamLocation::Body {
            ValidValue::Json(value.clone())
        } else {
            ValidValue::Text(vec![value.to_string()])
        });
    }
    let before = errors.len();
    let texts = match value {
        Value::Array(values) if def.repeated => {
            if values.is_empty() {
                errors.push(ParamError::new(&def.name, "must not be an empty array"));
                return None;
            }
            if values.len() > MAX_REPEATED_VALUES {
                errors.push(ParamError::new(
                    &def.name,
                    format!("accepts at most {MAX_REPEATED_VALUES} values"),
                ));
                return None;
            }
            let mut out = Vec::with_capacity(values.len());
            for (i, v) in values.iter().enumerate() {
                if let Some(t) = check_value(def, v, || format!("{}[{i}]", def.name), errors) {
                    out.push(t);
                }
            }
            out
        }
        Value::Array(_) => {
            errors.push(ParamError::new(
                &def.name,
                format!("must be a single {}, not an array", describe(def.kind)),
            ));
            return None;
        }
        v => match check_value(def, v, || def.name.clone(), errors) {
            Some(t) => vec![t],
            None => return None,
        },
    };
    if errors.len() != before {
        return None;
    }
    Some(if def.location == ParamLocation::Body {
        ValidValue::Json(value.clone())
    } else {
        ValidValue::Text(texts)
    })
}

/// Checks one scalar and returns its text form.
fn check_value(
    def: &ParamDef,
    v: &Value,
    field: impl Fn() -> String,
    errors: &mut Vec<ParamError>,
) -> Option<String> {
    match scalar_text(def, v) {
        Ok(t) => {
            if let Err(message) = check_text(def, &t) {
                errors.push(ParamError::new(field(), message));
                None
            } else {
                Some(t)
            }
        }
        Err(message) => {
            errors.push(ParamError::new(field(), message));
            None
        }
    }
}

fn describe(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "string",
        ParamType::Integer => "integer",
        ParamType::Number => "number",
        ParamType::Boolean => "boolean",
        ParamType::Date => "date",
        ParamType::Token => "token",
        ParamType::Json => "JSON value",
    }
}

fn scalar_text(def: &ParamDef, v: &Value) -> Result<String, String> {
    match def.kind {
        ParamType::String => v
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "must be a string".to_owned()),
        ParamType::Integer => {
            let i = v
                .as_i64()
                .ok_or_else(|| "must be an integer (a JSON number without fraction)".to_owned())?;
            check_bounds(def, |b| i.cmp(&b))?;
            Ok(i.to_string())
        }
        ParamType::Number => {
            let n = match v {
                Value::Number(n) => n,
                _ => return Err("must be a number".to_owned()),
            };
            let f = n.as_f64().unwrap_or(0.0);
            check_bounds(def, |b| f.total_cmp(&(b as f64)))?;
            Ok(n.to_string())
        }
        ParamType::Boolean => v
            .as_bool()
            .map(|b| if b { "true" } else { "false" }.to_owned())
            .ok_or_else(|| "must be a boolean".to_owned()),
        ParamType::Date => match v.as_str() {
            Some(s) if is_fhir_date(s) => Ok(s.to_owned()),
            _ => Err(
                "must be a date string YYYY, YYYY-MM or YYYY-MM-DD, optionally prefixed \
                      by eq, ne, gt, lt, ge, le, sa, eb or ap"
                    .to_owned(),
            ),
        },
        ParamType::Token => match v.as_str() {
            Some(s) if is_token(s) => Ok(s.to_owned()),
            _ => Err("must be a token string: code, system|code, system| or |code".to_owned()),
        },
        ParamType::Json => Ok(v.to_string()),
    }
}

/// `cmp(bound)` compares the value with a bound.
fn check_bounds(def: &ParamDef, cmp: impl Fn(i64) -> std::cmp::Ordering) -> Result<(), String> {
    if let Some(min) = def.minimum {
        if cmp(min).is_lt() {
            return Err(format!("must be at least {min}"));
        }
    }
    if let Some(max) = def.maximum {
        if cmp(max).is_gt() {
            return Err(format!("must be at most {max}"));
        }
    }
    Ok(())
}

/// Checks shared by every value in text form.
fn check_text(def: &ParamDef, t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if t.len() > MAX_VALUE_CHARS && t.chars().count() > MAX_VALUE_CHARS {
        return Err(format!("must be at most {MAX_VALUE_CHARS} characters"));
    }
    if t.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    if !def.allowed.is_empty() && !def.allowed.iter().any(|a| a == t) {
        return Err(format!("must be one of: {}", def.allowed.join(", ")));
    }
    if let Some(pattern) = &def.pattern {
        match compiled(pattern) {
            Some(re) if re.is_match(t) => {}
            Some(_) => return Err(format!("must match the pattern {pattern}")),
            None => {
                return Err("cannot be checked: the connector's pattern for it is invalid".into())
            }
        }
    }
    match def.location {
        ParamLocation::Path if t == "." || t == ".." => {
            return Err("must not be \".\" or \"..\"".to_owned())
        }
        ParamLocation::Header if !t.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
            return Err("must contain only printable ASCII characters".to_owned())
        }
        _ => {}
    }
    Ok(())
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD` (a real calendar date), optionally prefixed by a FHIR
/// search comparator.
pub(crate) fn is_fhir_date(s: &str) -> bool {
    const PREFIXES: [&str; 9] = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
    let s = match s.get(..2) {
        Some(p) if PREFIXES.contains(&p) => &s[2..],
        _ => s,
    };
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r.clone()].iter().all(u8::is_ascii_digit);
    let num = |r: std::ops::Range<usize>| {
        b[r].iter()
            .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    if !matches!(b.len(), 4 | 7 | 10) || !digits(0..4) {
        return false;
    }
    let year = num(0..4);
    if year == 0 {
        return false;
    }
    if b.len() == 4 {
        return true;
    }
    if b[4] != b'-' || !digits(5..7) {
        return false;
    }
    let month = num(5..7);
    if !(1..=12).contains(&month) {
        return false;
    }
    if b.len() == 7 {
        return true;
    }
    if b[7] != b'-' || !digits(8..10) {
        return false;
    }
    let day = num(8..10);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    (1..=days).contains(&day)
}

/// FHIR token: `code`, `system|code`, `system|` or `|code` (one `|` at most, not alone).
pub(crate) fn is_token(s: &str) -> bool {
    match s.split_once('|') {
        None => !s.is_empty(),
        Some((system, code)) => !(code.contains('|') || system.is_empty() && code.is_empty()),
    }
}

type PatternCache = RwLock<HashMap<String, Option<Arc<Regex>>>>;

/// Compiled full-match regexes keyed by the pattern text (so a reloaded connector with a
/// changed pattern gets a new entry). `None` records an invalid pattern.
fn compiled(pattern: &str) -> Option<Arc<Regex>> {
    static CACHE: OnceLock<PatternCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.read().unwrap_or_else(|e| e.into_inner()).get(pattern) {
        return hit.clone();
    }
    let re = build_full_match(pattern).ok().map(Arc::new);
    cache
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pattern.to_owned(), re.clone());
    re
}

fn build_full_match(pattern: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
}

/// A caller-supplied key made safe to echo: printable, bounded.
fn printable_field(key: &str) -> String {
    key.chars()
        .filter(|c| !c.is_control())
        .take(MAX_FIELD_CHARS)
        .collect()
}
