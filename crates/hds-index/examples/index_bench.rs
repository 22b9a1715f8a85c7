//! A rough throughput measurement of the index (not a test): stores synthetic instances with
//! eight concurrent writers, then runs searches. Values are encrypted as a server encrypts them
//! (a service keyring under a local RSA key-encryption key).
//!
//! `cargo run -p hds-index --example index_bench -- [URL] [INSTANCES]`; without a URL, a
//! SQLite file in a temporary directory.

use std::sync::Arc;
use std::time::Instant;

use dicom_core::Tag;
use hds_crypto::keys::{BlobKey, LocalRsaKek, RsaKeySize};
use hds_db::Database;
use hds_dicom::{
    DicomJsonText, ParsedInstance, QueryLevel, SearchKind, SearchTerm, SearchValue,
    SearchableAttribute,
};
use hds_index::{Filter, Index, Matcher, NewInstance, SearchQuery, ServiceKeyrings};
use serde_json::{Map, json};

static PATIENT_NAME: SearchableAttribute = SearchableAttribute {
    tag: Tag(0x0010, 0x0010),
    keyword: "PatientName",
    level: QueryLevel::Study,
    kind: SearchKind::PersonName,
};
static STUDY_DATE: SearchableAttribute = SearchableAttribute {
    tag: Tag(0x0008, 0x0020),
    keyword: "StudyDate",
    level: QueryLevel::Study,
    kind: SearchKind::Date,
};

fn instance(number: usize) -> ParsedInstance {
    let study = format!("1.2.826.0.1.3680043.10.2.{}", number / 10);
    let series = format!("{study}.1");
    let sop = format!("{series}.{number}");
    let name = format!("Patient{}^Given{}", number / 10, number % 7);
    let date = 1950_0101 + u32::try_from((number / 10) % 70).unwrap_or(0) * 1_0000;
    let mut attributes = Map::new();
    attributes.insert("0020000D".into(), json!({"vr": "UI", "Value": [study]}));
    attributes.insert(
        "00100010".into(),
        json!({"vr": "PN", "Value": [{"Alphabetic": name}]}),
    );
    ParsedInstance {
        study_instance_uid: study.clone(),
        series_instance_uid: series,
        sop_instance_uid: sop,
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
        transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
        study_attributes: DicomJsonText::from(&attributes),
        series_attributes: DicomJsonText::from(&Map::new()),
        instance_attributes: DicomJsonText::from(&Map::new()),
        metadata: DicomJsonText::from(&attributes),
        search_terms: vec![
            SearchTerm {
                attribute: &PATIENT_NAME,
                value: SearchValue::PersonName {
                    exact: name.clone(),
                    words: name.split('^').map(str::to_lowercase).collect(),
                },
            },
            SearchTerm {
                attribute: &STUDY_DATE,
                value: SearchValue::Date(date),
            },
        ],
        frames: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let directory = tempfile::tempdir()?;
    let url = args
        .next()
        .unwrap_or_else(|| format!("sqlite:{}", directory.path().join("bench.db").display()));
    let count: usize = args
        .next()
        .map(|count| count.parse())
        .transpose()?
        .unwrap_or(2000);
    let database = Database::connect(&url).await?;
    let keyrings = ServiceKeyrings::default();
    let index = Index::open(database.clone(), Arc::new(keyrings.clone())).await?;
    let key_encryption_key = LocalRsaKek::generate("bench-kek", RsaKeySize::Rsa2048)?;
    let keyring = keyrings
        .open_or_create(&database, "bench/dicom", Arc::new(key_encryption_key))
        .await?;

    let started = Instant::now();
    let mut writers = Vec::new();
    for writer in 0..8 {
        let index = index.clone();
        let keyring = keyring.clone();
        writers.push(tokio::spawn(async move {
            for number in (writer..count).step_by(8) {
                let parsed = instance(number);
                let lease = keyring.study_key(&parsed.study_instance_uid).await?;
                let owner = hds_index::InstanceBinding {
                    blob_name: "blob",
                    study_instance_uid: &parsed.study_instance_uid,
                    series_instance_uid: &parsed.series_instance_uid,
                    sop_instance_uid: &parsed.sop_instance_uid,
                };
                let keys = lease.seal_blob_key(&owner, &BlobKey::generate());
                let new = NewInstance {
                    service: "bench/dicom",
                    parsed: &parsed,
                    blob_name: "blob",
                    size: 1,
                    keys: &keys,
                    mode: hds_index::StoreMode::Create,
                };
                index.store_instance(new).await?;
            }
            Ok::<_, hds_index::IndexError>(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "stored {count} instances in {elapsed:.2} s: {:.0}/s",
        count as f64 / elapsed
    );

    let searches = 200;
    let started = Instant::now();
    let mut found = 0;
    for search in 0..searches {
        let query = SearchQuery {
            service: "bench/dicom",
            level: QueryLevel::Study,
            study_instance_uid: None,
            series_instance_uid: None,
            filters: vec![
                Filter {
                    attribute: &PATIENT_NAME,
                    matcher: Matcher::FuzzyName(vec![format!("patient{}", search % 50)]),
                },
                Filter {
                    attribute: &STUDY_DATE,
                    matcher: Matcher::DateRange(Some(1955_0315), Some(1999_1015)),
                },
            ],
            extended_filters: Vec::new(),
            limit: 100,
            offset: 0,
        };
        found += index.search(&query).await?.len();
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{searches} searches (fuzzy name + date range) in {elapsed:.2} s: {:.0}/s, {found} hits",
        f64::from(searches) / elapsed
    );
    Ok(())
}
