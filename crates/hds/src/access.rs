//! The DICOMweb data plane's access control, answered by the identity service: a bearer token
//! for the DICOM audience, and a role granting the DICOM data action at the service's scope.

use std::future::Future;
use std::pin::Pin;

use axum::http::HeaderMap;
use hds_dicomweb::{AccessRefusal, Caller, DataAccess, DicomAccessControl};
use hds_identity::auth::{AuthenticatedPrincipal, authenticate};
use hds_identity::roles::actions;
use hds_identity::{AuthError, DICOM_AUDIENCE, Identity};

/// [`DicomAccessControl`] over [`Identity`].
pub struct IdentityDicomAccess {
    pub identity: Identity,
}

impl DicomAccessControl for IdentityDicomAccess {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, AccessRefusal>> + Send + 'a>> {
        Box::pin(async move {
            let principal = authenticate(&self.identity, headers, DICOM_AUDIENCE)
                .await
                .map_err(refusal)?;
            Ok(Caller::new(principal))
        })
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        resource_id: &'a str,
        access: DataAccess,
    ) -> Pin<Box<dyn Future<Output = Result<(), AccessRefusal>> + Send + 'a>> {
        Box::pin(async move {
            // Deny by default: a caller this access control did not authenticate has no rights.
            let principal = caller
                .downcast_ref::<AuthenticatedPrincipal>()
                .ok_or_else(|| AccessRefusal {
                    status: axum::http::StatusCode::FORBIDDEN,
                    code: "AuthorizationFailed",
                    message: "the caller was not authenticated by the identity service".into(),
                    challenge: None,
                })?;
            let action = match access {
                DataAccess::Read => actions::DICOM_READ,
                DataAccess::Write => actions::DICOM_WRITE,
                DataAccess::Delete => actions::DICOM_DELETE,
                DataAccess::ManageExtendedQueryTags => actions::DICOM_MANAGE_EXTENDED_QUERY_TAGS,
                DataAccess::Export => actions::DICOM_EXPORT,
            };
            self.identity
                .require(principal, action, resource_id, true)
                .await
                .map_err(refusal)
        })
    }
}

fn refusal(error: AuthError) -> AccessRefusal {
    let challenge = match &error {
        AuthError::Unauthenticated { challenge, .. } => Some(challenge.clone()),
        _ => None,
    };
    AccessRefusal {
        status: error.status(),
        code: error.code(),
        message: error.to_string(),
        challenge,
    }
}
