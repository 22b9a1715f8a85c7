//! The sweeper against a database holding the columns it reads: orphans older than the grace
//! period go, referenced and young blobs stay, study keys without studies go.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hds_backup::Sweeper;
use hds_blob::{BlobName, BlobStore};
use hds_db::Database;

/// The index tables the sweeper reads, reduced to the columns it uses.
const SCHEMA: &[&str] = &[
    "CREATE TABLE dicom_instances (id INTEGER PRIMARY KEY, blob_name TEXT NOT NULL, original_blob_name TEXT)",
    "CREATE TABLE dicom_studies (id INTEGER PRIMARY KEY, service TEXT NOT NULL, uid_token BLOB NOT NULL)",
    "CREATE TABLE dicom_study_keys (service TEXT NOT NULL, study_token BLOB NOT NULL, wrapped_key BLOB NOT NULL)",
];

fn age(store_dir: &std::path::Path, name: &BlobName, by: Duration) {
    let path = store_dir.join(&name.as_str()[..2]).join(name.as_str());
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open blob");
    file.set_modified(SystemTime::now() - by)
        .expect("set mtime");
}

#[tokio::test]
async fn orphans_past_the_grace_period_and_keyless_study_keys_are_removed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = Database::connect(&format!("sqlite:{}", dir.path().join("index.db").display()))
        .await
        .expect("database");
    for statement in SCHEMA {
        sqlx::query(statement)
            .execute(database.pool())
            .await
            .expect("schema");
    }
    let blob_dir = dir.path().join("blobs");
    let blobs = BlobStore::local(&blob_dir).expect("blobs");
    let referenced = BlobName::random();
    let old_orphan = BlobName::random();
    let young_orphan = BlobName::random();
    for name in [&referenced, &old_orphan, &young_orphan] {
        blobs
            .put(name, Bytes::from_static(b"sealed bytes"))
            .await
            .expect("put");
    }
    age(&blob_dir, &referenced, Duration::from_secs(7200));
    age(&blob_dir, &old_orphan, Duration::from_secs(7200));
    sqlx::query("INSERT INTO dicom_instances (blob_name) VALUES ($1)")
        .bind(referenced.as_str())
        .execute(database.pool())
        .await
        .expect("instance");
    sqlx::query("INSERT INTO dicom_studies (service, uid_token) VALUES ('s', x'01')")
        .execute(database.pool())
        .await
        .expect("study");
    for token in ["x'01'", "x'02'"] {
        sqlx::query(&format!(
            "INSERT INTO dicom_study_keys (service, study_token, wrapped_key) VALUES ('s', {token}, x'00')"
        ))
        .execute(database.pool())
        .await
        .expect("study key");
    }

    let sweeper = Sweeper::new(database.clone(), blobs.clone(), Duration::from_secs(3600));
    let report = sweeper.sweep_once().await.expect("sweep");
    assert_eq!(report.orphan_blobs_removed, 1);
    assert_eq!(report.referenced_blobs, 1);
    assert_eq!(report.study_keys_removed, 1);
    assert!(blobs.read(&referenced).await.is_ok());
    assert!(
        blobs.read(&young_orphan).await.is_ok(),
        "younger than the grace period"
    );
    assert!(blobs.read(&old_orphan).await.is_err());
    let keys: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM dicom_study_keys WHERE study_token = x'01'")
            .fetch_one(database.pool())
            .await
            .expect("count");
    assert_eq!(keys, 1, "the key of an existing study stays");

    let again = sweeper.sweep_once().await.expect("sweep");
    assert_eq!(again.orphan_blobs_removed + again.study_keys_removed, 0);
}
