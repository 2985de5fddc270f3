//! SMART Backend Services keys and client assertions (RFC 7523 `private_key_jwt`): generating
//! an RS384 (RSA 2048) or ES384 (P-384) key pair, importing a tenant's key (PEM or JWK,
//! validated), the public JWK a JWK Set publishes, and the signed assertion itself (built with
//! `jsonwebtoken`). Private keys leave this module only as PKCS#8 PEM in a `SecretString`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p384::elliptic_curve::sec1::ToEncodedPoint as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, RsaPrivateKey};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::fmt;

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Lifetime of an assertion. SMART and Epic allow at most 5 minutes; one minute less leaves
/// room for clock skew between Switchboard and the authorization server.
pub const ASSERTION_LIFETIME_SECS: i64 = 240;

/// Smallest RSA key accepted (generated keys have this size).
pub const MIN_RSA_BITS: usize = 2048;

/// The signature algorithms a setup may use (SMART Backend Services: RS384 and ES384).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SigningAlg {
    #[default]
    Rs384,
    Es384,
}

impl SigningAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs384 => "RS384",
            Self::Es384 => "ES384",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RS384" => Some(Self::Rs384),
            "ES384" => Some(Self::Es384),
            _ => None,
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            Self::Rs384 => Algorithm::RS384,
            Self::Es384 => Algorithm::ES384,
        }
    }
}

impl fmt::Display for SigningAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key cannot be used. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a private key in PEM (PKCS#8, PKCS#1 or SEC1) or JWK form")]
    Unreadable,
    #[error("a public key was given; upload the private key (only its public part is published)")]
    PublicOnly,
    #[error("unsupported key type: use an RSA key (RS384) or an EC P-384 key (ES384)")]
    WrongType,
    #[error("the key is a {found} key but the setup signs with {wanted}")]
    AlgMismatch {
        found: SigningAlg,
        wanted: SigningAlg,
    },
    #[error("the RSA key has {0} bits; at least {MIN_RSA_BITS} are required")]
    RsaTooSmall(usize),
    #[error("the key is inconsistent (its components do not form a valid key pair)")]
    Invalid,
    #[error("key generation failed")]
    Generation,
}

/// A private key ready to be stored (sealed) and published: the algorithm, the PKCS#8 PEM of
/// the private key, and the public JWK members (`kty` and `n`/`e` or `crv`/`x`/`y`).
pub struct KeyMaterial {
    pub alg: SigningAlg,
    pub private_pem: SecretString,
    pub public_jwk: Map<String, Value>,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("alg", &self.alg)
            .field("private_pem", &"[REDACTED]")
            .field("public_jwk", &self.public_jwk)
            .finish()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_material(key: RsaPrivateKey) -> Result<KeyMaterial, KeyError> {
    let bits = key.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(KeyError::RsaTooSmall(bits));
    }
    key.validate().map_err(|_| KeyError::Invalid)?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeyError::Invalid)?;
    let mut jwk = Map::new();
    jwk.insert("kty".into(), json!("RSA"));
    jwk.insert("n".into(), json!(b64(&key.n().to_bytes_be())));
    jwk.insert("e".into(), json!(b64(&key.e().to_bytes_be())));
    Ok(KeyMaterial {
        alg: SigningAlg::Rs384,
        private_pem: SecretString::from(pem.as_str().to_owned()),
        public_jwk: jwk,
    })
}

fn ec_material(key: p384::SecretKey) -> Result<KeyMaterial, KeyError> {
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeyError::Invalid)?;
    let point = key.public_key().to_encoded_point(false);
    let (Some(x), Some(y)) = (point.x(), point.y()) else {
        return Err(KeyError::Invalid);
    };
    let mut jwk = Map::new();
    jwk.insert("kty".into(), json!("EC"));
    jwk.insert("crv".into(), json!("P-384"));
    jwk.insert("x".into(), json!(b64(x)));
    jwk.insert("y".into(), json!(b64(y)));
    Ok(KeyMaterial {
        alg: SigningAlg::Es384,
        private_pem: SecretString::from(pem.as_str().to_owned()),
        public_jwk: jwk,
    })
}

/// A new key pair for `alg` from the OS RNG: RSA 2048 for RS384, P-384 for ES384.
pub fn generate(alg: SigningAlg) -> Result<KeyMaterial, KeyError> {
    let mut rng = rand_core::OsRng;
    match alg {
        SigningAlg::Rs384 => rsa_material(
            RsaPrivateKey::new(&mut rng, MIN_RSA_BITS).map_err(|_| KeyError::Generation)?,
        ),
        SigningAlg::Es384 => ec_material(p384::SecretKey::random(&mut rng)),
    }
}

/// Imports a tenant's private key: a PEM string (PKCS#8, PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC
/// PRIVATE KEY`) or a private JWK (a JSON object, or a string holding one). The algorithm
/// follows from the key (RSA: RS384, P-384: ES384); `wanted`, when given, must agree.
pub fn import(input: &Value, wanted: Option<SigningAlg>) -> Result<KeyMaterial, KeyError> {
    let material = match input {
        Value::Object(jwk) => import_jwk(jwk)?,
        Value::String(s) if s.trim_start().starts_with('{') => {
            match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(jwk)) => import_jwk(&jwk)?,
                _ => return Err(KeyError::Unreadable),
            }
        }
        Value::String(s) => import_pem(s.trim())?,
        _ => return Err(KeyError::Unreadable),
    };
    match wanted {
        Some(w) if w != material.alg => Err(KeyError::AlgMismatch {
            found: material.alg,
            wanted: w,
        }),
        _ => Ok(material),
    }
}

fn import_pem(pem: &str) -> Result<KeyMaterial, KeyError> {
    if pem.contains("PUBLIC KEY-----") || pem.contains("CERTIFICATE-----") {
        return Err(KeyError::PublicOnly);
    }
    if !pem.starts_with("-----BEGIN ") {
        return Err(KeyError::Unreadable);
    }
    if pem.starts_with("-----BEGIN RSA PRIVATE KEY-----") {
        return rsa_material(RsaPrivateKey::from_pkcs1_pem(pem).map_err(|_| KeyError::Invalid)?);
    }
    if pem.starts_with("-----BEGIN EC PRIVATE KEY-----") {
        return match p384::SecretKey::from_sec1_pem(pem) {
            Ok(k) => ec_material(k),
            // A SEC1 key on another curve (P-256...).
            Err(_) => Err(KeyError::WrongType),
        };
    }
    if pem.starts_with("-----BEGIN PRIVATE KEY-----") {
        if let Ok(k) = RsaPrivateKey::from_pkcs8_pem(pem) {
            return rsa_material(k);
        }
        if let Ok(k) = p384::SecretKey::from_pkcs8_pem(pem) {
            return ec_material(k);
        }
        // A well-formed PKCS#8 document of another algorithm (P-256, Ed25519...) or garbage.
        return match rsa::pkcs8::PrivateKeyInfo::try_from(
            pem_body(pem).as_deref().unwrap_or_default(),
        ) {
            Ok(_) => Err(KeyError::WrongType),
            Err(_) => Err(KeyError::Unreadable),
        };
    }
    Err(KeyError::Unreadable)
}

/// The DER inside a single PEM block.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

fn jwk_bytes(jwk: &Map<String, Value>, member: &str) -> Result<Vec<u8>, KeyError> {
    let s = jwk
        .get(member)
        .and_then(Value::as_str)
        .ok_or(KeyError::Unreadable)?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| KeyError::Unreadable)
}

fn import_jwk(jwk: &Map<String, Value>) -> Result<KeyMaterial, KeyError> {
    match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => {
            if !jwk.contains_key("d") {
                return Err(KeyError::PublicOnly);
            }
            let n = BigUint::from_bytes_be(&jwk_bytes(jwk, "n")?);
            let e = BigUint::from_bytes_be(&jwk_bytes(jwk, "e")?);
            let d = BigUint::from_bytes_be(&jwk_bytes(jwk, "d")?);
            let bits = n.bits();
            if bits < MIN_RSA_BITS {
                return Err(KeyError::RsaTooSmall(bits));
            }
            let mut primes = Vec::new();
            if jwk.contains_key("p") && jwk.contains_key("q") {
                primes.push(BigUint::from_bytes_be(&jwk_bytes(jwk, "p")?));
                primes.push(BigUint::from_bytes_be(&jwk_bytes(jwk, "q")?));
            }
            // Without p and q the primes are recovered from n, e and d.
            let key =
                RsaPrivateKey::from_components(n, e, d, primes).map_err(|_| KeyError::Invalid)?;
            rsa_material(key)
        }
        Some("EC") => {
            match jwk.get("crv").and_then(Value::as_str) {
                Some("P-384") => {}
                _ => return Err(KeyError::WrongType),
            }
            if !jwk.contains_key("d") {
                return Err(KeyError::PublicOnly);
            }
            let text = Value::Object(jwk.clone()).to_string();
            let key = p384::SecretKey::from_jwk_str(&text).map_err(|_| KeyError::Invalid)?;
            // The public part, when given, must belong to the private scalar.
            let derived = ec_material(key)?;
            for m in ["x", "y"] {
                if jwk
                    .get(m)
                    .is_some_and(|v| Some(v) != derived.public_jwk.get(m))
                {
                    return Err(KeyError::Invalid);
                }
            }
            Ok(derived)
        }
        Some(_) => Err(KeyError::WrongType),
        None => Err(KeyError::Unreadable),
    }
}

/// The JWK a JWK Set publishes for a key: the public members plus `kid`, `alg` and `use=sig`.
pub fn published_jwk(public_jwk: &Map<String, Value>, kid: &str, alg: SigningAlg) -> Value {
    let mut jwk = public_jwk.clone();
    jwk.insert("kid".into(), json!(kid));
    jwk.insert("alg".into(), json!(alg.as_str()));
    jwk.insert("use".into(), json!("sig"));
    Value::Object(jwk)
}

/// A loaded signing key: what an assertion needs. `Debug` shows only the algorithm and kid.
pub struct AssertionKey {
    alg: SigningAlg,
    kid: String,
    key: EncodingKey,
}

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl AssertionKey {
    /// Loads a PKCS#8 PEM produced by [`generate`] or [`import`].
    pub fn from_pem(alg: SigningAlg, kid: &str, pem: &SecretString) -> Result<Self, KeyError> {
        let bytes = pem.expose_secret().as_bytes();
        let key = match alg {
            SigningAlg::Rs384 => EncodingKey::from_rsa_pem(bytes),
            SigningAlg::Es384 => EncodingKey::from_ec_pem(bytes),
        }
        .map_err(|_| KeyError::Invalid)?;
        Ok(Self {
            alg,
            kid: kid.to_owned(),
            key,
        })
    }

    pub fn alg(&self) -> SigningAlg {
        self.alg
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: i64,
    nbf: i64,
    exp: i64,
}

/// A client assertion for `client_id` at `audience` (the token URL): header `alg`, `typ=JWT`,
/// `kid` and, when given, `jku`; claims `iss` = `sub` = client id, `aud`, a random 128-bit hex
/// `jti`, `iat` = `nbf` = `now_secs`, `exp` = `now_secs` + [`ASSERTION_LIFETIME_SECS`].
pub fn sign_assertion(
    key: &AssertionKey,
    client_id: &str,
    audience: &str,
    jku: Option<&str>,
    now_secs: i64,
) -> Result<SecretString, crate::AuthError> {
    let mut header = Header::new(key.alg.jwt());
    header.kid = Some(key.kid.clone());
    header.jku = jku.map(str::to_owned);
    let claims = Claims {
        iss: client_id,
        sub: client_id,
        aud: audience,
        jti: hex::encode(rand::random::<[u8; 16]>()),
        iat: now_secs,
        nbf: now_secs,
        exp: now_secs + ASSERTION_LIFETIME_SECS,
    };
    jsonwebtoken::encode(&header, &claims, &key.key)
        .map(SecretString::from)
        .map_err(|_| {
            crate::AuthError::Misconfigured("the client assertion could not be signed".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    fn decoding_key(jwk: &Value) -> DecodingKey {
        match jwk["kty"].as_str() {
            Some("RSA") => DecodingKey::from_rsa_components(
                jwk["n"].as_str().unwrap(),
                jwk["e"].as_str().unwrap(),
            )
            .unwrap(),
            _ => DecodingKey::from_ec_components(
                jwk["x"].as_str().unwrap(),
                jwk["y"].as_str().unwrap(),
            )
            .unwrap(),
        }
    }

    fn verify(alg: SigningAlg, material: &KeyMaterial) {
        let key = AssertionKey::from_pem(alg, "kid-1", &material.private_pem).unwrap();
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let jwt = sign_assertion(
            &key,
            "client-1",
            "https://as.example/token",
            Some("https://sb.example/jwks/x.json"),
            now,
        )
        .unwrap();
        let jwk = published_jwk(&material.public_jwk, "kid-1", alg);
        let mut v = Validation::new(alg.jwt());
        v.set_audience(&["https://as.example/token"]);
        v.set_issuer(&["client-1"]);
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let data =
            jsonwebtoken::decode::<Value>(jwt.expose_secret(), &decoding_key(&jwk), &v).unwrap();
        assert_eq!(data.header.kid.as_deref(), Some("kid-1"));
        assert_eq!(
            data.header.jku.as_deref(),
            Some("https://sb.example/jwks/x.json")
        );
        assert_eq!(data.claims["sub"], "client-1");
        assert_eq!(
            data.claims["exp"].as_i64().unwrap() - now,
            ASSERTION_LIFETIME_SECS
        );
        assert_eq!(data.claims["jti"].as_str().unwrap().len(), 32);
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], alg.as_str());
        assert!(jwk.get("d").is_none());
    }

    #[test]
    fn generated_keys_sign_verifiable_assertions() {
        for alg in [SigningAlg::Rs384, SigningAlg::Es384] {
            let m = generate(alg).unwrap();
            assert_eq!(m.alg, alg);
            verify(alg, &m);
            // The PEM re-imports to the same public key.
            let again = import(&json!(m.private_pem.expose_secret()), Some(alg)).unwrap();
            assert_eq!(again.public_jwk, m.public_jwk);
            assert!(!format!("{m:?}").contains("PRIVATE"));
        }
    }

    #[test]
    fn jwk_import_round_trips_and_bad_keys_are_refused() {
        let ec = generate(SigningAlg::Es384).unwrap();
        let secret = p384::SecretKey::from_pkcs8_pem(ec.private_pem.expose_secret()).unwrap();
        let jwk: Value = serde_json::from_str(&secret.to_jwk_string()).unwrap();
        let imported = import(&jwk, None).unwrap();
        assert_eq!(imported.public_jwk, ec.public_jwk);
        let mut public = jwk.clone();
        public.as_object_mut().unwrap().remove("d");
        assert_eq!(import(&public, None).unwrap_err(), KeyError::PublicOnly);
        assert_eq!(
            import(&jwk, Some(SigningAlg::Rs384)).unwrap_err(),
            KeyError::AlgMismatch {
                found: SigningAlg::Es384,
                wanted: SigningAlg::Rs384
            }
        );
        let p256 = json!({"kty":"EC","crv":"P-256","x":"a","y":"b","d":"c"});
        assert_eq!(import(&p256, None).unwrap_err(), KeyError::WrongType);
        assert_eq!(
            import(&json!({"kty":"oct","k":"AAAA"}), None).unwrap_err(),
            KeyError::WrongType
        );
        assert_eq!(
            import(&json!("not a key"), None).unwrap_err(),
            KeyError::Unreadable
        );
        assert_eq!(
            import(
                &json!("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"),
                None
            )
            .unwrap_err(),
            KeyError::PublicOnly
        );
        let small = RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap();
        let pem = small.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert_eq!(
            import(&json!(pem.as_str()), None).unwrap_err(),
            KeyError::RsaTooSmall(1024)
        );
    }
}
