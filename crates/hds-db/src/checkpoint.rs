//! WAL checkpoints off the write path (SQLite).
//!
//! By default SQLite checkpoints from inside a commit: the connection whose commit takes the
//! write-ahead log past 1000 pages (4 MiB) copies the log into the database file and fsyncs
//! both before its commit returns. In hds every write queues behind that commit (one writer at
//! a time, see `Database::begin_write`), so each checkpoint stalled every write in flight: a
//! STOW of 1000 small instances met about six of them, 5 to 10 ms each, and they made its p99
//! latency three times its p90.
//!
//! Here a background task checkpoints instead, a moment after commits (so that one checkpoint
//! covers many of them), in `PASSIVE` mode: it copies what it can without taking the write
//! lock, so commits go on while it works. The log starts over at the next write once a
//! checkpoint has copied all of it, which under a stream of commits takes a second, short
//! checkpoint with this process's writers held back (`checkpoint_all`). Pooled connections
//! keep an automatic checkpoint only as a backstop at [`AUTOCHECKPOINT_BACKSTOP_PAGES`], for
//! the case this task cannot keep up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::AnyPool;
use tokio::sync::Notify;

/// The automatic checkpoint threshold of pooled connections, in pages (64 MiB of 4 KiB
/// pages): reached only if the background checkpoints fall behind.
pub(crate) const AUTOCHECKPOINT_BACKSTOP_PAGES: u32 = 16_384;

/// How long after a commit the checkpoint runs: commits arriving meanwhile share it.
const CHECKPOINT_DELAY: Duration = Duration::from_millis(200);

/// The background checkpointer of one SQLite database; the task ends when this is dropped (with
/// the last clone of its `Database`) or when the pool closes.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    /// Woken by every commit through `WriteTransaction::commit`.
    due: Arc<Notify>,
    /// Checkpoints completed so far (for tests and diagnostics).
    completed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    /// Starts the task on the current tokio runtime.
    pub(crate) fn start(pool: AnyPool, write_turn: Arc<tokio::sync::Mutex<()>>) -> Checkpointer {
        let due = Arc::new(Notify::new());
        let completed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(
            pool,
            write_turn,
            Arc::clone(&due),
            Arc::clone(&completed),
        ));
        Checkpointer {
            due,
            completed,
            task,
        }
    }

    /// What a commit calls to have the log checkpointed soon.
    pub(crate) fn due(&self) -> Arc<Notify> {
        Arc::clone(&self.due)
    }

    /// Checkpoints completed so far.
    pub(crate) fn completed(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(
    pool: AnyPool,
    write_turn: Arc<tokio::sync::Mutex<()>>,
    due: Arc<Notify>,
    completed: Arc<AtomicU64>,
) {
    loop {
        // `notify_one` stores a permit when nobody waits, so a commit made while a checkpoint
        // runs is not missed: it brings the next one.
        due.notified().await;
        tokio::time::sleep(CHECKPOINT_DELAY).await;
        if pool.is_closed() {
            return;
        }
        let checkpointed = checkpoint_all(&pool, &write_turn).await;
        match checkpointed {
            Ok(_) => {
                completed.fetch_add(1, Ordering::Relaxed);
            }
            Err(sqlx::Error::PoolClosed) => return,
            // The backstop still bounds the log; the next commit brings another try.
            Err(error) => tracing::warn!(%error, "background WAL checkpoint failed"),
        }
    }
}

/// Copies the log into the database, all of it unless a reader still needs part of it, so
/// that the next write starts the log over instead of growing it.
///
/// The log starts over only after a checkpoint has copied every frame in it, and under a stream
/// of commits no checkpoint does: commits append frames while it copies. Left alone, the log
/// then grows as long as the stream lasts (by every byte written), and every commit appends
/// to new blocks of the file, whose sync also writes the file's size and block allocation.
/// So a first passive checkpoint copies the bulk with writers going on, and a second one, with
/// this process's writers held back (the write turn), copies the few frames written meanwhile.
/// The connection is taken before the turn: the turn is never held while waiting for the pool.
async fn checkpoint_all(
    pool: &AnyPool,
    write_turn: &tokio::sync::Mutex<()>,
) -> Result<(), sqlx::Error> {
    let mut connection = pool.acquire().await?;
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .execute(&mut *connection)
        .await?;
    let _turn = write_turn.lock().await;
    sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .execute(&mut *connection)
        .await?;
    Ok(())
}
