//! What can go wrong between hds and a key vault, typed so that callers can tell lost access
//! (retry, start the 30-minute clock) from a wrong configuration (tell the user what to fix).

use crate::url::KeyUrlError;

/// Which rule a vault's 403 came from. Key Vault says so in `error.innererror.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForbiddenReason {
    /// RBAC: no role assignment grants the data action (`ForbiddenByRbac`).
    Rbac,
    /// Access policies: the principal lacks the key permission (`AccessDenied`).
    AccessPolicy,
    /// The vault's firewall refused the caller (`ForbiddenByFirewall`).
    Firewall,
    /// The key's `key_ops` do not include the operation (`KeyOperationForbidden`).
    KeyOperation,
    /// Any other 403.
    Other,
}

/// Why a call to the key vault, or for its token, failed. Messages carry the vault's own
/// explanation (principal ids, scopes, actions), never a token or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmkError {
    /// The key URL is malformed.
    #[error(transparent)]
    InvalidKeyUrl(#[from] KeyUrlError),
    /// The managed identity (principal) does not exist or is disabled, so no token can be had.
    #[error("managed identity {principal_id} does not exist or is disabled")]
    ManagedIdentityNotFound {
        /// The principal's object id.
        principal_id: String,
    },
    /// No token could be obtained for another reason (the identity service is down, say).
    #[error("no access token could be obtained: {0}")]
    TokenUnavailable(String),
    /// The vault refused the token (401).
    #[error("the key vault refused the access token: {message}")]
    Unauthorized {
        /// The vault's message.
        message: String,
        /// The vault says the token is from another tenant (`AKV10032: Invalid issuer`).
        tenant_mismatch: bool,
    },
    /// The vault refused the operation (403).
    #[error("the key vault denied the operation ({reason:?}): {message}")]
    Forbidden {
        /// Which rule refused it.
        reason: ForbiddenReason,
        /// The vault's message.
        message: String,
    },
    /// The key, or that version of it, does not exist (404), or the vault does not.
    #[error("key not found: {message}")]
    KeyNotFound {
        /// The vault's message.
        message: String,
    },
    /// The key version is disabled.
    #[error("the key is disabled: {message}")]
    KeyDisabled {
        /// The vault's message.
        message: String,
    },
    /// The key version's `nbf` is in the future.
    #[error("the key is not yet valid (nbf is in the future): {message}")]
    KeyNotYetValid {
        /// The vault's message.
        message: String,
    },
    /// The key version's `exp` has passed.
    #[error("the key has expired: {message}")]
    KeyExpired {
        /// The vault's message.
        message: String,
    },
    /// The vault found the request malformed (400): an unsupported algorithm, say.
    #[error("the key vault refused the request: {message}")]
    BadRequest {
        /// The vault's message.
        message: String,
    },
    /// The vault could not be reached: DNS, connection, TLS, or a timeout.
    #[error("the key vault could not be reached: {0}")]
    Network(String),
    /// The vault answered with a server error or asked us to slow down (429, 5xx).
    #[error("the key vault answered with HTTP {status}: {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The vault's message, if any.
        message: String,
    },
    /// The vault's answer did not have the expected shape.
    #[error("the key vault's response is not valid: {0}")]
    InvalidResponse(String),
    /// The key URL names a host a managed identity's token may not be sent to; refused before
    /// any connection (see [`crate::destination`]).
    #[error(
        "the key vault host {host} is not allowed: {rule}",
        rule = crate::destination::TOKEN_DESTINATION_RULE
    )]
    DestinationNotAllowed {
        /// The refused `host[:port]`.
        host: String,
    },
    /// The client could not be set up (an unreadable CA file, say).
    #[error("key vault client configuration: {0}")]
    Configuration(String),
}

impl CmkError {
    /// Whether the failure is the vault or the network being unavailable, as opposed to the
    /// vault answering that access is refused or the key is unusable.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, CmkError::Network(_) | CmkError::Server { .. })
    }

    /// A fixed word for the failure, for metrics: never a message (which may name a key).
    pub fn outcome_label(&self) -> &'static str {
        match self {
            CmkError::InvalidKeyUrl(_) => "invalid_key_url",
            CmkError::ManagedIdentityNotFound { .. } | CmkError::TokenUnavailable(_) => {
                "token_unavailable"
            }
            CmkError::Unauthorized { .. } => "unauthorized",
            CmkError::Forbidden { .. } => "forbidden",
            CmkError::KeyNotFound { .. } => "key_not_found",
            CmkError::KeyDisabled { .. }
            | CmkError::KeyNotYetValid { .. }
            | CmkError::KeyExpired { .. } => "key_unusable",
            CmkError::BadRequest { .. } => "bad_request",
            CmkError::Network(_) => "network",
            CmkError::Server { .. } => "server_error",
            CmkError::InvalidResponse(_) => "invalid_response",
            CmkError::DestinationNotAllowed { .. } => "destination_not_allowed",
            CmkError::Configuration(_) => "configuration",
        }
    }
}

/// Keeps at most this many characters of a message that came from elsewhere.
pub(crate) const MAX_MESSAGE_CHARS: usize = 1000;

/// `message` cut to [`MAX_MESSAGE_CHARS`] characters.
pub(crate) fn bounded(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        message.to_owned()
    } else {
        let mut cut: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
        cut.push('…');
        cut
    }
}
