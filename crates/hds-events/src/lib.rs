//! DICOM events, delivered as Azure Event Grid delivers them to a webhook.
//!
//! In Azure a workspace's DICOM events go through an Event Grid system topic
//! (`Microsoft.EventGrid/systemTopics`, source: the workspace) to its event subscriptions. hds
//! keeps the ARM resources in its control plane (`hds-providers`) and, here, what delivery
//! needs: one row per active event subscription ([`EventStore`]) and, per subscription and
//! DICOM service, a cursor into that service's change feed.
//!
//! The change feed is the outbox: its entries are written in the transaction of their change
//! and numbered per service, so the [`Dispatcher`] needs no queue of its own. It reads the
//! entries after a cursor, posts them (an array, batched as the subscription says), and moves
//! the cursor only after a 2xx answer, in a transaction that also checks it still holds the
//! subscription's lease. A failed post is retried on Event Grid's schedule until the retry
//! policy's attempts or time to live run out; then the batch is counted as dead-lettered and
//! the cursor moves on. A crash between a post and the cursor's move delivers that batch again
//! (at least once; each event keeps its `id` across attempts, for receivers to drop repeats).
//!
//! Invariants:
//! - Nothing is sent but the events: no credential, no cookie, no header a receiver could
//!   replay against hds ([`WebhookClient`]); redirects are not followed; a URL is `https`, or
//!   `http` to a loopback address only.
//! - Nothing from an instance is logged or stored here: the cursor is a sequence number, and
//!   the UIDs are read, opened with the service's keys, only to build the request body.
//! - A service whose keys are not in memory (lost access to its customer-managed key) gets
//!   no events: its cursor stays put and delivery resumes when the keys come back.
#![deny(missing_docs)]

mod dispatcher;
mod payload;
mod store;
mod webhook;

pub use dispatcher::{
    Change, ChangeKind, ChangeSource, Dispatcher, DispatcherConfig, SourceError, SourceService,
};
pub use payload::{
    ALL_EVENT_TYPES, DEFAULT_PARTITION, DICOM_IMAGE_CREATED, DICOM_IMAGE_DELETED,
    DICOM_IMAGE_UPDATED, VALIDATION_EVENT_TYPE, event_id, event_json, validation_event,
};
pub use store::{DeliverySchema, EventStore, Subscription, SubscriptionStats};
pub use webhook::{UrlRefusal, WebhookClient, WebhookConfig, check_endpoint_url};

/// What went wrong in the event store or the dispatcher.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The database failed.
    #[error("event store database error: {0}")]
    Database(#[from] hds_db::DbError),
    /// A query failed.
    #[error("event store query error: {0}")]
    Query(#[from] sqlx::Error),
    /// A stored row does not read back.
    #[error("event store row is corrupt: {0}")]
    Corrupt(&'static str),
    /// The webhook client could not be built.
    #[error("webhook client configuration: {0}")]
    Configuration(String),
}

/// Microseconds since 1970-01-01 UTC, now.
pub(crate) fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
