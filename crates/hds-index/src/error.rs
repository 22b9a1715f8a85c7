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
    /// A stored value could not be decoded.
    #[error("corrupt index value: {0}")]
    Corrupt(String),
}
