//! The change feed, as Azure's DICOM service serves it: `GET changefeed` and
//! `GET changefeed/latest`.
//!
//! The two API versions read the feed differently. `v2` selects a time window
//! (`startTime` inclusive, `endTime` exclusive) and pages through it with `offset` (entries
//! skipped) and `limit` (1-200, default 100). `v1` reads by sequence: `offset` is the last
//! sequence already seen and `limit` (1-100, default 10) how far past it to read, so a page holds
//! the sequences in `(offset, offset + limit]`. Both take `includemetadata` (default `true`).
//! Unknown, repeated or malformed parameters are refused with 400 naming the parameter.

use axum::Json;
use axum::extract::{Path, Query, RawQuery};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use hds_archive::{ChangeAction, ChangeFeedEntry, ChangeFeedWindow, ChangeState};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::DicomWebError;
use crate::service::ServiceContext;

/// The most parameters a change feed request may carry (there are five).
const MAX_PARAMETERS: usize = 8;

/// The longest parameter value read (a date-time with nanoseconds and an offset is 35).
const MAX_VALUE_LENGTH: usize = 64;

/// `v2`: entries per page by default, and at most.
const V2_DEFAULT_LIMIT: i64 = 100;
const V2_MAX_LIMIT: i64 = 200;

/// `v1`: sequences per page by default, and at most.
const V1_DEFAULT_LIMIT: i64 = 10;
const V1_MAX_LIMIT: i64 = 100;

/// The earliest and latest instants a time window may name: years 1 to 9999, as Azure's.
const EARLIEST_MICROS: i64 = -62_135_596_800_000_000;
const LATEST_MICROS: i64 = 253_402_300_800_000_000;

/// The `{version}` of the route.
#[derive(Debug, Deserialize)]
pub struct VersionPath {
    version: String,
}

/// The query, as pairs (names compared without case).
type Parameters = Query<Vec<(String, String)>>;

/// `GET changefeed`.
pub async fn feed(
    context: ServiceContext,
    Path(path): Path<VersionPath>,
    RawQuery(raw): RawQuery,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    check_query_length(raw.as_deref())?;
    let request = parse_feed(&path.version, &parameters)?;
    let entries = context
        .archive
        .change_feed(request.window, request.include_metadata)
        .await?;
    let body: Vec<Value> = entries
        .iter()
        .map(|entry| render(entry, context.data_partitions))
        .collect();
    Ok(([(CONTENT_TYPE, "application/json")], Json(body)).into_response())
}

/// `GET changefeed/latest`: the latest entry, or 204 when nothing changed yet.
pub async fn latest(
    context: ServiceContext,
    RawQuery(raw): RawQuery,
    Query(parameters): Parameters,
) -> Result<Response, DicomWebError> {
    check_query_length(raw.as_deref())?;
    let mut include_metadata = None;
    check_count(&parameters)?;
    for (name, value) in &parameters {
        match name.to_ascii_lowercase().as_str() {
            "includemetadata" => set_once(&mut include_metadata, name, parse_bool(name, value)?)?,
            _ => return Err(unknown(name)),
        }
    }
    match context
        .archive
        .latest_change(include_metadata.unwrap_or(true))
        .await?
    {
        Some(entry) => Ok((
            [(CONTENT_TYPE, "application/json")],
            Json(render(&entry, context.data_partitions)),
        )
            .into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// A parsed `GET changefeed`.
#[derive(Debug, PartialEq, Eq)]
struct FeedRequest {
    window: ChangeFeedWindow,
    include_metadata: bool,
}

fn check_query_length(raw: Option<&str>) -> Result<(), DicomWebError> {
    // Five parameters with their longest values fit well within this.
    if raw.is_some_and(|raw| raw.len() > 1024) {
        return Err(DicomWebError::BadRequest(
            "the change feed's query string is longer than 1024 characters".into(),
        ));
    }
    Ok(())
}

fn check_count(parameters: &[(String, String)]) -> Result<(), DicomWebError> {
    if parameters.len() > MAX_PARAMETERS {
        return Err(DicomWebError::BadRequest(format!(
            "the change feed takes at most {MAX_PARAMETERS} query parameters"
        )));
    }
    if let Some((name, _)) = parameters
        .iter()
        .find(|(_, value)| value.len() > MAX_VALUE_LENGTH)
    {
        return Err(DicomWebError::BadRequest(format!(
            "{} is longer than {MAX_VALUE_LENGTH} characters",
            printable(name)
        )));
    }
    Ok(())
}

fn parse_feed(
    version: &str,
    parameters: &[(String, String)],
) -> Result<FeedRequest, DicomWebError> {
    check_count(parameters)?;
    let by_time = version != "v1";
    let mut start = None;
    let mut end = None;
    let mut offset = None;
    let mut limit = None;
    let mut include_metadata = None;
    for (name, value) in parameters {
        match name.to_ascii_lowercase().as_str() {
            "starttime" if by_time => set_once(&mut start, name, parse_time(name, value)?)?,
            "endtime" if by_time => set_once(&mut end, name, parse_time(name, value)?)?,
            "offset" => {
                let parsed = value
                    .parse::<i64>()
                    .ok()
                    .filter(|offset| *offset >= 0)
                    .ok_or_else(|| {
                        DicomWebError::BadRequest("offset must be a non-negative integer".into())
                    })?;
                set_once(&mut offset, name, parsed)?;
            }
            "limit" => {
                let max = if by_time { V2_MAX_LIMIT } else { V1_MAX_LIMIT };
                let parsed = value
                    .parse::<i64>()
                    .ok()
                    .filter(|limit| (1..=max).contains(limit))
                    .ok_or_else(|| {
                        DicomWebError::BadRequest(format!("limit must be between 1 and {max}"))
                    })?;
                set_once(&mut limit, name, parsed)?;
            }
            "includemetadata" => set_once(&mut include_metadata, name, parse_bool(name, value)?)?,
            _ => return Err(unknown(name)),
        }
    }
    let offset = offset.unwrap_or(0);
    let window = if by_time {
        let start_micros = start.unwrap_or(EARLIEST_MICROS);
        let end_micros = end.unwrap_or(LATEST_MICROS);
        if start_micros >= end_micros {
            return Err(DicomWebError::BadRequest(
                "startTime must be before endTime".into(),
            ));
        }
        ChangeFeedWindow::Time {
            start_micros,
            end_micros,
            offset,
            limit: limit.unwrap_or(V2_DEFAULT_LIMIT),
        }
    } else {
        ChangeFeedWindow::Sequences {
            after: offset,
            through: offset.saturating_add(limit.unwrap_or(V1_DEFAULT_LIMIT)),
        }
    };
    Ok(FeedRequest {
        window,
        include_metadata: include_metadata.unwrap_or(true),
    })
}

/// Keeps the first value of a parameter; a second is refused.
fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), DicomWebError> {
    if slot.is_some() {
        return Err(DicomWebError::BadRequest(format!(
            "{} is given more than once",
            printable(name)
        )));
    }
    *slot = Some(value);
    Ok(())
}

fn unknown(name: &str) -> DicomWebError {
    DicomWebError::BadRequest(format!("unknown change feed parameter {}", printable(name)))
}

/// A parameter name as an error message may quote it: short, printable ASCII.
fn printable(name: &str) -> String {
    let shown: String = name
        .chars()
        .take(32)
        .map(|character| {
            if character.is_ascii_graphic() {
                character
            } else {
                '?'
            }
        })
        .collect();
    format!("'{shown}'")
}

fn parse_bool(name: &str, value: &str) -> Result<bool, DicomWebError> {
    match value.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(DicomWebError::BadRequest(format!(
            "{} must be true or false",
            printable(name)
        ))),
    }
}

/// An instant as microseconds since 1970: RFC 3339 (`2023-05-10T16:00:00Z`, any offset), a date
/// and time without an offset (taken as UTC), or a date (its midnight, UTC).
fn parse_time(name: &str, value: &str) -> Result<i64, DicomWebError> {
    let invalid = || {
        DicomWebError::BadRequest(format!(
            "{} must be a date-time such as 2023-05-10T16:00:00Z, between years 1 and 9999",
            printable(name)
        ))
    };
    let parsed = OffsetDateTime::parse(value, &Rfc3339)
        .or_else(|_| {
            let description = time::macros::format_description!(
                version = 2,
                "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
            );
            time::PrimitiveDateTime::parse(value, description).map(|local| local.assume_utc())
        })
        .or_else(|_| {
            let description = time::macros::format_description!("[year]-[month]-[day]");
            time::Date::parse(value, description).map(|date| date.midnight().assume_utc())
        })
        .map_err(|_| invalid())?;
    let micros = i64::try_from(parsed.unix_timestamp_nanos() / 1000).map_err(|_| invalid())?;
    if !(EARLIEST_MICROS..=LATEST_MICROS).contains(&micros) {
        return Err(invalid());
    }
    Ok(micros)
}

/// One entry in Azure's wire form; with `PartitionName` (the default partition's name for its
/// entries) when the service has data partitions.
fn render(entry: &ChangeFeedEntry, data_partitions: bool) -> Value {
    let action = match entry.action {
        ChangeAction::Create => "create",
        ChangeAction::Delete => "delete",
        ChangeAction::Update => "update",
    };
    let state = match entry.state {
        ChangeState::Current => "current",
        ChangeState::Replaced => "replaced",
        ChangeState::Deleted => "deleted",
    };
    let timestamp =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(entry.timestamp_micros) * 1000)
            .ok()
            .and_then(|instant| instant.format(&Rfc3339).ok());
    let mut rendered = json!({
        "Sequence": entry.sequence,
        "StudyInstanceUid": entry.study_instance_uid,
        "SeriesInstanceUid": entry.series_instance_uid,
        "SopInstanceUid": entry.sop_instance_uid,
        "Action": action,
        "Timestamp": timestamp,
        "State": state,
        "Metadata": entry.metadata,
    });
    if data_partitions && let Some(fields) = rendered.as_object_mut() {
        fields.insert(
            "PartitionName".into(),
            json!(
                entry
                    .partition_name
                    .as_deref()
                    .unwrap_or(hds_archive::DEFAULT_PARTITION)
            ),
        );
    }
    rendered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    fn bad(version: &str, query: &[(&str, &str)]) -> String {
        match parse_feed(version, &pairs(query)) {
            Err(DicomWebError::BadRequest(message)) => message,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn v2_defaults_are_the_whole_time_range_first_page() {
        let parsed = parse_feed("v2", &[]).expect("parsed");
        assert_eq!(
            parsed,
            FeedRequest {
                window: ChangeFeedWindow::Time {
                    start_micros: EARLIEST_MICROS,
                    end_micros: LATEST_MICROS,
                    offset: 0,
                    limit: 100,
                },
                include_metadata: true,
            }
        );
    }

    #[test]
    fn v2_reads_a_window_and_a_page() {
        let parsed = parse_feed(
            "v2",
            &pairs(&[
                ("startTime", "2023-05-10T16:00:00Z"),
                ("endtime", "2023-05-10T18:00:00+01:00"),
                ("offset", "100"),
                ("limit", "200"),
                ("includeMetadata", "False"),
            ]),
        )
        .expect("parsed");
        let start = 1_683_734_400_000_000;
        assert_eq!(
            parsed,
            FeedRequest {
                window: ChangeFeedWindow::Time {
                    start_micros: start,
                    end_micros: start + 3_600_000_000,
                    offset: 100,
                    limit: 200,
                },
                include_metadata: false,
            }
        );
        // Without an offset, and a bare date: UTC.
        let bare = parse_feed(
            "v2",
            &pairs(&[
                ("startTime", "2023-05-10T16:00:00.5"),
                ("endTime", "2023-05-11"),
            ]),
        )
        .expect("parsed");
        let ChangeFeedWindow::Time {
            start_micros,
            end_micros,
            ..
        } = bare.window
        else {
            panic!("a time window");
        };
        assert_eq!(start_micros, start + 500_000);
        assert_eq!(end_micros, start + 8 * 3_600_000_000);
    }

    #[test]
    fn v1_reads_sequences_after_the_offset() {
        let parsed = parse_feed("v1", &pairs(&[("offset", "15"), ("limit", "5")])).expect("ok");
        assert_eq!(
            parsed.window,
            ChangeFeedWindow::Sequences {
                after: 15,
                through: 20
            }
        );
        let default = parse_feed("v1", &[]).expect("ok");
        assert_eq!(
            default.window,
            ChangeFeedWindow::Sequences {
                after: 0,
                through: 10
            }
        );
        let huge =
            parse_feed("v1", &pairs(&[("offset", i64::MAX.to_string().as_str())])).expect("ok");
        assert_eq!(
            huge.window,
            ChangeFeedWindow::Sequences {
                after: i64::MAX,
                through: i64::MAX
            }
        );
    }

    #[test]
    fn hostile_parameters_are_refused_by_name() {
        assert!(bad("v2", &[("offset", "-1")]).contains("offset"));
        assert!(bad("v2", &[("offset", "1e3")]).contains("offset"));
        assert!(bad("v2", &[("offset", "99999999999999999999")]).contains("offset"));
        assert!(bad("v2", &[("limit", "0")]).contains("between 1 and 200"));
        assert!(bad("v2", &[("limit", "201")]).contains("between 1 and 200"));
        assert!(bad("v1", &[("limit", "101")]).contains("between 1 and 100"));
        assert!(bad("v2", &[("startTime", "yesterday")]).contains("startTime"));
        assert!(bad("v2", &[("endTime", "2023-13-01T00:00:00Z")]).contains("endTime"));
        assert!(bad("v2", &[("startTime", "+10000-01-01T00:00:00Z")]).contains("startTime"));
        assert!(
            bad(
                "v2",
                &[
                    ("startTime", "2023-05-10T17:00:00Z"),
                    ("endTime", "2023-05-10T17:00:00Z")
                ]
            )
            .contains("before endTime")
        );
        assert!(bad("v2", &[("includemetadata", "yes")]).contains("true or false"));
        assert!(bad("v2", &[("limit", "5"), ("LIMIT", "6")]).contains("more than once"));
        assert!(bad("v2", &[("PatientID", "x")]).contains("unknown"));
        // v1 has no time window.
        assert!(bad("v1", &[("startTime", "2023-05-10T17:00:00Z")]).contains("unknown"));
        let long = "9".repeat(MAX_VALUE_LENGTH + 1);
        assert!(bad("v2", &[("offset", long.as_str())]).contains("longer than"));
        let many = vec![("offset", "1"); MAX_PARAMETERS + 1];
        assert!(bad("v2", &many).contains("at most"));
        let control = bad("v2", &[("\u{7}name\u{0}", "1")]);
        assert!(control.contains("'?name?'"), "{control}");
    }

    #[test]
    fn entries_render_in_azures_shape() {
        let entry = ChangeFeedEntry {
            sequence: 7,
            timestamp_micros: 1_583_283_788_483_400,
            action: ChangeAction::Delete,
            state: ChangeState::Deleted,
            study_instance_uid: "1.2".into(),
            series_instance_uid: "1.2.3".into(),
            sop_instance_uid: "1.2.3.4".into(),
            metadata: None,
            partition_name: None,
        };
        assert_eq!(
            render(&entry, true)["PartitionName"],
            json!("Microsoft.Default")
        );
        assert_eq!(
            render(&entry, false),
            json!({
                "Sequence": 7,
                "StudyInstanceUid": "1.2",
                "SeriesInstanceUid": "1.2.3",
                "SopInstanceUid": "1.2.3.4",
                "Action": "delete",
                "Timestamp": "2020-03-04T01:03:08.4834Z",
                "State": "deleted",
                "Metadata": null,
            })
        );
    }
}
