//! Locks that hold across every node on one database: PostgreSQL session advisory locks, so
//! that work which must happen once (the first start's bootstrap, taking over an async
//! operation) runs on one node at a time. On SQLite, where one process owns the file, an
//! in-process mutex gives the same guarantee to the tasks of that process.

use std::sync::Arc;

use sqlx::Any;
use sqlx::pool::PoolConnection;

use crate::{Backend, Database, DbError};

/// Which cluster-wide lock to take. The PostgreSQL advisory-lock keys are fixed and distinct
/// from the migration lock's (`migrate`). On SQLite every lock is one mutex of this process:
/// do not take one while holding another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterLock {
    /// The first start's bootstrap: tenant, admin, the seed's resources, and a node reading
    /// what another node's bootstrap created.
    Bootstrap,
}

impl ClusterLock {
    /// The advisory-lock key ("hdsboot" in ASCII).
    fn key(self) -> i64 {
        match self {
            ClusterLock::Bootstrap => 0x0068_6473_626f_6f74,
        }
    }
}

/// A held [`ClusterLock`]. [`ClusterLockGuard::release`] gives it up; dropping the guard
/// unreleased closes its connection instead (the server then drops the lock), so a panic or an
/// early return never leaves it held on a pooled connection.
pub struct ClusterLockGuard {
    lock: ClusterLock,
    held: Held,
}

enum Held {
    Postgres(Option<PoolConnection<Any>>),
    Local {
        _held: tokio::sync::OwnedMutexGuard<()>,
    },
}

impl std::fmt::Debug for ClusterLockGuard {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClusterLockGuard")
            .field("lock", &self.lock)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Waits for `lock` and takes it: on PostgreSQL a session advisory lock on a connection
    /// of its own (other nodes wait for it however long the holder needs it); on SQLite this
    /// process's mutex for `lock`.
    pub async fn cluster_lock(&self, lock: ClusterLock) -> Result<ClusterLockGuard, DbError> {
        let held = match self.backend {
            Backend::Postgres => {
                let mut connection = self.pool.acquire().await?;
                sqlx::query("SELECT 1 FROM pg_advisory_lock($1)")
                    .bind(lock.key())
                    .execute(&mut *connection)
                    .await?;
                Held::Postgres(Some(connection))
            }
            Backend::Sqlite => Held::Local {
                _held: Arc::clone(&self.local_locks).lock_owned().await,
            },
        };
        Ok(ClusterLockGuard { lock, held })
    }
}

impl ClusterLockGuard {
    /// Gives the lock up, returning its connection to the pool.
    pub async fn release(mut self) -> Result<(), DbError> {
        if let Held::Postgres(connection) = &mut self.held
            && let Some(mut connection) = connection.take()
        {
            let released = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.lock.key())
                .execute(&mut *connection)
                .await;
            if released.is_err() {
                // Unsure whether it is still held: close the connection rather than pool it.
                drop(connection.detach());
            }
            released?;
        }
        Ok(())
    }
}

impl Drop for ClusterLockGuard {
    fn drop(&mut self) {
        if let Held::Postgres(connection) = &mut self.held
            && let Some(connection) = connection.take()
        {
            // Closing the session is what releases its advisory locks.
            drop(connection.detach());
        }
    }
}
