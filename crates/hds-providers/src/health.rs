//! `Microsoft.ResourceHealth/availabilityStatuses`: the `current` status of a DICOM service,
//! from the key-access monitor, worded so an operator knows what broke, since when, what it
//! affects and what to do.

use std::sync::Arc;

use hds_arm::{
    ArmError, ArmFuture, ProviderResponse, RequestContext, Resource, ResourceId, ResourceProvider,
};
use http::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::errors::refused;
use crate::healthcare::{DICOM_SERVICES_TYPE, stored_key_url};
use crate::host::{DicomServiceHost, HealthReport, KeyAccessState};
use crate::json::{field, format_time};

/// The resource type served.
pub const AVAILABILITY_STATUSES_TYPE: &str = "Microsoft.ResourceHealth/availabilityStatuses";
/// The only status name.
pub const CURRENT: &str = "current";

/// The resource health provider.
pub struct AvailabilityStatusProvider {
    host: Arc<dyn DicomServiceHost>,
}

impl std::fmt::Debug for AvailabilityStatusProvider {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AvailabilityStatusProvider")
            .finish_non_exhaustive()
    }
}

impl AvailabilityStatusProvider {
    /// Statuses answered from `host`.
    pub fn new(host: Arc<dyn DicomServiceHost>) -> AvailabilityStatusProvider {
        AvailabilityStatusProvider { host }
    }

    /// The status of the stored resource `resource`.
    async fn status(&self, resource: &Resource) -> Result<Value, ArmError> {
        let is_dicom = resource
            .id
            .resource_type()
            .is_some_and(|kind| kind.eq_ignore_ascii_case(DICOM_SERVICES_TYPE));
        let now = OffsetDateTime::now_utc();
        let properties = if is_dicom {
            let report = self.host.health(resource.id.as_str()).await?;
            dicom_status(resource, &report, now)
        } else {
            json!({
                "availabilityState": "Unknown",
                "title": "Unknown",
                "summary": "This platform reports health for DICOM services only.",
                "detailedStatus": "",
                "reasonType": "",
                "occuredTime": format_time(now),
                "reportedTime": format_time(now),
                "recommendedActions": [],
            })
        };
        Ok(json!({
            "id": format!("{}/providers/{AVAILABILITY_STATUSES_TYPE}/{CURRENT}", resource.id),
            "name": CURRENT,
            "type": AVAILABILITY_STATUSES_TYPE,
            "location": resource.location,
            "properties": properties,
        }))
    }
}

/// Which identity reaches the key, in words, from the stored resource.
fn identity_words(resource: &Resource) -> String {
    let identity = resource.identity.as_ref();
    let type_text = identity
        .and_then(|identity| field(identity, "type"))
        .and_then(Value::as_str)
        .unwrap_or("None");
    let users = identity
        .and_then(|identity| field(identity, "userAssignedIdentities"))
        .and_then(Value::as_object);
    match users {
        Some(users) if users.len() == 1 => {
            let (id, value) = users
                .iter()
                .next()
                .map_or(("", &Value::Null), |(id, value)| (id.as_str(), value));
            let principal = field(value, "principalId")
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("its user-assigned managed identity '{id}' (principal id {principal})")
        }
        Some(users) if users.len() > 1 => {
            "the user-assigned managed identity named by keyEncryptionKeyIdentity".to_owned()
        }
        _ if type_text.to_ascii_lowercase().contains("systemassigned") => {
            let principal = identity
                .and_then(|identity| field(identity, "principalId"))
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("its system-assigned managed identity (principal id {principal})")
        }
        _ => "its managed identity".to_owned(),
    }
}

/// The latch in words: "30 minutes", "1 minute", or seconds when it is not whole minutes
/// (short latches are configured for tests and demonstrations).
fn latch_words(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    match (seconds / 60, seconds % 60) {
        (1, 0) => "1 minute".to_owned(),
        (minutes, 0) if minutes > 0 => format!("{minutes} minutes"),
        _ if seconds == 1 => "1 second".to_owned(),
        _ => format!("{seconds} seconds"),
    }
}

/// The `properties` of a DICOM service's status.
fn dicom_status(resource: &Resource, report: &HealthReport, now: OffsetDateTime) -> Value {
    let since = report.since.unwrap_or(now);
    let reported = report.last_checked.unwrap_or(now);
    let key_url = stored_key_url(&resource.properties).unwrap_or_default();
    let identity = identity_words(resource);
    let latch = latch_words(report.latch_after);
    // The reason is a sentence of its own; the texts below add their own full stop.
    let reason = report
        .reason
        .as_deref()
        .map(|reason| reason.trim_end_matches('.').to_owned())
        .unwrap_or_else(|| "the key could not be reached".to_owned());
    let affects = "Requests that read or write data (store, retrieve, search, delete, change feed) fail with 500 and error code CustomerManagedKeyAccessLost; no data is lost.";
    let restore = json!({
        "action": format!(
            "Restore key access: make sure the key '{key_url}' and its version are enabled and not expired or deleted, that {identity} holds the Key Vault Crypto Service Encryption User role (or a role granting wrapKey and unwrapKey) on the vault or key, and that the vault's firewall lets trusted services through."
        ),
    });
    let update = json!({
        "action": "Update the DICOM service: send its PUT again (for example redeploy its ARM template) or any update, which re-validates the key and brings the service back.",
    });
    match report.state {
        KeyAccessState::Healthy => json!({
            "availabilityState": "Available",
            "title": "Available",
            "summary": "There aren't any known problems affecting this DICOM service.",
            "detailedStatus": if key_url.is_empty() { "The service uses a platform-managed key.".to_owned() } else { format!("The customer-managed key '{key_url}' was reachable at the last check.") },
            "reasonType": "",
            "occuredTime": format_time(report.since.unwrap_or(reported)),
            "reportedTime": format_time(reported),
            "recommendedActions": [],
        }),
        KeyAccessState::KeyAccessLost => {
            let deadline = since
                + time::Duration::seconds(
                    i64::try_from(report.latch_after.as_secs()).unwrap_or(i64::MAX / 2),
                );
            json!({
                "availabilityState": "Unavailable",
                "title": "The DICOM service cannot access its customer-managed key",
                "summary": format!(
                    "Since {}, the DICOM service cannot use its customer-managed key '{key_url}' through {identity}: {reason}. {affects}",
                    format_time(since)
                ),
                "detailedStatus": format!(
                    "Key access lost: {reason}. If access comes back before {} ({latch} after it was lost) the service recovers by itself; after that, only an update of the DICOM service brings it back, even once access is restored.",
                    format_time(deadline)
                ),
                "reasonType": "Unplanned",
                "reasonChronicity": "Transient",
                "occuredTime": format_time(since),
                "reportedTime": format_time(reported),
                "recommendedActions": [restore, {
                    "action": format!("If access was lost for more than {latch}, update the DICOM service once access is restored: send its PUT again (for example redeploy its ARM template)."),
                }],
            })
        }
        KeyAccessState::RequiresUpdate => json!({
            "availabilityState": "Unavailable",
            "title": "The DICOM service needs an update to use its customer-managed key again",
            "summary": format!(
                "Since {}, the DICOM service could not use its customer-managed key '{key_url}' through {identity} for more than {latch} ({reason}), so it stays unavailable until it is updated, even once key access is restored. {affects}",
                format_time(since)
            ),
            "detailedStatus": format!(
                "Key access was lost for more than {latch}: {reason}. The service no longer retries by itself; an update of the DICOM service re-validates the key."
            ),
            "reasonType": "Unplanned",
            "reasonChronicity": "Persistent",
            "occuredTime": format_time(since),
            "reportedTime": format_time(reported),
            "recommendedActions": [restore, update],
        }),
        KeyAccessState::Unknown => json!({
            "availabilityState": "Unknown",
            "title": "Unknown",
            "summary": "The DICOM service's key access has not been checked yet.",
            "detailedStatus": "No key-access probe has completed since the service was configured or the platform started.",
            "reasonType": "",
            "occuredTime": format_time(since),
            "reportedTime": format_time(reported),
            "recommendedActions": [],
        }),
    }
}

impl ResourceProvider for AvailabilityStatusProvider {
    fn resource_types(&self) -> Vec<&'static str> {
        vec![AVAILABILITY_STATUSES_TYPE]
    }

    fn put(
        &self,
        _context: RequestContext,
        _id: ResourceId,
        _body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        refused("Availability statuses are read-only.")
    }

    fn get(&self, context: RequestContext, id: ResourceId) -> ArmFuture<'_, Value> {
        Box::pin(async move {
            let not_found = || {
                ArmError::new(
                    StatusCode::NOT_FOUND,
                    "ResourceNotFound",
                    format!(
                        "No availability status '{}' exists; the only one is '{CURRENT}'.",
                        id.name().chars().take(64).collect::<String>()
                    ),
                )
            };
            if !id.name().eq_ignore_ascii_case(CURRENT) {
                return Err(not_found());
            }
            let scope = id.scope().ok_or_else(not_found)?;
            let Some(resource) = context.store.get(&scope).await? else {
                return Err(ArmError::resource_not_found(&scope));
            };
            self.status(&resource).await
        })
    }

    /// At a resource: its `current` status. At a resource group or subscription: that of
    /// every DICOM service in it.
    fn list(
        &self,
        context: RequestContext,
        parent: ResourceId,
        _resource_type: String,
    ) -> ArmFuture<'_, Vec<Value>> {
        Box::pin(async move {
            if parent.is_resource() {
                let Some(resource) = context.store.get(&parent).await? else {
                    return Err(ArmError::resource_not_found(&parent));
                };
                return Ok(vec![self.status(&resource).await?]);
            }
            let mut values = Vec::new();
            for resource in context.store.list_within(&parent).await? {
                let is_dicom = resource
                    .id
                    .resource_type()
                    .is_some_and(|kind| kind.eq_ignore_ascii_case(DICOM_SERVICES_TYPE));
                if is_dicom {
                    values.push(self.status(&resource).await?);
                }
            }
            Ok(values)
        })
    }

    fn patch(
        &self,
        _context: RequestContext,
        _id: ResourceId,
        _body: Value,
    ) -> ArmFuture<'_, ProviderResponse> {
        refused("Availability statuses are read-only.")
    }

    fn delete(&self, _context: RequestContext, _id: ResourceId) -> ArmFuture<'_, ProviderResponse> {
        refused("Availability statuses are read-only.")
    }
}

#[cfg(test)]
mod tests {
    use super::latch_words;
    use std::time::Duration;

    #[test]
    fn latch_in_words_keeps_short_latches_visible() {
        assert_eq!(latch_words(Duration::from_secs(30 * 60)), "30 minutes");
        assert_eq!(latch_words(Duration::from_secs(60)), "1 minute");
        assert_eq!(latch_words(Duration::from_secs(6)), "6 seconds");
        assert_eq!(latch_words(Duration::from_secs(90)), "90 seconds");
        assert_eq!(latch_words(Duration::from_secs(1)), "1 second");
    }
}
