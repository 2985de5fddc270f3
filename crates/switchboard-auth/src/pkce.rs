//! PKCE (RFC 7636) and the `state` parameter: random values from the OS CSPRNG.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::TryRngCore as _;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// The only PKCE method Switchboard uses (Epic and SMART forbid `plain`).
pub const CODE_CHALLENGE_METHOD: &str = "S256";

/// Random bytes in a code verifier: 32 octets -> 43 base64url characters (RFC 7636 §4.1).
const VERIFIER_BYTES: usize = 32;
/// Random bytes in a `state`: 192 bits (SMART asks for >= 122) -> 32 characters. Kept short
/// because Epic customers' web servers choke on long query strings.
const STATE_BYTES: usize = 24;

/// A PKCE pair. The verifier is stored (encrypted) until the callback; the challenge goes into
/// the authorization URL with `code_challenge_method=S256`.
#[derive(Debug)]
pub struct Pkce {
    pub verifier: SecretString,
    pub challenge: String,
}

/// A fresh PKCE pair: 32 random octets, base64url without padding, challenge = S256.
pub fn new_pkce() -> Pkce {
    let verifier = random_base64url::<VERIFIER_BYTES>();
    let challenge = pkce_challenge(&verifier);
    Pkce {
        verifier: SecretString::from(verifier),
        challenge,
    }
}

/// `BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))` without padding (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A fresh, unguessable, compact `state`: 192 bits from the OS CSPRNG, base64url (32 chars).
pub fn new_state() -> String {
    random_base64url::<STATE_BYTES>()
}

/// What the database stores and looks up instead of the state itself: lower-case hex SHA-256.
pub fn hash_state(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

fn random_base64url<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    // Without OS randomness no secure value can be made; there is nothing sensible to fall back to.
    OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashSet;

    fn is_unreserved(s: &str) -> bool {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    }

    #[test]
    fn rfc7636_appendix_b_vector() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn new_pkce_is_well_formed_and_fresh() {
        let a = new_pkce();
        let v = a.verifier.expose_secret();
        assert_eq!(v.len(), 43);
        assert!(is_unreserved(v));
        assert_eq!(a.challenge, pkce_challenge(v));
        assert_eq!(a.challenge.len(), 43);
        assert!(!a.challenge.contains('='));
        let b = new_pkce();
        assert_ne!(v, b.verifier.expose_secret());
        assert!(
            !format!("{a:?}").contains(v),
            "Debug must not show the verifier"
        );
    }

    #[test]
    fn state_is_compact_and_unique() {
        let states: HashSet<String> = (0..1000).map(|_| new_state()).collect();
        assert_eq!(states.len(), 1000);
        for s in &states {
            assert_eq!(s.len(), 32);
            assert!(is_unreserved(s), "{s}");
        }
    }

    #[test]
    fn state_hash_is_hex_sha256() {
        assert_eq!(
            hash_state("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let s = new_state();
        assert_eq!(hash_state(&s), hash_state(&s));
        assert_eq!(hash_state(&s).len(), 64);
    }
}
