//! The dispatcher: the task that delivers each subscription's events.
//!
//! Each pass walks the active subscriptions. For one it holds the lease of (taken when free
//! or expired, renewed while it has less than half left, and checked by every cursor move), it
//! asks the [`ChangeSource`] for the workspace's DICOM services and, for each service whose
//! keys are in memory and whose cursor is not waiting for a retry, reads the changes after the
//! cursor, builds one batch (the subscription's filter, `maxEventsPerBatch`,
//! `preferredBatchSizeInKilobytes`) and posts it. Changes the filter leaves out move the
//! cursor without a post.
//!
//! A failed post waits on Event Grid's retry schedule (10 s, 30 s, 1 min, 5 min, 10 min,
//! 30 min, 1 h, 3 h, 6 h, then every 12 h; [`DispatcherConfig::first_retry`] scales it) and
//! is tried again, as the same batch with the same event ids, until `maxDeliveryAttempts`
//! attempts failed or `eventTimeToLiveInMinutes` passed since the first failure (counted from
//! there rather than from the change, so that an outage of hds itself expires nothing). A
//! 400, 401, 403 or 413 is not retried, as in Event Grid. Either way the batch is then counted
//! as dead-lettered (hds has no dead-letter destination) and the cursor moves past it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::Notify;

use crate::payload::{event_json, subject};
use crate::store::{Cursor, EventStore, StoredSubscription};
use crate::webhook::{Delivery, WebhookClient};
use crate::{EventError, now_us};

/// What happened to an instance, as the events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Stored (`DicomImageCreated`; a replacement too).
    Created,
    /// Deleted (`DicomImageDeleted`).
    Deleted,
    /// Changed in place (`DicomImageUpdated`).
    Updated,
}

/// One change feed entry, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its sequence in its service's feed.
    pub sequence: i64,
    /// When it was committed (microseconds since 1970, UTC).
    pub timestamp_micros: i64,
    /// What happened.
    pub kind: ChangeKind,
    /// StudyInstanceUID.
    pub study_instance_uid: String,
    /// SeriesInstanceUID.
    pub series_instance_uid: String,
    /// SOPInstanceUID.
    pub sop_instance_uid: String,
    /// The data partition of the instance; `None` for the default partition.
    pub partition_name: Option<String>,
}

/// A DICOM service of a workspace, as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceService {
    /// Its internal id (its change feed's key).
    pub service: String,
    /// Its `serviceHostName` (see the payload module).
    pub host_name: String,
    /// Whether its keys are in memory and its key access is not lost: no events otherwise.
    pub available: bool,
}

/// Why the source could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The service's keys are not in memory (its key access was lost): retried later.
    #[error("the service's keys are not available")]
    KeysUnavailable,
    /// Anything else (no instance data in it).
    #[error("{0}")]
    Failed(String),
}

/// Where changes come from: the DICOM services of a workspace and their change feeds. The
/// `hds` binary implements it over the DICOM host and the archive; tests with a fake.
pub trait ChangeSource: Send + Sync + 'static {
    /// The DICOM services of the workspace `workspace_id` served now.
    fn services<'a>(
        &'a self,
        workspace_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<SourceService>, SourceError>>;

    /// At most `limit` changes of `service` after sequence `after`, in sequence order.
    fn changes_after<'a>(
        &'a self,
        service: &'a str,
        after: i64,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<Change>, SourceError>>;

    /// The latest sequence of `service` (0 when it has none).
    fn latest_sequence<'a>(&'a self, service: &'a str) -> BoxFuture<'a, Result<i64, SourceError>>;

    /// The sequence of the first change of `service` committed at or after `since_micros`.
    fn first_since<'a>(
        &'a self,
        service: &'a str,
        since_micros: i64,
    ) -> BoxFuture<'a, Result<Option<i64>, SourceError>>;
}

/// Event Grid's retry schedule, in seconds.
const RETRY_SCHEDULE: [u64; 10] = [10, 30, 60, 300, 600, 1800, 3600, 10_800, 21_600, 43_200];

/// How the dispatcher runs.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// How often an idle dispatcher looks for changes.
    pub idle_interval: Duration,
    /// How long a subscription's lease lasts unrenewed (longer than a request may take).
    pub lease: Duration,
    /// The first retry's delay; the later ones follow Event Grid's schedule in proportion
    /// (10 s: exactly Event Grid's).
    pub first_retry: Duration,
    /// Where the outcome of each attempt is counted (`/metrics`).
    pub metrics: hds_metrics::EventDeliveryMetrics,
}

impl Default for DispatcherConfig {
    fn default() -> DispatcherConfig {
        DispatcherConfig {
            idle_interval: Duration::from_secs(1),
            lease: Duration::from_secs(90),
            first_retry: Duration::from_secs(10),
            metrics: hds_metrics::EventDeliveryMetrics::default(),
        }
    }
}

impl DispatcherConfig {
    /// The wait after the `attempts`-th failed attempt.
    fn retry_delay(&self, attempts: i64) -> Duration {
        let step = usize::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(RETRY_SCHEDULE.len() - 1);
        let factor = RETRY_SCHEDULE[step] / RETRY_SCHEDULE[0];
        self.first_retry
            .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
    }
}

/// How many subscriptions one pass serves at once.
const CONCURRENT_SUBSCRIPTIONS: usize = 8;

/// The most changes read for one batch beyond its events (changes the filter leaves out).
const READ_AHEAD: i64 = 100;

struct Inner {
    store: EventStore,
    source: Arc<dyn ChangeSource>,
    client: WebhookClient,
    config: DispatcherConfig,
    /// A fresh owner per process: a restarted process waits for its predecessor's leases to
    /// expire like any other node, unless it released them at shutdown.
    owner: String,
    /// The leases this process holds: subscription key to until when (microseconds).
    held: Mutex<HashMap<String, i64>>,
    wakeup: Notify,
}

/// Delivers the events of every active subscription. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher delivering what `store` records, from `source`, through `client`.
    pub fn new(
        store: EventStore,
        source: Arc<dyn ChangeSource>,
        client: WebhookClient,
        config: DispatcherConfig,
    ) -> Dispatcher {
        Dispatcher {
            inner: Arc::new(Inner {
                store,
                source,
                client,
                config,
                owner: uuid::Uuid::new_v4().simple().to_string(),
                held: Mutex::new(HashMap::new()),
                wakeup: Notify::new(),
            }),
        }
    }

    /// Runs a pass soon rather than after the idle interval (a subscription was added).
    pub fn wake(&self) {
        self.inner.wakeup.notify_one();
    }

    /// Starts the task that runs passes: again at once after one that delivered something,
    /// else after the idle interval (or a [`wake`](Self::wake)).
    pub fn spawn(&self) -> tokio::task::JoinHandle<()> {
        let dispatcher = self.clone();
        tokio::spawn(async move {
            loop {
                let pause = match dispatcher.step().await {
                    Ok(true) => None,
                    Ok(false) => Some(dispatcher.inner.config.idle_interval),
                    Err(error) => {
                        tracing::warn!(%error, "an event delivery pass failed; retrying later");
                        Some(dispatcher.inner.config.idle_interval)
                    }
                };
                match pause {
                    None => tokio::task::yield_now().await,
                    Some(pause) => {
                        let _ =
                            tokio::time::timeout(pause, dispatcher.inner.wakeup.notified()).await;
                    }
                }
            }
        })
    }

    /// Gives up this process's leases (call at a clean shutdown, after stopping the task).
    pub async fn release_leases(&self) -> Result<(), EventError> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.inner.store.release_leases(&self.inner.owner).await
    }

    /// One pass over every subscription; whether anything was delivered or skipped past.
    /// Subscriptions are served [`CONCURRENT_SUBSCRIPTIONS`] at a time, so a slow endpoint
    /// (up to a request timeout per attempt) does not hold the others back.
    pub async fn step(&self) -> Result<bool, EventError> {
        let keys = self.inner.store.subscription_keys().await?;
        let outcomes: Vec<Result<bool, EventError>> = futures::stream::iter(keys)
            .map(|key| async move { self.step_subscription(&key).await })
            .buffer_unordered(CONCURRENT_SUBSCRIPTIONS)
            .collect()
            .await;
        let mut progressed = false;
        for outcome in outcomes {
            progressed |= outcome?;
        }
        Ok(progressed)
    }

    /// The next batch of each service of subscription `key`, if this process holds its lease.
    async fn step_subscription(&self, key: &str) -> Result<bool, EventError> {
        if !self.hold(key).await? {
            return Ok(false);
        }
        let Some(stored) = self.inner.store.load(key).await? else {
            return Ok(false);
        };
        let services = match self
            .inner
            .source
            .services(&stored.subscription.workspace_id)
            .await
        {
            Ok(services) => services,
            Err(error) => {
                tracing::warn!(subscription = %stored.subscription.id, %error, "the workspace's DICOM services could not be listed for event delivery");
                return Ok(false);
            }
        };
        let mut progressed = false;
        for service in services.iter().filter(|service| service.available) {
            match self.deliver_batch(key, &stored, service).await {
                Ok(moved) => progressed |= moved,
                Err(BatchError::Source(SourceError::KeysUnavailable)) => {}
                Err(BatchError::Source(error)) => {
                    tracing::warn!(subscription = %stored.subscription.id, service = %service.service, %error, "the change feed could not be read for event delivery");
                }
                Err(BatchError::Store(error)) => return Err(error),
            }
        }
        Ok(progressed)
    }

    /// Whether this process holds the lease of `key`, taking or renewing it when it is free,
    /// expired, or has less than half of its time left.
    async fn hold(&self, key: &str) -> Result<bool, EventError> {
        let now = now_us();
        let lease = i64::try_from(self.inner.config.lease.as_micros()).unwrap_or(i64::MAX);
        let until = self
            .inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied();
        if until.is_some_and(|until| until - now > lease / 2) {
            return Ok(true);
        }
        let until = now.saturating_add(lease);
        let taken = self
            .inner
            .store
            .take_lease(key, &self.inner.owner, until)
            .await?;
        let mut held = self
            .inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if taken {
            held.insert(key.to_owned(), until);
        } else {
            held.remove(key);
        }
        Ok(taken)
    }

    /// Where a new cursor of a subscription active since `since` starts on `service`: before
    /// its first change committed since then, or at its latest (read first, so that a change
    /// committed between the two reads is found by the second).
    async fn start_cursor(&self, service: &str, since: i64) -> Result<i64, SourceError> {
        let latest = self.inner.source.latest_sequence(service).await?;
        Ok(match self.inner.source.first_since(service, since).await? {
            Some(first) => first - 1,
            None => latest,
        })
    }

    /// Delivers (or skips past) the next batch of `service` for the subscription; whether the
    /// cursor moved.
    async fn deliver_batch(
        &self,
        key: &str,
        stored: &StoredSubscription,
        service: &crate::SourceService,
    ) -> Result<bool, BatchError> {
        let store = &self.inner.store;
        let subscription = &stored.subscription;
        let owner = &self.inner.owner;
        let cursor = match store.cursor(key, &service.service).await? {
            Some(cursor) => cursor,
            None => {
                let start = self
                    .start_cursor(&service.service, stored.active_since_us)
                    .await?;
                store.create_cursor(key, &service.service, start).await?;
                match store.cursor(key, &service.service).await? {
                    Some(cursor) => cursor,
                    None => return Ok(false),
                }
            }
        };
        let now = now_us();
        if cursor.next_attempt_us > now {
            return Ok(false);
        }
        let max_events = usize::try_from(subscription.max_events_per_batch.max(1)).unwrap_or(1);
        let max_bytes = usize::try_from(subscription.preferred_batch_kb.max(1))
            .unwrap_or(1)
            .saturating_mul(1024);
        let changes = self
            .inner
            .source
            .changes_after(
                &service.service,
                cursor.last_sequence,
                i64::try_from(max_events)
                    .unwrap_or(i64::MAX)
                    .saturating_add(READ_AHEAD),
            )
            .await?;
        let mut events: Vec<Value> = Vec::new();
        let mut bytes = 0usize;
        let mut through = cursor.last_sequence;
        for change in &changes {
            if change.sequence <= through {
                continue;
            }
            if !subscription.accepts(
                change.kind.event_type(),
                &subject(&service.host_name, change),
            ) {
                through = change.sequence;
                continue;
            }
            let event = event_json(
                subscription.schema,
                &subscription.workspace_id,
                &service.host_name,
                &service.service,
                change,
            );
            let size = event.to_string().len();
            if !events.is_empty() && (events.len() >= max_events || bytes + size > max_bytes) {
                break;
            }
            bytes += size;
            events.push(event);
            through = change.sequence;
        }
        if through == cursor.last_sequence {
            return Ok(false);
        }
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let counted = u64::try_from(events.len()).unwrap_or(u64::MAX);
        // Moves the cursor past this batch, counting its events delivered or dead-lettered.
        let advance = |delivered: i64, dead_lettered: i64| {
            store.advance(
                key,
                &service.service,
                owner,
                cursor.last_sequence,
                through,
                delivered,
                dead_lettered,
            )
        };
        if events.is_empty() {
            return Ok(advance(0, 0).await?);
        }
        // The subscription may have been deleted since this pass loaded it (its cursors go
        // with it). Checked after the changes were read: nothing committed after a
        // subscription's deletion is ever sent to it.
        if store.cursor(key, &service.service).await?.is_none() {
            return Ok(false);
        }
        // The lease is checked (and renewed when due) right before the post, so a post starts
        // with at least half a lease left, more than a request may take.
        if !self.hold(key).await? {
            return Ok(false);
        }
        let delivery = self
            .inner
            .client
            .deliver(
                &subscription.endpoint_url,
                subscription.schema,
                &subscription.name,
                cursor.attempts,
                events,
            )
            .await;
        let metrics = &self.inner.config.metrics;
        match delivery {
            Delivery::Acknowledged => {
                metrics.delivered(counted);
                Ok(advance(count, 0).await?)
            }
            Delivery::Refused(status) => {
                metrics.dead_lettered(counted);
                tracing::warn!(subscription = %subscription.id, status, events = count, "the endpoint refused a batch of events (not retried); dead-lettered");
                Ok(advance(0, count).await?)
            }
            Delivery::Failed(reason) => {
                let attempts = cursor.attempts + 1;
                let first_failure = cursor.first_failure_us.unwrap_or(now);
                let ttl = i64::from(subscription.event_ttl_minutes).saturating_mul(60_000_000);
                if attempts >= i64::from(subscription.max_delivery_attempts)
                    || now - first_failure >= ttl
                {
                    metrics.dead_lettered(counted);
                    tracing::warn!(subscription = %subscription.id, attempts, events = count, reason = %reason, "a batch of events could not be delivered within the retry policy; dead-lettered");
                    return Ok(advance(0, count).await?);
                }
                metrics.retried();
                let delay = self.inner.config.retry_delay(attempts);
                tracing::info!(subscription = %subscription.id, attempts, reason = %reason, retry_in_ms = delay.as_millis() as u64, "an event delivery failed; it will be retried");
                store
                    .record_failure(
                        key,
                        &service.service,
                        owner,
                        cursor.last_sequence,
                        Cursor {
                            last_sequence: cursor.last_sequence,
                            attempts,
                            first_failure_us: Some(first_failure),
                            next_attempt_us: now.saturating_add(
                                i64::try_from(delay.as_micros()).unwrap_or(i64::MAX),
                            ),
                        },
                    )
                    .await?;
                Ok(false)
            }
        }
    }
}

/// Why one batch was not delivered.
enum BatchError {
    Source(SourceError),
    Store(EventError),
}

impl From<SourceError> for BatchError {
    fn from(error: SourceError) -> BatchError {
        BatchError::Source(error)
    }
}

impl From<EventError> for BatchError {
    fn from(error: EventError) -> BatchError {
        BatchError::Store(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_follow_event_grids_schedule() {
        let config = DispatcherConfig::default();
        assert_eq!(config.retry_delay(1), Duration::from_secs(10));
        assert_eq!(config.retry_delay(2), Duration::from_secs(30));
        assert_eq!(config.retry_delay(4), Duration::from_secs(300));
        assert_eq!(config.retry_delay(40), Duration::from_secs(43_200));
        let fast = DispatcherConfig {
            first_retry: Duration::from_millis(100),
            ..DispatcherConfig::default()
        };
        assert_eq!(fast.retry_delay(2), Duration::from_millis(300));
    }
}
