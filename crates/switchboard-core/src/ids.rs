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
    /// A webhook endpoint.
    Webhook,
    /// A webhook event (the Standard Webhooks `webhook-id`).
    Message,
    /// An agent session (`/mcp` access to one install).
    AgentSession,
    /// A connect session (the hosted connect page's link).
    ConnectSession,
    /// A Bulk Data export job.
    Job,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Tenant => "ten",
            Self::ApiKey => "key",
            Self::Account => "acc",
            Self::Install => "ins",
            Self::Webhook => "whk",
            Self::Message => "msg",
            Self::AgentSession => "ags",
            Self::ConnectSession => "cns",
            Self::Job => "job",
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

/// A unique id that sorts by creation time: `<prefix>_`, `now_ms` as 12 lowercase hex digits,
/// then 80 random bits (14 base64url chars) from the thread's CSPRNG (no system call per id).
/// Only for records whose creation time is shown anyway (an audit record's `at`): an index on
/// such an id grows at its end, where an insert touches the pages the last one touched, instead
/// of at a random place. Other ids stay fully random ([`IdKind::generate`]).
pub fn time_ordered_id(prefix: &str, now_ms: i64) -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    use std::fmt::Write as _;
    let mut random = [0u8; 10];
    rand::rng().fill_bytes(&mut random);
    let mut id = String::with_capacity(prefix.len() + 1 + 12 + 14);
    id.push_str(prefix);
    id.push('_');
    // 48 bits of milliseconds last until the year 10889; the width keeps the order textual.
    let ms = u64::try_from(now_ms).unwrap_or(0) & 0xffff_ffff_ffff;
    let _ = write!(id, "{ms:012x}");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(random, &mut id);
    id
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

/// The rule of [`valid_external_id`] as a regular expression, for the OpenAPI document.
pub const EXTERNAL_ID_PATTERN: &str = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$";

/// A string that is not a valid external id. Its message never repeats the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ids are 1 to 64 characters of A-Z a-z 0-9 _ . - and do not start with '.'")]
pub struct InvalidId;

macro_rules! external_ids {
    ($( $(#[$doc:meta])* $name:ident = $example:literal ),+ $(,)?) => { $(
        $(#[$doc])*
        ///
        /// Only [`parse`](Self::parse) (and serde, through it) builds one, so holding it means the
        /// string follows [`valid_external_id`]; it dereferences to `str`.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(
            value_type = String,
            pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$",
            example = $example
        )]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                if valid_external_id(&s) {
                    Ok(Self(s))
                } else {
                    Err(InvalidId)
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.0, f)
            }
        }
    )+ };
}

external_ids! {
    /// An account id: chosen by the tenant or generated (`acc_…`).
    AccountId = "acme-clinic",
    /// An install id (`ins_…`).
    InstallId = "ins_2dJ8bXv0QyWmN4tR7kLp1A",
    /// An API key id (`key_…`), never the key itself.
    ApiKeyId = "key_Q3v9Zr1mT8yXk2LwB6nPcA",
    /// A connector id from the catalogue (`canvas`, `epic`, …).
    ConnectorId = "canvas",
    /// A method id of a connector (`get_patient`, …).
    MethodId = "get_patient",
    /// A webhook endpoint id (`whk_…`).
    WebhookId = "whk_Hc2mX0bQ9vYtR4kLw1NpZA",
    /// A webhook event id (`msg_…`), the `webhook-id` of its deliveries.
    EventId = "msg_Vt6qP1nW8sKc3JxR0mYbLA",
    /// An agent session id (`ags_…`), never its token.
    AgentSessionId = "ags_Rk4nT7wQ2xPzL9mC1vYbHA",
    /// A connect session id (`cns_…`), never its link token.
    ConnectSessionId = "cns_R8kW2mQx5vNb7TzL0pYcHA",
    /// A Bulk Data export job id (`job_…`).
    JobId = "job_Xc4nR8vT2qLmZ7wK0bPyHA",
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
    fn time_ordered_ids_sort_by_time_and_stay_unique() {
        let a = time_ordered_id("aud", 1_800_000_000_000);
        let b = time_ordered_id("aud", 1_800_000_000_000);
        let later = time_ordered_id("aud", 1_800_000_000_001);
        assert_eq!(&a[..16], "aud_01a3185c5000", "{a}");
        assert_eq!(a.len(), 4 + 12 + 14);
        assert_ne!(a, b, "same millisecond, different random part");
        assert!(a < later && b < later, "{a} {b} {later}");
        // Textual order is time order across digit counts (fixed width) and years.
        assert!(time_ordered_id("aud", 0xf_ffff_ffff) < time_ordered_id("aud", 0x10_0000_0000));
        assert!(valid_external_id(&a));
    }

    #[test]
    fn typed_ids_are_built_only_from_valid_strings() {
        assert_eq!(
            AccountId::parse("acme-clinic").unwrap().as_str(),
            "acme-clinic"
        );
        for bad in ["", ".x", "a b", "a/b", "é"] {
            assert_eq!(InstallId::parse(bad), Err(InvalidId), "{bad:?}");
        }
        assert!(MethodId::parse("x".repeat(65)).is_err());
        let id: ConnectorId = serde_json::from_str("\"canvas\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"canvas\"");
        let err = serde_json::from_str::<ApiKeyId>("\"s3cret value\"").unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn the_pattern_is_the_rule() {
        // The OpenAPI pattern and valid_external_id agree on the edge cases.
        let re = |s: &str| {
            let b = s.as_bytes();
            !b.is_empty()
                && b.len() <= 64
                && (b[0].is_ascii_alphanumeric() || matches!(b[0], b'_' | b'-'))
                && b[1..]
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
        };
        for s in [
            "a",
            "-a",
            "_",
            "a.b",
            ".a",
            "",
            "a b",
            &"x".repeat(64),
            &"x".repeat(65),
        ] {
            assert_eq!(re(s), valid_external_id(s), "{s:?}");
        }
        assert_eq!(EXTERNAL_ID_PATTERN, "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$");
        let schema = serde_json::to_value(<AccountId as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(schema["pattern"], EXTERNAL_ID_PATTERN);
        assert_eq!(schema["type"], "string");
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
