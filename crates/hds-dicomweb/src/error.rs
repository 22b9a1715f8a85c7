//! The errors of the DICOMweb API and their HTTP form.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// A failed DICOMweb request. Messages never carry values from instances.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DicomWebError {
    /// No such workspace/service or API version.
    #[error("no DICOM service at this address")]
    ServiceNotFound,
    /// The study, series, instance or frame does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A named resource (an extended query tag) does not exist; the message names it.
    #[error("{0}")]
    NotFoundMessage(String),
    /// The request conflicts with the resource's state (an extended query tag that exists, or
    /// whose operation still runs); the message says which.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// A data partition cannot be used as the request says (partitions disabled or required, a
    /// name Azure's rules refuse, a partition that does not exist): 400 with Azure's code.
    #[error("{message}")]
    Partition {
        /// `DataPartitionsFeatureDisabled`, `DataPartitionsMissingPartition`,
        /// `InvalidPartitionName` or `DataPartitionNotFound`.
        code: &'static str,
        /// What is wrong (never the name the client sent).
        message: String,
    },
    /// The request's media type is not one this endpoint accepts.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// No acceptable representation can be produced; the message says what to ask for.
    #[error("{0}")]
    NotAcceptable(String),
    /// The client stopped sending its request (body idle timeout).
    #[error("{0}")]
    RequestTimeout(String),
    /// The request body is larger than the configured limit.
    #[error("request body exceeds the limit of {0} bytes")]
    PayloadTooLarge(u64),
    /// The service cannot reach its data (e.g. lost access to its encryption key); the code and
    /// message say what to do.
    #[error("{message}")]
    Unavailable {
        /// A stable error code, e.g. `CustomerManagedKeyAccessLost`.
        code: &'static str,
        /// What happened and what to do.
        message: String,
    },
    /// The caller is not authenticated (401) or not allowed (403).
    #[error("{}", .0.message)]
    Refused(crate::service::AccessRefusal),
    /// Stored data failed its integrity check (altered, truncated or swapped); details go to the
    /// log.
    #[error("stored data failed its integrity check")]
    DataIntegrity(String),
    /// Something failed inside hds; details go to the log, not to the client.
    #[error("internal error")]
    Internal(String),
}

impl DicomWebError {
    /// Wraps an internal failure, logging its detail.
    pub fn internal(context: &'static str, error: impl std::fmt::Display) -> DicomWebError {
        DicomWebError::Internal(format!("{context}: {error}"))
    }

    /// The service's customer-managed key is not accessible, so its data cannot be read or
    /// written.
    pub fn key_access_lost() -> DicomWebError {
        DicomWebError::Unavailable {
            code: "CustomerManagedKeyAccessLost",
            message: "the DICOM service cannot access its customer-managed key; restore the \
                      managed identity's access to the key in the key vault"
                .into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            DicomWebError::ServiceNotFound => (StatusCode::NOT_FOUND, "ServiceNotFound"),
            DicomWebError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            DicomWebError::NotFoundMessage(_) => (StatusCode::NOT_FOUND, "NotFound"),
            DicomWebError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            DicomWebError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            DicomWebError::Partition { code, .. } => (StatusCode::BAD_REQUEST, code),
            DicomWebError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
            }
            DicomWebError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "NotAcceptable"),
            DicomWebError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
            DicomWebError::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "RequestTimeout"),
            DicomWebError::Unavailable { code, .. } => (StatusCode::INTERNAL_SERVER_ERROR, code),
            DicomWebError::Refused(refusal) => (refusal.status, refusal.code),
            DicomWebError::DataIntegrity(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "DataIntegrityCheckFailed",
            ),
            DicomWebError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }
}

impl From<hds_archive::ArchiveError> for DicomWebError {
    fn from(error: hds_archive::ArchiveError) -> Self {
        match error {
            hds_archive::ArchiveError::NotFound(what) => DicomWebError::NotFound(what),
            hds_archive::ArchiveError::KeyAccessLost => DicomWebError::key_access_lost(),
            hds_archive::ArchiveError::PartitionLimit => DicomWebError::Partition {
                code: "DataPartitionLimitExceeded",
                message: format!(
                    "The DICOM service has {} data partitions, the most it may have; store into \
                     an existing partition.",
                    hds_index::MAX_PARTITIONS
                ),
            },
            hds_archive::ArchiveError::Integrity(detail) => DicomWebError::DataIntegrity(detail),
            other => DicomWebError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for DicomWebError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let DicomWebError::Internal(detail) | DicomWebError::DataIntegrity(detail) = &self {
            tracing::error!(detail = %detail, "request failed");
        }
        let body = serde_json::json!({ "error": { "code": code, "message": self.to_string() } });
        let mut response = (status, Json(body)).into_response();
        if let DicomWebError::Refused(crate::service::AccessRefusal {
            challenge: Some(challenge),
            ..
        }) = &self
            && let Ok(value) = axum::http::HeaderValue::from_str(challenge)
        {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, value);
        }
        response
    }
}
