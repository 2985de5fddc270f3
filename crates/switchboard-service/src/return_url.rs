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

/// Whether a tenant may hold the return-URL prefix `prefix`: it lies under one of the operator's
/// own prefixes (`security.allowed_return_urls`) or its origin is one the operator opened to
/// tenants (`security.tenant_return_url_origins`). Checked when a tenant saves its list and
/// again when a prefix is used, so narrowing the configuration takes effect at once.
pub(crate) fn tenant_prefix_allowed(prefix: &str, operator: &[String], origins: &[String]) -> bool {
    let Ok(url) = Url::parse(prefix) else {
        return false;
    };
    let origin = url.origin();
    if !origin.is_tuple() {
        return false;
    }
    origins
        .iter()
        .filter_map(|o| Url::parse(o).ok())
        .any(|o| o.origin() == origin)
        || operator.iter().any(|p| matches_prefix(prefix, p))
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
    use super::{matches_prefix, tenant_prefix_allowed};

    #[test]
    fn tenant_prefixes_stay_under_allowed_origins() {
        let operator = vec!["https://console.example/".to_owned()];
        let origins = vec!["https://partner.example".to_owned()];
        let ok = |p: &str| tenant_prefix_allowed(p, &operator, &origins);
        assert!(ok("https://partner.example/app/"));
        assert!(ok("https://partner.example:443/app"));
        assert!(ok("https://console.example/tenant-a/"));
        assert!(!ok("https://partner.example.evil.com/"));
        assert!(!ok("http://partner.example/app/"));
        assert!(!ok("https://partner.example:8443/app/"));
        assert!(!ok("https://console.examplex/"));
        assert!(!ok("https://evil.example/"));
        assert!(!tenant_prefix_allowed("https://partner.example/", &[], &[]));
    }

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
