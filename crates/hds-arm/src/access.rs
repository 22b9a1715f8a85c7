//! Authentication and authorization hooks. The control plane asks; an implementation over
//! the identity service answers. [`AllowAll`] answers yes, for tests and single-user setups.

use http::HeaderMap;

use crate::id::ResourceId;
use crate::provider::ArmFuture;

/// The audience management tokens must carry.
pub const MANAGEMENT_AUDIENCE: &str = "https://management.azure.com";

/// Who is calling: the object id of a user, service principal or managed identity, and its
/// tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The principal's object id.
    pub principal_id: String,
    /// The tenant the token was issued by.
    pub tenant_id: String,
}

/// Authentication and RBAC for control-plane requests.
///
/// Actions are ARM operation names: `{ResourceType}/read|write|delete` (for example
/// `Microsoft.KeyVault/vaults/write`), `{ResourceType}/{action}/action` for POST actions,
/// `Microsoft.Resources/deployments/write`,
/// `Microsoft.Resources/subscriptions/resourceGroups/write`,
/// `Microsoft.Resources/subscriptions/resourceGroups/moveResources/action`.
pub trait ArmAccessControl: Send + Sync + 'static {
    /// Checks the request's bearer token (audience [`MANAGEMENT_AUDIENCE`]). Fails with
    /// [`ArmError::unauthenticated`](crate::ArmError::unauthenticated) (401 and a `WWW-Authenticate` challenge).
    fn authenticate<'a>(&'a self, headers: &'a HeaderMap) -> ArmFuture<'a, Caller>;

    /// Checks that `caller` may perform `action` at `scope`. Fails with
    /// [`ArmError::authorization_failed`](crate::ArmError::authorization_failed) (403).
    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        action: &'a str,
        scope: &'a ResourceId,
    ) -> ArmFuture<'a, ()>;
}

/// Lets everyone do everything, as one fixed caller. Never for a listener others can reach.
#[derive(Debug, Clone)]
pub struct AllowAll {
    caller: Caller,
}

impl AllowAll {
    /// Every request is made by `caller`.
    pub fn new(caller: Caller) -> AllowAll {
        AllowAll { caller }
    }
}

impl ArmAccessControl for AllowAll {
    fn authenticate<'a>(&'a self, _headers: &'a HeaderMap) -> ArmFuture<'a, Caller> {
        let caller = self.caller.clone();
        Box::pin(async move { Ok(caller) })
    }

    fn authorize<'a>(
        &'a self,
        _caller: &'a Caller,
        _action: &'a str,
        _scope: &'a ResourceId,
    ) -> ArmFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}
