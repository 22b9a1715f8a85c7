//! `Microsoft.ManagedIdentity/userAssignedIdentities`: a principal of its own that resources
//! (DICOM services) attach and act as.

use hds_arm::{
    ArmError, ArmFuture, ProviderResponse, PutRequest, RequestContext, ResourceId, ResourceProvider,
};
use hds_identity::Identity;
use hds_identity::principals::ManagedIdentityKind;
use serde_json::{Value, json};

use crate::errors::{from_identity, location_required};

/// The resource type served.
pub const USER_ASSIGNED_IDENTITIES_TYPE: &str = "Microsoft.ManagedIdentity/userAssignedIdentities";

/// The user-assigned identity provider.
#[derive(Debug, Clone)]
pub struct UserAssignedIdentityProvider {
    identity: Identity,
}

impl UserAssignedIdentityProvider {
    /// A provider creating principals in `identity`.
    pub fn new(identity: Identity) -> UserAssignedIdentityProvider {
        UserAssignedIdentityProvider { identity }
    }

    /// Stores the resource with the principal's ids as its read-only properties.
    async fn store(
        &self,
        context: &RequestContext,
        id: &ResourceId,
        request: PutRequest,
    ) -> Result<Value, ArmError> {
        let principal = self
            .identity
            .create_managed_identity(ManagedIdentityKind::UserAssigned, id.as_str())
            .await
            .map_err(from_identity)?;
        let request = PutRequest {
            properties: json!({
                "tenantId": principal.tenant_id,
                "principalId": principal.principal_id,
                "clientId": principal.client_id,
            }),
            identity: None,
            ..request
        };
        let resource = context.store.put_succeeded(id, &request).await?;
        Ok(resource.to_json())
    }
}

impl ResourceProvider for UserAssignedIdentityProvider {
    fn resource_types(&self) -> Vec<&'static str> {
        vec![USER_ASSIGNED_IDENTITIES_TYPE]
    }

    fn api_versions(&self) -> Vec<&'static str> {
        vec!["2023-01-31"]
    }

    /// Creates the identity's principal on first PUT; later PUTs keep its ids (tags and
    /// location may change).
    fn put(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            let request = PutRequest::parse(&body)?;
            if request.location.is_none() {
                return Err(location_required());
            }
            let value = self.store(&context, &id, request).await?;
            Ok(ProviderResponse::Completed(value))
        })
    }

    /// Deletes the principal (its tokens stop validating at once, its role assignments go)
    /// and the resource.
    fn delete(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            self.identity
                .delete_managed_identity(ManagedIdentityKind::UserAssigned, id.as_str())
                .await
                .map_err(from_identity)?;
            if context.store.delete(&id).await? {
                Ok(ProviderResponse::Completed(Value::Null))
            } else {
                Ok(ProviderResponse::NoContent)
            }
        })
    }

    /// A managed identity is tied to its resource id, so a moved identity is a new principal:
    /// the old one is deleted (with its role assignments) and whatever used it must be given
    /// access again and updated, as the seed document warns.
    fn on_moved(
        &self,
        context: RequestContext,
        old_id: ResourceId,
        new_id: ResourceId,
    ) -> ArmFuture<'_, ()> {
        Box::pin(async move {
            self.identity
                .delete_managed_identity(ManagedIdentityKind::UserAssigned, old_id.as_str())
                .await
                .map_err(from_identity)?;
            let Some(resource) = context.store.get(&new_id).await? else {
                return Ok(());
            };
            let request = PutRequest {
                location: resource.location,
                tags: resource.tags,
                identity: None,
                properties: resource.properties,
                sku: resource.sku,
                kind: resource.kind,
            };
            self.store(&context, &new_id, request).await?;
            Ok(())
        })
    }
}
