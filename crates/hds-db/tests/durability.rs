//! Commits are synced unless the caller asks otherwise, on both backends.

use hds_db::testing::PostgresCluster;
use hds_db::{ConnectOptions, Database};
use sqlx::Row;

async fn sqlite_synchronous(options: ConnectOptions) -> i64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("hds.db").display());
    let database = Database::connect_with(&url, options)
        .await
        .expect("connect sqlite");
    let synchronous: i64 = sqlx::query("PRAGMA synchronous")
        .fetch_one(database.pool())
        .await
        .expect("pragma")
        .get(0);
    // The batched writer's connection of its own is set up the same way.
    let mut transaction = database.begin_write_batched().await.expect("begin");
    let text = format!("{}PRAGMA synchronous", transaction.begin_text());
    let batched: i64 = sqlx::query(&text)
        .fetch_all(&mut *transaction)
        .await
        .expect("pragma on the batched connection")[0]
        .get(0);
    transaction.rollback().await.expect("rollback");
    assert_eq!(batched, synchronous);
    database.close().await;
    synchronous
}

async fn postgres_synchronous_commit(options: ConnectOptions) -> String {
    let cluster = PostgresCluster::shared().expect("test cluster");
    let url = cluster.fresh_database().await.expect("fresh database");
    let database = Database::connect_with(&url, options)
        .await
        .expect("connect postgres");
    let setting: String = sqlx::query("SHOW synchronous_commit")
        .fetch_one(database.pool())
        .await
        .expect("show")
        .get(0);
    database.close().await;
    setting
}

#[tokio::test]
async fn sqlite_syncs_every_commit_by_default_and_only_relaxed_does_not() {
    assert_eq!(sqlite_synchronous(ConnectOptions::default()).await, 2);
    assert_eq!(sqlite_synchronous(ConnectOptions::relaxed()).await, 1);
}

#[tokio::test]
async fn postgres_commits_synchronously_by_default_and_only_relaxed_does_not() {
    assert_eq!(
        postgres_synchronous_commit(ConnectOptions::default()).await,
        "on"
    );
    assert_eq!(
        postgres_synchronous_commit(ConnectOptions::relaxed()).await,
        "off"
    );
}
