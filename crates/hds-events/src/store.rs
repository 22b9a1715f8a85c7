//! The event subscriptions delivery runs for, their leases, counts and cursors.
//!
//! A row per event subscription that passed its validation handshake: where and how to
//! deliver, which events, the retry policy, and since when it is active (events committed
//! before that are not sent, as in Azure). Beside it, a cursor per (subscription, DICOM
//! service): the last change feed sequence delivered (or dead-lettered), and the state of the
//! retries of the batch after it. The ARM resource is the control plane's; this row is its
//! working copy, written by the provider when the resource is created or changed and removed
//! with it.

use hds_db::{Database, Migration};
use sqlx::Row;

use crate::{EventError, now_us};

/// The component name of this crate's migrations.
pub const MIGRATION_COMPONENT: &str = "events";

/// This crate's migrations. Released ones are never edited: add new ones.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "event subscriptions and their delivery cursors",
    sqlite: include_str!("../migrations/sqlite/0001_event_subscriptions.sql"),
    postgres: include_str!("../migrations/postgres/0001_event_subscriptions.sql"),
}];

/// The form events are posted in (`properties.eventDeliverySchema`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverySchema {
    /// `EventGridSchema`: an array of Event Grid events.
    EventGrid,
    /// `CloudEventSchemaV1_0`: CloudEvents 1.0 in structured mode (one event) or a batch.
    CloudEvents,
}

impl DeliverySchema {
    /// Azure's name.
    pub fn name(self) -> &'static str {
        match self {
            DeliverySchema::EventGrid => "EventGridSchema",
            DeliverySchema::CloudEvents => "CloudEventSchemaV1_0",
        }
    }

    /// The schema Azure names `text` (in any case).
    pub fn parse(text: &str) -> Option<DeliverySchema> {
        if text.eq_ignore_ascii_case("EventGridSchema") {
            Some(DeliverySchema::EventGrid)
        } else if text.eq_ignore_ascii_case("CloudEventSchemaV1_0") {
            Some(DeliverySchema::CloudEvents)
        } else {
            None
        }
    }
}

/// An event subscription as delivery needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The event subscription's ARM resource id.
    pub id: String,
    /// Its name (sent in `aeg-subscription-name`).
    pub name: String,
    /// The workspace's resource id: the topic's source, and the `topic`/`source` of events.
    pub workspace_id: String,
    /// Where events are posted.
    pub endpoint_url: String,
    /// In which form.
    pub schema: DeliverySchema,
    /// The full event types delivered (`Microsoft.HealthcareApis.DicomImageCreated`...); empty
    /// means all.
    pub included_event_types: Vec<String>,
    /// `filter.subjectBeginsWith` (empty: no condition).
    pub subject_begins_with: String,
    /// `filter.subjectEndsWith` (empty: no condition).
    pub subject_ends_with: String,
    /// `filter.isSubjectCaseSensitive`.
    pub subject_case_sensitive: bool,
    /// `destination.properties.maxEventsPerBatch` (1 to 5000).
    pub max_events_per_batch: u32,
    /// `destination.properties.preferredBatchSizeInKilobytes` (1 to 1024).
    pub preferred_batch_kb: u32,
    /// `retryPolicy.maxDeliveryAttempts` (1 to 30).
    pub max_delivery_attempts: u32,
    /// `retryPolicy.eventTimeToLiveInMinutes` (1 to 1440).
    pub event_ttl_minutes: u32,
}

impl Subscription {
    /// Whether an event of `event_type` about `subject` passes the filter.
    pub(crate) fn accepts(&self, event_type: &str, subject: &str) -> bool {
        let type_ok = self.included_event_types.is_empty()
            || self
                .included_event_types
                .iter()
                .any(|included| included.eq_ignore_ascii_case(event_type));
        if !type_ok {
            return false;
        }
        if self.subject_case_sensitive {
            subject.starts_with(&self.subject_begins_with)
                && subject.ends_with(&self.subject_ends_with)
        } else {
            let subject = subject.to_lowercase();
            subject.starts_with(&self.subject_begins_with.to_lowercase())
                && subject.ends_with(&self.subject_ends_with.to_lowercase())
        }
    }
}

/// What a subscription's delivery did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionStats {
    /// Events a webhook acknowledged.
    pub delivered: i64,
    /// Events given up on (attempts or time to live exhausted, or a refusal not retried).
    pub dead_lettered: i64,
}

/// A subscription row with what the dispatcher keeps on it.
#[derive(Debug, Clone)]
pub(crate) struct StoredSubscription {
    pub(crate) subscription: Subscription,
    pub(crate) active_since_us: i64,
}

/// A delivery cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    /// The last sequence delivered or given up on.
    pub(crate) last_sequence: i64,
    /// Failed attempts at the batch after it.
    pub(crate) attempts: i64,
    /// When the first of those failed.
    pub(crate) first_failure_us: Option<i64>,
    /// Not before this is the batch tried again.
    pub(crate) next_attempt_us: i64,
}

/// Subscriptions and cursors in the shared database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventStore {
    database: Database,
}

/// ARM ids compare case-insensitively.
fn key_of(id: &str) -> String {
    id.trim_end_matches('/').to_lowercase()
}

impl EventStore {
    /// The store on `database`, with this crate's migrations applied.
    pub async fn open(database: Database) -> Result<EventStore, EventError> {
        database.migrate(MIGRATION_COMPONENT, MIGRATIONS).await?;
        Ok(EventStore { database })
    }

    /// Records `subscription` as active (from now, when new), or updates what it says,
    /// keeping its cursors, counts and lease.
    pub async fn put_subscription(&self, subscription: &Subscription) -> Result<(), EventError> {
        let types = serde_json::Value::from(subscription.included_event_types.clone()).to_string();
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "INSERT INTO event_subscriptions (id_key, id, name, workspace_key, topic, \
             endpoint_url, delivery_schema, included_types, subject_begins_with, \
             subject_ends_with, subject_case_sensitive, max_events_per_batch, \
             preferred_batch_kb, max_attempts, ttl_minutes, active_since_us, delivered, \
             dead_lettered) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             $15, $16, 0, 0) ON CONFLICT (id_key) DO UPDATE SET id = excluded.id, \
             name = excluded.name, workspace_key = excluded.workspace_key, \
             topic = excluded.topic, endpoint_url = excluded.endpoint_url, \
             delivery_schema = excluded.delivery_schema, \
             included_types = excluded.included_types, \
             subject_begins_with = excluded.subject_begins_with, \
             subject_ends_with = excluded.subject_ends_with, \
             subject_case_sensitive = excluded.subject_case_sensitive, \
             max_events_per_batch = excluded.max_events_per_batch, \
             preferred_batch_kb = excluded.preferred_batch_kb, \
             max_attempts = excluded.max_attempts, ttl_minutes = excluded.ttl_minutes",
        )
        .bind(key_of(&subscription.id))
        .bind(&subscription.id)
        .bind(&subscription.name)
        .bind(key_of(&subscription.workspace_id))
        .bind(&subscription.workspace_id)
        .bind(&subscription.endpoint_url)
        .bind(subscription.schema.name())
        .bind(types)
        .bind(&subscription.subject_begins_with)
        .bind(&subscription.subject_ends_with)
        .bind(i64::from(subscription.subject_case_sensitive))
        .bind(i64::from(subscription.max_events_per_batch))
        .bind(i64::from(subscription.preferred_batch_kb))
        .bind(i64::from(subscription.max_delivery_attempts))
        .bind(i64::from(subscription.event_ttl_minutes))
        .bind(now_us())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Removes the subscription `id` and its cursors; whether it existed.
    pub async fn delete_subscription(&self, id: &str) -> Result<bool, EventError> {
        let key = key_of(id);
        let mut transaction = self.database.begin_write().await?;
        sqlx::query("DELETE FROM event_cursors WHERE subscription_key = $1")
            .bind(&key)
            .execute(&mut *transaction)
            .await?;
        let deleted = sqlx::query("DELETE FROM event_subscriptions WHERE id_key = $1")
            .bind(&key)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        transaction.commit().await?;
        Ok(deleted > 0)
    }

    /// Whether any active subscription delivers the events of workspace `workspace_id`: the
    /// DICOM service's `eventState`.
    pub async fn workspace_has_subscription(&self, workspace_id: &str) -> Result<bool, EventError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT CAST(1 AS BIGINT) FROM event_subscriptions WHERE workspace_key = $1 LIMIT 1",
        )
        .bind(key_of(workspace_id))
        .fetch_optional(self.database.pool())
        .await?;
        Ok(found.is_some())
    }

    /// What subscription `id` delivered and gave up on, if it is active.
    pub async fn stats(&self, id: &str) -> Result<Option<SubscriptionStats>, EventError> {
        let row = sqlx::query(
            "SELECT delivered, dead_lettered FROM event_subscriptions WHERE id_key = $1",
        )
        .bind(key_of(id))
        .fetch_optional(self.database.pool())
        .await?;
        row.map(|row| {
            Ok(SubscriptionStats {
                delivered: row.try_get(0)?,
                dead_lettered: row.try_get(1)?,
            })
        })
        .transpose()
    }

    /// The ids (keys) of every active subscription.
    pub(crate) async fn subscription_keys(&self) -> Result<Vec<String>, EventError> {
        Ok(
            sqlx::query_scalar("SELECT id_key FROM event_subscriptions ORDER BY id_key")
                .fetch_all(self.database.pool())
                .await?,
        )
    }

    /// The subscription `key`, if it is still active.
    pub(crate) async fn load(&self, key: &str) -> Result<Option<StoredSubscription>, EventError> {
        let row = sqlx::query(
            "SELECT id, name, workspace_key, topic, endpoint_url, delivery_schema, \
             included_types, subject_begins_with, subject_ends_with, subject_case_sensitive, \
             max_events_per_batch, preferred_batch_kb, max_attempts, ttl_minutes, \
             active_since_us FROM event_subscriptions WHERE id_key = $1",
        )
        .bind(key)
        .fetch_optional(self.database.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let schema: String = row.try_get(5)?;
        let types: String = row.try_get(6)?;
        let number = |index: usize| -> Result<u32, EventError> {
            let value: i64 = row.try_get(index)?;
            u32::try_from(value).map_err(|_| EventError::Corrupt("subscription number"))
        };
        Ok(Some(StoredSubscription {
            subscription: Subscription {
                id: row.try_get(0)?,
                name: row.try_get(1)?,
                workspace_id: row.try_get(3)?,
                endpoint_url: row.try_get(4)?,
                schema: DeliverySchema::parse(&schema)
                    .ok_or(EventError::Corrupt("delivery schema"))?,
                included_event_types: serde_json::from_str(&types)
                    .map_err(|_| EventError::Corrupt("included event types"))?,
                subject_begins_with: row.try_get(7)?,
                subject_ends_with: row.try_get(8)?,
                subject_case_sensitive: row.try_get::<i64, _>(9)? != 0,
                max_events_per_batch: number(10)?,
                preferred_batch_kb: number(11)?,
                max_delivery_attempts: number(12)?,
                event_ttl_minutes: number(13)?,
            },
            active_since_us: row.try_get(14)?,
        }))
    }

    /// Takes (or renews) the lease of subscription `key` for `owner` until `until_us`, if it
    /// is free, expired or already `owner`'s.
    pub(crate) async fn take_lease(
        &self,
        key: &str,
        owner: &str,
        until_us: i64,
    ) -> Result<bool, EventError> {
        let mut transaction = self.database.begin_write().await?;
        let taken = sqlx::query(
            "UPDATE event_subscriptions SET lease_owner = $1, lease_until_us = $2 \
             WHERE id_key = $3 AND (lease_owner IS NULL OR lease_owner = $1 \
             OR lease_until_us < $4)",
        )
        .bind(owner)
        .bind(until_us)
        .bind(key)
        .bind(now_us())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        transaction.commit().await?;
        Ok(taken == 1)
    }

    /// Gives up `owner`'s leases (at a clean shutdown), so another process, or this one
    /// restarted, goes on without waiting for them to expire.
    pub(crate) async fn release_leases(&self, owner: &str) -> Result<(), EventError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "UPDATE event_subscriptions SET lease_owner = NULL, lease_until_us = NULL \
             WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// The cursor of subscription `key` on `service`, if it has one.
    pub(crate) async fn cursor(
        &self,
        key: &str,
        service: &str,
    ) -> Result<Option<Cursor>, EventError> {
        let row = sqlx::query(
            "SELECT last_sequence, attempts, first_failure_us, next_attempt_us \
             FROM event_cursors WHERE subscription_key = $1 AND service = $2",
        )
        .bind(key)
        .bind(service)
        .fetch_optional(self.database.pool())
        .await?;
        row.map(|row| {
            Ok(Cursor {
                last_sequence: row.try_get(0)?,
                attempts: row.try_get(1)?,
                first_failure_us: row.try_get(2)?,
                next_attempt_us: row.try_get(3)?,
            })
        })
        .transpose()
    }

    /// Creates the cursor of subscription `key` on `service` at `last_sequence`, unless one
    /// exists (another holder made it first).
    pub(crate) async fn create_cursor(
        &self,
        key: &str,
        service: &str,
        last_sequence: i64,
    ) -> Result<(), EventError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "INSERT INTO event_cursors (subscription_key, service, last_sequence, attempts, \
             next_attempt_us) SELECT $1, $2, $3, 0, 0 WHERE EXISTS \
             (SELECT 1 FROM event_subscriptions WHERE id_key = $1) \
             ON CONFLICT (subscription_key, service) DO NOTHING",
        )
        .bind(key)
        .bind(service)
        .bind(last_sequence)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Moves the cursor from `from` to `to` and counts the batch, if `owner` still holds the
    /// subscription's lease and nobody moved the cursor meanwhile; whether it moved.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn advance(
        &self,
        key: &str,
        service: &str,
        owner: &str,
        from: i64,
        to: i64,
        delivered: i64,
        dead_lettered: i64,
    ) -> Result<bool, EventError> {
        let mut transaction = self.database.begin_write().await?;
        let moved = sqlx::query(
            "UPDATE event_cursors SET last_sequence = $1, attempts = 0, \
             first_failure_us = NULL, next_attempt_us = 0 WHERE subscription_key = $2 \
             AND service = $3 AND last_sequence = $4 AND EXISTS (SELECT 1 FROM \
             event_subscriptions s WHERE s.id_key = $2 AND s.lease_owner = $5)",
        )
        .bind(to)
        .bind(key)
        .bind(service)
        .bind(from)
        .bind(owner)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if moved == 1 && (delivered > 0 || dead_lettered > 0) {
            sqlx::query(
                "UPDATE event_subscriptions SET delivered = delivered + $1, \
                 dead_lettered = dead_lettered + $2 WHERE id_key = $3",
            )
            .bind(delivered)
            .bind(dead_lettered)
            .bind(key)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(moved == 1)
    }

    /// Records a failed attempt at the batch after `at`: the attempts so far, when the first
    /// failed, and when to try again.
    pub(crate) async fn record_failure(
        &self,
        key: &str,
        service: &str,
        owner: &str,
        at: i64,
        failure: Cursor,
    ) -> Result<(), EventError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "UPDATE event_cursors SET attempts = $1, first_failure_us = $2, \
             next_attempt_us = $3 WHERE subscription_key = $4 AND service = $5 \
             AND last_sequence = $6 AND EXISTS (SELECT 1 FROM event_subscriptions s \
             WHERE s.id_key = $4 AND s.lease_owner = $7)",
        )
        .bind(failure.attempts)
        .bind(failure.first_failure_us)
        .bind(failure.next_attempt_us)
        .bind(key)
        .bind(service)
        .bind(at)
        .bind(owner)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }
}
