//! The same checks against SQLite and a throwaway PostgreSQL cluster.

use hds_db::testing::PostgresCluster;
use hds_db::{Backend, Database, DbError, Migration};
use sqlx::Row;

const FIRST: Migration = Migration {
    version: 1,
    description: "items",
    sqlite: "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE); \
             CREATE INDEX items_name ON items (name);",
    postgres: "CREATE TABLE items (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE); \
               CREATE INDEX items_name ON items (name);",
};

const SECOND: Migration = Migration {
    version: 2,
    description: "item size",
    sqlite: "ALTER TABLE items ADD COLUMN size BIGINT NOT NULL DEFAULT 0;",
    postgres: "ALTER TABLE items ADD COLUMN size BIGINT NOT NULL DEFAULT 0;",
};

async fn sqlite_database() -> (tempfile::TempDir, Database) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("nested/dir/hds.db").display());
    let database = Database::connect(&url).await.expect("connect sqlite");
    (dir, database)
}

async fn postgres_database() -> Database {
    let cluster = PostgresCluster::shared().expect("test cluster");
    let url = cluster.fresh_database().await.expect("fresh database");
    Database::connect(&url).await.expect("connect postgres")
}

async fn migrations_apply_once_and_refuse_surprises(database: Database) {
    database
        .migrate("items", &[FIRST])
        .await
        .expect("first migration");
    database
        .migrate("items", &[FIRST])
        .await
        .expect("again: nothing to do");
    database
        .migrate("items", &[FIRST, SECOND])
        .await
        .expect("second migration");
    sqlx::query("INSERT INTO items (name, size) VALUES ($1, $2)")
        .bind("a")
        .bind(5_i64)
        .execute(database.pool())
        .await
        .expect("insert uses the migrated schema");

    // Another component's migrations live beside these without interfering.
    let other = Migration {
        version: 1,
        description: "other",
        sqlite: "CREATE TABLE others (id BIGINT PRIMARY KEY);",
        postgres: "CREATE TABLE others (id BIGINT PRIMARY KEY);",
    };
    database
        .migrate("other", &[other])
        .await
        .expect("other component");

    // An older build does not know version 2.
    match database.migrate("items", &[FIRST]).await {
        Err(DbError::UnknownMigration { version: 2, .. }) => {}
        other => panic!("expected UnknownMigration, got {other:?}"),
    }
    // An applied migration must not change.
    let edited = Migration {
        sqlite: "CREATE TABLE items (id INTEGER PRIMARY KEY);",
        postgres: "CREATE TABLE items (id BIGINT PRIMARY KEY);",
        ..FIRST
    };
    match database.migrate("items", &[edited, SECOND]).await {
        Err(DbError::ChangedMigration { version: 1, .. }) => {}
        other => panic!("expected ChangedMigration, got {other:?}"),
    }
    // A failing migration leaves nothing behind: the whole run is one transaction.
    let broken = Migration {
        version: 3,
        description: "broken",
        sqlite: "CREATE TABLE half (id BIGINT); THIS IS NOT SQL;",
        postgres: "CREATE TABLE half (id BIGINT); THIS IS NOT SQL;",
    };
    match database.migrate("items", &[FIRST, SECOND, broken]).await {
        Err(DbError::MigrationFailed { version: 3, .. }) => {}
        other => panic!("expected MigrationFailed, got {other:?}"),
    }
    let half = sqlx::query("SELECT COUNT(*) FROM half")
        .fetch_one(database.pool())
        .await;
    assert!(
        half.is_err(),
        "the failed migration's first statement was rolled back"
    );
    match database.migrate("items", &[SECOND, FIRST]).await {
        Err(DbError::MigrationOrder { .. }) => {}
        other => panic!("expected MigrationOrder, got {other:?}"),
    }
}

/// Eight writers incrementing one counter in write transactions: none fails with a busy
/// error, none loses an update.
async fn concurrent_write_transactions_serialize(database: Database) {
    database
        .migrate("items", &[FIRST, SECOND])
        .await
        .expect("migrate");
    sqlx::query("INSERT INTO items (name, size) VALUES ('counter', 0)")
        .execute(database.pool())
        .await
        .expect("insert");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let database = database.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let mut transaction = database.begin_write().await.expect("begin write");
                // Read, then write: the pattern a deferred SQLite transaction fails on.
                let size: i64 = sqlx::query("SELECT size FROM items WHERE name = 'counter'")
                    .fetch_one(&mut *transaction)
                    .await
                    .expect("read")
                    .get(0);
                let update = match database.backend() {
                    // SQLite's write lock, taken at BEGIN IMMEDIATE, makes read-then-write
                    // safe; PostgreSQL's READ COMMITTED needs the increment in the UPDATE.
                    Backend::Sqlite => {
                        sqlx::query("UPDATE items SET size = $1 WHERE name = 'counter'")
                            .bind(size + 1)
                    }
                    Backend::Postgres => {
                        sqlx::query("UPDATE items SET size = size + 1 WHERE name = 'counter'")
                    }
                };
                update.execute(&mut *transaction).await.expect("write");
                transaction.commit().await.expect("commit");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let size: i64 = sqlx::query("SELECT size FROM items WHERE name = 'counter'")
        .fetch_one(database.pool())
        .await
        .expect("read")
        .get(0);
    assert_eq!(size, 80);
}

async fn dropped_write_transaction_rolls_back(database: Database) {
    database
        .migrate("items", &[FIRST, SECOND])
        .await
        .expect("migrate");
    {
        let mut transaction = database.begin_write().await.expect("begin");
        sqlx::query("INSERT INTO items (name) VALUES ('dropped')")
            .execute(&mut *transaction)
            .await
            .expect("insert");
    }
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM items")
        .fetch_one(database.pool())
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 0);
    // The pool is still usable for writes afterwards.
    let transaction = database.begin_write().await.expect("begin again");
    transaction.commit().await.expect("commit");
}

/// A text run in `transaction`: its BEGIN in front if the transaction is batched and this is
/// its first text, its COMMIT after if `last`.
fn batched_text(
    transaction: &mut hds_db::WriteTransaction,
    statements: &str,
    last: bool,
) -> String {
    let mut text = format!("{}{statements}", transaction.begin_text());
    if last && let Some(commit) = transaction.commit_text() {
        text.push_str("; ");
        text.push_str(commit);
    }
    text
}

/// Runs `statements` in `transaction` as one text, as [`batched_text`] makes it.
async fn run_text(
    transaction: &mut hds_db::WriteTransaction,
    statements: &str,
    last: bool,
) -> Result<(), sqlx::Error> {
    let text = batched_text(transaction, statements, last);
    sqlx::raw_sql(text.as_str())
        .execute(&mut **transaction)
        .await
        .map(drop)
}

/// Inserts an item of each name, all in one write transaction.
async fn insert_items(database: &Database, names: impl IntoIterator<Item = String>) {
    let mut transaction = database.begin_write().await.expect("begin");
    for name in names {
        sqlx::query("INSERT INTO items (name) VALUES ($1)")
            .bind(name)
            .execute(&mut *transaction)
            .await
            .expect("insert");
    }
    transaction.commit().await.expect("commit");
}

async fn count_named(database: &Database, name: &str) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM items WHERE name = $1")
        .bind(name)
        .fetch_one(database.pool())
        .await
        .expect("count")
        .get(0)
}

/// A batched transaction's BEGIN and COMMIT go with its statements; its writes are all or
/// nothing, whether its last text fails, it is rolled back or dropped; and it takes turns with
/// ordinary write transactions.
async fn batched_write_transactions_are_all_or_nothing(database: Database) {
    database
        .migrate("items", &[FIRST, SECOND])
        .await
        .expect("migrate");

    let mut transaction = database.begin_write_batched().await.expect("begin");
    let first = batched_text(
        &mut transaction,
        "INSERT INTO items (name) VALUES ('a')",
        false,
    );
    assert!(
        transaction.begin_text().is_empty(),
        "BEGIN is handed out once"
    );
    sqlx::raw_sql(first.as_str())
        .execute(&mut *transaction)
        .await
        .expect("first text");
    run_text(
        &mut transaction,
        "INSERT INTO items (name) VALUES ('b')",
        true,
    )
    .await
    .expect("last text");
    transaction.commit().await.expect("commit");
    assert_eq!(
        count_named(&database, "a").await + count_named(&database, "b").await,
        2
    );

    // Committed by `commit` when no text carried the COMMIT.
    let mut transaction = database.begin_write_batched().await.expect("begin");
    run_text(
        &mut transaction,
        "INSERT INTO items (name) VALUES ('c')",
        false,
    )
    .await
    .expect("text");
    transaction.commit().await.expect("commit");
    assert_eq!(count_named(&database, "c").await, 1);

    // A last text that fails (a duplicate name) before its COMMIT leaves nothing behind.
    let mut transaction = database.begin_write_batched().await.expect("begin");
    run_text(
        &mut transaction,
        "INSERT INTO items (name) VALUES ('d')",
        false,
    )
    .await
    .expect("first text");
    assert!(
        run_text(
            &mut transaction,
            "INSERT INTO items (name) VALUES ('e'); INSERT INTO items (name) VALUES ('a')",
            true
        )
        .await
        .is_err()
    );
    transaction.rollback().await.expect("rollback");
    assert_eq!(
        count_named(&database, "d").await + count_named(&database, "e").await,
        0
    );

    // Dropped open: rolled back, and the next writers (both kinds) are not kept waiting.
    {
        let mut transaction = database.begin_write_batched().await.expect("begin");
        run_text(
            &mut transaction,
            "INSERT INTO items (name) VALUES ('f')",
            false,
        )
        .await
        .expect("text");
    }
    let started = std::time::Instant::now();
    let mut transaction = database.begin_write().await.expect("begin plain");
    sqlx::query("INSERT INTO items (name) VALUES ('g')")
        .execute(&mut *transaction)
        .await
        .expect("insert after the dropped one");
    transaction.commit().await.expect("commit");
    let mut transaction = database
        .begin_write_batched()
        .await
        .expect("begin batched again");
    run_text(
        &mut transaction,
        "INSERT INTO items (name) VALUES ('h')",
        true,
    )
    .await
    .expect("text");
    transaction.commit().await.expect("commit");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "a dropped batched transaction held the write lock for {:?}",
        started.elapsed()
    );
    assert_eq!(count_named(&database, "f").await, 0);
    assert_eq!(
        count_named(&database, "g").await + count_named(&database, "h").await,
        2
    );

    // Batched and ordinary writers incrementing one counter: no lost update.
    sqlx::query("INSERT INTO items (name, size) VALUES ('counter', 0)")
        .execute(database.pool())
        .await
        .expect("insert counter");
    let mut tasks = Vec::new();
    for writer in 0..6 {
        let database = database.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let mut transaction = if writer % 2 == 0 {
                    database.begin_write_batched().await.expect("begin batched")
                } else {
                    database.begin_write().await.expect("begin")
                };
                let read = batched_text(
                    &mut transaction,
                    "SELECT size FROM items WHERE name = 'counter'",
                    false,
                );
                let size: i64 = match database.backend() {
                    // The write lock, taken by BEGIN IMMEDIATE, makes read-then-write safe.
                    // All its rows: the text's first result is its BEGIN's.
                    Backend::Sqlite => sqlx::query(read.as_str())
                        .fetch_all(&mut *transaction)
                        .await
                        .expect("read")[0]
                        .get(0),
                    Backend::Postgres => 0,
                };
                let update = match database.backend() {
                    Backend::Sqlite => {
                        format!(
                            "UPDATE items SET size = {} WHERE name = 'counter'",
                            size + 1
                        )
                    }
                    Backend::Postgres => {
                        "UPDATE items SET size = size + 1 WHERE name = 'counter'".to_owned()
                    }
                };
                let update = batched_text(&mut transaction, &update, true);
                sqlx::query(update.as_str())
                    .execute(&mut *transaction)
                    .await
                    .expect("write");
                transaction.commit().await.expect("commit");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let size: i64 = sqlx::query("SELECT size FROM items WHERE name = 'counter'")
        .fetch_one(database.pool())
        .await
        .expect("read")
        .get(0);
    assert_eq!(size, 60);
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let (_dir, database) = super::sqlite_database().await;
                    super::$name(database).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::postgres_database().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    migrations_apply_once_and_refuse_surprises,
    concurrent_write_transactions_serialize,
    dropped_write_transaction_rolls_back,
    batched_write_transactions_are_all_or_nothing,
);

#[tokio::test]
async fn sqlite_pragmas_are_set_on_every_connection() {
    let (_dir, database) = sqlite_database().await;
    let mut connections = Vec::new();
    for _ in 0..3 {
        connections.push(database.pool().acquire().await.expect("acquire"));
    }
    for connection in &mut connections {
        let pragma = |name: &'static str| sqlx::query(name);
        let journal: String = pragma("PRAGMA journal_mode")
            .fetch_one(&mut **connection)
            .await
            .expect("journal")
            .get(0);
        assert_eq!(journal, "wal");
        let synchronous: i64 = pragma("PRAGMA synchronous")
            .fetch_one(&mut **connection)
            .await
            .expect("sync")
            .get(0);
        assert_eq!(synchronous, 2, "FULL: commits are synced");
        let foreign_keys: i64 = pragma("PRAGMA foreign_keys")
            .fetch_one(&mut **connection)
            .await
            .expect("fk")
            .get(0);
        assert_eq!(foreign_keys, 1);
        let secure_delete: i64 = pragma("PRAGMA secure_delete")
            .fetch_one(&mut **connection)
            .await
            .expect("sd")
            .get(0);
        assert_eq!(secure_delete, 1);
        let busy: i64 = pragma("PRAGMA busy_timeout")
            .fetch_one(&mut **connection)
            .await
            .expect("busy")
            .get(0);
        assert_eq!(busy, 5000);
        let autocheckpoint: i64 = pragma("PRAGMA wal_autocheckpoint")
            .fetch_one(&mut **connection)
            .await
            .expect("autocheckpoint")
            .get(0);
        assert_eq!(
            autocheckpoint, 16_384,
            "commits leave checkpoints to the background"
        );
    }
}

#[tokio::test]
async fn sqlite_commits_are_checkpointed_in_the_background() {
    let (dir, database) = sqlite_database().await;
    database.migrate("test", &[FIRST]).await.expect("migrate");
    // About 6 MiB in one commit: past SQLite's default checkpoint threshold (4 MiB), short of
    // the backstop (64 MiB), so only the background task copies it into the database file.
    insert_items(
        &database,
        (0..1500).map(|index| format!("{index:04}{}", "x".repeat(4096))),
    )
    .await;

    // What the task promises: soon after a commit, with no further writes, the task has
    // copied the log into the database file. Poll that very condition: a checkpoint counted
    // earlier may have run while the large transaction was still open (copying only the
    // migration's pages), and the file grows while a checkpoint is still under way.
    let database_file = dir.path().join("nested/dir/hds.db");
    let file_size = || {
        std::fs::metadata(&database_file)
            .expect("database file")
            .len()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while file_size() <= 6_000_000 || database.background_checkpoints() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no background checkpoint copied the commit into the database file \
             ({} bytes, {} checkpoints)",
            file_size(),
            database.background_checkpoints()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Under a stream of commits that never pauses, the write-ahead log still starts over (each
/// time it does, SQLite counts one more in the log's header) instead of growing for as long
/// as the stream lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_log_starts_over_under_a_stream_of_commits() {
    let (dir, database) = sqlite_database().await;
    database.migrate("test", &[FIRST]).await.expect("migrate");
    let log = dir.path().join("nested/dir/hds.db-wal");
    // The log header's checkpoint sequence: how many times the log started over.
    let restarts = || -> u32 {
        let header = std::fs::read(&log).unwrap_or_default();
        header.get(12..16).map_or(0, |bytes| {
            u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
        })
    };
    let streaming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut writers = Vec::new();
    for writer in 0..8_u64 {
        let database = database.clone();
        let streaming = std::sync::Arc::clone(&streaming);
        writers.push(tokio::spawn(async move {
            let mut index = 0_u64;
            while streaming.load(std::sync::atomic::Ordering::Relaxed) {
                // Names spread over the whole index, as hashed tokens are: every commit
                // changes pages all over it, and a checkpoint has many to copy.
                let names = (index + 1..=index + 4).map(|index| {
                    let spread =
                        (writer * 1_000_003 + index).wrapping_mul(0x9E37_79B9_7F4A_7C15_u64);
                    format!("{spread:016x}-{writer}-{index}-{}", "x".repeat(1024))
                });
                insert_items(&database, names).await;
                index += 4;
            }
        }));
    }
    let first = restarts();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while restarts() < first + 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let seen = restarts();
    streaming.store(false, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    assert!(
        seen >= first + 2,
        "the log started over {} times in 30 s of commits ({} checkpoints)",
        seen - first,
        database.background_checkpoints()
    );
}

/// What PostgreSQL fails as a deadlock or a serialization failure, and only that, is a
/// transaction conflict (`is_transaction_conflict`, which a store runs again on): two
/// transactions that lock two rows in opposite orders, two repeatable-read transactions that
/// update one row; not a duplicate key.
#[tokio::test]
async fn postgres_conflicts_are_told_from_other_errors() {
    use std::sync::Arc;
    let database = postgres_database().await;
    database.migrate("test", &[FIRST]).await.expect("migrate");
    insert_items(&database, ["a".to_owned(), "b".to_owned()]).await;
    let update = |name: &str| format!("UPDATE items SET name = name WHERE name = '{name}'");

    // A deadlock: each holds one row and asks for the other's. PostgreSQL fails one; its
    // rollback lets the other finish.
    let both_hold_one = Arc::new(tokio::sync::Barrier::new(2));
    let mut sides = Vec::new();
    for (own, other) in [("a", "b"), ("b", "a")] {
        let pool = database.pool().clone();
        let both_hold_one = Arc::clone(&both_hold_one);
        let (own, other) = (update(own), update(other));
        sides.push(tokio::spawn(async move {
            let mut transaction = pool.begin().await.expect("begin");
            sqlx::query(&own)
                .execute(&mut *transaction)
                .await
                .expect("own row");
            both_hold_one.wait().await;
            let outcome = sqlx::query(&other).execute(&mut *transaction).await;
            match outcome {
                Ok(_) => transaction.commit().await,
                Err(error) => Err(error),
            }
        }));
    }
    let mut failures = Vec::new();
    for side in sides {
        if let Err(error) = side.await.expect("side") {
            failures.push(error);
        }
    }
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        hds_db::is_transaction_conflict(&failures[0]),
        "{}",
        failures[0]
    );

    // A serialization failure: a repeatable-read transaction updates a row that another
    // changed after its snapshot.
    let mut reader = database.pool().begin().await.expect("begin");
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *reader)
        .await
        .expect("isolation");
    sqlx::query("SELECT COUNT(*) FROM items")
        .fetch_one(&mut *reader)
        .await
        .expect("snapshot");
    let mut writer = database.pool().begin().await.expect("begin");
    sqlx::query(&update("a"))
        .execute(&mut *writer)
        .await
        .expect("update");
    writer.commit().await.expect("commit");
    let failed = sqlx::query(&update("a"))
        .execute(&mut *reader)
        .await
        .expect_err("a concurrent update");
    assert!(hds_db::is_transaction_conflict(&failed), "{failed}");
    drop(reader);

    // A duplicate key is not a conflict: running it again fails the same way.
    let duplicate = sqlx::query("INSERT INTO items (name) VALUES ('a')")
        .execute(database.pool())
        .await
        .expect_err("duplicate");
    assert!(!hds_db::is_transaction_conflict(&duplicate), "{duplicate}");
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    for url in ["mysql://x", "sqlite::memory:", "sqlite:", "file.db"] {
        assert!(
            matches!(Database::connect(url).await, Err(DbError::UnsupportedUrl)),
            "{url}"
        );
    }
}

/// Nodes on one PostgreSQL database (each its own pool) taking the bootstrap lock: never two
/// holders at once, a read-then-write under it loses no update, and a guard dropped without
/// release (a node that failed mid-way) still lets the next node in.
#[tokio::test]
async fn cluster_lock_excludes_other_nodes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let cluster = PostgresCluster::shared().expect("test cluster");
    let url = cluster.fresh_database().await.expect("fresh database");
    let setup = Database::connect(&url).await.expect("connect");
    setup
        .migrate("items", &[FIRST, SECOND])
        .await
        .expect("migrate");
    sqlx::query("INSERT INTO items (name, size) VALUES ('counter', 0)")
        .execute(setup.pool())
        .await
        .expect("insert");
    let holders = Arc::new(AtomicUsize::new(0));
    let mut nodes = Vec::new();
    for node in 0..3 {
        let database = Database::connect(&url).await.expect("connect node");
        let holders = holders.clone();
        nodes.push(tokio::spawn(async move {
            for round in 0..5 {
                let guard = database
                    .cluster_lock(hds_db::ClusterLock::Bootstrap)
                    .await
                    .expect("lock");
                assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                let size: i64 = sqlx::query("SELECT size FROM items WHERE name = 'counter'")
                    .fetch_one(database.pool())
                    .await
                    .expect("read")
                    .get(0);
                tokio::task::yield_now().await;
                sqlx::query("UPDATE items SET size = $1 WHERE name = 'counter'")
                    .bind(size + 1)
                    .execute(database.pool())
                    .await
                    .expect("write");
                holders.fetch_sub(1, Ordering::SeqCst);
                if (node + round) % 2 == 0 {
                    guard.release().await.expect("release");
                } else {
                    drop(guard);
                }
            }
        }));
    }
    for node in nodes {
        node.await.expect("node");
    }
    let size: i64 = sqlx::query("SELECT size FROM items WHERE name = 'counter'")
        .fetch_one(setup.pool())
        .await
        .expect("read")
        .get(0);
    assert_eq!(size, 15);
}

/// Three nodes migrating one fresh PostgreSQL database at once: all succeed, each migration is
/// recorded once.
#[tokio::test]
async fn nodes_migrating_at_once_apply_each_migration_once() {
    let cluster = PostgresCluster::shared().expect("test cluster");
    let url = cluster.fresh_database().await.expect("fresh database");
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        nodes.push(tokio::spawn(async move {
            let database = Database::connect(&url).await.expect("connect node");
            database.migrate("items", &[FIRST, SECOND]).await
        }));
    }
    for node in nodes {
        node.await.expect("node").expect("migrate");
    }
    let database = Database::connect(&url).await.expect("connect");
    let applied: i64 =
        sqlx::query("SELECT COUNT(*) FROM hds_schema_migrations WHERE component = 'items'")
            .fetch_one(database.pool())
            .await
            .expect("count")
            .get(0);
    assert_eq!(applied, 2);
}
