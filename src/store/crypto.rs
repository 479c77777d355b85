//! The crypto store: what matrix-sdk-crypto's `OlmMachine` keeps for the bridge device, in the
//! bridge's own database (tables `mx_crypto_*`, migration 8), on SQLite and PostgreSQL alike.
//!
//! Every value is the library's own serialized form (its pickles and serde types) written as
//! JSON bytes, in a row keyed by what the machine looks it up by. Nothing here encrypts or
//! decrypts: the pickles are stored as the library hands them over, so the database (like the
//! registration file's tokens) is the secret to guard. `save_changes` writes all of a change set
//! in one database transaction. matrix-sdk-crypto's own conformance suite runs against both
//! backends (`tests/it/crypto_store.rs`, `encryption-conformance` feature).

use std::{
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use matrix_sdk_crypto::{
    Account, DeviceData, GossipRequest, SecretInfo, TrackedUser, UserIdentityData,
    olm::{
        Curve25519PublicKey, InboundGroupSession, OlmMessageHash, OutboundGroupSession,
        PickledAccount, PickledCrossSigningIdentity, PickledInboundGroupSession,
        PickledOutboundGroupSession, PickledSession, PrivateCrossSigningIdentity, SenderDataType,
        Session, StaticAccountData,
    },
    store::{
        CryptoStore, CryptoStoreError,
        types::{
            BackupDecryptionKey, BackupKeys, Changes, DehydratedDeviceKey, PendingChanges,
            RoomKeyCounts, RoomKeyWithheldEntry, RoomPendingKeyBundleDetails, RoomSettings,
            StoredRoomKeyBundleData,
        },
    },
};
use ruma::{
    DeviceId, OwnedDeviceId, RoomId, TransactionId, UserId, events::secret::request::SecretName,
};
use serde::{Serialize, de::DeserializeOwned};
use zeroize::Zeroizing;

use super::{Store, now_ms, with_pool, with_reader, writer::BeginTx as _};

type Result<T, E = CryptoStoreError> = std::result::Result<T, E>;

/// The names of the single values in `mx_crypto_value`. Custom values are stored under
/// [`CUSTOM`] followed by their key, so they never meet these.
const ACCOUNT: &str = "account";
const PRIVATE_IDENTITY: &str = "private_identity";
const BACKUP_KEY: &str = "backup_decryption_key";
const BACKUP_VERSION: &str = "backup_version";
const DEHYDRATION_KEY: &str = "dehydrated_device_pickle_key";
const NEXT_BATCH: &str = "next_batch_token";
const CUSTOM: &str = "custom:";

const UPSERT_VALUE: &str = "INSERT INTO mx_crypto_value (name, value) VALUES ($1, $2) \
                            ON CONFLICT (name) DO UPDATE SET value = excluded.value";
const SELECT_VALUE: &str = "SELECT value FROM mx_crypto_value WHERE name = $1";
const DELETE_VALUE: &str = "DELETE FROM mx_crypto_value WHERE name = $1";
/// A session saved without a backup version keeps the one it had (a re-saved session is still
/// in the backup it was put in).
/// `received_at` is set when the key is first stored, and kept.
const UPSERT_INBOUND: &str = "INSERT INTO mx_crypto_inbound_session \
     (room_id, session_id, sender_key, sender_data_type, backed_up_to, value, received_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (room_id, session_id) DO UPDATE SET \
     sender_key = excluded.sender_key, sender_data_type = excluded.sender_data_type, \
     backed_up_to = COALESCE(excluded.backed_up_to, mx_crypto_inbound_session.backed_up_to), \
     value = excluded.value";

/// matrix-sdk-crypto's store for the bridge device, on the bridge's [`Store`]. Cheap to clone.
///
/// Hand it to `OlmMachine::with_store`. One machine per database: the account's user and device
/// are those of the first account saved.
#[derive(Clone, Debug)]
pub struct SqlCryptoStore {
    store: Store,
    /// The account's unchanging part, known once the account was loaded or saved: its user,
    /// device and identity keys, which unpickling sessions needs.
    account: Arc<RwLock<Option<StaticAccountData>>>,
    /// Change sets are saved one at a time (the machine may save from several tasks).
    save_lock: Arc<tokio::sync::Mutex<()>>,
    /// What the machine reads for every message it decrypts, kept for a while (see
    /// [`ReadCache`]).
    cache: Arc<Mutex<ReadCache>>,
}

/// Inbound Megolm sessions and users' devices, which the machine reads from the store for every
/// message it decrypts. Entries are replaced by this store's own saves and expire after
/// [`CACHE_TTL`], so a change made to the database outside this store (old room keys deleted
/// by age) is seen within that time.
#[derive(Debug, Default)]
struct ReadCache {
    inbound: crate::util::FastMap<(String, String), (InboundGroupSession, Instant)>,
    // The trait's own map type.
    #[allow(clippy::disallowed_types)]
    devices: crate::util::FastMap<
        String,
        (std::collections::HashMap<OwnedDeviceId, DeviceData>, Instant),
    >,
    /// Bumped by every save: a read that started before a save does not cache what it read
    /// (it may be older than what the save wrote).
    saves: u64,
}

/// How long a cached entry is trusted.
const CACHE_TTL: Duration = Duration::from_secs(60);
/// Entries kept of each kind; the cache starts again empty when one fills up.
const CACHE_ENTRIES: usize = 10_000;

impl ReadCache {
    fn put_inbound(&mut self, session: &InboundGroupSession) {
        if self.inbound.len() >= CACHE_ENTRIES {
            self.inbound.clear();
        }
        let key = (session.room_id().to_string(), session.session_id().to_owned());
        self.inbound.insert(key, (session.clone(), Instant::now()));
    }
}

fn backend(e: sqlx::Error) -> CryptoStoreError {
    CryptoStoreError::backend(e)
}

fn to_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

fn from_bytes<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    Ok(serde_json::from_slice(bytes)?)
}

fn count(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An inbound group session as a row: room, session ID, sender key, sender data type, pickle.
async fn inbound_row(
    session: &InboundGroupSession,
) -> Result<(String, String, String, i64, Vec<u8>)> {
    Ok((
        session.room_id().to_string(),
        session.session_id().to_owned(),
        session.sender_key().to_base64(),
        session.sender_data_type() as i64,
        to_bytes(&session.pickle().await)?,
    ))
}

fn inbound_from(bytes: &[u8]) -> Result<InboundGroupSession> {
    let pickle: PickledInboundGroupSession = from_bytes(bytes)?;
    Ok(InboundGroupSession::from_pickle(pickle)?)
}

fn inbound_from_rows(rows: Vec<Vec<u8>>) -> Result<Vec<InboundGroupSession>> {
    rows.iter().map(|v| inbound_from(v)).collect()
}

impl SqlCryptoStore {
    /// The crypto store in `store`'s database (its tables exist once the store connected).
    pub fn new(store: Store) -> Self {
        Self {
            store,
            account: Arc::new(RwLock::new(None)),
            save_lock: Arc::new(tokio::sync::Mutex::new(())),
            cache: Arc::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ReadCache> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The account's unchanging data, once the account was loaded or saved through this store.
    pub fn get_static_account(&self) -> Option<StaticAccountData> {
        self.account.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_static_account(&self, account: &Account) {
        *self.account.write().unwrap_or_else(|e| e.into_inner()) =
            Some(account.static_data().clone());
    }

    fn static_account(&self) -> Result<StaticAccountData> {
        self.get_static_account().ok_or(CryptoStoreError::AccountUnset)
    }

    async fn value(&self, name: &str) -> Result<Option<Vec<u8>>> {
        with_reader!(self.store, |pool| {
            sqlx::query_scalar(SELECT_VALUE).bind(name).fetch_optional(pool).await.map_err(backend)
        })
    }

    async fn set_value(&self, name: &str, value: &[u8]) -> Result<()> {
        with_pool!(self.store, |pool| {
            sqlx::query(UPSERT_VALUE)
                .bind(name)
                .bind(value)
                .execute(pool)
                .await
                .map_err(backend)?;
            Ok::<_, CryptoStoreError>(())
        })?;
        Ok(())
    }

    async fn delete_value(&self, name: &str) -> Result<()> {
        with_pool!(self.store, |pool| {
            sqlx::query(DELETE_VALUE).bind(name).execute(pool).await.map_err(backend)?;
            Ok::<_, CryptoStoreError>(())
        })?;
        Ok(())
    }

    /// Rows of one `value` column, for a query with up to two text parameters.
    async fn blobs(&self, sql: &'static str, a: &str, b: Option<&str>) -> Result<Vec<Vec<u8>>> {
        with_reader!(self.store, |pool| {
            let mut q = sqlx::query_scalar(sql).bind(a);
            if let Some(b) = b {
                q = q.bind(b);
            }
            q.fetch_all(pool).await.map_err(backend)
        })
    }

    async fn blob(&self, sql: &'static str, a: &str, b: Option<&str>) -> Result<Option<Vec<u8>>> {
        Ok(self.blobs(sql, a, b).await?.into_iter().next())
    }

    async fn all_blobs(&self, sql: &'static str) -> Result<Vec<Vec<u8>>> {
        with_reader!(self.store, |pool| {
            sqlx::query_scalar(sql).fetch_all(pool).await.map_err(backend)
        })
    }

    async fn exists(&self, sql: &'static str, a: &str, b: Option<&str>) -> Result<bool> {
        let n: i64 = with_reader!(self.store, |pool| {
            let mut q = sqlx::query_scalar(sql).bind(a);
            if let Some(b) = b {
                q = q.bind(b);
            }
            q.fetch_one(pool).await.map_err(backend)
        })?;
        Ok(n > 0)
    }

    async fn execute(&self, sql: &'static str, a: &str, b: Option<&str>) -> Result<()> {
        with_pool!(self.store, |pool| {
            let mut q = sqlx::query(sql).bind(a);
            if let Some(b) = b {
                q = q.bind(b);
            }
            q.execute(pool).await.map_err(backend)?;
            Ok::<_, CryptoStoreError>(())
        })?;
        Ok(())
    }

    async fn save_inbound(
        &self,
        sessions: &[InboundGroupSession],
        backed_up_to: Option<&str>,
    ) -> Result<()> {
        let mut rows = Vec::with_capacity(sessions.len());
        for session in sessions {
            rows.push(inbound_row(session).await?);
        }
        with_pool!(self.store, |pool| {
            let mut conn = pool.acquire().await.map_err(backend)?;
            let mut tx = conn.begin_tx().await.map_err(backend)?;
            for (room, id, key, kind, value) in &rows {
                sqlx::query(UPSERT_INBOUND)
                    .bind(room)
                    .bind(id)
                    .bind(key)
                    .bind(kind)
                    .bind(backed_up_to)
                    .bind(value)
                    .bind(crate::store::now_ms())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
            tx.commit().await.map_err(backend)
        })?;
        let mut cache = self.cache();
        cache.saves += 1;
        for session in sessions {
            cache.put_inbound(session);
        }
        Ok(())
    }
}

/// A change set turned into rows, before the database transaction that writes them.
#[derive(Default)]
struct ChangeRows {
    values: Vec<(&'static str, Vec<u8>)>,
    sessions: Vec<(String, String, Vec<u8>)>,
    hashes: Vec<(String, String)>,
    inbound: Vec<(String, String, String, i64, Vec<u8>)>,
    outbound: Vec<(String, Vec<u8>)>,
    devices: Vec<(String, String, Vec<u8>)>,
    deleted_devices: Vec<(String, String)>,
    identities: Vec<(String, Vec<u8>)>,
    requests: Vec<(String, String, i64, Vec<u8>)>,
    secrets: Vec<(String, Vec<u8>)>,
    withheld: Vec<(String, String, Vec<u8>)>,
    room_settings: Vec<(String, Vec<u8>)>,
    bundles: Vec<(String, String, Vec<u8>)>,
    downloaded: Vec<String>,
    pending_bundles: Vec<(String, Option<Vec<u8>>)>,
}

impl ChangeRows {
    async fn of(changes: Changes) -> Result<Self> {
        let mut rows = Self::default();
        if let Some(identity) = &changes.private_identity {
            rows.values.push((PRIVATE_IDENTITY, to_bytes(&identity.pickle().await)?));
        }
        if let Some(key) = &changes.backup_decryption_key {
            rows.values.push((BACKUP_KEY, to_bytes(key)?));
        }
        if let Some(version) = &changes.backup_version {
            rows.values.push((BACKUP_VERSION, to_bytes(version)?));
        }
        if let Some(key) = &changes.dehydrated_device_pickle_key {
            rows.values.push((DEHYDRATION_KEY, to_bytes(key)?));
        }
        if let Some(token) = &changes.next_batch_token {
            rows.values.push((NEXT_BATCH, to_bytes(token)?));
        }
        for session in &changes.sessions {
            let pickle = to_bytes(&session.pickle().await)?;
            rows.sessions.push((
                session.sender_key.to_base64(),
                session.session_id().to_owned(),
                pickle,
            ));
        }
        for hash in changes.message_hashes {
            rows.hashes.push((hash.sender_key, hash.hash));
        }
        for session in &changes.inbound_group_sessions {
            rows.inbound.push(inbound_row(session).await?);
        }
        for session in &changes.outbound_group_sessions {
            rows.outbound.push((session.room_id().to_string(), to_bytes(&session.pickle().await)?));
        }
        for device in changes.devices.new.iter().chain(&changes.devices.changed) {
            rows.devices.push((
                device.user_id().to_string(),
                device.device_id().to_string(),
                to_bytes(device)?,
            ));
        }
        for device in &changes.devices.deleted {
            rows.deleted_devices
                .push((device.user_id().to_string(), device.device_id().to_string()));
        }
        for identity in changes.identities.new.iter().chain(&changes.identities.changed) {
            rows.identities.push((identity.user_id().to_string(), to_bytes(identity)?));
        }
        for request in &changes.key_requests {
            rows.requests.push((
                request.request_id.to_string(),
                request.info.as_key(),
                i64::from(request.sent_out),
                to_bytes(request)?,
            ));
        }
        for secret in &changes.secrets {
            rows.secrets.push((secret.secret_name.to_string(), to_bytes(secret.secret.as_str())?));
        }
        for (room, sessions) in &changes.withheld_session_info {
            for (session, entry) in sessions {
                rows.withheld.push((room.to_string(), session.clone(), to_bytes(entry)?));
            }
        }
        for (room, settings) in &changes.room_settings {
            rows.room_settings.push((room.to_string(), to_bytes(settings)?));
        }
        for bundle in &changes.received_room_key_bundles {
            rows.bundles.push((
                bundle.bundle_data.room_id.to_string(),
                bundle.sender_user.to_string(),
                to_bytes(bundle)?,
            ));
        }
        rows.downloaded =
            changes.room_key_backups_fully_downloaded.iter().map(ToString::to_string).collect();
        for (room, details) in &changes.rooms_pending_key_bundle {
            rows.pending_bundles
                .push((room.to_string(), details.as_ref().map(to_bytes).transpose()?));
        }
        Ok(rows)
    }
}

/// Runs `$sql` once per element of `$rows` (a tuple pattern `$pat`) on `$tx`, binding `$bind`.
macro_rules! each {
    ($tx:ident, $sql:expr, $rows:expr, |$pat:pat_param| $($bind:expr),+) => {
        for $pat in $rows {
            sqlx::query($sql)$(.bind($bind))+.execute(&mut *$tx).await.map_err(backend)?;
        }
    };
}

#[async_trait::async_trait]
impl CryptoStore for SqlCryptoStore {
    type Error = CryptoStoreError;

    async fn load_account(&self) -> Result<Option<Account>> {
        let Some(bytes) = self.value(ACCOUNT).await? else { return Ok(None) };
        let pickle: PickledAccount = from_bytes(&bytes)?;
        let account = Account::from_pickle(pickle)?;
        self.set_static_account(&account);
        Ok(Some(account))
    }

    async fn load_identity(&self) -> Result<Option<PrivateCrossSigningIdentity>> {
        let Some(bytes) = self.value(PRIVATE_IDENTITY).await? else { return Ok(None) };
        let pickle: PickledCrossSigningIdentity = from_bytes(&bytes)?;
        PrivateCrossSigningIdentity::from_pickle(pickle)
            .map(Some)
            .map_err(|_| CryptoStoreError::UnpicklingError)
    }

    async fn save_pending_changes(&self, changes: PendingChanges) -> Result<()> {
        let _guard = self.save_lock.lock().await;
        if let Some(account) = changes.account {
            self.set_value(ACCOUNT, &to_bytes(&account.pickle())?).await?;
            self.set_static_account(&account);
        }
        Ok(())
    }

    async fn save_changes(&self, changes: Changes) -> Result<()> {
        let _guard = self.save_lock.lock().await;
        let inbound = changes.inbound_group_sessions.clone();
        let devices = &changes.devices;
        let device_users: Vec<String> = devices
            .new
            .iter()
            .chain(&devices.changed)
            .chain(&devices.deleted)
            .map(|d| d.user_id().to_string())
            .collect();
        let rows = ChangeRows::of(changes).await?;
        with_pool!(self.store, |pool| {
            let mut conn = pool.acquire().await.map_err(backend)?;
            let mut tx = conn.begin_tx().await.map_err(backend)?;
            each!(tx, UPSERT_VALUE, &rows.values, |(name, value)| *name, value);
            each!(
                tx,
                "INSERT INTO mx_crypto_olm_session (sender_key, session_id, value) \
                 VALUES ($1, $2, $3) ON CONFLICT (sender_key, session_id) \
                 DO UPDATE SET value = excluded.value",
                &rows.sessions,
                |(key, id, value)| key,
                id,
                value
            );
            each!(
                tx,
                "INSERT INTO mx_crypto_olm_hash (sender_key, hash) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
                &rows.hashes,
                |(key, hash)| key,
                hash
            );
            each!(
                tx,
                UPSERT_INBOUND,
                &rows.inbound,
                |(room, id, key, kind, value)| room,
                id,
                key,
                kind,
                None::<&str>,
                value,
                crate::store::now_ms()
            );
            each!(
                tx,
                "INSERT INTO mx_crypto_outbound_session (room_id, value) VALUES ($1, $2) \
                 ON CONFLICT (room_id) DO UPDATE SET value = excluded.value",
                &rows.outbound,
                |(room, value)| room,
                value
            );
            each!(
                tx,
                "INSERT INTO mx_crypto_device (user_id, device_id, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, device_id) DO UPDATE SET value = excluded.value",
                &rows.devices,
                |(user, device, value)| user,
                device,
                value
            );
            each!(
                tx,
                "DELETE FROM mx_crypto_device WHERE user_id = $1 AND device_id = $2",
                &rows.deleted_devices,
                |(user, device)| user,
                device
            );
            each!(
                tx,
                "INSERT INTO mx_crypto_identity (user_id, value) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET value = excluded.value",
                &rows.identities,
                |(user, value)| user,
                value
            );
            // A new request for the same key or secret replaces the old one.
            for (id, info, sent, value) in &rows.requests {
                sqlx::query(
                    "DELETE FROM mx_crypto_secret_request WHERE info = $1 AND request_id <> $2",
                )
                .bind(info)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
                sqlx::query(
                    "INSERT INTO mx_crypto_secret_request (request_id, info, sent_out, value) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO UPDATE SET \
                     info = excluded.info, sent_out = excluded.sent_out, value = excluded.value",
                )
                .bind(id)
                .bind(info)
                .bind(sent)
                .bind(value)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            }
            each!(
                tx,
                "INSERT INTO mx_crypto_secret_inbox (secret_name, value) VALUES ($1, $2)",
                &rows.secrets,
                |(name, value)| name,
                value
            );
            each!(
                tx,
                "INSERT INTO mx_crypto_withheld (room_id, session_id, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (room_id, session_id) DO UPDATE SET value = excluded.value",
                &rows.withheld,
                |(room, id, value)| room,
                id,
                value
            );
            each!(
                tx,
                "INSERT INTO mx_crypto_room_settings (room_id, value) VALUES ($1, $2) \
                 ON CONFLICT (room_id) DO UPDATE SET value = excluded.value",
                &rows.room_settings,
                |(room, value)| room,
                value
            );
            each!(
                tx,
                "INSERT INTO mx_crypto_key_bundle (room_id, sender_user, value) \
                 VALUES ($1, $2, $3) ON CONFLICT (room_id, sender_user) \
                 DO UPDATE SET value = excluded.value",
                &rows.bundles,
                |(room, user, value)| room,
                user,
                value
            );
            each!(
                tx,
                "INSERT INTO mx_crypto_keys_downloaded (room_id) VALUES ($1) \
                 ON CONFLICT DO NOTHING",
                &rows.downloaded,
                |room| room
            );
            for (room, details) in &rows.pending_bundles {
                let q = match details {
                    Some(value) => sqlx::query(
                        "INSERT INTO mx_crypto_pending_bundle (room_id, value) VALUES ($1, $2) \
                         ON CONFLICT (room_id) DO UPDATE SET value = excluded.value",
                    )
                    .bind(room)
                    .bind(value),
                    None => sqlx::query("DELETE FROM mx_crypto_pending_bundle WHERE room_id = $1")
                        .bind(room),
                };
                q.execute(&mut *tx).await.map_err(backend)?;
            }
            tx.commit().await.map_err(backend)
        })?;
        let mut cache = self.cache();
        cache.saves += 1;
        for session in &inbound {
            cache.put_inbound(session);
        }
        for user in &device_users {
            cache.devices.remove(user);
        }
        Ok(())
    }

    async fn save_inbound_group_sessions(
        &self,
        sessions: Vec<InboundGroupSession>,
        backed_up_to_version: Option<&str>,
    ) -> Result<()> {
        self.save_inbound(&sessions, backed_up_to_version).await
    }

    async fn get_sessions(&self, sender_key: &str) -> Result<Option<Vec<Session>>> {
        let rows = self
            .blobs(
                "SELECT value FROM mx_crypto_olm_session WHERE sender_key = $1",
                sender_key,
                None,
            )
            .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let keys = self.get_own_device().await?.as_device_keys().clone();
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            let pickle: PickledSession = from_bytes(&row)?;
            sessions.push(
                Session::from_pickle(keys.clone(), pickle)
                    .map_err(|_| CryptoStoreError::UnpicklingError)?,
            );
        }
        Ok(Some(sessions))
    }

    async fn get_inbound_group_session(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Option<InboundGroupSession>> {
        let key = (room_id.to_string(), session_id.to_owned());
        let saves = {
            let cache = self.cache();
            if let Some((session, at)) = cache.inbound.get(&key)
                && at.elapsed() < CACHE_TTL
            {
                return Ok(Some(session.clone()));
            }
            cache.saves
        };
        let sql = "SELECT value FROM mx_crypto_inbound_session WHERE room_id = $1 \
                   AND session_id = $2";
        let session = self.blob(sql, room_id.as_str(), Some(session_id)).await?;
        let session = session.map(|v| inbound_from(&v)).transpose()?;
        let mut cache = self.cache();
        if cache.saves == saves
            && let Some(session) = &session
        {
            cache.put_inbound(session);
        }
        Ok(session)
    }

    async fn get_withheld_info(
        &self,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Option<RoomKeyWithheldEntry>> {
        let sql = "SELECT value FROM mx_crypto_withheld WHERE room_id = $1 AND session_id = $2";
        self.blob(sql, room_id.as_str(), Some(session_id))
            .await?
            .map(|v| from_bytes(&v))
            .transpose()
    }

    async fn get_withheld_sessions_by_room_id(
        &self,
        room_id: &RoomId,
    ) -> Result<Vec<RoomKeyWithheldEntry>> {
        let sql = "SELECT value FROM mx_crypto_withheld WHERE room_id = $1";
        self.blobs(sql, room_id.as_str(), None).await?.iter().map(|v| from_bytes(v)).collect()
    }

    async fn get_inbound_group_sessions(&self) -> Result<Vec<InboundGroupSession>> {
        inbound_from_rows(self.all_blobs("SELECT value FROM mx_crypto_inbound_session").await?)
    }

    async fn inbound_group_session_counts(
        &self,
        backup_version: Option<&str>,
    ) -> Result<RoomKeyCounts> {
        let (total, backed_up): (i64, i64) = with_reader!(self.store, |pool| {
            sqlx::query_as(
                "SELECT count(*), count(CASE WHEN backed_up_to = $1 THEN 1 END) \
                 FROM mx_crypto_inbound_session",
            )
            .bind(backup_version)
            .fetch_one(pool)
            .await
            .map_err(backend)
        })?;
        Ok(RoomKeyCounts { total: count(total), backed_up: count(backed_up) })
    }

    async fn get_inbound_group_sessions_by_room_id(
        &self,
        room_id: &RoomId,
    ) -> Result<Vec<InboundGroupSession>> {
        let sql = "SELECT value FROM mx_crypto_inbound_session WHERE room_id = $1";
        inbound_from_rows(self.blobs(sql, room_id.as_str(), None).await?)
    }

    async fn get_inbound_group_sessions_for_device_batch(
        &self,
        curve_key: Curve25519PublicKey,
        sender_data_type: SenderDataType,
        after_session_id: Option<String>,
        limit_to: usize,
    ) -> Result<Vec<InboundGroupSession>> {
        // Session IDs compare bytewise on both backends (PostgreSQL's column has collation C).
        let rows: Vec<Vec<u8>> = with_reader!(self.store, |pool| {
            sqlx::query_scalar(
                "SELECT value FROM mx_crypto_inbound_session WHERE sender_key = $1 \
                 AND sender_data_type = $2 AND session_id > $3 ORDER BY session_id LIMIT $4",
            )
            .bind(curve_key.to_base64())
            .bind(sender_data_type as i64)
            .bind(after_session_id.unwrap_or_default())
            .bind(limit(limit_to))
            .fetch_all(pool)
            .await
            .map_err(backend)
        })?;
        inbound_from_rows(rows)
    }

    async fn inbound_group_sessions_for_backup(
        &self,
        backup_version: &str,
        limit_to: usize,
    ) -> Result<Vec<InboundGroupSession>> {
        let rows: Vec<Vec<u8>> = with_reader!(self.store, |pool| {
            sqlx::query_scalar(
                "SELECT value FROM mx_crypto_inbound_session \
                 WHERE backed_up_to IS NULL OR backed_up_to <> $1 LIMIT $2",
            )
            .bind(backup_version)
            .bind(limit(limit_to))
            .fetch_all(pool)
            .await
            .map_err(backend)
        })?;
        inbound_from_rows(rows)
    }

    async fn mark_inbound_group_sessions_as_backed_up(
        &self,
        backup_version: &str,
        room_and_session_ids: &[(&RoomId, &str)],
    ) -> Result<()> {
        let mut sessions = Vec::new();
        for &(room_id, session_id) in room_and_session_ids {
            if let Some(session) = self.get_inbound_group_session(room_id, session_id).await? {
                session.mark_as_backed_up();
                sessions.push(session);
            }
        }
        self.save_inbound(&sessions, Some(backup_version)).await
    }

    async fn reset_backup_state(&self) -> Result<()> {
        // Each session remembers the backup version it went to: a new version finds none of
        // them backed up, so nothing needs resetting.
        Ok(())
    }

    async fn load_backup_keys(&self) -> Result<BackupKeys> {
        let decryption_key: Option<BackupDecryptionKey> =
            self.value(BACKUP_KEY).await?.map(|v| from_bytes(&v)).transpose()?;
        let backup_version: Option<String> =
            self.value(BACKUP_VERSION).await?.map(|v| from_bytes(&v)).transpose()?;
        Ok(BackupKeys { decryption_key, backup_version })
    }

    async fn load_dehydrated_device_pickle_key(&self) -> Result<Option<DehydratedDeviceKey>> {
        self.value(DEHYDRATION_KEY).await?.map(|v| from_bytes(&v)).transpose()
    }

    async fn delete_dehydrated_device_pickle_key(&self) -> Result<()> {
        self.delete_value(DEHYDRATION_KEY).await
    }

    async fn get_outbound_group_session(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<OutboundGroupSession>> {
        let sql = "SELECT value FROM mx_crypto_outbound_session WHERE room_id = $1";
        let Some(bytes) = self.blob(sql, room_id.as_str(), None).await? else { return Ok(None) };
        let account = self.static_account()?;
        let pickle: PickledOutboundGroupSession = from_bytes(&bytes)?;
        Ok(Some(OutboundGroupSession::from_pickle(
            account.device_id,
            account.identity_keys,
            pickle,
        )?))
    }

    async fn load_tracked_users(&self) -> Result<Vec<TrackedUser>> {
        let rows: Vec<(String, i64)> = with_reader!(self.store, |pool| {
            sqlx::query_as("SELECT user_id, dirty FROM mx_crypto_tracked_user")
                .fetch_all(pool)
                .await
                .map_err(backend)
        })?;
        rows.into_iter()
            .map(|(user, dirty)| Ok(TrackedUser { user_id: user.try_into()?, dirty: dirty != 0 }))
            .collect()
    }

    async fn save_tracked_users(&self, users: &[(&UserId, bool)]) -> Result<()> {
        with_pool!(self.store, |pool| {
            let mut conn = pool.acquire().await.map_err(backend)?;
            let mut tx = conn.begin_tx().await.map_err(backend)?;
            each!(
                tx,
                "INSERT INTO mx_crypto_tracked_user (user_id, dirty) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET dirty = excluded.dirty",
                users,
                |(user, dirty)| user.as_str(),
                i64::from(*dirty)
            );
            tx.commit().await.map_err(backend)
        })
    }

    async fn get_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Option<DeviceData>> {
        let sql = "SELECT value FROM mx_crypto_device WHERE user_id = $1 AND device_id = $2";
        self.blob(sql, user_id.as_str(), Some(device_id.as_str()))
            .await?
            .map(|v| from_bytes(&v))
            .transpose()
    }

    // The trait's own map type.
    #[allow(clippy::disallowed_types)]
    async fn get_user_devices(
        &self,
        user_id: &UserId,
    ) -> Result<std::collections::HashMap<OwnedDeviceId, DeviceData>> {
        let saves = {
            let cache = self.cache();
            if let Some((devices, at)) = cache.devices.get(user_id.as_str())
                && at.elapsed() < CACHE_TTL
            {
                return Ok(devices.clone());
            }
            cache.saves
        };
        let sql = "SELECT value FROM mx_crypto_device WHERE user_id = $1";
        let devices: std::collections::HashMap<OwnedDeviceId, DeviceData> = self
            .blobs(sql, user_id.as_str(), None)
            .await?
            .iter()
            .map(|v| {
                let device: DeviceData = from_bytes(v)?;
                Ok((device.device_id().to_owned(), device))
            })
            .collect::<Result<_>>()?;
        let mut cache = self.cache();
        if cache.saves == saves {
            if cache.devices.len() >= CACHE_ENTRIES {
                cache.devices.clear();
            }
            cache.devices.insert(user_id.to_string(), (devices.clone(), Instant::now()));
        }
        Ok(devices)
    }

    async fn get_own_device(&self) -> Result<DeviceData> {
        let account = self.static_account()?;
        self.get_device(&account.user_id, &account.device_id)
            .await?
            .ok_or(CryptoStoreError::AccountUnset)
    }

    async fn get_user_identity(&self, user_id: &UserId) -> Result<Option<UserIdentityData>> {
        let sql = "SELECT value FROM mx_crypto_identity WHERE user_id = $1";
        self.blob(sql, user_id.as_str(), None).await?.map(|v| from_bytes(&v)).transpose()
    }

    async fn is_message_known(&self, message_hash: &OlmMessageHash) -> Result<bool> {
        let sql = "SELECT count(*) FROM mx_crypto_olm_hash WHERE sender_key = $1 AND hash = $2";
        self.exists(sql, &message_hash.sender_key, Some(&message_hash.hash)).await
    }

    async fn get_outgoing_secret_requests(
        &self,
        request_id: &TransactionId,
    ) -> Result<Option<GossipRequest>> {
        let sql = "SELECT value FROM mx_crypto_secret_request WHERE request_id = $1";
        self.blob(sql, request_id.as_str(), None).await?.map(|v| from_bytes(&v)).transpose()
    }

    async fn get_secret_request_by_info(
        &self,
        secret_info: &SecretInfo,
    ) -> Result<Option<GossipRequest>> {
        let sql = "SELECT value FROM mx_crypto_secret_request WHERE info = $1";
        self.blob(sql, &secret_info.as_key(), None).await?.map(|v| from_bytes(&v)).transpose()
    }

    async fn get_unsent_secret_requests(&self) -> Result<Vec<GossipRequest>> {
        self.all_blobs("SELECT value FROM mx_crypto_secret_request WHERE sent_out = 0")
            .await?
            .iter()
            .map(|v| from_bytes(v))
            .collect()
    }

    async fn delete_outgoing_secret_requests(&self, request_id: &TransactionId) -> Result<()> {
        let sql = "DELETE FROM mx_crypto_secret_request WHERE request_id = $1";
        self.execute(sql, request_id.as_str(), None).await
    }

    async fn get_secrets_from_inbox(
        &self,
        secret_name: &SecretName,
    ) -> Result<Vec<Zeroizing<String>>> {
        let sql = "SELECT value FROM mx_crypto_secret_inbox WHERE secret_name = $1 ORDER BY id";
        self.blobs(sql, secret_name.as_str(), None)
            .await?
            .iter()
            .map(|v| Ok(Zeroizing::new(from_bytes::<String>(v)?)))
            .collect()
    }

    async fn delete_secrets_from_inbox(&self, secret_name: &SecretName) -> Result<()> {
        let sql = "DELETE FROM mx_crypto_secret_inbox WHERE secret_name = $1";
        self.execute(sql, secret_name.as_str(), None).await
    }

    async fn get_room_settings(&self, room_id: &RoomId) -> Result<Option<RoomSettings>> {
        let sql = "SELECT value FROM mx_crypto_room_settings WHERE room_id = $1";
        self.blob(sql, room_id.as_str(), None).await?.map(|v| from_bytes(&v)).transpose()
    }

    async fn get_received_room_key_bundle_data(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<StoredRoomKeyBundleData>> {
        let sql = "SELECT value FROM mx_crypto_key_bundle WHERE room_id = $1 AND sender_user = $2";
        self.blob(sql, room_id.as_str(), Some(user_id.as_str()))
            .await?
            .map(|v| from_bytes(&v))
            .transpose()
    }

    async fn get_pending_key_bundle_details_for_room(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<RoomPendingKeyBundleDetails>> {
        let sql = "SELECT value FROM mx_crypto_pending_bundle WHERE room_id = $1";
        self.blob(sql, room_id.as_str(), None).await?.map(|v| from_bytes(&v)).transpose()
    }

    async fn get_all_rooms_pending_key_bundles(&self) -> Result<Vec<RoomPendingKeyBundleDetails>> {
        self.all_blobs("SELECT value FROM mx_crypto_pending_bundle")
            .await?
            .iter()
            .map(|v| from_bytes(v))
            .collect()
    }

    async fn has_downloaded_all_room_keys(&self, room_id: &RoomId) -> Result<bool> {
        let sql = "SELECT count(*) FROM mx_crypto_keys_downloaded WHERE room_id = $1";
        self.exists(sql, room_id.as_str(), None).await
    }

    async fn get_custom_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.value(&format!("{CUSTOM}{key}")).await
    }

    async fn set_custom_value(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.set_value(&format!("{CUSTOM}{key}"), &value).await
    }

    async fn remove_custom_value(&self, key: &str) -> Result<()> {
        self.delete_value(&format!("{CUSTOM}{key}")).await
    }

    async fn try_take_leased_lock(
        &self,
        lease_duration_ms: u32,
        key: &str,
        holder: &str,
    ) -> Result<Option<u64>> {
        with_pool!(self.store, |pool| {
            let mut conn = pool.acquire().await.map_err(backend)?;
            let mut tx = conn.begin_tx().await.map_err(backend)?;
            let now = now_ms();
            let expires = now + i64::from(lease_duration_ms);
            let current: Option<(String, i64, i64)> = sqlx::query_as(
                "SELECT holder, expires_at, generation FROM mx_crypto_lease WHERE name = $1",
            )
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
            // The holder extends its lease; anyone else takes it only once it expired, as the
            // next generation.
            let generation = match current {
                None => 1,
                Some((current, _, generation)) if current == holder => generation,
                Some((_, expires_at, generation)) if expires_at < now => generation + 1,
                Some(_) => return Ok(None),
            };
            sqlx::query(
                "INSERT INTO mx_crypto_lease (name, holder, expires_at, generation) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET \
                 holder = excluded.holder, expires_at = excluded.expires_at, \
                 generation = excluded.generation",
            )
            .bind(key)
            .bind(holder)
            .bind(expires)
            .bind(generation)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(Some(u64::try_from(generation).unwrap_or(0)))
        })
    }

    async fn next_batch_token(&self) -> Result<Option<String>> {
        self.value(NEXT_BATCH).await?.map(|v| from_bytes(&v)).transpose()
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }

    async fn reopen(&self) -> Result<()> {
        Ok(())
    }

    async fn get_size(&self) -> Result<Option<usize>> {
        Ok(None)
    }
}
