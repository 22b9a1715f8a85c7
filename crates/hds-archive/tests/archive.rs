//! The archive's operations on a real index (SQLite) and blob store (local files), under a real
//! key hierarchy: what is stored opens again, and every store that does not end in a recorded
//! row leaves no blob behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use futures::StreamExt;
use hds_archive::{
    Archive, ArchiveError, QueryLevel, RefusalReason, Scope, Search, ServiceArchive, StoreOutcome,
};
use hds_blob::{BlobName, BlobStore};
use hds_crypto::keys::{LocalRsaKek, RsaKeySize};
use hds_db::Database;
use hds_index::{Index, ServiceKeyrings};

const ROWS: u16 = 64;
const COLUMNS: u16 = 64;
const FRAMES: usize = 4;
const FRAME_BYTES: usize = ROWS as usize * COLUMNS as usize * 2;

struct Fixture {
    _directory: tempfile::TempDir,
    blob_directory: PathBuf,
    archive: ServiceArchive,
}

async fn fixture() -> Fixture {
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
        .open_or_create(&database, "service-1", Arc::new(key_encryption_key))
        .await
        .expect("keyring");
    let archive = Archive::new(index, blobs).service("service-1", keyring);
    Fixture {
        _directory: directory,
        blob_directory,
        archive,
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

/// A multi-frame instance of study `study` (about 32 KB).
fn instance(study: u32, number: u32) -> Instance {
    let study = format!("1.2.826.0.1.3680043.10.7.{study}");
    let series = format!("{study}.1");
    let sop = format!("{series}.{number}");
    let pixels: Vec<u8> = (0..FRAMES * FRAME_BYTES)
        .map(|position| (position % 251) as u8)
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
        text(tags::PATIENT_NAME, VR::PN, "Archive^Test"),
        text(tags::PATIENT_ID, VR::LO, "PID-A"),
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

/// The caller's error: a failure of its body, or the archive's.
#[derive(Debug)]
enum CallerError {
    Body,
    Archive(ArchiveError),
}

impl From<ArchiveError> for CallerError {
    fn from(error: ArchiveError) -> Self {
        CallerError::Archive(error)
    }
}

/// `bytes` in chunks of 1000 bytes, as a request body arrives.
fn body(bytes: &[u8]) -> impl futures::Stream<Item = Result<Bytes, CallerError>> + Unpin {
    let chunks: Vec<Result<Bytes, CallerError>> = bytes
        .chunks(1000)
        .map(|chunk| Ok(Bytes::copy_from_slice(chunk)))
        .collect();
    futures::stream::iter(chunks)
}

async fn store(
    archive: &ServiceArchive,
    bytes: &[u8],
    required_study: Option<&str>,
) -> StoreOutcome {
    match archive.store_instance(body(bytes), required_study).await {
        Ok(outcome) => outcome,
        Err(CallerError::Archive(error)) => panic!("store failed: {error}"),
        Err(CallerError::Body) => panic!("the body failed"),
    }
}

fn refusal(outcome: StoreOutcome) -> RefusalReason {
    match outcome {
        StoreOutcome::Refused(refusal) => refusal.reason,
        StoreOutcome::Stored(_) => panic!("stored, expected a refusal"),
    }
}

/// The blobs in a local store's directory: files of their own and records in packs.
async fn stored_blobs(directory: &Path) -> Vec<BlobName> {
    BlobStore::local(directory)
        .expect("store")
        .list_blobs()
        .await
        .expect("list")
}

async fn read_all(mut stream: hds_archive::ByteStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.expect("chunk"));
    }
    bytes
}

#[tokio::test]
async fn a_stored_instance_opens_again_with_its_frames_metadata_and_search() {
    let fixture = fixture().await;
    let archive = &fixture.archive;
    let first = instance(1, 1);
    let second = instance(1, 2);
    for stored in [&first, &second] {
        let outcome = store(archive, &stored.file, Some(&stored.study)).await;
        let StoreOutcome::Stored(identity) = outcome else {
            panic!("refused: {outcome:?}");
        };
        assert_eq!(identity.sop_instance_uid, stored.sop);
        assert_eq!(identity.series_instance_uid, stored.series);
    }
    assert_eq!(stored_blobs(&fixture.blob_directory).await.len(), 2);

    let found = archive
        .find_instances(Scope::Study(&first.study))
        .await
        .expect("found");
    assert_eq!(found.transfer_syntaxes(), ["1.2.840.10008.1.2.1"; 2]);
    let contents: Vec<_> = found.open().await.expect("opened").collect();
    assert_eq!(contents.len(), 2);
    let mut files = Vec::new();
    for content in contents {
        files.push(read_all(content.bytes).await);
    }
    assert_eq!(files, [first.file.clone(), second.file.clone()]);

    let frames = archive
        .find_frames(&first.study, &first.series, &first.sop, &[4, 2])
        .await
        .expect("frames");
    assert!(!frames.encapsulated());
    let (frame_4, rest) = frames.open().await.expect("first frame");
    assert_eq!(frame_4, first.pixels[3 * FRAME_BYTES..4 * FRAME_BYTES]);
    let rest: Vec<_> = rest.collect();
    assert_eq!(rest.len(), 1);
    let frame_2 = read_all(rest.into_iter().next().expect("second frame")).await;
    assert_eq!(frame_2, first.pixels[FRAME_BYTES..2 * FRAME_BYTES]);
    for missing in [[5], [0]] {
        assert!(matches!(
            archive
                .find_frames(&first.study, &first.series, &first.sop, &missing)
                .await,
            Err(ArchiveError::NotFound("frame"))
        ));
    }

    let metadata = archive
        .metadata(Scope::Series(&first.study, &first.series))
        .await
        .expect("metadata");
    let metadata: serde_json::Value = serde_json::from_slice(&metadata).expect("JSON");
    assert_eq!(metadata.as_array().map(Vec::len), Some(2));

    let hits = archive
        .search(Search {
            level: QueryLevel::Instance,
            study_instance_uid: Some(&first.study),
            series_instance_uid: None,
            filters: Vec::new(),
            extended_filters: Vec::new(),
            limit: 10,
            offset: 0,
        })
        .await
        .expect("search");
    assert_eq!(hits.len(), 2);
}

#[tokio::test]
async fn stores_that_record_nothing_leave_no_blob() {
    let fixture = fixture().await;
    let archive = &fixture.archive;
    let stored = instance(2, 1);
    assert!(matches!(
        store(archive, &stored.file, None).await,
        StoreOutcome::Stored(_)
    ));
    assert_eq!(stored_blobs(&fixture.blob_directory).await.len(), 1);

    assert_eq!(
        refusal(store(archive, &stored.file, None).await),
        RefusalReason::AlreadyStored
    );
    assert_eq!(
        refusal(store(archive, &instance(3, 1).file, Some("1.2.3")).await),
        RefusalReason::StudyMismatch
    );
    assert_eq!(
        refusal(store(archive, b"not a DICOM file at all", None).await),
        RefusalReason::Unreadable
    );
    assert_eq!(
        refusal(store(archive, b"", None).await),
        RefusalReason::Empty
    );

    // A body that fails midway: its error comes back as it is, and the blob goes.
    let other = instance(4, 1);
    let failing = futures::stream::iter([
        Ok(Bytes::copy_from_slice(&other.file[..2000])),
        Err(CallerError::Body),
    ]);
    assert!(matches!(
        archive.store_instance(failing, None).await,
        Err(CallerError::Body)
    ));
    assert_eq!(stored_blobs(&fixture.blob_directory).await.len(), 1);
    assert!(matches!(
        archive.find_instances(Scope::Study(&other.study)).await,
        Err(ArchiveError::NotFound("study"))
    ));
}

#[tokio::test]
async fn deleting_removes_rows_then_blobs_and_only_in_scope() {
    let fixture = fixture().await;
    let archive = &fixture.archive;
    let kept = instance(5, 1);
    let deleted = instance(6, 1);
    for stored in [&kept, &deleted] {
        assert!(matches!(
            store(archive, &stored.file, None).await,
            StoreOutcome::Stored(_)
        ));
    }
    assert_eq!(stored_blobs(&fixture.blob_directory).await.len(), 2);

    archive
        .delete(Scope::Study(&deleted.study))
        .await
        .expect("deleted");
    assert_eq!(stored_blobs(&fixture.blob_directory).await.len(), 1);
    assert!(matches!(
        archive.find_instances(Scope::Study(&deleted.study)).await,
        Err(ArchiveError::NotFound("study"))
    ));
    assert!(matches!(
        archive.delete(Scope::Study(&deleted.study)).await,
        Err(ArchiveError::NotFound("study"))
    ));
    assert!(matches!(
        archive
            .delete(Scope::Instance(&kept.study, &kept.series, "1.2.3"))
            .await,
        Err(ArchiveError::NotFound("instance"))
    ));
    let found = archive
        .find_instances(Scope::Study(&kept.study))
        .await
        .expect("the other study stays");
    let content = found.open().await.expect("opened").next().expect("one");
    assert_eq!(read_all(content.bytes).await, kept.file);
}

/// A bulk update rewrites a study's instances: the search finds the new name and not the old,
/// the latest version opens with the new attributes and the same pixels, the original opens as
/// stored, a second update keeps the first original (its intermediate blob goes), and a delete
/// removes both versions' blobs.
#[tokio::test]
async fn updating_a_study_keeps_the_original_and_deleting_removes_both() {
    let fixture = fixture().await;
    let archive = &fixture.archive;
    let first = instance(7, 1);
    let second = instance(7, 2);
    let other = instance(8, 1);
    for stored in [&first, &second, &other] {
        assert!(matches!(
            store(archive, &stored.file, None).await,
            StoreOutcome::Stored(_)
        ));
    }
    let change = hds_dicom::update::ChangeDataset::parse(&serde_json::json!({
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Updated^Name"}]},
    }))
    .expect("change");
    let outcome = archive
        .update_study(&first.study, &change, None)
        .await
        .expect("updated");
    assert_eq!(outcome.updated, 2);
    assert!(outcome.errors.is_empty());
    assert_eq!(stored_blobs(&fixture.blob_directory).await.len(), 5);

    let by_name = |name: &'static str| Search {
        level: QueryLevel::Study,
        study_instance_uid: None,
        series_instance_uid: None,
        filters: vec![hds_archive::Filter {
            attribute: hds_dicom::attributes::searchable_by_tag(tags::PATIENT_NAME)
                .expect("PatientName is searchable"),
            matcher: hds_archive::Matcher::Exact(hds_dicom::normalize::normalize_person_name(name)),
        }],
        extended_filters: Vec::new(),
        limit: 10,
        offset: 0,
    };
    assert_eq!(
        archive
            .search(by_name("Updated^Name"))
            .await
            .expect("search")
            .len(),
        1
    );
    // The other study still has the old name.
    assert_eq!(
        archive
            .search(by_name("Archive^Test"))
            .await
            .expect("search")
            .len(),
        1
    );

    let scope = Scope::Instance(&first.study, &first.series, &first.sop);
    let latest = read_all(
        archive
            .find_instances(scope)
            .await
            .expect("found")
            .open()
            .await
            .expect("open")
            .next()
            .expect("one")
            .bytes,
    )
    .await;
    assert!(latest.windows(12).any(|window| window == b"Updated^Name"));
    assert!(latest.ends_with(&first.pixels));
    let original = read_all(
        archive
            .find_instance_versions(scope, true)
            .await
            .expect("found")
            .open()
            .await
            .expect("open")
            .next()
            .expect("one")
            .bytes,
    )
    .await;
    assert_eq!(original, first.file);
    let metadata = archive.original_metadata(scope).await.expect("metadata");
    assert!(String::from_utf8_lossy(&metadata).contains("Archive^Test"));

    // Again: the original stays the first version; the intermediate blob goes.
    archive
        .update_study(&first.study, &change, None)
        .await
        .expect("updated again");
    assert_eq!(stored_blobs(&fixture.blob_directory).await.len(), 5);
    let original = read_all(
        archive
            .find_instance_versions(scope, true)
            .await
            .expect("found")
            .open()
            .await
            .expect("open")
            .next()
            .expect("one")
            .bytes,
    )
    .await;
    assert_eq!(original, first.file);

    archive
        .delete(Scope::Study(&first.study))
        .await
        .expect("deleted");
    assert_eq!(stored_blobs(&fixture.blob_directory).await.len(), 1);
}
