//! hds's audit log: who (a principal id) did what (an operation name) to which resource (a
//! resource id), when, and with what outcome. Records are appended, never updated, and chained:
//! each carries an HMAC-SHA256 over its own fields and the previous record's MAC, under a key
//! derived from the root key. [`AuditLog::verify`] recomputes the chain, so an edited, inserted
//! or removed record is detected, and without the root key nobody can forge a chain that
//! verifies. Cutting records off the end leaves a shorter chain that still verifies: compare
//! the count with an earlier one (`hds audit verify` prints it) to notice that.
//!
//! Records hold identifiers and fixed words only: principal ids, resource ids (ARM ids, key
//! ids), operation names, outcomes. Never PHI (no DICOM value or UID), never a token or key
//! material: the callers pass nothing else, and the fields are bounded in length.

#![deny(missing_docs)]

use std::sync::Arc;

use aws_lc_rs::hmac;
use hds_crypto::root::RootKey;
use hds_db::{Database, DbError, Migration};
use sqlx::Row;

/// The migrations of the `audit` component.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "the hash-chained audit log",
    sqlite: include_str!("../migrations/sqlite/0001_audit_log.sql"),
    postgres: include_str!("../migrations/postgres/0001_audit_log.sql"),
}];

const COMPONENT: &str = "audit";

/// The root key's derivation purpose for the chain's MAC key. DO NOT CHANGE: stored chains
/// verify only under the key they were written with.
const MAC_KEY_PURPOSE: &str = "hds-audit-chain-v1";

/// The longest field kept; anything longer is cut (fields are ids and fixed words).
const MAX_FIELD_CHARS: usize = 512;

/// How often an append retries when another process appended the same sequence number first.
const APPEND_ATTEMPTS: usize = 8;

/// Why the audit log failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The database failed.
    #[error("audit log database: {0}")]
    Database(#[from] sqlx::Error),
    /// Opening or migrating the database failed.
    #[error("audit log setup: {0}")]
    Setup(#[from] DbError),
    /// Other writers kept taking the next sequence number.
    #[error("the audit log is contended: no append succeeded in {APPEND_ATTEMPTS} attempts")]
    Contended,
}

/// One thing to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who: the principal id of the caller.
    pub principal_id: String,
    /// What: the operation, e.g. `Microsoft.KeyVault/vaults/keys/wrap/action`.
    pub operation: String,
    /// Which resource: its resource id (a key, a role assignment's scope, a DICOM service).
    pub resource_id: String,
    /// How it ended, e.g. `allowed`, `denied`.
    pub outcome: String,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its position in the chain, from 1.
    pub sequence: i64,
    /// When it was recorded, in milliseconds since the Unix epoch.
    pub recorded_ms: i64,
    /// What was recorded.
    pub event: AuditEvent,
    /// The MAC of the record before it (empty for the first).
    pub previous_mac: String,
    /// This record's MAC.
    pub mac: String,
}

/// Which records to list. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this principal's.
    pub principal_id: Option<String>,
    /// Only this operation.
    pub operation: Option<String>,
    /// Only this resource and those under it (an id prefix ending at a `/`).
    pub resource_id: Option<String>,
    /// Only records at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    /// Only records at or before this time (ms since the epoch).
    pub until_ms: Option<i64>,
    /// Only records after this sequence number (the next page of a listing).
    pub after_sequence: Option<i64>,
    /// At most this many, the oldest first.
    pub limit: Option<u32>,
}

/// What [`AuditLog::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every record's MAC and link hold.
    Intact {
        /// How many records the chain holds.
        records: u64,
    },
    /// The chain breaks at `sequence`.
    Broken {
        /// The first record that does not verify.
        sequence: i64,
        /// Why: its MAC, its link to the previous record, or a gap before it.
        reason: &'static str,
    },
}

/// The audit log in one database. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    database: Database,
    mac_key: Arc<hmac::Key>,
    /// Appends of this process take turns (the database decides between processes).
    append_turn: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// The audit log in `database` (applying its migrations), chained under a key derived from
    /// `root_key`.
    pub async fn open(database: Database, root_key: &RootKey) -> Result<AuditLog, AuditError> {
        database.migrate(COMPONENT, MIGRATIONS).await?;
        let key_bytes = root_key.derive(MAC_KEY_PURPOSE);
        let mac_key = hmac::Key::new(hmac::HMAC_SHA256, key_bytes.as_ref());
        Ok(AuditLog {
            database,
            mac_key: Arc::new(mac_key),
            append_turn: Arc::default(),
        })
    }

    /// Appends `event` at the end of the chain; returns its sequence number.
    pub async fn append(&self, event: &AuditEvent) -> Result<i64, AuditError> {
        self.append_all(std::slice::from_ref(event)).await
    }

    /// Appends `events`, in order, at the end of the chain in one transaction (one commit, one
    /// sync, however many records); returns the last one's sequence number (0 for none).
    pub async fn append_all(&self, events: &[AuditEvent]) -> Result<i64, AuditError> {
        if events.is_empty() {
            return Ok(0);
        }
        let events: Vec<AuditEvent> = events
            .iter()
            .map(|event| AuditEvent {
                principal_id: bounded(&event.principal_id),
                operation: bounded(&event.operation),
                resource_id: bounded(&event.resource_id),
                outcome: bounded(&event.outcome),
            })
            .collect();
        let _turn = self.append_turn.lock().await;
        'attempt: for _ in 0..APPEND_ATTEMPTS {
            let mut transaction = self.database.begin_write().await?;
            let last =
                sqlx::query("SELECT sequence, mac FROM audit_log ORDER BY sequence DESC LIMIT 1")
                    .fetch_optional(&mut *transaction)
                    .await?;
            let (mut sequence, mut previous_mac) = match last {
                Some(row) => (row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?),
                None => (0, String::new()),
            };
            let recorded_ms = now_ms();
            let mut records = Vec::with_capacity(events.len());
            for event in &events {
                sequence += 1;
                let mac = self.mac(sequence, recorded_ms, event, &previous_mac);
                let previous = std::mem::replace(&mut previous_mac, mac.clone());
                records.push(Record {
                    sequence,
                    event,
                    previous_mac: previous,
                    mac,
                });
            }
            // Many records per statement: a batch of busy traffic holds the database's one
            // write turn (the index's group commits wait for it) for a few statements, not one
            // round trip per record.
            for chunk in records.chunks(RECORDS_PER_INSERT) {
                match insert_records(&mut transaction, chunk, recorded_ms).await {
                    Ok(()) => {}
                    // Another process took one of these sequence numbers: read the new end and
                    // try again (the transaction rolls back when dropped).
                    Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                        continue 'attempt;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            transaction.commit().await?;
            return Ok(sequence);
        }
        Err(AuditError::Contended)
    }

    /// The records `filter` selects, the oldest first.
    pub async fn list(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        let mut conditions: Vec<String> = Vec::new();
        let mut texts: Vec<String> = Vec::new();
        if let Some(principal_id) = &filter.principal_id {
            texts.push(principal_id.clone());
            conditions.push(format!("principal_id = ${}", texts.len()));
        }
        if let Some(operation) = &filter.operation {
            texts.push(operation.clone());
            conditions.push(format!("operation = ${}", texts.len()));
        }
        if let Some(resource_id) = &filter.resource_id {
            let exact = resource_id.trim_end_matches('/').to_owned();
            texts.push(exact.clone());
            let exact_parameter = texts.len();
            texts.push(format!("{exact}/"));
            let prefix_parameter = texts.len();
            // A prefix compared by substring, not LIKE: ids may hold `_`, which LIKE would read
            // as a wildcard.
            conditions.push(format!(
                "(resource_id = ${exact_parameter} OR substr(resource_id, 1, length(${prefix_parameter})) = ${prefix_parameter})"
            ));
        }
        let mut sql =
            "SELECT sequence, recorded_ms, principal_id, operation, resource_id, outcome, \
                       previous_mac, mac FROM audit_log"
                .to_owned();
        let mut numbers: Vec<i64> = Vec::new();
        for (value, condition) in [
            (filter.since_ms, "recorded_ms >="),
            (filter.until_ms, "recorded_ms <="),
            (filter.after_sequence, "sequence >"),
        ] {
            if let Some(value) = value {
                numbers.push(value);
                conditions.push(format!("{condition} ${}", texts.len() + numbers.len()));
            }
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(" ORDER BY sequence");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut query = sqlx::query(&sql);
        for text in &texts {
            query = query.bind(text.as_str());
        }
        for number in numbers {
            query = query.bind(number);
        }
        let rows = query.fetch_all(self.database.pool()).await?;
        rows.iter().map(record_from_row).collect()
    }

    /// Recomputes the whole chain, the oldest record first.
    pub async fn verify(&self) -> Result<Verification, AuditError> {
        let rows = sqlx::query(
            "SELECT sequence, recorded_ms, principal_id, operation, resource_id, outcome, \
             previous_mac, mac FROM audit_log ORDER BY sequence",
        )
        .fetch_all(self.database.pool())
        .await?;
        let mut previous_mac = String::new();
        for (expected_sequence, row) in (1_i64..).zip(rows.iter()) {
            let record = record_from_row(row)?;
            if record.sequence != expected_sequence {
                return Ok(Verification::Broken {
                    sequence: record.sequence,
                    reason: "a record before it is missing",
                });
            }
            if record.previous_mac != previous_mac {
                return Ok(Verification::Broken {
                    sequence: record.sequence,
                    reason: "it does not link to the record before it",
                });
            }
            let mac = self.mac(
                record.sequence,
                record.recorded_ms,
                &record.event,
                &record.previous_mac,
            );
            // The MACs are compared in constant time: the stored one is attacker-controlled.
            let matches = hex::decode(&record.mac).is_ok_and(|stored| {
                hex::decode(&mac).is_ok_and(|computed| {
                    aws_lc_rs::constant_time::verify_slices_are_equal(&stored, &computed).is_ok()
                })
            });
            if !matches {
                return Ok(Verification::Broken {
                    sequence: record.sequence,
                    reason: "its content was changed (the MAC does not match)",
                });
            }
            previous_mac = record.mac;
        }
        Ok(Verification::Intact {
            records: rows.len() as u64,
        })
    }

    /// HMAC-SHA256 over every field, each length-prefixed so that no two records share an input.
    fn mac(
        &self,
        sequence: i64,
        recorded_ms: i64,
        event: &AuditEvent,
        previous_mac: &str,
    ) -> String {
        let mut context = hmac::Context::with_key(&self.mac_key);
        context.update(&sequence.to_be_bytes());
        context.update(&recorded_ms.to_be_bytes());
        for field in [
            event.principal_id.as_str(),
            event.operation.as_str(),
            event.resource_id.as_str(),
            event.outcome.as_str(),
            previous_mac,
        ] {
            context.update(&(field.len() as u64).to_be_bytes());
            context.update(field.as_bytes());
        }
        hex::encode(context.sign().as_ref())
    }
}

/// How many events wait for the writer at most: beyond that, [`AuditQueue::record`] refuses, and
/// the caller refuses the request it would have recorded.
const QUEUE_CAPACITY: usize = 65_536;

/// The most events one transaction appends: one INSERT's worth ([`RECORDS_PER_INSERT`]).
///
/// Why no more: a batch holds every writer of the database back (SQLite's write turn, which the
/// index's group commits wait for) while it inserts and commits. Batches of up to 1,024 events,
/// about 550 under a STOW load of 2,400 requests a second, held it for 6.5-9 ms every 200 ms, and
/// the stores caught behind them made STOW's p99; batches of 64 hold it about a millisecond
/// (docs/benchmarks.md, "STOW's p99, looked at").
const BATCH_MAX: usize = RECORDS_PER_INSERT;

/// How long the writer waits for more events after the first of a batch: appends of busy
/// traffic (a DICOM data request each) are one transaction per interval, not one per request.
const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(200);

enum QueueMessage {
    Event(AuditEvent),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The queue was full: the writer is behind (or failing) by [`QUEUE_CAPACITY`] events.
#[derive(Debug, thiserror::Error)]
#[error("the audit log's queue is full")]
pub struct QueueFull;

/// Events appended in batches by a writer task, for traffic too frequent to append one
/// transaction per event (DICOM data requests). An event is in the chain within about
/// [`BATCH_LINGER`] of being queued; a crash in that window loses it, which is why key
/// operations and role changes are appended directly ([`AuditLog::append`]) instead.
#[derive(Clone, Debug)]
pub struct AuditQueue {
    sender: tokio::sync::mpsc::Sender<QueueMessage>,
}

impl std::fmt::Debug for QueueMessage {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("QueueMessage")
    }
}

impl AuditQueue {
    /// Starts the writer of `log` on the current runtime.
    pub fn spawn(log: AuditLog) -> AuditQueue {
        let (sender, receiver) = tokio::sync::mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(write_batches(log, receiver));
        AuditQueue { sender }
    }

    /// Queues `event`; refuses when the queue is full.
    pub fn record(&self, event: AuditEvent) -> Result<(), QueueFull> {
        self.sender
            .try_send(QueueMessage::Event(event))
            .map_err(|_| QueueFull)
    }

    /// Waits until every event queued before this call is appended (or its batch failed).
    pub async fn flush(&self) {
        let (done, finished) = tokio::sync::oneshot::channel();
        if self.sender.send(QueueMessage::Flush(done)).await.is_ok() {
            let _ = finished.await;
        }
    }
}

fn take(
    message: QueueMessage,
    batch: &mut Vec<AuditEvent>,
    waiting: &mut Vec<tokio::sync::oneshot::Sender<()>>,
) {
    match message {
        QueueMessage::Event(event) => batch.push(event),
        QueueMessage::Flush(done) => waiting.push(done),
    }
}

async fn write_batches(log: AuditLog, mut receiver: tokio::sync::mpsc::Receiver<QueueMessage>) {
    let mut batch: Vec<AuditEvent> = Vec::new();
    let mut waiting: Vec<tokio::sync::oneshot::Sender<()>> = Vec::new();
    while let Some(first) = receiver.recv().await {
        take(first, &mut batch, &mut waiting);
        if waiting.is_empty() {
            let deadline = tokio::time::Instant::now() + BATCH_LINGER;
            while batch.len() < BATCH_MAX && waiting.is_empty() {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(message)) => take(message, &mut batch, &mut waiting),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        while batch.len() < BATCH_MAX {
            match receiver.try_recv() {
                Ok(message) => take(message, &mut batch, &mut waiting),
                Err(_) => break,
            }
        }
        if let Err(error) = log.append_all(&batch).await {
            tracing::error!(%error, records = batch.len(), "audit records could not be written");
        }
        batch.clear();
        for done in waiting.drain(..) {
            let _ = done.send(());
        }
    }
}

/// How many records one INSERT carries (8 parameters each, well under SQLite's and
/// PostgreSQL's limits).
const RECORDS_PER_INSERT: usize = 64;

/// One record of a batch being appended, its MAC computed.
struct Record<'a> {
    sequence: i64,
    event: &'a AuditEvent,
    previous_mac: String,
    mac: String,
}

/// Inserts `records` in one statement.
async fn insert_records(
    transaction: &mut hds_db::WriteTransaction,
    records: &[Record<'_>],
    recorded_ms: i64,
) -> Result<(), sqlx::Error> {
    let mut statement = String::from(
        "INSERT INTO audit_log (sequence, recorded_ms, principal_id, operation, resource_id, \
         outcome, previous_mac, mac) VALUES ",
    );
    for index in 0..records.len() {
        let first = index * 8;
        if index > 0 {
            statement.push_str(", ");
        }
        statement.push('(');
        for column in 0..8 {
            if column > 0 {
                statement.push_str(", ");
            }
            statement.push_str(&format!("${}", first + column + 1));
        }
        statement.push(')');
    }
    let mut query = sqlx::query(&statement);
    for record in records {
        query = query
            .bind(record.sequence)
            .bind(recorded_ms)
            .bind(record.event.principal_id.as_str())
            .bind(record.event.operation.as_str())
            .bind(record.event.resource_id.as_str())
            .bind(record.event.outcome.as_str())
            .bind(record.previous_mac.as_str())
            .bind(record.mac.as_str());
    }
    query.execute(&mut **transaction).await?;
    Ok(())
}

fn record_from_row(row: &sqlx::any::AnyRow) -> Result<AuditRecord, AuditError> {
    Ok(AuditRecord {
        sequence: row.try_get(0)?,
        recorded_ms: row.try_get(1)?,
        event: AuditEvent {
            principal_id: row.try_get(2)?,
            operation: row.try_get(3)?,
            resource_id: row.try_get(4)?,
            outcome: row.try_get(5)?,
        },
        previous_mac: row.try_get(6)?,
        mac: row.try_get(7)?,
    })
}

fn bounded(field: &str) -> String {
    field.chars().take(MAX_FIELD_CHARS).collect()
}

fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn log_in(directory: &std::path::Path) -> AuditLog {
        let url = format!("sqlite:{}", directory.join("audit.db").display());
        let database = Database::connect(&url).await.expect("database");
        AuditLog::open(database, &RootKey::generate())
            .await
            .expect("audit log")
    }

    fn event(operation: &str, resource_id: &str) -> AuditEvent {
        AuditEvent {
            principal_id: "0c8e2a64-5d0e-4f4e-9d5c-1f3a1f0e7b11".into(),
            operation: operation.into(),
            resource_id: resource_id.into(),
            outcome: "allowed".into(),
        }
    }

    #[tokio::test]
    async fn a_batch_longer_than_one_statement_is_one_chain() {
        let directory = tempfile::tempdir().expect("tempdir");
        let log = log_in(directory.path()).await;
        log.append(&event("keys/wrap/action", "/before"))
            .await
            .expect("append");
        // Three statements' worth and some: the chain must run on across their boundaries.
        let events: Vec<AuditEvent> = (0..RECORDS_PER_INSERT * 3 + 5)
            .map(|index| event("dicom/read", &format!("/studies/{index}")))
            .collect();
        let last = log.append_all(&events).await.expect("append_all");
        assert_eq!(last, events.len() as i64 + 1);
        assert_eq!(
            log.verify().await.expect("verify"),
            Verification::Intact {
                records: events.len() as u64 + 1
            }
        );
        let sequence = RECORDS_PER_INSERT as i64 + 2;
        sqlx::query("UPDATE audit_log SET resource_id = '/elsewhere' WHERE sequence = $1")
            .bind(sequence)
            .execute(log.database.pool())
            .await
            .expect("edit");
        assert!(matches!(
            log.verify().await.expect("verify"),
            Verification::Broken { sequence: broken, .. } if broken == sequence
        ));
    }

    #[tokio::test]
    async fn a_chain_verifies_until_a_record_is_edited() {
        let directory = tempfile::tempdir().expect("tempdir");
        let log = log_in(directory.path()).await;
        for operation in [
            "keys/wrap/action",
            "keys/unwrap/action",
            "keys/rotate/action",
        ] {
            log.append(&event(operation, "/subscriptions/s/vaults/v/keys/k"))
                .await
                .expect("append");
        }
        assert_eq!(
            log.verify().await.expect("verify"),
            Verification::Intact { records: 3 }
        );
        sqlx::query("UPDATE audit_log SET principal_id = 'someone-else' WHERE sequence = 2")
            .execute(log.database.pool())
            .await
            .expect("edit");
        assert!(matches!(
            log.verify().await.expect("verify"),
            Verification::Broken { sequence: 2, .. }
        ));
    }

    #[tokio::test]
    async fn queued_events_are_appended_in_order_as_one_chain_with_direct_appends() {
        let directory = tempfile::tempdir().expect("tempdir");
        let log = log_in(directory.path()).await;
        let queue = AuditQueue::spawn(log.clone());
        log.append(&event("keys/wrap/action", "/k"))
            .await
            .expect("append");
        for index in 0..300 {
            queue
                .record(event("dicom/read", &format!("/services/s{index}")))
                .expect("queued");
        }
        queue.flush().await;
        log.append(&event("keys/unwrap/action", "/k"))
            .await
            .expect("append");
        assert_eq!(
            log.verify().await.expect("verify"),
            Verification::Intact { records: 302 }
        );
        let records = log.list(&AuditFilter::default()).await.expect("list");
        let resources: Vec<&str> = records
            .iter()
            .map(|record| record.event.resource_id.as_str())
            .collect();
        assert_eq!(resources[0], "/k");
        assert_eq!(resources[1], "/services/s0");
        assert_eq!(resources[300], "/services/s299");
        assert_eq!(records[301].event.operation, "keys/unwrap/action");
        // A batch is one transaction: its records share one time.
        assert_eq!(records[1].recorded_ms, records[2].recorded_ms);
    }

    #[tokio::test]
    async fn a_removed_record_breaks_the_chain() {
        let directory = tempfile::tempdir().expect("tempdir");
        let log = log_in(directory.path()).await;
        for _ in 0..3 {
            log.append(&event("keys/wrap/action", "/k"))
                .await
                .expect("append");
        }
        sqlx::query("DELETE FROM audit_log WHERE sequence = 2")
            .execute(log.database.pool())
            .await
            .expect("delete");
        assert!(matches!(
            log.verify().await.expect("verify"),
            Verification::Broken { sequence: 3, .. }
        ));
    }

    #[tokio::test]
    async fn list_filters_by_principal_operation_and_resource_prefix() {
        let directory = tempfile::tempdir().expect("tempdir");
        let log = log_in(directory.path()).await;
        log.append(&event("keys/wrap/action", "/vaults/a_b/keys/k"))
            .await
            .expect("append");
        log.append(&event("keys/wrap/action", "/vaults/aXb/keys/k"))
            .await
            .expect("append");
        log.append(&event("keys/rotate/action", "/vaults/a_b/keys/k"))
            .await
            .expect("append");
        let under_a_b = log
            .list(&AuditFilter {
                resource_id: Some("/vaults/a_b".into()),
                operation: Some("keys/wrap/action".into()),
                ..AuditFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(under_a_b.len(), 1);
        assert_eq!(under_a_b[0].sequence, 1);
        let limited = log
            .list(&AuditFilter {
                limit: Some(2),
                ..AuditFilter::default()
            })
            .await
            .expect("list");
        assert_eq!(limited.len(), 2);
    }
}
