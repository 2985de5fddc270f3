//! Key custody: THE registry of encrypted columns ([`REGISTRY`]), where the key ring comes from
//! (the key file or `secrets.key`), the start-up refusals, and `switchboard keys
//! rotate|status|prune`.
//!
//! A rotation (file ring) runs in steps, each resumable from the database:
//! 1. a new key is added to the file as an *additional*, not yet primary key, and progress rows
//!    (`key_rotation`) are written; then it waits until every replica has reloaded the file
//!    (`secrets.reload_interval_ms`, twice, plus a margin) so all of them can decrypt it;
//! 2. the new key becomes primary in the file, and it waits again;
//! 3. every registered column is walked in batches in key order: each value under another key
//!    is re-encrypted and written with a compare-and-swap on the old ciphertext, and the cursor
//!    is saved after each batch;
//! 4. verification passes scan every column again until one finds no value under another key
//!    (values written meanwhile by a replica that had not reloaded yet are caught), then the
//!    rotation is marked complete.
//!
//! Depends on leaves only (`error`, `sealing`'s and `settings`' AAD formats are restated in
//! the registry, next to each column).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use switchboard_config::SecretsSettings;
use switchboard_crypto::{blob_kid, CryptoError, KeyRing};
use switchboard_db::repo::rotation::{
    self as repo, BlobKind, EncryptedColumn, RotationProgress, StoredBlob,
};
use switchboard_db::{AnyConnection, Db, DbError};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// One encrypted column and how the AAD of its values is formed from the row key (and, for a
/// settings object, the setting's name).
pub struct Registered {
    pub column: EncryptedColumn,
    pub aad: fn(key: &str, field: &str) -> String,
}

/// EVERY column that holds ciphertexts. Adding an encrypted column is one entry here.
pub const REGISTRY: &[Registered] = &[
    // settings::seal with settings::setup_aad: "setup:{tenant}:{connector}:{setting}".
    Registered {
        column: EncryptedColumn {
            table: "connector_setups",
            key_sql: "tenant_id || ':' || connector_id",
            column: "settings",
            kind: BlobKind::SettingsJson,
        },
        aad: |key, field| format!("setup:{key}:{field}"),
    },
    // settings::seal with settings::install_aad: "install:{id}:{setting}".
    Registered {
        column: EncryptedColumn {
            table: "installs",
            key_sql: "id",
            column: "settings",
            kind: BlobKind::SettingsJson,
        },
        aad: |key, field| format!("install:{key}:{field}"),
    },
    // sealing::token_aad.
    Registered {
        column: EncryptedColumn {
            table: "installs",
            key_sql: "id",
            column: "access_token",
            kind: BlobKind::Bytes,
        },
        aad: |key, _| format!("install:{key}:access_token"),
    },
    Registered {
        column: EncryptedColumn {
            table: "installs",
            key_sql: "id",
            column: "refresh_token",
            kind: BlobKind::Bytes,
        },
        aad: |key, _| format!("install:{key}:refresh_token"),
    },
    // installs::begin_authorization.
    Registered {
        column: EncryptedColumn {
            table: "oauth_states",
            key_sql: "state_hash",
            column: "verifier",
            kind: BlobKind::Bytes,
        },
        aad: |key, _| format!("state:{key}:verifier"),
    },
    // audit::AuditLog::tenant_key.
    Registered {
        column: EncryptedColumn {
            table: "audit_keys",
            key_sql: "tenant_id",
            column: "sealed_key",
            kind: BlobKind::Bytes,
        },
        aad: |key, _| format!("audit_key:{key}"),
    },
    // signing_keys::key_aad: "signing_key:{tenant}:{connector}:{kid}" (kid is the row key).
    Registered {
        column: EncryptedColumn {
            table: "setup_signing_keys",
            key_sql: "tenant_id || ':' || connector_id || ':' || kid",
            column: "private_key",
            kind: BlobKind::Bytes,
        },
        aad: |key, _| format!("signing_key:{key}"),
    },
    // webhooks::secret_aad.
    Registered {
        column: EncryptedColumn {
            table: "webhook_endpoints",
            key_sql: "id",
            column: "secret",
            kind: BlobKind::Bytes,
        },
        aad: |key, _| format!("webhook:{key}:secret"),
    },
    // methods::idempotency_aad: "idempotency:{install}:{key}" (a write's stored response).
    Registered {
        column: EncryptedColumn {
            table: "idempotency_keys",
            key_sql: "install_id || ':' || key",
            column: "response",
            kind: BlobKind::Bytes,
        },
        aad: |key, _| format!("idempotency:{key}"),
    },
    // bulk::status_url_aad / bulk::manifest_aad: a Bulk Data job's status URL and manifest.
    Registered {
        column: EncryptedColumn {
            table: "bulk_jobs",
            key_sql: "id",
            column: "status_url",
            kind: BlobKind::Bytes,
        },
        aad: |key, _| format!("bulk_job:{key}:status_url"),
    },
    Registered {
        column: EncryptedColumn {
            table: "bulk_jobs",
            key_sql: "id",
            column: "manifest",
            kind: BlobKind::Bytes,
        },
        aad: |key, _| format!("bulk_job:{key}:manifest"),
    },
];

/// Failures of key custody. Messages name key ids, columns and counts, never key material.
#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "the database holds ciphertexts under key {kid:?}, which the key ring ({source_name}) \
         lacks; restore the key ring that holds it"
    )]
    MissingKey { kid: String, source_name: String },
    #[error(
        "the key file {} is missing but the database already holds secrets encrypted under key \
         {kid:?}; restore the key file (or set secrets.key) instead of starting with a new key",
        path.display()
    )]
    MissingKeyFile { path: PathBuf, kid: String },
    #[error("{column}: a value under key {kid:?} cannot be decrypted ({reason})")]
    Undecryptable {
        column: String,
        kid: String,
        reason: String,
    },
    #[error("{0}")]
    Refused(String),
}

/// Where the key ring comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    File(PathBuf),
    /// `secrets.key` (`SWITCHBOARD__SECRETS__KEY`): read once; a new ring means a redeploy.
    Inline,
}

impl KeySource {
    pub fn of(settings: &SecretsSettings) -> Self {
        match settings.inline_key() {
            Some(_) => KeySource::Inline,
            None => KeySource::File(settings.key_file.clone()),
        }
    }

    pub fn name(&self) -> String {
        match self {
            KeySource::File(p) => format!("key file {}", p.display()),
            KeySource::Inline => "SWITCHBOARD__SECRETS__KEY".to_owned(),
        }
    }
}

/// Loads the key ring for a process. A missing key file is created (0600) only when the
/// database holds no secret yet; otherwise this refuses, naming a key id in use.
pub fn load_ring(settings: &SecretsSettings, db: &Db) -> Result<KeyRing, CustodyError> {
    if let Some(doc) = settings.inline_key() {
        return Ok(KeyRing::from_json(
            doc.as_bytes(),
            Path::new("SWITCHBOARD__SECRETS__KEY"),
        )?);
    }
    let path = &settings.key_file;
    if path.exists() {
        return Ok(KeyRing::load(path)?);
    }
    let mut conn = db.get()?;
    if migrated(&mut conn) {
        if let Some(kid) = first_used_kid(&mut conn)? {
            return Err(CustodyError::MissingKeyFile {
                path: path.clone(),
                kid,
            });
        }
    }
    Ok(KeyRing::load_or_create(path)?)
}

/// Whether any migration was applied (a database never migrated holds no secret).
fn migrated(conn: &mut AnyConnection) -> bool {
    use diesel::sql_types::BigInt;
    use diesel::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    // The installs table is created by the first migration.
    let sql = match conn.backend() {
        switchboard_db::Backend::Sqlite => {
            "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'installs'"
        }
        switchboard_db::Backend::Postgres => {
            "SELECT COUNT(*) AS n FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = 'installs'"
        }
    };
    diesel::sql_query(sql)
        .get_result::<N>(conn)
        .map(|r| r.n > 0)
        .unwrap_or(true)
}

fn first_used_kid(conn: &mut AnyConnection) -> Result<Option<String>, CustodyError> {
    for reg in REGISTRY {
        if let Some((_, blob)) = repo::scan(conn, &reg.column, None, 1)?.into_iter().next() {
            if let Some(kid) = kids_of(&blob).into_iter().next() {
                return Ok(Some(kid));
            }
        }
    }
    Ok(None)
}

/// The key ids a stored value is encrypted under (one for a blob; one per secret setting).
fn kids_of(blob: &StoredBlob) -> Vec<String> {
    match blob {
        StoredBlob::Bytes(b) => vec![blob_kid(b).unwrap_or("?").to_owned()],
        StoredBlob::Text(t) => secret_settings(t)
            .into_iter()
            .map(|(_, enc)| {
                B64.decode(enc)
                    .ok()
                    .and_then(|b| blob_kid(&b).map(str::to_owned))
                    .unwrap_or_else(|| "?".to_owned())
            })
            .collect(),
    }
}

fn secret_settings(text: &str) -> Vec<(String, String)> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    map.into_iter()
        .filter_map(|(k, v)| Some((k, v.get("enc")?.as_str()?.to_owned())))
        .collect()
}

/// The value re-encrypted under the ring's primary key, or `None` when nothing in it is under
/// another key.
fn rewrap(
    ring: &KeyRing,
    reg: &Registered,
    key: &str,
    blob: &StoredBlob,
) -> Result<Option<StoredBlob>, CustodyError> {
    let primary = ring.primary_kid();
    let fail = |kid: &str, e: CryptoError| match e {
        CryptoError::UnknownKey(kid) => CustodyError::MissingKey {
            kid,
            source_name: "in use".to_owned(),
        },
        e => CustodyError::Undecryptable {
            column: reg.column.name(),
            kid: kid.to_owned(),
            reason: e.to_string(),
        },
    };
    match blob {
        StoredBlob::Bytes(b) => {
            let kid = blob_kid(b).unwrap_or("?");
            if kid == primary {
                return Ok(None);
            }
            let new = ring
                .reencrypt(b, (reg.aad)(key, "").as_bytes())
                .map_err(|e| fail(kid, e))?;
            Ok(Some(StoredBlob::Bytes(new)))
        }
        StoredBlob::Text(t) => {
            let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(t) else {
                return Ok(None);
            };
            let mut changed = false;
            let fields: Vec<String> = map.keys().cloned().collect();
            for field in fields {
                let Some(enc) = map[&field].get("enc").and_then(Value::as_str) else {
                    continue;
                };
                let raw = B64.decode(enc).unwrap_or_default();
                let kid = blob_kid(&raw).unwrap_or("?").to_owned();
                if kid == primary {
                    continue;
                }
                let new = ring
                    .reencrypt_base64(enc, (reg.aad)(key, &field).as_bytes())
                    .map_err(|e| fail(&kid, e))?;
                map.insert(field, json!({ "enc": new }));
                changed = true;
            }
            Ok(changed.then(|| StoredBlob::Text(Value::Object(map).to_string())))
        }
    }
}

/// How many values each column holds per key id.
pub type KidCounts = BTreeMap<String, BTreeMap<String, u64>>;

fn count_kids(conn: &mut AnyConnection, batch: i64) -> Result<KidCounts, CustodyError> {
    let mut out = KidCounts::new();
    for reg in REGISTRY {
        let counts = out.entry(reg.column.name()).or_default();
        let mut after: Option<String> = None;
        loop {
            let rows = repo::scan(conn, &reg.column, after.as_deref(), batch)?;
            for (_, blob) in &rows {
                for kid in kids_of(blob) {
                    *counts.entry(kid).or_default() += 1;
                }
            }
            match rows.last() {
                Some((k, _)) if rows.len() as i64 == batch => after = Some(k.clone()),
                _ => break,
            }
        }
    }
    Ok(out)
}

/// Refuses a key ring that lacks a key id the database uses (serve and `keys rotate`).
pub async fn check_ring(db: &Db, ring: &KeyRing, source: &KeySource) -> Result<(), CustodyError> {
    let counts = {
        let db = db.clone();
        db.run(|c| Ok(count_kids(c, 500))).await??
    };
    for kids in counts.values() {
        if let Some(kid) = kids.keys().find(|k| !ring.contains(k)) {
            return Err(CustodyError::MissingKey {
                kid: kid.clone(),
                source_name: source.name(),
            });
        }
    }
    Ok(())
}

/// Options of `keys rotate`.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// Rows re-encrypted per batch (and per progress write).
    pub batch_size: i64,
    /// How long to wait after changing the key file for every replica to reload it.
    pub reload_wait: Duration,
    /// Test hook: a pause after every batch (so a test can kill the rotation halfway).
    pub pause: Duration,
}

/// The outcome of a rotation (printed as JSON by the CLI).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RotateReport {
    pub primary: String,
    pub resumed: bool,
    /// Values re-encrypted by this run, per column.
    pub rewritten: BTreeMap<String, i64>,
    pub verification_passes: u32,
}

/// `switchboard keys` on one database and one key source.
pub struct Custody {
    pub db: Db,
    pub source: KeySource,
    pub ring: Arc<KeyRing>,
    /// `audit.enabled`: a completed rotation is recorded in every tenant's trail.
    pub audit: bool,
}

const VERIFIED: i64 = 2;
const WALKED: i64 = 1;

impl Custody {
    fn columns() -> Vec<String> {
        REGISTRY.iter().map(|r| r.column.name()).collect()
    }

    async fn progress(&self) -> Result<Vec<RotationProgress>, CustodyError> {
        Ok(self.db.run(repo::progress).await?)
    }

    /// `keys status`: the ring, the values per key id per column, and the rotation's progress.
    pub async fn status(&self) -> Result<Value, CustodyError> {
        let counts = self.db.run(|c| Ok(count_kids(c, 500))).await??;
        let progress = self.progress().await?;
        let rotation = rotation_json(&progress);
        Ok(json!({
            "source": match self.source { KeySource::File(_) => "file", KeySource::Inline => "env" },
            "primary": self.ring.primary_kid(),
            "kids": self.ring.kids().collect::<Vec<_>>(),
            "columns": counts,
            "rotation": rotation,
        }))
    }

    /// `keys rotate` on a key file: stage a new key, promote it, re-encrypt, verify. An
    /// unfinished rotation (killed at any point) is resumed instead of starting another.
    pub async fn rotate(&self, opts: &RotateOptions) -> Result<RotateReport, CustodyError> {
        let KeySource::File(path) = &self.source else {
            return Err(CustodyError::Refused(
                "the key ring comes from SWITCHBOARD__SECRETS__KEY: run `keys rotate --stage`, \
                 deploy the printed ring everywhere, `keys rotate --promote KID`, deploy again, \
                 then `keys rotate --reencrypt-only`"
                    .to_owned(),
            ));
        };
        let unfinished = unfinished_target(&self.progress().await?);
        let (target, resumed) = match unfinished {
            Some(target) => {
                if !self.ring.contains(&target) {
                    return Err(CustodyError::MissingKey {
                        kid: target,
                        source_name: self.source.name(),
                    });
                }
                (target, true)
            }
            None => {
                let (staged, kid) = self.ring.with_new_key();
                staged.save(path)?;
                self.ring.replace(staged);
                tracing::info!(kid = %kid, "added a new key to the key ring (not primary yet)");
                let (cols, k) = (Self::columns(), kid.clone());
                self.db
                    .run(move |c| repo::start(c, &cols, &k, switchboard_core::now_ms()))
                    .await?;
                tokio::time::sleep(opts.reload_wait).await;
                (kid, false)
            }
        };
        if self.ring.primary_kid() != target {
            let promoted = self.ring.with_primary(&target)?;
            promoted.save(path)?;
            self.ring.replace(promoted);
            tracing::info!(kid = %target, "made the new key primary");
            tokio::time::sleep(opts.reload_wait).await;
        }
        self.finish(opts, resumed).await
    }

    /// Re-encrypts every registered column to the ring's primary key and verifies (the third
    /// and fourth steps of a rotation; alone, `keys rotate --reencrypt-only`).
    /// An unfinished re-encryption to the current primary key is resumed.
    pub async fn reencrypt(&self, opts: &RotateOptions) -> Result<RotateReport, CustodyError> {
        let primary = self.ring.primary_kid();
        let progress = self.progress().await?;
        let resumed = unfinished_target(&progress).as_deref() == Some(primary.as_str());
        self.finish(opts, resumed).await
    }

    async fn finish(
        &self,
        opts: &RotateOptions,
        resumed: bool,
    ) -> Result<RotateReport, CustodyError> {
        let primary = self.ring.primary_kid();
        let progress = self.progress().await?;
        if unfinished_target(&progress).as_deref() != Some(primary.as_str()) {
            let (cols, k) = (Self::columns(), primary.clone());
            self.db
                .run(move |c| repo::start(c, &cols, &k, switchboard_core::now_ms()))
                .await?;
        }
        let progress = self.progress().await?;
        let mut report = RotateReport {
            primary: primary.clone(),
            resumed,
            rewritten: BTreeMap::new(),
            verification_passes: 0,
        };
        for reg in REGISTRY {
            let name = reg.column.name();
            let row = progress.iter().find(|p| p.column_name == name);
            let mut cursor = row.and_then(|p| p.cursor.clone());
            let mut done = row.is_some_and(|p| p.done >= WALKED);
            let mut total = 0;
            while !done {
                let (n, next, end) = self.batch(reg, cursor.clone(), opts.batch_size).await?;
                total += n;
                cursor = next.or(cursor);
                done = end;
                let (col, cur) = (name.clone(), cursor.clone());
                self.db
                    .run(move |c| {
                        repo::advance(c, &col, cur.as_deref(), end, n, switchboard_core::now_ms())
                    })
                    .await?;
                if !opts.pause.is_zero() {
                    tokio::time::sleep(opts.pause).await;
                }
            }
            report.rewritten.insert(name, total);
        }
        // Verification: loop until a whole pass finds nothing under another key.
        loop {
            report.verification_passes += 1;
            let mut found = 0;
            for reg in REGISTRY {
                let mut cursor = None;
                loop {
                    let (n, next, end) = self.batch(reg, cursor, opts.batch_size).await?;
                    found += n;
                    *report.rewritten.entry(reg.column.name()).or_default() += n;
                    cursor = next;
                    if end {
                        break;
                    }
                }
            }
            if found == 0 {
                break;
            }
            if report.verification_passes >= 1000 {
                return Err(CustodyError::Refused(
                    "values under an old key keep appearing: a replica still encrypts with it \
                     (is it reading the same key file?)"
                        .to_owned(),
                ));
            }
            tokio::time::sleep(opts.reload_wait.min(Duration::from_secs(1))).await;
        }
        let cols = Self::columns();
        self.db
            .run(move |c| {
                for col in &cols {
                    repo::advance(c, col, None, true, 0, switchboard_core::now_ms())?;
                    repo::mark_verified(c, col)?;
                }
                Ok(())
            })
            .await?;
        let rewritten: i64 = report.rewritten.values().sum();
        if rewritten > 0 && self.audit {
            let kid = primary.clone();
            self.db
                .run(move |c| repo::record_rotation(c, &kid, switchboard_core::now_ms()))
                .await?;
        }
        tracing::info!(kid = %primary, rewritten, "key rotation complete");
        Ok(report)
    }

    /// One batch of `reg` after `cursor`: (values re-encrypted, last key, reached the end).
    async fn batch(
        &self,
        reg: &'static Registered,
        cursor: Option<String>,
        size: i64,
    ) -> Result<(i64, Option<String>, bool), CustodyError> {
        let ring = self.ring.clone();
        self.db
            .run(move |c| Ok(batch(c, &ring, reg, cursor, size)))
            .await?
    }

    /// `keys prune`: the ring without every retired key, when nothing is encrypted under any
    /// of them. Refuses (naming the counts) otherwise, or while a rotation is unfinished.
    pub async fn prune(&self) -> Result<(KeyRing, Vec<String>), CustodyError> {
        if let Some(target) = unfinished_target(&self.progress().await?) {
            return Err(CustodyError::Refused(format!(
                "a rotation to key {target:?} is unfinished; run `keys rotate` to complete it first"
            )));
        }
        let counts = self.db.run(|c| Ok(count_kids(c, 500))).await??;
        let primary = self.ring.primary_kid();
        let retired: Vec<String> = self.ring.kids().filter(|k| *k != primary).collect();
        let mut used = Vec::new();
        for kid in &retired {
            let per_column: Vec<String> = counts
                .iter()
                .filter_map(|(col, kids)| kids.get(kid).map(|n| format!("{col}: {n}")))
                .collect();
            if !per_column.is_empty() {
                used.push(format!("key {kid:?} ({})", per_column.join(", ")));
            }
        }
        if !used.is_empty() {
            return Err(CustodyError::Refused(format!(
                "values are still encrypted under retired keys: {}; run `keys rotate` first",
                used.join("; ")
            )));
        }
        Ok((self.ring.without(&retired), retired))
    }
}

fn batch(
    c: &mut AnyConnection,
    ring: &KeyRing,
    reg: &Registered,
    cursor: Option<String>,
    size: i64,
) -> Result<(i64, Option<String>, bool), CustodyError> {
    let rows = repo::scan(c, &reg.column, cursor.as_deref(), size)?;
    let mut n = 0;
    for (key, blob) in &rows {
        // A value that changed since it was read (a refresh committed) is read again: the
        // compare-and-swap never overwrites it, and its new value is usually under the new
        // key already. The verification passes catch whatever is left.
        let mut current = blob.clone();
        for _ in 0..3 {
            let Some(new) = rewrap(ring, reg, key, &current)? else {
                break;
            };
            if repo::compare_and_swap(c, &reg.column, key, &current, &new)? {
                n += 1;
                break;
            }
            match repo::get(c, &reg.column, key)? {
                Some(v) => current = v,
                None => break,
            }
        }
    }
    let end = (rows.len() as i64) < size;
    Ok((n, rows.last().map(|(k, _)| k.clone()), end))
}

fn unfinished_target(progress: &[RotationProgress]) -> Option<String> {
    progress
        .iter()
        .find(|p| p.done < VERIFIED)
        .map(|p| p.target_kid.clone())
}

fn rotation_json(progress: &[RotationProgress]) -> Value {
    let Some(first) = progress.first() else {
        return Value::Null;
    };
    let walked = progress.iter().filter(|p| p.done >= WALKED).count();
    let state = if progress.iter().all(|p| p.done >= VERIFIED) {
        "complete"
    } else if walked == progress.len() {
        "verifying"
    } else {
        "reencrypting"
    };
    let columns: Map<String, Value> = progress
        .iter()
        .map(|p| {
            (
                p.column_name.clone(),
                json!({ "done": p.done >= WALKED, "rewritten": p.rewritten }),
            )
        })
        .collect();
    json!({
        "target_kid": first.target_kid,
        "state": state,
        "columns_done": walked,
        "columns_total": progress.len(),
        "rewritten": progress.iter().map(|p| p.rewritten).sum::<i64>(),
        "started_at": first.started_at,
        "columns": columns,
    })
}

/// Kept for `BTreeSet` users of the registry (tests compare it with the schema).
pub fn registered_columns() -> BTreeSet<String> {
    REGISTRY.iter().map(|r| r.column.name()).collect()
}
