//! Workspace names are unique across the whole hds, in every subscription and resource group.
//!
//! In Azure a Healthcare APIs workspace name is part of its services' host names, so it is
//! global; here it is the first segment of the data-plane URL (`/dicom/{workspace}/{service}`),
//! so a second workspace of the same name in another group would answer for, or shadow, the
//! first one's services. The name is claimed in `healthcare_workspace_names`, whose primary key
//! decides concurrent claims atomically (no check-then-insert): of two PUTs of one name in two
//! groups, exactly one gets it and the other answers 409.

use hds_arm::{ArmError, ResourceId};
use hds_db::{Database, Migration};
use http::StatusCode;
use sqlx::Row;
use tokio::sync::OnceCell;

/// The component name of these migrations in the shared database.
pub const COMPONENT: &str = "healthcare-workspace-names";

/// The claims table; the second statement claims the names of workspaces stored before the
/// table existed, oldest first, so an existing data dir keeps its owner of each name.
const SCHEMA: &str = "
CREATE TABLE healthcare_workspace_names (
    name_key TEXT PRIMARY KEY,
    resource_key TEXT NOT NULL
);
INSERT INTO healthcare_workspace_names (name_key, resource_key)
SELECT lower(name), id_key FROM arm_resources
WHERE type_key = 'microsoft.healthcareapis/workspaces'
ORDER BY created_at, id_key
ON CONFLICT (name_key) DO NOTHING;
";

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "workspace names claimed across the whole hds",
    sqlite: SCHEMA,
    postgres: SCHEMA,
}];

/// The claims of workspace names. Its table is created on first use: it reads the ARM
/// store's table, which exists once the control plane is built.
#[derive(Debug)]
pub(crate) struct WorkspaceNames {
    database: Database,
    migrated: OnceCell<()>,
}

/// Whether [`WorkspaceNames::claim`] took a free name or found it held already by `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The name was free and is now `id`'s.
    Taken,
    /// `id` held the name already.
    Held,
}

impl WorkspaceNames {
    pub(crate) fn new(database: Database) -> WorkspaceNames {
        WorkspaceNames {
            database,
            migrated: OnceCell::new(),
        }
    }

    async fn ready(&self) -> Result<(), ArmError> {
        self.migrated
            .get_or_try_init(|| async {
                self.database
                    .migrate(COMPONENT, MIGRATIONS)
                    .await
                    .map_err(|error| ArmError::internal(&error))
            })
            .await
            .map(|_| ())
    }

    /// Claims `id`'s name for `id`, or answers 409 `WorkspaceNameNotAvailable` when another
    /// workspace holds it.
    pub(crate) async fn claim(&self, id: &ResourceId) -> Result<Claim, ArmError> {
        self.ready().await?;
        let name_key = id.name().to_ascii_lowercase();
        let mut transaction = self.database.begin_write().await.map_err(internal)?;
        let inserted = sqlx::query(
            "INSERT INTO healthcare_workspace_names (name_key, resource_key) VALUES ($1, $2) \
             ON CONFLICT (name_key) DO NOTHING",
        )
        .bind(&name_key)
        .bind(id.key())
        .execute(&mut *transaction)
        .await
        .map_err(internal)?
        .rows_affected();
        let holder: String =
            sqlx::query("SELECT resource_key FROM healthcare_workspace_names WHERE name_key = $1")
                .bind(&name_key)
                .fetch_one(&mut *transaction)
                .await
                .and_then(|row| row.try_get(0))
                .map_err(internal)?;
        transaction.commit().await.map_err(internal)?;
        if holder != id.key() {
            return Err(name_not_available(id.name()));
        }
        Ok(if inserted == 1 {
            Claim::Taken
        } else {
            Claim::Held
        })
    }

    /// Gives up `id`'s claim (after the workspace was deleted, or its creation failed).
    pub(crate) async fn release(&self, id: &ResourceId) -> Result<(), ArmError> {
        self.ready().await?;
        let mut transaction = self.database.begin_write().await.map_err(internal)?;
        sqlx::query(
            "DELETE FROM healthcare_workspace_names WHERE name_key = $1 AND resource_key = $2",
        )
        .bind(id.name().to_ascii_lowercase())
        .bind(id.key())
        .execute(&mut *transaction)
        .await
        .map_err(internal)?;
        transaction.commit().await.map_err(internal)?;
        Ok(())
    }

    /// The workspace moved (another group or subscription; the name is the same): the claim
    /// follows it.
    pub(crate) async fn moved(&self, old: &ResourceId, new: &ResourceId) -> Result<(), ArmError> {
        self.ready().await?;
        let mut transaction = self.database.begin_write().await.map_err(internal)?;
        sqlx::query(
            "UPDATE healthcare_workspace_names SET resource_key = $3 WHERE name_key = $1 AND resource_key = $2",
        )
        .bind(old.name().to_ascii_lowercase())
        .bind(old.key())
        .bind(new.key())
        .execute(&mut *transaction)
        .await
        .map_err(internal)?;
        transaction.commit().await.map_err(internal)?;
        Ok(())
    }
}

fn internal(error: impl std::fmt::Display) -> ArmError {
    ArmError::internal(&error)
}

/// 409 for a name another workspace holds. The detail carries the reason Azure's
/// `checkNameAvailability` gives for a name in use.
fn name_not_available(name: &str) -> ArmError {
    ArmError::new(
        StatusCode::CONFLICT,
        "WorkspaceNameNotAvailable",
        format!(
            "The workspace name '{name}' is not available: workspace names are unique across the whole service (they are part of the service URL). Choose another name."
        ),
    )
    .with_details(vec![ArmError::new(
        StatusCode::CONFLICT,
        "AlreadyExists",
        "The name is already in use by another workspace.",
    )])
}
