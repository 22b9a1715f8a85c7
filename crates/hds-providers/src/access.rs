//! Control-plane authentication and RBAC over the identity service.

use hds_arm::{ArmAccessControl, ArmError, ArmFuture, Caller, ResourceId};
use hds_identity::auth::{AuthError, authenticate};
use hds_identity::{Decision, Identity, MANAGEMENT_AUDIENCE};
use http::HeaderMap;

/// [`ArmAccessControl`] over [`Identity`]: bearer tokens for `https://management.azure.com`,
/// and [`Identity::authorize`] of each ARM operation at its scope (role assignments inherit
/// downward, so an Owner of the subscription may do everything in it).
#[derive(Debug, Clone)]
pub struct IdentityAccessControl {
    identity: Identity,
}

impl IdentityAccessControl {
    /// Access control backed by `identity`.
    pub fn new(identity: Identity) -> IdentityAccessControl {
        IdentityAccessControl { identity }
    }

    /// `{base}/{tenant}`: where a client gets a token (the `authorization_uri` of the 401
    /// challenge).
    async fn authority(&self) -> String {
        let base = &self.identity.config().base_url;
        match self.identity.default_tenant().await {
            Ok(tenant) => format!("{base}/{tenant}"),
            Err(_) => base.clone(),
        }
    }
}

impl ArmAccessControl for IdentityAccessControl {
    fn authenticate<'a>(&'a self, headers: &'a HeaderMap) -> ArmFuture<'a, Caller> {
        Box::pin(async move {
            match authenticate(&self.identity, headers, MANAGEMENT_AUDIENCE).await {
                Ok(principal) => {
                    let tenant_id = match principal.tenant_id {
                        Some(tenant) => tenant,
                        None => self
                            .identity
                            .default_tenant()
                            .await
                            .map_err(|error| ArmError::internal(&error))?,
                    };
                    Ok(Caller {
                        principal_id: principal.principal_id,
                        tenant_id,
                    })
                }
                Err(error @ AuthError::Unauthenticated { .. }) => {
                    let authority = self.authority().await;
                    Err(ArmError::unauthenticated(
                        error.code(),
                        error.to_string(),
                        &authority,
                    ))
                }
                Err(error) => Err(ArmError::internal(&error)),
            }
        })
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        action: &'a str,
        scope: &'a ResourceId,
    ) -> ArmFuture<'a, ()> {
        Box::pin(async move {
            match self
                .identity
                .authorize(&caller.principal_id, action, scope.as_str(), false)
                .await
            {
                Ok(Decision::Allow) => Ok(()),
                Ok(Decision::Deny(_)) => Err(ArmError::authorization_failed(
                    &caller.principal_id,
                    action,
                    scope.as_str(),
                )),
                Err(error) => Err(ArmError::internal(&error)),
            }
        })
    }
}
