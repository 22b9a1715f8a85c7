//! The DICOMweb API over encrypted storage: what it stores opens again, damaged blobs fail
//! with a clear code (before the status line when the first segment is bad, by aborting the body
//! when a later one is), and lost key access answers `CustomerManagedKeyAccessLost`, to an
//! authorized caller only.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use hds_blob::BlobStore;
use hds_crypto::keys::{LocalRsaKek, RsaKeySize};
use hds_db::Database;
use hds_dicomweb::{
    AccessRefusal, AllowAll, Caller, DataAccess, DicomAccessControl, DicomServiceResolver,
    DicomWebConfig, DicomWebError, DicomWebState, ResolvedService, ServiceUnavailable,
    StaticServices,
};
use hds_index::{Index, ServiceKeyring, ServiceKeyrings};
use http_body_util::BodyExt;
use tower::ServiceExt;

const BASE: &str = "/dicom/default/dicom/v2";
const ROWS: u16 = 128;
const COLUMNS: u16 = 128;
const FRAMES: usize = 6;
const FRAME_BYTES: usize = ROWS as usize * COLUMNS as usize * 2;
/// Where the stream's segments start and how long each is (64 KiB of plaintext and a tag).
const HEADER_LEN: usize = hds_crypto::stream::HEADER_LEN;
const SEALED_SEGMENT: usize =
    hds_crypto::stream::SEGMENT_SIZE as usize + hds_crypto::stream::TAG_LEN;

struct Server {
    _directory: tempfile::TempDir,
    blob_directory: PathBuf,
    router: Router,
    keyring: Arc<ServiceKeyring>,
}

async fn server() -> Server {
    server_with(|services| Arc::new(services), Arc::new(AllowAll)).await
}

/// A server whose resolver is `resolver` over the one static service, checked by `access`.
async fn server_with(
    resolver: impl FnOnce(StaticServices) -> Arc<dyn DicomServiceResolver>,
    access: Arc<dyn DicomAccessControl>,
) -> Server {
    let directory = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", directory.path().join("index.db").display());
    let database = Database::connect(&url).await.expect("database");
    let keyrings = ServiceKeyrings::default();
    let index = Index::open(database.clone(), Arc::new(keyrings.clone()))
        .await
        .expect("index");
    let blob_directory = directory.path().join("blobs");
    let blobs = BlobStore::local(&blob_directory).expect("blobs");
    let key_encryption_key = LocalRsaKek::generate("test-kek", RsaKeySize::Rsa2048).expect("kek");
    let keyring = keyrings
        .open_or_create(
            &database,
            &StaticServices::service_key("default", "dicom"),
            Arc::new(key_encryption_key),
        )
        .await
        .expect("keyring");
    let services =
        StaticServices::default().with("default", "dicom", "/test/dicom", keyring.clone());
    let router = hds_dicomweb::router(DicomWebState {
        archive: hds_archive::Archive::new(index, blobs),
        services: resolver(services),
        access,
        config: Arc::new(DicomWebConfig {
            public_base_url: "http://dicom.test".to_owned(),
            ..DicomWebConfig::default()
        }),
    });
    Server {
        _directory: directory,
        blob_directory,
        router,
        keyring,
    }
}

struct Instance {
    study: String,
    series: String,
    sop: String,
    file: Vec<u8>,
    pixels: Vec<u8>,
}

fn text(tag: dicom_core::Tag, vr: VR, value: &str) -> DataElement<InMemDicomObject> {
    let mut value = value.to_owned();
    if value.len() % 2 == 1 {
        value.push(if vr == VR::UI { '\0' } else { ' ' });
    }
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn short(tag: dicom_core::Tag, value: u16) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::US, PrimitiveValue::from(value))
}

/// A multi-frame instance of about 200 KB: four sealed segments.
fn instance(number: u32) -> Instance {
    let study = format!("1.2.826.0.1.3680043.10.9.{number}");
    let series = format!("{study}.1");
    let sop = format!("{series}.1");
    let pixels: Vec<u8> = (0..FRAMES * FRAME_BYTES)
        .map(|position| (position % 241) as u8)
        .collect();
    let object = InMemDicomObject::from_element_iter([
        text(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::MULTI_FRAME_GRAYSCALE_WORD_SECONDARY_CAPTURE_IMAGE_STORAGE,
        ),
        text(tags::SOP_INSTANCE_UID, VR::UI, &sop),
        text(tags::STUDY_DATE, VR::DA, "20240101"),
        text(tags::MODALITY, VR::CS, "OT"),
        text(tags::PATIENT_NAME, VR::PN, "Test^Patient"),
        text(tags::PATIENT_ID, VR::LO, "PID-1"),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &study),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &series),
        text(tags::NUMBER_OF_FRAMES, VR::IS, &FRAMES.to_string()),
        short(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        short(tags::ROWS, ROWS),
        short(tags::COLUMNS, COLUMNS),
        short(tags::BITS_ALLOCATED, 16),
        short(tags::BITS_STORED, 16),
        short(tags::HIGH_BIT, 15),
        short(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OW,
            PrimitiveValue::from(pixels.clone()),
        ),
    ]);
    let file_object = object
        .with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
        .expect("meta");
    let mut file = Vec::new();
    file_object.write_all(&mut file).expect("encode");
    Instance {
        study,
        series,
        sop,
        file,
        pixels,
    }
}

async fn call(router: &Router, request: Request<Body>) -> (StatusCode, Result<Vec<u8>, String>) {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible router");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes().to_vec());
    (status, body.map_err(|error| error.to_string()))
}

fn get(uri: &str, accept: &str) -> Request<Body> {
    Request::get(uri)
        .header("host", "localhost")
        .header("accept", accept)
        .body(Body::empty())
        .expect("request")
}

async fn store(server: &Server, instance: &Instance) {
    let request = Request::post(format!("{BASE}/studies"))
        .header("host", "localhost")
        .header("content-type", "application/dicom")
        .header("accept", "application/dicom+json")
        .body(Body::from(instance.file.clone()))
        .expect("request");
    let (status, body) = call(&server.router, request).await;
    assert_eq!(status, StatusCode::OK, "{:?}", body.map(String::from_utf8));
}

fn instance_url(instance: &Instance) -> String {
    format!(
        "{BASE}/studies/{}/series/{}/instances/{}",
        instance.study, instance.series, instance.sop
    )
}

/// Where each blob of a local store's directory is: its file, or the pack segment holding
/// its record, and the bytes in it that are the blob's.
async fn blob_extents(directory: &Path) -> Vec<(PathBuf, std::ops::Range<u64>)> {
    let store = BlobStore::local(directory).expect("store");
    let mut extents = Vec::new();
    for name in store.list_blobs().await.expect("list") {
        extents.push(
            store
                .local_extent(&name)
                .await
                .expect("extent")
                .expect("found"),
        );
    }
    extents
}

/// A blob's bytes, read from its file.
fn read_extent((path, range): &(PathBuf, std::ops::Range<u64>)) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("blob file");
    bytes[range.start as usize..range.end as usize].to_vec()
}

/// Writes `bytes` over a blob's bytes in its file.
fn write_extent((path, range): &(PathBuf, std::ops::Range<u64>), bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    assert_eq!(bytes.len() as u64, range.end - range.start);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("blob file");
    file.write_all_at(bytes, range.start).expect("damage");
}

fn error_code(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
    value["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn stored_instances_and_frames_come_back_decrypted() {
    let server = server().await;
    let stored = instance(1);
    store(&server, &stored).await;
    let extents = blob_extents(&server.blob_directory).await;
    assert_eq!(extents.len(), 1);
    let at_rest = read_extent(&extents[0]);
    assert!(
        !at_rest
            .windows(64)
            .any(|window| window == &stored.pixels[1000..1064]),
        "pixels in the clear"
    );

    let (status, body) = call(
        &server.router,
        get(&instance_url(&stored), "application/dicom"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.expect("body"), stored.file);
    let frame_url = format!("{}/frames/5", instance_url(&stored));
    let (status, body) = call(&server.router, get(&frame_url, "application/octet-stream")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body.expect("frame"),
        stored.pixels[4 * FRAME_BYTES..5 * FRAME_BYTES]
    );
    let (status, _) = call(
        &server.router,
        get(
            &format!("{BASE}/studies?PatientID=PID-1"),
            "application/dicom+json",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_damaged_first_segment_is_a_clean_500_and_a_later_one_aborts_the_body() {
    let server = server().await;
    let stored = instance(2);
    store(&server, &stored).await;
    let extent = blob_extents(&server.blob_directory).await.remove(0);
    let original = read_extent(&extent);

    let mut damaged = original.clone();
    damaged[HEADER_LEN + 10] ^= 1;
    write_extent(&extent, &damaged);
    let (status, body) = call(
        &server.router,
        get(&instance_url(&stored), "application/dicom"),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        error_code(&body.expect("error body")),
        "DataIntegrityCheckFailed"
    );

    let mut damaged = original.clone();
    damaged[HEADER_LEN + 2 * SEALED_SEGMENT + 10] ^= 1;
    write_extent(&extent, &damaged);
    let (status, body) = call(
        &server.router,
        get(&instance_url(&stored), "application/dicom"),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the status line went out with the first segment"
    );
    assert!(body.is_err(), "the body must be aborted, not completed");
    let study_url = format!("{BASE}/studies/{}", stored.study);
    let (status, body) = call(
        &server.router,
        get(&study_url, "multipart/related; type=\"application/dicom\""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.is_err(),
        "a multipart body must end without its closing boundary"
    );
    // A frame in the intact first segment still opens; one in the damaged segment does not.
    let (status, _) = call(
        &server.router,
        get(
            &format!("{}/frames/1", instance_url(&stored)),
            "application/octet-stream",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &server.router,
        get(
            &format!("{}/frames/5", instance_url(&stored)),
            "application/octet-stream",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn lost_key_access_answers_customer_managed_key_access_lost() {
    let server = server().await;
    let stored = instance(3);
    store(&server, &stored).await;
    server.keyring.forget();
    for request in [
        get(&instance_url(&stored), "application/dicom"),
        get(&format!("{BASE}/studies"), "application/dicom+json"),
        Request::post(format!("{BASE}/studies"))
            .header("host", "localhost")
            .header("content-type", "application/dicom")
            .body(Body::from(instance(4).file))
            .expect("request"),
    ] {
        let (status, body) = call(&server.router, request).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            error_code(&body.expect("error body")),
            "CustomerManagedKeyAccessLost"
        );
    }
    server.keyring.unlock().await.expect("access is back");
    let (status, body) = call(
        &server.router,
        get(&instance_url(&stored), "application/dicom"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.expect("body"), stored.file);
}

/// Resolves like [`StaticServices`], then reports the service unavailable, as the DICOM host
/// does while the service's key access is lost.
struct LostKeyServices(StaticServices);

impl DicomServiceResolver for LostKeyServices {
    fn resolve<'a>(
        &'a self,
        workspace: &'a str,
        service: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<ResolvedService>, DicomWebError>> + Send + 'a>>
    {
        Box::pin(async move {
            let resolved = self.0.resolve(workspace, service).await?;
            Ok(resolved.map(|service| ResolvedService {
                unavailable: Some(ServiceUnavailable {
                    code: "CustomerManagedKeyAccessLost",
                    message: "the key is not accessible".to_owned(),
                }),
                ..service
            }))
        })
    }
}

/// Callers named by their bearer token: `reader` may read, anyone else nothing; no token is
/// 401.
struct ReaderOnly;

fn refused(status: StatusCode) -> AccessRefusal {
    AccessRefusal {
        status,
        code: "AuthorizationFailed",
        message: "refused".to_owned(),
        challenge: None,
    }
}

impl DicomAccessControl for ReaderOnly {
    fn authenticate<'a>(
        &'a self,
        headers: &'a axum::http::HeaderMap,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, AccessRefusal>> + Send + 'a>> {
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::to_owned);
        Box::pin(async move {
            token
                .map(Caller::new)
                .ok_or_else(|| refused(StatusCode::UNAUTHORIZED))
        })
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        _resource_id: &'a str,
        access: DataAccess,
    ) -> Pin<Box<dyn Future<Output = Result<(), AccessRefusal>> + Send + 'a>> {
        let allowed = caller.downcast_ref::<String>().map(String::as_str) == Some("reader")
            && access == DataAccess::Read;
        Box::pin(async move {
            if allowed {
                Ok(())
            } else {
                Err(refused(StatusCode::FORBIDDEN))
            }
        })
    }
}

#[tokio::test]
async fn lost_key_access_is_told_only_after_authorization() {
    let server = server_with(
        |services| Arc::new(LostKeyServices(services)),
        Arc::new(ReaderOnly),
    )
    .await;
    let request = |method: &str, token: Option<&str>| {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{BASE}/studies"))
            .header("host", "localhost")
            .header("content-type", "application/dicom")
            .header("accept", "application/dicom+json");
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        if method == "POST" {
            let file = instance(6).file;
            builder = builder.header("content-length", file.len());
            return builder.body(Body::from(file)).expect("request");
        }
        builder.body(Body::empty()).expect("request")
    };
    for (method, token, expected) in [
        ("GET", None, StatusCode::UNAUTHORIZED),
        ("GET", Some("nobody"), StatusCode::FORBIDDEN),
        ("POST", Some("reader"), StatusCode::FORBIDDEN),
        ("GET", Some("reader"), StatusCode::INTERNAL_SERVER_ERROR),
    ] {
        let response = server
            .router
            .clone()
            .oneshot(request(method, token))
            .await
            .expect("infallible router");
        assert_eq!(response.status(), expected, "{method} as {token:?}");
        // A refused upload leaves its body unread: the client is told to close the connection.
        let closes = response
            .headers()
            .get("connection")
            .is_some_and(|value| value == "close");
        assert_eq!(closes, method == "POST", "{method} as {token:?}");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let code = error_code(&body);
        assert_eq!(
            code == "CustomerManagedKeyAccessLost",
            expected == StatusCode::INTERNAL_SERVER_ERROR,
            "{method} as {token:?}: {code}"
        );
    }
}

#[tokio::test]
async fn deleting_a_study_removes_its_blobs() {
    let server = server().await;
    let stored = instance(5);
    store(&server, &stored).await;
    assert_eq!(blob_extents(&server.blob_directory).await.len(), 1);
    let request = Request::delete(format!("{BASE}/studies/{}", stored.study))
        .header("host", "localhost")
        .body(Body::empty())
        .expect("request");
    let (status, _) = call(&server.router, request).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(blob_extents(&server.blob_directory).await.is_empty());
    // Storing the same study again works under a new study key.
    store(&server, &stored).await;
    let (status, body) = call(
        &server.router,
        get(&instance_url(&stored), "application/dicom"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.expect("body"), stored.file);
}

fn post(uri: &str, content_type: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(uri)
        .header("host", "evil.example")
        .header("content-type", content_type)
        .header("accept", "application/dicom+json")
        .body(Body::from(body))
        .expect("request")
}

#[tokio::test]
async fn response_urls_come_from_the_public_base_url_not_the_host_header() {
    let server = server().await;
    let stored = instance(6);
    let request = post(
        &format!("{BASE}/studies"),
        "application/dicom",
        stored.file.clone(),
    );
    let (status, body) = call(&server.router, request).await;
    assert_eq!(status, StatusCode::OK);
    let body = String::from_utf8(body.expect("body")).expect("JSON");
    assert!(!body.contains("evil.example"), "{body}");
    assert!(body.contains(&format!(
        "http://dicom.test{BASE}/studies/{}/series/{}/instances/{}",
        stored.study, stored.series, stored.sop
    )));
}

#[tokio::test]
async fn hostile_multipart_bodies_and_frame_lists_are_refused() {
    let server = server().await;
    let multipart = |boundary: &str| {
        format!("multipart/related; type=\"application/dicom\"; boundary={boundary}")
    };
    // A part header that never ends.
    let mut endless = b"--b\r\nX-Endless: ".to_vec();
    endless.extend(std::iter::repeat_n(b'a', 1024 * 1024));
    // One part more than the default limit, each empty (with a header field: the parser reads
    // a part without one up to the next blank line, which would merge the parts).
    let parts = hds_dicomweb::MultipartLimits::default().max_parts + 1;
    let mut many = b"--b\r\nContent-Type: application/dicom\r\n\r\n\r\n".repeat(parts);
    many.extend_from_slice(b"--b--\r\n");
    let long_boundary = "b".repeat(hds_dicomweb::MAX_BOUNDARY_LEN + 1);
    let mut long = format!("--{long_boundary}\r\n\r\n").into_bytes();
    long.extend_from_slice(&instance(7).file);
    long.extend_from_slice(format!("\r\n--{long_boundary}--\r\n").as_bytes());
    for (body, boundary, expected) in [
        (endless, "b".to_owned(), "part header"),
        (many, "b".to_owned(), "parts"),
        (long, long_boundary, "boundary"),
    ] {
        let request = post(&format!("{BASE}/studies"), &multipart(&boundary), body);
        let (status, body) = call(&server.router, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{expected}");
        let body = body.expect("error body");
        assert_eq!(error_code(&body), "BadRequest");
        assert!(
            String::from_utf8_lossy(&body).contains(expected),
            "{expected}"
        );
    }
    let stored = instance(8);
    store(&server, &stored).await;
    let accept = "multipart/related; type=\"application/octet-stream\"";
    for (frames, expected) in [
        ("1,1", StatusCode::BAD_REQUEST),
        ("2,1,2", StatusCode::BAD_REQUEST),
        ("0", StatusCode::BAD_REQUEST),
        ("7", StatusCode::NOT_FOUND),
    ] {
        let url = format!("{}/frames/{frames}", instance_url(&stored));
        let (status, _) = call(&server.router, get(&url, accept)).await;
        assert_eq!(status, expected, "{frames}");
    }
    // Every frame once, in the order asked, read one at a time.
    let url = format!("{}/frames/6,1,3", instance_url(&stored));
    let (status, body) = call(&server.router, get(&url, accept)).await;
    assert_eq!(status, StatusCode::OK);
    let body = body.expect("body");
    let delimiter = b"\r\n--hds-";
    let mut starts: Vec<usize> = body
        .windows(delimiter.len())
        .enumerate()
        .filter(|(_, window)| window == delimiter)
        .map(|(at, _)| at)
        .collect();
    assert_eq!(starts.len(), 4, "three parts and the closing delimiter");
    let closing = starts.pop().expect("closing");
    starts.push(closing);
    let parts: Vec<&[u8]> = starts
        .windows(2)
        .map(|pair| {
            let part = &body[pair[0]..pair[1]];
            let content = part
                .windows(4)
                .position(|window| window == b"\r\n\r\n")
                .expect("part header end");
            &part[content + 4..]
        })
        .collect();
    let expected: Vec<&[u8]> = [6usize, 1, 3]
        .iter()
        .map(|number| &stored.pixels[(number - 1) * FRAME_BYTES..number * FRAME_BYTES])
        .collect();
    assert_eq!(parts, expected);
}

/// The partition routes of a service with data partitions: the first store creates a
/// partition (its RetrieveURL under the partition's base), the same UIDs live independently in
/// two partitions, retrieve, search and delete stay inside theirs, routes without a partition
/// are refused with Azure's code, as are hostile names and unknown partitions; `GET partitions`
/// lists them, and the change feed (served once for the service) names each entry's partition.
#[tokio::test]
async fn partitions_hold_the_same_uids_independently() {
    let server = server_with(
        |services| Arc::new(services.with_data_partitions("default", "dicom")),
        Arc::new(AllowAll),
    )
    .await;
    let stored = instance(11);
    let relative = |partition: &str| {
        format!(
            "/studies/{}/series/{}/instances/{}",
            stored.study, stored.series, stored.sop
        )
        .replace(
            "/studies",
            &format!("{BASE}/partitions/{partition}/studies"),
        )
    };
    for partition in ["clinic-a", "clinic-b"] {
        let (status, body) = call(
            &server.router,
            post(
                &format!("{BASE}/partitions/{partition}/studies"),
                "application/dicom",
                stored.file.clone(),
            ),
        )
        .await;
        let body = String::from_utf8(body.expect("body")).expect("JSON");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.contains(&format!("http://dicom.test{}", relative(partition))),
            "{body}"
        );
    }
    // Both copies are there, each in its partition.
    for partition in ["clinic-a", "clinic-b"] {
        let (status, body) = call(
            &server.router,
            get(&relative(partition), "application/dicom"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.expect("body"), stored.file);
    }
    // Delete in one partition: the other keeps its copy.
    let request = Request::delete(format!(
        "{BASE}/partitions/clinic-a/studies/{}",
        stored.study
    ))
    .header("host", "localhost")
    .body(Body::empty())
    .expect("request");
    assert_eq!(
        call(&server.router, request).await.0,
        StatusCode::NO_CONTENT
    );
    let search = |partition: &str| {
        get(
            &format!(
                "{BASE}/partitions/{partition}/studies?StudyInstanceUID={}",
                stored.study
            ),
            "application/dicom+json",
        )
    };
    let (status, body) = call(&server.router, search("clinic-a")).await;
    assert!(
        status == StatusCode::NO_CONTENT
            || body.as_deref().map(|body| body == b"[]").unwrap_or(false),
        "{status}"
    );
    let (status, body) = call(&server.router, search("clinic-b")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        String::from_utf8(body.expect("body"))
            .expect("JSON")
            .contains(&stored.study)
    );
    assert_eq!(
        call(
            &server.router,
            get(&relative("clinic-a"), "application/dicom")
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    // Without a partition, data routes are refused; the change feed is the service's.
    let (status, body) = call(
        &server.router,
        get(&instance_url(&stored), "application/dicom"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error_code(&body.expect("body")),
        "DataPartitionsMissingPartition"
    );
    let (status, body) = call(
        &server.router,
        get(&format!("{BASE}/changefeed"), "application/json"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let feed: serde_json::Value = serde_json::from_slice(&body.expect("body")).expect("JSON");
    let partitions: Vec<&str> = feed
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| entry["PartitionName"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(partitions, ["clinic-a", "clinic-b", "clinic-a"]);
    // The change feed is not a partition route.
    assert_eq!(
        call(
            &server.router,
            get(
                &format!("{BASE}/partitions/clinic-a/changefeed"),
                "application/json"
            )
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    let (status, body) = call(
        &server.router,
        get(&format!("{BASE}/partitions"), "application/json"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let listed: serde_json::Value = serde_json::from_slice(&body.expect("body")).expect("JSON");
    let names: Vec<&str> = listed
        .as_array()
        .expect("partitions")
        .iter()
        .map(|partition| partition["partitionName"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(names, ["Microsoft.Default", "clinic-a", "clinic-b"]);
    assert_eq!(listed[0]["partitionKey"], 1);
    assert!(listed[1]["createdDate"].as_str().is_some());

    // A partition that does not exist is not created by a read.
    let (status, body) = call(&server.router, search("clinic-c")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body.expect("body")), "DataPartitionNotFound");
    // Hostile names: 400 naming the rule, never echoing the name.
    let long = "a".repeat(65);
    for hostile in [
        "..",
        ".",
        "a%2Fb",
        "a%00",
        "%2E%2E",
        long.as_str(),
        "a$b",
        "a%20b",
    ] {
        let (status, body) = call(&server.router, search(hostile)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{hostile}");
        let body = body.expect("body");
        assert_eq!(error_code(&body), "InvalidPartitionName", "{hostile}");
        // (`.` and `..` are in any sentence; the longer names must not come back.)
        assert!(
            hostile.len() <= 2 || !String::from_utf8_lossy(&body).contains(hostile),
            "{hostile}"
        );
    }
}

/// A service without data partitions refuses the partition routes and `GET partitions` as
/// Azure does, and serves the default partition without a prefix as before.
#[tokio::test]
async fn partition_routes_are_refused_while_partitions_are_disabled() {
    let server = server().await;
    let stored = instance(12);
    store(&server, &stored).await;
    for uri in [
        format!("{BASE}/partitions"),
        format!("{BASE}/partitions/Microsoft.Default/studies"),
    ] {
        let (status, body) = call(&server.router, get(&uri, "application/json")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(
            error_code(&body.expect("body")),
            "DataPartitionsFeatureDisabled"
        );
    }
    let (status, _) = call(
        &server.router,
        post(
            &format!("{BASE}/partitions/p1/studies"),
            "application/dicom",
            stored.file.clone(),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = call(
        &server.router,
        get(&format!("{BASE}/changefeed"), "application/json"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !String::from_utf8(body.expect("body"))
            .expect("JSON")
            .contains("PartitionName"),
        "no PartitionName without partitions"
    );
}
