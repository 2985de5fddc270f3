//! `return_url` checks shared by tenants (their allowed prefixes) and installs (the URL a
//! person is sent back to). Depends on nothing else in the crate but the error type.

use crate::error::ServiceError;
use url::Url;

/// A `return_url` or allowed prefix must be an absolute http(s) URL without fragment.
pub(crate) fn validate_return_prefix(p: &str) -> Result<Url, ServiceError> {
    match Url::parse(p) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.fragment().is_none()
                && u.username().is_empty()
                && u.password().is_none()
                && p.len() <= 2048 =>
        {
            Ok(u)
        }
        _ => Err(ServiceError::InvalidReturnUrl(
            "return URLs must be absolute http(s) URLs without credentials or fragment".into(),
        )),
    }
}

/// `url` starts with `prefix` at a URL boundary (so `https://a.example` does not admit
/// `https://a.example.evil.com`).
pub(crate) fn matches_prefix(url: &str, prefix: &str) -> bool {
    match url.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => prefix.ends_with('/') || rest.starts_with(['/', '?']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::matches_prefix;

    #[test]
    fn return_url_prefixes_match_on_boundaries() {
        assert!(matches_prefix(
            "https://a.example/done",
            "https://a.example/"
        ));
        assert!(matches_prefix(
            "https://a.example/done",
            "https://a.example"
        ));
        assert!(matches_prefix("https://a.example?x=1", "https://a.example"));
        assert!(!matches_prefix(
            "https://a.example.evil.com/",
            "https://a.example"
        ));
        assert!(!matches_prefix("https://a.examplex/", "https://a.example"));
        assert!(matches_prefix(
            "https://a.example/app/x",
            "https://a.example/app"
        ));
        assert!(!matches_prefix(
            "https://a.example/appx",
            "https://a.example/app"
        ));
    }
}
