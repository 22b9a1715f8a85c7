//! One suite, run against SQLite and PostgreSQL, each with the readable cipher and with a keyed
//! one (opaque tokens, sealed values), so that matching is shown never to need plaintext.

use std::sync::Arc;

use dicom_core::Tag;
use hds_crypto::keys::{LocalRsaKek, RsaKeySize};
use hds_db::Database;
use hds_db::testing::PostgresCluster;
use hds_dicom::normalize::{fuzzy_query_words, name_words, normalize_person_name};
use hds_dicom::{
    ByteRange, FrameMap, ParsedInstance, QueryLevel, SearchKind, SearchTerm, SearchValue,
    SearchableAttribute,
};
use hds_index::{
    AddTagsOutcome, ChangeAction, ChangeFeedEntry, ChangeFeedWindow, ChangeState, DeleteScope,
    Filter, Index, IndexError, InstanceKeys, Matcher, NewInstance, OperationStatus,
    PlaintextIndexCipher, ReindexStep, SearchQuery, ServiceKeyrings, StoreMode, StoreOutcome,
    TagChange, TagQueryStatus, TagStatus,
};
use serde_json::{Map, Value, json};

const SERVICE: &str = "default/dicom";
const OTHER_SERVICE: &str = "other/dicom";

static STUDY_INSTANCE_UID: SearchableAttribute = attribute(
    0x0020,
    0x000D,
    "StudyInstanceUID",
    QueryLevel::Study,
    SearchKind::Exact,
);
static PATIENT_NAME: SearchableAttribute = attribute(
    0x0010,
    0x0010,
    "PatientName",
    QueryLevel::Study,
    SearchKind::PersonName,
);
static PATIENT_ID: SearchableAttribute = attribute(
    0x0010,
    0x0020,
    "PatientID",
    QueryLevel::Study,
    SearchKind::Exact,
);
static STUDY_DATE: SearchableAttribute = attribute(
    0x0008,
    0x0020,
    "StudyDate",
    QueryLevel::Study,
    SearchKind::Date,
);
static MODALITIES_IN_STUDY: SearchableAttribute = attribute(
    0x0008,
    0x0061,
    "ModalitiesInStudy",
    QueryLevel::Study,
    SearchKind::Exact,
);
static SERIES_INSTANCE_UID: SearchableAttribute = attribute(
    0x0020,
    0x000E,
    "SeriesInstanceUID",
    QueryLevel::Series,
    SearchKind::Exact,
);
static MODALITY: SearchableAttribute = attribute(
    0x0008,
    0x0060,
    "Modality",
    QueryLevel::Series,
    SearchKind::Exact,
);
static SOP_INSTANCE_UID: SearchableAttribute = attribute(
    0x0008,
    0x0018,
    "SOPInstanceUID",
    QueryLevel::Instance,
    SearchKind::Exact,
);

const fn attribute(
    group: u16,
    element: u16,
    keyword: &'static str,
    level: QueryLevel,
    kind: SearchKind,
) -> SearchableAttribute {
    SearchableAttribute {
        tag: Tag(group, element),
        keyword,
        level,
        kind,
    }
}

/// The values of one synthetic instance.
#[derive(Clone)]
struct Spec {
    study: String,
    series: String,
    sop: String,
    patient_name: String,
    patient_id: String,
    study_date: u32,
    modality: String,
    /// More elements of the instance's metadata (values of extended query tags).
    extra: Map<String, Value>,
}

impl Spec {
    /// The instance a blob of this spec holds, for wrapping and opening its blob key.
    fn binding<'a>(&'a self, blob_name: &'a str) -> hds_index::InstanceBinding<'a> {
        hds_index::InstanceBinding {
            blob_name,
            study_instance_uid: &self.study,
            series_instance_uid: &self.series,
            sop_instance_uid: &self.sop,
        }
    }

    fn new(study: usize, series: usize, sop: usize) -> Spec {
        Spec {
            study: format!("1.2.826.0.1.3680043.10.1.{study}"),
            series: format!("1.2.826.0.1.3680043.10.1.{study}.{series}"),
            sop: format!("1.2.826.0.1.3680043.10.1.{study}.{series}.{sop}"),
            patient_name: "Doe^Jane".to_owned(),
            patient_id: format!("MRN{study:04}"),
            study_date: 2020_0101,
            modality: "CT".to_owned(),
            extra: Map::new(),
        }
    }

    fn parsed(&self) -> ParsedInstance {
        let string = |vr: &str, value: &str| json!({"vr": vr, "Value": [value]});
        let mut study_attributes = Map::new();
        study_attributes.insert("0020000D".into(), string("UI", &self.study));
        study_attributes.insert(
            "00100010".into(),
            json!({"vr": "PN", "Value": [{"Alphabetic": self.patient_name}]}),
        );
        study_attributes.insert("00100020".into(), string("LO", &self.patient_id));
        study_attributes.insert(
            "00080020".into(),
            string("DA", &format!("{:08}", self.study_date)),
        );
        let mut series_attributes = Map::new();
        series_attributes.insert("0020000E".into(), string("UI", &self.series));
        series_attributes.insert("00080060".into(), string("CS", &self.modality));
        let mut instance_attributes = Map::new();
        instance_attributes.insert("00080018".into(), string("UI", &self.sop));
        let mut metadata = study_attributes.clone();
        metadata.extend(series_attributes.clone());
        metadata.extend(instance_attributes.clone());
        metadata.extend(self.extra.clone());
        let search_terms = vec![
            term(&STUDY_INSTANCE_UID, SearchValue::Exact(self.study.clone())),
            term(
                &PATIENT_NAME,
                SearchValue::PersonName {
                    exact: normalize_person_name(&self.patient_name),
                    words: name_words(&self.patient_name),
                },
            ),
            term(&PATIENT_ID, SearchValue::Exact(self.patient_id.clone())),
            term(&STUDY_DATE, SearchValue::Date(self.study_date)),
            term(
                &MODALITIES_IN_STUDY,
                SearchValue::Exact(self.modality.clone()),
            ),
            term(
                &SERIES_INSTANCE_UID,
                SearchValue::Exact(self.series.clone()),
            ),
            term(&MODALITY, SearchValue::Exact(self.modality.clone())),
            term(&SOP_INSTANCE_UID, SearchValue::Exact(self.sop.clone())),
        ];
        ParsedInstance {
            study_instance_uid: self.study.clone(),
            series_instance_uid: self.series.clone(),
            sop_instance_uid: self.sop.clone(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".to_owned(),
            transfer_syntax_uid: "1.2.840.10008.1.2.1".to_owned(),
            study_attributes: hds_dicom::DicomJsonText::from(&study_attributes),
            series_attributes: hds_dicom::DicomJsonText::from(&series_attributes),
            instance_attributes: hds_dicom::DicomJsonText::from(&instance_attributes),
            metadata: hds_dicom::DicomJsonText::from(&metadata),
            search_terms,
            frames: Some(FrameMap {
                frames: vec![vec![ByteRange {
                    offset: 1024,
                    length: 512,
                }]],
                encapsulated: false,
            }),
        }
    }
}

fn term(attribute: &'static SearchableAttribute, value: SearchValue) -> SearchTerm {
    SearchTerm { attribute, value }
}

/// The wrapped study key the suite stores: the index only compares it, never opens it.
const SUITE_STUDY_KEY: &[u8] = b"suite-wrapped-study-key";

async fn store(index: &Index, spec: &Spec, blob_name: &str) -> StoreOutcome {
    store_in(index, SERVICE, spec, blob_name).await
}

async fn store_in(index: &Index, service: &str, spec: &Spec, blob_name: &str) -> StoreOutcome {
    give_study_its_key(index, service, spec).await;
    store_under_existing_key(index, service, spec, blob_name).await
}

/// Gives the spec's study the suite's study key, unless it has one.
async fn give_study_its_key(index: &Index, service: &str, spec: &Spec) {
    let study_token = index.study_token(service, &spec.study).expect("token");
    sqlx::query(
        "INSERT INTO dicom_study_keys (service, study_token, wrapped_key) VALUES ($1, $2, $3) \
         ON CONFLICT (service, study_token) DO NOTHING",
    )
    .bind(service)
    .bind(study_token.as_slice())
    .bind(SUITE_STUDY_KEY)
    .execute(index.database().pool())
    .await
    .expect("study key");
}

/// Stores with the suite's study key, which the study must have already: no other await
/// comes before the store is queued.
async fn store_under_existing_key(
    index: &Index,
    service: &str,
    spec: &Spec,
    blob_name: &str,
) -> StoreOutcome {
    store_with_mode(index, service, spec, blob_name, StoreMode::Create).await
}

/// Stores with the suite's study key (which the study must have already) in `mode`.
async fn store_with_mode(
    index: &Index,
    service: &str,
    spec: &Spec,
    blob_name: &str,
    mode: StoreMode,
) -> StoreOutcome {
    let parsed = spec.parsed();
    let keys = InstanceKeys {
        wrapped_study_key: SUITE_STUDY_KEY.to_vec(),
        wrapped_blob_key: b"suite-wrapped-blob-key".to_vec(),
        new_study_key_generation: None,
    };
    index
        .store_instance(NewInstance {
            service,
            parsed: &parsed,
            blob_name,
            size: 4096,
            keys: &keys,
            mode,
        })
        .await
        .expect("store")
}

fn query(level: QueryLevel, filters: Vec<Filter>) -> SearchQuery<'static> {
    SearchQuery {
        service: SERVICE,
        level,
        study_instance_uid: None,
        series_instance_uid: None,
        filters,
        extended_filters: Vec::new(),
        limit: 1000,
        offset: 0,
    }
}

fn filter(attribute: &'static SearchableAttribute, matcher: Matcher) -> Filter {
    Filter { attribute, matcher }
}

/// A search hit's attributes as values.
fn values(attributes: hds_index::RawAttributes) -> Map<String, Value> {
    attributes
        .into_iter()
        .map(|(key, raw)| {
            let value = serde_json::from_str(raw.get()).expect("an element is JSON");
            (key, value)
        })
        .collect()
}

/// The first value of an element of a search hit, as text.
fn text(attributes: &hds_index::RawAttributes, tag: &str) -> String {
    value_text(&values(attributes.clone()), tag)
}

fn value_text(attributes: &Map<String, Value>, tag: &str) -> String {
    match attributes
        .get(tag)
        .and_then(|element| element.get("Value"))
        .and_then(|value| value.get(0))
    {
        Some(Value::String(value)) => value.clone(),
        Some(Value::Object(name)) => name
            .get("Alphabetic")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

/// The StudyInstanceUIDs a study-level search returns, in order.
async fn study_uids(index: &Index, filters: Vec<Filter>) -> Vec<String> {
    let hits = index
        .search(&query(QueryLevel::Study, filters))
        .await
        .expect("search");
    hits.iter()
        .map(|hit| text(&hit.attributes, "0020000D"))
        .collect()
}

async fn store_then_find_and_metadata(index: Index) {
    let first = Spec::new(1, 1, 1);
    let second = Spec::new(1, 2, 1);
    let third = Spec::new(1, 1, 2);
    assert_eq!(store(&index, &first, "blob-a").await, StoreOutcome::Stored);
    assert_eq!(store(&index, &second, "blob-b").await, StoreOutcome::Stored);
    assert_eq!(store(&index, &third, "blob-c").await, StoreOutcome::Stored);

    let records = index
        .find_instances(SERVICE, DeleteScope::Study(&first.study))
        .await
        .expect("find");
    let blobs: Vec<&str> = records
        .iter()
        .map(|record| record.blob_name.as_str())
        .collect();
    assert_eq!(
        blobs,
        ["blob-a", "blob-c", "blob-b"],
        "series by series, in store order"
    );
    let record = &records[0];
    assert_eq!(record.study_instance_uid, first.study);
    assert_eq!(record.series_instance_uid, first.series);
    assert_eq!(record.sop_instance_uid, first.sop);
    assert_eq!(record.transfer_syntax_uid, "1.2.840.10008.1.2.1");
    assert_eq!(record.size, 4096);
    assert_eq!(record.frames, first.parsed().frames);

    let series = index
        .find_instances(SERVICE, DeleteScope::Series(&first.study, &second.series))
        .await
        .expect("find");
    assert_eq!(series.len(), 1);
    assert_eq!(series[0].sop_instance_uid, second.sop);
    let one = index
        .find_instances(
            SERVICE,
            DeleteScope::Instance(&third.study, &third.series, &third.sop),
        )
        .await
        .expect("find");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].blob_name, "blob-c");
    // Wrong parent, unknown UIDs and other services find nothing.
    let wrong_series = DeleteScope::Instance(&third.study, &second.series, &third.sop);
    assert!(
        index
            .find_instances(SERVICE, wrong_series)
            .await
            .expect("find")
            .is_empty()
    );
    assert!(
        index
            .find_instances(SERVICE, DeleteScope::Study("1.2.3"))
            .await
            .expect("find")
            .is_empty()
    );
    assert!(
        index
            .find_instances("other/dicom", DeleteScope::Study(&first.study))
            .await
            .expect("find")
            .is_empty()
    );

    let metadata = index
        .find_metadata(SERVICE, DeleteScope::Study(&first.study))
        .await
        .expect("metadata");
    let sops: Vec<String> = metadata
        .iter()
        .map(|document| value_text(document.as_object().expect("object"), "00080018"))
        .collect();
    assert_eq!(
        sops,
        [first.sop.clone(), third.sop.clone(), second.sop.clone()]
    );
    assert_eq!(
        metadata[0],
        Value::Object(first.parsed().metadata.to_map().expect("metadata"))
    );
}

async fn duplicates_are_reported_not_stored(index: Index) {
    let spec = Spec::new(2, 1, 1);
    assert_eq!(store(&index, &spec, "first").await, StoreOutcome::Stored);
    let mut changed = spec.clone();
    changed.patient_id = "CHANGED".into();
    assert_eq!(
        store(&index, &changed, "second").await,
        StoreOutcome::AlreadyExists
    );
    let records = index
        .find_instances(SERVICE, DeleteScope::Study(&spec.study))
        .await
        .expect("find");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].blob_name, "first");
    // The refused store changed nothing, not even the study's attributes or tokens.
    assert!(
        study_uids(
            &index,
            vec![filter(&PATIENT_ID, Matcher::Exact("CHANGED".into()))]
        )
        .await
        .is_empty()
    );
    assert_eq!(
        study_uids(
            &index,
            vec![filter(&PATIENT_ID, Matcher::Exact(spec.patient_id.clone()))]
        )
        .await,
        [spec.study.as_str()]
    );
    // The same SOPInstanceUID in another service is another instance.
    let outcome = store_in(&index, OTHER_SERVICE, &spec, "elsewhere").await;
    assert_eq!(outcome, StoreOutcome::Stored);
}

async fn concurrent_duplicates_store_exactly_once(index: Index) {
    let spec = Spec::new(3, 1, 1);
    let mut tasks = Vec::new();
    for task in 0..8 {
        let index = index.clone();
        let spec = spec.clone();
        tasks.push(tokio::spawn(async move {
            let blob_name = format!("blob-{task}");
            (store(&index, &spec, &blob_name).await, blob_name)
        }));
    }
    let mut stored = Vec::new();
    for task in tasks {
        let (outcome, blob_name) = task.await.expect("task");
        if outcome == StoreOutcome::Stored {
            stored.push(blob_name);
        }
    }
    assert_eq!(stored.len(), 1, "exactly one store wins");
    let records = index
        .find_instances(SERVICE, DeleteScope::Study(&spec.study))
        .await
        .expect("find");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].blob_name, stored[0]);

    // Concurrent stores of different instances of one study all land.
    let mut tasks = Vec::new();
    for sop in 0..8 {
        let index = index.clone();
        let spec = Spec::new(4, sop % 2, sop);
        tasks.push(tokio::spawn(async move {
            store(&index, &spec, &format!("blob-{sop}")).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), StoreOutcome::Stored);
    }
    let hits = index
        .search(&query(
            QueryLevel::Study,
            vec![filter(&PATIENT_ID, Matcher::Exact("MRN0004".into()))],
        ))
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].number_of_related_series, Some(2));
    assert_eq!(hits[0].number_of_related_instances, Some(8));
}

/// A later store with other study and series values replaces the rows and their search tokens;
/// one with the same values leaves them as they are.
async fn later_stores_replace_study_and_series_values(index: Index) {
    let first = Spec::new(5, 1, 1);
    assert_eq!(store(&index, &first, "blob-a").await, StoreOutcome::Stored);
    let mut second = Spec::new(5, 1, 2);
    second.patient_name = "Roe^Richard".to_owned();
    second.modality = "MR".to_owned();
    assert_eq!(store(&index, &second, "blob-b").await, StoreOutcome::Stored);
    let mut third = Spec::new(5, 1, 3);
    third.patient_name = "Roe^Richard".to_owned();
    third.modality = "MR".to_owned();
    assert_eq!(store(&index, &third, "blob-c").await, StoreOutcome::Stored);

    let by_name = |name: &str| filter(&PATIENT_NAME, Matcher::Exact(name.to_owned()));
    assert!(
        study_uids(&index, vec![by_name("Doe^Jane")])
            .await
            .is_empty()
    );
    assert_eq!(
        study_uids(&index, vec![by_name("Roe^Richard")]).await,
        vec![first.study.clone()]
    );
    let series = |modality: &str| {
        let mut series_query = query(
            QueryLevel::Series,
            vec![filter(&MODALITY, Matcher::Exact(modality.to_owned()))],
        );
        series_query.study_instance_uid = Some(&first.study);
        series_query
    };
    assert!(
        index
            .search(&series("CT"))
            .await
            .expect("search")
            .is_empty()
    );
    let hits = index.search(&series("MR")).await.expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(text(&hits[0].attributes, "00080060"), "MR");
    assert_eq!(hits[0].number_of_related_instances, Some(3));
    // Storing the same values again leaves the rows untouched (with the keyed cipher a
    // rewrite would show as new ciphertext: every seal takes a fresh nonce).
    let sealed_rows = || async {
        use sqlx::Row;
        let mut rows = Vec::new();
        for table in ["dicom_studies", "dicom_series"] {
            for row in sqlx::query(&format!("SELECT attributes FROM {table} ORDER BY id"))
                .fetch_all(index.database().pool())
                .await
                .expect("rows")
            {
                rows.push(row.get::<Vec<u8>, _>(0));
            }
        }
        rows
    };
    let before = sealed_rows().await;
    let mut fourth = Spec::new(5, 1, 4);
    fourth.patient_name = "Roe^Richard".to_owned();
    fourth.modality = "MR".to_owned();
    assert_eq!(store(&index, &fourth, "blob-d").await, StoreOutcome::Stored);
    assert_eq!(sealed_rows().await, before);
}

/// Many concurrent stores over several studies (grouped into shared commits on SQLite), with
/// duplicates among them: each instance is stored once, each duplicate reported.
async fn concurrent_stores_across_studies_each_land_once(index: Index) {
    let mut tasks = Vec::new();
    for round in 0..2 {
        for study in 0..4 {
            for sop in 0..6 {
                let index = index.clone();
                let spec = Spec::new(20 + study, sop % 2, sop);
                tasks.push(tokio::spawn(async move {
                    store(&index, &spec, &format!("blob-{round}-{study}-{sop}")).await
                }));
            }
        }
    }
    let mut stored = 0;
    let mut duplicates = 0;
    for task in tasks {
        match task.await.expect("task") {
            StoreOutcome::Stored => stored += 1,
            StoreOutcome::AlreadyExists => duplicates += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((stored, duplicates), (24, 24));
    for study in 0..4 {
        let spec = Spec::new(20 + study, 0, 0);
        let records = index
            .find_instances(SERVICE, DeleteScope::Study(&spec.study))
            .await
            .expect("find");
        assert_eq!(records.len(), 6);
    }
    // The change feed numbers every stored instance once, 1 to 24 with no gap, however the
    // stores were grouped into commits, and never moves back in time.
    let feed = whole_feed(&index, SERVICE).await;
    assert_eq!(
        feed.iter().map(|entry| entry.sequence).collect::<Vec<_>>(),
        (1..=24).collect::<Vec<i64>>()
    );
    assert!(
        feed.windows(2)
            .all(|pair| pair[0].timestamp_micros <= pair[1].timestamp_micros)
    );
    let sops: std::collections::HashSet<&str> = feed
        .iter()
        .map(|entry| entry.sop_instance_uid.as_str())
        .collect();
    assert_eq!(sops.len(), 24);
    // No token row names an instance row that is not there.
    let (instances, orphan_tokens): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM dicom_instances), \
         (SELECT COUNT(*) FROM dicom_instance_tokens t WHERE NOT EXISTS \
            (SELECT 1 FROM dicom_instances i WHERE i.id = t.instance_id))",
    )
    .fetch_one(index.database().pool())
    .await
    .expect("token counts");
    assert_eq!((instances, orphan_tokens), (24, 0));
    for study in 0..4 {
        for sop in 0..6 {
            let spec = Spec::new(20 + study, sop % 2, sop);
            let by_sop = vec![filter(&SOP_INSTANCE_UID, Matcher::Exact(spec.sop.clone()))];
            let hits = index
                .search(&query(QueryLevel::Instance, by_sop))
                .await
                .expect("search");
            assert_eq!(
                hits.len(),
                1,
                "instance {study}/{sop} is found by its SOPInstanceUID"
            );
        }
    }
}

/// Concurrent stores (grouped into shared commits on SQLite) of instances with an
/// instance-level extended query tag: each instance's own search token is written with its row,
/// so each is found by its value, and only it.
async fn concurrent_stores_index_their_instance_level_tags(index: Index) {
    let id = operation_id(
        index
            .add_extended_query_tags(SERVICE, &[tag_definition("Rows", None, None, "Instance")])
            .await
            .expect("add"),
    );
    run_operations(&index, "owner-a").await;
    let added = index
        .operation(SERVICE, &id)
        .await
        .expect("operation")
        .expect("found");
    assert_eq!(added.status, OperationStatus::Succeeded);
    let specs: Vec<Spec> = (0..16u32)
        .map(|number| {
            with_extra(
                Spec::new(40 + number as usize % 3, 0, number as usize),
                &[("00280010", json!({"vr": "US", "Value": [100 + number]}))],
            )
        })
        .collect();
    let tasks: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(at, spec)| {
            let index = index.clone();
            let spec = spec.clone();
            tokio::spawn(async move { store(&index, &spec, &format!("blob-rows-{at}")).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), StoreOutcome::Stored);
    }
    let rows_tag = queryable(&index, "Rows").await;
    for (number, spec) in specs.iter().enumerate() {
        let found = extended_search(
            &index,
            QueryLevel::Instance,
            vec![hds_index::ExtendedFilter {
                tag: rows_tag.clone(),
                matcher: Matcher::Exact((100 + number).to_string()),
            }],
        )
        .await;
        let sops: Vec<String> = found
            .iter()
            .map(|hit| value_text(hit, "00080018"))
            .collect();
        assert_eq!(
            sops,
            vec![spec.sop.clone()],
            "the instance with Rows {}",
            100 + number
        );
    }
}

/// Concurrent stores of one new study and series, each with other study and series values
/// (on SQLite, queued together, they share one commit, where later stores must see the rows
/// that earlier ones wrote): the rows end as one of the stores left them, and their search
/// tokens say the same.
async fn concurrent_stores_with_changing_values_leave_consistent_rows(index: Index) {
    let names: Vec<String> = (0..12)
        .map(|number| format!("Name{number}^Given"))
        .collect();
    let modalities = ["CT", "MR", "US"];
    give_study_its_key(&index, SERVICE, &Spec::new(30, 1, 0)).await;
    let mut tasks = Vec::new();
    for (sop, name) in names.iter().enumerate() {
        let index = index.clone();
        let mut spec = Spec::new(30, 1, sop);
        spec.patient_name = name.clone();
        spec.modality = modalities[sop % modalities.len()].to_owned();
        tasks.push(tokio::spawn(async move {
            store_under_existing_key(&index, SERVICE, &spec, &format!("blob-{sop}")).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), StoreOutcome::Stored);
    }
    let spec = Spec::new(30, 1, 0);
    let hits = index
        .search(&query(
            QueryLevel::Study,
            vec![filter(&PATIENT_ID, Matcher::Exact(spec.patient_id.clone()))],
        ))
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].number_of_related_instances, Some(12));
    let stored_name = text(&hits[0].attributes, "00100010");
    for name in &names {
        let found = study_uids(
            &index,
            vec![filter(&PATIENT_NAME, Matcher::Exact(name.clone()))],
        )
        .await;
        if *name == stored_name {
            assert_eq!(found, [spec.study.as_str()], "{name}");
        } else {
            assert!(found.is_empty(), "a stale token of {name} is left");
        }
    }
    let mut series_query = query(QueryLevel::Series, Vec::new());
    series_query.study_instance_uid = Some(&spec.study);
    let series = index.search(&series_query).await.expect("search");
    assert_eq!(series.len(), 1);
    let stored_modality = text(&series[0].attributes, "00080060");
    for modality in modalities {
        let mut by_modality = query(
            QueryLevel::Series,
            vec![filter(&MODALITY, Matcher::Exact(modality.to_owned()))],
        );
        by_modality.study_instance_uid = Some(&spec.study);
        let found = index.search(&by_modality).await.expect("search").len();
        assert_eq!(
            found,
            usize::from(modality == stored_modality),
            "{modality}"
        );
    }
}

async fn exact_and_fuzzy_name_search(index: Index) {
    let names = [
        "García^José María",
        "Müller^Hans=ミュラー^ハンス",
        "Doe^Jane",
        "DOE^JOHN",
    ];
    let mut specs = Vec::new();
    for (number, name) in names.iter().enumerate() {
        let mut spec = Spec::new(10 + number, 1, 1);
        spec.patient_name = (*name).to_owned();
        store(&index, &spec, "blob").await;
        specs.push(spec);
    }
    let fuzzy = |query: &str| filter(&PATIENT_NAME, Matcher::FuzzyName(fuzzy_query_words(query)));
    assert_eq!(
        study_uids(&index, vec![fuzzy("jose")]).await,
        [specs[0].study.as_str()]
    );
    assert_eq!(
        study_uids(&index, vec![fuzzy("JOSÉ")]).await,
        [specs[0].study.as_str()]
    );
    assert_eq!(
        study_uids(&index, vec![fuzzy("mar^garc")]).await,
        [specs[0].study.as_str()]
    );
    assert!(
        study_uids(&index, vec![fuzzy("maria^x")]).await.is_empty(),
        "every word must match"
    );
    assert!(
        study_uids(&index, vec![fuzzy("arc")]).await.is_empty(),
        "prefixes only"
    );
    assert_eq!(
        study_uids(&index, vec![fuzzy("muller")]).await,
        [specs[1].study.as_str()]
    );
    assert_eq!(
        study_uids(&index, vec![fuzzy("ミュ")]).await,
        [specs[1].study.as_str()]
    );
    assert_eq!(
        study_uids(&index, vec![fuzzy("doe")]).await,
        [specs[2].study.clone(), specs[3].study.clone()]
    );
    assert_eq!(
        study_uids(&index, vec![fuzzy("d^j")]).await,
        [specs[2].study.clone(), specs[3].study.clone()]
    );
    assert_eq!(
        study_uids(&index, vec![fuzzy("john")]).await,
        [specs[3].study.as_str()]
    );

    // Exact matching keeps case and accents.
    let exact = |value: &str| filter(&PATIENT_NAME, Matcher::Exact(normalize_person_name(value)));
    assert_eq!(
        study_uids(&index, vec![exact("Doe^Jane")]).await,
        [specs[2].study.as_str()]
    );
    assert_eq!(
        study_uids(&index, vec![exact("Doe^Jane^^")]).await,
        [specs[2].study.as_str()]
    );
    assert!(study_uids(&index, vec![exact("doe^jane")]).await.is_empty());
    assert!(study_uids(&index, vec![exact("Doe")]).await.is_empty());
    // Filters combine with AND.
    let both = vec![
        fuzzy("doe"),
        filter(&PATIENT_ID, Matcher::Exact(specs[3].patient_id.clone())),
    ];
    assert_eq!(study_uids(&index, both).await, [specs[3].study.as_str()]);
    // UIDs are matched through their tokens.
    let by_uid = vec![filter(
        &STUDY_INSTANCE_UID,
        Matcher::Exact(specs[1].study.clone()),
    )];
    assert_eq!(study_uids(&index, by_uid).await, [specs[1].study.as_str()]);
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: u32) -> u32 {
        u32::try_from(self.next() % u64::from(bound)).expect("below a u32 bound")
    }

    fn date(&mut self) -> u32 {
        let year = 1890 + self.below(150);
        let month = 1 + self.below(12);
        let days = match month {
            2 if year.is_multiple_of(4)
                && (!year.is_multiple_of(100) || year.is_multiple_of(400)) =>
            {
                29
            }
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        year * 1_0000 + month * 100 + 1 + self.below(days)
    }
}

async fn date_ranges_match_brute_force(index: Index) {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    // Dates on the edges of months, years, decades and centuries, and random ones.
    let mut dates = vec![
        1899_1231, 1900_0101, 1989_1231, 1990_0101, 1999_1231, 2000_0101, 2000_0229, 2000_0301,
        2019_1231, 2020_0101, 2020_0131, 2020_0201, 2024_0229,
    ];
    while dates.len() < 60 {
        dates.push(random.date());
    }
    let mut studies = Vec::new();
    for (number, date) in dates.iter().enumerate() {
        let mut spec = Spec::new(100 + number, 1, 1);
        spec.study_date = *date;
        store(&index, &spec, "blob").await;
        studies.push((spec.study.clone(), *date));
    }
    let mut ranges: Vec<(Option<u32>, Option<u32>)> = vec![
        (Some(1900_0101), Some(1999_1231)),
        (Some(1899_1231), Some(1900_0101)),
        (Some(1990_0101), None),
        (None, Some(1989_1231)),
        (Some(2000_0229), Some(2000_0229)),
        (Some(2000_0201), Some(2000_0228)),
        (Some(2019_1215), Some(2020_0115)),
        (Some(1995_0610), Some(2020_0131)),
        (Some(2020_0201), Some(2020_0101)),
        (None, None),
    ];
    for _ in 0..40 {
        let (a, b) = (random.date(), random.date());
        ranges.push((Some(a.min(b)), Some(a.max(b))));
        ranges.push((Some(random.date()), None));
        ranges.push((None, Some(random.date())));
    }
    for (from, to) in ranges {
        let expected: Vec<String> = studies
            .iter()
            .filter(|(_, date)| {
                from.is_none_or(|from| *date >= from) && to.is_none_or(|to| *date <= to)
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        let found = study_uids(
            &index,
            vec![filter(&STUDY_DATE, Matcher::DateRange(from, to))],
        )
        .await;
        assert_eq!(found, expected, "range {from:?}-{to:?}");
    }
    // A single date as an exact match.
    let exact = study_uids(
        &index,
        vec![filter(&STUDY_DATE, Matcher::Exact("20000229".into()))],
    )
    .await;
    let expected: Vec<String> = studies
        .iter()
        .filter(|(_, date)| *date == 2000_0229)
        .map(|(uid, _)| uid.clone())
        .collect();
    assert_eq!(exact, expected);
}

async fn limit_and_offset_page_exactly(index: Index) {
    let mut all = Vec::new();
    for number in 0..25 {
        let mut spec = Spec::new(200 + number, 1, 1);
        spec.patient_name = if number % 2 == 0 {
            "Even^Pat".into()
        } else {
            "Odd^Pat".into()
        };
        store(&index, &spec, "blob").await;
        all.push(spec.study.clone());
    }
    let mut paged = Vec::new();
    let mut sizes = Vec::new();
    for page in 0..4 {
        let mut page_query = query(QueryLevel::Study, Vec::new());
        page_query.limit = 10;
        page_query.offset = page * 10;
        let hits = index.search(&page_query).await.expect("search");
        sizes.push(hits.len());
        paged.extend(hits.iter().map(|hit| text(&hit.attributes, "0020000D")));
    }
    assert_eq!(sizes, [10, 10, 5, 0]);
    assert_eq!(paged, all);
    // Pages of a filtered search are pages of the matches.
    let mut filtered = query(
        QueryLevel::Study,
        vec![filter(
            &PATIENT_NAME,
            Matcher::FuzzyName(vec!["even".into()]),
        )],
    );
    filtered.limit = 3;
    filtered.offset = 2;
    let hits = index.search(&filtered).await.expect("search");
    let uids: Vec<String> = hits
        .iter()
        .map(|hit| text(&hit.attributes, "0020000D"))
        .collect();
    assert_eq!(uids, [all[4].clone(), all[6].clone(), all[8].clone()]);
}

async fn counts_levels_and_parent_filters(index: Index) {
    let mut ct_first = Spec::new(300, 1, 1);
    ct_first.patient_name = "Parent^Filter".into();
    let ct_second = Spec {
        sop: format!("{}.2", ct_first.series),
        ..ct_first.clone()
    };
    let mut mr = Spec::new(300, 2, 1);
    mr.patient_name = ct_first.patient_name.clone();
    mr.modality = "MR".into();
    let other = Spec::new(301, 1, 1);
    for (spec, blob) in [
        (&ct_first, "a"),
        (&ct_second, "b"),
        (&mr, "c"),
        (&other, "d"),
    ] {
        assert_eq!(store(&index, spec, blob).await, StoreOutcome::Stored);
    }
    let by_name = || filter(&PATIENT_NAME, Matcher::FuzzyName(vec!["parent".into()]));
    let hits = index
        .search(&query(QueryLevel::Study, vec![by_name()]))
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].number_of_related_series, Some(2));
    assert_eq!(hits[0].number_of_related_instances, Some(3));
    assert_eq!(hits[0].modalities_in_study, ["CT", "MR"]);
    assert_eq!(text(&hits[0].attributes, "00100020"), ct_first.patient_id);

    // ModalitiesInStudy matches any series of the study.
    let modality = |value: &str| filter(&MODALITIES_IN_STUDY, Matcher::Exact(value.into()));
    assert_eq!(
        study_uids(&index, vec![modality("MR")]).await,
        [ct_first.study.as_str()]
    );
    assert_eq!(
        study_uids(&index, vec![modality("CT")]).await,
        [ct_first.study.clone(), other.study.clone()]
    );
    assert!(study_uids(&index, vec![modality("US")]).await.is_empty());

    // Series level: a study attribute filters by the parent, attributes include the study's.
    let hits = index
        .search(&query(QueryLevel::Series, vec![by_name()]))
        .await
        .expect("search");
    assert_eq!(hits.len(), 2);
    assert_eq!(text(&hits[0].attributes, "0020000E"), ct_first.series);
    assert_eq!(text(&hits[0].attributes, "00100010"), "Parent^Filter");
    assert_eq!(hits[0].number_of_related_instances, Some(2));
    assert_eq!(hits[1].number_of_related_instances, Some(1));
    assert_eq!(hits[0].number_of_related_series, None);
    let series_modality = vec![by_name(), filter(&MODALITY, Matcher::Exact("MR".into()))];
    let hits = index
        .search(&query(QueryLevel::Series, series_modality))
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(text(&hits[0].attributes, "0020000E"), mr.series);

    // Instance level, under a study and a series.
    let mut instances = query(QueryLevel::Instance, Vec::new());
    instances.study_instance_uid = Some(&ct_first.study);
    let hits = index.search(&instances).await.expect("search");
    let sops: Vec<String> = hits
        .iter()
        .map(|hit| text(&hit.attributes, "00080018"))
        .collect();
    assert_eq!(
        sops,
        [ct_first.sop.clone(), ct_second.sop.clone(), mr.sop.clone()]
    );
    assert_eq!(text(&hits[2].attributes, "00080060"), "MR");
    assert_eq!(text(&hits[2].attributes, "00100010"), "Parent^Filter");
    instances.series_instance_uid = Some(&ct_first.series);
    let hits = index.search(&instances).await.expect("search");
    assert_eq!(hits.len(), 2);
    let by_sop = vec![filter(
        &SOP_INSTANCE_UID,
        Matcher::Exact(ct_second.sop.clone()),
    )];
    let hits = index
        .search(&query(QueryLevel::Instance, by_sop))
        .await
        .expect("search");
    assert_eq!(hits.len(), 1);
    assert_eq!(text(&hits[0].attributes, "00080018"), ct_second.sop);
    // A series search restricted to another study finds nothing.
    let mut elsewhere = query(QueryLevel::Series, vec![by_name()]);
    elsewhere.study_instance_uid = Some(&other.study);
    assert!(index.search(&elsewhere).await.expect("search").is_empty());
    // Another service sees nothing.
    let mut other_service = query(QueryLevel::Study, Vec::new());
    other_service.service = "other/dicom";
    assert!(
        index
            .search(&other_service)
            .await
            .expect("search")
            .is_empty()
    );

    // The study's attributes follow the instance stored last.
    let mut renamed = Spec::new(300, 2, 9);
    renamed.patient_name = "Renamed^Later".into();
    renamed.modality = "MR".into();
    store(&index, &renamed, "e").await;
    assert!(study_uids(&index, vec![by_name()]).await.is_empty());
    let renamed_hits = study_uids(
        &index,
        vec![filter(
            &PATIENT_NAME,
            Matcher::FuzzyName(vec!["renamed".into()]),
        )],
    )
    .await;
    assert_eq!(renamed_hits, [ct_first.study.as_str()]);
}

async fn row_count(index: &Index, table: &str) -> i64 {
    use sqlx::Row;
    sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(index.database().pool())
        .await
        .expect("count")
        .get(0)
}

async fn delete_cascades_to_empty_parents(index: Index) {
    let a = Spec::new(400, 1, 1);
    let b = Spec::new(400, 1, 2);
    let c = Spec::new(400, 2, 1);
    let keep = Spec::new(401, 1, 1);
    for (spec, blob) in [(&a, "a"), (&b, "b"), (&c, "c"), (&keep, "keep")] {
        store(&index, spec, blob).await;
    }
    let deleted = index
        .delete(SERVICE, DeleteScope::Instance(&a.study, &a.series, &a.sop))
        .await
        .expect("delete");
    assert_eq!(deleted, ["a"]);
    assert!(
        index
            .delete(SERVICE, DeleteScope::Instance(&a.study, &a.series, &a.sop))
            .await
            .expect("again")
            .is_empty()
    );
    fn series_of(study: &str) -> SearchQuery<'_> {
        let mut series = query(QueryLevel::Series, Vec::new());
        series.study_instance_uid = Some(study);
        series
    }
    assert_eq!(
        index
            .search(&series_of(&a.study))
            .await
            .expect("search")
            .len(),
        2,
        "series a still has b"
    );

    let deleted = index
        .delete(SERVICE, DeleteScope::Series(&c.study, &c.series))
        .await
        .expect("delete");
    assert_eq!(deleted, ["c"]);
    let remaining = index.search(&series_of(&a.study)).await.expect("search");
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].number_of_related_instances, Some(1));

    // An instance can come back after it was deleted.
    assert_eq!(store(&index, &a, "a2").await, StoreOutcome::Stored);
    let mut deleted = index
        .delete(SERVICE, DeleteScope::Study(&a.study))
        .await
        .expect("delete");
    deleted.sort();
    assert_eq!(deleted, ["a2", "b"]);
    assert_eq!(study_uids(&index, Vec::new()).await, [keep.study.as_str()]);
    assert!(
        index
            .delete(SERVICE, DeleteScope::Study(&a.study))
            .await
            .expect("again")
            .is_empty()
    );
    assert!(
        index
            .delete("other/dicom", DeleteScope::Study(&keep.study))
            .await
            .expect("other service")
            .is_empty()
    );

    // Only the kept study's rows and tokens are left.
    assert_eq!(row_count(&index, "dicom_studies").await, 1);
    assert_eq!(row_count(&index, "dicom_series").await, 1);
    assert_eq!(row_count(&index, "dicom_instances").await, 1);
    let deleted_tokens = index
        .search(&query(
            QueryLevel::Study,
            vec![filter(&PATIENT_ID, Matcher::Exact(a.patient_id.clone()))],
        ))
        .await
        .expect("search");
    assert!(deleted_tokens.is_empty());
    use sqlx::Row;
    let orphans: i64 = sqlx::query(
        "SELECT COUNT(*) FROM dicom_study_tokens t WHERE NOT EXISTS (SELECT 1 FROM dicom_studies s WHERE s.id = t.study_id)",
    )
    .fetch_one(index.database().pool())
    .await
    .expect("orphans")
    .get(0);
    assert_eq!(orphans, 0);
    let series_tokens_left: i64 = sqlx::query("SELECT COUNT(*) FROM dicom_series_tokens")
        .fetch_one(index.database().pool())
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        series_tokens_left, 1,
        "only the kept series' Modality token"
    );
}

async fn moved_sealed_values_do_not_open(index: Index) {
    let first = Spec::new(500, 1, 1);
    let second = Spec::new(500, 1, 2);
    store(&index, &first, "a").await;
    store(&index, &second, "b").await;
    sqlx::query(
        "UPDATE dicom_instances SET metadata = (SELECT metadata FROM dicom_instances WHERE blob_name = 'b') \
         WHERE blob_name = 'a'",
    )
    .execute(index.database().pool())
    .await
    .expect("swap");
    let result = index
        .find_metadata(
            SERVICE,
            DeleteScope::Instance(&first.study, &first.series, &first.sop),
        )
        .await;
    if index_is_keyed(&index).await {
        assert!(
            matches!(result, Err(IndexError::Integrity)),
            "a value moved to another row must not open"
        );
    } else {
        // The readable cipher binds nothing: the moved value opens.
        assert!(result.is_ok());
    }
}

/// The rows of the index's tables that the database visited for a search, from PostgreSQL's
/// `EXPLAIN (ANALYZE)`: for each step on a `dicom_` table or index, the rows it returned plus
/// those it read and filtered out, times its loops.
fn postgres_rows_visited(plan: &str) -> u64 {
    let mut visited = 0;
    // (rows per loop, loops) of the step being read.
    let mut step: Option<(u64, u64)> = None;
    let number_after = |line: &str, key: &str| -> Option<u64> {
        let start = line.find(key)? + key.len();
        let digits: String = line[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    for line in plan.lines() {
        if line.contains("(actual time=") {
            if let Some((rows, loops)) = step.take() {
                visited += rows * loops;
            }
            if line.contains(" on dicom_") {
                // After the estimate: `(actual time=A..B rows=R loops=L)`.
                let actual = &line[line.find("(actual time=").unwrap_or(0)..];
                let rows = number_after(actual, " rows=").expect("rows");
                let loops = number_after(actual, " loops=").expect("loops");
                step = Some((rows, loops.max(1)));
            }
        } else if let Some((rows, _)) = step.as_mut() {
            for key in [
                "Rows Removed by Filter: ",
                "Rows Removed by Index Recheck: ",
            ] {
                if let Some(removed) = number_after(line, key) {
                    *rows += removed;
                }
            }
        }
    }
    if let Some((rows, loops)) = step {
        visited += rows * loops;
    }
    visited
}

/// Searches are driven by their tokens: a search by PatientID or by a short StudyDate range
/// reads about as many rows as it finds, however many studies the service holds. On SQLite the
/// plan has no full scan and no walk of the service's rows (`service=?`); on PostgreSQL (with
/// statistics, as autovacuum keeps them) the rows the plan visited are counted.
async fn searches_are_driven_by_their_tokens(index: Index) {
    const STUDIES: usize = 150;
    let mut specs = Vec::new();
    for number in 0..STUDIES {
        let mut spec = Spec::new(500 + number, 1, 1);
        // Twelve months, about twelve days each.
        let month = u32::try_from(number % 12).expect("small") + 1;
        let day = u32::try_from(number / 12).expect("small") + 1;
        spec.study_date = 2020_0000 + month * 100 + day;
        store(&index, &spec, "blob").await;
        specs.push(spec);
    }
    // The same studies in another service, and more: never found, never walked. Three times as
    // many rows as the service's own, so that on PostgreSQL reading every study row is clearly dearer
    // than the index probes a search needs: with the service's 150 alone the planner sometimes
    // chose a scan of the whole (small) table, and the test failed now and then.
    for spec in specs.iter().take(40) {
        store_in(&index, OTHER_SERVICE, spec, "blob").await;
    }
    for number in 0..3 * STUDIES {
        store_in(
            &index,
            OTHER_SERVICE,
            &Spec::new(2_000 + number, 1, 1),
            "blob",
        )
        .await;
    }
    let postgres = index.database().backend() == hds_db::Backend::Postgres;
    if postgres {
        sqlx::query("ANALYZE")
            .execute(index.database().pool())
            .await
            .expect("analyze");
    }
    let target = &specs[77];
    let by_patient = filter(&PATIENT_ID, Matcher::Exact(target.patient_id.clone()));
    // 2020-06-06 .. 2020-06-07: the studies 65 and 77.
    let by_dates = filter(
        &STUDY_DATE,
        Matcher::DateRange(Some(2020_0606), Some(2020_0607)),
    );
    let cases = [
        (QueryLevel::Study, vec![by_patient.clone()], 1),
        (QueryLevel::Study, vec![by_dates.clone()], 2),
        (
            QueryLevel::Study,
            vec![by_dates.clone(), by_patient.clone()],
            1,
        ),
        (QueryLevel::Series, vec![by_patient.clone()], 1),
        (QueryLevel::Instance, vec![by_dates.clone()], 2),
    ];
    for (level, filters, matches) in cases {
        let search = query(level, filters);
        let hits = index.search(&search).await.expect("search");
        assert_eq!(hits.len(), matches, "{level:?} {:?}", search.filters);
        let plan = index
            .explain_search(&search)
            .await
            .expect("explain")
            .expect("a plan");
        if std::env::var_os("HDS_SHOW_PLANS").is_some() {
            eprintln!("{level:?}:\n{plan}");
        }
        if postgres {
            let visited = postgres_rows_visited(&plan);
            // A few probes per match (token, row, service), never the 150 studies.
            assert!(
                visited <= 8 * matches as u64 + 8,
                "{level:?}: {visited} rows visited for {matches} matches:\n{plan}"
            );
        } else {
            for line in plan.lines() {
                // `SCAN d` reads the driver's materialized matches, `SCAN p` the page of ids
                // they give; neither is a table.
                let walks_a_table =
                    line.starts_with("SCAN") && !matches!(line.trim(), "SCAN d" | "SCAN p");
                assert!(
                    !walks_a_table && !line.contains("service=?"),
                    "{level:?}: the plan walks rows: {line}\n{plan}"
                );
            }
        }
    }
    // Found ones are the right ones.
    let hits = index
        .search(&query(QueryLevel::Study, vec![by_dates]))
        .await
        .expect("search");
    let found: Vec<String> = hits
        .iter()
        .map(|hit| text(&hit.attributes, "0020000D"))
        .collect();
    assert_eq!(found, [specs[65].study.clone(), specs[77].study.clone()]);
}

/// Whether the index runs with the keyed cipher: its tokens are not the readable ones.
async fn index_is_keyed(index: &Index) -> bool {
    use sqlx::Row;
    let token: Vec<u8> = sqlx::query("SELECT uid_token FROM dicom_studies ORDER BY id LIMIT 1")
        .fetch_one(index.database().pool())
        .await
        .expect("a study")
        .get(0);
    !token.starts_with(b"StudyInstanceUID\0")
}

/// The index over `url` with the readable cipher, or with the real one: a keyring for
/// [`SERVICE`] under a local RSA key-encryption key.
async fn open_index(url: &str, keyed: bool) -> Index {
    let database = Database::connect(url).await.expect("database");
    if !keyed {
        return Index::open(database, Arc::new(PlaintextIndexCipher))
            .await
            .expect("open index");
    }
    let keyrings = ServiceKeyrings::default();
    let index = Index::open(database.clone(), Arc::new(keyrings.clone()))
        .await
        .expect("open index");
    for service in [SERVICE, OTHER_SERVICE] {
        keyrings
            .open_or_create(&database, service, Arc::new(test_kek("kek-1")))
            .await
            .expect("keyring");
    }
    index
}

fn test_kek(key_id: &str) -> LocalRsaKek {
    LocalRsaKek::generate(key_id, RsaKeySize::Rsa2048).expect("RSA key")
}

async fn sqlite_index(keyed: bool) -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite:{}", dir.path().join("index.db").display());
    let index = open_index(&url, keyed).await;
    (dir, index)
}

async fn postgres_index(keyed: bool) -> Index {
    let cluster = PostgresCluster::shared().expect("test cluster");
    let url = cluster.fresh_database().await.expect("database");
    open_index(&url, keyed).await
}

/// The whole feed of `service`, in sequence order.
async fn whole_feed(index: &Index, service: &str) -> Vec<ChangeFeedEntry> {
    index
        .change_feed(
            service,
            ChangeFeedWindow::Sequences {
                after: 0,
                through: i64::MAX,
            },
            true,
        )
        .await
        .expect("change feed")
}

/// (sequence, action, state, SOPInstanceUID) of each entry.
fn feed_summary(entries: &[ChangeFeedEntry]) -> Vec<(i64, ChangeAction, ChangeState, String)> {
    entries
        .iter()
        .map(|entry| {
            (
                entry.sequence,
                entry.action,
                entry.state,
                entry.sop_instance_uid.clone(),
            )
        })
        .collect()
}

async fn change_feed_follows_creates_replacements_and_deletes(index: Index) {
    use ChangeAction::{Create, Delete};
    use ChangeState::{Current, Deleted, Replaced};
    assert!(
        index
            .latest_change(SERVICE, true)
            .await
            .expect("latest")
            .is_none()
    );
    let first = Spec::new(40, 1, 1);
    let second = Spec::new(40, 1, 2);
    let other_study = Spec::new(41, 1, 1);
    for (spec, blob) in [(&first, "a"), (&second, "b"), (&other_study, "c")] {
        assert_eq!(store(&index, spec, blob).await, StoreOutcome::Stored);
    }
    let entries = whole_feed(&index, SERVICE).await;
    assert_eq!(
        feed_summary(&entries),
        [
            (1, Create, Current, first.sop.clone()),
            (2, Create, Current, second.sop.clone()),
            (3, Create, Current, other_study.sop.clone()),
        ]
    );
    assert_eq!(entries[0].study_instance_uid, first.study);
    assert_eq!(entries[0].series_instance_uid, first.series);
    assert_eq!(
        entries[1].metadata.as_ref(),
        Some(&Value::Object(
            second.parsed().metadata.to_map().expect("metadata")
        ))
    );
    assert!(
        entries
            .windows(2)
            .all(|pair| pair[0].timestamp_micros <= pair[1].timestamp_micros),
        "timestamps never go back"
    );

    // A plain store of a stored SOP instance is refused and leaves the feed alone; a replacing
    // one replaces it: the old entry is `replaced`, a new one current.
    let mut changed = second.clone();
    changed.patient_id = "CHANGED".into();
    assert_eq!(
        store(&index, &changed, "b2").await,
        StoreOutcome::AlreadyExists
    );
    assert_eq!(whole_feed(&index, SERVICE).await.len(), 3);
    assert_eq!(
        store_with_mode(&index, SERVICE, &changed, "b2", StoreMode::Replace).await,
        StoreOutcome::Replaced {
            previous_blob_name: "b".into()
        }
    );
    let records = index
        .find_instances(SERVICE, DeleteScope::Study(&second.study))
        .await
        .expect("find");
    let blobs: Vec<&str> = records
        .iter()
        .map(|record| record.blob_name.as_str())
        .collect();
    assert_eq!(blobs, ["a", "b2"]);
    assert_eq!(
        study_uids(
            &index,
            vec![filter(&PATIENT_ID, Matcher::Exact("CHANGED".into()))]
        )
        .await,
        [second.study.as_str()]
    );
    // Replacing never moves an instance to another series.
    let mut moved = second.clone();
    moved.series = format!("{}.9", second.series);
    assert_eq!(
        store_with_mode(&index, SERVICE, &moved, "b3", StoreMode::Replace).await,
        StoreOutcome::AlreadyExists
    );
    // Replacing what is not there stores it.
    let third = Spec::new(40, 1, 3);
    assert_eq!(
        store_with_mode(&index, SERVICE, &third, "d", StoreMode::Replace).await,
        StoreOutcome::Stored
    );
    let entries = whole_feed(&index, SERVICE).await;
    assert_eq!(
        feed_summary(&entries),
        [
            (1, Create, Current, first.sop.clone()),
            (2, Create, Replaced, second.sop.clone()),
            (3, Create, Current, other_study.sop.clone()),
            (4, Create, Current, second.sop.clone()),
            (5, Create, Current, third.sop.clone()),
        ]
    );
    assert!(
        entries[1].metadata.is_none(),
        "a replaced version has no metadata"
    );
    assert_eq!(
        entries[3].metadata.as_ref(),
        Some(&Value::Object(
            changed.parsed().metadata.to_map().expect("metadata")
        ))
    );

    // Deleting the study: every entry of its instances says `deleted`, and one delete entry per
    // instance follows, keeping the UIDs but no metadata.
    let mut deleted_blobs = index
        .delete(SERVICE, DeleteScope::Study(&first.study))
        .await
        .expect("delete");
    deleted_blobs.sort();
    assert_eq!(deleted_blobs, ["a", "b2", "d"]);
    assert!(
        index
            .delete(SERVICE, DeleteScope::Study(&first.study))
            .await
            .expect("delete nothing")
            .is_empty()
    );
    let entries = whole_feed(&index, SERVICE).await;
    assert_eq!(
        feed_summary(&entries),
        [
            (1, Create, Deleted, first.sop.clone()),
            (2, Create, Deleted, second.sop.clone()),
            (3, Create, Current, other_study.sop.clone()),
            (4, Create, Deleted, second.sop.clone()),
            (5, Create, Deleted, third.sop.clone()),
            (6, Delete, Deleted, first.sop.clone()),
            (7, Delete, Deleted, second.sop.clone()),
            (8, Delete, Deleted, third.sop.clone()),
        ]
    );
    assert_eq!(entries[6].study_instance_uid, second.study);
    assert_eq!(entries[6].series_instance_uid, second.series);
    assert!(
        entries
            .iter()
            .enumerate()
            .all(|(position, entry)| { (position == 2) == entry.metadata.is_some() })
    );

    // Windows: by sequence, by time with paging, without metadata; latest.
    let page = index
        .change_feed(
            SERVICE,
            ChangeFeedWindow::Sequences {
                after: 2,
                through: 4,
            },
            false,
        )
        .await
        .expect("sequences");
    assert_eq!(
        page.iter().map(|entry| entry.sequence).collect::<Vec<_>>(),
        [3, 4]
    );
    assert!(page.iter().all(|entry| entry.metadata.is_none()));
    let whole_time = |offset, limit| ChangeFeedWindow::Time {
        start_micros: i64::MIN,
        end_micros: i64::MAX,
        offset,
        limit,
    };
    let page = index
        .change_feed(SERVICE, whole_time(5, 2), true)
        .await
        .expect("time page");
    assert_eq!(
        page.iter().map(|entry| entry.sequence).collect::<Vec<_>>(),
        [6, 7]
    );
    let at = entries[6].timestamp_micros;
    let window = index
        .change_feed(
            SERVICE,
            ChangeFeedWindow::Time {
                start_micros: at,
                end_micros: at + 1,
                offset: 0,
                limit: 100,
            },
            true,
        )
        .await
        .expect("time window");
    assert!(window.iter().all(|entry| entry.timestamp_micros == at));
    assert!(window.iter().any(|entry| entry.sequence == 7));
    let before = index
        .change_feed(
            SERVICE,
            ChangeFeedWindow::Time {
                start_micros: i64::MIN,
                end_micros: entries[0].timestamp_micros,
                offset: 0,
                limit: 100,
            },
            true,
        )
        .await
        .expect("empty window");
    assert!(before.is_empty(), "the end of a window is exclusive");
    let latest = index
        .latest_change(SERVICE, true)
        .await
        .expect("latest")
        .expect("an entry");
    assert_eq!((latest.sequence, latest.action), (8, Delete));

    // Every service counts its own sequences.
    assert!(whole_feed(&index, OTHER_SERVICE).await.is_empty());
    assert_eq!(
        store_in(&index, OTHER_SERVICE, &first, "elsewhere").await,
        StoreOutcome::Stored
    );
    let elsewhere = whole_feed(&index, OTHER_SERVICE).await;
    assert_eq!(
        feed_summary(&elsewhere),
        [(1, Create, Current, first.sop.clone())]
    );
}

/// Entries are written by the commit that makes the change: a store that records nothing
/// leaves none, and a reader never sees a sequence before every smaller one is committed, even
/// while stores of one service commit concurrently.
async fn change_feed_entries_commit_with_their_change(index: Index) {
    // A store under a study key that is no longer the study's records nothing, nor an entry.
    let spec = Spec::new(42, 1, 1);
    give_study_its_key(&index, SERVICE, &spec).await;
    let parsed = spec.parsed();
    let stale = InstanceKeys {
        wrapped_study_key: b"another-study-key".to_vec(),
        wrapped_blob_key: b"suite-wrapped-blob-key".to_vec(),
        new_study_key_generation: None,
    };
    let outcome = index
        .store_instance(NewInstance {
            service: SERVICE,
            parsed: &parsed,
            blob_name: "stale",
            size: 1,
            keys: &stale,
            mode: StoreMode::Create,
        })
        .await
        .expect("store");
    assert_eq!(outcome, StoreOutcome::StudyKeyChanged);
    assert!(
        index
            .latest_change(SERVICE, false)
            .await
            .expect("latest")
            .is_none()
    );

    let stores = 24;
    let writers = (0..stores).map(|sop| {
        let index = index.clone();
        tokio::spawn(async move {
            let spec = Spec::new(43, sop % 3, sop);
            store(&index, &spec, &format!("blob-{sop}")).await
        })
    });
    let writers: Vec<_> = writers.collect();
    let reader = {
        let index = index.clone();
        tokio::spawn(async move {
            let mut observations = 0;
            loop {
                let latest = index
                    .latest_change(SERVICE, false)
                    .await
                    .expect("latest")
                    .map_or(0, |entry| entry.sequence);
                let seen = index
                    .change_feed(
                        SERVICE,
                        ChangeFeedWindow::Sequences {
                            after: 0,
                            through: latest,
                        },
                        false,
                    )
                    .await
                    .expect("feed");
                let sequences: Vec<i64> = seen.iter().map(|entry| entry.sequence).collect();
                assert_eq!(
                    sequences,
                    (1..=latest).collect::<Vec<_>>(),
                    "a committed sequence hides a smaller one"
                );
                observations += 1;
                if latest == stores as i64 {
                    return observations;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    for writer in writers {
        assert_eq!(writer.await.expect("writer"), StoreOutcome::Stored);
    }
    assert!(reader.await.expect("reader") >= 1);
    let entries = whole_feed(&index, SERVICE).await;
    let mut sops: Vec<String> = entries
        .iter()
        .map(|entry| entry.sop_instance_uid.clone())
        .collect();
    sops.sort();
    sops.dedup();
    assert_eq!(sops.len(), stores, "one entry per stored instance");
}

// ---- Extended query tags ----

fn tag_definition(
    path: &str,
    vr: Option<&str>,
    creator: Option<&str>,
    level: &str,
) -> hds_dicom::extended::ExtendedTagDefinition {
    hds_dicom::extended::validate_definition(path, vr, creator, level).expect("valid definition")
}

/// Runs the operations of the index to their end as `owner` would (waiting out the grace).
async fn run_operations(index: &Index, owner: &str) {
    for _ in 0..400 {
        match index.operation_step(owner).await.expect("operation step") {
            ReindexStep::Idle => return,
            ReindexStep::Waiting => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            ReindexStep::Progressed | ReindexStep::Finished => {}
        }
    }
    panic!("the operations did not finish");
}

fn operation_id(outcome: AddTagsOutcome) -> String {
    match outcome {
        AddTagsOutcome::Started { operation_id } => operation_id,
        other => panic!("not started: {other:?}"),
    }
}

async fn extended_tags_follow_azures_registry_rules(index: Index) {
    let sex = tag_definition("PatientSex", None, None, "Study");
    let private = tag_definition("00091001", Some("LO"), Some("ACME"), "Series");
    let started = index
        .add_extended_query_tags(SERVICE, &[sex.clone(), private.clone()])
        .await
        .expect("add");
    let id = operation_id(started);
    let tags = index.extended_query_tags(SERVICE).await.expect("list");
    assert_eq!(tags.len(), 2);
    assert!(tags.iter().all(|tag| tag.status == TagStatus::Adding));
    assert!(
        tags.iter()
            .all(|tag| tag.operation_id.as_deref() == Some(id.as_str()))
    );
    // One operation at a time; tags being added can be neither changed nor deleted.
    let rows = tag_definition("Rows", None, None, "Instance");
    assert_eq!(
        index
            .add_extended_query_tags(SERVICE, std::slice::from_ref(&rows))
            .await
            .expect("add"),
        AddTagsOutcome::OperationRunning
    );
    assert_eq!(
        index
            .delete_extended_query_tag(SERVICE, sex.tag)
            .await
            .expect("delete"),
        TagChange::Busy
    );
    assert_eq!(
        index
            .set_extended_query_tag_query_status(SERVICE, sex.tag, TagQueryStatus::Disabled)
            .await
            .expect("patch"),
        TagChange::Busy
    );
    // Another service's registry is its own.
    assert!(
        index
            .extended_query_tags(OTHER_SERVICE)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(
        index
            .operation(OTHER_SERVICE, &id)
            .await
            .expect("op")
            .is_none()
    );

    run_operations(&index, "owner-a").await;
    let operation = index
        .operation(SERVICE, &id)
        .await
        .expect("op")
        .expect("found");
    assert_eq!(operation.status, OperationStatus::Succeeded);
    assert_eq!(operation.percent_complete, 100);
    assert_eq!(
        operation.resources,
        vec!["00100040".to_owned(), "00091001".to_owned()]
    );
    let ready = index
        .extended_query_tag(SERVICE, sex.tag)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(ready.status, TagStatus::Ready);
    assert!(ready.is_queryable());
    assert_eq!(ready.operation_id, None);

    assert_eq!(
        index
            .add_extended_query_tags(SERVICE, std::slice::from_ref(&sex))
            .await
            .expect("add"),
        AddTagsOutcome::AlreadyExists("00100040".into())
    );
    // At most 128 per service: 2 exist, 127 more is one too many.
    let many: Vec<_> = (0..127u16)
        .map(|element| {
            tag_definition(
                &format!("0011{:04X}", 0x1000 + element),
                Some("LO"),
                Some("ACME"),
                "Study",
            )
        })
        .collect();
    assert_eq!(
        index
            .add_extended_query_tags(SERVICE, &many)
            .await
            .expect("add"),
        AddTagsOutcome::TooMany
    );
    assert_eq!(
        index
            .extended_query_tags(SERVICE)
            .await
            .expect("list")
            .len(),
        2
    );

    match index
        .set_extended_query_tag_query_status(SERVICE, sex.tag, TagQueryStatus::Disabled)
        .await
        .expect("patch")
    {
        TagChange::Done(tag) => {
            assert_eq!(tag.query_status, TagQueryStatus::Disabled);
            assert!(!tag.is_queryable());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        index
            .delete_extended_query_tag(SERVICE, sex.tag)
            .await
            .expect("delete"),
        TagChange::Done(_)
    ));
    assert_eq!(
        index
            .delete_extended_query_tag(SERVICE, sex.tag)
            .await
            .expect("delete"),
        TagChange::NotFound
    );
    assert_eq!(
        index
            .extended_query_tags(SERVICE)
            .await
            .expect("list")
            .len(),
        1
    );
}

fn with_extra(mut spec: Spec, elements: &[(&str, Value)]) -> Spec {
    for (key, element) in elements {
        spec.extra.insert((*key).to_owned(), element.clone());
    }
    spec
}

/// The StudyInstanceUIDs (or SOPInstanceUIDs) a search on extended filters returns.
async fn extended_search(
    index: &Index,
    level: QueryLevel,
    filters: Vec<hds_index::ExtendedFilter>,
) -> Vec<Map<String, Value>> {
    let mut search = query(level, Vec::new());
    search.extended_filters = filters;
    index
        .search(&search)
        .await
        .expect("search")
        .into_iter()
        .map(|hit| values(hit.attributes))
        .collect()
}

async fn queryable(index: &Index, path: &str) -> hds_index::ExtendedQueryTag {
    let tag = hds_dicom::extended::parse_tag_path(path).expect("path");
    index
        .extended_query_tag(SERVICE, tag)
        .await
        .expect("get")
        .expect("found")
}

async fn extended_tags_index_stores_and_reindex_existing_instances(index: Index) {
    let sex = |value: &str| ("00100040", json!({"vr": "CS", "Value": [value]}));
    let acquisition = |value: &str| ("00080022", json!({"vr": "DA", "Value": [value]}));
    let rows = |value: u32| ("00280010", json!({"vr": "US", "Value": [value]}));
    let creator = ("00090010", json!({"vr": "LO", "Value": ["ACME"]}));
    let private = |value: &str| ("00091001", json!({"vr": "LO", "Value": [value]}));
    // Stored before the tags exist: the reindex indexes them.
    let before = [
        with_extra(
            Spec::new(1, 1, 1),
            &[
                sex("F"),
                acquisition("20200315"),
                rows(512),
                creator.clone(),
                private("alpha"),
            ],
        ),
        with_extra(
            Spec::new(2, 1, 1),
            &[
                sex("M"),
                acquisition("20210101"),
                rows(256),
                creator.clone(),
                private("beta"),
            ],
        ),
        // A CS value longer than 16 characters: an error of this instance for PatientSex.
        with_extra(Spec::new(3, 1, 1), &[sex(&"X".repeat(17)), rows(512)]),
    ];
    for (at, spec) in before.iter().enumerate() {
        assert_eq!(
            store(&index, spec, &format!("blob-b{at}")).await,
            StoreOutcome::Stored
        );
    }
    let definitions = [
        tag_definition("PatientSex", None, None, "Study"),
        tag_definition("AcquisitionDate", None, None, "Series"),
        tag_definition("00280010", None, None, "Instance"),
        tag_definition("00091001", Some("LO"), Some("ACME"), "Series"),
    ];
    let id = operation_id(
        index
            .add_extended_query_tags(SERVICE, &definitions)
            .await
            .expect("add"),
    );
    // Stored while the tags are being added: the store indexes them itself.
    let during = with_extra(
        Spec::new(4, 1, 1),
        &[
            sex("F"),
            acquisition("20200320"),
            rows(1024),
            creator.clone(),
            private("alpha"),
        ],
    );
    assert_eq!(store(&index, &during, "blob-d").await, StoreOutcome::Stored);
    let pending = index
        .operation(SERVICE, &id)
        .await
        .expect("op")
        .expect("found");
    assert_eq!(pending.status, OperationStatus::NotStarted);
    assert_eq!(pending.percent_complete, 0);
    run_operations(&index, "owner-a").await;

    let sex_tag = queryable(&index, "00100040").await;
    // The over-long value is an error of instance 3, and disables queries on the tag.
    assert_eq!(sex_tag.error_count, 1);
    assert_eq!(sex_tag.query_status, TagQueryStatus::Disabled);
    let errors = index
        .extended_query_tag_errors(SERVICE, sex_tag.definition.tag, 10, 0)
        .await
        .expect("errors")
        .expect("tag");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].sop_instance_uid, before[2].sop);
    assert_eq!(errors[0].study_instance_uid, before[2].study);
    assert!(errors[0].message.contains("longer"));
    // Its owner enables it again; the index answers whatever the status (the API checks it).
    let filter = |tag: &hds_index::ExtendedQueryTag, matcher: Matcher| hds_index::ExtendedFilter {
        tag: tag.clone(),
        matcher,
    };
    let found = extended_search(
        &index,
        QueryLevel::Study,
        vec![filter(&sex_tag, Matcher::Exact("F".into()))],
    )
    .await;
    let uids: Vec<String> = found
        .iter()
        .map(|hit| value_text(hit, "0020000D"))
        .collect();
    assert_eq!(uids, vec![before[0].study.clone(), during.study.clone()]);
    // The value is in the row's attributes, for includefield.
    assert!(found.iter().all(|hit| value_text(hit, "00100040") == "F"));

    let date_tag = queryable(&index, "AcquisitionDate").await;
    assert!(date_tag.is_queryable());
    let in_march = extended_search(
        &index,
        QueryLevel::Series,
        vec![filter(
            &date_tag,
            Matcher::DateRange(Some(2020_0301), Some(2020_0331)),
        )],
    )
    .await;
    let series: Vec<String> = in_march
        .iter()
        .map(|hit| value_text(hit, "0020000E"))
        .collect();
    assert_eq!(
        series,
        vec![before[0].series.clone(), during.series.clone()]
    );

    let rows_tag = queryable(&index, "Rows").await;
    let tall = extended_search(
        &index,
        QueryLevel::Instance,
        vec![filter(&rows_tag, Matcher::Exact("512".into()))],
    )
    .await;
    let sops: Vec<String> = tall.iter().map(|hit| value_text(hit, "00080018")).collect();
    assert_eq!(sops, vec![before[0].sop.clone(), before[2].sop.clone()]);
    // The private tag (series level), matched from studies.
    let private_tag = queryable(&index, "00091001").await;
    let alpha = extended_search(
        &index,
        QueryLevel::Study,
        vec![filter(&private_tag, Matcher::Exact("alpha".into()))],
    )
    .await;
    assert_eq!(alpha.len(), 2);
    // Another service never matches these tokens.
    let mut other = query(QueryLevel::Study, Vec::new());
    other.service = OTHER_SERVICE;
    other.extended_filters = vec![filter(&private_tag, Matcher::Exact("alpha".into()))];
    assert!(index.search(&other).await.expect("search").is_empty());

    // A store after the tag is ready is indexed, and replaces the study's value.
    let later = with_extra(Spec::new(5, 1, 1), &[sex("F")]);
    assert_eq!(store(&index, &later, "blob-l").await, StoreOutcome::Stored);
    let found = extended_search(
        &index,
        QueryLevel::Study,
        vec![filter(&sex_tag, Matcher::Exact("F".into()))],
    )
    .await;
    assert_eq!(found.len(), 3);
    // A deleted tag's tokens are unreachable: a tag added again on the same path starts empty.
    assert!(matches!(
        index
            .delete_extended_query_tag(SERVICE, sex_tag.definition.tag)
            .await
            .expect("delete"),
        TagChange::Done(_)
    ));
    index
        .add_extended_query_tags(
            SERVICE,
            &[tag_definition("PatientSex", None, None, "Study")],
        )
        .await
        .expect("add again");
    let again = queryable(&index, "PatientSex").await;
    assert!(
        extended_search(
            &index,
            QueryLevel::Study,
            vec![filter(&again, Matcher::Exact("F".into()))],
        )
        .await
        .is_empty()
    );
    run_operations(&index, "owner-a").await;
    assert_eq!(
        extended_search(
            &index,
            QueryLevel::Study,
            vec![filter(&again, Matcher::Exact("F".into()))],
        )
        .await
        .len(),
        3
    );
    // A store whose value does not fit is stored, and listed; the tag stays enabled.
    let again = queryable(&index, "PatientSex").await;
    assert_eq!(
        (again.error_count, again.query_status),
        (1, TagQueryStatus::Disabled)
    );
    assert!(matches!(
        index
            .set_extended_query_tag_query_status(
                SERVICE,
                again.definition.tag,
                TagQueryStatus::Enabled
            )
            .await
            .expect("enable"),
        TagChange::Done(_)
    ));
    let misfit = with_extra(Spec::new(6, 1, 1), &[sex(&"Y".repeat(20))]);
    assert_eq!(store(&index, &misfit, "blob-m").await, StoreOutcome::Stored);
    let after = queryable(&index, "PatientSex").await;
    assert_eq!(
        (after.error_count, after.query_status),
        (2, TagQueryStatus::Enabled)
    );
    let errors = index
        .extended_query_tag_errors(SERVICE, after.definition.tag, 10, 0)
        .await
        .expect("errors")
        .expect("tag");
    assert!(
        errors
            .iter()
            .any(|error| error.sop_instance_uid == misfit.sop)
    );
}

async fn reindex_continues_from_its_cursor_under_another_owner(index: Index) {
    let count = 120;
    for study in 0..count {
        let value = if study % 3 == 0 { "F" } else { "M" };
        let spec = with_extra(
            Spec::new(100 + study, 1, 1),
            &[("00100040", json!({"vr": "CS", "Value": [value]}))],
        );
        assert_eq!(
            store(&index, &spec, &format!("blob-{study}")).await,
            StoreOutcome::Stored
        );
    }
    let id = operation_id(
        index
            .add_extended_query_tags(
                SERVICE,
                &[tag_definition("PatientSex", None, None, "Study")],
            )
            .await
            .expect("add"),
    );
    // Owner A does one batch, then stops (a process that died holding the lease).
    assert_eq!(
        index.operation_step("owner-a").await.expect("step"),
        ReindexStep::Progressed
    );
    let partway = index
        .operation(SERVICE, &id)
        .await
        .expect("op")
        .expect("found");
    assert_eq!(partway.status, OperationStatus::Running);
    assert!(
        (1..100).contains(&partway.percent_complete),
        "{}",
        partway.percent_complete
    );
    // Owner B cannot take it while A's lease lasts...
    assert_eq!(
        index.operation_step("owner-b").await.expect("step"),
        ReindexStep::Idle
    );
    // ...and continues from A's cursor once it expired.
    sqlx::query("UPDATE dicom_operations SET lease_until_us = 0")
        .execute(index.database().pool())
        .await
        .expect("expire the lease");
    run_operations(&index, "owner-b").await;
    let done = index
        .operation(SERVICE, &id)
        .await
        .expect("op")
        .expect("found");
    assert_eq!(done.status, OperationStatus::Succeeded);
    let tag = queryable(&index, "PatientSex").await;
    assert!(tag.is_queryable());
    let mut search = query(QueryLevel::Study, Vec::new());
    search.extended_filters = vec![hds_index::ExtendedFilter {
        tag,
        matcher: Matcher::Exact("F".into()),
    }];
    assert_eq!(
        index.search(&search).await.expect("search").len(),
        count.div_ceil(3)
    );
    // Every instance was indexed once: A's batch was not redone as a new one.
    let processed: i64 = sqlx::query_scalar("SELECT processed FROM dicom_operations")
        .fetch_one(index.database().pool())
        .await
        .expect("processed");
    assert_eq!(processed, count as i64);
}

async fn reindex_ends_at_the_last_instance_fixed_after_its_grace(index: Index) {
    let sex = |study: usize| {
        with_extra(
            Spec::new(300 + study, 1, 1),
            &[("00100040", json!({"vr": "CS", "Value": ["F"]}))],
        )
    };
    for study in 0..3 {
        assert_eq!(
            store(&index, &sex(study), &format!("blob-{study}")).await,
            StoreOutcome::Stored
        );
    }
    let id = operation_id(
        index
            .add_extended_query_tags(
                SERVICE,
                &[tag_definition("PatientSex", None, None, "Study")],
            )
            .await
            .expect("add"),
    );
    // The grace is over: the first step fixes the last instance and walks up to it.
    sqlx::query("UPDATE dicom_operations SET created_us = created_us - 60000000")
        .execute(index.database().pool())
        .await
        .expect("age the operation");
    assert_eq!(
        index.operation_step("owner-a").await.expect("step"),
        ReindexStep::Progressed
    );
    let (end_id, last_id): (Option<i64>, i64) = (
        sqlx::query_scalar("SELECT end_id FROM dicom_operations")
            .fetch_one(index.database().pool())
            .await
            .expect("end"),
        sqlx::query_scalar("SELECT MAX(id) FROM dicom_instances")
            .fetch_one(index.database().pool())
            .await
            .expect("max"),
    );
    assert_eq!(end_id, Some(last_id));
    // Stores after it index the tag themselves; the walk does not chase them, so a store load
    // that outpaces the walk cannot keep the operation running.
    for study in 3..5 {
        assert_eq!(
            store(&index, &sex(study), &format!("blob-{study}")).await,
            StoreOutcome::Stored
        );
    }
    assert_eq!(
        index.operation_step("owner-a").await.expect("step"),
        ReindexStep::Finished
    );
    let done = index
        .operation(SERVICE, &id)
        .await
        .expect("op")
        .expect("found");
    assert_eq!(done.status, OperationStatus::Succeeded);
    let processed: i64 = sqlx::query_scalar("SELECT processed FROM dicom_operations")
        .fetch_one(index.database().pool())
        .await
        .expect("processed");
    assert_eq!(processed, 3);
    let mut search = query(QueryLevel::Study, Vec::new());
    search.extended_filters = vec![hds_index::ExtendedFilter {
        tag: queryable(&index, "PatientSex").await,
        matcher: Matcher::Exact("F".into()),
    }];
    assert_eq!(index.search(&search).await.expect("search").len(), 5);
}

/// Two partitions and the default hold the same UIDs independently: searches, retrieves and
/// deletes in one never see another's; the service's one change feed names each entry's
/// partition; partitions are listed with the default first.
async fn partitions_isolate_the_same_uids(index: Index) {
    let a = hds_index::partition_scope(SERVICE, "a");
    let b = hds_index::partition_scope(SERVICE, "b");
    for name in ["a", "b"] {
        index
            .partition_or_add(SERVICE, name)
            .await
            .expect("partition");
    }
    let spec = Spec::new(3, 1, 1);
    for scope in [SERVICE, a.as_str(), b.as_str()] {
        assert_eq!(
            store_in(&index, scope, &spec, "blob").await,
            StoreOutcome::Stored
        );
    }
    assert_eq!(
        store_in(&index, &a, &spec, "blob").await,
        StoreOutcome::AlreadyExists
    );
    let studies_in = |scope: String| {
        let index = index.clone();
        async move {
            let mut query = query(QueryLevel::Study, Vec::new());
            query.service = Box::leak(scope.into_boxed_str());
            index.search(&query).await.expect("search").len()
        }
    };
    assert_eq!(studies_in(a.clone()).await, 1);
    let deleted = index
        .delete(&a, DeleteScope::Study(&spec.study))
        .await
        .expect("delete");
    assert_eq!(deleted.len(), 1);
    assert_eq!(studies_in(a.clone()).await, 0);
    assert_eq!(studies_in(b.clone()).await, 1);
    assert_eq!(studies_in(SERVICE.into()).await, 1);
    assert_eq!(
        index
            .find_instances(&b, DeleteScope::Study(&spec.study))
            .await
            .expect("find")
            .len(),
        1
    );

    let feed = whole_feed(&index, SERVICE).await;
    let partitions: Vec<(ChangeAction, ChangeState, Option<&str>, bool)> = feed
        .iter()
        .map(|entry| {
            (
                entry.action,
                entry.state,
                entry.partition_name.as_deref(),
                entry.metadata.is_some(),
            )
        })
        .collect();
    assert_eq!(
        partitions,
        vec![
            (ChangeAction::Create, ChangeState::Current, None, true),
            (ChangeAction::Create, ChangeState::Deleted, Some("a"), false),
            (ChangeAction::Create, ChangeState::Current, Some("b"), true),
            (ChangeAction::Delete, ChangeState::Deleted, Some("a"), false),
        ]
    );
    assert!(feed.iter().all(|entry| entry.sop_instance_uid == spec.sop));
    assert_eq!(
        whole_feed(&index, &b).await.len(),
        feed.len(),
        "a partition's scope reads its service's feed"
    );

    let listed = index.partitions(SERVICE).await.expect("partitions");
    let names: Vec<&str> = listed
        .iter()
        .map(|partition| partition.name.as_str())
        .collect();
    assert_eq!(names, ["Microsoft.Default", "a", "b"]);
    assert_eq!(listed[0].key, 1);
    assert!(listed[1].key > 1 && listed[2].key > listed[1].key);
    assert!(
        index
            .partition(SERVICE, "c")
            .await
            .expect("lookup")
            .is_none()
    );
    assert!(
        index
            .partition(OTHER_SERVICE, "a")
            .await
            .expect("lookup")
            .is_none()
    );
    assert_eq!(
        index.partition_scopes(SERVICE).await.expect("scopes"),
        vec![a.clone(), b.clone()]
    );
}

/// A service has at most `MAX_PARTITIONS` partitions: past them a new one is refused, an
/// existing one is still found.
async fn partitions_are_bounded(index: Index) {
    index
        .partition_or_add(SERVICE, "first")
        .await
        .expect("first");
    sqlx::query(
        "INSERT INTO dicom_partitions (service, name, scope, created_us) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $2) \
         SELECT $1, 'p' || i, $1 || '#p' || i, 0 FROM n",
    )
    .bind(SERVICE)
    .bind(hds_index::MAX_PARTITIONS)
    .execute(index.database().pool())
    .await
    .expect("fill");
    assert!(matches!(
        index.partition_or_add(SERVICE, "one-too-many").await,
        Err(IndexError::PartitionLimit)
    ));
    assert_eq!(
        index
            .partition_or_add(SERVICE, "first")
            .await
            .expect("existing")
            .name,
        "first"
    );
    index
        .partition_or_add(OTHER_SERVICE, "elsewhere")
        .await
        .expect("another service is not bounded by this one's");
}

/// A study search's counts and ModalitiesInStudy, as the study's row keeps them, against what
/// its series and instances say, after stores (concurrent ones grouped), an upsert, a series
/// whose modality changes, and deletes of an instance, a series and a study.
async fn study_summary_follows_every_change(index: Index) {
    use sqlx::Row;
    /// The study's search hit: (series, instances, modalities sorted: concurrent stores create
    /// series in any order).
    async fn summary(index: &Index, study: &str) -> Option<(u64, u64, Vec<String>)> {
        let mut search = query(QueryLevel::Study, Vec::new());
        search.study_instance_uid = Some(study);
        let hits = index.search(&search).await.expect("search");
        hits.first().map(|hit| {
            (
                hit.number_of_related_series.expect("series count"),
                hit.number_of_related_instances.expect("instance count"),
                {
                    let mut modalities = hit.modalities_in_study.clone();
                    modalities.sort();
                    modalities
                },
            )
        })
    }
    let spec = |series: usize, sop: usize, modality: &str| {
        let mut spec = Spec::new(700, series, sop);
        spec.modality = modality.into();
        spec
    };
    let study = spec(1, 1, "CT").study;
    give_study_its_key(&index, SERVICE, &spec(1, 1, "CT")).await;
    // Stores queued together: one group on SQLite.
    let specs = [
        spec(1, 1, "CT"),
        spec(1, 2, "CT"),
        spec(2, 1, "MR"),
        spec(3, 1, "CT"),
        spec(4, 1, "PT"),
    ];
    let stores = specs.iter().enumerate().map(|(at, spec)| {
        let index = index.clone();
        async move { store_under_existing_key(&index, SERVICE, spec, &format!("g{at}")).await }
    });
    for outcome in futures::future::join_all(stores).await {
        assert_eq!(outcome, StoreOutcome::Stored);
    }
    assert_eq!(
        summary(&index, &study).await,
        Some((4, 5, vec!["CT".into(), "MR".into(), "PT".into()]))
    );
    assert!(
        study_row_knows_modalities(&index, &study).await,
        "a new study's row keeps its modalities"
    );

    // An upsert of an instance changes no count; one more instance in a known series does.
    let outcome = store_with_mode(
        &index,
        SERVICE,
        &spec(1, 1, "CT"),
        "upsert",
        StoreMode::Replace,
    )
    .await;
    assert!(
        matches!(outcome, StoreOutcome::Replaced { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        store(&index, &spec(2, 2, "MR"), "more").await,
        StoreOutcome::Stored
    );
    assert_eq!(
        summary(&index, &study).await,
        Some((4, 6, vec!["CT".into(), "MR".into(), "PT".into()]))
    );
    assert!(study_row_knows_modalities(&index, &study).await);

    // Series 4 turns out to be US: PT is gone from the study, which appending cannot say.
    assert_eq!(
        store(&index, &spec(4, 2, "US"), "us").await,
        StoreOutcome::Stored
    );
    assert_eq!(
        summary(&index, &study).await,
        Some((4, 7, vec!["CT".into(), "MR".into(), "US".into()]))
    );

    // Deletes: an instance, then a whole series (MR goes with it), then the study.
    let gone = spec(3, 1, "CT");
    index
        .delete(
            SERVICE,
            DeleteScope::Instance(&gone.study, &gone.series, &gone.sop),
        )
        .await
        .expect("delete instance");
    assert_eq!(
        summary(&index, &study).await,
        Some((3, 6, vec!["CT".into(), "MR".into(), "US".into()]))
    );
    let mr = spec(2, 1, "MR");
    index
        .delete(SERVICE, DeleteScope::Series(&mr.study, &mr.series))
        .await
        .expect("delete series");
    assert_eq!(
        summary(&index, &study).await,
        Some((2, 4, vec!["CT".into(), "US".into()]))
    );
    assert!(
        !study_row_knows_modalities(&index, &study).await,
        "a deleted series may have taken a modality along"
    );
    // The filler gives the study its modalities again, from its series.
    assert!(
        index
            .fill_study_modalities(0)
            .await
            .expect("fill")
            .is_some()
    );
    assert!(study_row_knows_modalities(&index, &study).await);
    assert_eq!(
        summary(&index, &study).await,
        Some((2, 4, vec!["CT".into(), "US".into()]))
    );
    assert_eq!(
        index.fill_study_modalities(0).await.expect("fill again"),
        None
    );
    // A new series after that is counted and its modality found, the row's or the series'.
    assert_eq!(
        store(&index, &spec(5, 1, "SR"), "sr").await,
        StoreOutcome::Stored
    );
    assert_eq!(
        summary(&index, &study).await,
        Some((3, 5, vec!["CT".into(), "SR".into(), "US".into()]))
    );
    // SQLite's stored counts are the rows' own (PostgreSQL counts when it searches).
    if index.database().backend() == hds_db::Backend::Sqlite {
        let token = index.study_token(SERVICE, &study).expect("token");
        let row = sqlx::query(
            "SELECT st.series_count, st.instance_count, \
             (SELECT COUNT(*) FROM dicom_series se WHERE se.study_id = st.id), \
             (SELECT COUNT(*) FROM dicom_instances i WHERE i.study_id = st.id) \
             FROM dicom_studies st WHERE st.service = $1 AND st.uid_token = $2",
        )
        .bind(SERVICE)
        .bind(token.as_slice())
        .fetch_one(index.database().pool())
        .await
        .expect("counts");
        assert_eq!(row.get::<i64, _>(0), row.get::<i64, _>(2));
        assert_eq!(row.get::<i64, _>(1), row.get::<i64, _>(3));
    }
    index
        .delete(SERVICE, DeleteScope::Study(&study))
        .await
        .expect("delete study");
    assert_eq!(summary(&index, &study).await, None);
    assert_eq!(row_count(&index, "dicom_studies").await, 0);
}

/// A study whose series bring more distinct modalities than its row keeps (a hostile store can
/// make up any number of values): the row's column gives up (NULL, also after the filler) and
/// the search reads the series, so every modality is still reported.
async fn more_modalities_than_a_study_row_keeps_are_read_from_the_series(index: Index) {
    const SERIES: usize = 120;
    let first = Spec::new(710, 1, 1);
    give_study_its_key(&index, SERVICE, &first).await;
    let mut expected = Vec::new();
    for series in 1..=SERIES {
        let mut spec = Spec::new(710, series, 1);
        spec.modality = format!("M{series:03}");
        expected.push(spec.modality.clone());
        assert_eq!(
            store_under_existing_key(&index, SERVICE, &spec, &format!("m{series}")).await,
            StoreOutcome::Stored
        );
    }
    assert!(
        !study_row_knows_modalities(&index, &first.study).await,
        "past its limit the row keeps no modalities"
    );
    index.fill_study_modalities(0).await.expect("fill");
    assert!(
        !study_row_knows_modalities(&index, &first.study).await,
        "nor does the filler give it more than the limit"
    );
    let mut search = query(QueryLevel::Study, Vec::new());
    search.study_instance_uid = Some(&first.study);
    let hits = index.search(&search).await.expect("search");
    let mut modalities = hits[0].modalities_in_study.clone();
    modalities.sort();
    assert_eq!(modalities, expected);
    assert_eq!(hits[0].number_of_related_series, Some(SERIES as u64));
}

/// Many stores into the new series of one study at once, their modalities differing, round
/// after round: each creates or joins a series and adds to the study's ModalitiesInStudy, so on
/// PostgreSQL their transactions lock the same study row and insert the same series keys. All
/// of them store, and none waits on another in a cycle (which PostgreSQL would break by failing
/// one of them).
async fn concurrent_new_series_of_one_study_all_store(index: Index) {
    const SERIES: usize = 4;
    const INSTANCES_PER_SERIES: usize = 3;
    const MODALITIES: [&str; SERIES] = ["CT", "MR", "PT", "US"];
    for round in 0..8 {
        let study = 900 + round;
        give_study_its_key(&index, SERVICE, &Spec::new(study, 1, 1)).await;
        let mut tasks = Vec::new();
        for sop in 1..=INSTANCES_PER_SERIES {
            for series in 1..=SERIES {
                let index = index.clone();
                let mut spec = Spec::new(study, series, sop);
                spec.modality = MODALITIES[series - 1].into();
                tasks.push(tokio::spawn(async move {
                    let blob = format!("race-{study}-{series}-{sop}");
                    store_under_existing_key(&index, SERVICE, &spec, &blob).await
                }));
            }
        }
        for task in tasks {
            assert_eq!(task.await.expect("task"), StoreOutcome::Stored);
        }
        let records = index
            .find_instances(SERVICE, DeleteScope::Study(&Spec::new(study, 1, 1).study))
            .await
            .expect("find");
        assert_eq!(records.len(), SERIES * INSTANCES_PER_SERIES);
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite_plaintext {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() {
                    let (_dir, index) = super::sqlite_index(false).await;
                    super::$name(index).await;
                }
            )*
        }
        mod sqlite_keyed {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() {
                    let (_dir, index) = super::sqlite_index(true).await;
                    super::$name(index).await;
                }
            )*
        }
        mod postgres_plaintext {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() {
                    super::$name(super::postgres_index(false).await).await;
                }
            )*
        }
        mod postgres_keyed {
            $(
                #[tokio::test(flavor = "current_thread")]
                async fn $name() {
                    super::$name(super::postgres_index(true).await).await;
                }
            )*
        }
    };
}

suite!(
    store_then_find_and_metadata,
    duplicates_are_reported_not_stored,
    concurrent_duplicates_store_exactly_once,
    later_stores_replace_study_and_series_values,
    concurrent_stores_across_studies_each_land_once,
    concurrent_stores_index_their_instance_level_tags,
    concurrent_stores_with_changing_values_leave_consistent_rows,
    exact_and_fuzzy_name_search,
    date_ranges_match_brute_force,
    limit_and_offset_page_exactly,
    counts_levels_and_parent_filters,
    study_summary_follows_every_change,
    concurrent_new_series_of_one_study_all_store,
    more_modalities_than_a_study_row_keeps_are_read_from_the_series,
    delete_cascades_to_empty_parents,
    moved_sealed_values_do_not_open,
    searches_are_driven_by_their_tokens,
    change_feed_follows_creates_replacements_and_deletes,
    change_feed_entries_commit_with_their_change,
    extended_tags_follow_azures_registry_rules,
    extended_tags_index_stores_and_reindex_existing_instances,
    reindex_continues_from_its_cursor_under_another_owner,
    reindex_ends_at_the_last_instance_fixed_after_its_grace,
    workitems_are_stored_found_and_replaced_conditionally,
    partitions_isolate_the_same_uids,
    partitions_are_bounded,
);

/// The contents of every file in `directory`, once the index's pool is closed. SQLite's last
/// connection may still be removing its write-ahead log and shared-memory files when the pool's
/// close returns (on its own thread); a file gone before it is read holds nothing at rest.
fn bytes_at_rest(directory: &std::path::Path) -> Vec<u8> {
    let mut at_rest = Vec::new();
    for entry in std::fs::read_dir(directory).expect("dir") {
        match std::fs::read(entry.expect("entry").path()) {
            Ok(contents) => at_rest.extend(contents),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => panic!("read: {error}"),
        }
    }
    at_rest
}

/// With the keyed cipher, no value of an instance appears in the database files.
#[tokio::test(flavor = "current_thread")]
async fn keyed_index_keeps_no_marker_at_rest() {
    let (dir, index) = sqlite_index(true).await;
    let mut spec = Spec::new(600, 1, 1);
    spec.patient_name = "Zyxmarker^Qwvmarker".into();
    spec.patient_id = "PIDMARKER77".into();
    spec.study_date = 1987_0605;
    store(&index, &spec, "blob").await;
    // Searching works on tokens alone.
    let found = study_uids(
        &index,
        vec![filter(
            &PATIENT_NAME,
            Matcher::FuzzyName(vec!["zyx".into()]),
        )],
    )
    .await;
    assert_eq!(found, [spec.study.as_str()]);
    index.database().close().await;
    let at_rest = bytes_at_rest(dir.path());
    assert!(!at_rest.is_empty());
    for marker in [
        "Zyxmarker",
        "zyxmarker",
        "zyx",
        "PIDMARKER77",
        "19870605",
        "1.2.826.0.1.3680043.10.1.600",
    ] {
        assert!(
            !at_rest
                .windows(marker.len())
                .any(|window| window == marker.as_bytes()),
            "{marker} found at rest"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The key hierarchy: keyrings, study keys, sealed blobs, rewrapping, rotation, crypto-shredding.
// ---------------------------------------------------------------------------------------------

mod keys {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use bytes::Bytes;
    use futures::TryStreamExt;
    use hds_blob::{BlobError, BlobName, BlobStore};
    use hds_crypto::keys::{
        BlobKey, KekError, KekFuture, KeyEncryptionKey, LocalRsaKek, WrappedKey,
    };
    use hds_db::testing::PostgresCluster;
    use hds_db::{Backend, Database};
    use hds_index::{
        CommitGate, DeleteScope, Index, IndexError, KeyringError, NewInstance, SealedInstance,
        ServiceKeyring, ServiceKeyrings, StoreOutcome,
    };
    use sqlx::Row;
    use zeroize::Zeroizing;

    use super::{SERVICE, Spec, test_kek};

    /// A key-encryption key that counts its vault calls and can be made unreachable.
    struct CountingKek {
        inner: LocalRsaKek,
        wraps: AtomicUsize,
        unwraps: AtomicUsize,
        unreachable: AtomicBool,
    }

    impl CountingKek {
        fn new(key_id: &str) -> Arc<CountingKek> {
            Arc::new(CountingKek {
                inner: test_kek(key_id),
                wraps: AtomicUsize::new(0),
                unwraps: AtomicUsize::new(0),
                unreachable: AtomicBool::new(false),
            })
        }

        fn calls(&self) -> (usize, usize) {
            (
                self.wraps.load(Ordering::SeqCst),
                self.unwraps.load(Ordering::SeqCst),
            )
        }
    }

    impl KeyEncryptionKey for CountingKek {
        fn key_id(&self) -> &str {
            self.inner.key_id()
        }

        fn wrap_key<'a>(&'a self, plaintext_key: &'a [u8]) -> KekFuture<'a, WrappedKey> {
            self.wraps.fetch_add(1, Ordering::SeqCst);
            if self.unreachable.load(Ordering::SeqCst) {
                return Box::pin(async { Err(KekError::Unavailable("test".into())) });
            }
            self.inner.wrap_key(plaintext_key)
        }

        fn unwrap_key<'a>(&'a self, wrapped: &'a WrappedKey) -> KekFuture<'a, Zeroizing<Vec<u8>>> {
            self.unwraps.fetch_add(1, Ordering::SeqCst);
            if self.unreachable.load(Ordering::SeqCst) {
                return Box::pin(async { Err(KekError::Unavailable("test".into())) });
            }
            self.inner.unwrap_key(wrapped)
        }
    }

    /// A fresh database of either backend, and what keeps it alive.
    async fn fresh_database(backend: Backend) -> (Option<tempfile::TempDir>, Database) {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite:{}", dir.path().join("index.db").display());
                (Some(dir), Database::connect(&url).await.expect("sqlite"))
            }
            _ => {
                let cluster = PostgresCluster::shared().expect("test cluster");
                let url = cluster.fresh_database().await.expect("database");
                (None, Database::connect(&url).await.expect("postgres"))
            }
        }
    }

    /// The index (keyed by `keyrings`) and the keyring of [`SERVICE`] under `kek`.
    async fn keyed(
        database: &Database,
        kek: Arc<CountingKek>,
    ) -> (Index, ServiceKeyrings, Arc<ServiceKeyring>) {
        let keyrings = ServiceKeyrings::default();
        let index = Index::open(database.clone(), Arc::new(keyrings.clone()))
            .await
            .expect("index");
        let keyring = keyrings
            .open_or_create(database, SERVICE, kek)
            .await
            .expect("keyring");
        (index, keyrings, keyring)
    }

    /// Stores `spec` as a real instance: a sealed blob under a fresh blob key, wrapped under
    /// the study's key.
    async fn store_sealed(
        index: &Index,
        keyring: &ServiceKeyring,
        blobs: &BlobStore,
        spec: &Spec,
        contents: &[u8],
    ) -> BlobName {
        let lease = keyring.study_key(&spec.study).await.expect("study key");
        let (outcome, name) = store_with_lease(index, blobs, SERVICE, spec, &lease, contents).await;
        assert_eq!(outcome, StoreOutcome::Stored);
        name
    }

    /// Stores `spec` in `scope` as a real instance: a sealed blob under a fresh blob key that
    /// `lease` wraps. Returns the outcome and the blob's name as the index records it.
    async fn store_with_lease(
        index: &Index,
        blobs: &BlobStore,
        scope: &str,
        spec: &Spec,
        lease: &hds_index::StudyKeyLease,
        contents: &[u8],
    ) -> (StoreOutcome, BlobName) {
        let blob_key = BlobKey::generate();
        let mut writer = blobs
            .create_sealed(&BlobName::random(), scope, &blob_key)
            .await
            .expect("create");
        writer.write(contents).await.expect("write");
        let name = writer.finish().await.expect("finish");
        let keys = lease.seal_blob_key(&spec.binding(name.as_str()), &blob_key);
        let outcome = index
            .store_instance(NewInstance {
                service: scope,
                parsed: &spec.parsed(),
                blob_name: name.as_str(),
                size: contents.len() as u64,
                keys: &keys,
                mode: hds_index::StoreMode::Create,
            })
            .await
            .expect("store");
        (outcome, name)
    }

    /// Reads back an instance's blob through the index and the keyring.
    async fn read_back(
        index: &Index,
        keyring: &ServiceKeyring,
        blobs: &BlobStore,
        spec: &Spec,
    ) -> Result<Vec<u8>, String> {
        let records = index
            .find_instances(
                SERVICE,
                DeleteScope::Instance(&spec.study, &spec.series, &spec.sop),
            )
            .await
            .map_err(|error| error.to_string())?;
        let record = records.first().ok_or("no instance")?;
        let stored = record.blob_key.as_ref().ok_or("no blob key")?;
        let key = keyring
            .open_blob_key(stored, &record.binding())
            .map_err(|error| error.to_string())?;
        let name = BlobName::parse(&record.blob_name).map_err(|error| error.to_string())?;
        let chunks: Vec<Bytes> = blobs
            .read_sealed(&name, SERVICE, &key)
            .await
            .map_err(|error| error.to_string())?
            .try_collect()
            .await
            .map_err(|error: BlobError| error.to_string())?;
        Ok(chunks.concat())
    }

    /// A gate the test opens (or fails) by hand.
    fn manual_gate() -> (CommitGate, tokio::sync::oneshot::Sender<Result<(), String>>) {
        let (open, opened) = tokio::sync::oneshot::channel();
        let gate = CommitGate::new(async move {
            opened
                .await
                .map_err(|_| "the gate's sender was dropped".to_string())?
        });
        (gate, open)
    }

    async fn instance_count(index: &Index) -> i64 {
        sqlx::query("SELECT COUNT(*) FROM dicom_instances")
            .fetch_one(index.database().pool())
            .await
            .expect("count")
            .get(0)
    }

    async fn an_instance_commits_only_after_its_gate_and_never_when_it_fails(backend: Backend) {
        let (_dir, database) = fresh_database(backend).await;
        let (index, _keyrings, keyring) = keyed(&database, CountingKek::new("kek-1")).await;
        let blob_key = BlobKey::generate();

        // The gate stays closed for a while: the store must not commit meanwhile.
        let spec = Spec::new(1, 1, 1);
        let parsed = spec.parsed();
        let (gate, open) = manual_gate();
        let store = index.store_sealed_instance(
            &keyring,
            SealedInstance {
                parsed: &parsed,
                blob_name: "0123456789abcdef0123456789abcdef",
                blob_key: &blob_key,
                size: 10,
                durable: gate,
                mode: hds_index::StoreMode::Create,
            },
        );
        let watch_then_open = async {
            for _ in 0..20 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                assert_eq!(instance_count(&index).await, 0, "committed before its gate");
            }
            open.send(Ok(())).expect("the store waits on its gate");
        };
        let (stored, ()) = tokio::join!(store, watch_then_open);
        assert_eq!(stored.expect("store"), StoreOutcome::Stored);
        assert_eq!(instance_count(&index).await, 1);

        // A failing gate (the blob's sync failed): refused, nothing recorded.
        let spec = Spec::new(1, 1, 2);
        let parsed = spec.parsed();
        let (gate, open) = manual_gate();
        open.send(Err("the disk said EIO".into())).expect("send");
        let refused = index
            .store_sealed_instance(
                &keyring,
                SealedInstance {
                    parsed: &parsed,
                    blob_name: "1123456789abcdef0123456789abcdef",
                    blob_key: &blob_key,
                    size: 10,
                    durable: gate,
                    mode: hds_index::StoreMode::Create,
                },
            )
            .await;
        assert!(
            matches!(&refused, Err(IndexError::NotDurable(reason)) if reason.contains("EIO")),
            "{refused:?}"
        );
        assert_eq!(instance_count(&index).await, 1);
    }

    fn contents(seed: u8, length: usize) -> Vec<u8> {
        (0..length)
            .map(|position| (position as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    async fn keyring_is_created_once_and_reopened_with_one_unwrap(backend: Backend) {
        let (_dir, database) = fresh_database(backend).await;
        let kek = CountingKek::new("kek-1");
        let (index, _keyrings, keyring) = keyed(&database, kek.clone()).await;
        assert_eq!(kek.calls(), (1, 0), "creating wraps the root key once");
        let token = keyring.study_token("1.2.3").expect("token");
        assert_eq!(token, index.study_token(SERVICE, "1.2.3").expect("token"));
        assert_ne!(token, b"1.2.3".to_vec());

        // Another node (or a restart) unwraps the stored root key: one vault call.
        let reopened = ServiceKeyring::open_or_create(&database, SERVICE, kek.clone())
            .await
            .expect("reopen");
        assert_eq!(kek.calls(), (1, 1));
        assert_eq!(reopened.study_token("1.2.3").expect("token"), token);

        // Lost access: forgetting drops the keys; the index refuses; unlocking needs the vault.
        keyring.forget();
        assert!(!keyring.is_unlocked());
        assert!(matches!(
            keyring.study_token("1.2.3"),
            Err(KeyringError::KeysUnavailable)
        ));
        assert!(matches!(
            index.study_token(SERVICE, "1.2.3"),
            Err(IndexError::KeysUnavailable)
        ));
        kek.unreachable.store(true, Ordering::SeqCst);
        let error = keyring.unlock().await.expect_err("vault unreachable");
        assert!(error.is_key_access_lost());
        kek.unreachable.store(false, Ordering::SeqCst);
        keyring.unlock().await.expect("unlock");
        assert_eq!(kek.calls(), (1, 3));
        assert_eq!(keyring.study_token("1.2.3").expect("token"), token);

        // Another key cannot unwrap the service's root key.
        let error = ServiceKeyring::open_or_create(&database, SERVICE, CountingKek::new("other"))
            .await
            .expect_err("wrong key");
        assert!(error.is_key_access_lost());
    }

    async fn concurrent_study_key_creation_ends_with_one_key(backend: Backend) {
        let (_dir, database) = fresh_database(backend).await;
        let kek = CountingKek::new("kek-1");
        let (_index, _keyrings, first) = keyed(&database, kek.clone()).await;
        // A second node's keyring of the same service.
        let second = ServiceKeyring::open_or_create(&database, SERVICE, kek.clone())
            .await
            .expect("second node");
        let mut tasks = Vec::new();
        for task in 0..16 {
            let keyring = if task % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tasks.push(tokio::spawn(async move {
                let lease = keyring.study_key("1.2.840.99.1").await.expect("study key");
                lease
                    .seal_blob_key(&Spec::new(0, 0, 0).binding("blob"), &BlobKey::generate())
                    .wrapped_study_key
            }));
        }
        let mut wrapped_keys = Vec::new();
        for task in tasks {
            wrapped_keys.push(task.await.expect("task"));
        }
        assert!(
            wrapped_keys.windows(2).all(|pair| pair[0] == pair[1]),
            "every store must get the same study key"
        );
        let rows: i64 = sqlx::query("SELECT COUNT(*) FROM dicom_study_keys")
            .fetch_one(database.pool())
            .await
            .expect("count")
            .get(0);
        assert_eq!(rows, 1);
    }

    /// Study keys made at store time: of two stores of a new study that each made a key (as
    /// two nodes would; one keyring hands the stores of a study the same new key, so here it
    /// forgets the first in between), the first commits its key with its instance, the second
    /// is told the key changed and, asking again, gets the stored key; both instances then
    /// open.
    async fn a_study_key_made_for_a_store_is_stored_with_the_first_instance(backend: Backend) {
        let (_dir, database) = fresh_database(backend).await;
        let blob_dir = tempfile::tempdir().expect("blob dir");
        let blobs = BlobStore::local(blob_dir.path()).expect("blobs");
        let (index, _keyrings, keyring) = keyed(&database, CountingKek::new("kek-1")).await;
        let first = Spec::new(1, 1, 1);
        let second = Spec::new(1, 1, 2);
        let first_lease = keyring
            .study_key_for_store(&first.study)
            .await
            .expect("first lease");
        keyring.forget_study_key(&first.study);
        let second_lease = keyring
            .study_key_for_store(&second.study)
            .await
            .expect("second lease");
        let study_keys = || async {
            let count: i64 = sqlx::query("SELECT COUNT(*) FROM dicom_study_keys")
                .fetch_one(database.pool())
                .await
                .expect("count")
                .get(0);
            count
        };
        assert_eq!(study_keys().await, 0, "a lease alone stores nothing");

        /// Stores `spec` as a sealed blob whose key `lease` wraps.
        async fn store(
            index: &Index,
            blobs: &BlobStore,
            spec: &Spec,
            lease: &hds_index::StudyKeyLease,
            contents: Vec<u8>,
        ) -> StoreOutcome {
            store_with_lease(index, blobs, SERVICE, spec, lease, &contents)
                .await
                .0
        }
        assert_eq!(
            store(&index, &blobs, &first, &first_lease, contents(1, 70_000)).await,
            StoreOutcome::Stored
        );
        assert_eq!(study_keys().await, 1);
        assert_eq!(
            store(&index, &blobs, &second, &second_lease, contents(2, 70_000)).await,
            StoreOutcome::StudyKeyChanged,
            "the second lease's key lost the race"
        );
        // As STOW does on StudyKeyChanged: forget the key, ask again.
        keyring.forget_study_key(&second.study);
        let again = keyring
            .study_key_for_store(&second.study)
            .await
            .expect("lease again");
        assert_eq!(
            store(&index, &blobs, &second, &again, contents(2, 70_000)).await,
            StoreOutcome::Stored
        );
        assert_eq!(study_keys().await, 1);
        assert_eq!(
            read_back(&index, &keyring, &blobs, &first).await.as_deref(),
            Ok(contents(1, 70_000).as_slice())
        );
        assert_eq!(
            read_back(&index, &keyring, &blobs, &second)
                .await
                .as_deref(),
            Ok(contents(2, 70_000).as_slice())
        );
        // A key made before a root key rotation is not stored under the new root key.
        let third = Spec::new(3, 1, 1);
        let stale = keyring
            .study_key_for_store(&third.study)
            .await
            .expect("lease");
        keyring.rotate_root_key().await.expect("rotate");
        assert_eq!(
            store(&index, &blobs, &third, &stale, contents(3, 1_000)).await,
            StoreOutcome::StudyKeyChanged
        );
        assert_eq!(study_keys().await, 1);
    }

    async fn sealed_instances_round_trip_and_resist_swapping(backend: Backend) {
        let (_dir, database) = fresh_database(backend).await;
        let blob_dir = tempfile::tempdir().expect("blob dir");
        let blobs = BlobStore::local(blob_dir.path()).expect("blobs");
        let (index, _keyrings, keyring) = keyed(&database, CountingKek::new("kek-1")).await;
        let first = Spec::new(1, 1, 1);
        let second = Spec::new(2, 1, 1);
        let first_contents = contents(1, 200_000);
        let second_contents = contents(2, 200_000);
        let first_name = store_sealed(&index, &keyring, &blobs, &first, &first_contents).await;
        let second_name = store_sealed(&index, &keyring, &blobs, &second, &second_contents).await;
        assert_eq!(
            read_back(&index, &keyring, &blobs, &first).await.as_deref(),
            Ok(first_contents.as_slice())
        );
        // Swapping the blob names of two rows: the blob keys are bound to their names.
        sqlx::query(
            "UPDATE dicom_instances SET blob_name = CASE WHEN blob_name = $1 THEN $2 ELSE $1 END",
        )
        .bind(first_name.as_str())
        .bind(second_name.as_str())
        .execute(database.pool())
        .await
        .expect("swap");
        let swapped = read_back(&index, &keyring, &blobs, &first).await;
        assert!(swapped.is_err(), "a swapped blob must not open");
    }

    /// Swaps the values of `columns` between the instance rows named by the SOP specs.
    async fn swap_instance_columns(
        database: &Database,
        first: &Spec,
        second: &Spec,
        columns: &str,
    ) {
        let ids: Vec<i64> = sqlx::query("SELECT id FROM dicom_instances ORDER BY id")
            .fetch_all(database.pool())
            .await
            .expect("ids")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(ids.len(), 2, "{} and {}", first.sop, second.sop);
        // Row-at-a-time engines (SQLite) see their own earlier updates within one statement:
        // copy the values aside first, in one transaction (temporary tables are per connection).
        let mut transaction = database.pool().begin().await.expect("begin");
        for column in columns.split(',') {
            for statement in [
                format!(
                    "CREATE TEMPORARY TABLE swapped AS SELECT id, {column} AS value \
                     FROM dicom_instances WHERE id IN ({}, {})",
                    ids[0], ids[1]
                ),
                format!(
                    "UPDATE dicom_instances SET {column} = (SELECT value FROM swapped \
                     WHERE swapped.id = CASE dicom_instances.id WHEN {0} THEN {1} ELSE {0} END) \
                     WHERE id IN ({0}, {1})",
                    ids[0], ids[1]
                ),
                "DROP TABLE swapped".to_owned(),
            ] {
                sqlx::query(&statement)
                    .execute(&mut *transaction)
                    .await
                    .expect("swap");
            }
        }
        transaction.commit().await.expect("commit");
    }

    async fn rows_swapped_within_a_series_are_refused(backend: Backend) {
        let (_dir, database) = fresh_database(backend).await;
        let blob_dir = tempfile::tempdir().expect("blob dir");
        let blobs = BlobStore::local(blob_dir.path()).expect("blobs");
        let (index, _keyrings, keyring) = keyed(&database, CountingKek::new("kek-1")).await;
        // Two instances of one series: one study key wraps both blob keys.
        let first = Spec::new(1, 1, 1);
        let second = Spec::new(1, 1, 2);
        let first_contents = contents(1, 50_000);
        let second_contents = contents(2, 50_000);
        let _ = store_sealed(&index, &keyring, &blobs, &first, &first_contents).await;
        let _ = store_sealed(&index, &keyring, &blobs, &second, &second_contents).await;
        assert_eq!(
            read_back(&index, &keyring, &blobs, &second)
                .await
                .as_deref(),
            Ok(second_contents.as_slice())
        );
        // The whole blob reference (name and wrapped key) moved from one row to the other:
        // each key is bound to its instance's UIDs, so neither row serves the other's bytes.
        swap_instance_columns(&database, &first, &second, "blob_name,blob_key").await;
        for spec in [&first, &second] {
            let read = read_back(&index, &keyring, &blobs, spec).await;
            assert!(read.is_err(), "{} served a swapped blob", spec.sop);
        }
        // Swapped back, both open again: the refusal came from the binding, not damage.
        swap_instance_columns(&database, &first, &second, "blob_name,blob_key").await;
        assert_eq!(
            read_back(&index, &keyring, &blobs, &first).await.as_deref(),
            Ok(first_contents.as_slice())
        );
    }

    async fn a_row_moved_to_another_series_is_refused(backend: Backend) {
        let (_dir, database) = fresh_database(backend).await;
        let blob_dir = tempfile::tempdir().expect("blob dir");
        let blobs = BlobStore::local(blob_dir.path()).expect("blobs");
        let (index, _keyrings, keyring) = keyed(&database, CountingKek::new("kek-1")).await;
        let first = Spec::new(1, 1, 1);
        let second = Spec::new(1, 2, 1);
        let _ = store_sealed(&index, &keyring, &blobs, &first, b"first").await;
        let _ = store_sealed(&index, &keyring, &blobs, &second, b"second").await;
        // File the second instance under the first one's series.
        swap_instance_columns(&database, &first, &second, "series_id").await;
        let moved = index
            .find_instances(SERVICE, DeleteScope::Series(&first.study, &first.series))
            .await;
        assert!(
            matches!(moved, Err(IndexError::Corrupt(_))),
            "a row filed under another series was returned: {moved:?}"
        );
    }

    async fn rewrap_costs_the_same_whatever_the_instance_count(backend: Backend) {
        let mut costs = Vec::new();
        for instance_count in [10usize, 10_000] {
            let (_dir, database) = fresh_database(backend).await;
            let blob_dir = tempfile::tempdir().expect("blob dir");
            let blobs = BlobStore::local(blob_dir.path()).expect("blobs");
            let kek = CountingKek::new("kek-1");
            let (index, _keyrings, keyring) = keyed(&database, kek.clone()).await;
            // Ten real instances (sealed blobs) in ten studies...
            let mut specs = Vec::new();
            for study in 0..10 {
                let spec = Spec::new(study, 1, 1);
                let _ = store_sealed(
                    &index,
                    &keyring,
                    &blobs,
                    &spec,
                    &contents(study as u8, 70_000),
                )
                .await;
                specs.push(spec);
            }
            // ...and the rest as index rows written directly (the rewrap never reads them).
            insert_bulk_instances(&database, instance_count - 10).await;
            let instances: i64 = sqlx::query("SELECT COUNT(*) FROM dicom_instances")
                .fetch_one(database.pool())
                .await
                .expect("count")
                .get(0);
            assert_eq!(instances as usize, instance_count);
            let blobs_before = snapshot(blob_dir.path());
            count_writes(&database).await;

            let calls_before = kek.calls();
            let new_kek = CountingKek::new("kek-2");
            keyring.rewrap(new_kek.clone()).await.expect("rewrap");
            let old_calls = kek.calls();
            let cost = (
                old_calls.0 - calls_before.0,
                old_calls.1 - calls_before.1,
                new_kek.calls(),
                writes(&database).await,
                snapshot(blob_dir.path()) != blobs_before,
            );
            // One unwrap with the old key, one wrap with the new, one row, no blob.
            assert_eq!(cost, (0, 1, (1, 0), 1, false));
            costs.push(cost);
            // The data opens through the re-wrapped root key, also after a restart.
            let reopened = ServiceKeyring::open_or_create(&database, SERVICE, new_kek.clone())
                .await
                .expect("reopen under the new key");
            assert_eq!(new_kek.calls(), (1, 1));
            assert!(
                ServiceKeyring::open_or_create(&database, SERVICE, kek.clone())
                    .await
                    .is_err(),
                "the old key no longer opens the service"
            );
            for (study, spec) in specs.iter().enumerate() {
                assert_eq!(
                    read_back(&index, &reopened, &blobs, spec).await,
                    Ok(contents(study as u8, 70_000))
                );
            }
        }
        assert_eq!(costs[0], costs[1]);
    }

    async fn root_key_rotation_rewraps_study_keys_only(backend: Backend) {
        let (_dir, database) = fresh_database(backend).await;
        let blob_dir = tempfile::tempdir().expect("blob dir");
        let blobs = BlobStore::local(blob_dir.path()).expect("blobs");
        let kek = CountingKek::new("kek-1");
        let (index, _keyrings, keyring) = keyed(&database, kek.clone()).await;
        let mut specs = Vec::new();
        for study in 0..5 {
            let spec = Spec::new(study, 1, 1);
            let _ = store_sealed(
                &index,
                &keyring,
                &blobs,
                &spec,
                &contents(study as u8, 1000),
            )
            .await;
            specs.push(spec);
        }
        let blobs_before = snapshot(blob_dir.path());
        let token_before = keyring.study_token("1.2.3").expect("token");
        count_writes(&database).await;
        let calls_before = kek.calls();
        let rewrapped = keyring.rotate_root_key().await.expect("rotate");
        assert_eq!(rewrapped, 5);
        let calls = kek.calls();
        assert_eq!((calls.0 - calls_before.0, calls.1 - calls_before.1), (1, 0));
        // Five study keys and the root-key row; no instance, token or blob.
        assert_eq!(writes(&database).await, 6);
        assert_eq!(snapshot(blob_dir.path()), blobs_before);
        assert_eq!(keyring.study_token("1.2.3").expect("token"), token_before);
        for (study, spec) in specs.iter().enumerate() {
            assert_eq!(
                read_back(&index, &keyring, &blobs, spec).await,
                Ok(contents(study as u8, 1000))
            );
        }
        // Searches still match: tokens did not change.
        assert_eq!(super::study_uids(&index, Vec::new()).await.len(), 5);
    }

    async fn deleting_a_study_shreds_its_key(backend: Backend) {
        let (_dir, database) = fresh_database(backend).await;
        let blob_dir = tempfile::tempdir().expect("blob dir");
        let blobs = BlobStore::local(blob_dir.path()).expect("blobs");
        let (index, _keyrings, keyring) = keyed(&database, CountingKek::new("kek-1")).await;
        let spec = Spec::new(7, 1, 1);
        let original = contents(7, 150_000);
        let name = store_sealed(&index, &keyring, &blobs, &spec, &original).await;
        // What an attacker keeps: a copy of the blob, and a database backup of the row.
        let copied: Vec<Bytes> = blobs
            .read(&name)
            .await
            .expect("raw blob")
            .try_collect()
            .await
            .expect("raw bytes");
        let copied = copied.concat();
        let backup = index
            .find_instances(SERVICE, DeleteScope::Study(&spec.study))
            .await
            .expect("find")
            .remove(0)
            .blob_key
            .expect("blob key");
        let study_token = keyring.study_token(&spec.study).expect("token");

        let deleted = index
            .delete(SERVICE, DeleteScope::Study(&spec.study))
            .await
            .expect("delete");
        assert_eq!(deleted, [name.as_str().to_owned()]);
        blobs.delete(&name).await.expect("delete blob");
        let study_keys: i64 = sqlx::query(
            "SELECT COUNT(*) FROM dicom_study_keys WHERE service = $1 AND study_token = $2",
        )
        .bind(SERVICE)
        .bind(study_token.as_slice())
        .fetch_one(database.pool())
        .await
        .expect("count")
        .get(0);
        assert_eq!(study_keys, 0, "the study key is destroyed with the study");

        // The copy put back: nothing in the live database opens it. A new study of the same
        // UID gets a new key, under which the old blob key does not unwrap.
        // As `hds restore` puts a blob back: a file under its identity, read by its old name.
        let as_file = BlobName::parse(name.identity()).expect("identity");
        let mut writer = blobs.create(&as_file).await.expect("restore copy");
        writer.write(&copied).await.expect("restore copy");
        writer.finish().await.expect("restore copy");
        let new_lease = keyring.study_key(&spec.study).await.expect("new key");
        assert_ne!(
            new_lease
                .seal_blob_key(&spec.binding(name.as_str()), &BlobKey::generate())
                .wrapped_study_key,
            backup.wrapped_study_key
        );
        let mut forged = backup.clone();
        forged.wrapped_study_key = new_lease
            .seal_blob_key(&spec.binding(name.as_str()), &BlobKey::generate())
            .wrapped_study_key;
        assert!(
            keyring
                .open_blob_key(&forged, &spec.binding(name.as_str()))
                .is_err()
        );
        // A backup taken before the delete still holds the wrapped study key, which the current
        // root key opens; rotating the root key closes that.
        let key = keyring
            .open_blob_key(&backup, &spec.binding(name.as_str()))
            .expect("backup opens before rotation");
        let reopened: Vec<Bytes> = blobs
            .read_sealed(&name, SERVICE, &key)
            .await
            .expect("open")
            .try_collect()
            .await
            .expect("read");
        assert_eq!(reopened.concat(), original);
        keyring.rotate_root_key().await.expect("rotate");
        assert!(matches!(
            keyring.open_blob_key(&backup, &spec.binding(name.as_str())),
            Err(KeyringError::Integrity(_))
        ));
    }

    async fn a_store_under_a_stale_study_key_is_refused(backend: Backend) {
        let (_dir, database) = fresh_database(backend).await;
        let blob_dir = tempfile::tempdir().expect("blob dir");
        let blobs = BlobStore::local(blob_dir.path()).expect("blobs");
        let (index, _keyrings, keyring) = keyed(&database, CountingKek::new("kek-1")).await;
        let attempt = |spec: Spec, lease: hds_index::StudyKeyLease| {
            let index = index.clone();
            async move {
                let keys = lease.seal_blob_key(
                    &spec.binding("0123456789abcdef0123456789abcdef"),
                    &BlobKey::generate(),
                );
                let parsed = spec.parsed();
                index
                    .store_instance(NewInstance {
                        service: SERVICE,
                        parsed: &parsed,
                        blob_name: "0123456789abcdef0123456789abcdef",
                        size: 1,
                        keys: &keys,
                        mode: hds_index::StoreMode::Create,
                    })
                    .await
                    .expect("store")
            }
        };
        // The study is deleted (its key destroyed) between getting the key and storing.
        let first = Spec::new(20, 1, 1);
        let _ = store_sealed(&index, &keyring, &blobs, &first, b"first").await;
        let stale = keyring.study_key(&first.study).await.expect("lease");
        index
            .delete(SERVICE, DeleteScope::Study(&first.study))
            .await
            .expect("delete");
        let second = Spec::new(20, 1, 2);
        assert_eq!(
            attempt(second.clone(), stale).await,
            StoreOutcome::StudyKeyChanged
        );
        let fresh = keyring.study_key(&second.study).await.expect("new lease");
        assert_eq!(attempt(second, fresh).await, StoreOutcome::Stored);
        // The root key is rotated between getting the key and storing.
        let third = Spec::new(21, 1, 1);
        let stale = keyring.study_key(&third.study).await.expect("lease");
        keyring.rotate_root_key().await.expect("rotate");
        assert_eq!(
            attempt(third.clone(), stale).await,
            StoreOutcome::StudyKeyChanged
        );
        let fresh = keyring.study_key(&third.study).await.expect("new lease");
        assert_eq!(attempt(third, fresh).await, StoreOutcome::Stored);

        // The key remembered for stores goes stale when its study is deleted: the store is
        // refused, and after `forget_study_key` the study gets a new key.
        let fourth = Spec::new(22, 1, 1);
        let new_key = keyring
            .study_key_for_store(&fourth.study)
            .await
            .expect("lease");
        assert_eq!(attempt(fourth.clone(), new_key).await, StoreOutcome::Stored);
        keyring.study_key_stored(&fourth.study);
        let remembered = keyring
            .study_key_for_store(&fourth.study)
            .await
            .expect("lease");
        assert_eq!(
            attempt(Spec::new(22, 1, 2), remembered).await,
            StoreOutcome::Stored
        );
        index
            .delete(SERVICE, DeleteScope::Study(&fourth.study))
            .await
            .expect("delete");
        let stale = keyring
            .study_key_for_store(&fourth.study)
            .await
            .expect("lease");
        assert_eq!(
            attempt(Spec::new(22, 1, 3), stale).await,
            StoreOutcome::StudyKeyChanged
        );
        keyring.forget_study_key(&fourth.study);
        let fresh = keyring
            .study_key_for_store(&fourth.study)
            .await
            .expect("lease");
        assert_eq!(
            attempt(Spec::new(22, 1, 3), fresh).await,
            StoreOutcome::Stored
        );

        // Stores of a new study that ask at the same time get the same new key, and each can
        // be the one that writes it: none is refused.
        let fifth = Spec::new(23, 1, 1);
        let (first_lease, second_lease) = tokio::join!(
            keyring.study_key_for_store(&fifth.study),
            keyring.study_key_for_store(&fifth.study)
        );
        let (first_lease, second_lease) =
            (first_lease.expect("lease"), second_lease.expect("lease"));
        let wrapped = |lease: &hds_index::StudyKeyLease| {
            lease
                .seal_blob_key(&Spec::new(0, 0, 0).binding("blob"), &BlobKey::generate())
                .wrapped_study_key
        };
        assert_eq!(wrapped(&first_lease), wrapped(&second_lease));
        assert_eq!(
            attempt(fifth.clone(), second_lease).await,
            StoreOutcome::Stored
        );
        assert_eq!(
            attempt(Spec::new(23, 1, 2), first_lease).await,
            StoreOutcome::Stored
        );
    }

    /// Rows for `count` more instances in one study and series, with random tokens and bytes.
    async fn insert_bulk_instances(database: &Database, count: usize) {
        if count == 0 {
            return;
        }
        let mut transaction = database.begin_write().await.expect("begin");
        let study_id: i64 = sqlx::query(
            "INSERT INTO dicom_studies (service, uid_token, attributes) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(SERVICE)
        .bind(b"bulk-study".as_slice())
        .bind(b"sealed".as_slice())
        .fetch_one(&mut *transaction)
        .await
        .expect("study")
        .get(0);
        let series_id: i64 = sqlx::query(
            "INSERT INTO dicom_series (study_id, uid_token, attributes) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(study_id)
        .bind(b"bulk-series".as_slice())
        .bind(b"sealed".as_slice())
        .fetch_one(&mut *transaction)
        .await
        .expect("series")
        .get(0);
        for instance in 0..count {
            sqlx::query(
                "INSERT INTO dicom_instances (service, study_id, series_id, uid_token, blob_name, \
                 size, transfer_syntax_uid, uids, attributes, metadata, blob_key) \
                 VALUES ($1, $2, $3, $4, $5, 0, '1.2.840.10008.1.2.1', $6, $6, $6, $6)",
            )
            .bind(SERVICE)
            .bind(study_id)
            .bind(series_id)
            .bind(format!("bulk-{instance}").into_bytes())
            .bind(BlobName::random().as_str().to_owned())
            .bind(b"sealed".as_slice())
            .execute(&mut *transaction)
            .await
            .expect("instance");
        }
        transaction.commit().await.expect("commit");
    }

    const COUNTED_TABLES: [&str; 9] = [
        "dicom_studies",
        "dicom_series",
        "dicom_instances",
        "dicom_study_tokens",
        "dicom_series_tokens",
        "dicom_instance_tokens",
        "dicom_service_keys",
        "dicom_study_keys",
        "dicom_platform_keks",
    ];

    /// Counts every row written (inserted, updated or deleted) from now on, with triggers.
    async fn count_writes(database: &Database) {
        let pool = database.pool();
        sqlx::query("CREATE TABLE test_write_count (n BIGINT NOT NULL)")
            .execute(pool)
            .await
            .expect("counter");
        sqlx::query("INSERT INTO test_write_count (n) VALUES (0)")
            .execute(pool)
            .await
            .expect("counter row");
        if database.backend() == Backend::Postgres {
            sqlx::query(
                "CREATE FUNCTION test_count_write() RETURNS trigger AS $$ \
                 BEGIN UPDATE test_write_count SET n = n + 1; RETURN NULL; END $$ LANGUAGE plpgsql",
            )
            .execute(pool)
            .await
            .expect("function");
        }
        for table in COUNTED_TABLES {
            match database.backend() {
                Backend::Postgres => {
                    sqlx::query(&format!(
                        "CREATE TRIGGER test_count_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} \
                         FOR EACH ROW EXECUTE FUNCTION test_count_write()"
                    ))
                    .execute(pool)
                    .await
                    .expect("trigger");
                }
                _ => {
                    for operation in ["INSERT", "UPDATE", "DELETE"] {
                        sqlx::query(&format!(
                            "CREATE TRIGGER test_count_{table}_{operation} AFTER {operation} ON {table} \
                             BEGIN UPDATE test_write_count SET n = n + 1; END"
                        ))
                        .execute(pool)
                        .await
                        .expect("trigger");
                    }
                }
            }
        }
    }

    async fn writes(database: &Database) -> i64 {
        sqlx::query("SELECT n FROM test_write_count")
            .fetch_one(database.pool())
            .await
            .expect("count")
            .get(0)
    }

    /// Every file under `directory` with its contents.
    fn snapshot(directory: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        let mut pending = vec![directory.to_path_buf()];
        while let Some(path) = pending.pop() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let contents = std::fs::read(&path).expect("read");
                    files.push((path, contents));
                }
            }
        }
        files.sort();
        files
    }

    /// Stores `spec` in the scope of `keyring` (a service's, or a partition's) as a real
    /// instance.
    async fn store_scoped(
        index: &Index,
        keyring: &ServiceKeyring,
        blobs: &BlobStore,
        spec: &Spec,
        contents: &[u8],
    ) -> StoreOutcome {
        let lease = keyring.study_key(&spec.study).await.expect("study key");
        store_with_lease(index, blobs, keyring.scope(), spec, &lease, contents)
            .await
            .0
    }

    /// Reads back an instance of `scope`, opening its keys with `keyring`.
    async fn read_scoped(
        index: &Index,
        scope: &str,
        keyring: &ServiceKeyring,
        blobs: &BlobStore,
        spec: &Spec,
    ) -> Result<Vec<u8>, String> {
        let records = index
            .find_instances(
                scope,
                DeleteScope::Instance(&spec.study, &spec.series, &spec.sop),
            )
            .await
            .map_err(|error| error.to_string())?;
        let record = records.first().ok_or("no instance")?;
        let stored = record.blob_key.as_ref().ok_or("no blob key")?;
        let key = keyring
            .open_blob_key(stored, &record.binding())
            .map_err(|error| error.to_string())?;
        let name = BlobName::parse(&record.blob_name).map_err(|error| error.to_string())?;
        let chunks: Vec<Bytes> = blobs
            .read_sealed(&name, scope, &key)
            .await
            .map_err(|error| error.to_string())?
            .try_collect()
            .await
            .map_err(|error: BlobError| error.to_string())?;
        Ok(chunks.concat())
    }

    /// The same UIDs stored in the default partition and in another: each is its own instance
    /// under its own study key, opened only through its own partition's keyring; a root key
    /// rotation re-wraps both study keys; deleting the study in the partition shreds only the
    /// partition's key.
    async fn partitions_keep_their_own_keys_inside_the_service(backend: Backend) {
        let (_dir, database) = fresh_database(backend).await;
        let blob_dir = tempfile::tempdir().expect("blob dir");
        let blobs = BlobStore::local(blob_dir.path()).expect("blobs");
        let (index, _keyrings, keyring) = keyed(&database, CountingKek::new("kek-1")).await;
        let partition = index
            .partition_or_add(SERVICE, "clinic-b")
            .await
            .expect("partition");
        assert_eq!(partition.name, "clinic-b");
        assert!(partition.key > 1);
        let in_partition = keyring.partition("clinic-b");
        let scope = in_partition.scope().to_owned();
        assert_ne!(scope, SERVICE);
        assert_eq!(
            keyring.partition(hds_index::DEFAULT_PARTITION).scope(),
            SERVICE
        );
        let spec = Spec::new(7, 1, 1);
        assert_ne!(
            keyring.study_token(&spec.study).expect("token"),
            in_partition.study_token(&spec.study).expect("token"),
            "a partition's tokens are its own"
        );
        assert_eq!(
            store_scoped(&index, &keyring, &blobs, &spec, b"default copy").await,
            StoreOutcome::Stored
        );
        assert_eq!(
            store_scoped(&index, &in_partition, &blobs, &spec, b"partition copy").await,
            StoreOutcome::Stored,
            "the same UIDs are unique per partition"
        );
        assert_eq!(
            store_scoped(&index, &in_partition, &blobs, &Spec::new(7, 1, 1), b"again").await,
            StoreOutcome::AlreadyExists
        );
        let read = |scope: String, keyring: Arc<ServiceKeyring>| {
            let index = index.clone();
            let blobs = blobs.clone();
            let spec = spec.clone();
            async move { read_scoped(&index, &scope, &keyring, &blobs, &spec).await }
        };
        assert_eq!(
            read(SERVICE.into(), keyring.clone()).await.as_deref(),
            Ok(&b"default copy"[..])
        );
        assert_eq!(
            read(scope.clone(), in_partition.clone()).await.as_deref(),
            Ok(&b"partition copy"[..])
        );
        assert!(
            read(scope.clone(), keyring.clone()).await.is_err(),
            "the service's own keys do not open a partition's blob key"
        );

        assert_eq!(keyring.rotate_root_key().await.expect("rotate"), 2);
        assert_eq!(
            read(scope.clone(), in_partition.clone()).await.as_deref(),
            Ok(&b"partition copy"[..]),
            "a rotation covers the partitions' study keys"
        );

        let names = index
            .delete(&scope, DeleteScope::Study(&spec.study))
            .await
            .expect("delete");
        assert_eq!(names.len(), 1);
        let keys_of = |service: String| {
            let database = database.clone();
            async move {
                let count: i64 =
                    sqlx::query("SELECT COUNT(*) FROM dicom_study_keys WHERE service = $1")
                        .bind(service)
                        .fetch_one(database.pool())
                        .await
                        .expect("count")
                        .get(0);
                count
            }
        };
        assert_eq!(
            keys_of(scope.clone()).await,
            0,
            "the partition's key is shredded"
        );
        assert_eq!(keys_of(SERVICE.into()).await, 1, "the default's stays");
        assert_eq!(
            read(SERVICE.into(), keyring.clone()).await.as_deref(),
            Ok(&b"default copy"[..])
        );
        assert_eq!(
            index.partition_scopes(SERVICE).await.expect("scopes"),
            vec![scope.clone()]
        );
    }

    macro_rules! key_suite {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::$name(hds_db::Backend::Sqlite).await;
                    }
                )*
            }
            mod postgres {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::$name(hds_db::Backend::Postgres).await;
                    }
                )*
            }
        };
    }

    key_suite!(
        keyring_is_created_once_and_reopened_with_one_unwrap,
        concurrent_study_key_creation_ends_with_one_key,
        a_study_key_made_for_a_store_is_stored_with_the_first_instance,
        sealed_instances_round_trip_and_resist_swapping,
        rows_swapped_within_a_series_are_refused,
        a_row_moved_to_another_series_is_refused,
        rewrap_costs_the_same_whatever_the_instance_count,
        root_key_rotation_rewraps_study_keys_only,
        deleting_a_study_shreds_its_key,
        a_store_under_a_stale_study_key_is_refused,
        an_instance_commits_only_after_its_gate_and_never_when_it_fails,
        partitions_keep_their_own_keys_inside_the_service,
    );
}

// ---------------------------------------------------------------------------------------------
// UPS workitems: rows sealed to their UID, search by tokens, writes conditional on the version.
// ---------------------------------------------------------------------------------------------

mod workitems {
    use hds_dicom::SearchValue;
    use hds_dicom::workitem::{KeyMatch, WorkitemKey, find_key};
    use hds_index::{Index, WorkitemFilter, WorkitemRecord};

    use super::{OTHER_SERVICE, SERVICE};

    fn key(name: &str) -> &'static WorkitemKey {
        find_key(name).expect("a workitem key")
    }

    /// The terms of a workitem of patient `name` and `id`, scheduled on `date`, in `state`.
    fn terms(
        name: &str,
        id: &str,
        date: u32,
        state: &str,
    ) -> Vec<(&'static WorkitemKey, SearchValue)> {
        vec![
            (
                key("PatientName"),
                SearchValue::PersonName {
                    exact: hds_dicom::normalize::normalize_person_name(name),
                    words: hds_dicom::normalize::name_words(name),
                },
            ),
            (key("PatientID"), SearchValue::Exact(id.into())),
            (
                key("ScheduledProcedureStepStartDateTime"),
                SearchValue::Date(date),
            ),
            (key("ProcedureStepState"), SearchValue::Exact(state.into())),
            (
                key("ReferencedRequestSequence.AccessionNumber"),
                SearchValue::Exact(format!("ACC-{id}")),
            ),
        ]
    }

    async fn create(index: &Index, service: &str, uid: &str, name: &str, id: &str, date: u32) {
        let terms = terms(name, id, date, "SCHEDULED");
        let dataset = format!("{{\"uid\":\"{uid}\",\"state\":\"SCHEDULED\"}}");
        let record = WorkitemRecord {
            uid,
            dataset: dataset.as_bytes(),
            transaction_uid: None,
            terms: &terms,
        };
        assert!(
            index
                .create_workitem(service, &record)
                .await
                .expect("create")
        );
    }

    async fn found(index: &Index, service: &str, filters: Vec<WorkitemFilter>) -> Vec<String> {
        index
            .search_workitems(service, &filters, 100, 0)
            .await
            .expect("search")
            .into_iter()
            .map(|bytes| {
                let value: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
                value["uid"].as_str().unwrap_or_default().to_owned()
            })
            .collect()
    }

    fn filter(name: &str, matcher: KeyMatch) -> WorkitemFilter {
        WorkitemFilter {
            key: key(name),
            matcher,
        }
    }

    pub(super) async fn workitems_are_stored_found_and_replaced_conditionally(index: Index) {
        create(&index, SERVICE, "1.2.1", "Doe^Jane", "P1", 2026_1204).await;
        create(&index, SERVICE, "1.2.2", "Roe^Richard", "P2", 2026_1215).await;
        create(&index, SERVICE, "1.2.3", "Doe^John", "P3", 2027_0101).await;
        create(&index, OTHER_SERVICE, "1.2.1", "Doe^Jane", "P1", 2026_1204).await;
        // One UID, one workitem per service.
        let again = WorkitemRecord {
            uid: "1.2.1",
            dataset: b"{}",
            transaction_uid: None,
            terms: &[],
        };
        assert!(
            !index
                .create_workitem(SERVICE, &again)
                .await
                .expect("create")
        );
        // Newest first; every kind of match; services apart.
        assert_eq!(
            found(&index, SERVICE, vec![]).await,
            ["1.2.3", "1.2.2", "1.2.1"]
        );
        assert_eq!(
            found(
                &index,
                SERVICE,
                vec![filter(
                    "PatientName",
                    KeyMatch::FuzzyName(vec!["do".into()])
                )]
            )
            .await,
            ["1.2.3", "1.2.1"]
        );
        assert_eq!(
            found(
                &index,
                SERVICE,
                vec![filter(
                    "PatientName",
                    KeyMatch::FuzzyName(vec!["do".into(), "ja".into()])
                )]
            )
            .await,
            ["1.2.1"]
        );
        assert_eq!(
            found(
                &index,
                SERVICE,
                vec![filter("PatientName", KeyMatch::Exact("Roe^Richard".into()))]
            )
            .await,
            ["1.2.2"]
        );
        assert_eq!(
            found(
                &index,
                SERVICE,
                vec![filter(
                    "ScheduledProcedureStepStartDateTime",
                    KeyMatch::DateRange(Some(2026_1201), Some(2026_1231))
                )]
            )
            .await,
            ["1.2.2", "1.2.1"]
        );
        assert_eq!(
            found(
                &index,
                SERVICE,
                vec![
                    filter(
                        "ReferencedRequestSequence.AccessionNumber",
                        KeyMatch::Exact("ACC-P2".into())
                    ),
                    filter("ProcedureStepState", KeyMatch::Exact("SCHEDULED".into())),
                ]
            )
            .await,
            ["1.2.2"]
        );
        assert_eq!(
            found(
                &index,
                OTHER_SERVICE,
                vec![filter("PatientID", KeyMatch::Exact("P2".into()))]
            )
            .await,
            Vec::<String>::new()
        );
        let page = index
            .search_workitems(SERVICE, &[], 1, 1)
            .await
            .expect("page");
        assert_eq!(page.len(), 1);

        // A replacement names the version it read: a second one from the same read loses.
        let read = index
            .workitem(SERVICE, "1.2.1")
            .await
            .expect("read")
            .expect("there");
        assert_eq!(read.transaction_uid, None);
        let claimed_terms = terms("Doe^Jane", "P1", 2026_1204, "IN PROGRESS");
        let claimed = WorkitemRecord {
            uid: "1.2.1",
            dataset: b"{\"uid\":\"1.2.1\",\"state\":\"IN PROGRESS\"}",
            transaction_uid: Some("9.9.9"),
            terms: &claimed_terms,
        };
        assert!(
            index
                .replace_workitem(SERVICE, read.version, &claimed)
                .await
                .expect("replace")
        );
        assert!(
            !index
                .replace_workitem(SERVICE, read.version, &claimed)
                .await
                .expect("stale")
        );
        let now = index
            .workitem(SERVICE, "1.2.1")
            .await
            .expect("read")
            .expect("there");
        assert_eq!(now.transaction_uid.as_deref(), Some("9.9.9"));
        assert_eq!(now.version, read.version + 1);
        // The tokens follow the replacement.
        assert_eq!(
            found(
                &index,
                SERVICE,
                vec![filter(
                    "ProcedureStepState",
                    KeyMatch::Exact("SCHEDULED".into())
                )]
            )
            .await,
            ["1.2.3", "1.2.2"]
        );
        assert_eq!(
            found(
                &index,
                SERVICE,
                vec![filter(
                    "ProcedureStepState",
                    KeyMatch::Exact("IN PROGRESS".into())
                )]
            )
            .await,
            ["1.2.1"]
        );
        assert!(
            index
                .workitem(SERVICE, "1.2.9")
                .await
                .expect("read")
                .is_none()
        );
        // Concurrent replacements of one read: exactly one wins.
        let read = index
            .workitem(SERVICE, "1.2.2")
            .await
            .expect("read")
            .expect("there");
        let record_terms = terms("Roe^Richard", "P2", 2026_1215, "IN PROGRESS");
        let attempts = (0..6).map(|n| {
            let index = index.clone();
            let terms = record_terms.clone();
            let version = read.version;
            async move {
                let transaction = format!("7.7.{n}");
                let record = WorkitemRecord {
                    uid: "1.2.2",
                    dataset: b"{\"uid\":\"1.2.2\"}",
                    transaction_uid: Some(transaction.as_str()),
                    terms: &terms,
                };
                index
                    .replace_workitem(SERVICE, version, &record)
                    .await
                    .expect("replace")
            }
        });
        let won = futures::future::join_all(attempts).await;
        assert_eq!(won.iter().filter(|won| **won).count(), 1);
        // A deleted service's workitems go.
        index
            .delete_workitems_of(OTHER_SERVICE)
            .await
            .expect("delete");
        assert!(
            index
                .workitem(OTHER_SERVICE, "1.2.1")
                .await
                .expect("read")
                .is_none()
        );
        assert!(
            index
                .workitem(SERVICE, "1.2.1")
                .await
                .expect("read")
                .is_some()
        );
    }
}

use workitems::workitems_are_stored_found_and_replaced_conditionally;

/// With the keyed cipher, nothing of a workitem is readable at rest.
#[tokio::test(flavor = "current_thread")]
async fn keyed_workitems_keep_no_marker_at_rest() {
    let (dir, index) = sqlite_index(true).await;
    let name = "Wkmarkfamily^Wkmarkgiven";
    let terms = vec![(
        hds_dicom::workitem::find_key("PatientName").expect("key"),
        SearchValue::PersonName {
            exact: name.into(),
            words: hds_dicom::normalize::name_words(name),
        },
    )];
    let dataset =
        format!("{{\"00100010\":{{\"vr\":\"PN\",\"Value\":[{{\"Alphabetic\":\"{name}\"}}]}}}}");
    let record = hds_index::WorkitemRecord {
        uid: "1.2.826.0.1.3680043.10.1.777",
        dataset: dataset.as_bytes(),
        transaction_uid: Some("1.2.826.0.1.3680043.10.1.778"),
        terms: &terms,
    };
    assert!(
        index
            .create_workitem(SERVICE, &record)
            .await
            .expect("create")
    );
    let hits = index
        .search_workitems(
            SERVICE,
            &[hds_index::WorkitemFilter {
                key: hds_dicom::workitem::find_key("PatientName").expect("key"),
                matcher: hds_dicom::workitem::KeyMatch::FuzzyName(vec!["wkm".into()]),
            }],
            10,
            0,
        )
        .await
        .expect("search");
    assert_eq!(hits, [dataset.as_bytes().to_vec()]);
    index.database().close().await;
    let at_rest = bytes_at_rest(dir.path());
    for marker in [
        "Wkmarkfamily",
        "wkmarkfamily",
        "1.2.826.0.1.3680043.10.1.777",
        "1.2.826.0.1.3680043.10.1.778",
    ] {
        assert!(
            !at_rest
                .windows(marker.len())
                .any(|window| window == marker.as_bytes()),
            "{marker} found at rest"
        );
    }
}

/// Whether the study's row knows its modalities (a search then reads no series for it).
async fn study_row_knows_modalities(index: &Index, study: &str) -> bool {
    use sqlx::Row;
    let token = index.study_token(SERVICE, study).expect("token");
    sqlx::query("SELECT modalities FROM dicom_studies WHERE service = $1 AND uid_token = $2")
        .bind(SERVICE)
        .bind(token.as_slice())
        .fetch_one(index.database().pool())
        .await
        .expect("study row")
        .get::<Option<Vec<u8>>, _>(0)
        .is_some()
}
