//! Write transactions: sqlx's, or one whose BEGIN and COMMIT travel with the caller's own
//! statements.
//!
//! A SQLite connection lives on a thread of its own, and every statement sent to it is a round
//! trip to that thread: about 250 µs under load, mostly waking threads, against tens of µs of
//! SQLite's own work for a small write. A writer that commits a stream of small transactions
//! (the index's group commit) spends most of its time on round trips, and every store waiting
//! for the writer waits for them too. sqlx's transaction sends BEGIN and COMMIT on their own; a
//! *batched* transaction ([`Database::begin_write_batched`]) lets the caller put BEGIN in front
//! of its first statement ([`WriteTransaction::begin_text`]) and COMMIT after its last
//! ([`WriteTransaction::commit_text`]), so a transaction of one read and one batch of writes
//! is two round trips instead of four.
//!
//! Batched transactions run on a pool of one connection of their own. sqlx does not know about
//! a transaction it did not begin, so a batched transaction that ends any other way than by its
//! COMMIT or [`WriteTransaction::rollback`] (dropped, or its ROLLBACK failed) closes its
//! connection instead of handing it back to that pool: closing a SQLite connection rolls back
//! what it left open, and the pool opens another.
//!
//! [`Database::begin_write_batched`]: crate::Database::begin_write_batched

use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Any, Executor};

/// A transaction holding the database's write lock (SQLite) or an ordinary one (PostgreSQL).
/// Statements run on `&mut *transaction` (it dereferences to the connection); dropping it
/// without [`WriteTransaction::commit`] rolls it back. On SQLite it also holds this process's
/// write turn (see [`crate::Database::begin_write`]) until it ends.
pub struct WriteTransaction {
    // Declared first so that it is dropped (rolled back) before the turn passes on.
    connection: WriteConnection,
    pub(crate) turn: Option<tokio::sync::OwnedMutexGuard<()>>,
    /// Wakes the background checkpointer once committed (SQLite).
    pub(crate) checkpoint_due: Option<Arc<tokio::sync::Notify>>,
}

enum WriteConnection {
    /// sqlx's transaction: BEGIN was sent when it began, COMMIT is sent by `commit`.
    Sqlx(sqlx::Transaction<'static, Any>),
    /// BEGIN and COMMIT sent with the caller's statements (see the module doc).
    Batched(BatchedConnection),
}

struct BatchedConnection {
    connection: PoolConnection<Any>,
    state: BatchState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchState {
    /// Nothing sent yet.
    NotBegun,
    /// BEGIN handed out: the transaction is open once the caller's statement ran.
    Open,
    /// COMMIT handed out.
    CommitSent,
    /// Ended: committed or rolled back.
    Ended,
}

impl Drop for BatchedConnection {
    fn drop(&mut self) {
        if matches!(self.state, BatchState::Open | BatchState::CommitSent) {
            // Perhaps still open: closed rather than pooled, which rolls it back.
            self.connection.close_on_drop();
        }
    }
}

impl WriteTransaction {
    pub(crate) fn sqlx(transaction: sqlx::Transaction<'static, Any>) -> WriteTransaction {
        WriteTransaction {
            connection: WriteConnection::Sqlx(transaction),
            turn: None,
            checkpoint_due: None,
        }
    }

    pub(crate) fn batched(connection: PoolConnection<Any>) -> WriteTransaction {
        WriteTransaction {
            connection: WriteConnection::Batched(BatchedConnection {
                connection,
                state: BatchState::NotBegun,
            }),
            turn: None,
            checkpoint_due: None,
        }
    }

    /// What the transaction's first statement must begin with: `BEGIN IMMEDIATE; ` for a
    /// batched transaction the first time it is asked (the caller sends it), else nothing.
    /// A batched transaction must be begun this way before anything else runs on it. The
    /// text's first result is then its BEGIN's: read its rows with `fetch_all` or `fetch`,
    /// not `fetch_one` or `fetch_optional`, which stop at that first result.
    pub fn begin_text(&mut self) -> &'static str {
        match &mut self.connection {
            WriteConnection::Batched(batched) if batched.state == BatchState::NotBegun => {
                batched.state = BatchState::Open;
                "BEGIN IMMEDIATE; "
            }
            _ => "",
        }
    }

    /// A statement the transaction's last statement may be followed by, in the same text, to
    /// commit it: `COMMIT` for an open batched transaction, else `None` (the commit is sent by
    /// [`WriteTransaction::commit`]). Once it is handed out, no other statement may run; if
    /// the text fails, the transaction is dropped (rolled back), else committed with
    /// [`WriteTransaction::commit`], which then sends nothing.
    pub fn commit_text(&mut self) -> Option<&'static str> {
        match &mut self.connection {
            WriteConnection::Batched(batched) if batched.state == BatchState::Open => {
                batched.state = BatchState::CommitSent;
                Some("COMMIT")
            }
            _ => None,
        }
    }

    /// Commits (unless the commit went with the caller's last statement), then hands the
    /// write turn to the next writer.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let WriteTransaction {
            connection,
            turn,
            checkpoint_due,
        } = self;
        match connection {
            WriteConnection::Sqlx(transaction) => transaction.commit().await?,
            WriteConnection::Batched(mut batched) => {
                if batched.state == BatchState::Open {
                    batched.connection.execute("COMMIT").await?;
                }
                batched.state = BatchState::Ended;
            }
        }
        drop(turn);
        if let Some(due) = &checkpoint_due {
            due.notify_one();
        }
        Ok(())
    }

    /// Rolls back, then hands the write turn to the next writer.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.connection {
            WriteConnection::Sqlx(transaction) => transaction.rollback().await,
            WriteConnection::Batched(mut batched) => {
                if matches!(batched.state, BatchState::Open | BatchState::CommitSent) {
                    // A text that carried COMMIT and failed stopped before it (or at it).
                    // If this fails too, the connection is closed on drop.
                    batched.connection.execute("ROLLBACK").await?;
                    batched.state = BatchState::Ended;
                }
                Ok(())
            }
        }
    }
}

impl std::ops::Deref for WriteTransaction {
    type Target = sqlx::AnyConnection;

    fn deref(&self) -> &Self::Target {
        match &self.connection {
            WriteConnection::Sqlx(transaction) => transaction,
            WriteConnection::Batched(batched) => &batched.connection,
        }
    }
}

impl std::ops::DerefMut for WriteTransaction {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match &mut self.connection {
            WriteConnection::Sqlx(transaction) => transaction,
            WriteConnection::Batched(batched) => &mut batched.connection,
        }
    }
}

impl std::fmt::Debug for WriteTransaction {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WriteTransaction")
            .field("holds_turn", &self.turn.is_some())
            .field(
                "batched",
                &matches!(self.connection, WriteConnection::Batched(_)),
            )
            .finish()
    }
}
