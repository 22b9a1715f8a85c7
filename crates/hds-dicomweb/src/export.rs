//! `POST export`, as Azure's DICOM service (v2) serves it: a JSON body naming the studies,
//! series and instances to copy (`source`, type `identifiers`) and an Azure Blob Storage
//! container (`destination`, type `azureblob`); 202 with the operation's reference, which
//! `GET operations/{id}` reports on (`results`: `exported`, `skipped`, `errorHref`).
//!
//! The body is at most [`MAX_BODY_BYTES`]; its destination is checked by `hds-archive`
//! (`parse_export_request`: https or loopback http, not hds's own listener, a SAS token or an
//! emulator key) before anything is recorded, and a refusal is 400 naming what to change. The
//! route needs Azure's export data action (`DataAccess::Export`). The exported files are
//! plaintext DICOM in the customer's container: that is what the caller asked for.

use axum::Json;
use axum::body::Body;
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::DicomWebError;
use crate::extended_tags::json_body_limited;
use crate::service::ServiceContext;

/// The largest export body: 1000 identifiers of up to 194 characters and a destination.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// `POST export`: 202 `{id, href}` with `Location` the operation's URL.
pub async fn start(
    context: ServiceContext,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, DicomWebError> {
    let body = json_body_limited(&headers, body, MAX_BODY_BYTES).await?;
    let request = hds_archive::parse_export_request(&body, &context.export_policy)
        .map_err(|refusal| DicomWebError::BadRequest(refusal.0))?;
    let id = context.archive.start_export(&request).await?;
    let href = format!("{}/operations/{id}", context.base_url);
    Ok((
        StatusCode::ACCEPTED,
        [(LOCATION, href.clone())],
        Json(json!({"id": id, "href": href})),
    )
        .into_response())
}
