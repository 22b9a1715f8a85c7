//! Index errors.

/// Why an index operation failed. Messages never carry stored values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// The database failed.
    #[error("index database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Opening or migrating the database failed.
    #[error("index database setup failed: {0}")]
    Setup(#[from] hds_db::DbError),
    /// A sealed value did not open: it was altered, moved, or sealed under another key.
    #[error("index value failed its integrity check")]
    Integrity,
    /// The index URL is neither `sqlite:` nor `postgres:`.
    #[error("unsupported index URL (expected sqlite:PATH or postgres://...)")]
    UnsupportedUrl,
    /// The service's keys are not in memory: access to its customer-managed key was lost (or
    /// the service was never unlocked). Nothing can be read or written until it is back.
    #[error("the service's encryption keys are not available")]
    KeysUnavailable,
    /// A key operation of the service's keyring failed.
    #[error(transparent)]
    Keyring(#[from] crate::keyring::KeyringError),
    /// The index's writer task is gone (the runtime is shutting down); the store was not
    /// recorded.
    #[error("the index writer stopped")]
    WriterStopped,
    /// What the row depends on did not become durable (its blob's sync failed): the row was
    /// not recorded.
    #[error("the instance's data did not reach stable storage: {0}")]
    NotDurable(String),
    /// The service has [`crate::MAX_PARTITIONS`] data partitions already; no new one is made.
    #[error("the DICOM service has the most data partitions it may have")]
    PartitionLimit,
    /// A stored value could not be decoded.
    #[error("corrupt index value: {0}")]
    Corrupt(String),
}
