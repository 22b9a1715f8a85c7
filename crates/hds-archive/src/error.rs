//! The errors of the archive.

/// Why an archive operation failed. Messages never carry values from instances; the detail
/// of an integrity or internal failure is for the log, not for a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The study, series, instance or frame does not exist; the text names which.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The service's keys are not in memory (access to its customer-managed key was lost), so
    /// its data can be neither read nor written.
    #[error("the service's encryption keys are not available")]
    KeyAccessLost,
    /// Stored data failed its integrity check (altered, truncated, swapped or replayed).
    #[error("stored data failed its integrity check: {0}")]
    Integrity(String),
    /// The service has the most data partitions it may have; a store naming a new one is
    /// refused.
    #[error("the DICOM service has the most data partitions it may have")]
    PartitionLimit,
    /// Something failed inside hds.
    #[error("{0}")]
    Internal(String),
}

impl ArchiveError {
    /// An internal failure with its context.
    pub(crate) fn internal(context: &'static str, error: impl std::fmt::Display) -> ArchiveError {
        ArchiveError::Internal(format!("{context}: {error}"))
    }
}

impl From<hds_index::IndexError> for ArchiveError {
    fn from(error: hds_index::IndexError) -> Self {
        match error {
            hds_index::IndexError::KeysUnavailable => ArchiveError::KeyAccessLost,
            hds_index::IndexError::PartitionLimit => ArchiveError::PartitionLimit,
            hds_index::IndexError::Keyring(error) => error.into(),
            hds_index::IndexError::Integrity => ArchiveError::Integrity("index value".into()),
            hds_index::IndexError::Corrupt(detail) => {
                ArchiveError::Integrity(format!("index row: {detail}"))
            }
            other => ArchiveError::internal("index", other),
        }
    }
}

impl From<hds_index::KeyringError> for ArchiveError {
    fn from(error: hds_index::KeyringError) -> Self {
        if error.is_key_access_lost() {
            tracing::warn!(error = %error, "customer-managed key not accessible");
            return ArchiveError::KeyAccessLost;
        }
        match error {
            hds_index::KeyringError::Integrity(_) => {
                ArchiveError::Integrity(format!("keyring: {error}"))
            }
            other => ArchiveError::internal("keyring", other),
        }
    }
}

impl From<hds_blob::BlobError> for ArchiveError {
    fn from(error: hds_blob::BlobError) -> Self {
        match error {
            hds_blob::BlobError::Integrity(_) => ArchiveError::Integrity(format!("blob: {error}")),
            other => ArchiveError::internal("blob store", other),
        }
    }
}
