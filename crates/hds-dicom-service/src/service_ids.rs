//! The internal id of each DICOM service: what its keyring, index rows, blobs and key-access
//! state are keyed by.
//!
//! A service's data belongs to its full ARM resource id, not to its name: two resources named
//! `{workspace}/{service}` in two groups must never share a keyring. The resource id changes
//! when the service moves, while the data must stay, so the data is keyed by an id assigned
//! once (a random UUID at creation) and the resource id maps to it in `dicom_services`, whose
//! unique constraints decide concurrent claims. Services created before this table existed
//! keep the `{workspace}/{service}` key their data is stored under, claimed at start-up by the
//! resource that exists then (and by no other: the id is a primary key).

use hds_db::{Database, Migration};
use sqlx::Row;

/// The component name of these migrations in the shared database.
pub const COMPONENT: &str = "dicom-service-ids";

const SCHEMA: &str = "
CREATE TABLE dicom_services (
    service_id TEXT PRIMARY KEY,
    resource_key TEXT NOT NULL UNIQUE
);
";

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "the internal id of each DICOM service, mapped from its resource id",
    sqlite: SCHEMA,
    postgres: SCHEMA,
}];

/// Why a service id could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceIdError {
    /// The database failed.
    #[error("service id database error: {0}")]
    Database(#[from] hds_db::DbError),
    /// A query failed.
    #[error("service id query failed: {0}")]
    Query(#[from] sqlx::Error),
    /// No id could be claimed (the mapping changed under every attempt).
    #[error("no service id could be claimed for the resource")]
    Contended,
}

/// How many random ids a claim tries after the preferred one.
const CLAIM_ATTEMPTS: usize = 3;

/// The mapping from resource ids to service ids.
#[derive(Debug, Clone)]
pub struct ServiceIds {
    database: Database,
}

/// A service id, and whether this call assigned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The service's id.
    pub service_id: String,
    /// Whether the id was assigned just now (so a refused creation should release it).
    pub assigned: bool,
}

impl ServiceIds {
    /// Opens the mapping, applying its migrations.
    pub async fn open(database: Database) -> Result<ServiceIds, ServiceIdError> {
        database.migrate(COMPONENT, MIGRATIONS).await?;
        Ok(ServiceIds { database })
    }

    /// The id of the service `resource_id` (any case), if it has one.
    pub async fn get(&self, resource_id: &str) -> Result<Option<String>, ServiceIdError> {
        let row = sqlx::query("SELECT service_id FROM dicom_services WHERE resource_key = $1")
            .bind(resource_id.to_ascii_lowercase())
            .fetch_optional(self.database.pool())
            .await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    /// The id of `resource_id`, assigning a new random one if it has none.
    pub async fn claim(&self, resource_id: &str) -> Result<Claimed, ServiceIdError> {
        self.claim_preferring(resource_id, None).await
    }

    /// The id of `resource_id`; if it has none, `preferred` when no other service holds it (the
    /// key a service's data was stored under before ids existed), else a new random one.
    pub async fn claim_preferring(
        &self,
        resource_id: &str,
        preferred: Option<&str>,
    ) -> Result<Claimed, ServiceIdError> {
        // A fresh UUID collides with nobody: after the preferred id, one more is enough unless
        // the row is deleted concurrently, which a few rounds outlast.
        let candidates = preferred.map(str::to_owned).into_iter().chain(
            std::iter::repeat_with(|| uuid::Uuid::new_v4().to_string()).take(CLAIM_ATTEMPTS),
        );
        let resource_key = resource_id.to_ascii_lowercase();
        for candidate in candidates {
            let mut transaction = self.database.begin_write().await?;
            let inserted = sqlx::query(
                "INSERT INTO dicom_services (service_id, resource_key) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&candidate)
            .bind(&resource_key)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            let held: Option<String> =
                sqlx::query("SELECT service_id FROM dicom_services WHERE resource_key = $1")
                    .bind(&resource_key)
                    .fetch_optional(&mut *transaction)
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()?;
            transaction.commit().await?;
            if let Some(service_id) = held {
                return Ok(Claimed {
                    assigned: inserted == 1 && service_id == candidate,
                    service_id,
                });
            }
            // The candidate is another resource's id: try the next one.
        }
        Err(ServiceIdError::Contended)
    }

    /// The service moved: its id now belongs to `new_resource_id`.
    pub async fn moved(
        &self,
        old_resource_id: &str,
        new_resource_id: &str,
    ) -> Result<(), ServiceIdError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query("UPDATE dicom_services SET resource_key = $2 WHERE resource_key = $1")
            .bind(old_resource_id.to_ascii_lowercase())
            .bind(new_resource_id.to_ascii_lowercase())
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Forgets the service `resource_id` (deleted, or its creation refused).
    pub async fn release(&self, resource_id: &str) -> Result<(), ServiceIdError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query("DELETE FROM dicom_services WHERE resource_key = $1")
            .bind(resource_id.to_ascii_lowercase())
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(())
    }
}
