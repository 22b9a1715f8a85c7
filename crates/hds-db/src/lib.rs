//! The one database hds keeps its state in: the DICOM index, and later identities, the key
//! vault's store and ARM resources.
//!
//! Two backends, one code path: SQLite (the default, one file in the data dir) and PostgreSQL
//! (for several `hds` nodes), both through sqlx's `Any` driver. Queries use `$N` placeholders,
//! which both backends accept, and only the types `Any` knows (`i64`, `f64`, `bool`, `String`,
//! `Vec<u8>`). Where the SQL dialects differ (DDL mostly), callers branch on [`Backend`].
//!
//! What this crate settles once for everyone:
//! - connection setup ([`Database::connect`]): on SQLite, WAL, a busy timeout, foreign keys,
//!   `secure_delete` and `synchronous=FULL` on every pooled connection, so a commit that
//!   returned survives a power cut (PostgreSQL: `synchronous_commit=on`), unless the caller
//!   asks for [`ConnectOptions::durable_commits`] off;
//! - write transactions ([`Database::begin_write`]) that take SQLite's write lock up front, the
//!   writers of this process taking turns before asking for it; and for a writer that commits
//!   often, batched ones ([`Database::begin_write_batched`]) whose BEGIN and COMMIT travel with
//!   its own statements, saving two round trips to SQLite's connection thread (`write`);
//! - on SQLite, WAL checkpoints in a background task rather than inside commits (`checkpoint`);
//! - per-component migrations on the shared database ([`Database::migrate`], see [`migrate`]);
//! - locks across every node on the database ([`Database::cluster_lock`]);
//! - with the `testing` feature, a throwaway PostgreSQL cluster ([`testing::PostgresCluster`]).
#![deny(missing_docs)]

mod checkpoint;
mod cluster_lock;
pub mod migrate;
#[cfg(feature = "testing")]
pub mod testing;
mod write;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor};

pub use cluster_lock::{ClusterLock, ClusterLockGuard};
pub use migrate::Migration;
pub use write::WriteTransaction;

/// How [`Database::connect_with`] opens the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// A commit returns only once it is on stable storage (the default). Off, the last
    /// commits before a power cut or an operating-system crash may be lost (never those
    /// before a mere process crash): for benchmarks and throwaway data only.
    pub durable_commits: bool,
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            durable_commits: true,
        }
    }
}

impl ConnectOptions {
    /// Commits that may be lost on power loss (see [`ConnectOptions::durable_commits`]).
    pub fn relaxed() -> ConnectOptions {
        ConnectOptions {
            durable_commits: false,
        }
    }
}

/// Which database engine is behind a [`Database`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Why opening, migrating or using the database failed. Messages never carry stored values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The URL is neither `sqlite:PATH` nor `postgres://...`.
    #[error("unsupported database URL (expected sqlite:PATH or postgres://...)")]
    UnsupportedUrl,
    /// The SQLite file's directory could not be created.
    #[error("cannot create the database directory: {0}")]
    CreateDirectory(#[source] std::io::Error),
    /// The database reported an error.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration's SQL failed.
    #[error("migration {version} of {component} failed: {source}")]
    MigrationFailed {
        /// The component whose migration failed.
        component: String,
        /// The failed migration's version.
        version: i64,
        /// What the database said.
        #[source]
        source: sqlx::Error,
    },
    /// No write turn came within [`WRITE_TURN_TIMEOUT`]: a writer of this process held it all
    /// that time.
    #[error("the database stayed busy with other writes")]
    Busy,
    /// The database has a migration of this component that this build does not know: it was
    /// written by a newer hds.
    #[error(
        "the database has migration {version} of {component}, unknown to this build (written by a newer version?)"
    )]
    UnknownMigration {
        /// The component.
        component: String,
        /// The unknown version.
        version: i64,
    },
    /// An applied migration's SQL differs from this build's.
    #[error("migration {version} of {component} was changed after it was applied")]
    ChangedMigration {
        /// The component.
        component: String,
        /// The changed version.
        version: i64,
    },
    /// The migration list itself is malformed (versions not strictly increasing or not positive).
    #[error("migrations of {component} are not in strictly increasing positive version order")]
    MigrationOrder {
        /// The component.
        component: String,
    },
}

/// How long a SQLite connection waits for another writer before giving up with SQLITE_BUSY.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a writer waits for its turn among this process's writers (SQLite) before giving
/// up with [`DbError::Busy`]. Turns last milliseconds; this only ends a wait that a stuck
/// writer would make endless.
pub const WRITE_TURN_TIMEOUT: Duration = Duration::from_secs(30);

/// Pool size. SQLite serializes writers anyway but readers run concurrently under WAL.
const MAX_CONNECTIONS: u32 = 10;

/// A handle on the database: a connection pool and which backend it is. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    /// The writers of this process take turns here before asking SQLite for its write lock.
    /// SQLite has one writer at a time, and a connection that finds the lock taken waits in its
    /// busy handler, sleeping 1 to 100 ms between tries: under concurrent writes most of the
    /// time went to those sleeps (p99 of hundreds of ms with the database idle). An async mutex
    /// hands the turn over the moment the previous writer ends. Shared by every component on
    /// this database, so index, vault, identity and ARM writes queue in one line. Not taken on
    /// PostgreSQL, where writers do not exclude each other.
    write_turn: Arc<tokio::sync::Mutex<()>>,
    /// SQLite's background WAL checkpointer, shared by the clones (see `checkpoint`).
    checkpointer: Option<Arc<checkpoint::Checkpointer>>,
    /// SQLite: the one connection of [`Database::begin_write_batched`].
    batched: Option<AnyPool>,
    /// What [`Database::cluster_lock`] takes on SQLite (one process owns the file).
    local_locks: Arc<tokio::sync::Mutex<()>>,
}

impl Database {
    /// Opens the database at `url`:
    /// - `sqlite:PATH` (or `sqlite://PATH`): the file and its directory are created if missing;
    /// - `postgres://...` (or `postgresql://...`): the database must exist.
    ///
    /// Commits are durable: see [`Database::connect_with`].
    pub async fn connect(url: &str) -> Result<Database, DbError> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    /// Opens the database at `url` as `connect` does, with `options`.
    ///
    /// SQLite connections run with `journal_mode=WAL` (readers do not block the writer),
    /// `busy_timeout` 5 s, `foreign_keys=ON`, `secure_delete=ON` (deleted values are
    /// overwritten, not left in free pages) and `synchronous=FULL`: in WAL mode the log is
    /// synced at every commit, so a commit that returned survives a power cut, not only a
    /// killed process. That is one `fsync` per commit; hds amortizes it by committing the
    /// stores that arrive together as one transaction (the index's group commit), so the
    /// cost is per group, not per instance. With `durable_commits` off it is `NORMAL`: the
    /// database is never corrupted, but the last commits before a power cut may be lost.
    ///
    /// PostgreSQL connections set `synchronous_commit` to `on` (or `off`): the server
    /// flushes its log before a commit returns.
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Database, DbError> {
        install_drivers();
        let backend = backend_of(url)?;
        match backend {
            Backend::Sqlite => Self::connect_sqlite(url, options).await,
            Backend::Postgres => {
                let connect_options = AnyConnectOptions::from_str(url)?;
                let synchronous_commit = if options.durable_commits {
                    "SET synchronous_commit = on"
                } else {
                    "SET synchronous_commit = off"
                };
                let pool = AnyPoolOptions::new()
                    .max_connections(MAX_CONNECTIONS)
                    .after_connect(move |connection, _metadata| {
                        Box::pin(async move {
                            connection.execute(synchronous_commit).await?;
                            Ok(())
                        })
                    })
                    .connect_with(connect_options)
                    .await?;
                Ok(Database::new(pool, backend))
            }
        }
    }

    async fn connect_sqlite(url: &str, options: ConnectOptions) -> Result<Database, DbError> {
        let rest = url.strip_prefix("sqlite:").ok_or(DbError::UnsupportedUrl)?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        if path.is_empty() || path == ":memory:" {
            // An in-memory database is one per connection: a pool would see several.
            return Err(DbError::UnsupportedUrl);
        }
        if let Some(parent) = Path::new(path).parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(DbError::CreateDirectory)?;
        }
        let url = match query {
            Some(query) if query.contains("mode=") => format!("sqlite://{path}?{query}"),
            Some(query) => format!("sqlite://{path}?{query}&mode=rwc"),
            None => format!("sqlite://{path}?mode=rwc"),
        };
        let connect_options = AnyConnectOptions::from_str(&url)?;
        let pool = sqlite_pool(connect_options.clone(), options, MAX_CONNECTIONS).await?;
        let batched = sqlite_pool(connect_options, options, 1).await?;
        let mut database = Database::new(pool.clone(), Backend::Sqlite);
        let checkpointer = checkpoint::Checkpointer::start(pool, Arc::clone(&database.write_turn));
        database.checkpointer = Some(Arc::new(checkpointer));
        database.batched = Some(batched);
        Ok(database)
    }

    fn new(pool: AnyPool, backend: Backend) -> Database {
        Database {
            pool,
            backend,
            write_turn: Arc::new(tokio::sync::Mutex::new(())),
            checkpointer: None,
            batched: None,
            local_locks: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Which backend this is, for the few places (DDL mostly) where SQL differs.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for reads and for statements outside a transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a write transaction. On SQLite it first waits for this process's write turn (see
    /// the `write_turn` field, at most [`WRITE_TURN_TIMEOUT`]), then runs `BEGIN IMMEDIATE`,
    /// which takes the write lock at once (waiting up to the busy timeout for other processes):
    /// a deferred transaction that reads first and writes later can fail its lock upgrade with
    /// SQLITE_BUSY without waiting. On PostgreSQL it is a plain `BEGIN` (READ COMMITTED);
    /// conflicts are for constraints to decide. Dropping the transaction uncommitted rolls it
    /// back.
    ///
    /// A task must not begin a write while it holds one: on SQLite it would wait for itself.
    pub async fn begin_write(&self) -> Result<WriteTransaction, DbError> {
        match self.backend {
            Backend::Sqlite => {
                let turn = tokio::time::timeout(
                    WRITE_TURN_TIMEOUT,
                    Arc::clone(&self.write_turn).lock_owned(),
                )
                .await
                .map_err(|_| DbError::Busy)?;
                let transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(self.on_sqlite(WriteTransaction::sqlx(transaction), turn))
            }
            Backend::Postgres => Ok(WriteTransaction::sqlx(self.pool.begin().await?)),
        }
    }

    /// Begins a write transaction as [`Database::begin_write`] does, for a writer that sends
    /// its statements in few round trips: on SQLite its BEGIN goes with the caller's first
    /// statement ([`WriteTransaction::begin_text`]) and its COMMIT may go with the last
    /// ([`WriteTransaction::commit_text`]), on a connection of its own. On PostgreSQL it is
    /// [`Database::begin_write`].
    pub async fn begin_write_batched(&self) -> Result<WriteTransaction, DbError> {
        let Some(pool) = &self.batched else {
            return self.begin_write().await;
        };
        let turn = tokio::time::timeout(
            WRITE_TURN_TIMEOUT,
            Arc::clone(&self.write_turn).lock_owned(),
        )
        .await
        .map_err(|_| DbError::Busy)?;
        let connection = pool.acquire().await?;
        Ok(self.on_sqlite(WriteTransaction::batched(connection), turn))
    }

    fn on_sqlite(
        &self,
        mut transaction: WriteTransaction,
        turn: tokio::sync::OwnedMutexGuard<()>,
    ) -> WriteTransaction {
        transaction.turn = Some(turn);
        transaction.checkpoint_due = self
            .checkpointer
            .as_ref()
            .map(|checkpointer| checkpointer.due());
        transaction
    }

    /// Begins a read transaction: a consistent snapshot on SQLite (WAL), READ COMMITTED on
    /// PostgreSQL.
    pub async fn begin_read(&self) -> Result<sqlx::Transaction<'static, Any>, DbError> {
        Ok(self.pool.begin().await?)
    }

    /// Applies `component`'s migrations that are not applied yet. See [`migrate`].
    pub async fn migrate(&self, component: &str, migrations: &[Migration]) -> Result<(), DbError> {
        migrate::run(self, component, migrations).await
    }

    /// How many background WAL checkpoints have completed (SQLite; always 0 on PostgreSQL).
    pub fn background_checkpoints(&self) -> u64 {
        self.checkpointer
            .as_ref()
            .map_or(0, |checkpointer| checkpointer.completed())
    }

    /// Closes every connection of the pool (waiting for those in use to come back).
    pub async fn close(&self) {
        if let Some(pool) = &self.batched {
            pool.close().await;
        }
        self.pool.close().await;
    }
}

/// A pool of up to `max_connections` SQLite connections set up as `connect_with` says.
async fn sqlite_pool(
    connect_options: AnyConnectOptions,
    options: ConnectOptions,
    max_connections: u32,
) -> Result<AnyPool, DbError> {
    let synchronous = if options.durable_commits {
        "PRAGMA synchronous = FULL"
    } else {
        "PRAGMA synchronous = NORMAL"
    };
    let pool = AnyPoolOptions::new()
        .max_connections(max_connections)
        // A pooled SQLite connection is a file handle in this process: it cannot go stale
        // the way a network connection can, so the ping sqlx would send before handing it
        // out (a round trip to the connection's thread on every query) buys nothing.
        .test_before_acquire(false)
        .after_connect(move |connection, _metadata| {
            Box::pin(async move {
                // busy_timeout first: switching to WAL needs a lock another connection
                // may hold for a moment.
                let busy = format!("PRAGMA busy_timeout = {}", SQLITE_BUSY_TIMEOUT.as_millis());
                connection.execute(busy.as_str()).await?;
                connection.execute("PRAGMA journal_mode = WAL").await?;
                connection.execute(synchronous).await?;
                // Checkpoints run in the background (`checkpoint`); this one is a backstop.
                let backstop = format!(
                    "PRAGMA wal_autocheckpoint = {}",
                    checkpoint::AUTOCHECKPOINT_BACKSTOP_PAGES
                );
                connection.execute(backstop.as_str()).await?;
                connection.execute("PRAGMA foreign_keys = ON").await?;
                connection.execute("PRAGMA secure_delete = ON").await?;
                Ok(())
            })
        })
        .connect_with(connect_options)
        .await?;
    Ok(pool)
}

/// Whether PostgreSQL failed a transaction as a deadlock (SQLSTATE `40P01`) or a serialization
/// failure (`40001`): the transaction was rolled back whole, and running it again from its
/// start is the remedy PostgreSQL documents. Nothing else is.
pub fn is_transaction_conflict(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|database_error| database_error.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
}

/// Which backend a URL names, without connecting.
pub fn backend_of(url: &str) -> Result<Backend, DbError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(DbError::UnsupportedUrl)
    }
}

/// sqlx's `Any` driver needs its drivers registered before the first connection (the call is
/// idempotent).
fn install_drivers() {
    sqlx::any::install_default_drivers();
}
