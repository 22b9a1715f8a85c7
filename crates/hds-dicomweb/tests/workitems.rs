//! UPS-RS over the HTTP API and encrypted storage: the whole lifecycle of a workitem, the
//! answers Azure gives for each refusal, concurrent claims of one workitem (one owner), hostile
//! bodies and queries, and lost key access.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use hds_blob::BlobStore;
use hds_crypto::keys::{LocalRsaKek, RsaKeySize};
use hds_db::Database;
use hds_dicomweb::{AllowAll, DicomWebConfig, DicomWebState, StaticServices};
use hds_index::{Index, ServiceKeyring, ServiceKeyrings};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const BASE: &str = "/dicom/default/dicom/v2";
const DICOM_JSON: &str = "application/dicom+json";

struct Server {
    _directory: tempfile::TempDir,
    router: Router,
    keyring: Arc<ServiceKeyring>,
}

async fn server() -> Server {
    let directory = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", directory.path().join("index.db").display());
    let database = Database::connect(&url).await.expect("database");
    let keyrings = ServiceKeyrings::default();
    let index = Index::open(database.clone(), Arc::new(keyrings.clone()))
        .await
        .expect("index");
    let blobs = BlobStore::local(&directory.path().join("blobs")).expect("blobs");
    let kek = LocalRsaKek::generate("test-kek", RsaKeySize::Rsa2048).expect("kek");
    let keyring = keyrings
        .open_or_create(
            &database,
            &StaticServices::service_key("default", "dicom"),
            Arc::new(kek),
        )
        .await
        .expect("keyring");
    let services =
        StaticServices::default().with("default", "dicom", "/test/dicom", keyring.clone());
    let router = hds_dicomweb::router(DicomWebState {
        archive: hds_archive::Archive::new(index, blobs),
        services: Arc::new(services),
        access: Arc::new(AllowAll),
        config: Arc::new(DicomWebConfig {
            public_base_url: "http://dicom.test".to_owned(),
            ..DicomWebConfig::default()
        }),
    });
    Server {
        _directory: directory,
        router,
        keyring,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

async fn call(server: &Server, method: &str, uri: &str, body: Option<Value>) -> Answer {
    call_raw(
        server,
        method,
        uri,
        DICOM_JSON,
        body.map(|body| body.to_string().into_bytes()),
    )
    .await
}

async fn call_raw(
    server: &Server,
    method: &str,
    uri: &str,
    content_type: &str,
    body: Option<Vec<u8>>,
) -> Answer {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{BASE}/{uri}"))
        .header("host", "localhost")
        .header("accept", DICOM_JSON);
    if body.is_some() {
        request = request.header("content-type", content_type);
    }
    let request = request
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .expect("request");
    let response = server
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible router");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn workitem(uid: &str, patient: &str, accession: &str, start: &str) -> Value {
    json!({
        "00080018": {"vr": "UI", "Value": [uid]},
        "00741200": {"vr": "CS", "Value": ["MEDIUM"]},
        "00741204": {"vr": "LO", "Value": ["CT chest"]},
        "00741210": {"vr": "SQ"},
        "00404025": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["CT01"]}}]},
        "00404026": {"vr": "SQ"},
        "00404027": {"vr": "SQ"},
        "00404005": {"vr": "DT", "Value": [start]},
        "00404018": {"vr": "SQ"},
        "00400400": {"vr": "LT"},
        "00404041": {"vr": "CS", "Value": ["READY"]},
        "00404021": {"vr": "SQ"},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": patient}]},
        "00100020": {"vr": "LO", "Value": ["PID-1"]},
        "00101002": {"vr": "SQ"},
        "00100030": {"vr": "DA"},
        "00100040": {"vr": "CS"},
        "00380010": {"vr": "LO"},
        "00380014": {"vr": "SQ"},
        "00081080": {"vr": "LO"},
        "00081084": {"vr": "SQ"},
        "0040A370": {"vr": "SQ", "Value": [{
            "0020000D": {"vr": "UI", "Value": ["1.2.3.4"]},
            "00080050": {"vr": "SH", "Value": [accession]},
            "00401001": {"vr": "SH", "Value": ["RP-1"]}
        }]}
    })
}

fn state_change(transaction: &str, state: &str) -> Value {
    json!({
        "00081195": {"vr": "UI", "Value": [transaction]},
        "00741000": {"vr": "CS", "Value": [state]}
    })
}

fn performed() -> Value {
    json!({
        "00741216": {"vr": "SQ", "Value": [{
            "00404028": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["CT01"]}}]},
            "00404050": {"vr": "DT", "Value": ["20261204100000"]},
            "00404019": {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["W1"]}}]},
            "00404051": {"vr": "DT", "Value": ["20261204103000"]},
            "00404033": {"vr": "SQ", "Value": [{}]}
        }]}
    })
}

fn state_of(answer: &Answer) -> String {
    answer.json()["00741000"]["Value"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn uids(answer: &Answer) -> Vec<String> {
    if answer.status == StatusCode::NO_CONTENT {
        return Vec::new();
    }
    answer
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|item| {
            item["00080018"]["Value"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_workitem_lives_through_create_claim_update_and_completion() {
    let server = server().await;
    let uid = "1.2.840.99.1";
    let created = call(
        &server,
        "POST",
        "workitems",
        Some(workitem(uid, "Doe^Jane", "ACC1", "20261204090000")),
    )
    .await;
    assert_eq!(
        created.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(
        created.header("location"),
        format!("http://dicom.test{BASE}/workitems/{uid}")
    );
    assert_eq!(
        created.header("content-location"),
        created.header("location")
    );
    // The same UID again is a conflict; the UID may come from the URI.
    let again = call(
        &server,
        "POST",
        "workitems",
        Some(workitem(uid, "Doe^Jane", "ACC1", "20261204090000")),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let mut from_uri = workitem("1.2.840.99.2", "Roe^Richard", "ACC2", "20261220080000");
    from_uri.as_object_mut().expect("object").remove("00080018");
    let second = call(&server, "POST", "workitems?1.2.840.99.2", Some(from_uri)).await;
    assert_eq!(second.status, StatusCode::CREATED);

    // Retrieve: SCHEDULED, no Transaction UID, the service's attributes set.
    let retrieved = call(&server, "GET", &format!("workitems/{uid}"), None).await;
    assert_eq!(retrieved.status, StatusCode::OK);
    assert_eq!(retrieved.header("content-type"), DICOM_JSON);
    assert_eq!(state_of(&retrieved), "SCHEDULED");
    assert_eq!(
        retrieved.json()["00080016"]["Value"][0],
        "1.2.840.10008.5.1.4.34.6.1"
    );
    assert!(retrieved.json().get("00081195").is_none());
    let missing = call(&server, "GET", "workitems/1.2.840.99.404", None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // Search by several attributes.
    let search = |query: &'static str| call(&server, "GET", query, None);
    assert_eq!(uids(&search("workitems").await), ["1.2.840.99.2", uid]);
    assert_eq!(
        uids(&search("workitems?PatientName=doe&fuzzymatching=true").await),
        [uid]
    );
    assert_eq!(
        uids(&search("workitems?0040A370.00080050=ACC2").await),
        ["1.2.840.99.2"]
    );
    assert_eq!(
        uids(&search("workitems?ScheduledProcedureStepStartDateTime=20261201-20261210").await),
        [uid]
    );
    assert_eq!(
        uids(&search("workitems?ScheduledStationNameCodeSequence.CodeValue=CT01&ProcedureStepState=SCHEDULED&limit=1&offset=1").await),
        [uid]
    );
    let none = search("workitems?PatientID=nobody").await;
    assert_eq!(none.status, StatusCode::NO_CONTENT);

    // An update while SCHEDULED takes no Transaction UID.
    let label = json!({"00741204": {"vr": "LO", "Value": ["CT chest, contrast"]}});
    let refused = call(
        &server,
        "POST",
        &format!("workitems/{uid}?1.2.3"),
        Some(label.clone()),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.header("warning").starts_with("299 "));
    let updated = call(&server, "POST", &format!("workitems/{uid}"), Some(label)).await;
    assert_eq!(
        updated.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&updated.body)
    );
    assert_eq!(
        updated.header("content-location"),
        format!("http://dicom.test{BASE}/workitems/{uid}")
    );

    // Claim it; a second claim and the wrong Transaction UID are refused.
    let owner = "1.2.840.99.777";
    let claimed = call(
        &server,
        "PUT",
        &format!("workitems/{uid}/state"),
        Some(state_change(owner, "IN PROGRESS")),
    )
    .await;
    assert_eq!(
        claimed.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&claimed.body)
    );
    let reclaimed = call(
        &server,
        "PUT",
        &format!("workitems/{uid}/state"),
        Some(state_change("1.2.840.99.778", "IN PROGRESS")),
    )
    .await;
    assert_eq!(reclaimed.status, StatusCode::BAD_REQUEST);
    assert!(
        reclaimed.header("warning").contains("C301"),
        "{}",
        reclaimed.header("warning")
    );
    let retrieved = call(&server, "GET", &format!("workitems/{uid}"), None).await;
    assert_eq!(state_of(&retrieved), "IN PROGRESS");
    assert!(
        retrieved.json().get("00081195").is_none(),
        "the lock never leaves the service"
    );
    let in_progress = search("workitems?ProcedureStepState=IN%20PROGRESS").await;
    assert_eq!(uids(&in_progress), [uid]);
    assert!(in_progress.json()[0].get("00081195").is_none());

    // Updates need the owner's Transaction UID.
    let wrong = call(
        &server,
        "POST",
        &format!("workitems/{uid}?1.2.840.99.778"),
        Some(performed()),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    let absent = call(
        &server,
        "POST",
        &format!("workitems/{uid}"),
        Some(performed()),
    )
    .await;
    assert_eq!(absent.status, StatusCode::BAD_REQUEST);
    // Completing before the performed procedure is recorded is refused, then allowed.
    let early = call(
        &server,
        "PUT",
        &format!("workitems/{uid}/state"),
        Some(state_change(owner, "COMPLETED")),
    )
    .await;
    assert_eq!(early.status, StatusCode::BAD_REQUEST);
    let recorded = call(
        &server,
        "POST",
        &format!("workitems/{uid}?{owner}"),
        Some(performed()),
    )
    .await;
    assert_eq!(
        recorded.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&recorded.body)
    );
    let cancel_owned = call(
        &server,
        "POST",
        &format!("workitems/{uid}/cancelrequest"),
        None,
    )
    .await;
    assert_eq!(cancel_owned.status, StatusCode::CONFLICT);
    assert!(cancel_owned.header("warning").contains("IN PROGRESS"));
    let completed = call(
        &server,
        "PUT",
        &format!("workitems/{uid}/state"),
        Some(state_change(owner, "COMPLETED")),
    )
    .await;
    assert_eq!(
        completed.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&completed.body)
    );
    let twice = call(
        &server,
        "PUT",
        &format!("workitems/{uid}/state"),
        Some(state_change(owner, "COMPLETED")),
    )
    .await;
    assert_eq!(twice.status, StatusCode::OK);
    assert!(twice.header("warning").contains("already"));
    let late = call(
        &server,
        "POST",
        &format!("workitems/{uid}?{owner}"),
        Some(performed()),
    )
    .await;
    assert_eq!(late.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        state_of(&call(&server, "GET", &format!("workitems/{uid}"), None).await),
        "COMPLETED"
    );

    // A scheduled workitem is canceled on request; a second request is a conflict.
    let cancel = call(
        &server,
        "POST",
        "workitems/1.2.840.99.2/cancelrequest",
        Some(json!({"00741238": {"vr": "LT", "Value": ["patient moved"]}})),
    )
    .await;
    assert_eq!(
        cancel.status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&cancel.body)
    );
    let canceled = call(&server, "GET", "workitems/1.2.840.99.2", None).await;
    assert_eq!(state_of(&canceled), "CANCELED");
    let again = call(
        &server,
        "POST",
        "workitems/1.2.840.99.2/cancelrequest",
        None,
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert!(again.header("warning").contains("CANCELED"));
    let unknown = call(
        &server,
        "POST",
        "workitems/1.2.840.99.404/cancelrequest",
        None,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let unknown = call(
        &server,
        "PUT",
        "workitems/1.2.840.99.404/state",
        Some(state_change(owner, "IN PROGRESS")),
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn concurrent_claims_leave_one_owner() {
    let server = Arc::new(server().await);
    let uid = "1.2.840.99.50";
    let created = call(
        &server,
        "POST",
        "workitems",
        Some(workitem(uid, "Race^Ann", "ACC50", "20261204090000")),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let claims = (0..8).map(|n| {
        let server = server.clone();
        async move {
            call(
                &server,
                "PUT",
                &format!("workitems/{uid}/state"),
                Some(state_change(&format!("1.2.840.99.50.{n}"), "IN PROGRESS")),
            )
            .await
            .status
        }
    });
    let statuses = futures::future::join_all(claims).await;
    assert_eq!(
        statuses
            .iter()
            .filter(|status| **status == StatusCode::OK)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses.iter().all(|status| *status == StatusCode::OK
        || *status == StatusCode::BAD_REQUEST
        || *status == StatusCode::CONFLICT));
}

#[tokio::test]
async fn hostile_workitem_requests_are_refused() {
    let server = server().await;
    let valid = workitem("1.2.840.99.60", "Doe^Jane", "ACC60", "20261204090000");
    let deep = (0..12).fold(
        json!({}),
        |inner, _| json!({"0040A730": {"vr": "SQ", "Value": [inner]}}),
    );
    let mut missing = valid.clone();
    missing.as_object_mut().expect("object").remove("00741200");
    let mut in_progress = valid.clone();
    in_progress["00741000"] = json!({"vr": "CS", "Value": ["IN PROGRESS"]});
    for (body, status) in [
        (b"not json".to_vec(), StatusCode::BAD_REQUEST),
        (b"[]".to_vec(), StatusCode::BAD_REQUEST),
        (deep.to_string().into_bytes(), StatusCode::BAD_REQUEST),
        (missing.to_string().into_bytes(), StatusCode::BAD_REQUEST),
        (
            in_progress.to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
        ),
        (vec![b' '; 2 * 1024 * 1024], StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let answer = call_raw(&server, "POST", "workitems", DICOM_JSON, Some(body)).await;
        assert_eq!(
            answer.status,
            status,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let wrong_type = call_raw(
        &server,
        "POST",
        "workitems",
        "application/xml",
        Some(valid.to_string().into_bytes()),
    )
    .await;
    assert_eq!(wrong_type.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    for (method, uri, body) in [
        ("POST", "workitems?1.2.3&x=1", Some(valid.clone())),
        ("POST", "workitems?not-a-uid", Some(valid.clone())),
        ("GET", "workitems/not-a-uid", None),
        ("GET", "workitems?PatientSex=F", None),
        ("GET", "workitems?PatientName=*", None),
        ("GET", "workitems?limit=100000", None),
        (
            "GET",
            "workitems?ScheduledProcedureStepStartDateTime=2026-13",
            None,
        ),
        (
            "PUT",
            "workitems/1.2.3/state",
            Some(json!({"00741000": {"vr": "CS", "Value": ["COMPLETED"]}})),
        ),
        (
            "PUT",
            "workitems/1.2.3/state",
            Some(state_change("1.2.3", "SCHEDULED")),
        ),
    ] {
        let answer = call(&server, method, uri, body).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{method} {uri}: {}",
            String::from_utf8_lossy(&answer.body)
        );
    }
    let long_query = format!("workitems?PatientID={}", "x".repeat(300));
    assert_eq!(
        call(&server, "GET", &long_query, None).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn lost_key_access_answers_customer_managed_key_access_lost() {
    let server = server().await;
    let uid = "1.2.840.99.70";
    let created = call(
        &server,
        "POST",
        "workitems",
        Some(workitem(uid, "Doe^Jane", "ACC70", "20261204090000")),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    server.keyring.forget();
    for (method, uri, body) in [
        ("GET", format!("workitems/{uid}"), None),
        ("GET", "workitems?PatientID=PID-1".to_owned(), None),
        (
            "POST",
            "workitems".to_owned(),
            Some(workitem(
                "1.2.840.99.71",
                "Doe^Jane",
                "ACC71",
                "20261204090000",
            )),
        ),
        (
            "PUT",
            format!("workitems/{uid}/state"),
            Some(state_change("1.2.9", "IN PROGRESS")),
        ),
    ] {
        let answer = call(&server, method, &uri, body).await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            answer.json()["error"]["code"],
            "CustomerManagedKeyAccessLost"
        );
    }
    server.keyring.unlock().await.expect("access is back");
    assert_eq!(
        call(&server, "GET", &format!("workitems/{uid}"), None)
            .await
            .status,
        StatusCode::OK
    );
}
