use base64::Engine;
use rand::TryRngCore;

/// The kinds of generated ids. Each is `<prefix>_<22 base62-ish chars>`: 128 bits from the OS
/// CSPRNG, so ids can be handed out without revealing counts or creation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Tenant,
    ApiKey,
    Account,
    Install,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Tenant => "ten",
            Self::ApiKey => "key",
            Self::Account => "acc",
            Self::Install => "ins",
        }
    }

    pub fn generate(self) -> String {
        format!("{}_{}", self.prefix(), random_token(16))
    }
}

/// `n` random bytes from the OS CSPRNG, base64url without padding.
pub fn random_token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .expect("the OS random number generator failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Ids that come from outside (URL path segments, account ids chosen by a tenant): 1..=64 chars
/// of `[A-Za-z0-9_.-]`, not starting with a dot. Anything else is rejected before any lookup.
pub fn valid_external_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_prefixed_unique_and_valid() {
        let a = IdKind::Install.generate();
        let b = IdKind::Install.generate();
        assert!(a.starts_with("ins_"));
        assert_ne!(a, b);
        assert!(valid_external_id(&a));
        assert_eq!(a.len(), 4 + 22);
    }

    #[test]
    fn external_ids_are_restricted() {
        assert!(valid_external_id("acme-clinic"));
        assert!(!valid_external_id(""));
        assert!(!valid_external_id("../etc"));
        assert!(!valid_external_id("a/b"));
        assert!(!valid_external_id("a b"));
        assert!(!valid_external_id(&"x".repeat(65)));
        assert!(!valid_external_id("é"));
    }
}
