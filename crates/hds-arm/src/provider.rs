//! Resource providers: what a resource type plugs into the control plane.
//!
//! The core routes, authenticates, authorizes, checks that the subscription, resource group
//! and parent exist, and turns results into ARM responses. A provider validates and acts;
//! most persist through [`ResourceStore`] and rely on the default `get`, `list`, `patch` and
//! `delete`, which read and write the generic store.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use http::StatusCode;
use serde_json::{Map, Value};

use crate::access::Caller;
use crate::error::ArmError;
use crate::id::ResourceId;
use crate::store::{PutRequest, ResourceStore};

/// The boxed future every hook returns (the traits are used as trait objects).
pub type ArmFuture<'a, T> = BoxFuture<'a, Result<T, ArmError>>;

/// What a provider call knows about the request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Who is calling (already authenticated and authorized for the operation).
    pub caller: Caller,
    /// The request's `api-version`.
    pub api_version: String,
    /// The generic resource store.
    pub store: ResourceStore,
    /// The list call's `$filter`, percent-decoded, for a provider whose list takes one
    /// (parse it with [`crate::parse_filter`]); `None` elsewhere.
    pub filter: Option<String>,
}

/// How a provider answered a PUT, PATCH, DELETE or POST.
pub enum ProviderResponse {
    /// Done; the body is the resource (PUT/PATCH: 200, or 201 when the PUT created it) or the
    /// action's result (POST: 200). `Value::Null` means no body.
    Completed(Value),
    /// Done, nothing to return (DELETE of something absent: 204).
    NoContent,
    /// Started and still running. The core answers 201 (PUT) or 202 with
    /// `Azure-AsyncOperation` and `Location` headers, then drives `completion` to the end and
    /// records its outcome on the operation (and, for a PUT, the resource's provisioning
    /// state).
    Accepted {
        /// The body of the immediate response (usually the resource in a transitional state).
        body: Option<Value>,
        /// The rest of the work.
        completion: BoxFuture<'static, Result<(), ArmError>>,
    },
}

impl std::fmt::Debug for ProviderResponse {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderResponse::Completed(body) => {
                formatter.debug_tuple("Completed").field(body).finish()
            }
            ProviderResponse::NoContent => formatter.write_str("NoContent"),
            ProviderResponse::Accepted { body, .. } => formatter
                .debug_struct("Accepted")
                .field("body", body)
                .finish_non_exhaustive(),
        }
    }
}

/// A resource provider: one or more resource types of one namespace.
///
/// A PUT always reaches [`put`](Self::put), even when the body equals what is stored: ARM
/// re-validates on every PUT (a DICOM service's key is re-checked that way).
pub trait ResourceProvider: Send + Sync + 'static {
    /// The full types served, e.g. `Microsoft.KeyVault/vaults`, `Microsoft.KeyVault/vaults/keys`.
    fn resource_types(&self) -> Vec<&'static str>;

    /// The API versions the types take, newest first, for the provider lookup
    /// (`GET /providers/{namespace}`). Default: none named, which the lookup shows as the
    /// control plane's own version.
    fn api_versions(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// Creates or replaces `id` from the request body.
    fn put(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse>;

    /// Reads `id`. Default: the stored resource, or `ResourceNotFound`.
    fn get(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, Value> {
        Box::pin(async move {
            match context.store.get(&id).await? {
                Some(resource) => Ok(resource.to_json()),
                None => Err(ArmError::resource_not_found(&id)),
            }
        })
    }

    /// Lists the resources of `resource_type` directly under `parent`. Default: from the store,
    /// each through [`get`](Self::get) so computed properties show.
    fn list(
        &self,
        context: RequestContext,
        parent: ResourceId,
        resource_type: String,
    ) -> ArmFuture<'_, Vec<Value>> {
        Box::pin(async move {
            let mut values = Vec::new();
            for resource in context.store.list_children(&parent, &resource_type).await? {
                match self.get(context.clone(), resource.id).await {
                    Ok(value) => values.push(value),
                    Err(error) if error.status() == StatusCode::NOT_FOUND => {}
                    Err(error) => return Err(error),
                }
            }
            Ok(values)
        })
    }

    /// Updates part of `id`. Default: JSON merge patch (RFC 7396) of `body` onto the current
    /// resource, then [`put`](Self::put) with the result, so validation runs again.
    fn patch(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            if !body.is_object() {
                return Err(ArmError::invalid_request_content(
                    "The request content must be a JSON object.",
                ));
            }
            let mut current = self.get(context.clone(), id.clone()).await?;
            if let Some(object) = current.as_object_mut() {
                for read_only in ["id", "name", "type", "systemData"] {
                    object.remove(read_only);
                }
                if let Some(Value::Object(properties)) = object.get_mut("properties") {
                    properties.remove("provisioningState");
                }
            }
            merge_patch(&mut current, &body);
            self.put(context, id, current).await
        })
    }

    /// Deletes `id` and everything beneath it. Default: from the store; 200 when it existed,
    /// 204 when it did not.
    fn delete(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            if context.store.delete(&id).await? {
                Ok(ProviderResponse::Completed(Value::Null))
            } else {
                Ok(ProviderResponse::NoContent)
            }
        })
    }

    /// Runs the POST action `action` (e.g. `listKeys`) on `id`. Default: no actions.
    fn post_action(
        &self,
        context: RequestContext,
        id: ResourceId,
        action: String,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        let _ = (context, id, body);
        Box::pin(async move {
            Err(ArmError::new(
                StatusCode::NOT_FOUND,
                "InvalidAction",
                format!("The action '{action}' is not supported on this resource type."),
            ))
        })
    }

    /// Called after `old_id` (and everything beneath it) moved to `new_id`, for the provider
    /// to update what it keeps outside the store. Default: nothing.
    fn on_moved(
        &self,
        context: RequestContext,
        old_id: ResourceId,
        new_id: ResourceId,
    ) -> ArmFuture<'_, ()> {
        let _ = (context, old_id, new_id);
        Box::pin(async { Ok(()) })
    }
}

/// RFC 7396 JSON merge patch: objects merge recursively, `null` removes, anything else
/// replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (name, value) in patch {
            if value.is_null() {
                target.remove(name);
            } else {
                merge_patch(target.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// A provider that stores what is PUT, validating only the ARM envelope: for types whose
/// only behaviour is to exist (and for tests).
#[derive(Debug, Clone)]
pub struct PlainProvider {
    types: Vec<&'static str>,
}

impl PlainProvider {
    /// Serves `types`.
    pub fn new(types: Vec<&'static str>) -> PlainProvider {
        PlainProvider { types }
    }
}

impl ResourceProvider for PlainProvider {
    fn resource_types(&self) -> Vec<&'static str> {
        self.types.clone()
    }

    fn put(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            let request = PutRequest::parse(&body)?;
            let resource = context.store.put_succeeded(&id, &request).await?;
            Ok(ProviderResponse::Completed(resource.to_json()))
        })
    }
}

/// The registered providers by lowercase type.
#[derive(Clone, Default)]
pub(crate) struct ProviderRegistry {
    by_type: HashMap<String, Arc<dyn ResourceProvider>>,
    names: Vec<String>,
}

impl ProviderRegistry {
    pub(crate) fn register(&mut self, provider: Arc<dyn ResourceProvider>) {
        for resource_type in provider.resource_types() {
            self.by_type
                .insert(resource_type.to_lowercase(), Arc::clone(&provider));
            self.names.push(resource_type.to_owned());
        }
    }

    pub(crate) fn find(&self, resource_type: &str) -> Result<Arc<dyn ResourceProvider>, ArmError> {
        self.by_type
            .get(&resource_type.to_lowercase())
            .cloned()
            .ok_or_else(|| ArmError::no_registered_provider(resource_type, &self.registered()))
    }

    /// The namespaces served (each once, in the case first registered), with
    /// `Microsoft.Resources`.
    pub(crate) fn namespaces(&self) -> Vec<String> {
        let mut namespaces: Vec<String> = Vec::new();
        for name in self.registered() {
            let namespace = name.split('/').next().unwrap_or_default().to_owned();
            if !namespaces
                .iter()
                .any(|known| known.eq_ignore_ascii_case(&namespace))
            {
                namespaces.push(namespace);
            }
        }
        namespaces
    }

    /// The types of `namespace` (without the namespace) with their API versions.
    pub(crate) fn types_of(&self, namespace: &str) -> Vec<(String, Vec<String>)> {
        let prefix = format!("{}/", namespace.to_lowercase());
        self.registered()
            .into_iter()
            .filter_map(|name| {
                let lower = name.to_lowercase();
                let rest = lower.strip_prefix(&prefix)?;
                let rest = name[name.len() - rest.len()..].to_owned();
                let versions: Vec<String> = match self.by_type.get(&lower) {
                    Some(provider) if !provider.api_versions().is_empty() => provider
                        .api_versions()
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                    _ => crate::service::RESOURCES_API_VERSIONS
                        .iter()
                        .map(|version| (*version).to_owned())
                        .collect(),
                };
                Some((rest, versions))
            })
            .collect()
    }

    pub(crate) fn registered(&self) -> Vec<String> {
        let mut names = self.names.clone();
        names.push(crate::service::DEPLOYMENTS_TYPE.to_owned());
        names.sort_by_key(|name| name.to_lowercase());
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
        let mut target = json!({"a": [1]});
        merge_patch(&mut target, &json!({"a": {"b": 1}}));
        assert_eq!(target, json!({"a": {"b": 1}}));
    }
}
