//! AES-256-GCM key ring for secrets at rest: a key file (JSON, mode 0600), a versioned
//! ciphertext format that names its key, AAD binding every ciphertext to where it is stored, and
//! key rotation that keeps old keys readable until everything has been re-encrypted.
//!
//! Ciphertext format (all integers are single bytes):
//!
//! ```text
//! [version = 1][kid_len][kid bytes][12-byte random nonce][ciphertext || 16-byte tag]
//! ```
//!
//! The GCM associated data is the header (`version`, `kid_len`, `kid`) followed by the caller's
//! AAD, so neither the key id nor the location the value belongs to can be swapped unnoticed.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use zeroize::{Zeroize, Zeroizing};

/// The only ciphertext format version written (and read) today.
pub const FORMAT_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const MAX_KID_LEN: usize = 64;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Errors of the key ring. None of them ever carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {} is invalid: {reason}", path.display())]
    InvalidKeyFile { path: PathBuf, reason: String },
    #[error("ciphertext names key {0:?}, which is not in the key ring")]
    UnknownKey(String),
    #[error("ciphertext is malformed or of an unknown version")]
    Malformed,
    #[error("decryption failed: wrong key, wrong AAD or tampered ciphertext")]
    Decrypt,
    #[error("decrypted value is not UTF-8")]
    NotUtf8,
    #[error("ciphertext is not valid base64")]
    Base64,
}

struct Key {
    raw: Zeroizing<[u8; KEY_LEN]>,
    // Round keys are zeroized on drop by the `zeroize` features of `aes` and `aes-gcm`.
    cipher: Aes256Gcm,
}

impl Key {
    fn from_raw(raw: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let cipher = Aes256Gcm::new_from_slice(raw.as_slice()).expect("a 32-byte key");
        Self { raw, cipher }
    }

    fn generate() -> Self {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(raw.as_mut_slice());
        Self::from_raw(raw)
    }
}

/// A set of AES-256-GCM keys by key id, one of which (the primary) encrypts new values.
///
/// The keys sit behind a lock so a running server can swap in a reloaded ring
/// ([`KeyRing::replace`]) while every service keeps its `Arc<KeyRing>`: each encryption or
/// decryption works on one consistent snapshot (primary and keys together).
pub struct KeyRing {
    state: RwLock<Arc<Ring>>,
}

struct Ring {
    primary: String,
    keys: BTreeMap<String, Key>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ring = self.snapshot();
        f.debug_struct("KeyRing")
            .field("primary", &ring.primary)
            .field("kids", &ring.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[derive(serde::Deserialize)]
struct KeyFileIn {
    primary: String,
    keys: BTreeMap<String, String>,
}

#[derive(serde::Serialize)]
struct KeyFileOut<'a> {
    primary: &'a str,
    keys: BTreeMap<&'a str, &'a str>,
}

impl KeyRing {
    /// An in-memory ring with one fresh key (`k1`); for tests and tools that never persist.
    pub fn generate() -> KeyRing {
        let mut keys = BTreeMap::new();
        keys.insert("k1".to_owned(), Key::generate());
        KeyRing::from_ring(Ring {
            primary: "k1".to_owned(),
            keys,
        })
    }

    fn from_ring(ring: Ring) -> KeyRing {
        KeyRing {
            state: RwLock::new(Arc::new(ring)),
        }
    }

    fn snapshot(&self) -> Arc<Ring> {
        // A poisoned lock still holds a whole ring (the swap is one assignment).
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in the keys of `other` (a reloaded key file): every holder of this ring encrypts
    /// and decrypts with them from now on. Values in flight finish on the ring they started with.
    pub fn replace(&self, other: KeyRing) {
        let next = other.snapshot();
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    /// True when both rings hold the same key ids with the same keys and the same primary.
    pub fn same_keys(&self, other: &KeyRing) -> bool {
        let (a, b) = (self.snapshot(), other.snapshot());
        a.primary == b.primary
            && a.keys.len() == b.keys.len()
            && a.keys
                .iter()
                .zip(b.keys.iter())
                .all(|((ka, va), (kb, vb))| ka == kb && va.raw.as_slice() == vb.raw.as_slice())
    }

    /// Parses a key ring document (the key file's JSON) held in memory, e.g. the value of
    /// `SWITCHBOARD__SECRETS__KEY`; `source` names it in errors.
    pub fn from_json(bytes: &[u8], source: &Path) -> Result<KeyRing, CryptoError> {
        parse_ring(bytes, source)
    }

    /// A copy of this ring with one more, fresh key that is NOT primary (the first step of a
    /// rotation: replicas learn to decrypt it before anything is encrypted under it).
    pub fn with_new_key(&self) -> (KeyRing, String) {
        let ring = self.snapshot();
        let kid = next_kid(&ring.keys);
        let mut keys = copy_keys(&ring.keys);
        keys.insert(kid.clone(), Key::generate());
        (
            KeyRing::from_ring(Ring {
                primary: ring.primary.clone(),
                keys,
            }),
            kid,
        )
    }

    /// A copy of this ring with `kid` (which must be in it) as the primary key.
    pub fn with_primary(&self, kid: &str) -> Result<KeyRing, CryptoError> {
        let ring = self.snapshot();
        if !ring.keys.contains_key(kid) {
            return Err(CryptoError::UnknownKey(kid.to_owned()));
        }
        Ok(KeyRing::from_ring(Ring {
            primary: kid.to_owned(),
            keys: copy_keys(&ring.keys),
        }))
    }

    /// A copy of this ring without the keys `retired` (never the primary).
    pub fn without(&self, retired: &[String]) -> KeyRing {
        let ring = self.snapshot();
        let mut keys = copy_keys(&ring.keys);
        for kid in retired.iter().filter(|k| **k != ring.primary) {
            keys.remove(kid);
        }
        KeyRing::from_ring(Ring {
            primary: ring.primary.clone(),
            keys,
        })
    }

    /// True when `kid` is in the ring.
    pub fn contains(&self, kid: &str) -> bool {
        self.snapshot().keys.contains_key(kid)
    }

    /// Replaces the key file at `path` atomically (0600, temporary file + rename).
    pub fn save(&self, path: &Path) -> Result<(), CryptoError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|source| io_err(parent, source))?;
        }
        self.publish(path, Publish::Replace)
    }

    /// The key ring document (what the key file holds), for an operator who deploys the ring
    /// through `SWITCHBOARD__SECRETS__KEY`. It contains key material: print it only where the
    /// operator asked for it.
    pub fn to_document(&self) -> Zeroizing<String> {
        let json = self.to_json();
        Zeroizing::new(String::from_utf8_lossy(&json).into_owned())
    }

    /// Loads the key file at `path`, or creates it (parent directories included) with one fresh
    /// key when it does not exist. A new file is written 0600 via a temporary file and published
    /// with a hard link, so two processes starting at once end up with the same key.
    pub fn load_or_create(path: &Path) -> Result<KeyRing, CryptoError> {
        match Self::load(path) {
            Ok(ring) => return Ok(ring),
            Err(CryptoError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|source| io_err(parent, source))?;
        }
        let ring = Self::generate();
        match ring.publish(path, Publish::CreateNew) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created a new encryption key file");
                Ok(ring)
            }
            // Somebody else created it between our load and our link: theirs wins.
            Err(CryptoError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Self::load(path)
            }
            Err(e) => Err(e),
        }
    }

    /// Loads an existing key file. Warns (does not refuse) when group or others may read it.
    pub fn load(path: &Path) -> Result<KeyRing, CryptoError> {
        let bytes = Zeroizing::new(fs::read(path).map_err(|source| io_err(path, source))?);
        warn_if_too_open(path);
        parse_ring(&bytes, path)
    }

    /// Adds a fresh key as the new primary to the key file at `path` (created when absent),
    /// keeping every old key so existing ciphertexts stay readable until they are re-encrypted,
    /// and replaces the file atomically. Returns the new ring and the new key id.
    ///
    /// Run one rotation at a time: two concurrent rotations of the same file would each add a
    /// different key and the last writer would win.
    pub fn rotate(path: &Path) -> Result<(KeyRing, String), CryptoError> {
        let (added, kid) = Self::load_or_create(path)?.with_new_key();
        let ring = added.with_primary(&kid)?;
        ring.publish(path, Publish::Replace)?;
        tracing::info!(path = %path.display(), kid = %kid, "rotated the encryption key");
        Ok((ring, kid))
    }

    /// The key id new values are encrypted with.
    pub fn primary_kid(&self) -> String {
        self.snapshot().primary.clone()
    }

    /// Every key id in the ring, sorted.
    pub fn kids(&self) -> impl Iterator<Item = String> {
        self.snapshot()
            .keys
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// Encrypts `plaintext` under the primary key, bound to `aad` (e.g.
    /// `install:{id}:access_token`): decrypting with any other AAD fails.
    pub fn encrypt(&self, plaintext: &[u8], aad: impl AsRef<[u8]>) -> Vec<u8> {
        let ring = self.snapshot();
        let key = &ring.keys[&ring.primary];
        let kid = ring.primary.as_bytes();
        let mut out = Vec::with_capacity(2 + kid.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(FORMAT_VERSION);
        out.push(kid.len() as u8);
        out.extend_from_slice(kid);
        let header_len = out.len();
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let full_aad = [&out[..header_len], aad.as_ref()].concat();
        let sealed = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &full_aad,
                },
            )
            .expect("AES-GCM encryption only fails for inputs larger than 64 GiB");
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a value produced by [`KeyRing::encrypt`] with whichever key it names.
    pub fn decrypt(&self, blob: &[u8], aad: impl AsRef<[u8]>) -> Result<Vec<u8>, CryptoError> {
        let parsed = Parsed::new(blob).ok_or(CryptoError::Malformed)?;
        let ring = self.snapshot();
        let key = ring
            .keys
            .get(parsed.kid)
            .ok_or_else(|| CryptoError::UnknownKey(parsed.kid.to_owned()))?;
        let full_aad = [parsed.header, aad.as_ref()].concat();
        key.cipher
            .decrypt(
                Nonce::from_slice(parsed.nonce),
                Payload {
                    msg: parsed.sealed,
                    aad: &full_aad,
                },
            )
            .map_err(|_| CryptoError::Decrypt)
    }

    /// [`KeyRing::encrypt`] for text.
    pub fn encrypt_str(&self, plaintext: &str, aad: impl AsRef<[u8]>) -> Vec<u8> {
        self.encrypt(plaintext.as_bytes(), aad)
    }

    /// [`KeyRing::decrypt`] for text.
    pub fn decrypt_str(&self, blob: &[u8], aad: impl AsRef<[u8]>) -> Result<String, CryptoError> {
        let bytes = self.decrypt(blob, aad)?;
        String::from_utf8(bytes).map_err(|e| {
            drop(Zeroizing::new(e.into_bytes()));
            CryptoError::NotUtf8
        })
    }

    /// Encrypts text and returns standard base64 (with padding), for embedding in JSON
    /// (`{"enc":"<base64>"}`).
    pub fn encrypt_to_base64(&self, plaintext: &str, aad: impl AsRef<[u8]>) -> String {
        B64.encode(self.encrypt_str(plaintext, aad))
    }

    /// Inverse of [`KeyRing::encrypt_to_base64`].
    pub fn decrypt_from_base64(
        &self,
        encoded: &str,
        aad: impl AsRef<[u8]>,
    ) -> Result<String, CryptoError> {
        let blob = B64.decode(encoded).map_err(|_| CryptoError::Base64)?;
        self.decrypt_str(&blob, aad)
    }

    /// Decrypts `blob` and encrypts it again under the primary key, same AAD (key rotation).
    pub fn reencrypt(&self, blob: &[u8], aad: impl AsRef<[u8]>) -> Result<Vec<u8>, CryptoError> {
        let plaintext = Zeroizing::new(self.decrypt(blob, aad.as_ref())?);
        Ok(self.encrypt(&plaintext, aad))
    }

    /// [`KeyRing::reencrypt`] for a base64 value.
    pub fn reencrypt_base64(
        &self,
        encoded: &str,
        aad: impl AsRef<[u8]>,
    ) -> Result<String, CryptoError> {
        let blob = B64.decode(encoded).map_err(|_| CryptoError::Base64)?;
        Ok(B64.encode(self.reencrypt(&blob, aad)?))
    }

    /// True when `blob` was not encrypted with the primary key (or cannot be parsed): it should
    /// be decrypted and encrypted again after a rotation.
    pub fn needs_reencrypt(&self, blob: &[u8]) -> bool {
        blob_kid(blob) != Some(self.snapshot().primary.as_str())
    }

    /// [`KeyRing::needs_reencrypt`] for a base64 value.
    pub fn needs_reencrypt_base64(&self, encoded: &str) -> bool {
        match B64.decode(encoded) {
            Ok(blob) => self.needs_reencrypt(&blob),
            Err(_) => true,
        }
    }

    fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let ring = self.snapshot();
        let encoded: BTreeMap<&str, Zeroizing<String>> = ring
            .keys
            .iter()
            .map(|(kid, key)| (kid.as_str(), Zeroizing::new(B64.encode(key.raw.as_slice()))))
            .collect();
        let file = KeyFileOut {
            primary: &ring.primary,
            keys: encoded
                .iter()
                .map(|(kid, b64)| (*kid, b64.as_str()))
                .collect(),
        };
        // Pre-sized so the buffer is never reallocated (which would leave copies behind).
        let mut buf = Zeroizing::new(Vec::with_capacity(256 + encoded.len() * (MAX_KID_LEN + 64)));
        serde_json::to_writer_pretty(&mut *buf, &file).expect("serializing to memory");
        buf.push(b'\n');
        buf
    }

    fn publish(&self, path: &Path, how: Publish) -> Result<(), CryptoError> {
        let json = self.to_json();
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "keyring".to_owned());
        let tmp = dir.join(format!(
            ".{name}.tmp-{}-{:016x}",
            std::process::id(),
            OsRng.next_u64()
        ));
        let result = write_private(&tmp, &json).and_then(|()| match how {
            Publish::CreateNew => link_new(&tmp, path),
            Publish::Replace => fs::rename(&tmp, path).map_err(|source| io_err(path, source)),
        });
        let _ = fs::remove_file(&tmp);
        result?;
        // Make the directory entry durable too.
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

// Shared by every request handler.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<KeyRing>();
};

#[derive(Clone, Copy)]
enum Publish {
    CreateNew,
    Replace,
}

struct Parsed<'a> {
    header: &'a [u8],
    kid: &'a str,
    nonce: &'a [u8],
    sealed: &'a [u8],
}

impl<'a> Parsed<'a> {
    fn new(blob: &'a [u8]) -> Option<Self> {
        let (&version, rest) = blob.split_first()?;
        let (&kid_len, rest) = rest.split_first()?;
        let kid_len = kid_len as usize;
        if version != FORMAT_VERSION || kid_len == 0 || rest.len() < kid_len + NONCE_LEN + TAG_LEN {
            return None;
        }
        let kid = std::str::from_utf8(&rest[..kid_len]).ok()?;
        let (nonce, sealed) = rest[kid_len..].split_at(NONCE_LEN);
        Some(Parsed {
            header: &blob[..2 + kid_len],
            kid,
            nonce,
            sealed,
        })
    }
}

fn parse_ring(bytes: &[u8], path: &Path) -> Result<KeyRing, CryptoError> {
    let invalid = |reason: String| CryptoError::InvalidKeyFile {
        path: path.to_owned(),
        reason,
    };
    // serde_json's messages can quote the input: report only the category and position.
    let mut file: KeyFileIn = serde_json::from_slice(bytes).map_err(|e| {
        invalid(format!(
            "not a key ring JSON document ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    let mut keys = BTreeMap::new();
    let mut failure = None;
    for (kid, encoded) in file.keys.iter_mut() {
        if failure.is_none() {
            if !valid_kid(kid) {
                failure = Some(format!(
                    "key id {kid:?} must be 1..={MAX_KID_LEN} characters of [A-Za-z0-9_-]"
                ));
            } else {
                match decode_key(encoded) {
                    Some(raw) => {
                        keys.insert(kid.clone(), Key::from_raw(raw));
                    }
                    None => {
                        failure = Some(format!(
                            "key {kid:?} is not base64 of exactly {KEY_LEN} bytes"
                        ))
                    }
                }
            }
        }
        encoded.zeroize();
    }
    if let Some(reason) = failure {
        return Err(invalid(reason));
    }
    if !keys.contains_key(&file.primary) {
        return Err(invalid(format!(
            "primary key id {:?} is not among the keys",
            file.primary
        )));
    }
    Ok(KeyRing::from_ring(Ring {
        primary: file.primary,
        keys,
    }))
}

fn copy_keys(keys: &BTreeMap<String, Key>) -> BTreeMap<String, Key> {
    keys.iter()
        .map(|(kid, key)| (kid.clone(), Key::from_raw(key.raw.clone())))
        .collect()
}

fn next_kid(keys: &BTreeMap<String, Key>) -> String {
    let highest = keys
        .keys()
        .filter_map(|k| k.strip_prefix('k')?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    (highest + 1..)
        .map(|n| format!("k{n}"))
        .find(|k| !keys.contains_key(k))
        .expect("an unused key id")
}

/// The key id a ciphertext names, if it is in the current format.
pub fn blob_kid(blob: &[u8]) -> Option<&str> {
    Parsed::new(blob).map(|p| p.kid)
}

fn valid_kid(kid: &str) -> bool {
    (1..=MAX_KID_LEN).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn decode_key(encoded: &str) -> Option<Zeroizing<[u8; KEY_LEN]>> {
    let bytes = Zeroizing::new(B64.decode(encoded.trim()).ok()?);
    if bytes.len() != KEY_LEN {
        return None;
    }
    let mut raw = Zeroizing::new([0u8; KEY_LEN]);
    raw.copy_from_slice(&bytes);
    Some(raw)
}

fn io_err(path: &Path, source: std::io::Error) -> CryptoError {
    CryptoError::Io {
        path: path.to_owned(),
        source,
    }
}

fn write_private(tmp: &Path, contents: &[u8]) -> Result<(), CryptoError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(tmp).map_err(|source| io_err(tmp, source))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| io_err(tmp, source))
}

/// Publishes `tmp` at `path` only if nothing is there yet (hard link fails on an existing name).
fn link_new(tmp: &Path, path: &Path) -> Result<(), CryptoError> {
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(io_err(path, e)),
        // File systems without hard links: fall back to a (slightly racy) check and rename.
        Err(_) if !path.exists() => fs::rename(tmp, path).map_err(|source| io_err(path, source)),
        Err(e) => Err(io_err(path, e)),
    }
}

fn warn_if_too_open(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "the encryption key file is readable by group or others; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_ring() -> (tempfile::TempDir, PathBuf, KeyRing) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("secret.key");
        let ring = KeyRing::load_or_create(&path).unwrap();
        (dir, path, ring)
    }

    #[test]
    fn roundtrip_bytes_and_text() {
        let ring = KeyRing::generate();
        let blob = ring.encrypt(b"hello", b"install:ins_1:access_token");
        assert_eq!(blob[0], FORMAT_VERSION);
        assert_eq!(blob_kid(&blob), Some("k1"));
        assert_eq!(
            ring.decrypt(&blob, b"install:ins_1:access_token").unwrap(),
            b"hello"
        );
        let blob = ring.encrypt_str("", "aad");
        assert_eq!(ring.decrypt_str(&blob, "aad").unwrap(), "");
        let b64 = ring.encrypt_to_base64("s3cret", "setup:ten_1:epic:client_secret");
        assert_eq!(
            ring.decrypt_from_base64(&b64, "setup:ten_1:epic:client_secret")
                .unwrap(),
            "s3cret"
        );
        assert!(matches!(
            ring.decrypt_from_base64("not base64!", "x"),
            Err(CryptoError::Base64)
        ));
    }

    #[test]
    fn nonces_are_fresh() {
        let ring = KeyRing::generate();
        assert_ne!(ring.encrypt(b"same", b""), ring.encrypt(b"same", b""));
    }

    #[test]
    fn wrong_aad_fails() {
        let ring = KeyRing::generate();
        let blob = ring.encrypt(b"token", b"install:ins_1:access_token");
        assert!(matches!(
            ring.decrypt(&blob, b"install:ins_2:access_token"),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            ring.decrypt(&blob, b"install:ins_1:refresh_token"),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn tampering_fails() {
        let ring = KeyRing::generate();
        let blob = ring.encrypt(b"token", b"aad");
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            assert!(ring.decrypt(&bad, b"aad").is_err(), "flipped byte {i}");
        }
        assert!(matches!(
            ring.decrypt(&blob[..blob.len() - 1], b"aad"),
            Err(CryptoError::Decrypt)
        ));
        assert!(matches!(
            ring.decrypt(&blob[..10], b"aad"),
            Err(CryptoError::Malformed)
        ));
        assert!(matches!(
            ring.decrypt(&[], b"aad"),
            Err(CryptoError::Malformed)
        ));
    }

    #[test]
    fn another_ring_cannot_decrypt() {
        let a = KeyRing::generate();
        let b = KeyRing::generate();
        let blob = a.encrypt(b"x", b"aad");
        assert!(matches!(
            b.decrypt(&blob, b"aad"),
            Err(CryptoError::Decrypt)
        ));
    }

    #[test]
    fn file_is_created_0600_and_reloads_the_same_key() {
        let (_dir, path, ring) = temp_ring();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let text = fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["primary"], "k1");
        assert_eq!(
            B64.decode(json["keys"]["k1"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );

        let blob = ring.encrypt(b"persisted", b"aad");
        let again = KeyRing::load_or_create(&path).unwrap();
        assert_eq!(again.decrypt(&blob, b"aad").unwrap(), b"persisted");
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn concurrent_creation_agrees_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let rings: Vec<KeyRing> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| KeyRing::load_or_create(&path).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let blob = rings[0].encrypt(b"x", b"");
        for r in &rings {
            assert_eq!(r.decrypt(&blob, b"").unwrap(), b"x");
        }
    }

    #[test]
    fn rotate_keeps_old_keys_decryptable() {
        let (_dir, path, ring) = temp_ring();
        let old = ring.encrypt(b"old secret", b"aad");
        assert!(!ring.needs_reencrypt(&old));

        let (rotated, kid) = KeyRing::rotate(&path).unwrap();
        assert_eq!(kid, "k2");
        assert_eq!(rotated.primary_kid(), "k2");
        assert_eq!(rotated.kids().collect::<Vec<_>>(), ["k1", "k2"]);
        assert!(rotated.needs_reencrypt(&old));
        assert_eq!(rotated.decrypt(&old, b"aad").unwrap(), b"old secret");

        let rewrapped = rotated.reencrypt(&old, b"aad").unwrap();
        assert_eq!(blob_kid(&rewrapped), Some("k2"));
        assert_eq!(rotated.decrypt(&rewrapped, b"aad").unwrap(), b"old secret");
        assert!(rotated.reencrypt(&old, b"other aad").is_err());
        let b64 = ring.encrypt_to_base64("embedded", "setup:t:c:k");
        assert!(rotated.needs_reencrypt_base64(&b64));
        let b64 = rotated.reencrypt_base64(&b64, "setup:t:c:k").unwrap();
        assert!(!rotated.needs_reencrypt_base64(&b64));
        assert_eq!(
            rotated.decrypt_from_base64(&b64, "setup:t:c:k").unwrap(),
            "embedded"
        );

        let new = rotated.encrypt(b"new secret", b"aad");
        assert_eq!(blob_kid(&new), Some("k2"));
        assert!(!rotated.needs_reencrypt(&new));
        assert!(rotated.needs_reencrypt(b"garbage"));
        // The old ring does not know k2.
        assert!(matches!(ring.decrypt(&new, b"aad"), Err(CryptoError::UnknownKey(k)) if k == "k2"));

        // The file on disk holds both keys, k2 primary, still 0600.
        let reloaded = KeyRing::load(&path).unwrap();
        assert_eq!(reloaded.primary_kid(), "k2");
        assert_eq!(reloaded.decrypt(&old, b"aad").unwrap(), b"old secret");
        assert_eq!(reloaded.decrypt(&new, b"aad").unwrap(), b"new secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (_, kid3) = KeyRing::rotate(&path).unwrap();
        assert_eq!(kid3, "k3");
    }

    #[test]
    fn invalid_files_are_rejected_without_echoing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let secretish = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=";
        let cases = [
            format!(r#"{{"primary":"k2","keys":{{"k1":"{secretish}"}}}}"#),
            r#"{"primary":"k1","keys":{"k1":"c2hvcnQ="}}"#.to_owned(),
            format!(r#"{{"primary":"k1","keys":{{"k 1":"{secretish}"}}}}"#),
            format!(r#"{{"primary":"k1","keys":["{secretish}"]}}"#),
            format!(r#"{{"primary":"k1","keys":{{"k1":{{"x":"{secretish}"}}}}}}"#),
            "not json".to_owned(),
        ];
        for case in cases {
            fs::write(&path, &case).unwrap();
            let err = KeyRing::load_or_create(&path).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(matches!(err, CryptoError::InvalidKeyFile { .. }), "{shown}");
            assert!(!shown.contains(secretish), "{shown}");
            assert!(!shown.contains("c2hvcnQ"), "{shown}");
        }
    }

    #[test]
    fn debug_does_not_show_keys() {
        let (_dir, path, ring) = temp_ring();
        let text = fs::read_to_string(&path).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let key = json["keys"]["k1"].as_str().unwrap();
        let shown = format!("{ring:?}");
        assert!(shown.contains("k1"));
        assert!(!shown.contains(key));
    }

    #[test]
    fn staged_promoted_pruned_and_swapped_in_place() {
        let (_dir, path, ring) = temp_ring();
        let old = ring.encrypt(b"old", b"aad");
        let (staged, kid) = ring.with_new_key();
        assert_eq!(kid, "k2");
        // Staged: decrypts under k2 but still encrypts under k1.
        assert_eq!(staged.primary_kid(), "k1");
        assert!(staged.contains("k2"));
        assert_eq!(blob_kid(&staged.encrypt(b"x", b"")), Some("k1"));
        staged.save(&path).unwrap();
        let promoted = KeyRing::load(&path).unwrap().with_primary("k2").unwrap();
        assert!(matches!(staged.with_primary("k9"), Err(CryptoError::UnknownKey(k)) if k == "k9"));
        let new = promoted.reencrypt(&old, b"aad").unwrap();
        assert_eq!(blob_kid(&new), Some("k2"));

        // Swapped in place: holders of `ring` now use the promoted keys.
        let shared = std::sync::Arc::new(ring);
        assert!(!shared.same_keys(&promoted));
        shared.replace(promoted.with_primary("k2").unwrap());
        assert!(shared.same_keys(&promoted));
        assert_eq!(shared.decrypt(&new, b"aad").unwrap(), b"old");
        assert_eq!(blob_kid(&shared.encrypt(b"y", b"")), Some("k2"));

        let pruned = promoted.without(&["k1".to_owned(), "k2".to_owned()]);
        assert_eq!(pruned.kids().collect::<Vec<_>>(), ["k2"]);
        assert!(
            matches!(pruned.decrypt(&old, b"aad"), Err(CryptoError::UnknownKey(k)) if k == "k1")
        );

        // The document round-trips (SWITCHBOARD__SECRETS__KEY) and names only key ids in errors.
        let doc = promoted.to_document();
        let again = KeyRing::from_json(doc.as_bytes(), Path::new("env")).unwrap();
        assert!(again.same_keys(&promoted));
        let err = KeyRing::from_json(b"{}", Path::new("SWITCHBOARD__SECRETS__KEY")).unwrap_err();
        assert!(
            err.to_string().contains("SWITCHBOARD__SECRETS__KEY"),
            "{err}"
        );
    }
}
