//! The key-access states, kept in the shared database (component `cmk`) so that a restart
//! neither clears a latched `RequiresUpdate` nor restarts the 30-minute clock, and so that
//! every node on one database applies its probes to one state (one latch, one `since`).

use hds_db::{Database, DbError, Migration};
use sqlx::Row;
use time::OffsetDateTime;

use crate::monitor::KeyAccessState;
use crate::validate::{ValidationCode, ValidationError};

/// The component name of this crate's migrations.
pub const MIGRATION_COMPONENT: &str = "cmk";

/// This crate's migrations. Released ones are never edited: add new ones.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "key access state per DICOM service",
    sqlite: include_str!("../migrations/sqlite/0001_key_access.sql"),
    postgres: include_str!("../migrations/postgres/0001_key_access.sql"),
}];

/// A persisted state and the key version last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredState {
    pub(crate) state: KeyAccessState,
    pub(crate) latest_kid: Option<String>,
}

/// The `cmk_key_access` table.
#[derive(Debug, Clone)]
pub(crate) struct StateStore {
    database: Database,
}

fn to_millis(moment: OffsetDateTime) -> i64 {
    (moment.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_millis(millis: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl StateStore {
    /// The store on `database`, with this crate's migrations applied.
    pub(crate) async fn open(database: Database) -> Result<StateStore, DbError> {
        database.migrate(MIGRATION_COMPONENT, MIGRATIONS).await?;
        Ok(StateStore { database })
    }

    pub(crate) async fn load(&self, service_key: &str) -> Result<Option<StoredState>, DbError> {
        let row = sqlx::query(
            "SELECT state, since_ms, reason_code, reason_message, latest_kid \
             FROM cmk_key_access WHERE service_key = $1",
        )
        .bind(service_key)
        .fetch_optional(self.database.pool())
        .await?;
        Ok(row.map(|row| stored_from_row(&row)).transpose()?)
    }

    /// Reads the state every node shares, lets `next` compute the new one from it and
    /// stores that, in one write transaction (the row locked on PostgreSQL), so that two nodes
    /// probing at once apply their outcomes one after the other. Returns what was stored before
    /// (`None`: no row yet) and after.
    pub(crate) async fn update(
        &self,
        service_key: &str,
        now: OffsetDateTime,
        next: impl FnOnce(Option<&StoredState>) -> StoredState,
    ) -> Result<(Option<StoredState>, StoredState), DbError> {
        let mut transaction = self.database.begin_write().await?;
        let lock = match self.database.backend() {
            hds_db::Backend::Postgres => " FOR UPDATE",
            hds_db::Backend::Sqlite => "",
        };
        let row = sqlx::query(&format!(
            "SELECT state, since_ms, reason_code, reason_message, latest_kid \
             FROM cmk_key_access WHERE service_key = $1{lock}"
        ))
        .bind(service_key)
        .fetch_optional(&mut *transaction)
        .await?;
        let before = row.map(|row| stored_from_row(&row)).transpose()?;
        let after = next(before.as_ref());
        if before.as_ref() != Some(&after) {
            upsert(&mut transaction, service_key, &after, now).await?;
        }
        transaction.commit().await?;
        Ok((before, after))
    }

    pub(crate) async fn delete(&self, service_key: &str) -> Result<(), DbError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query("DELETE FROM cmk_key_access WHERE service_key = $1")
            .bind(service_key)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }
}

fn stored_from_row(row: &sqlx::any::AnyRow) -> Result<StoredState, sqlx::Error> {
    let state_name: String = row.try_get("state")?;
    let since: Option<i64> = row.try_get("since_ms")?;
    let reason_code: Option<String> = row.try_get("reason_code")?;
    let reason_message: Option<String> = row.try_get("reason_message")?;
    let latest_kid: Option<String> = row.try_get("latest_kid")?;
    let reason = ValidationError::new(
        reason_code
            .as_deref()
            .and_then(ValidationCode::parse)
            .unwrap_or(ValidationCode::KeyVaultProbeFailed),
        reason_message.unwrap_or_default(),
    );
    let since = from_millis(since.unwrap_or_default());
    let state = match state_name.as_str() {
        "KeyAccessLost" => KeyAccessState::KeyAccessLost { since, reason },
        "RequiresUpdate" => KeyAccessState::RequiresUpdate { since, reason },
        _ => KeyAccessState::Healthy,
    };
    Ok(StoredState { state, latest_kid })
}

async fn upsert(
    connection: &mut sqlx::AnyConnection,
    service_key: &str,
    stored: &StoredState,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    let (since, reason) = match &stored.state {
        KeyAccessState::Healthy => (None, None),
        KeyAccessState::KeyAccessLost { since, reason }
        | KeyAccessState::RequiresUpdate { since, reason } => {
            (Some(to_millis(*since)), Some(reason))
        }
    };
    sqlx::query(
        "INSERT INTO cmk_key_access \
           (service_key, state, since_ms, reason_code, reason_message, latest_kid, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (service_key) DO UPDATE SET \
           state = excluded.state, since_ms = excluded.since_ms, \
           reason_code = excluded.reason_code, reason_message = excluded.reason_message, \
           latest_kid = excluded.latest_kid, updated_ms = excluded.updated_ms",
    )
    .bind(service_key)
    .bind(stored.state.name())
    .bind(since)
    .bind(reason.map(|reason| reason.code.as_str().to_owned()))
    .bind(reason.map(|reason| reason.message.clone()))
    .bind(stored.latest_kid.clone())
    .bind(to_millis(now))
    .execute(connection)
    .await?;
    Ok(())
}
