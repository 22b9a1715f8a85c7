//! The sweeper against a database holding the columns it reads: orphans older than the grace
//! period go, referenced and young blobs stay, study keys without studies go.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hds_backup::Sweeper;
use hds_blob::{BlobName, BlobStore, PACKED_BLOB_LIMIT};
use hds_db::Database;

/// The index tables the sweeper reads, reduced to the columns it uses.
const SCHEMA: &[&str] = &[
    "CREATE TABLE dicom_instances (id INTEGER PRIMARY KEY, blob_name TEXT NOT NULL, original_blob_name TEXT)",
    "CREATE TABLE dicom_studies (id INTEGER PRIMARY KEY, service TEXT NOT NULL, uid_token BLOB NOT NULL)",
    "CREATE TABLE dicom_study_keys (service TEXT NOT NULL, study_token BLOB NOT NULL, wrapped_key BLOB NOT NULL)",
];

/// A temporary directory with the sweeper's tables and a local blob store (in `blobs/`).
async fn fixture() -> (tempfile::TempDir, Database, std::path::PathBuf, BlobStore) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("index.db").display());
    let database = Database::connect(&url).await.expect("database");
    for statement in SCHEMA {
        sqlx::query(statement)
            .execute(database.pool())
            .await
            .expect("schema");
    }
    let blob_dir = dir.path().join("blobs");
    let blobs = BlobStore::local(&blob_dir).expect("blobs");
    (dir, database, blob_dir, blobs)
}

async fn insert_instance(database: &Database, blob_name: &str) {
    sqlx::query("INSERT INTO dicom_instances (blob_name) VALUES ($1)")
        .bind(blob_name)
        .execute(database.pool())
        .await
        .expect("instance");
}

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
    let (_dir, database, blob_dir, blobs) = fixture().await;
    let referenced = BlobName::random();
    let old_orphan = BlobName::random();
    let young_orphan = BlobName::random();
    // Files of their own: too large for a pack.
    for name in [&referenced, &old_orphan, &young_orphan] {
        let stored = blobs
            .put(name, Bytes::from(vec![1u8; PACKED_BLOB_LIMIT + 1]))
            .await
            .expect("put");
        assert_eq!(&stored, name);
    }
    age(&blob_dir, &referenced, Duration::from_secs(7200));
    age(&blob_dir, &old_orphan, Duration::from_secs(7200));
    insert_instance(&database, referenced.as_str()).await;
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

/// Small blobs live in packs: an old orphan's record is removed, a referenced or young one
/// stays, and a packed blob restored from a backup (a file under its identity, its row still
/// naming the record) is referenced by its identity, not removed.
#[tokio::test]
async fn packed_orphans_are_removed_and_restored_packed_blobs_are_kept() {
    let (_dir, database, blob_dir, blobs) = fixture().await;
    let contents = Bytes::from_static(b"sealed bytes");
    let referenced = blobs
        .put(&BlobName::random(), contents.clone())
        .await
        .expect("put");
    let orphan = blobs
        .put(&BlobName::random(), contents.clone())
        .await
        .expect("put");
    assert_ne!(referenced.identity(), referenced.as_str(), "packed");
    insert_instance(&database, referenced.as_str()).await;
    // Restored from a backup: the row names a record in a pack this store does not have
    // (a backup holds files), and the blob is a file under its identity.
    let identity = BlobName::random();
    let restored_row = format!("{}@7.0.12", identity.identity());
    let mut writer = blobs.create(&identity).await.expect("create");
    writer.write(&contents).await.expect("write");
    writer.finish().await.expect("finish");
    age(&blob_dir, &identity, Duration::from_secs(7200));
    insert_instance(&database, &restored_row).await;
    let restored = BlobName::parse(&restored_row).expect("name");
    assert_eq!(
        blobs.read_range(&restored, 0..6).await.expect("read"),
        "sealed"
    );

    // Records carry their time in whole seconds: let these become older than a 1 s grace.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let young = blobs
        .put(&BlobName::random(), contents.clone())
        .await
        .expect("put");
    let sweeper = Sweeper::new(database.clone(), blobs.clone(), Duration::from_secs(1));
    let report = sweeper.sweep_once().await.expect("sweep");
    assert_eq!(report.orphan_blobs_removed, 1);
    assert_eq!(report.referenced_blobs, 2);
    assert!(matches!(
        blobs.read(&orphan).await,
        Err(hds_blob::BlobError::NotFound)
    ));
    for kept in [&referenced, &young, &restored] {
        assert!(blobs.read(kept).await.is_ok(), "{kept} is kept");
    }
}
