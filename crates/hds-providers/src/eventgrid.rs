//! `Microsoft.EventGrid/systemTopics` and `.../systemTopics/eventSubscriptions`: how a
//! workspace's DICOM events reach a webhook, configured as in Azure.
//!
//! A system topic names its source, a workspace (`topicType`
//! `Microsoft.HealthcareApis.Workspaces`; one topic per source). An event subscription under it
//! names a `WebHook` endpoint, a filter on event types and subject, the delivery schema and
//! the retry policy. Like Event Grid, a PUT that sets a new endpoint answers 201 with
//! `provisioningState: Creating` and validates the endpoint before the subscription is
//! `Succeeded`: the validation event's `validationCode` must come back as
//! `validationResponse` (Event Grid schema), or the CloudEvents `OPTIONS` handshake must be
//! answered (CloudEvents schema). Only then does the subscription's row exist in
//! [`hds_events::EventStore`], which the dispatcher delivers from; a failed handshake leaves
//! the resource `Failed` and delivering nothing.
//!
//! The events carry UIDs of the workspace's instances, so, as in Azure (where creating an
//! event subscription on a system topic needs `Microsoft.EventGrid/eventSubscriptions/write`
//! on the source resource), the caller also needs that action on the workspace: a Contributor
//! of the workspace (or above) may; a Contributor of only the topic's resource group, where
//! the workspace is elsewhere, may not.
//!
//! Not supported (a 400 that says so): endpoint types other than `WebHook`, Entra ID
//! authentication of deliveries, dead-letter destinations, delivery identities, advanced
//! filters, delivery attribute mappings and the custom input schema. `endpointUrl` is write
//! only: reads show `endpointBaseUrl`, and the `getFullUrl` action returns the URL.

use hds_arm::{
    ArmError, ArmFuture, ProviderResponse, PutRequest, RequestContext, Resource, ResourceId,
    ResourceProvider,
};
use hds_events::{
    ALL_EVENT_TYPES, DeliverySchema, Dispatcher, EventStore, Subscription, WebhookClient,
};
use hds_identity::Identity;
use http::StatusCode;
use serde_json::{Value, json};

use crate::errors::{bad_request, from_identity, location_required};
use crate::healthcare::WORKSPACES_TYPE;
use crate::json::{field, optional_bool, optional_string};

/// The system topic type.
pub const SYSTEM_TOPICS_TYPE: &str = "Microsoft.EventGrid/systemTopics";
/// The event subscription type (of a system topic).
pub const EVENT_SUBSCRIPTIONS_TYPE: &str = "Microsoft.EventGrid/systemTopics/eventSubscriptions";
/// The topic type of a workspace's events.
pub const WORKSPACE_TOPIC_TYPE: &str = "Microsoft.HealthcareApis.Workspaces";
/// The action the caller needs on the workspace to subscribe to its events.
pub const SUBSCRIBE_ACTION: &str = "Microsoft.EventGrid/eventSubscriptions/write";

/// The oldest and newest api-versions modelled (the shapes used here are the same across
/// them).
const OLDEST_API_VERSION: &str = "2020-04-01-preview";
const NEWEST_API_VERSION: &str = "2025-02-15";
/// api-version dates accepted (later previews included).
const API_DATES: (&str, &str) = ("2020-04-01", "2025-12-31");

/// The most event subscriptions of one topic (Azure's limit).
const MAX_SUBSCRIPTIONS_PER_TOPIC: usize = 500;

/// The most `includedEventTypes`, `labels`, and characters of a subject filter or label.
const MAX_LIST_ENTRIES: usize = 25;
const MAX_FILTER_CHARS: usize = 1024;

/// What the Event Grid providers work with: the delivery store, the client that runs
/// handshakes, and the dispatcher to wake when a subscription starts.
#[derive(Clone)]
pub struct EventGridParts {
    /// The subscriptions delivery runs for.
    pub store: EventStore,
    /// The outbound client (the handshake's).
    pub client: WebhookClient,
    /// Woken when a subscription becomes active.
    pub dispatcher: Option<Dispatcher>,
}

impl std::fmt::Debug for EventGridParts {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("EventGridParts")
            .finish_non_exhaustive()
    }
}

fn check_api_version(api_version: &str, resource_type: &str) -> Result<(), ArmError> {
    let date = api_version.get(..10).unwrap_or(api_version);
    if (API_DATES.0..=API_DATES.1).contains(&date) {
        Ok(())
    } else {
        Err(bad_request(
            "NoRegisteredProviderFound",
            format!(
                "No registered resource provider found for API version '{}' and type '{resource_type}'. The supported api-versions are {OLDEST_API_VERSION} through {NEWEST_API_VERSION}.",
                api_version.chars().take(32).collect::<String>()
            ),
        ))
    }
}

fn not_supported_feature(what: &str) -> ArmError {
    bad_request(
        "FeatureNotSupported",
        format!("{what} is not supported by hds; leave it out (see docs/events.md)."),
    )
}

/// The caller must hold [`SUBSCRIBE_ACTION`] on the workspace whose events it routes.
async fn authorize_on_source(
    identity: &Identity,
    context: &RequestContext,
    workspace: &ResourceId,
) -> Result<(), ArmError> {
    let principal_id = &context.caller.principal_id;
    let decision = identity
        .authorize(principal_id, SUBSCRIBE_ACTION, workspace.as_str(), false)
        .await
        .map_err(from_identity)?;
    if decision.is_allowed() {
        Ok(())
    } else {
        Err(ArmError::linked_authorization_failed(
            principal_id,
            SUBSCRIBE_ACTION,
            workspace.as_str(),
        ))
    }
}

/// The workspace a stored system topic names as its source.
fn topic_source(topic: &Resource) -> Option<ResourceId> {
    let source = field(&topic.properties, "source")?.as_str()?;
    ResourceId::parse(source).ok()
}

/// `Microsoft.EventGrid/systemTopics`.
pub struct SystemTopicProvider {
    identity: Identity,
    parts: EventGridParts,
}

impl SystemTopicProvider {
    /// Topics whose subscriptions live in `parts.store`.
    pub fn new(identity: Identity, parts: EventGridParts) -> SystemTopicProvider {
        SystemTopicProvider { identity, parts }
    }
}

impl ResourceProvider for SystemTopicProvider {
    fn resource_types(&self) -> Vec<&'static str> {
        vec![SYSTEM_TOPICS_TYPE]
    }

    fn api_versions(&self) -> Vec<&'static str> {
        vec![NEWEST_API_VERSION, OLDEST_API_VERSION]
    }

    fn put(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            check_api_version(&context.api_version, SYSTEM_TOPICS_TYPE)?;
            let request = PutRequest::parse(&body)?;
            if request.location.is_none() {
                return Err(location_required());
            }
            let source_text = optional_string(&request.properties, "source", "properties.source")?
                .ok_or_else(|| {
                    bad_request(
                        "InvalidRequest",
                        "'properties.source' is required: the resource id of the Microsoft.HealthcareApis/workspaces whose events the topic carries.",
                    )
                })?;
            let source = ResourceId::parse(&source_text)
                .ok()
                .filter(|source| {
                    source
                        .resource_type()
                        .is_some_and(|kind| kind.eq_ignore_ascii_case(WORKSPACES_TYPE))
                })
                .ok_or_else(|| {
                    bad_request(
                        "InvalidRequest",
                        format!(
                            "'properties.source' must be the resource id of a {WORKSPACES_TYPE} (the only source hds offers)."
                        ),
                    )
                })?;
            let topic_type =
                optional_string(&request.properties, "topicType", "properties.topicType")?
                    .unwrap_or_default();
            if !topic_type.eq_ignore_ascii_case(WORKSPACE_TOPIC_TYPE) {
                return Err(bad_request(
                    "InvalidRequest",
                    format!("'properties.topicType' must be '{WORKSPACE_TOPIC_TYPE}'."),
                ));
            }
            authorize_on_source(&self.identity, &context, &source).await?;
            let Some(workspace) = context.store.get(&source).await? else {
                return Err(bad_request(
                    "InvalidRequest",
                    format!("The source workspace '{source}' does not exist."),
                ));
            };
            let previous = context.store.get(&id).await?;
            if let Some(previous_source) = previous.as_ref().and_then(topic_source)
                && previous_source != workspace.id
            {
                return Err(bad_request(
                    "InvalidRequest",
                    "The source of a system topic cannot be changed; create another topic.",
                ));
            }
            // One system topic per source, as in Azure.
            let subscription = ResourceId::subscription(id.subscription_id());
            for other in context.store.list_within(&subscription).await? {
                let is_topic = other
                    .id
                    .resource_type()
                    .is_some_and(|kind| kind.eq_ignore_ascii_case(SYSTEM_TOPICS_TYPE));
                if is_topic
                    && other.id != id
                    && topic_source(&other).as_ref() == Some(&workspace.id)
                {
                    return Err(bad_request(
                        "InvalidRequest",
                        format!(
                            "Only one system topic is allowed per source; '{}' already has one: '{}'.",
                            workspace.id, other.id
                        ),
                    ));
                }
            }
            let metric_id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, id.key().as_bytes());
            let request = PutRequest {
                properties: json!({
                    "source": workspace.id.as_str(),
                    "topicType": WORKSPACE_TOPIC_TYPE,
                    "metricResourceId": metric_id.to_string(),
                }),
                identity: None,
                ..request
            };
            let resource = context.store.put_succeeded(&id, &request).await?;
            Ok(ProviderResponse::Completed(resource.to_json()))
        })
    }

    /// Deletes the topic's event subscriptions (delivery stops) with it.
    fn delete(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            for subscription in context
                .store
                .list_children(&id, EVENT_SUBSCRIPTIONS_TYPE)
                .await?
            {
                self.parts
                    .store
                    .delete_subscription(subscription.id.as_str())
                    .await
                    .map_err(|error| ArmError::internal(&error))?;
            }
            if context.store.delete(&id).await? {
                Ok(ProviderResponse::Completed(Value::Null))
            } else {
                Ok(ProviderResponse::NoContent)
            }
        })
    }
}

/// An event subscription's settings, read and checked from a PUT.
#[derive(Debug)]
struct SubscriptionRequest {
    endpoint_url: String,
    schema: DeliverySchema,
    included_event_types: Vec<String>,
    subject_begins_with: String,
    subject_ends_with: String,
    subject_case_sensitive: bool,
    max_events_per_batch: u32,
    preferred_batch_kb: u32,
    max_delivery_attempts: u32,
    event_ttl_minutes: u32,
    labels: Vec<String>,
}

/// An optional integer in `[min, max]`.
fn optional_integer(
    object: &Value,
    name: &str,
    path: &str,
    range: (u32, u32),
) -> Result<Option<u32>, ArmError> {
    match field(object, name) {
        None => Ok(None),
        Some(value) => value
            .as_u64()
            .and_then(|number| u32::try_from(number).ok())
            .filter(|number| (range.0..=range.1).contains(number))
            .map(Some)
            .ok_or_else(|| {
                bad_request(
                    "InvalidRequest",
                    format!(
                        "'{path}' must be an integer from {} to {}.",
                        range.0, range.1
                    ),
                )
            }),
    }
}

/// A list of at most [`MAX_LIST_ENTRIES`] strings of at most [`MAX_FILTER_CHARS`].
fn string_list(object: &Value, name: &str, path: &str) -> Result<Option<Vec<String>>, ArmError> {
    let Some(value) = field(object, name) else {
        return Ok(None);
    };
    let invalid = || {
        bad_request(
            "InvalidRequest",
            format!(
                "'{path}' must be a list of at most {MAX_LIST_ENTRIES} strings of at most {MAX_FILTER_CHARS} characters."
            ),
        )
    };
    let list = value.as_array().ok_or_else(invalid)?;
    if list.len() > MAX_LIST_ENTRIES {
        return Err(invalid());
    }
    list.iter()
        .map(|entry| {
            entry
                .as_str()
                .filter(|text| text.chars().count() <= MAX_FILTER_CHARS)
                .map(str::to_owned)
                .ok_or_else(invalid)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A bounded filter string.
fn filter_string(filter: &Value, name: &str) -> Result<String, ArmError> {
    let path = format!("properties.filter.{name}");
    let text = optional_string(filter, name, &path)?.unwrap_or_default();
    if text.chars().count() > MAX_FILTER_CHARS {
        return Err(bad_request(
            "InvalidRequest",
            format!("'{path}' is longer than {MAX_FILTER_CHARS} characters."),
        ));
    }
    Ok(text)
}

/// The URL without its query: what reads show as `endpointBaseUrl` (a query may hold a
/// secret).
fn base_url(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or_default().to_owned()
}

fn parse_subscription(
    properties: &Value,
    previous: Option<&Resource>,
    client: &WebhookClient,
) -> Result<SubscriptionRequest, ArmError> {
    let destination = field(properties, "destination").ok_or_else(|| {
        bad_request(
            "InvalidRequest",
            "'properties.destination' is required: {\"endpointType\": \"WebHook\", \"properties\": {\"endpointUrl\": \"https://...\"}}.",
        )
    })?;
    let endpoint_type = optional_string(
        destination,
        "endpointType",
        "properties.destination.endpointType",
    )?
    .unwrap_or_default();
    if !endpoint_type.eq_ignore_ascii_case("WebHook") {
        return Err(bad_request(
            "EndpointTypeNotSupported",
            "hds delivers events to webhooks only: 'properties.destination.endpointType' must be 'WebHook'.",
        ));
    }
    let empty = json!({});
    let webhook = field(destination, "properties").unwrap_or(&empty);
    for unsupported in [
        "azureActiveDirectoryTenantId",
        "azureActiveDirectoryApplicationIdOrUri",
    ] {
        if field(webhook, unsupported).is_some_and(|value| value.as_str() != Some("")) {
            return Err(not_supported_feature(&format!(
                "Entra ID authentication of deliveries ('{unsupported}')"
            )));
        }
    }
    if field(webhook, "deliveryAttributeMappings")
        .is_some_and(|value| value.as_array().is_none_or(|list| !list.is_empty()))
    {
        return Err(not_supported_feature("'deliveryAttributeMappings'"));
    }
    let given_url = optional_string(
        webhook,
        "endpointUrl",
        "properties.destination.properties.endpointUrl",
    )?
    .filter(|url| !url.trim().is_empty());
    let previous_url = previous
        .and_then(|previous| field(&previous.properties, "destination"))
        .and_then(|destination| field(destination, "properties"))
        .and_then(|properties| field(properties, "endpointUrl"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let given_base = optional_string(
        webhook,
        "endpointBaseUrl",
        "properties.destination.properties.endpointBaseUrl",
    )?;
    // A PATCH (or a PUT of what GET showed) has no endpointUrl: the stored one stays, if the
    // base URL it shows is still the same.
    let endpoint_url = match (given_url, previous_url) {
        (Some(url), _) => url.trim().to_owned(),
        (None, Some(previous))
            if given_base
                .as_deref()
                .is_none_or(|base| base == base_url(&previous)) =>
        {
            previous
        }
        _ => {
            return Err(bad_request(
                "InvalidRequest",
                "'properties.destination.properties.endpointUrl' is required.",
            ));
        }
    };
    client
        .check(&endpoint_url)
        .map_err(|refusal| bad_request("InvalidEndpointUrl", refusal.0))?;
    let max_events_per_batch = optional_integer(
        webhook,
        "maxEventsPerBatch",
        "properties.destination.properties.maxEventsPerBatch",
        (1, 5000),
    )?
    .unwrap_or(1);
    let preferred_batch_kb = optional_integer(
        webhook,
        "preferredBatchSizeInKilobytes",
        "properties.destination.properties.preferredBatchSizeInKilobytes",
        (1, 1024),
    )?
    .unwrap_or(64);

    let filter = field(properties, "filter").unwrap_or(&empty);
    let mut included_event_types = Vec::new();
    for given in string_list(
        filter,
        "includedEventTypes",
        "properties.filter.includedEventTypes",
    )?
    .unwrap_or_default()
    {
        let known = ALL_EVENT_TYPES
            .iter()
            .find(|known| known.eq_ignore_ascii_case(&given))
            .ok_or_else(|| {
                bad_request(
                    "InvalidRequest",
                    format!(
                        "'properties.filter.includedEventTypes' names an event type a workspace's topic does not offer; it offers {}.",
                        ALL_EVENT_TYPES.join(", ")
                    ),
                )
            })?;
        if !included_event_types
            .iter()
            .any(|kept: &String| kept == known)
        {
            included_event_types.push((*known).to_owned());
        }
    }
    if field(filter, "advancedFilters")
        .is_some_and(|value| value.as_array().is_none_or(|list| !list.is_empty()))
    {
        return Err(not_supported_feature("'filter.advancedFilters'"));
    }
    let subject_begins_with = filter_string(filter, "subjectBeginsWith")?;
    let subject_ends_with = filter_string(filter, "subjectEndsWith")?;
    let subject_case_sensitive = optional_bool(
        filter,
        "isSubjectCaseSensitive",
        "properties.filter.isSubjectCaseSensitive",
    )?
    .unwrap_or(false);

    let schema = match optional_string(properties, "eventDeliverySchema", "properties.eventDeliverySchema")? {
        None => DeliverySchema::EventGrid,
        Some(text) => DeliverySchema::parse(&text).ok_or_else(|| {
            bad_request(
                "InvalidRequest",
                "'properties.eventDeliverySchema' must be 'EventGridSchema' or 'CloudEventSchemaV1_0' (a system topic has no custom input schema).",
            )
        })?,
    };
    let retry = field(properties, "retryPolicy").unwrap_or(&empty);
    let max_delivery_attempts = optional_integer(
        retry,
        "maxDeliveryAttempts",
        "properties.retryPolicy.maxDeliveryAttempts",
        (1, 30),
    )?
    .unwrap_or(30);
    let event_ttl_minutes = optional_integer(
        retry,
        "eventTimeToLiveInMinutes",
        "properties.retryPolicy.eventTimeToLiveInMinutes",
        (1, 1440),
    )?
    .unwrap_or(1440);
    for (name, what) in [
        ("deadLetterDestination", "A dead-letter destination"),
        (
            "deadLetterWithResourceIdentity",
            "A dead-letter destination",
        ),
        (
            "deliveryWithResourceIdentity",
            "Delivery with a resource identity",
        ),
        ("expirationTimeUtc", "An expiration time"),
    ] {
        if field(properties, name).is_some() {
            return Err(not_supported_feature(what));
        }
    }
    let labels = string_list(properties, "labels", "properties.labels")?.unwrap_or_default();
    Ok(SubscriptionRequest {
        endpoint_url,
        schema,
        included_event_types,
        subject_begins_with,
        subject_ends_with,
        subject_case_sensitive,
        max_events_per_batch,
        preferred_batch_kb,
        max_delivery_attempts,
        event_ttl_minutes,
        labels,
    })
}

/// The stored properties (with `endpointUrl`; reads hide it).
fn stored_properties(request: &SubscriptionRequest, topic: &str) -> Value {
    json!({
        "topic": topic,
        "destination": {
            "endpointType": "WebHook",
            "properties": {
                "endpointUrl": request.endpoint_url,
                "endpointBaseUrl": base_url(&request.endpoint_url),
                "maxEventsPerBatch": request.max_events_per_batch,
                "preferredBatchSizeInKilobytes": request.preferred_batch_kb,
            },
        },
        "filter": {
            "includedEventTypes": if request.included_event_types.is_empty() {
                Value::Null
            } else {
                json!(request.included_event_types)
            },
            "subjectBeginsWith": request.subject_begins_with,
            "subjectEndsWith": request.subject_ends_with,
            "isSubjectCaseSensitive": request.subject_case_sensitive,
            "enableAdvancedFilteringOnArrays": true,
        },
        "labels": request.labels,
        "eventDeliverySchema": request.schema.name(),
        "retryPolicy": {
            "maxDeliveryAttempts": request.max_delivery_attempts,
            "eventTimeToLiveInMinutes": request.event_ttl_minutes,
        },
    })
}

/// A resource as reads show it: `endpointUrl` is write only.
fn hide_endpoint_url(mut value: Value) -> Value {
    if let Some(Value::Object(webhook)) = value.pointer_mut("/properties/destination/properties") {
        webhook.insert("endpointUrl".into(), Value::Null);
    }
    value
}

/// `Microsoft.EventGrid/systemTopics/eventSubscriptions`.
pub struct EventSubscriptionProvider {
    identity: Identity,
    parts: EventGridParts,
}

impl EventSubscriptionProvider {
    /// Subscriptions recorded in `parts.store`, validated with `parts.client`.
    pub fn new(identity: Identity, parts: EventGridParts) -> EventSubscriptionProvider {
        EventSubscriptionProvider { identity, parts }
    }
}

impl ResourceProvider for EventSubscriptionProvider {
    fn resource_types(&self) -> Vec<&'static str> {
        vec![EVENT_SUBSCRIPTIONS_TYPE]
    }

    fn api_versions(&self) -> Vec<&'static str> {
        vec![NEWEST_API_VERSION, OLDEST_API_VERSION]
    }

    fn get(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, Value> {
        Box::pin(async move {
            match context.store.get(&id).await? {
                Some(resource) => Ok(hide_endpoint_url(resource.to_json())),
                None => Err(ArmError::resource_not_found(&id)),
            }
        })
    }

    fn put(
        &self,
        context: RequestContext,
        id: ResourceId,
        body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            check_api_version(&context.api_version, EVENT_SUBSCRIPTIONS_TYPE)?;
            let request = PutRequest::parse(&body)?;
            let topic_id = id
                .parent()
                .ok_or_else(|| ArmError::resource_not_found(&id))?;
            let topic = context
                .store
                .get(&topic_id)
                .await?
                .ok_or_else(|| ArmError::parent_not_found(&topic_id))?;
            let workspace = topic_source(&topic)
                .ok_or_else(|| ArmError::internal(&"a stored system topic has no source"))?;
            authorize_on_source(&self.identity, &context, &workspace).await?;
            if context.store.get(&workspace).await?.is_none() {
                return Err(bad_request(
                    "InvalidRequest",
                    format!("The topic's source workspace '{workspace}' no longer exists."),
                ));
            }
            let previous = context.store.get(&id).await?;
            if previous.is_none()
                && context
                    .store
                    .list_children(&topic_id, EVENT_SUBSCRIPTIONS_TYPE)
                    .await?
                    .len()
                    >= MAX_SUBSCRIPTIONS_PER_TOPIC
            {
                return Err(bad_request(
                    "InvalidRequest",
                    format!(
                        "A system topic has at most {MAX_SUBSCRIPTIONS_PER_TOPIC} event subscriptions."
                    ),
                ));
            }
            let settings =
                parse_subscription(&request.properties, previous.as_ref(), &self.parts.client)?;
            let properties = stored_properties(&settings, workspace.as_str());
            let subscription = Subscription {
                id: id.as_str().to_owned(),
                name: id.name().to_owned(),
                workspace_id: workspace.as_str().to_owned(),
                endpoint_url: settings.endpoint_url.clone(),
                schema: settings.schema,
                included_event_types: settings.included_event_types.clone(),
                subject_begins_with: settings.subject_begins_with.clone(),
                subject_ends_with: settings.subject_ends_with.clone(),
                subject_case_sensitive: settings.subject_case_sensitive,
                max_events_per_batch: settings.max_events_per_batch,
                preferred_batch_kb: settings.preferred_batch_kb,
                max_delivery_attempts: settings.max_delivery_attempts,
                event_ttl_minutes: settings.event_ttl_minutes,
            };
            let request = PutRequest {
                location: None,
                identity: None,
                properties,
                ..request
            };
            // The same endpoint and schema as an active subscription: no new handshake.
            let active = self
                .parts
                .store
                .stats(id.as_str())
                .await
                .map_err(|error| ArmError::internal(&error))?
                .is_some();
            let unchanged = previous.as_ref().is_some_and(|previous| {
                previous.provisioning_state == "Succeeded"
                    && field(&previous.properties, "eventDeliverySchema").and_then(Value::as_str)
                        == Some(settings.schema.name())
                    && previous
                        .properties
                        .pointer("/destination/properties/endpointUrl")
                        .and_then(Value::as_str)
                        == Some(settings.endpoint_url.as_str())
            });
            if active && unchanged {
                self.parts
                    .store
                    .put_subscription(&subscription)
                    .await
                    .map_err(|error| ArmError::internal(&error))?;
                let resource = context.store.put_succeeded(&id, &request).await?;
                return Ok(ProviderResponse::Completed(hide_endpoint_url(
                    resource.to_json(),
                )));
            }
            let state = if previous.is_some() {
                "Updating"
            } else {
                "Creating"
            };
            let mut resource = Resource::from_request(id.clone(), &request, state);
            if let Some(previous) = &previous {
                resource.created_at = previous.created_at;
                resource.id = previous.id.clone();
            }
            context.store.upsert(&resource).await?;
            let parts = self.parts.clone();
            let completion = Box::pin(async move {
                let validated = parts
                    .client
                    .validate(
                        &subscription.endpoint_url,
                        subscription.schema,
                        &subscription.name,
                        &subscription.workspace_id,
                    )
                    .await;
                if let Err(message) = validated {
                    // A subscription whose endpoint did not validate delivers nothing.
                    parts
                        .store
                        .delete_subscription(&subscription.id)
                        .await
                        .map_err(|error| ArmError::internal(&error))?;
                    return Err(bad_request(
                        "Url validation",
                        format!(
                            "Webhook validation handshake failed for {}. {message} The endpoint must answer the Microsoft.EventGrid.SubscriptionValidationEvent with {{\"validationResponse\": <data.validationCode>}} (Event Grid schema), or the OPTIONS handshake with 'WebHook-Allowed-Origin: eventgrid.azure.net' (CloudEvents schema).",
                            base_url(&subscription.endpoint_url)
                        ),
                    ));
                }
                parts
                    .store
                    .put_subscription(&subscription)
                    .await
                    .map_err(|error| ArmError::internal(&error))?;
                if let Some(dispatcher) = &parts.dispatcher {
                    dispatcher.wake();
                }
                Ok(())
            });
            Ok(ProviderResponse::Accepted {
                body: Some(hide_endpoint_url(resource.to_json())),
                completion,
            })
        })
    }

    fn delete(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            self.parts
                .store
                .delete_subscription(id.as_str())
                .await
                .map_err(|error| ArmError::internal(&error))?;
            if context.store.delete(&id).await? {
                Ok(ProviderResponse::Completed(Value::Null))
            } else {
                Ok(ProviderResponse::NoContent)
            }
        })
    }

    /// `getFullUrl`: the endpoint URL reads hide; and `getDeliveryAttributes` (none).
    fn post_action(
        &self,
        context: RequestContext,
        id: ResourceId,
        action: String,
        _body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        Box::pin(async move {
            let resource = context
                .store
                .get(&id)
                .await?
                .ok_or_else(|| ArmError::resource_not_found(&id))?;
            if action.eq_ignore_ascii_case("getFullUrl") {
                let url = resource
                    .properties
                    .pointer("/destination/properties/endpointUrl")
                    .cloned()
                    .unwrap_or(Value::Null);
                return Ok(ProviderResponse::Completed(json!({ "endpointUrl": url })));
            }
            if action.eq_ignore_ascii_case("getDeliveryAttributes") {
                return Ok(ProviderResponse::Completed(json!({ "value": [] })));
            }
            Err(ArmError::new(
                StatusCode::NOT_FOUND,
                "InvalidAction",
                format!("The action '{action}' is not supported on this resource type."),
            ))
        })
    }
}

/// Sets `properties.eventState` of a DICOM service resource: `Enabled` when an event
/// subscription delivers its workspace's events.
pub(crate) async fn set_event_state(
    store: Option<&EventStore>,
    id: &ResourceId,
    mut value: Value,
) -> Result<Value, ArmError> {
    let enabled = match (store, id.parent()) {
        (Some(store), Some(workspace)) => store
            .workspace_has_subscription(workspace.as_str())
            .await
            .map_err(|error| ArmError::internal(&error))?,
        _ => false,
    };
    if let Some(Value::Object(properties)) = value.get_mut("properties") {
        properties.insert(
            "eventState".into(),
            json!(if enabled { "Enabled" } else { "Disabled" }),
        );
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> WebhookClient {
        WebhookClient::new(&hds_events::WebhookConfig::default()).expect("client")
    }

    fn webhook(url: &str) -> Value {
        json!({"destination": {"endpointType": "WebHook", "properties": {"endpointUrl": url}}})
    }

    #[test]
    fn defaults_are_event_grids() {
        let parsed = parse_subscription(&webhook("https://r.example/h?code=x"), None, &client())
            .expect("valid");
        assert_eq!(parsed.schema, DeliverySchema::EventGrid);
        assert_eq!(
            (
                parsed.max_events_per_batch,
                parsed.preferred_batch_kb,
                parsed.max_delivery_attempts,
                parsed.event_ttl_minutes
            ),
            (1, 64, 30, 1440)
        );
        assert!(parsed.included_event_types.is_empty());
        let stored = stored_properties(&parsed, "/w");
        assert_eq!(
            stored["destination"]["properties"]["endpointBaseUrl"],
            "https://r.example/h"
        );
        let shown = hide_endpoint_url(json!({ "properties": stored }));
        assert!(shown["properties"]["destination"]["properties"]["endpointUrl"].is_null());
    }

    #[test]
    fn event_types_are_canonical_and_bounded() {
        let mut body = webhook("https://r.example/h");
        body["filter"] = json!({"includedEventTypes": [
            "microsoft.healthcareapis.dicomimagedeleted",
            "Microsoft.HealthcareApis.DicomImageDeleted"
        ]});
        let parsed = parse_subscription(&body, None, &client()).expect("valid");
        assert_eq!(
            parsed.included_event_types,
            vec![hds_events::DICOM_IMAGE_DELETED.to_owned()]
        );
        body["filter"] = json!({"includedEventTypes": ["Microsoft.Storage.BlobCreated"]});
        assert!(parse_subscription(&body, None, &client()).is_err());
        body["filter"] = json!({"subjectEndsWith": "x".repeat(MAX_FILTER_CHARS + 1)});
        assert!(parse_subscription(&body, None, &client()).is_err());
        body["filter"] = json!({});
        body["retryPolicy"] = json!({"eventTimeToLiveInMinutes": 1441});
        assert!(parse_subscription(&body, None, &client()).is_err());
    }

    #[test]
    fn urls_are_checked() {
        for url in ["http://r.example/h", "https://u:p@r.example/", "not a url"] {
            let error = parse_subscription(&webhook(url), None, &client()).expect_err(url);
            assert_eq!(error.code(), "InvalidEndpointUrl");
        }
        assert!(parse_subscription(&webhook("http://127.0.0.1:9/h"), None, &client()).is_ok());
    }
}
