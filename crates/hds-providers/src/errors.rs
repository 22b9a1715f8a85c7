//! The ARM errors these providers produce, and the mapping of the identity and vault errors.
//!
//! ARM clients branch on the code, so each rule a request can break has its own code
//! (listed in `docs/control-plane.md`); messages say what to change.

use hds_arm::ArmError;
use hds_identity::IdentityError;
use hds_keyvault::VaultError;
use http::StatusCode;

/// A 400 with `code`.
pub(crate) fn bad_request(code: &str, message: impl Into<String>) -> ArmError {
    ArmError::new(StatusCode::BAD_REQUEST, code, message)
}

/// A 405: the type does not support the method.
pub(crate) fn not_supported(message: impl Into<String>) -> ArmError {
    ArmError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
}

/// An operation a provider does not offer: a future that answers [`not_supported`].
pub(crate) fn refused(
    message: &'static str,
) -> hds_arm::ArmFuture<'static, hds_arm::ProviderResponse> {
    Box::pin(async move { Err(not_supported(message)) })
}

/// 400 `LocationRequired`.
pub(crate) fn location_required() -> ArmError {
    bad_request(
        "LocationRequired",
        "The location property is required for this definition.",
    )
}

/// An identity-service failure as an ARM error: argument errors are the client's, the rest
/// are internal (logged, not shown).
pub(crate) fn from_identity(error: IdentityError) -> ArmError {
    match error {
        IdentityError::RoleDefinitionNotFound => bad_request(
            "RoleDefinitionDoesNotExist",
            "The specified role definition does not exist. Use the GUID of a built-in role (GET .../providers/Microsoft.Authorization/roleDefinitions lists them).",
        ),
        IdentityError::RoleAssignmentExists { existing_id } => ArmError::new(
            StatusCode::CONFLICT,
            "RoleAssignmentExists",
            format!(
                "The role assignment already exists. The ID of the existing role assignment is {existing_id}."
            ),
        ),
        IdentityError::RoleAssignmentUpdateNotPermitted => ArmError::new(
            StatusCode::CONFLICT,
            "RoleAssignmentUpdateNotPermitted",
            "Tenant ID, application ID, principal ID, and scope are not allowed to be updated. Delete the role assignment and create it again, or use another name.",
        ),
        IdentityError::InvalidScope(message) => bad_request("InvalidScope", message),
        IdentityError::InvalidArgument(message) => bad_request("InvalidRequestContent", message),
        IdentityError::PrincipalNotFound => {
            bad_request("PrincipalNotFound", "The principal does not exist.")
        }
        other => ArmError::internal(&other),
    }
}

/// A vault-service failure as an ARM error.
pub(crate) fn from_vault(error: VaultError) -> ArmError {
    match error {
        VaultError::BadParameter(message) => bad_request("BadRequest", message),
        VaultError::Conflict(message) => ArmError::new(StatusCode::CONFLICT, "Conflict", message),
        VaultError::VaultNotFound(_) | VaultError::KeyNotFound(_) => ArmError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            error.public_message(),
        ),
        other if other.status().is_client_error() => {
            ArmError::new(other.status(), other.code(), other.public_message())
        }
        other => ArmError::internal(&other),
    }
}
