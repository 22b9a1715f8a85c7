//! The DICOMweb HTTP API of hds: STOW-RS (and its upsert, `PUT`), WADO-RS, QIDO-RS and delete
//! (PS3.18), the UPS-RS worklist (`workitems.rs`), Azure's change feed, extended query tags,
//! export (`export.rs`), bulk update (`bulk_update.rs`) and operations, for every DICOM service at
//! `{base}/dicom/{workspace}/{service}/v2/` (`/v1/` is an alias, except for the change feed's
//! parameters, which differ by version), and Azure's data partitions: `GET partitions`, and the
//! data routes under `partitions/{name}/` (`partitions.rs`, `service.rs`).
//!
//! Handlers are thin: they extract a request (media types, multipart parts, query parameters,
//! frame lists, each under its limit), make one call to the service's
//! [`hds_archive::ServiceArchive`] (which owns keys, blobs, index rows, retries and cleanup), and
//! render the PS3.18 response.
//!
//! Architecture invariants:
//! - Nothing from an instance is logged: spans record the matched route (`{study}`, not the UID)
//!   and the names of query parameters, never their values.
//! - An instance is acknowledged only after its blob is complete and its index row committed;
//!   a failure in between leaves at most an unreferenced blob, never a visible half instance.
//! - Nothing is stored in plaintext: every blob is sealed under its own blob key, wrapped by its
//!   study's key in the service's [`hds_index::ServiceKeyring`] (`docs/encryption.md`); the
//!   index seals and tokenizes through the same keyring. A service whose keys are not in memory
//!   answers `500 CustomerManagedKeyAccessLost` to every data request.
//! - Integrity failures are never served as data: a blob whose first segment fails answers
//!   `500 DataIntegrityCheckFailed` before the status line; one that fails later aborts the body.
#![deny(missing_docs)]

mod bulk_update;
mod changefeed;
mod cors;
mod error;
mod export;
mod extended_tags;
mod media;
mod multipart;
mod partitions;
mod qido;
mod rendered;
mod request_body;
mod retrieve;
mod service;
mod stow;
mod workitems;

use axum::Router;
use axum::routing::{get, post, put};

pub use cors::CorsPolicy;
pub use error::DicomWebError;
pub use request_body::{MAX_BOUNDARY_LEN, MultipartLimits};
pub use service::{
    AccessRefusal, AllowAll, Caller, DataAccess, DicomAccessControl, DicomServiceResolver,
    DicomWebConfig, DicomWebState, ResolvedService, ServiceUnavailable, StaticServices,
};
/// Entry points for the fuzz targets in `fuzz/`; not an API.
#[doc(hidden)]
pub use stow::fuzzing;

/// The routes of the DICOMweb API, relative to the main listener's root: each service's at
/// `/dicom/{workspace}/{service}/{version}/`, and its data routes again under
/// `partitions/{partition}/` (Azure's data partitions; the extractor decides whether the
/// service has them).
pub fn router(state: DicomWebState) -> Router {
    let service_routes = Router::new()
        .route("/partitions", get(partitions::list))
        // Azure's spelling, and its client's (ASP.NET matches routes without case). A service's
        // route only: a partitioned service refuses it as a data route without a partition.
        .route("/studies/$bulkUpdate", post(bulk_update::start))
        .route("/studies/$bulkupdate", post(bulk_update::start))
        .route("/changefeed", get(changefeed::feed))
        .route("/changefeed/latest", get(changefeed::latest))
        .route(
            "/extendedquerytags",
            post(extended_tags::add).get(extended_tags::list),
        )
        .route(
            "/extendedquerytags/{tagPath}",
            get(extended_tags::get)
                .patch(extended_tags::update)
                .delete(extended_tags::delete),
        )
        .route(
            "/extendedquerytags/{tagPath}/errors",
            get(extended_tags::errors),
        )
        .route("/operations/{id}", get(extended_tags::operation))
        .route("/export", post(export::start));
    let api = service_routes
        .merge(data_routes())
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(close_after_failed_upload));
    let partitioned = data_routes()
        .route(
            "/studies/$bulkUpdate",
            post(bulk_update::refuse_in_partition),
        )
        .route(
            "/studies/$bulkupdate",
            post(bulk_update::refuse_in_partition),
        )
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(close_after_failed_upload));
    Router::new()
        .nest("/dicom/{workspace}/{service}/{version}", api)
        .nest(
            "/dicom/{workspace}/{service}/{version}/partitions/{partition}",
            partitioned,
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::apply,
        ))
        .with_state(state)
}

/// The routes of a partition's data (and of a service's, without a partition): STOW-RS and
/// upsert, WADO-RS, QIDO-RS, delete, rendered and thumbnails, UPS-RS workitems.
fn data_routes() -> Router<DicomWebState> {
    Router::new()
        .route(
            "/studies",
            post(stow::store)
                .put(stow::upsert)
                .get(qido::search_studies),
        )
        .route("/workitems", post(workitems::create).get(workitems::search))
        .route(
            "/workitems/{workitem}",
            get(workitems::retrieve).post(workitems::update),
        )
        .route("/workitems/{workitem}/state", put(workitems::change_state))
        .route(
            "/workitems/{workitem}/cancelrequest",
            post(workitems::cancel_request),
        )
        .route("/series", get(qido::search_series))
        .route("/instances", get(qido::search_instances))
        .route(
            "/studies/{study}",
            post(stow::store_in_study)
                .put(stow::upsert_in_study)
                .get(retrieve::study)
                .delete(retrieve::delete_study),
        )
        .route("/studies/{study}/metadata", get(retrieve::study_metadata))
        .route("/studies/{study}/series", get(qido::search_series_in_study))
        .route(
            "/studies/{study}/instances",
            get(qido::search_instances_in_study),
        )
        .route(
            "/studies/{study}/series/{series}",
            get(retrieve::series).delete(retrieve::delete_series),
        )
        .route(
            "/studies/{study}/series/{series}/metadata",
            get(retrieve::series_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances",
            get(qido::search_instances_in_series),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}",
            get(retrieve::instance).delete(retrieve::delete_instance),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/metadata",
            get(retrieve::instance_metadata),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            get(retrieve::frames),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
            get(rendered::frame),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/rendered",
            get(rendered::instance),
        )
        .route(
            "/studies/{study}/series/{series}/instances/{instance}/thumbnail",
            get(rendered::instance_thumbnail),
        )
        .route(
            "/studies/{study}/series/{series}/thumbnail",
            get(rendered::series_thumbnail),
        )
        .route("/studies/{study}/thumbnail", get(rendered::study_thumbnail))
}

/// Adds `Connection: close` to an error answering a request that carried a body. Such a request
/// is often refused before its body is read (401, 403, lost key access, a bad multipart header);
/// the server then cannot reuse the connection and closes it after the response, at a moment
/// the client cannot see coming: a client that sends its next request on it gets a reset
/// instead of an answer. Saying so in the response lets every client open a new connection.
async fn close_after_failed_upload(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header;
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    let mut response = next.run(request).await;
    let status = response.status();
    if has_body && (status.is_client_error() || status.is_server_error()) {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}
