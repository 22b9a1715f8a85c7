//! Token-signing keys: generated here, sealed under the root key in the database, loaded into
//! a key ring in memory.
//!
//! Rotation retires the active key (it stops signing) but keeps publishing it in the JWKS and
//! accepting its tokens until every token it signed has expired; only then is it deleted.
//! Several nodes share the table: a node reloads the ring when it meets an unknown `kid`
//! (another node rotated) and before signing when its copy is older than a minute.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::Row;

use crate::jws::{ES256, Jwk, JwkSet, SigningKey, VerifyingKey};
use crate::tokens::{CLOCK_SKEW_SECONDS, TOKEN_LIFETIME_SECONDS};
use crate::{Identity, IdentityError, new_guid, now_unix};

/// The root-key purpose signing keys are sealed under; the kid is the associated data, so a
/// sealed key cannot be moved to another row.
const SEALING_PURPOSE: &str = "identity/token-signing-key";

/// How stale the in-memory ring may get before signing reloads it.
const RELOAD_BEFORE_SIGNING_AFTER: Duration = Duration::from_secs(60);

/// The shortest interval between reloads triggered by unknown kids, so that tokens with made-up
/// kids cannot turn into one database read each.
const RELOAD_ON_UNKNOWN_KID_AFTER: Duration = Duration::from_secs(1);

/// The keys in memory. A std `RwLock`: held only to swap or clone an `Arc`, never across an
/// await.
#[derive(Default)]
pub(crate) struct KeyRing {
    state: RwLock<Option<Arc<LoadedKeys>>>,
}

pub(crate) struct LoadedKeys {
    active: Option<Arc<SigningKey>>,
    published: HashMap<String, (Jwk, VerifyingKey)>,
    loaded_at: Instant,
}

impl KeyRing {
    fn current(&self) -> Option<Arc<LoadedKeys>> {
        match self.state.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, keys: LoadedKeys) -> Arc<LoadedKeys> {
        let keys = Arc::new(keys);
        match self.state.write() {
            Ok(mut guard) => *guard = Some(keys.clone()),
            Err(poisoned) => *poisoned.into_inner() = Some(keys.clone()),
        }
        keys
    }
}

impl Identity {
    /// Loads the signing keys, creating the first one if there is none.
    pub(crate) async fn ensure_signing_key(&self) -> Result<(), IdentityError> {
        let keys = self.reload_signing_keys().await?;
        if keys.active.is_some() {
            return Ok(());
        }
        let mut transaction = self.database().begin_write().await?;
        let active: Option<String> =
            sqlx::query("SELECT kid FROM identity_signing_keys WHERE retired_at IS NULL")
                .fetch_optional(&mut *transaction)
                .await?
                .map(|row| row.try_get(0))
                .transpose()?;
        if active.is_none() {
            self.insert_new_signing_key(&mut transaction).await?;
        }
        transaction.commit().await?;
        self.reload_signing_keys().await?;
        Ok(())
    }

    /// Retires the active signing key and starts signing with a new one. Tokens signed by the
    /// old key stay valid until they expire; keys retired longer ago than a token lives are
    /// deleted.
    pub async fn rotate_signing_key(&self) -> Result<(), IdentityError> {
        let now = now_unix();
        let mut transaction = self.database().begin_write().await?;
        sqlx::query("UPDATE identity_signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
            .bind(now)
            .execute(&mut *transaction)
            .await?;
        sqlx::query(
            "DELETE FROM identity_signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1",
        )
        .bind(now - TOKEN_LIFETIME_SECONDS - CLOCK_SKEW_SECONDS)
        .execute(&mut *transaction)
        .await?;
        self.insert_new_signing_key(&mut transaction).await?;
        transaction.commit().await?;
        self.reload_signing_keys().await?;
        tracing::info!("token-signing key rotated");
        Ok(())
    }

    /// The published verification keys (the JWKS document).
    pub async fn jwks(&self) -> Result<JwkSet, IdentityError> {
        let keys = match self.inner.signing_keys.current() {
            Some(keys) if keys.loaded_at.elapsed() < RELOAD_BEFORE_SIGNING_AFTER => keys,
            _ => self.reload_signing_keys().await?,
        };
        let mut published: Vec<Jwk> = keys
            .published
            .values()
            .map(|(jwk, _)| jwk.clone())
            .collect();
        published.sort_by(|left, right| left.kid.cmp(&right.kid));
        Ok(JwkSet { keys: published })
    }

    /// The key that signs new tokens.
    pub(crate) async fn active_signing_key(&self) -> Result<Arc<SigningKey>, IdentityError> {
        let keys = match self.inner.signing_keys.current() {
            Some(keys) if keys.loaded_at.elapsed() < RELOAD_BEFORE_SIGNING_AFTER => keys,
            _ => self.reload_signing_keys().await?,
        };
        if let Some(active) = &keys.active {
            return Ok(active.clone());
        }
        self.ensure_signing_key().await?;
        self.inner
            .signing_keys
            .current()
            .and_then(|keys| keys.active.clone())
            .ok_or(IdentityError::Corrupt("no active signing key"))
    }

    /// The verification key with id `kid`, reloading once (rate-limited) when it is unknown.
    pub(crate) async fn platform_verifying_key(
        &self,
        kid: &str,
    ) -> Result<Option<VerifyingKey>, IdentityError> {
        let keys = match self.inner.signing_keys.current() {
            Some(keys) => keys,
            None => self.reload_signing_keys().await?,
        };
        if let Some((_, key)) = keys.published.get(kid) {
            return Ok(Some(key.clone()));
        }
        if keys.loaded_at.elapsed() < RELOAD_ON_UNKNOWN_KID_AFTER {
            return Ok(None);
        }
        let keys = self.reload_signing_keys().await?;
        Ok(keys.published.get(kid).map(|(_, key)| key.clone()))
    }

    async fn insert_new_signing_key(
        &self,
        transaction: &mut hds_db::WriteTransaction,
    ) -> Result<(), IdentityError> {
        let kid = new_guid();
        let (_, pkcs8) = SigningKey::generate(kid.clone()).map_err(|_| IdentityError::Crypto)?;
        let sealed = self
            .inner
            .root_key
            .seal(SEALING_PURPOSE, kid.as_bytes(), &pkcs8);
        sqlx::query(
            "INSERT INTO identity_signing_keys (kid, algorithm, sealed_private_key, created_at, retired_at) VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(&kid)
        .bind(ES256)
        .bind(STANDARD.encode(sealed))
        .bind(now_unix())
        .execute(&mut **transaction)
        .await?;
        Ok(())
    }

    async fn reload_signing_keys(&self) -> Result<Arc<LoadedKeys>, IdentityError> {
        let rows = sqlx::query(
            "SELECT kid, sealed_private_key, created_at, retired_at FROM identity_signing_keys",
        )
        .fetch_all(self.database().pool())
        .await?;
        let oldest_still_valid = now_unix() - TOKEN_LIFETIME_SECONDS - CLOCK_SKEW_SECONDS;
        let mut active: Option<(i64, Arc<SigningKey>)> = None;
        let mut published = HashMap::new();
        for row in rows {
            let kid: String = row.try_get(0)?;
            let sealed: String = row.try_get(1)?;
            let created_at: i64 = row.try_get(2)?;
            let retired_at: Option<i64> = row.try_get(3)?;
            if retired_at.is_some_and(|retired_at| retired_at < oldest_still_valid) {
                continue;
            }
            let sealed = STANDARD
                .decode(sealed)
                .map_err(|_| IdentityError::Corrupt("sealed signing key is not base64"))?;
            let pkcs8 = self
                .inner
                .root_key
                .open(SEALING_PURPOSE, kid.as_bytes(), &sealed)?;
            let key = SigningKey::from_pkcs8(kid.clone(), &pkcs8)
                .map_err(|_| IdentityError::Corrupt("sealed signing key is not a P-256 key"))?;
            published.insert(kid, (key.public_jwk(), key.verifying_key()));
            if retired_at.is_none()
                && active
                    .as_ref()
                    .is_none_or(|(newest, _)| created_at > *newest)
            {
                active = Some((created_at, Arc::new(key)));
            }
        }
        Ok(self.inner.signing_keys.replace(LoadedKeys {
            active: active.map(|(_, key)| key),
            published,
            loaded_at: Instant::now(),
        }))
    }
}
