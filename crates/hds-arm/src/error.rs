//! The ARM error: an HTTP status, a wire code and a message, rendered as
//! `{"error":{"code","message","details":[...]}}`.
//!
//! ARM's contract is the *code* (clients branch on it), so the error is a value carrying one
//! rather than an enum of every code an RP may invent. The constructors below are the codes
//! this crate itself produces; providers use [`ArmError::new`] for theirs.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

use crate::id::ResourceId;

/// An error as ARM returns it. Messages must not carry secrets, tokens or patient data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ArmError {
    status: StatusCode,
    code: String,
    message: String,
    details: Vec<ArmError>,
    www_authenticate: Option<String>,
}

impl ArmError {
    /// An error with any status and code.
    pub fn new(
        status: StatusCode,
        code: impl Into<String>,
        message: impl Into<String>,
    ) -> ArmError {
        ArmError {
            status,
            code: code.into(),
            message: message.into(),
            details: Vec::new(),
            www_authenticate: None,
        }
    }

    /// Adds inner errors (`details`), e.g. the failed operation of a deployment.
    pub fn with_details(mut self, details: Vec<ArmError>) -> ArmError {
        self.details = details;
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The wire code, e.g. `ResourceNotFound`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The inner errors.
    pub fn details(&self) -> &[ArmError] {
        &self.details
    }

    /// The `{code, message, details}` object (without the outer `error` wrapper), as it
    /// appears in operation statuses and deployment errors.
    pub fn to_json(&self) -> Value {
        json!({
            "code": self.code,
            "message": self.message,
            "details": self.details.iter().map(ArmError::to_json).collect::<Vec<_>>(),
        })
    }

    /// Reads an error back from [`to_json`](Self::to_json) output (status defaults to 400).
    pub fn from_json(value: &Value) -> ArmError {
        let text = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let details = value
            .get("details")
            .and_then(Value::as_array)
            .map(|details| details.iter().map(ArmError::from_json).collect())
            .unwrap_or_default();
        ArmError::new(StatusCode::BAD_REQUEST, text("code"), text("message")).with_details(details)
    }

    /// 400 `MissingApiVersionParameter`.
    pub fn missing_api_version() -> ArmError {
        ArmError::new(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        )
    }

    /// 400 `InvalidApiVersionParameter`.
    pub fn invalid_api_version(given: &str) -> ArmError {
        ArmError::new(
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            format!(
                "The api-version '{}' is invalid. The supported versions are of the form 'YYYY-MM-DD' or 'YYYY-MM-DD-preview'.",
                truncate(given)
            ),
        )
    }

    /// 404 `ResourceNotFound`.
    pub fn resource_not_found(id: &ResourceId) -> ArmError {
        let group = id.resource_group_name().unwrap_or_default();
        ArmError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!(
                "The Resource '{}' under resource group '{group}' was not found.",
                id.resource_type()
                    .map(|resource_type| format!("{resource_type}/{}", id.qualified_name()))
                    .unwrap_or_default()
            ),
        )
    }

    /// 404 `ResourceGroupNotFound`.
    pub fn resource_group_not_found(group: &str) -> ArmError {
        ArmError::new(
            StatusCode::NOT_FOUND,
            "ResourceGroupNotFound",
            format!("Resource group '{group}' could not be found."),
        )
    }

    /// 404 `SubscriptionNotFound`.
    pub fn subscription_not_found(subscription: &str) -> ArmError {
        ArmError::new(
            StatusCode::NOT_FOUND,
            "SubscriptionNotFound",
            format!("The subscription '{subscription}' could not be found."),
        )
    }

    /// 404 `ParentResourceNotFound`.
    pub fn parent_not_found(parent: &ResourceId) -> ArmError {
        ArmError::new(
            StatusCode::NOT_FOUND,
            "ParentResourceNotFound",
            format!(
                "Can not perform requested operation on nested resource. Parent resource '{}' not found.",
                parent.qualified_name()
            ),
        )
    }

    /// 400 `InvalidRequestContent`.
    pub fn invalid_request_content(message: impl Into<String>) -> ArmError {
        ArmError::new(StatusCode::BAD_REQUEST, "InvalidRequestContent", message)
    }

    /// 400 `InvalidTemplate`.
    pub fn invalid_template(message: impl Into<String>) -> ArmError {
        ArmError::new(StatusCode::BAD_REQUEST, "InvalidTemplate", message)
    }

    /// 400 `NoRegisteredProviderFound`, listing what is registered.
    pub fn no_registered_provider(resource_type: &str, registered: &[String]) -> ArmError {
        ArmError::new(
            StatusCode::BAD_REQUEST,
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for resource type '{resource_type}'. The supported resource types are '{}'.",
                registered.join(", ")
            ),
        )
    }

    /// 401 `AuthenticationFailed` (or `InvalidAuthenticationToken`) with the
    /// `WWW-Authenticate: Bearer authorization_uri="...", error="invalid_token", ...` header
    /// clients use to find the token endpoint.
    pub fn unauthenticated(
        code: &str,
        message: impl Into<String>,
        authorization_uri: &str,
    ) -> ArmError {
        let mut error = ArmError::new(StatusCode::UNAUTHORIZED, code, message);
        error.www_authenticate = Some(format!(
            "Bearer authorization_uri=\"{authorization_uri}\", error=\"invalid_token\", error_description=\"The authentication failed because of missing or invalid credentials.\""
        ));
        error
    }

    /// 403 `AuthorizationFailed`, worded as ARM words it.
    pub fn authorization_failed(principal_id: &str, action: &str, scope: &str) -> ArmError {
        ArmError::new(
            StatusCode::FORBIDDEN,
            "AuthorizationFailed",
            format!(
                "The client '{principal_id}' with object id '{principal_id}' does not have authorization to perform action '{action}' over scope '{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials."
            ),
        )
    }

    /// 403 `LinkedAuthorizationFailed`: the caller may write the resource but not use a
    /// resource it links to.
    pub fn linked_authorization_failed(principal_id: &str, action: &str, scope: &str) -> ArmError {
        ArmError::new(
            StatusCode::FORBIDDEN,
            "LinkedAuthorizationFailed",
            format!(
                "The client '{principal_id}' has permission to perform the requested action but does not have permission to perform action '{action}' on linked scope '{scope}'."
            ),
        )
    }

    /// 409 `Conflict`.
    pub fn conflict(message: impl Into<String>) -> ArmError {
        ArmError::new(StatusCode::CONFLICT, "Conflict", message)
    }

    /// 500 `InternalServerError`: the detail goes to the log, not the client.
    pub fn internal(detail: &dyn std::fmt::Display) -> ArmError {
        tracing::error!(error = %detail, "internal control-plane error");
        ArmError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            "The server encountered an internal error.",
        )
    }

    /// 405 `MethodNotAllowed`.
    pub fn method_not_allowed() -> ArmError {
        ArmError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The requested method is not allowed on this resource.",
        )
    }

    /// 404 for a path that is no ARM route at all.
    pub fn route_not_found() -> ArmError {
        ArmError::new(
            StatusCode::NOT_FOUND,
            "InvalidResourceType",
            "The requested path does not name a resource, a collection or an action.",
        )
    }
}

/// Keeps echoed client input short and printable.
fn truncate(text: &str) -> String {
    crate::names::printable(text)
}

impl IntoResponse for ArmError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.to_json() });
        let mut response = (self.status, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert("x-ms-failure-cause", HeaderValue::from_static("gateway"));
        if let Some(challenge) = &self.www_authenticate
            && let Ok(value) = HeaderValue::from_str(challenge)
        {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

impl From<crate::store::StoreError> for ArmError {
    fn from(error: crate::store::StoreError) -> Self {
        ArmError::internal(&error)
    }
}
