//! `{{...}}` templates over settings: the only way connector files compose URLs, scopes and
//! parameters from a tenant's setup and an install's overrides.
//!
//! Syntax: literal text with `{{settings.KEY}}`, `{{fhir_base}}` and `{{redirect_uri}}`
//! (whitespace inside the braces is allowed), each optionally followed by filters:
//! `{{ settings.instance_url | trim_end_slash }}` (see [`Filter`]). Rendering is plain concatenation, no escaping:
//! templates build URLs from URL-typed settings (validated and normalised on input), and any
//! escaping here would double-encode them. Every `{{` must close and every `}}` must open, so a
//! typo is a load-time error instead of a literal brace in a token URL.

use std::collections::BTreeMap;
use std::fmt;

/// A variable a template refers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variable {
    /// `{{settings.KEY}}`: a merged setting value (defaults < setup < install overrides).
    Setting(String),
    /// `{{fhir_base}}`: the rendered FHIR base URL of the install.
    FhirBase,
    /// `{{redirect_uri}}`: the host's shared OAuth callback URL (token parameters only).
    RedirectUri,
}

impl fmt::Display for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setting(key) => write!(f, "settings.{key}"),
            Self::FhirBase => f.write_str("fhir_base"),
            Self::RedirectUri => f.write_str("redirect_uri"),
        }
    }
}

/// A filter applied to a variable's value: `{{ VARIABLE | filter }}`, left to right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Filter {
    /// `trim_end_slash`: removes every trailing `/` (Canvas's issuer is its instance URL without
    /// the `/` the URL setting is normalised to end with).
    TrimEndSlash,
}

impl Filter {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "trim_end_slash" => Some(Self::TrimEndSlash),
            _ => None,
        }
    }

    fn apply(self, value: &str) -> String {
        match self {
            Self::TrimEndSlash => value.trim_end_matches('/').to_owned(),
        }
    }
}

/// Why a template did not parse or render. Messages name setting keys, never setting values,
/// so they are safe for logs and API error details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{{{` at offset {offset}")]
    Unclosed { offset: usize },
    #[error("`}}}}` at offset {offset} closes nothing")]
    UnmatchedClose { offset: usize },
    #[error("empty `{{{{ }}}}` at offset {offset}")]
    EmptyVariable { offset: usize },
    #[error("unknown variable `{name}` (expected `settings.KEY`, `fhir_base` or `redirect_uri`)")]
    UnknownVariable { name: String },
    #[error("unknown filter `{name}` (expected `trim_end_slash`)")]
    UnknownFilter { name: String },
    #[error("setting `{key}` has no value")]
    MissingSetting { key: String },
    #[error("`{{{{{variable}}}}}` is not available here")]
    Unavailable { variable: &'static str },
}

/// What a template is rendered against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateContext {
    /// Merged settings (see [`crate::settings::merge_settings`]).
    pub settings: BTreeMap<String, String>,
    /// Rendered FHIR base; `None` while rendering the FHIR base itself.
    pub fhir_base: Option<String>,
    /// The shared callback URL; only set when building token requests.
    pub redirect_uri: Option<String>,
}

impl TemplateContext {
    pub fn new(settings: BTreeMap<String, String>) -> Self {
        Self {
            settings,
            fhir_base: None,
            redirect_uri: None,
        }
    }

    pub fn with_fhir_base(mut self, fhir_base: impl Into<String>) -> Self {
        self.fhir_base = Some(fhir_base.into());
        self
    }

    pub fn with_redirect_uri(mut self, redirect_uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(redirect_uri.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Variable, Vec<Filter>),
}

/// A parsed template. Parse once (the [`crate::Connector`] wrapper does so at load time), render
/// many times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        let mut offset = 0;
        loop {
            let open = rest.find("{{");
            let close = rest.find("}}");
            let Some(o) = open else {
                if let Some(c) = close {
                    return Err(TemplateError::UnmatchedClose { offset: offset + c });
                }
                literal.push_str(rest);
                break;
            };
            if let Some(c) = close.filter(|&c| c < o) {
                return Err(TemplateError::UnmatchedClose { offset: offset + c });
            }
            literal.push_str(&rest[..o]);
            let after = &rest[o + 2..];
            let end = after
                .find("}}")
                .ok_or(TemplateError::Unclosed { offset: offset + o })?;
            let inner = &after[..end];
            if inner.contains("{{") {
                return Err(TemplateError::Unclosed { offset: offset + o });
            }
            let mut pieces = inner.split('|');
            let var = parse_variable(pieces.next().unwrap_or_default().trim(), offset + o)?;
            let filters = pieces
                .map(|f| {
                    Filter::parse(f.trim()).ok_or_else(|| TemplateError::UnknownFilter {
                        name: f.trim().to_owned(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(var, filters));
            let consumed = o + 2 + end + 2;
            rest = &rest[consumed..];
            offset += consumed;
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    /// The text the template was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The variables used, in order of appearance (repeats included).
    pub fn variables(&self) -> impl Iterator<Item = &Variable> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v, _) => Some(v),
            Part::Literal(_) => None,
        })
    }

    /// The setting keys used, in order of appearance.
    pub fn setting_keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.variables().filter_map(|v| match v {
            Variable::Setting(k) => Some(k.as_str()),
            _ => None,
        })
    }

    /// Whether the template contains text besides its variables.
    pub fn has_literal_text(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Literal(s) if !s.trim().is_empty()))
    }

    pub fn render(&self, ctx: &TemplateContext) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.source.len() + 64);
        for part in &self.parts {
            let (var, filters) = match part {
                Part::Literal(s) => {
                    out.push_str(s);
                    continue;
                }
                Part::Var(v, f) => (v, f),
            };
            let value = match var {
                Variable::Setting(key) => match ctx.settings.get(key) {
                    Some(value) => value,
                    None => return Err(TemplateError::MissingSetting { key: key.clone() }),
                },
                Variable::FhirBase => ctx.fhir_base.as_ref().ok_or(TemplateError::Unavailable {
                    variable: "fhir_base",
                })?,
                Variable::RedirectUri => {
                    ctx.redirect_uri
                        .as_ref()
                        .ok_or(TemplateError::Unavailable {
                            variable: "redirect_uri",
                        })?
                }
            };
            if filters.is_empty() {
                out.push_str(value);
            } else {
                let mut v = value.clone();
                for f in filters {
                    v = f.apply(&v);
                }
                out.push_str(&v);
            }
        }
        Ok(out)
    }
}

/// Parse and render in one go, for templates used too rarely to cache (token requests).
pub fn render_str(source: &str, ctx: &TemplateContext) -> Result<String, TemplateError> {
    Template::parse(source)?.render(ctx)
}

fn parse_variable(inner: &str, offset: usize) -> Result<Variable, TemplateError> {
    if inner.is_empty() {
        return Err(TemplateError::EmptyVariable { offset });
    }
    match inner {
        "fhir_base" => return Ok(Variable::FhirBase),
        "redirect_uri" => return Ok(Variable::RedirectUri),
        _ => {}
    }
    if let Some(key) = inner.strip_prefix("settings.") {
        let valid = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if valid {
            return Ok(Variable::Setting(key.to_owned()));
        }
    }
    Err(TemplateError::UnknownVariable {
        name: inner.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> TemplateContext {
        let mut settings = BTreeMap::new();
        settings.insert("endpoint".to_owned(), "https://x.org/root/".to_owned());
        settings.insert("client_secret".to_owned(), "s3cr3t-value".to_owned());
        TemplateContext::new(settings)
    }

    #[test]
    fn renders_settings_and_builtins() {
        let t = Template::parse("{{settings.endpoint}}oauth2/token").unwrap();
        assert_eq!(t.render(&ctx()).unwrap(), "https://x.org/root/oauth2/token");

        let t = Template::parse("{{ settings.endpoint }}api/FHIR/R4/").unwrap();
        assert_eq!(t.render(&ctx()).unwrap(), "https://x.org/root/api/FHIR/R4/");

        let t = Template::parse("{{fhir_base}}|{{  redirect_uri\t}}").unwrap();
        let c = ctx()
            .with_fhir_base("https://f/")
            .with_redirect_uri("https://cb/");
        assert_eq!(t.render(&c).unwrap(), "https://f/|https://cb/");
    }

    #[test]
    fn literal_only_and_single_braces() {
        let t = Template::parse("openid fhirUser").unwrap();
        assert_eq!(t.variables().count(), 0);
        assert_eq!(t.render(&ctx()).unwrap(), "openid fhirUser");
        // Single braces are literal text (JSON-ish values, path-like strings).
        let t = Template::parse("{a}/{b}").unwrap();
        assert_eq!(t.render(&ctx()).unwrap(), "{a}/{b}");
        assert_eq!(Template::parse("").unwrap().render(&ctx()).unwrap(), "");
    }

    #[test]
    fn variables_in_order() {
        let t =
            Template::parse("{{settings.a}}x{{fhir_base}}{{settings.b}}{{settings.a}}").unwrap();
        let vars: Vec<String> = t.variables().map(|v| v.to_string()).collect();
        assert_eq!(
            vars,
            ["settings.a", "fhir_base", "settings.b", "settings.a"]
        );
        let keys: Vec<&str> = t.setting_keys().collect();
        assert_eq!(keys, ["a", "b", "a"]);
        assert!(t.has_literal_text());
        assert!(!Template::parse("{{settings.a}}")
            .unwrap()
            .has_literal_text());
        assert_eq!(
            t.source(),
            "{{settings.a}}x{{fhir_base}}{{settings.b}}{{settings.a}}"
        );
    }

    #[test]
    fn parse_errors() {
        assert_eq!(
            Template::parse("https://{{settings.x").unwrap_err(),
            TemplateError::Unclosed { offset: 8 }
        );
        assert_eq!(
            Template::parse("a{{settings.x {{settings.y}}").unwrap_err(),
            TemplateError::Unclosed { offset: 1 }
        );
        assert_eq!(
            Template::parse("ab}}").unwrap_err(),
            TemplateError::UnmatchedClose { offset: 2 }
        );
        assert_eq!(
            Template::parse("{{fhir_base}} }}").unwrap_err(),
            TemplateError::UnmatchedClose { offset: 14 }
        );
        assert_eq!(
            Template::parse("x{{  }}").unwrap_err(),
            TemplateError::EmptyVariable { offset: 1 }
        );
        for bad in [
            "{{foo}}",
            "{{settings}}",
            "{{settings.}}",
            "{{setting.x}}",
            "{{settings.a b}}",
            "{{settings.a.b}}",
            "{{FHIR_BASE}}",
        ] {
            assert!(
                matches!(
                    Template::parse(bad),
                    Err(TemplateError::UnknownVariable { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn missing_setting_names_the_key_never_a_value() {
        let t = Template::parse("{{settings.client_id}}:{{settings.client_secret}}").unwrap();
        let err = t.render(&ctx()).unwrap_err();
        assert_eq!(
            err,
            TemplateError::MissingSetting {
                key: "client_id".into()
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("client_id"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn unavailable_builtins() {
        let t = Template::parse("{{redirect_uri}}").unwrap();
        let err = t.render(&ctx()).unwrap_err();
        assert_eq!(err.to_string(), "`{{redirect_uri}}` is not available here");
        let t = Template::parse("{{fhir_base}}").unwrap();
        assert!(t.render(&ctx()).is_err());
    }

    #[test]
    fn error_messages_read_well() {
        assert_eq!(
            TemplateError::Unclosed { offset: 3 }.to_string(),
            "unclosed `{{` at offset 3"
        );
        assert_eq!(
            TemplateError::UnmatchedClose { offset: 3 }.to_string(),
            "`}}` at offset 3 closes nothing"
        );
        assert_eq!(
            TemplateError::UnknownVariable { name: "foo".into() }.to_string(),
            "unknown variable `foo` (expected `settings.KEY`, `fhir_base` or `redirect_uri`)"
        );
    }

    #[test]
    fn filters_trim_a_trailing_slash() {
        let t = Template::parse("{{ settings.endpoint | trim_end_slash }}").unwrap();
        assert_eq!(t.render(&ctx()).unwrap(), "https://x.org/root");
        let t = Template::parse("{{fhir_base|trim_end_slash}}/x").unwrap();
        assert_eq!(
            t.render(&ctx().with_fhir_base("https://f/R4//")).unwrap(),
            "https://f/R4/x"
        );
        // Without a trailing slash the value is unchanged; filters keep the variable list.
        let t = Template::parse("{{settings.client_secret | trim_end_slash}}").unwrap();
        assert_eq!(t.render(&ctx()).unwrap(), "s3cr3t-value");
        assert_eq!(t.setting_keys().collect::<Vec<_>>(), ["client_secret"]);
        assert_eq!(
            Template::parse("{{settings.endpoint | upper}}").unwrap_err(),
            TemplateError::UnknownFilter {
                name: "upper".into()
            }
        );
        assert!(matches!(
            Template::parse("{{ | trim_end_slash}}"),
            Err(TemplateError::EmptyVariable { .. })
        ));
    }

    #[test]
    fn render_str_parses_and_renders() {
        assert_eq!(
            render_str("{{settings.endpoint}}oauth2", &ctx()).unwrap(),
            "https://x.org/root/oauth2"
        );
    }
}
