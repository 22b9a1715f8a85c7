//! QIDO-RS (PS3.18 10.6): searches for studies, series and instances.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use dicom_core::Tag;
use hds_dicom::attributes::{default_return_tags, find_searchable, resolve_tag};
use hds_dicom::normalize;
use hds_dicom::{QueryLevel, SearchKind};
use hds_index::{Filter, Matcher, SearchHit, SearchQuery};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::DicomWebError;
use crate::service::{DicomWebState, ServiceContext};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 200;

const STUDY_INSTANCE_UID: &str = "0020000D";
const SERIES_INSTANCE_UID: &str = "0020000E";
const SOP_INSTANCE_UID: &str = "00080018";
const MODALITIES_IN_STUDY: &str = "00080061";
const NUMBER_OF_STUDY_RELATED_SERIES: &str = "00201206";
const NUMBER_OF_STUDY_RELATED_INSTANCES: &str = "00201208";
const NUMBER_OF_SERIES_RELATED_INSTANCES: &str = "00201209";
const RETRIEVE_URL: &str = "00081190";

/// `{study}`.
#[derive(Debug, Deserialize)]
pub struct StudyPath {
    study: String,
}

/// `{study}/series/{series}`.
#[derive(Debug, Deserialize)]
pub struct SeriesPath {
    study: String,
    series: String,
}

type Parameters = Query<Vec<(String, String)>>;

/// `GET studies`.
pub async fn search_studies(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    search(&context, &state, QueryLevel::Study, None, None, &parameters).await
}

/// `GET series`.
pub async fn search_series(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    search(
        &context,
        &state,
        QueryLevel::Series,
        None,
        None,
        &parameters,
    )
    .await
}

/// `GET instances`.
pub async fn search_instances(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    search(
        &context,
        &state,
        QueryLevel::Instance,
        None,
        None,
        &parameters,
    )
    .await
}

/// `GET studies/{study}/series`.
pub async fn search_series_in_study(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<StudyPath>,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    search(
        &context,
        &state,
        QueryLevel::Series,
        Some(&path.study),
        None,
        &parameters,
    )
    .await
}

/// `GET studies/{study}/instances`.
pub async fn search_instances_in_study(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<StudyPath>,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    search(
        &context,
        &state,
        QueryLevel::Instance,
        Some(&path.study),
        None,
        &parameters,
    )
    .await
}

/// `GET studies/{study}/series/{series}/instances`.
pub async fn search_instances_in_series(
    context: ServiceContext,
    State(state): State<DicomWebState>,
    Path(path): Path<SeriesPath>,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    search(
        &context,
        &state,
        QueryLevel::Instance,
        Some(&path.study),
        Some(&path.series),
        &parameters,
    )
    .await
}

/// What to return beyond the defaults.
enum IncludeFields {
    Some(Vec<Tag>),
    All,
}

/// A parsed QIDO request.
struct ParsedSearch {
    filters: Vec<Filter>,
    include: IncludeFields,
    limit: u32,
    offset: u32,
}

fn level_rank(level: QueryLevel) -> u8 {
    match level {
        QueryLevel::Study => 0,
        QueryLevel::Series => 1,
        QueryLevel::Instance => 2,
    }
}

fn parse_search(
    level: QueryLevel,
    parameters: &[(String, String)],
) -> Result<ParsedSearch, DicomWebError> {
    let fuzzy = parameters
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("fuzzymatching"))
        .try_fold(false, |_, (_, value)| {
            match value.to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(DicomWebError::BadRequest(
                    "fuzzymatching must be true or false".into(),
                )),
            }
        })?;
    let mut filters = Vec::new();
    let mut include = IncludeFields::Some(Vec::new());
    let mut limit = DEFAULT_LIMIT;
    let mut offset = 0;
    for (name, value) in parameters {
        match name.to_ascii_lowercase().as_str() {
            "fuzzymatching" => {}
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                    .ok_or_else(|| {
                        DicomWebError::BadRequest(format!(
                            "limit must be between 1 and {MAX_LIMIT}"
                        ))
                    })?;
            }
            "offset" => {
                offset = value.parse::<u32>().map_err(|_| {
                    DicomWebError::BadRequest("offset must be a non-negative integer".into())
                })?;
            }
            "includefield" => {
                for field in value
                    .split(',')
                    .map(str::trim)
                    .filter(|field| !field.is_empty())
                {
                    if field.eq_ignore_ascii_case("all") {
                        include = IncludeFields::All;
                    } else {
                        let tag = resolve_tag(field).ok_or_else(|| {
                            DicomWebError::BadRequest(format!(
                                "includefield {field} is not a known attribute keyword or tag"
                            ))
                        })?;
                        if let IncludeFields::Some(tags) = &mut include {
                            tags.push(tag);
                        }
                    }
                }
            }
            _ => {
                let attribute = find_searchable(name).ok_or_else(|| {
                    DicomWebError::BadRequest(format!(
                        "{name} is not a supported query attribute (supported: {})",
                        supported_names()
                    ))
                })?;
                if level_rank(attribute.level) > level_rank(level) {
                    return Err(DicomWebError::BadRequest(format!(
                        "{} cannot be used in a search at {} level",
                        attribute.keyword,
                        level_name(level)
                    )));
                }
                if value.is_empty() {
                    continue;
                }
                let matcher = match attribute.kind {
                    SearchKind::Date => {
                        let (from, to) = normalize::parse_date_range(value).map_err(|_| {
                            DicomWebError::BadRequest(format!(
                                "{} must be a date YYYYMMDD (from 1800) or a range a-b, a- or -b",
                                attribute.keyword
                            ))
                        })?;
                        Matcher::DateRange(from, to)
                    }
                    SearchKind::PersonName if fuzzy => {
                        Matcher::FuzzyName(normalize::fuzzy_query_words(value))
                    }
                    SearchKind::PersonName => {
                        Matcher::Exact(normalize::normalize_person_name(value))
                    }
                    SearchKind::Exact => Matcher::Exact(normalize::normalize_exact(value)),
                };
                filters.push(Filter { attribute, matcher });
            }
        }
    }
    Ok(ParsedSearch {
        filters,
        include,
        limit,
        offset,
    })
}

fn supported_names() -> String {
    let names: Vec<&str> = hds_dicom::attributes::searchable_attributes()
        .iter()
        .map(|a| a.keyword)
        .collect();
    format!(
        "{}, includefield, fuzzymatching, limit, offset",
        names.join(", ")
    )
}

fn level_name(level: QueryLevel) -> &'static str {
    match level {
        QueryLevel::Study => "study",
        QueryLevel::Series => "series",
        QueryLevel::Instance => "instance",
    }
}

async fn search(
    context: &ServiceContext,
    state: &DicomWebState,
    level: QueryLevel,
    study: Option<&str>,
    series: Option<&str>,
    parameters: &[(String, String)],
) -> Result<Response, DicomWebError> {
    let parsed = parse_search(level, parameters)?;
    let query = SearchQuery {
        service: &context.service_key,
        level,
        study_instance_uid: study,
        series_instance_uid: series,
        filters: parsed.filters.clone(),
        limit: parsed.limit,
        offset: parsed.offset,
    };
    let hits = state.index.search(&query).await?;
    let results: Vec<Value> = hits
        .iter()
        .map(|hit| shape_result(context, level, &parsed, hit))
        .collect();
    Ok(([(CONTENT_TYPE, "application/dicom+json")], Json(results)).into_response())
}

fn tag_key(tag: Tag) -> String {
    format!("{:04X}{:04X}", tag.group(), tag.element())
}

/// The attributes of one result: the level's defaults, the matched attributes, the included
/// ones, the counts and RetrieveURL.
fn shape_result(
    context: &ServiceContext,
    level: QueryLevel,
    parsed: &ParsedSearch,
    hit: &SearchHit,
) -> Value {
    let mut result = Map::new();
    let mut copy = |key: String| {
        if let Some(value) = hit.attributes.get(&key) {
            result.insert(key, value.clone());
        }
    };
    match &parsed.include {
        IncludeFields::All => {
            for key in hit.attributes.keys() {
                copy(key.clone());
            }
        }
        IncludeFields::Some(tags) => {
            for tag in default_return_tags(level).iter().chain(tags.iter()) {
                copy(tag_key(*tag));
            }
            for filter in &parsed.filters {
                copy(tag_key(filter.attribute.tag));
            }
            copy(STUDY_INSTANCE_UID.to_owned());
            if level != QueryLevel::Study {
                copy(SERIES_INSTANCE_UID.to_owned());
            }
            if level == QueryLevel::Instance {
                copy(SOP_INSTANCE_UID.to_owned());
            }
        }
    }
    let uid = |key: &str| {
        hit.attributes
            .get(key)
            .and_then(|value| value.get("Value"))
            .and_then(|values| values.get(0))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let retrieve_url = match level {
        QueryLevel::Study => format!("{}/studies/{}", context.base_url, uid(STUDY_INSTANCE_UID)),
        QueryLevel::Series => format!(
            "{}/studies/{}/series/{}",
            context.base_url,
            uid(STUDY_INSTANCE_UID),
            uid(SERIES_INSTANCE_UID)
        ),
        QueryLevel::Instance => format!(
            "{}/studies/{}/series/{}/instances/{}",
            context.base_url,
            uid(STUDY_INSTANCE_UID),
            uid(SERIES_INSTANCE_UID),
            uid(SOP_INSTANCE_UID)
        ),
    };
    result.insert(
        RETRIEVE_URL.into(),
        json!({ "vr": "UR", "Value": [retrieve_url] }),
    );
    if level == QueryLevel::Study {
        if !hit.modalities_in_study.is_empty() {
            result.insert(
                MODALITIES_IN_STUDY.into(),
                json!({ "vr": "CS", "Value": hit.modalities_in_study }),
            );
        }
        if let Some(count) = hit.number_of_related_series {
            result.insert(
                NUMBER_OF_STUDY_RELATED_SERIES.into(),
                json!({ "vr": "IS", "Value": [count] }),
            );
        }
        if let Some(count) = hit.number_of_related_instances {
            result.insert(
                NUMBER_OF_STUDY_RELATED_INSTANCES.into(),
                json!({ "vr": "IS", "Value": [count] }),
            );
        }
    } else if level == QueryLevel::Series
        && let Some(count) = hit.number_of_related_instances
    {
        result.insert(
            NUMBER_OF_SERIES_RELATED_INSTANCES.into(),
            json!({ "vr": "IS", "Value": [count] }),
        );
    }
    Value::Object(result)
}
