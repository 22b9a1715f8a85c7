//! Error types. Messages name what failed, never secrets, tokens or key bytes.

/// Why an identity operation (principals, role assignments, bootstrap, signing keys) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] hds_db::DbError),
    /// A root-key operation failed (a sealed signing key did not open).
    #[error("root key: {0}")]
    RootKey(#[from] hds_crypto::root::RootKeyError),
    /// Key generation or signing failed inside the crypto library.
    #[error("cryptographic operation failed")]
    Crypto,
    /// Stored data could not be read back (for example a malformed sealed key).
    #[error("stored identity data is unreadable: {0}")]
    Corrupt(&'static str),
    /// No tenant exists yet: [`crate::Identity::bootstrap`] has not run.
    #[error("the identity store has no tenant yet (bootstrap has not run)")]
    NotBootstrapped,
    /// The principal does not exist (or is not of the kind the operation needs).
    #[error("principal not found")]
    PrincipalNotFound,
    /// The role definition id names no known role.
    #[error("role definition not found")]
    RoleDefinitionNotFound,
    /// A scope or resource id is not an absolute ARM path.
    #[error("invalid scope: {0}")]
    InvalidScope(String),
    /// An argument is malformed (for example a role assignment name that is not a GUID).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The same principal already holds the same role at the same scope under another name.
    #[error("the role assignment already exists: {existing_id}")]
    RoleAssignmentExists {
        /// The id of the assignment that already grants it.
        existing_id: String,
    },
    /// An assignment with this name exists with a different scope, role or principal; role
    /// assignments cannot be updated.
    #[error("a role assignment with this name exists with different properties")]
    RoleAssignmentUpdateNotPermitted,
    /// No application has this object id or app id.
    #[error("application not found")]
    ApplicationNotFound,
    /// The object exists already (an application's second service principal).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The operation does not apply to this object (deleting a managed identity through Graph).
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// A count limit would be exceeded (applications per tenant, credentials per object).
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The client secret matched a credential that has expired or is not valid yet.
    #[error("the client secret has expired")]
    ClientSecretExpired,
    /// Reading or writing a file (admin.json) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

impl From<sqlx::Error> for IdentityError {
    fn from(error: sqlx::Error) -> Self {
        IdentityError::Database(hds_db::DbError::Sqlx(error))
    }
}

/// Why a bearer token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a well-formed compact JWS with JSON header and claims.
    #[error("the token is malformed")]
    Malformed,
    /// The `iss` claim names no issuer this platform trusts.
    #[error("the token's issuer is not trusted")]
    UntrustedIssuer,
    /// No key of the issuer has the token's `kid`.
    #[error("the token's signing key is unknown")]
    UnknownSigningKey,
    /// The header's algorithm is not the key's, or the signature does not verify.
    #[error("the token's signature is invalid")]
    InvalidSignature,
    /// The token is longer than [`crate::tokens::MAX_TOKEN_BYTES`].
    #[error("the token is longer than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A required claim is missing.
    #[error("the token has no '{0}' claim")]
    MissingClaim(&'static str),
    /// An identity claim is longer than [`crate::tokens::MAX_CLAIM_BYTES`].
    #[error("the token's '{claim}' claim is longer than {limit} bytes")]
    ClaimTooLarge {
        /// The claim.
        claim: &'static str,
        /// The limit.
        limit: usize,
    },
    /// The token is valid for longer than [`crate::tokens::MAX_TOKEN_LIFETIME_SECONDS`].
    #[error("the token is valid for longer than {limit_seconds} seconds")]
    LifetimeTooLong {
        /// The limit.
        limit_seconds: i64,
    },
    /// `exp` is in the past.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` is not the resource this endpoint serves.
    #[error("the token's audience is not {expected}")]
    WrongAudience {
        /// The audience the endpoint expects.
        expected: String,
    },
    /// The principal the token was issued to no longer exists.
    #[error("the token's principal no longer exists")]
    PrincipalDeleted,
    /// Validation could not complete because storage failed.
    #[error("token validation failed: {0}")]
    Internal(String),
}

impl From<IdentityError> for TokenError {
    fn from(error: IdentityError) -> Self {
        TokenError::Internal(error.to_string())
    }
}
