//! Setting normalisers: turn what people paste into the canonical form templates expect.

use crate::model::Normalizer;

/// The suffix Epic's endpoint directory appends to every organisation root (EHR-FACTS §1: 475 of
/// 479 production addresses contain it; some spell it `api/fhir/R4` or `api/fhir/r4`).
const EPIC_FHIR_SUFFIX: &str = "api/fhir/r4";

impl Normalizer {
    /// Normalise a raw setting value. Never fails: validation of the result is the setting
    /// type's job, so a normaliser only does what is unambiguous.
    pub fn apply(&self, raw: &str) -> String {
        match self {
            Self::Trim => raw.trim().to_owned(),
            Self::TrailingSlash => ensure_trailing_slash(raw.trim()),
            Self::EpicEndpoint => epic_endpoint(raw),
        }
    }
}

/// Adds a `/` unless the value is empty (an empty value must stay empty so that the "required"
/// check still sees it as missing) or already ends with one.
fn ensure_trailing_slash(value: &str) -> String {
    if value.is_empty() || value.ends_with('/') {
        value.to_owned()
    } else {
        format!("{value}/")
    }
}

/// Directory URL (`https://x.org/FHIRProxy/api/FHIR/R4/`) -> organisation root
/// (`https://x.org/FHIRProxy/`). The suffix is only stripped when it is whole path segments
/// (`/api/FHIR/R4`), so `https://x.org/myapi/FHIR/R4` is not mangled into `https://x.org/my`.
fn epic_endpoint(raw: &str) -> String {
    let trimmed = raw.trim();
    let without_slashes = trimmed.trim_end_matches('/');
    let lower = without_slashes.to_ascii_lowercase();
    let root = match lower.strip_suffix(EPIC_FHIR_SUFFIX) {
        // ASCII lowercasing keeps byte offsets, so the cut is valid in the original string too.
        Some(rest) if rest.ends_with('/') => &without_slashes[..rest.len()],
        _ => without_slashes,
    };
    if root.is_empty() {
        // Only slashes (or nothing) were given: keep it recognisably invalid / empty.
        return trimmed.to_owned();
    }
    ensure_trailing_slash(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epic(s: &str) -> String {
        Normalizer::EpicEndpoint.apply(s)
    }

    #[test]
    fn epic_strips_directory_suffix_in_any_case() {
        let cases = [
            (
                "https://x.org/FHIRProxy/api/FHIR/R4/",
                "https://x.org/FHIRProxy/",
            ),
            (
                "https://x.org/FHIRProxy/api/FHIR/R4",
                "https://x.org/FHIRProxy/",
            ),
            (
                "https://x.org/FHIRProxy/api/fhir/r4",
                "https://x.org/FHIRProxy/",
            ),
            (
                "https://x.org/FHIRProxy/api/fhir/R4/",
                "https://x.org/FHIRProxy/",
            ),
            (
                "https://x.org/FHIRProxy/API/Fhir/r4/",
                "https://x.org/FHIRProxy/",
            ),
            (
                "https://fhir.epic.com/interconnect-fhir-oauth/api/FHIR/R4/",
                "https://fhir.epic.com/interconnect-fhir-oauth/",
            ),
            ("https://x.org/api/FHIR/R4", "https://x.org/"),
            ("https://x.org/api/FHIR/R4//", "https://x.org/"),
        ];
        for (input, want) in cases {
            assert_eq!(epic(input), want, "input {input}");
        }
    }

    #[test]
    fn epic_adds_trailing_slash_and_trims() {
        assert_eq!(
            epic("https://fhir.epic.com/interconnect-fhir-oauth"),
            "https://fhir.epic.com/interconnect-fhir-oauth/"
        );
        assert_eq!(
            epic("  https://fhir.epic.com/interconnect-fhir-oauth/ \n"),
            "https://fhir.epic.com/interconnect-fhir-oauth/"
        );
        assert_eq!(
            epic("\thttps://x.org/FHIR/api/FHIR/R4/  "),
            "https://x.org/FHIR/"
        );
        assert_eq!(
            epic("https://x.org/interconnect-fhirprd/"),
            "https://x.org/interconnect-fhirprd/"
        );
    }

    #[test]
    fn epic_only_strips_whole_segments() {
        assert_eq!(
            epic("https://x.org/myapi/FHIR/R4"),
            "https://x.org/myapi/FHIR/R4/"
        );
        assert_eq!(
            epic("https://x.org/api/FHIR/R4x"),
            "https://x.org/api/FHIR/R4x/"
        );
        assert_eq!(
            epic("https://x.org/api/FHIR/DSTU2/"),
            "https://x.org/api/FHIR/DSTU2/"
        );
        // Only the final occurrence is the directory suffix.
        assert_eq!(
            epic("https://x.org/api/FHIR/R4/api/FHIR/R4/"),
            "https://x.org/api/FHIR/R4/"
        );
    }

    #[test]
    fn epic_keeps_empty_values_empty() {
        assert_eq!(epic(""), "");
        assert_eq!(epic("   "), "");
        assert_eq!(epic("api/FHIR/R4"), "api/FHIR/R4/");
    }

    #[test]
    fn epic_handles_non_ascii_without_panicking() {
        assert_eq!(epic("https://ü.example/api/FHIR/R4"), "https://ü.example/");
        assert_eq!(epic("https://x.org/é"), "https://x.org/é/");
    }

    #[test]
    fn trailing_slash_and_trim() {
        assert_eq!(
            Normalizer::TrailingSlash.apply(" https://a.canvasmedical.com "),
            "https://a.canvasmedical.com/"
        );
        assert_eq!(
            Normalizer::TrailingSlash.apply("https://a.canvasmedical.com/"),
            "https://a.canvasmedical.com/"
        );
        assert_eq!(Normalizer::TrailingSlash.apply("  "), "");
        assert_eq!(Normalizer::Trim.apply("  abc \n"), "abc");
    }
}
