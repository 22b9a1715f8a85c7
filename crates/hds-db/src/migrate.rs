//! Per-component migrations on the one shared database.
//!
//! Several crates (index, identity, key vault, ARM) keep tables in the same database, each
//! with its own migrations, released independently. sqlx's migrator keeps one
//! `_sqlx_migrations` table for everything and refuses versions it does not know, which would
//! tie every crate's migration list to every other's. So this module keeps its own table,
//! `hds_schema_migrations(component, version, description, checksum)`, and each component
//! passes its own list of [`Migration`]s, with the SQL of both backends side by side
//! (typically `include_str!("../migrations/sqlite/0001_init.sql")` and the `postgres`
//! twin).
//!
//! [`run`] applies the missing ones in order in one write transaction: all or nothing. On
//! PostgreSQL a transaction-scoped advisory lock serializes nodes migrating at once; on SQLite
//! `BEGIN IMMEDIATE` does. An applied migration whose SQL changed, or one the build does not
//! know (a newer hds wrote it), stops start-up with an error rather than running on a schema
//! the code does not expect.

use sqlx::Row;

use crate::{Backend, Database, DbError};

/// One schema step of a component. Once released, never edit it: add a new one.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Strictly increasing within a component, starting at 1 or more.
    pub version: i64,
    /// What it does, for people reading the table.
    pub description: &'static str,
    /// The SQL for SQLite (several statements allowed).
    pub sqlite: &'static str,
    /// The SQL for PostgreSQL (several statements allowed).
    pub postgres: &'static str,
}

impl Migration {
    /// The SQL of this migration for `backend`.
    pub fn sql(&self, backend: Backend) -> &'static str {
        match backend {
            Backend::Sqlite => self.sqlite,
            Backend::Postgres => self.postgres,
        }
    }
}

/// The advisory lock key PostgreSQL nodes take while migrating (arbitrary, fixed: "hdsmigr").
const POSTGRES_MIGRATION_LOCK: i64 = 0x0068_6473_6d69_6772;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS hds_schema_migrations (
    component TEXT NOT NULL,
    version BIGINT NOT NULL,
    description TEXT NOT NULL,
    checksum BIGINT NOT NULL,
    PRIMARY KEY (component, version)
)";

/// Applies `component`'s migrations missing from the database, in one transaction.
pub async fn run(
    database: &Database,
    component: &str,
    migrations: &[Migration],
) -> Result<(), DbError> {
    let in_order = migrations.first().is_none_or(|first| first.version > 0)
        && migrations
            .windows(2)
            .all(|pair| pair[0].version < pair[1].version);
    if !in_order {
        return Err(DbError::MigrationOrder {
            component: component.to_owned(),
        });
    }
    let backend = database.backend();
    let mut transaction = database.begin_write().await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
            .bind(POSTGRES_MIGRATION_LOCK)
            .execute(&mut *transaction)
            .await?;
    }
    sqlx::query(CREATE_TABLE).execute(&mut *transaction).await?;
    let applied: Vec<(i64, i64)> =
        sqlx::query("SELECT version, checksum FROM hds_schema_migrations WHERE component = $1")
            .bind(component)
            .fetch_all(&mut *transaction)
            .await?
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>(0)?, row.try_get::<i64, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
    for (version, _) in &applied {
        if !migrations
            .iter()
            .any(|migration| migration.version == *version)
        {
            return Err(DbError::UnknownMigration {
                component: component.to_owned(),
                version: *version,
            });
        }
    }
    for migration in migrations {
        let sql = migration.sql(backend);
        let checksum = checksum(sql);
        if let Some((_, applied_checksum)) = applied
            .iter()
            .find(|(version, _)| *version == migration.version)
        {
            if *applied_checksum != checksum {
                return Err(DbError::ChangedMigration {
                    component: component.to_owned(),
                    version: migration.version,
                });
            }
            continue;
        }
        tracing::info!(
            component,
            version = migration.version,
            description = migration.description,
            "applying migration"
        );
        // `Executor::execute` on the connection with the whole script (several statements,
        // unprepared). `raw_sql(..).execute(..)` would do the same, but its future cannot be
        // proven `Send` inside callers' boxed futures.
        sqlx::Executor::execute(&mut *transaction, sql)
            .await
            .map_err(|source| DbError::MigrationFailed {
                component: component.to_owned(),
                version: migration.version,
                source,
            })?;
        sqlx::query(
            "INSERT INTO hds_schema_migrations (component, version, description, checksum) VALUES ($1, $2, $3, $4)",
        )
        .bind(component)
        .bind(migration.version)
        .bind(migration.description)
        .bind(checksum)
        .execute(&mut *transaction)
        .await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// FNV-1a (64 bit) of the SQL: enough to notice an edited migration, stable across builds.
fn checksum(sql: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sql.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}
