//! The control-plane core: subscriptions, resource groups, dispatch to providers, async
//! operations and moves. HTTP lives in [`crate::http`]; this module knows nothing of paths.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use hds_db::Database;
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::access::{ArmAccessControl, Caller};
use crate::error::ArmError;
use crate::id::ResourceId;
use crate::provider::{ProviderRegistry, ProviderResponse, RequestContext, ResourceProvider};
use crate::store::{Operation, OperationStatus, PutRequest, Resource, ResourceStore, StoreError};

/// The API versions of `Microsoft.Resources` modelled here, newest first; also what the
/// provider lookup shows for a type whose provider names none.
pub(crate) const RESOURCES_API_VERSIONS: &[&str] = &["2022-09-01", "2021-04-01"];

/// The built-in deployments type.
pub const DEPLOYMENTS_TYPE: &str = "Microsoft.Resources/deployments";
/// The operations recorded under a deployment.
pub(crate) const DEPLOYMENT_OPERATIONS_TYPE: &str = "Microsoft.Resources/deployments/operations";
const RESOURCE_GROUP_WRITE: &str = "Microsoft.Resources/subscriptions/resourceGroups/write";
const RESOURCE_GROUP_READ: &str = "Microsoft.Resources/subscriptions/resourceGroups/read";
const RESOURCE_GROUP_DELETE: &str = "Microsoft.Resources/subscriptions/resourceGroups/delete";
const MOVE_ACTION: &str = "Microsoft.Resources/subscriptions/resourceGroups/moveResources/action";

/// A subscription this control plane serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The subscription id (a GUID by convention).
    pub subscription_id: String,
    /// Its display name.
    pub display_name: String,
}

/// What the control plane serves.
#[derive(Debug, Clone)]
pub struct ArmConfig {
    /// The one tenant.
    pub tenant_id: String,
    /// The subscriptions; any other subscription id answers `SubscriptionNotFound`.
    pub subscriptions: Vec<Subscription>,
    /// The externally visible base URL (e.g. `https://127.0.0.1:8080`) for the absolute URLs
    /// of `Azure-AsyncOperation` and `Location` headers. When `None`, they are built from the
    /// request's `Host` header with `http://`.
    pub public_base_url: Option<String>,
}

/// Builds an [`Arm`]: register providers, then [`build`](ArmBuilder::build).
pub struct ArmBuilder {
    database: Database,
    config: ArmConfig,
    access: Arc<dyn ArmAccessControl>,
    registry: ProviderRegistry,
}

impl ArmBuilder {
    /// Registers a provider for its [`ResourceProvider::resource_types`]. A later provider
    /// for the same type replaces an earlier one.
    pub fn provider(mut self, provider: Arc<dyn ResourceProvider>) -> ArmBuilder {
        self.registry.register(provider);
        self
    }

    /// Applies the `arm` migrations and returns the control plane.
    pub async fn build(self) -> Result<Arm, StoreError> {
        let store = ResourceStore::open(self.database).await?;
        Ok(Arm {
            inner: Arc::new(Inner {
                config: self.config,
                access: self.access,
                registry: self.registry,
                store,
            }),
        })
    }
}

/// The control plane. Cheap to clone.
#[derive(Clone)]
pub struct Arm {
    inner: Arc<Inner>,
}

struct Inner {
    config: ArmConfig,
    access: Arc<dyn ArmAccessControl>,
    registry: ProviderRegistry,
    store: ResourceStore,
}

/// How a mutating call ended, for the HTTP layer to render.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Finished: status and optional body.
    Done {
        status: StatusCode,
        body: Option<Value>,
    },
    /// Running on: status, optional body, and the operation to poll (boxed: it is much
    /// larger than the other variant).
    Accepted {
        status: StatusCode,
        body: Option<Value>,
        operation: Box<Operation>,
    },
}

/// How long an operation's lease lasts; its node renews it every third of that while the
/// operation runs. A dead node's operations are finished by another node within about this
/// long plus the sweep interval.
pub const OPERATION_LEASE: Duration = Duration::from_secs(30);

/// This process's id as a lease owner.
fn node_id() -> &'static str {
    static NODE_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NODE_ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn lease_until_ms() -> i64 {
    now_ms().saturating_add(i64::try_from(OPERATION_LEASE.as_millis()).unwrap_or(i64::MAX))
}

impl Arm {
    /// Starts building a control plane over `database`.
    pub fn builder(
        database: Database,
        config: ArmConfig,
        access: Arc<dyn ArmAccessControl>,
    ) -> ArmBuilder {
        ArmBuilder {
            database,
            config,
            access,
            registry: ProviderRegistry::default(),
        }
    }

    /// The generic resource store.
    pub fn store(&self) -> &ResourceStore {
        &self.inner.store
    }

    /// The configuration.
    pub fn config(&self) -> &ArmConfig {
        &self.inner.config
    }

    pub(crate) async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ArmError> {
        self.inner.access.authenticate(headers).await
    }

    pub(crate) async fn authorize(
        &self,
        caller: &Caller,
        action: &str,
        scope: &ResourceId,
    ) -> Result<(), ArmError> {
        self.inner.access.authorize(caller, action, scope).await
    }

    pub(crate) fn context(&self, caller: &Caller, api_version: &str) -> RequestContext {
        RequestContext {
            caller: caller.clone(),
            api_version: api_version.to_owned(),
            store: self.inner.store.clone(),
            filter: None,
        }
    }

    pub(crate) fn subscription(&self, subscription_id: &str) -> Result<&Subscription, ArmError> {
        self.inner
            .config
            .subscriptions
            .iter()
            .find(|subscription| {
                subscription
                    .subscription_id
                    .eq_ignore_ascii_case(subscription_id)
            })
            .ok_or_else(|| ArmError::subscription_not_found(subscription_id))
    }

    fn subscription_json(&self, subscription: &Subscription) -> Value {
        json!({
            "id": format!("/subscriptions/{}", subscription.subscription_id),
            "subscriptionId": subscription.subscription_id,
            "tenantId": self.inner.config.tenant_id,
            "displayName": subscription.display_name,
            "state": "Enabled",
            "subscriptionPolicies": {
                "locationPlacementId": "Public_2014-09-01",
                "quotaId": "PayAsYouGo_2014-09-01",
                "spendingLimit": "Off",
            },
            "authorizationSource": "RoleBased",
        })
    }

    /// `GET /subscriptions`: those the caller may read.
    pub(crate) async fn list_subscriptions(&self, caller: &Caller) -> Result<Value, ArmError> {
        let mut values = Vec::new();
        for subscription in &self.inner.config.subscriptions {
            let scope = ResourceId::subscription(&subscription.subscription_id);
            match self
                .authorize(caller, "Microsoft.Resources/subscriptions/read", &scope)
                .await
            {
                Ok(()) => values.push(self.subscription_json(subscription)),
                Err(error) if error.status() == StatusCode::FORBIDDEN => {}
                Err(error) => return Err(error),
            }
        }
        Ok(json!({ "value": values }))
    }

    /// `GET /subscriptions/{sub}`.
    pub(crate) async fn get_subscription(
        &self,
        caller: &Caller,
        subscription_id: &str,
    ) -> Result<Value, ArmError> {
        let subscription = self.subscription(subscription_id)?;
        let scope = ResourceId::subscription(&subscription.subscription_id);
        self.authorize(caller, "Microsoft.Resources/subscriptions/read", &scope)
            .await?;
        Ok(self.subscription_json(subscription))
    }

    /// `GET /tenants`.
    pub(crate) fn list_tenants(&self) -> Value {
        let tenant = &self.inner.config.tenant_id;
        json!({ "value": [{ "id": format!("/tenants/{tenant}"), "tenantId": tenant, "tenantCategory": "Home" }] })
    }

    /// Checks that what `id` sits in exists: the subscription, the resource group, and for a
    /// child or extension resource the resource above it.
    pub(crate) async fn ensure_container(&self, id: &ResourceId) -> Result<(), ArmError> {
        self.subscription(id.subscription_id())?;
        if let Some(group) = id.resource_group_name() {
            let group_id = ResourceId::resource_group(id.subscription_id(), group);
            if group_id != *id && self.inner.store.get(&group_id).await?.is_none() {
                return Err(ArmError::resource_group_not_found(group));
            }
        }
        if let Some(parent) = id.parent()
            && parent.is_resource()
            && self.inner.store.get(&parent).await?.is_none()
        {
            return Err(ArmError::parent_not_found(&parent));
        }
        Ok(())
    }

    // ---- resource groups -------------------------------------------------------------

    pub(crate) async fn put_resource_group(
        &self,
        caller: &Caller,
        id: &ResourceId,
        body: &Value,
    ) -> Result<Outcome, ArmError> {
        self.subscription(id.subscription_id())?;
        self.authorize(caller, RESOURCE_GROUP_WRITE, id).await?;
        crate::names::check_resource_id(id)?;
        let request = PutRequest::parse(body)?;
        let Some(location) = request.location.clone() else {
            return Err(ArmError::new(
                StatusCode::BAD_REQUEST,
                "LocationRequired",
                "The location property is required for this definition.",
            ));
        };
        let existing = self.inner.store.get(id).await?;
        if let Some(existing) = &existing
            && existing
                .location
                .as_deref()
                .is_none_or(|current| normalize_location(current) != normalize_location(&location))
        {
            return Err(ArmError::new(
                StatusCode::CONFLICT,
                "InvalidResourceGroupLocation",
                format!(
                    "Invalid resource group location '{location}'. The Resource group already exists in location '{}'.",
                    existing.location.as_deref().unwrap_or_default()
                ),
            ));
        }
        let request = PutRequest {
            properties: json!({}),
            ..request
        };
        let resource = self.inner.store.put_succeeded(id, &request).await?;
        Ok(Outcome::Done {
            status: if existing.is_some() {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            },
            body: Some(resource_group_json(&resource)),
        })
    }

    pub(crate) async fn get_resource_group(
        &self,
        caller: &Caller,
        id: &ResourceId,
    ) -> Result<Value, ArmError> {
        self.subscription(id.subscription_id())?;
        self.authorize(caller, RESOURCE_GROUP_READ, id).await?;
        match self.inner.store.get(id).await? {
            Some(resource) => Ok(resource_group_json(&resource)),
            None => Err(ArmError::resource_group_not_found(id.name())),
        }
    }

    pub(crate) async fn list_resource_groups(
        &self,
        caller: &Caller,
        subscription_id: &str,
    ) -> Result<Value, ArmError> {
        let subscription = self.subscription(subscription_id)?;
        let scope = ResourceId::subscription(&subscription.subscription_id);
        self.authorize(caller, RESOURCE_GROUP_READ, &scope).await?;
        let groups = self
            .inner
            .store
            .list_children(&scope, "Microsoft.Resources/resourceGroups")
            .await?;
        Ok(json!({ "value": groups.iter().map(resource_group_json).collect::<Vec<_>>() }))
    }

    /// `GET .../resourceGroups/{rg}/resources`: the group's top-level and tracked resources
    /// the caller may read, narrowed by `$filter` and `$top`.
    pub(crate) async fn list_group_resources(
        &self,
        caller: &Caller,
        group: &ResourceId,
        filter: Option<&str>,
        top: Option<usize>,
    ) -> Result<Value, ArmError> {
        let filter = ResourceFilter::parse(filter)?;
        self.get_resource_group(caller, group).await?;
        self.list_top_level(caller, group, &filter, top).await
    }

    /// `GET /subscriptions/{sub}/resources`: the subscription's top-level and tracked
    /// resources the caller may read (each authorized on its own `{type}/read`, so a caller holding a role on
    /// one vault sees that vault and nothing else), narrowed by `$filter` and `$top`.
    pub(crate) async fn list_subscription_resources(
        &self,
        caller: &Caller,
        subscription_id: &str,
        filter: Option<&str>,
        top: Option<usize>,
    ) -> Result<Value, ArmError> {
        let filter = ResourceFilter::parse(filter)?;
        let subscription = self.subscription(subscription_id)?;
        let scope = ResourceId::subscription(&subscription.subscription_id);
        self.list_top_level(caller, &scope, &filter, top).await
    }

    async fn list_top_level(
        &self,
        caller: &Caller,
        scope: &ResourceId,
        filter: &ResourceFilter,
        top: Option<usize>,
    ) -> Result<Value, ArmError> {
        let limit = top.unwrap_or(usize::MAX);
        let mut values = Vec::new();
        for resource in self.inner.store.list_within(scope).await? {
            if values.len() >= limit {
                break;
            }
            let Some(resource_type) = resource.id.resource_type() else {
                continue;
            };
            // What ARM lists: top-level resources and tracked (located) child resources such
            // as DICOM services, not proxy resources such as a vault's keys.
            let listed = resource.location.is_some()
                || resource
                    .id
                    .parent()
                    .is_some_and(|parent| parent.is_resource_group());
            if !listed
                || !resource.id.is_resource()
                || resource_type.eq_ignore_ascii_case(DEPLOYMENTS_TYPE)
                || !filter.matches(&resource, &resource_type)
            {
                continue;
            }
            match self
                .authorize(caller, &format!("{resource_type}/read"), &resource.id)
                .await
            {
                Ok(()) => {}
                Err(error) if error.status() == StatusCode::FORBIDDEN => continue,
                Err(error) => return Err(error),
            }
            let mut value = resource.to_json();
            if let Some(object) = value.as_object_mut() {
                object.remove("properties");
            }
            values.push(value);
        }
        Ok(json!({ "value": values }))
    }

    /// `GET [/subscriptions/{sub}]/providers`: every namespace served.
    pub(crate) fn list_providers(&self, subscription_id: Option<&str>) -> Result<Value, ArmError> {
        if let Some(subscription_id) = subscription_id {
            self.subscription(subscription_id)?;
        }
        let values: Vec<Value> = self
            .inner
            .registry
            .namespaces()
            .iter()
            .map(|namespace| self.provider_json(subscription_id, namespace))
            .collect();
        Ok(json!({ "value": values }))
    }

    /// `GET [/subscriptions/{sub}]/providers/{namespace}`: the namespace's resource types
    /// with the API versions each takes (what `az resource show --ids` picks a version from).
    pub(crate) fn get_provider(
        &self,
        subscription_id: Option<&str>,
        namespace: &str,
    ) -> Result<Value, ArmError> {
        if let Some(subscription_id) = subscription_id {
            self.subscription(subscription_id)?;
        }
        let known = self
            .inner
            .registry
            .namespaces()
            .into_iter()
            .find(|candidate| candidate.eq_ignore_ascii_case(namespace))
            .ok_or_else(|| {
                ArmError::new(
                    StatusCode::NOT_FOUND,
                    "InvalidResourceNamespace",
                    format!(
                        "The resource namespace '{}' is invalid.",
                        namespace.chars().take(128).collect::<String>()
                    ),
                )
            })?;
        Ok(self.provider_json(subscription_id, &known))
    }

    fn provider_json(&self, subscription_id: Option<&str>, namespace: &str) -> Value {
        let prefix = subscription_id
            .map(|subscription| format!("/subscriptions/{subscription}"))
            .unwrap_or_default();
        let types: Vec<Value> = self
            .inner
            .registry
            .types_of(namespace)
            .into_iter()
            .map(|(resource_type, versions)| {
                json!({
                    "resourceType": resource_type,
                    "locations": [],
                    "apiVersions": versions,
                    "defaultApiVersion": versions.first(),
                    "capabilities": "None",
                })
            })
            .collect();
        json!({
            "id": format!("{prefix}/providers/{namespace}"),
            "namespace": namespace,
            "registrationState": "Registered",
            "registrationPolicy": "RegistrationRequired",
            "resourceTypes": types,
        })
    }

    pub(crate) async fn delete_resource_group(
        &self,
        caller: &Caller,
        id: &ResourceId,
        api_version: &str,
    ) -> Result<Outcome, ArmError> {
        self.subscription(id.subscription_id())?;
        self.authorize(caller, RESOURCE_GROUP_DELETE, id).await?;
        if self.inner.store.get(id).await?.is_none() {
            return Ok(Outcome::Done {
                status: StatusCode::NO_CONTENT,
                body: None,
            });
        }
        // Innermost first, so each provider sees its resources go before their parents.
        let mut contained = self.inner.store.list_within(id).await?;
        contained.reverse();
        for resource in contained {
            let Some(resource_type) = resource.id.resource_type() else {
                continue;
            };
            let Ok(provider) = self.inner.registry.find(&resource_type) else {
                continue;
            };
            let response = provider
                .delete(self.context(caller, api_version), resource.id.clone())
                .await?;
            if let ProviderResponse::Accepted { completion, .. } = response {
                completion.await?;
            }
        }
        self.inner.store.delete(id).await?;
        Ok(Outcome::Done {
            status: StatusCode::OK,
            body: None,
        })
    }

    // ---- generic resources -----------------------------------------------------------

    fn provider_for(&self, id: &ResourceId) -> Result<Arc<dyn ResourceProvider>, ArmError> {
        let resource_type = id.resource_type().unwrap_or_default();
        self.inner.registry.find(&resource_type)
    }

    /// Checks the subscription and that `caller` may do `{type}/{operation}` on `id`; returns
    /// the resource type. The first step of every operation on a provider's resource.
    async fn authorize_operation(
        &self,
        caller: &Caller,
        id: &ResourceId,
        operation: &str,
    ) -> Result<String, ArmError> {
        self.subscription(id.subscription_id())?;
        let resource_type = id.resource_type().unwrap_or_default();
        self.authorize(caller, &format!("{resource_type}/{operation}"), id)
            .await?;
        Ok(resource_type)
    }

    /// Reads a resource through its provider (authorizing `{type}/read`).
    pub async fn get_resource(
        &self,
        caller: &Caller,
        api_version: &str,
        id: &ResourceId,
    ) -> Result<Value, ArmError> {
        let resource_type = self.authorize_operation(caller, id, "read").await?;
        if is_deployment_type(&resource_type) {
            return crate::template::get_deployment_resource(self, id).await;
        }
        self.ensure_container(id).await?;
        let provider = self.provider_for(id)?;
        provider
            .get(self.context(caller, api_version), id.clone())
            .await
    }

    /// Dispatches a PUT; the provider's answer is not yet turned into a response.
    async fn put_dispatch(
        &self,
        caller: &Caller,
        api_version: &str,
        id: &ResourceId,
        body: Value,
    ) -> Result<(bool, ProviderResponse), ArmError> {
        self.authorize_operation(caller, id, "write").await?;
        let provider = self.provider_for(id)?;
        crate::names::check_resource_id(id)?;
        self.ensure_container(id).await?;
        if !body.is_object() {
            return Err(ArmError::invalid_request_content(
                "The request content must be a JSON object.",
            ));
        }
        let existed = self.inner.store.get(id).await?.is_some();
        let response = provider
            .put(self.context(caller, api_version), id.clone(), body)
            .await?;
        Ok((existed, response))
    }

    pub(crate) async fn put_resource(
        &self,
        caller: &Caller,
        api_version: &str,
        id: &ResourceId,
        body: Value,
    ) -> Result<Outcome, ArmError> {
        if is_deployment_type(&id.resource_type().unwrap_or_default()) {
            return crate::template::put_deployment(self, caller, api_version, id, body).await;
        }
        let location = body
            .get("location")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (existed, response) = self.put_dispatch(caller, api_version, id, body).await?;
        let status = if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        self.finish(response, status, id, location.as_deref(), true)
            .await
    }

    /// PUTs a resource and waits for it to finish, as a deployment does. Returns the
    /// resource as its provider reads it back, and whether it was created.
    pub(crate) async fn put_resource_and_wait(
        &self,
        caller: &Caller,
        api_version: &str,
        id: &ResourceId,
        body: Value,
    ) -> Result<(Value, bool), ArmError> {
        let (existed, response) = self.put_dispatch(caller, api_version, id, body).await?;
        match response {
            ProviderResponse::Completed(value) => Ok((value, !existed)),
            ProviderResponse::NoContent => Ok((Value::Null, !existed)),
            ProviderResponse::Accepted { completion, .. } => {
                match completion.await {
                    Ok(()) => {
                        self.inner
                            .store
                            .set_provisioning_state(id, "Succeeded")
                            .await?;
                    }
                    Err(error) => {
                        self.inner
                            .store
                            .set_provisioning_state(id, "Failed")
                            .await?;
                        return Err(error);
                    }
                }
                let provider = self.provider_for(id)?;
                let value = provider
                    .get(self.context(caller, api_version), id.clone())
                    .await?;
                Ok((value, !existed))
            }
        }
    }

    pub(crate) async fn patch_resource(
        &self,
        caller: &Caller,
        api_version: &str,
        id: &ResourceId,
        body: Value,
    ) -> Result<Outcome, ArmError> {
        let resource_type = self.authorize_operation(caller, id, "write").await?;
        if is_deployment_type(&resource_type) {
            return Err(ArmError::method_not_allowed());
        }
        let provider = self.provider_for(id)?;
        self.ensure_container(id).await?;
        let response = provider
            .patch(self.context(caller, api_version), id.clone(), body)
            .await?;
        self.finish(response, StatusCode::OK, id, None, true).await
    }

    pub(crate) async fn delete_resource(
        &self,
        caller: &Caller,
        api_version: &str,
        id: &ResourceId,
    ) -> Result<Outcome, ArmError> {
        let resource_type = self.authorize_operation(caller, id, "delete").await?;
        if is_deployment_type(&resource_type) {
            let existed = self.inner.store.delete(id).await?;
            return Ok(Outcome::Done {
                status: if existed {
                    StatusCode::OK
                } else {
                    StatusCode::NO_CONTENT
                },
                body: None,
            });
        }
        let provider = self.provider_for(id)?;
        self.ensure_container(id).await?;
        let response = provider
            .delete(self.context(caller, api_version), id.clone())
            .await?;
        self.finish(response, StatusCode::OK, id, None, false).await
    }

    pub(crate) async fn list_resources(
        &self,
        caller: &Caller,
        api_version: &str,
        parent: &ResourceId,
        resource_type: &str,
        filter: Option<&str>,
    ) -> Result<Value, ArmError> {
        self.subscription(parent.subscription_id())?;
        self.authorize(caller, &format!("{resource_type}/read"), parent)
            .await?;
        if parent.is_resource_group() && self.inner.store.get(parent).await?.is_none() {
            return Err(ArmError::resource_group_not_found(parent.name()));
        }
        if parent.is_resource() && self.inner.store.get(parent).await?.is_none() {
            return Err(ArmError::resource_not_found(parent));
        }
        if is_deployment_type(resource_type) {
            return crate::template::list_deployment_resources(self, parent, resource_type).await;
        }
        let provider = self.inner.registry.find(resource_type)?;
        let mut context = self.context(caller, api_version);
        context.filter = filter.map(str::to_owned);
        let values = provider
            .list(context, parent.clone(), resource_type.to_owned())
            .await?;
        Ok(json!({ "value": values }))
    }

    pub(crate) async fn post_action(
        &self,
        caller: &Caller,
        api_version: &str,
        id: &ResourceId,
        action: &str,
        body: Value,
    ) -> Result<Outcome, ArmError> {
        let resource_type = self
            .authorize_operation(caller, id, &format!("{action}/action"))
            .await?;
        if is_deployment_type(&resource_type) {
            return crate::template::deployment_action(self, caller, id, action, body).await;
        }
        let provider = self.provider_for(id)?;
        self.ensure_container(id).await?;
        let response = provider
            .post_action(
                self.context(caller, api_version),
                id.clone(),
                action.to_owned(),
                body,
            )
            .await?;
        self.finish(response, StatusCode::OK, id, None, false).await
    }

    /// Turns a provider's answer into an outcome, starting an operation if it is accepted.
    async fn finish(
        &self,
        response: ProviderResponse,
        done_status: StatusCode,
        id: &ResourceId,
        location: Option<&str>,
        is_write: bool,
    ) -> Result<Outcome, ArmError> {
        match response {
            ProviderResponse::Completed(Value::Null) => Ok(Outcome::Done {
                status: done_status,
                body: None,
            }),
            ProviderResponse::Completed(body) => Ok(Outcome::Done {
                status: done_status,
                body: Some(body),
            }),
            ProviderResponse::NoContent => Ok(Outcome::Done {
                status: StatusCode::NO_CONTENT,
                body: None,
            }),
            ProviderResponse::Accepted { body, completion } => {
                let operation = self
                    .start_operation(id, location, completion, is_write)
                    .await?;
                let status = if is_write {
                    done_status
                } else {
                    StatusCode::ACCEPTED
                };
                Ok(Outcome::Accepted {
                    status,
                    body,
                    operation: Box::new(operation),
                })
            }
        }
    }

    /// Records an operation and drives `completion` on a task. With `sets_state`, the
    /// resource's provisioning state follows the outcome.
    pub(crate) async fn start_operation(
        &self,
        id: &ResourceId,
        location: Option<&str>,
        completion: BoxFuture<'static, Result<(), ArmError>>,
        sets_state: bool,
    ) -> Result<Operation, ArmError> {
        let operation = Operation {
            id: uuid::Uuid::new_v4().to_string(),
            subscription: id.subscription_id().to_owned(),
            namespace: id.namespace().unwrap_or("Microsoft.Resources").to_owned(),
            location: location
                .map(normalize_location)
                .unwrap_or_else(|| "global".to_owned()),
            resource_id: id.as_str().to_owned(),
            status: OperationStatus::InProgress,
            start_time: OffsetDateTime::now_utc(),
            end_time: None,
            error: None,
        };
        self.inner.store.create_operation(&operation).await?;
        let store = self.inner.store.clone();
        let operation_id = operation.id.clone();
        store
            .lease_operation(&operation_id, node_id(), lease_until_ms(), sets_state)
            .await?;
        let resource_id = id.clone();
        tokio::spawn(async move {
            let mut completion = completion;
            // The lease is renewed while the operation runs; if this node dies, it ends and
            // another node's sweep finishes the operation (`fail_abandoned_operations`).
            let mut renew = tokio::time::interval(OPERATION_LEASE / 3);
            renew.tick().await;
            let result = loop {
                tokio::select! {
                    result = &mut completion => break result,
                    _ = renew.tick() => {
                        if let Err(error) = store
                            .lease_operation(&operation_id, node_id(), lease_until_ms(), sets_state)
                            .await
                        {
                            tracing::warn!(%error, "could not renew an operation's lease");
                        }
                    }
                }
            };
            let (status, error, state) = match &result {
                Ok(()) => (OperationStatus::Succeeded, None, "Succeeded"),
                Err(error) => (OperationStatus::Failed, Some(error.to_json()), "Failed"),
            };
            if sets_state
                && let Err(error) = store.set_provisioning_state(&resource_id, state).await
            {
                tracing::error!(%error, "could not record a provisioning state");
            }
            if let Err(error) = store
                .finish_operation(&operation_id, status, error.as_ref())
                .await
            {
                tracing::error!(%error, "could not record the end of an operation");
            }
        });
        Ok(operation)
    }

    /// Finishes the operations whose node stopped running them (their lease ended): Failed,
    /// with `OperationAbandoned` and what to do. Returns how many.
    pub async fn fail_abandoned_operations(&self) -> Result<usize, ArmError> {
        Ok(self.inner.store.fail_abandoned_operations(now_ms()).await?)
    }

    /// Runs [`Arm::fail_abandoned_operations`] every `interval`, on every node: whichever node
    /// sweeps first finishes an abandoned operation, once.
    pub fn spawn_operation_sweeper(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let arm = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            loop {
                ticks.tick().await;
                match arm.fail_abandoned_operations().await {
                    Ok(0) => {}
                    Ok(count) => tracing::warn!(
                        count,
                        "finished async operations whose node stopped as Failed"
                    ),
                    Err(error) => tracing::warn!(%error, "sweeping abandoned operations failed"),
                }
            }
        })
    }

    /// `GET /subscriptions/{sub}/providers/{ns}/locations/{loc}/operationStatuses/{id}`.
    ///
    /// An operation is shown only to a caller who may read the resource it acts on
    /// (`{type}/read` at that resource's id); to anyone else it answers exactly as an
    /// operation that does not exist, so its id reveals nothing.
    pub(crate) async fn operation_status(
        &self,
        caller: &Caller,
        subscription_id: &str,
        namespace: &str,
        operation_id: &str,
    ) -> Result<Value, ArmError> {
        self.subscription(subscription_id)?;
        let not_found = || {
            ArmError::new(
                StatusCode::NOT_FOUND,
                "OperationNotFound",
                format!(
                    "The operation '{}' could not be found.",
                    crate::names::printable(operation_id)
                ),
            )
        };
        let Some(operation) = self.inner.store.get_operation(operation_id).await? else {
            return Err(not_found());
        };
        if !operation.subscription.eq_ignore_ascii_case(subscription_id)
            || !operation.namespace.eq_ignore_ascii_case(namespace)
        {
            return Err(not_found());
        }
        let Ok(resource) = ResourceId::parse(&operation.resource_id) else {
            tracing::warn!("an operation names a resource id that does not parse; not shown");
            return Err(not_found());
        };
        let resource_type = resource.resource_type().unwrap_or_default();
        match self
            .authorize(caller, &format!("{resource_type}/read"), &resource)
            .await
        {
            Ok(()) => Ok(operation.to_json()),
            Err(error) if error.status() == StatusCode::FORBIDDEN => Err(not_found()),
            Err(error) => Err(error),
        }
    }

    // ---- moves --------------------------------------------------------------------------

    /// `POST .../resourceGroups/{rg}/moveResources` with `{resources: [ids], targetResourceGroup}`.
    pub(crate) async fn move_resources(
        &self,
        caller: &Caller,
        api_version: &str,
        source: &ResourceId,
        body: &Value,
    ) -> Result<Outcome, ArmError> {
        self.get_resource_group(caller, source).await?;
        self.authorize(caller, MOVE_ACTION, source).await?;
        let target_text = body
            .get("targetResourceGroup")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ArmError::invalid_request_content("'targetResourceGroup' is required.")
            })?;
        let target = ResourceId::parse(target_text)
            .ok()
            .filter(ResourceId::is_resource_group)
            .ok_or_else(|| {
                ArmError::invalid_request_content(
                    "'targetResourceGroup' must be a resource group id.",
                )
            })?;
        let resources = body
            .get("resources")
            .and_then(Value::as_array)
            .filter(|resources| !resources.is_empty())
            .ok_or_else(|| {
                ArmError::invalid_request_content(
                    "'resources' must be a non-empty array of resource ids.",
                )
            })?;
        self.subscription(target.subscription_id())?;
        if self.inner.store.get(&target).await?.is_none() {
            return Err(ArmError::resource_group_not_found(target.name()));
        }
        self.authorize(caller, RESOURCE_GROUP_WRITE, &target)
            .await?;
        let mut moves = Vec::new();
        for value in resources {
            let id = value
                .as_str()
                .and_then(|text| ResourceId::parse(text).ok())
                .ok_or_else(|| {
                    ArmError::invalid_request_content(
                        "Each entry of 'resources' must be a resource id.",
                    )
                })?;
            if id.parent().as_ref() != Some(source) {
                return Err(ArmError::new(
                    StatusCode::BAD_REQUEST,
                    "InvalidResourceMoveRequest",
                    format!(
                        "The resource '{id}' is not a top-level resource of the source resource group."
                    ),
                ));
            }
            if self.inner.store.get(&id).await?.is_none() {
                return Err(ArmError::resource_not_found(&id));
            }
            let resource_type = id.resource_type().unwrap_or_default();
            self.authorize(caller, &format!("{resource_type}/delete"), &id)
                .await?;
            let new_id = id
                .rebase(source, &target)
                .ok_or_else(|| ArmError::internal(&"a resource id could not be rebased"))?;
            self.authorize(caller, &format!("{resource_type}/write"), &new_id)
                .await?;
            if self.inner.store.get(&new_id).await?.is_some() {
                return Err(ArmError::conflict(format!(
                    "A resource '{new_id}' already exists in the target resource group."
                )));
            }
            moves.push((id, new_id));
        }
        for (old, new) in moves {
            for (moved_old, moved_new) in self.inner.store.move_tree(&old, &new).await? {
                let resource_type = moved_new.resource_type().unwrap_or_default();
                if let Ok(provider) = self.inner.registry.find(&resource_type) {
                    provider
                        .on_moved(self.context(caller, api_version), moved_old, moved_new)
                        .await?;
                }
            }
        }
        Ok(Outcome::Done {
            status: StatusCode::NO_CONTENT,
            body: None,
        })
    }
}

pub(crate) fn is_deployment_type(resource_type: &str) -> bool {
    resource_type.eq_ignore_ascii_case(DEPLOYMENTS_TYPE)
        || resource_type.eq_ignore_ascii_case(DEPLOYMENT_OPERATIONS_TYPE)
}

fn resource_group_json(resource: &Resource) -> Value {
    let mut value = json!({
        "id": resource.id.as_str(),
        "name": resource.id.name(),
        "type": "Microsoft.Resources/resourceGroups",
        "location": resource.location,
        "properties": { "provisioningState": resource.provisioning_state },
    });
    if let Some(tags) = &resource.tags {
        value["tags"] = tags.clone();
    }
    value
}

/// ARM's location normalization: `West US 3` → `westus3`.
pub fn normalize_location(location: &str) -> String {
    location
        .chars()
        .filter(|character| !character.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The `$filter` of a resource list: `resourceType`, `name`, `resourceGroup`, `location`,
/// `tagName` and `tagValue`, each `eq`, joined by `and`; values compare case-insensitively
/// as ARM's do. Any other clause is a 400.
#[derive(Debug, Default)]
struct ResourceFilter {
    resource_type: Option<String>,
    name: Option<String>,
    resource_group: Option<String>,
    location: Option<String>,
    tag_name: Option<String>,
    tag_value: Option<String>,
}

impl ResourceFilter {
    fn parse(text: Option<&str>) -> Result<ResourceFilter, ArmError> {
        let mut filter = ResourceFilter::default();
        let Some(text) = text else {
            return Ok(filter);
        };
        for clause in crate::filter::parse_filter(text)? {
            let crate::filter::FilterClause::Equals { field, value } = &clause else {
                return Err(unsupported_clause(&clause));
            };
            let slot = match field.to_ascii_lowercase().as_str() {
                "resourcetype" => &mut filter.resource_type,
                "name" => &mut filter.name,
                "resourcegroup" => &mut filter.resource_group,
                "location" => &mut filter.location,
                "tagname" => &mut filter.tag_name,
                "tagvalue" => &mut filter.tag_value,
                _ => return Err(unsupported_clause(&clause)),
            };
            *slot = Some(value.clone());
        }
        if filter.tag_value.is_some() && filter.tag_name.is_none() {
            return Err(crate::filter::invalid_filter(
                "The $filter names a tagValue without a tagName.",
            ));
        }
        Ok(filter)
    }

    fn matches(&self, resource: &Resource, resource_type: &str) -> bool {
        let same = |wanted: &Option<String>, actual: Option<&str>| {
            wanted.as_deref().is_none_or(|wanted| {
                actual.is_some_and(|actual| actual.eq_ignore_ascii_case(wanted))
            })
        };
        let tag = self.tag_name.as_deref().is_none_or(|tag_name| {
            let value = resource
                .tags
                .as_ref()
                .and_then(Value::as_object)
                .and_then(|tags| {
                    tags.iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case(tag_name))
                        .map(|(_, value)| value.as_str().unwrap_or_default())
                });
            value.is_some_and(|value| {
                self.tag_value
                    .as_deref()
                    .is_none_or(|wanted| value == wanted)
            })
        });
        same(&self.resource_type, Some(resource_type))
            && same(&self.name, Some(resource.id.name()))
            && same(&self.resource_group, resource.id.resource_group_name())
            && same(
                &self.location.as_deref().map(normalize_location),
                resource
                    .location
                    .as_deref()
                    .map(normalize_location)
                    .as_deref(),
            )
            && tag
    }
}

fn unsupported_clause(clause: &crate::filter::FilterClause) -> ArmError {
    crate::filter::invalid_filter(format!(
        "The $filter clause '{}' is not supported on resource lists; use resourceType, name, resourceGroup, location, tagName or tagValue with 'eq'.",
        clause.describe()
    ))
}
