//! Shared vocabulary of Switchboard: typed, prefixed ids, install status, THE table of error
//! codes (code -> HTTP status, title) and the RFC 9457 problem body every error is rendered as.

pub mod error;
pub mod ids;
pub mod status;

pub use error::{ErrorCode, Problem};
pub use ids::{
    random_token, valid_external_id, AccountId, ApiKeyId, ConnectorId, IdKind, InstallId,
    InvalidId, MethodId,
};
pub use status::InstallStatus;

/// Milliseconds since the Unix epoch: the one timestamp representation stored on both backends.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 rendering of an epoch-milliseconds timestamp, for API bodies.
pub fn ms_to_rfc3339(ms: i64) -> String {
    // Civil-from-days (Howard Hinnant), so core stays free of a date crate.
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_rendering() {
        assert_eq!(ms_to_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(ms_to_rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(ms_to_rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
