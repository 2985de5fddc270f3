//! Method path templates: `Patient/{id}`, relative to the FHIR base. Kept apart from `{{...}}`
//! templates because path values come from API callers, not from settings, and must each be
//! encoded as exactly one path segment.

use std::fmt;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986 unreserved characters is encoded, so a value can never add a `/`,
/// `?`, `#` or `%` of its own.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Literal(String),
    /// A whole segment filled from the caller's parameter of that name.
    Param(String),
}

/// Why a method path is malformed (load time) or cannot be rendered (call time).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("must be relative to the FHIR base (no leading `/`, no scheme)")]
    NotRelative,
    #[error("must not contain `?` or `#` (query parameters are declared as params)")]
    QueryOrFragment,
    #[error("must not contain `{{{{...}}}}` templates")]
    Template,
    #[error("must not contain empty segments (`//` or a trailing `/`)")]
    EmptySegment,
    #[error("must not contain `.` or `..` segments")]
    DotSegment,
    #[error("segment `{segment}` is not a valid path segment")]
    InvalidLiteral { segment: String },
    #[error("placeholder in `{segment}` must be a whole segment named like `{{id}}`")]
    InvalidPlaceholder { segment: String },
    #[error("placeholder `{{{name}}}` appears more than once")]
    DuplicatePlaceholder { name: String },
    #[error("path parameter `{name}` has no value")]
    MissingParam { name: String },
    #[error("path parameter `{name}` must not be empty, `.` or `..`")]
    InvalidValue { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<PathSegment>,
}

impl PathTemplate {
    pub fn parse(source: &str) -> Result<Self, PathError> {
        if source.contains("{{") || source.contains("}}") {
            return Err(PathError::Template);
        }
        if source.starts_with('/') || source.contains("://") || source.starts_with('\\') {
            return Err(PathError::NotRelative);
        }
        if source.contains('?') || source.contains('#') {
            return Err(PathError::QueryOrFragment);
        }
        let mut segments = Vec::new();
        if source.is_empty() {
            // The FHIR base itself (e.g. a batch/transaction endpoint).
            return Ok(Self {
                source: String::new(),
                segments,
            });
        }
        for seg in source.split('/') {
            if seg.is_empty() {
                return Err(PathError::EmptySegment);
            }
            if seg == "." || seg == ".." {
                return Err(PathError::DotSegment);
            }
            if seg.contains('{') || seg.contains('}') {
                let name = seg
                    .strip_prefix('{')
                    .and_then(|s| s.strip_suffix('}'))
                    .filter(|n| is_param_name(n))
                    .ok_or_else(|| PathError::InvalidPlaceholder {
                        segment: seg.to_owned(),
                    })?;
                if segments
                    .iter()
                    .any(|s| matches!(s, PathSegment::Param(p) if p == name))
                {
                    return Err(PathError::DuplicatePlaceholder {
                        name: name.to_owned(),
                    });
                }
                segments.push(PathSegment::Param(name.to_owned()));
            } else if seg.chars().all(is_pchar) {
                segments.push(PathSegment::Literal(seg.to_owned()));
            } else {
                return Err(PathError::InvalidLiteral {
                    segment: seg.to_owned(),
                });
            }
        }
        Ok(Self {
            source: source.to_owned(),
            segments,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn segments(&self) -> &[PathSegment] {
        &self.segments
    }

    /// Names of the `{placeholders}`, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> + '_ {
        self.segments.iter().filter_map(|s| match s {
            PathSegment::Param(p) => Some(p.as_str()),
            PathSegment::Literal(_) => None,
        })
    }

    /// Render with each value (`value_of(placeholder)`) percent-encoded as one segment. The
    /// result is relative: join it to the FHIR base (which ends with `/`) by concatenation.
    pub fn render<'v>(
        &self,
        value_of: impl Fn(&str) -> Option<&'v str>,
    ) -> Result<String, PathError> {
        let mut out = String::with_capacity(self.source.len() + 32);
        for (i, seg) in self.segments.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            match seg {
                PathSegment::Literal(s) => out.push_str(s),
                PathSegment::Param(name) => {
                    let value = value_of(name)
                        .ok_or_else(|| PathError::MissingParam { name: name.clone() })?;
                    // `.`/`..` survive encoding (and `%2e` is decoded as a dot segment by URL
                    // parsers), so they would climb out of the FHIR base.
                    if value.is_empty() || value == "." || value == ".." {
                        return Err(PathError::InvalidValue { name: name.clone() });
                    }
                    out.extend(utf8_percent_encode(value, SEGMENT));
                }
            }
        }
        Ok(out)
    }
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn is_param_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// RFC 3986 `pchar` (plus `%` for pre-encoded literals), e.g. `$everything`, `_history`.
fn is_pchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@%".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    fn none(_: &str) -> Option<&'static str> {
        None
    }

    #[test]
    fn parses_and_renders() {
        let p = PathTemplate::parse("Patient/{id}").unwrap();
        assert_eq!(p.params().collect::<Vec<_>>(), ["id"]);
        assert_eq!(
            p.render(vals(&[("id", "abc-1.2")])).unwrap(),
            "Patient/abc-1.2"
        );
        assert_eq!(
            p.render(vals(&[("id", "a/b?c#d%e f")])).unwrap(),
            "Patient/a%2Fb%3Fc%23d%25e%20f"
        );
        let p = PathTemplate::parse("Patient/{id}/$everything").unwrap();
        assert_eq!(
            p.render(vals(&[("id", "1")])).unwrap(),
            "Patient/1/$everything"
        );
        let p = PathTemplate::parse("Patient").unwrap();
        assert_eq!(p.params().count(), 0);
        assert_eq!(p.render(none).unwrap(), "Patient");
        assert_eq!(PathTemplate::parse("").unwrap().render(none).unwrap(), "");
    }

    #[test]
    fn render_rejects_traversal_and_missing() {
        let p = PathTemplate::parse("Patient/{id}").unwrap();
        for bad in ["", ".", ".."] {
            assert_eq!(
                p.render(vals(&[("id", bad)])).unwrap_err(),
                PathError::InvalidValue { name: "id".into() }
            );
        }
        assert_eq!(
            p.render(none).unwrap_err(),
            PathError::MissingParam { name: "id".into() }
        );
        // Three dots is an ordinary (if odd) id.
        assert_eq!(p.render(vals(&[("id", "...")])).unwrap(), "Patient/...");
    }

    #[test]
    fn parse_errors() {
        use PathError::*;
        type Check = fn(&PathError) -> bool;
        let cases: [(&str, Check); 12] = [
            ("/Patient", |e| *e == NotRelative),
            ("https://x/Patient", |e| *e == NotRelative),
            ("Patient?x=1", |e| *e == QueryOrFragment),
            ("Patient#x", |e| *e == QueryOrFragment),
            ("{{settings.x}}/Patient", |e| *e == Template),
            ("Patient//x", |e| *e == EmptySegment),
            ("Patient/", |e| *e == EmptySegment),
            ("Patient/../x", |e| *e == DotSegment),
            ("Patient/a{id}", |e| matches!(e, InvalidPlaceholder { .. })),
            ("Patient/{id", |e| matches!(e, InvalidPlaceholder { .. })),
            ("Patient/{id}/{id}", |e| {
                matches!(e, DuplicatePlaceholder { .. })
            }),
            ("Pat ient", |e| matches!(e, InvalidLiteral { .. })),
        ];
        for (src, check) in cases {
            let err = PathTemplate::parse(src).unwrap_err();
            assert!(check(&err), "{src}: {err:?}");
        }
        assert!(PathTemplate::parse("Patient/{}").is_err());
    }
}
