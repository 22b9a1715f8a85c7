//! QIDO-RS (PS3.18 10.6): searches for studies, series and instances. The query parameters are
//! parsed and checked here, the search runs in the archive ([`hds_archive::ServiceArchive`]),
//! and its results are shaped here.

use axum::Json;
use axum::extract::{Path, Query};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use dicom_core::Tag;
use hds_archive::{
    ExtendedFilter, ExtendedQueryTag, Filter, Matcher, RawAttributes, Search, SearchHit,
};
use hds_dicom::attributes::{
    default_return_tags, find_searchable, resolve_tag, within_length_limit,
};
use hds_dicom::extended::{self, ExtendedKind};
use hds_dicom::instance::tag_key;
use hds_dicom::normalize;
use hds_dicom::{QueryLevel, SearchKind};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::DicomWebError;
use crate::service::ServiceContext;

/// Results per page when the request names no `limit`, and the most it may name (as Azure's
/// DICOM service: 1 to 200, default 100).
pub(crate) const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 200;
/// The deepest page a search may ask for. A database skips an offset's rows one by one, so an
/// unbounded offset is unbounded work per request; narrowing the search reaches the rest.
pub const MAX_OFFSET: u32 = 100_000;
/// A page's `limit` parameter: 1 to 200, as Azure's DICOM service allows.
pub(crate) fn page_limit(value: &str) -> Result<u32, DicomWebError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|limit| (1..=MAX_LIMIT).contains(limit))
        .ok_or_else(|| {
            DicomWebError::BadRequest(format!("limit must be between 1 and {MAX_LIMIT}"))
        })
}

/// A page's `offset` parameter: 0 to [`MAX_OFFSET`].
pub(crate) fn page_offset(value: &str) -> Result<u32, DicomWebError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|offset| *offset <= MAX_OFFSET)
        .ok_or_else(|| {
            DicomWebError::BadRequest(format!(
                "offset must be an integer between 0 and {MAX_OFFSET}"
            ))
        })
}

/// The most query parameters one search may carry: each filter is a condition of the query.
const MAX_PARAMETERS: usize = 64;

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
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    search(&context, QueryLevel::Study, None, None, &parameters).await
}

/// `GET series`.
pub async fn search_series(
    context: ServiceContext,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    search(&context, QueryLevel::Series, None, None, &parameters).await
}

/// `GET instances`.
pub async fn search_instances(
    context: ServiceContext,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    search(&context, QueryLevel::Instance, None, None, &parameters).await
}

/// `GET studies/{study}/series`.
pub async fn search_series_in_study(
    context: ServiceContext,
    Path(path): Path<StudyPath>,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    search(
        &context,
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
    Path(path): Path<StudyPath>,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    search(
        &context,
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
    Path(path): Path<SeriesPath>,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    search(
        &context,
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
    extended_filters: Vec<ExtendedFilter>,
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

/// The query parameters that are not attributes.
const CONTROL_PARAMETERS: [&str; 4] = ["fuzzymatching", "limit", "offset", "includefield"];

/// Whether a search names an attribute the defaults do not cover (an extended query tag, or an
/// unknown name): only then is the service's registry read.
fn names_other_attributes(parameters: &[(String, String)]) -> bool {
    parameters.iter().any(|(name, _)| {
        !CONTROL_PARAMETERS
            .iter()
            .any(|control| control.eq_ignore_ascii_case(name))
            && find_searchable(name).is_none()
    })
}

fn parse_search(
    level: QueryLevel,
    parameters: &[(String, String)],
    extended_tags: &[ExtendedQueryTag],
) -> Result<ParsedSearch, DicomWebError> {
    if parameters.len() > MAX_PARAMETERS {
        return Err(DicomWebError::BadRequest(format!(
            "a search may have at most {MAX_PARAMETERS} query parameters"
        )));
    }
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
    let mut extended_filters = Vec::new();
    let mut include = IncludeFields::Some(Vec::new());
    let mut limit = DEFAULT_LIMIT;
    let mut offset = 0;
    for (name, value) in parameters {
        match name.to_ascii_lowercase().as_str() {
            "fuzzymatching" => {}
            "limit" => {
                limit = page_limit(value)?;
            }
            "offset" => {
                offset = page_offset(value)?;
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
                let Some(attribute) = find_searchable(name) else {
                    if let Some(filter) = extended_filter(level, name, value, fuzzy, extended_tags)?
                    {
                        extended_filters.push(filter);
                    }
                    continue;
                };
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
                if !within_length_limit(attribute, value) {
                    return Err(DicomWebError::BadRequest(format!(
                        "the value of {} is longer than its value representation allows",
                        attribute.keyword
                    )));
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
                        let words = normalize::fuzzy_query_words(value);
                        if words.is_empty() {
                            // Wildcards alone would match every name: not a search.
                            return Err(DicomWebError::BadRequest(format!(
                                "a fuzzy {} query needs at least one letter or digit",
                                attribute.keyword
                            )));
                        }
                        Matcher::FuzzyName(words)
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
        extended_filters,
        include,
        limit,
        offset,
    })
}

/// The filter on the extended query tag `name` (a keyword or 8 hex digits) names, `None` for
/// an empty value; 400 when the service has no such tag, when it is not ready and enabled, or
/// when the value does not fit its VR.
fn extended_filter(
    level: QueryLevel,
    name: &str,
    value: &str,
    fuzzy: bool,
    extended_tags: &[ExtendedQueryTag],
) -> Result<Option<ExtendedFilter>, DicomWebError> {
    let unsupported = || {
        DicomWebError::BadRequest(format!(
            "{name} is not a supported query attribute (supported: {}, and the service's \
             extended query tags)",
            supported_names()
        ))
    };
    let tag = resolve_tag(name).ok_or_else(unsupported)?;
    let extended = extended_tags
        .iter()
        .find(|extended| extended.definition.tag == tag)
        .ok_or_else(unsupported)?;
    let path = extended.definition.path();
    if !extended.is_queryable() {
        return Err(DicomWebError::BadRequest(format!(
            "the extended query tag {path} cannot be queried now: its status is {} and its \
             query status {}",
            extended.status.name(),
            extended.query_status.name()
        )));
    }
    if level_rank(extended.definition.level) > level_rank(level) {
        return Err(DicomWebError::BadRequest(format!(
            "{path} cannot be used in a search at {} level",
            level_name(level)
        )));
    }
    if value.is_empty() {
        return Ok(None);
    }
    let vr = extended.definition.vr;
    let invalid = || {
        DicomWebError::BadRequest(format!(
            "the value of {path} is not a valid {} value",
            vr.code()
        ))
    };
    let matcher = match vr.kind() {
        ExtendedKind::Date => {
            let (from, to) = normalize::parse_date_range(value).map_err(|_| {
                DicomWebError::BadRequest(format!(
                    "{path} must be a date YYYYMMDD (from 1800) or a range a-b, a- or -b"
                ))
            })?;
            Matcher::DateRange(from, to)
        }
        ExtendedKind::Name => {
            if !extended::name_query_within_limit(value) {
                return Err(invalid());
            }
            if fuzzy {
                let words = normalize::fuzzy_query_words(value);
                if words.is_empty() {
                    return Err(DicomWebError::BadRequest(format!(
                        "a fuzzy {path} query needs at least one letter or digit"
                    )));
                }
                Matcher::FuzzyName(words)
            } else {
                Matcher::Exact(normalize::normalize_person_name(value))
            }
        }
        _ => Matcher::Exact(extended::normalize_query_value(vr, value).map_err(|_| invalid())?),
    };
    Ok(Some(ExtendedFilter {
        tag: extended.clone(),
        matcher,
    }))
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
    level: QueryLevel,
    study: Option<&str>,
    series: Option<&str>,
    parameters: &[(String, String)],
) -> Result<Response, DicomWebError> {
    let extended_tags = if names_other_attributes(parameters) {
        context.archive.extended_query_tags().await?
    } else {
        Vec::new()
    };
    let parsed = parse_search(level, parameters, &extended_tags)?;
    let search = Search {
        level,
        study_instance_uid: study,
        series_instance_uid: series,
        filters: parsed.filters.clone(),
        extended_filters: parsed.extended_filters.clone(),
        limit: parsed.limit,
        offset: parsed.offset,
    };
    let hits = context.archive.search(search).await?;
    let keys = ResultKeys::new(level, &parsed);
    let results = hits
        .into_iter()
        .map(|hit| shape_result(context, level, &keys, hit))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(([(CONTENT_TYPE, "application/dicom+json")], Json(results)).into_response())
}

/// The keys a page's results keep, worked out once per request rather than once per result:
/// None for every attribute (`includefield=all`).
struct ResultKeys(Option<Vec<String>>);

impl ResultKeys {
    /// The level's defaults, the included attributes, the matched ones and the UIDs of the
    /// result's level and above.
    fn new(level: QueryLevel, parsed: &ParsedSearch) -> ResultKeys {
        let IncludeFields::Some(tags) = &parsed.include else {
            return ResultKeys(None);
        };
        let mut keys: Vec<String> = default_return_tags(level)
            .iter()
            .chain(tags.iter())
            .copied()
            .chain(parsed.filters.iter().map(|filter| filter.attribute.tag))
            .chain(
                parsed
                    .extended_filters
                    .iter()
                    .map(|filter| filter.tag.definition.tag),
            )
            .map(tag_key)
            .collect();
        keys.push(STUDY_INSTANCE_UID.to_owned());
        if level != QueryLevel::Study {
            keys.push(SERIES_INSTANCE_UID.to_owned());
        }
        if level == QueryLevel::Instance {
            keys.push(SOP_INSTANCE_UID.to_owned());
        }
        ResultKeys(Some(keys))
    }
}

/// An element computed for a result, as JSON text.
fn element(vr: &str, values: Value) -> Result<Box<RawValue>, DicomWebError> {
    serde_json::value::to_raw_value(&json!({ "vr": vr, "Value": values }))
        .map_err(|_| DicomWebError::Internal("cannot encode a search result".into()))
}

/// The attributes of one result: the level's defaults, the matched attributes, the included
/// ones, the counts and RetrieveURL. Stored elements are copied as their JSON text.
fn shape_result(
    context: &ServiceContext,
    level: QueryLevel,
    keys: &ResultKeys,
    hit: SearchHit,
) -> Result<RawAttributes, DicomWebError> {
    let uid = |key: &str| hit.first_string(key).unwrap_or_default();
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
    let mut attributes = hit.attributes;
    let mut result = match &keys.0 {
        None => attributes,
        Some(keys) => {
            // Values move from the hit into the result; a key named twice is copied once.
            let mut result = RawAttributes::new();
            for key in keys {
                if let Some((key, value)) = attributes.remove_entry(key) {
                    result.insert(key, value);
                }
            }
            result
        }
    };
    result.insert(RETRIEVE_URL.into(), element("UR", json!([retrieve_url]))?);
    if level == QueryLevel::Study {
        if !hit.modalities_in_study.is_empty() {
            result.insert(
                MODALITIES_IN_STUDY.into(),
                element("CS", json!(hit.modalities_in_study))?,
            );
        }
        if let Some(count) = hit.number_of_related_series {
            result.insert(
                NUMBER_OF_STUDY_RELATED_SERIES.into(),
                element("IS", json!([count]))?,
            );
        }
        if let Some(count) = hit.number_of_related_instances {
            result.insert(
                NUMBER_OF_STUDY_RELATED_INSTANCES.into(),
                element("IS", json!([count]))?,
            );
        }
    } else if level == QueryLevel::Series
        && let Some(count) = hit.number_of_related_instances
    {
        result.insert(
            NUMBER_OF_SERIES_RELATED_INSTANCES.into(),
            element("IS", json!([count]))?,
        );
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &[(&str, &str)]) -> Result<ParsedSearch, DicomWebError> {
        let parameters: Vec<(String, String)> = query
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        parse_search(QueryLevel::Study, &parameters, &[])
    }

    fn refused(query: &[(&str, &str)]) -> bool {
        matches!(parse(query), Err(DicomWebError::BadRequest(_)))
    }

    #[test]
    fn limit_and_offset_are_bounded() {
        let parsed = parse(&[]).expect("defaults");
        assert_eq!((parsed.limit, parsed.offset), (DEFAULT_LIMIT, 0));
        let parsed = parse(&[("limit", "200"), ("offset", "100000")]).expect("maxima");
        assert_eq!((parsed.limit, parsed.offset), (200, MAX_OFFSET));
        for bad in ["0", "201", "-1", "ten", "4294967296", ""] {
            assert!(refused(&[("limit", bad)]), "limit={bad}");
        }
        for bad in ["100001", "-1", "1e3", "4294967296"] {
            assert!(refused(&[("offset", bad)]), "offset={bad}");
        }
    }

    #[test]
    fn a_fuzzy_name_of_wildcards_alone_is_refused() {
        for wildcard in ["*", "**", "?", "*^*", " * "] {
            assert!(
                refused(&[("PatientName", wildcard), ("fuzzymatching", "true")]),
                "{wildcard}"
            );
        }
        let parsed =
            parse(&[("PatientName", "smi*"), ("fuzzymatching", "true")]).expect("a prefix");
        assert!(matches!(
            &parsed.filters[0].matcher,
            Matcher::FuzzyName(words) if words == &["smi".to_owned()]
        ));
    }

    #[test]
    fn over_long_values_and_too_many_parameters_are_refused() {
        assert!(refused(&[("PatientName", &"a".repeat(100_000))]));
        assert!(refused(&[
            ("PatientName", &"\u{fdfa}".repeat(20_000)),
            ("fuzzymatching", "true")
        ]));
        assert!(refused(&[("AccessionNumber", &"1".repeat(65))]));
        parse(&[("AccessionNumber", &"1".repeat(64))]).expect("within the tolerance");
        let many: Vec<(&str, &str)> = vec![("PatientID", "x"); MAX_PARAMETERS + 1];
        assert!(refused(&many));
    }
}
