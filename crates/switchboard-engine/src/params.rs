//! Validation of a caller's `params` against the compiled method from the catalogue, before
//! anything is sent upstream: the patterns and `require_one_of` checked here are the connector's
//! own compiled ones. Messages say what was expected and never echo the value (it may be
//! patient data).

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};
use switchboard_connector::{CompiledMethod, CompiledParam, ParamDef, ParamLocation, ParamType};

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
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Parameters that passed [`validate_params`] for one compiled method, in the method's
/// declaration order, converted to their wire form. They stay tied to that method: the request
/// is built from [`ValidParams::method`], so a call cannot be validated against one definition
/// and sent with another. `Debug` shows names only, never values.
#[derive(Clone)]
pub struct ValidParams<'m> {
    method: &'m CompiledMethod,
    pub(crate) items: Vec<ValidParam<'m>>,
}

#[derive(Clone)]
pub(crate) struct ValidParam<'m> {
    /// The compiled param the value was checked against (caller's name, wire name, location).
    pub param: &'m CompiledParam,
    pub value: ValidValue,
}

#[derive(Clone)]
pub(crate) enum ValidValue {
    /// Path, query and header values in text form (several for a repeated parameter).
    Text(Vec<String>),
    /// Body values keep their JSON type.
    Json(Value),
}

impl<'m> ValidParams<'m> {
    /// The compiled method these params were validated against (and will be sent with).
    pub fn method(&self) -> &'m CompiledMethod {
        self.method
    }

    /// The single text value of the path param `name` (what a `{name}` placeholder renders).
    pub(crate) fn path_value(&self, name: &str) -> Option<&str> {
        let p = self
            .items
            .iter()
            .find(|p| p.param.location() == ParamLocation::Path && p.param.name() == name)?;
        match &p.value {
            ValidValue::Text(values) if values.len() == 1 => Some(&values[0]),
            _ => None,
        }
    }
}

impl fmt::Debug for ValidParams<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.items.iter().map(|p| p.param.name()))
            .finish()
    }
}

/// Checks `params` against the compiled `method`: unknown names, missing required ones, types,
/// enums, patterns, bounds, arrays only where `repeated`, empty and overlong values, and
/// `require_one_of`. Every problem found is reported, not just the first. `null` counts as
/// absent. Path parameters are always required and may not be `.` or `..`.
pub fn validate_params<'m>(
    method: &'m CompiledMethod,
    params: &Map<String, Value>,
) -> Result<ValidParams<'m>, Vec<ParamError>> {
    let mut errors = Vec::new();
    for key in params.keys() {
        if method.param(key).is_none() {
            errors.push(ParamError::new(
                printable_field(key),
                "unknown parameter for this method",
            ));
        }
    }

    let mut items = Vec::with_capacity(params.len());
    for param in method.params() {
        let value = match params.get(param.name()) {
            None | Some(Value::Null) => {
                if param.is_required() {
                    errors.push(ParamError::new(param.name(), "is required"));
                }
                continue;
            }
            Some(v) => v,
        };
        if let Some(valid) = validate_one(param, value, &mut errors) {
            items.push(ValidParam {
                param,
                value: valid,
            });
        }
    }

    let present = |name: &str| matches!(params.get(name), Some(v) if !v.is_null());
    if !method.satisfies_required_combinations(present) {
        errors.push(ParamError::new(
            "params",
            format!(
                "supply every parameter of at least one of these combinations: {}",
                method.required_combinations_hint()
            ),
        ));
    }

    if errors.is_empty() {
        Ok(ValidParams { method, items })
    } else {
        Err(errors)
    }
}

fn validate_one(
    param: &CompiledParam,
    value: &Value,
    errors: &mut Vec<ParamError>,
) -> Option<ValidValue> {
    let def = &param.def;
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
                if let Some(t) = check_value(param, v, || format!("{}[{i}]", def.name), errors) {
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
        v => match check_value(param, v, || def.name.clone(), errors) {
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
    param: &CompiledParam,
    v: &Value,
    field: impl Fn() -> String,
    errors: &mut Vec<ParamError>,
) -> Option<String> {
    match scalar_text(&param.def, v) {
        Ok(t) => {
            if let Err(message) = check_text(param, &t) {
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
fn check_text(param: &CompiledParam, t: &str) -> Result<(), String> {
    let def = &param.def;
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
    if !param.matches_pattern(t) {
        let pattern = def.pattern.as_deref().unwrap_or_default();
        return Err(format!("must match the pattern {pattern}"));
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

/// A caller-supplied key made safe to echo: printable, bounded.
fn printable_field(key: &str) -> String {
    key.chars()
        .filter(|c| !c.is_control())
        .take(MAX_FIELD_CHARS)
        .collect()
}
