//! Export on a real index (SQLite), blob store and key hierarchy, into an in-memory object
//! store standing for the customer's container: what arrives is byte-identical to what was
//! stored, at Azure's paths; what is missing goes to `errors.log`; the position survives
//! between steps and another process takes over once the lease expired; lost key access pauses the export rather than skipping instances.

use std::sync::Arc;

use bytes::Bytes;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use hds_archive::{
    Archive, ArchiveError, ExportPolicy, ExportStep, ExportWorker, OperationStatus, ServiceArchive,
    StoreOutcome, parse_export_request,
};
use hds_blob::BlobStore;
use hds_crypto::keys::{LocalRsaKek, RsaKeySize};
use hds_db::Database;
use hds_index::{Index, ServiceKeyring, ServiceKeyrings};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use serde_json::json;

struct Fixture {
    _directory: tempfile::TempDir,
    archive: ServiceArchive,
    keyring: Arc<ServiceKeyring>,
    worker: ExportWorker,
    container: Arc<InMemory>,
}

async fn fixture() -> Fixture {
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
        .open_or_create(&database, "service-1", Arc::new(kek))
        .await
        .expect("keyring");
    let whole = Archive::new(index, blobs);
    let archive = whole.service("service-1", keyring.clone());
    let container = Arc::new(InMemory::new());
    let worker = ExportWorker::new(whole, keyrings).with_destination_store(container.clone());
    Fixture {
        _directory: directory,
        archive,
        keyring,
        worker,
        container,
    }
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

/// An instance of study `1.2.826.0.1.3680043.10.9.{study}`, series `.1`, number `number`.
fn instance(study: u32, number: u32) -> (String, String, String, Vec<u8>) {
    let study = format!("1.2.826.0.1.3680043.10.9.{study}");
    let series = format!("{study}.1");
    let sop = format!("{series}.{number}");
    let object = InMemDicomObject::from_element_iter([
        text(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
        ),
        text(tags::SOP_INSTANCE_UID, VR::UI, &sop),
        text(tags::MODALITY, VR::CS, "OT"),
        text(tags::PATIENT_NAME, VR::PN, "Export^Test"),
        text(tags::PATIENT_ID, VR::LO, "PID-E"),
        text(tags::STUDY_INSTANCE_UID, VR::UI, &study),
        text(tags::SERIES_INSTANCE_UID, VR::UI, &series),
        short(tags::SAMPLES_PER_PIXEL, 1),
        text(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        short(tags::ROWS, 256),
        short(tags::COLUMNS, 256),
        short(tags::BITS_ALLOCATED, 8),
        short(tags::BITS_STORED, 8),
        short(tags::HIGH_BIT, 7),
        short(tags::PIXEL_REPRESENTATION, 0),
        DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(vec![number as u8; 256 * 256]),
        ),
    ]);
    let file_object = object
        .with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
        .expect("meta");
    let mut file = Vec::new();
    file_object.write_all(&mut file).expect("encode");
    (study, series, sop, file)
}

async fn store(archive: &ServiceArchive, bytes: &[u8]) {
    let body = futures::stream::iter(vec![Ok::<_, ArchiveError>(Bytes::copy_from_slice(bytes))]);
    match archive.store_instance(body, None).await {
        Ok(StoreOutcome::Stored(_)) => {}
        Ok(other) => panic!("refused: {other:?}"),
        Err(error) => panic!("store failed: {error}"),
    }
}

fn request(values: &[&str]) -> hds_archive::ExportRequest {
    parse_export_request(
        &json!({
            "source": {"type": "identifiers", "settings": {"values": values}},
            "destination": {"type": "azureblob", "settings": {
                "connectionString": "UseDevelopmentStorage=true",
                "blobContainerName": "export",
            }},
        }),
        &ExportPolicy::default(),
    )
    .expect("request")
}

async fn get(container: &InMemory, path: String) -> Option<Vec<u8>> {
    match container.get(&ObjectPath::from(path)).await {
        Ok(result) => Some(result.bytes().await.expect("bytes").to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(error) => panic!("{error}"),
    }
}

async fn run(worker: &ExportWorker, owner: &str) -> usize {
    let mut steps = 0;
    loop {
        match worker.step(owner).await.expect("step") {
            ExportStep::Idle => return steps,
            ExportStep::Retry => panic!("retry"),
            _ => steps += 1,
        }
    }
}

#[tokio::test]
async fn a_study_arrives_byte_identical_and_what_is_missing_is_logged() {
    let fixture = fixture().await;
    let mut files = Vec::new();
    for number in 1..=3 {
        let stored = instance(1, number);
        store(&fixture.archive, &stored.3).await;
        files.push(stored);
    }
    let missing = "1.2.826.0.1.3680043.10.9.404";
    let id = fixture
        .archive
        .start_export(&request(&[&files[0].0, missing]))
        .await
        .expect("start");
    let operation = fixture.archive.operation(&id).await.unwrap().unwrap();
    assert_eq!(operation.kind, "export");
    assert_eq!(operation.status, OperationStatus::NotStarted);

    run(&fixture.worker, "owner-a").await;

    for (study, series, sop, bytes) in &files {
        let exported = get(
            &fixture.container,
            format!("{id}/results/{study}/{series}/{sop}.dcm"),
        )
        .await
        .expect("exported file");
        assert_eq!(&exported, bytes, "byte-identical");
    }
    let log = get(&fixture.container, format!("{id}/errors.log"))
        .await
        .expect("errors.log");
    let lines: Vec<serde_json::Value> = String::from_utf8(log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["Identifier"], missing);
    assert_eq!(lines[0]["Error"], "The specified study cannot be found.");
    assert!(lines[0]["Timestamp"].as_str().is_some());

    let operation = fixture.archive.operation(&id).await.unwrap().unwrap();
    assert_eq!(operation.status, OperationStatus::Succeeded);
    assert_eq!(operation.percent_complete, 100);
    let summary = fixture.archive.export_summary(&id).await.unwrap().unwrap();
    assert_eq!((summary.exported, summary.skipped), (3, 1));
    assert_eq!(
        summary.error_href,
        format!("http://127.0.0.1:10000/devstoreaccount1/export/{id}/errors.log")
    );
}

#[tokio::test]
async fn an_export_resumes_from_its_position_and_waits_for_its_keys() {
    let fixture = fixture().await;
    let (study_a, series_a, sop_a, file_a) = instance(2, 1);
    let (study_b, series_b, sop_b, file_b) = instance(3, 1);
    store(&fixture.archive, &file_a).await;
    store(&fixture.archive, &file_b).await;
    let id = fixture
        .archive
        .start_export(&request(&[&study_a, &format!("{study_b}/{series_b}")]))
        .await
        .expect("start");

    // One step: the first identifier, recorded.
    assert_eq!(
        fixture.worker.step("owner-a").await.unwrap(),
        ExportStep::Progressed
    );
    let operation = fixture.archive.operation(&id).await.unwrap().unwrap();
    assert_eq!(operation.status, OperationStatus::Running);
    assert_eq!(operation.percent_complete, 50);
    // Another process does not take it while the lease holds.
    assert_eq!(
        fixture.worker.step("owner-b").await.unwrap(),
        ExportStep::Idle
    );

    // Key access lost: nothing is exported or skipped; the export waits.
    fixture.keyring.forget();
    assert_eq!(
        fixture.worker.step("owner-a").await.unwrap(),
        ExportStep::Idle
    );
    assert!(
        get(
            &fixture.container,
            format!("{id}/results/{study_b}/{series_b}/{sop_b}.dcm")
        )
        .await
        .is_none()
    );
    fixture.keyring.unlock().await.expect("unlock");

    // Owner A stops (a process that died): once its lease expired, another process finishes
    // from the recorded position.
    tokio::time::sleep(std::time::Duration::from_millis(10_500)).await;
    run(&fixture.worker, "owner-b").await;
    assert_eq!(
        get(
            &fixture.container,
            format!("{id}/results/{study_a}/{series_a}/{sop_a}.dcm")
        )
        .await
        .unwrap(),
        file_a
    );
    assert_eq!(
        get(
            &fixture.container,
            format!("{id}/results/{study_b}/{series_b}/{sop_b}.dcm")
        )
        .await
        .unwrap(),
        file_b
    );
    let summary = fixture.archive.export_summary(&id).await.unwrap().unwrap();
    assert_eq!((summary.exported, summary.skipped), (2, 0));
    assert_eq!(
        get(&fixture.container, format!("{id}/errors.log"))
            .await
            .unwrap(),
        b""
    );
    let operation = fixture.archive.operation(&id).await.unwrap().unwrap();
    assert_eq!(operation.status, OperationStatus::Succeeded);
}
