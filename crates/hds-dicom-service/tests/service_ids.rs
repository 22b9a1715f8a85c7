//! The mapping from resource ids to service ids, on SQLite and PostgreSQL: a service's data
//! key belongs to one resource id, follows it through a move, and is never shared.

use hds_db::Database;
use hds_db::testing::PostgresCluster;
use hds_dicom_service::ServiceIds;

const GROUP_A: &str = "/subscriptions/s/resourceGroups/a/providers/Microsoft.HealthcareApis/workspaces/ws/dicomservices/dicom";
const GROUP_B: &str = "/subscriptions/s/resourceGroups/b/providers/Microsoft.HealthcareApis/workspaces/ws/dicomservices/dicom";

async fn open(backend: &str) -> (tempfile::TempDir, ServiceIds) {
    let directory = tempfile::tempdir().expect("temporary directory");
    let url = match backend {
        "sqlite" => format!("sqlite:{}", directory.path().join("ids.db").display()),
        _ => PostgresCluster::shared()
            .expect("PostgreSQL test cluster")
            .fresh_database()
            .await
            .expect("fresh database"),
    };
    let database = Database::connect(&url).await.expect("database");
    (directory, ServiceIds::open(database).await.expect("ids"))
}

async fn ids_belong_to_one_resource(backend: &str) {
    let (_directory, ids) = open(backend).await;
    let first = ids.claim(GROUP_A).await.expect("claim");
    assert!(first.assigned);
    let again = ids.claim(&GROUP_A.to_uppercase()).await.expect("claim");
    assert_eq!(
        again.service_id, first.service_id,
        "ids compare case-insensitively"
    );
    assert!(!again.assigned);
    let other = ids.claim(GROUP_B).await.expect("claim");
    assert_ne!(
        other.service_id, first.service_id,
        "the same names in another group are another service"
    );

    // A move keeps the id; the old resource id no longer reaches it.
    let moved = GROUP_A.replace("/resourceGroups/a/", "/resourceGroups/c/");
    ids.moved(GROUP_A, &moved).await.expect("move");
    assert_eq!(
        ids.get(&moved).await.expect("get"),
        Some(first.service_id.clone())
    );
    assert_eq!(ids.get(GROUP_A).await.expect("get"), None);
    let recreated = ids.claim(GROUP_A).await.expect("claim");
    assert_ne!(recreated.service_id, first.service_id);

    // Releasing one resource leaves the others.
    ids.release(&moved).await.expect("release");
    assert_eq!(ids.get(&moved).await.expect("get"), None);
    assert_eq!(ids.get(GROUP_B).await.expect("get"), Some(other.service_id));
}

async fn a_legacy_key_goes_to_one_resource(backend: &str) {
    let (_directory, ids) = open(backend).await;
    let legacy = "ws/dicom";
    let first = ids
        .claim_preferring(GROUP_A, Some(legacy))
        .await
        .expect("claim");
    assert_eq!(first.service_id, legacy);
    let second = ids
        .claim_preferring(GROUP_B, Some(legacy))
        .await
        .expect("claim");
    assert_ne!(second.service_id, legacy, "a stored key has one owner");
    assert!(second.assigned);
}

async fn concurrent_claims_agree(backend: &str) {
    let (_directory, ids) = open(backend).await;
    for round in 0..8 {
        let resource = format!("{GROUP_A}{round}");
        let (left, right) = tokio::join!(ids.claim(&resource), ids.claim(&resource));
        let (left, right) = (left.expect("claim"), right.expect("claim"));
        assert_eq!(left.service_id, right.service_id);
        assert!(
            left.assigned != right.assigned,
            "exactly one claim assigns the id"
        );
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name("sqlite").await; })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name("postgres").await; })*
        }
    };
}

on_both_backends!(
    ids_belong_to_one_resource,
    a_legacy_key_goes_to_one_resource,
    concurrent_claims_agree,
);
