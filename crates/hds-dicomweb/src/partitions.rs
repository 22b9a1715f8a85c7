//! `GET partitions`: the data partitions of a service, in Azure's shape
//! (`[{"partitionKey", "partitionName", "createdDate"}]`). The data routes under
//! `partitions/{name}/` are the service's routes ([`crate::router`]); which partition a request
//! addresses, and whether it may, is decided by the [`crate::service::ServiceContext`]
//! extractor.

use axum::Json;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::DicomWebError;
use crate::service::ServiceContext;

/// `GET partitions`: 200 with every partition (the default first); 400
/// `DataPartitionsFeatureDisabled` for a service without partitions, as Azure answers.
pub async fn list(context: ServiceContext) -> Result<Response, DicomWebError> {
    if !context.data_partitions {
        return Err(DicomWebError::Partition {
            code: "DataPartitionsFeatureDisabled",
            message: "Data partitions feature is disabled.".into(),
        });
    }
    let partitions = context.archive.partitions().await?;
    let body: Vec<Value> = partitions
        .iter()
        .map(|partition| {
            json!({
                "partitionKey": partition.key,
                "partitionName": partition.name,
                "createdDate": created_date(partition.created_micros),
            })
        })
        .collect();
    Ok(([(CONTENT_TYPE, "application/json")], Json(body)).into_response())
}

/// RFC 3339 in UTC, as the change feed's timestamps.
fn created_date(micros: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|instant| instant.format(&Rfc3339).ok())
}
