//! The events as Azure documents them ("Azure Health Data Services as an Event Grid source"),
//! in the Event Grid schema and in CloudEvents 1.0, and the validation event of the handshake.
//!
//! hds serves a DICOM service under a path of its main listener rather than on a host of its
//! own, so `serviceHostName` is the service URL without its scheme
//! (`host:port/dicom/{workspace}/{service}`): the subject, `{serviceHostName}/v2/studies/...`,
//! then names the instance's URL as it does in Azure.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::format_description;
use uuid::Uuid;

use crate::dispatcher::{Change, ChangeKind};
use crate::store::DeliverySchema;

/// `Microsoft.HealthcareApis.DicomImageCreated`.
pub const DICOM_IMAGE_CREATED: &str = "Microsoft.HealthcareApis.DicomImageCreated";
/// `Microsoft.HealthcareApis.DicomImageDeleted`.
pub const DICOM_IMAGE_DELETED: &str = "Microsoft.HealthcareApis.DicomImageDeleted";
/// `Microsoft.HealthcareApis.DicomImageUpdated`.
pub const DICOM_IMAGE_UPDATED: &str = "Microsoft.HealthcareApis.DicomImageUpdated";
/// The DICOM event types a workspace's topic offers.
pub const ALL_EVENT_TYPES: [&str; 3] = [
    DICOM_IMAGE_CREATED,
    DICOM_IMAGE_DELETED,
    DICOM_IMAGE_UPDATED,
];
/// The default data partition: every change of a service without partitions is in it.
pub const DEFAULT_PARTITION: &str = "Microsoft.Default";
/// The type of the handshake's event.
pub const VALIDATION_EVENT_TYPE: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";

/// Names the ids of events: a v5 UUID of the service and sequence, so that every attempt at
/// (and every node's delivery of) one change carries the same `id`.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6864_7365_7665_6e74_8000_0000_0000_0001);

impl ChangeKind {
    /// The event type of this kind of change.
    pub fn event_type(self) -> &'static str {
        match self {
            ChangeKind::Created => DICOM_IMAGE_CREATED,
            ChangeKind::Deleted => DICOM_IMAGE_DELETED,
            ChangeKind::Updated => DICOM_IMAGE_UPDATED,
        }
    }
}

/// The id of the event of change `sequence` of `service` (its internal id).
pub fn event_id(service: &str, sequence: i64) -> String {
    Uuid::new_v5(
        &EVENT_ID_NAMESPACE,
        format!("{service}/{sequence}").as_bytes(),
    )
    .to_string()
}

/// RFC 3339 with seven fractional digits, as Event Grid writes times.
fn format_time(micros: i64) -> String {
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    time.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:7]Z"
    ))
    .unwrap_or_default()
}

/// The subject of `change`'s event.
pub(crate) fn subject(host_name: &str, change: &Change) -> String {
    format!(
        "{host_name}/v2/studies/{}/series/{}/instances/{}",
        change.study_instance_uid, change.series_instance_uid, change.sop_instance_uid
    )
}

/// The event of `change` of a service whose `serviceHostName` is `host_name` and internal id
/// `service`, in the workspace `topic`, in `schema`.
pub fn event_json(
    schema: DeliverySchema,
    topic: &str,
    host_name: &str,
    service: &str,
    change: &Change,
) -> Value {
    let data = json!({
        "partitionName": change.partition_name.as_deref().unwrap_or(DEFAULT_PARTITION),
        "imageStudyInstanceUid": change.study_instance_uid,
        "imageSeriesInstanceUid": change.series_instance_uid,
        "imageSopInstanceUid": change.sop_instance_uid,
        "serviceHostName": host_name,
        "sequenceNumber": change.sequence,
    });
    let id = event_id(service, change.sequence);
    let time = format_time(change.timestamp_micros);
    let subject = subject(host_name, change);
    let event_type = change.kind.event_type();
    match schema {
        DeliverySchema::EventGrid => json!({
            "id": id,
            "topic": topic,
            "subject": subject,
            "data": data,
            "eventType": event_type,
            "dataVersion": "1",
            "metadataVersion": "1",
            "eventTime": time,
        }),
        DeliverySchema::CloudEvents => json!({
            "specversion": "1.0",
            "id": id,
            "source": topic,
            "subject": subject,
            "type": event_type,
            "time": time,
            "data": data,
        }),
    }
}

/// The handshake's event (Event Grid schema) with `code`, for the topic `topic`.
pub fn validation_event(topic: &str, code: &str) -> Value {
    json!([{
        "id": Uuid::new_v4().to_string(),
        "topic": topic,
        "subject": "",
        "data": { "validationCode": code },
        "eventType": VALIDATION_EVENT_TYPE,
        "eventTime": format_time(crate::now_us()),
        "metadataVersion": "1",
        "dataVersion": "1",
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> Change {
        Change {
            sequence: 7,
            timestamp_micros: 1_663_204_444_561_321,
            kind: ChangeKind::Deleted,
            study_instance_uid: "1.2.3".into(),
            series_instance_uid: "1.2.3.4".into(),
            sop_instance_uid: "1.2.3.4.5".into(),
            partition_name: None,
        }
    }

    #[test]
    fn event_grid_form_follows_azure() {
        let event = event_json(
            DeliverySchema::EventGrid,
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.HealthcareApis/workspaces/w",
            "h:1/dicom/w/d",
            "svc",
            &change(),
        );
        assert_eq!(event["eventType"], DICOM_IMAGE_DELETED);
        assert_eq!(
            event["subject"],
            "h:1/dicom/w/d/v2/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5"
        );
        assert_eq!(event["eventTime"], "2022-09-15T01:14:04.5613210Z");
        assert_eq!(event["dataVersion"], "1");
        assert_eq!(event["data"]["sequenceNumber"], 7);
        assert_eq!(event["data"]["partitionName"], DEFAULT_PARTITION);
        let in_partition = Change {
            partition_name: Some("clinic-a".into()),
            ..change()
        };
        let event = event_json(
            DeliverySchema::EventGrid,
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.HealthcareApis/workspaces/w",
            "h:1/dicom/w/d",
            "svc",
            &in_partition,
        );
        assert_eq!(event["data"]["partitionName"], "clinic-a");
        assert_eq!(event["id"], event_id("svc", 7));
        assert_ne!(event_id("svc", 7), event_id("svc", 8));
        assert_ne!(event_id("svc", 7), event_id("other", 7));
    }

    #[test]
    fn cloud_events_form_follows_the_spec() {
        let event = event_json(DeliverySchema::CloudEvents, "/t", "h", "svc", &change());
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["type"], DICOM_IMAGE_DELETED);
        assert_eq!(event["source"], "/t");
        assert_eq!(event["data"]["imageSopInstanceUid"], "1.2.3.4.5");
        let mut keys: Vec<&str> = event
            .as_object()
            .map(|object| object.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "data",
                "id",
                "source",
                "specversion",
                "subject",
                "time",
                "type"
            ]
        );
    }
}
