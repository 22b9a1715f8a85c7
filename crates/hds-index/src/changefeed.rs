//! The change feed: every create, replacement and delete of an instance, numbered per service in
//! commit order.
//!
//! Entries are written by the transaction that makes the change (a store's group commit, a
//! delete), so the feed never shows what was not committed and never misses what was. Each
//! writer allocates its sequence numbers from the service's head row as the last statement
//! before its commit: on PostgreSQL the row lock on the head orders the service's writers, so
//! no reader ever sees sequence `n + 1` while `n` is still uncommitted; on SQLite the write lock
//! already does. The head also keeps the last timestamp, so timestamps never go back within a
//! service (the clock may): a time window and a sequence range select in the same order.
//!
//! An entry keeps only the SOP instance's token and the instance's own sealed UIDs (bound to
//! that token, under the service's index key), which is what a downstream copy needs to follow
//! deletions. The metadata of a current entry is read from the instance's row when the feed is
//! read, so it goes with the instance.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use hds_db::WriteTransaction;

use crate::index::{INSTANCE_TABLE, METADATA_COLUMN, SealedUids, UIDS_COLUMN, from_json};
use crate::sql::{Argument, Sql, column};
use crate::{Index, IndexError};

/// How many entries one INSERT carries (8 parameters each).
const ENTRIES_PER_INSERT: usize = 64;

/// How many SOP instance tokens one state UPDATE names.
const TOKENS_PER_UPDATE: usize = 200;

/// What happened to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeAction {
    /// Stored (new, or replacing the instance of the same SOPInstanceUID).
    Create,
    /// Deleted.
    Delete,
    /// Its attributes were changed in place (not produced by hds yet; kept for the wire form).
    Update,
}

/// What an entry's instance version is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeState {
    /// The version this entry created is the one stored.
    Current,
    /// A later store of the same SOPInstanceUID replaced it.
    Replaced,
    /// The instance was deleted.
    Deleted,
}

impl ChangeAction {
    fn code(self) -> i64 {
        match self {
            ChangeAction::Create => 0,
            ChangeAction::Delete => 1,
            ChangeAction::Update => 2,
        }
    }

    fn from_code(code: i64) -> Result<ChangeAction, IndexError> {
        match code {
            0 => Ok(ChangeAction::Create),
            1 => Ok(ChangeAction::Delete),
            2 => Ok(ChangeAction::Update),
            _ => Err(IndexError::Corrupt("unknown change feed action".into())),
        }
    }
}

impl ChangeState {
    fn code(self) -> i64 {
        match self {
            ChangeState::Current => 0,
            ChangeState::Replaced => 1,
            ChangeState::Deleted => 2,
        }
    }

    fn from_code(code: i64) -> Result<ChangeState, IndexError> {
        match code {
            0 => Ok(ChangeState::Current),
            1 => Ok(ChangeState::Replaced),
            2 => Ok(ChangeState::Deleted),
            _ => Err(IndexError::Corrupt("unknown change feed state".into())),
        }
    }
}

/// One entry of a service's change feed, opened.
#[derive(Debug, Clone)]
pub struct ChangeFeedEntry {
    /// Its number: 1 for the service's first change, one more for each change after it.
    pub sequence: i64,
    /// When it was committed, in microseconds since 1970-01-01 UTC.
    pub timestamp_micros: i64,
    /// What happened.
    pub action: ChangeAction,
    /// What the version it names is now.
    pub state: ChangeState,
    /// StudyInstanceUID.
    pub study_instance_uid: String,
    /// SeriesInstanceUID.
    pub series_instance_uid: String,
    /// SOPInstanceUID.
    pub sop_instance_uid: String,
    /// The instance's metadata (DICOM JSON) when asked for and the entry is current.
    pub metadata: Option<serde_json::Value>,
    /// The data partition of the instance; `None` for the default partition.
    pub partition_name: Option<String>,
}

/// Which entries to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeFeedWindow {
    /// Sequences in `(after, through]`, in order.
    Sequences {
        /// Exclusive lower bound.
        after: i64,
        /// Inclusive upper bound.
        through: i64,
    },
    /// Entries committed in `[start, end)` (microseconds since 1970), in order, skipping the
    /// first `offset` and returning at most `limit`.
    Time {
        /// Inclusive start.
        start_micros: i64,
        /// Exclusive end.
        end_micros: i64,
        /// How many to skip.
        offset: i64,
        /// How many at most.
        limit: i64,
    },
}

/// A change to record in the transaction that makes it.
pub(crate) struct NewChange<'a> {
    pub(crate) action: ChangeAction,
    /// The SOP instance's token (its row identity).
    pub(crate) sop_token: &'a [u8],
    /// The instance's sealed UIDs, as its row holds them.
    pub(crate) uids: &'a [u8],
}

/// Sets the state of the entries of `sop_tokens` in `service` that are not already `to`:
/// `Replaced` turns only current entries, `Deleted` every entry.
pub(crate) async fn mark(
    transaction: &mut WriteTransaction,
    scope: &str,
    sop_tokens: &[&[u8]],
    to: ChangeState,
) -> Result<(), IndexError> {
    // One feed per service, across its partitions; a partition's tokens are its own (made under
    // its own index keys), so the token alone finds the partition's entries.
    let (service, _) = crate::split_scope(scope);
    for chunk in sop_tokens.chunks(TOKENS_PER_UPDATE) {
        let mut update = Sql::new("UPDATE dicom_changefeed SET state = ");
        update
            .bind(Argument::Integer(to.code()))
            .push(" WHERE service = ")
            .bind(Argument::Text(service.into()));
        match to {
            ChangeState::Replaced => update
                .push(" AND state = ")
                .bind(Argument::Integer(ChangeState::Current.code())),
            _ => update
                .push(" AND state <> ")
                .bind(Argument::Integer(to.code())),
        };
        update.push(" AND sop_token IN ").bind_list(
            chunk
                .iter()
                .map(|token| Argument::Bytes(std::borrow::Cow::Borrowed(*token))),
        );
        update.query().execute(&mut **transaction).await?;
    }
    Ok(())
}

/// Appends `changes`, in order, to their services' feeds. Must be the transaction's last
/// statement before its commit (see the module's note on ordering).
pub(crate) async fn append(
    transaction: &mut WriteTransaction,
    changes: &[(&str, NewChange<'_>)],
) -> Result<(), IndexError> {
    for statement in append_statements(changes) {
        statement.query().execute(&mut **transaction).await?;
    }
    Ok(())
}

/// Appends [`append`]'s statements to `batch`, for one round trip on SQLite
/// (`Sql::append_statement`).
pub(crate) fn push_append_sqlite<'a>(batch: &mut Sql<'a>, changes: &[(&'a str, NewChange<'a>)]) {
    for statement in append_statements(changes) {
        batch.append_statement(statement);
    }
}

/// The statements that append `changes`: for each service, the upsert of its head row by the
/// number of its changes, then its entries, whose sequences and timestamp are read from the
/// head row that upsert left, so no statement waits for another's answer. The head row's lock
/// (PostgreSQL) or the write lock (SQLite) keeps it from moving in between.
fn append_statements<'a>(changes: &[(&'a str, NewChange<'a>)]) -> Vec<Sql<'a>> {
    let now = now_us();
    let mut statements = Vec::new();
    for (service, changes) in by_service(changes) {
        let count = changes.len();
        let mut head = Sql::new(
            "INSERT INTO dicom_changefeed_heads (service, last_sequence, last_timestamp) \
             VALUES ($1, $2, $3) ON CONFLICT (service) DO UPDATE SET \
             last_sequence = dicom_changefeed_heads.last_sequence + excluded.last_sequence, \
             last_timestamp = CASE WHEN excluded.last_timestamp > \
             dicom_changefeed_heads.last_timestamp THEN excluded.last_timestamp \
             ELSE dicom_changefeed_heads.last_timestamp END",
        );
        head.argument(Argument::Text(service.into()));
        head.argument(Argument::Integer(count as i64));
        head.argument(Argument::Integer(now));
        statements.push(head);
        for (chunk_number, chunk) in changes.chunks(ENTRIES_PER_INSERT).enumerate() {
            let mut insert = Sql::new(
                "INSERT INTO dicom_changefeed (service, sequence, timestamp_us, action, state, \
                 sop_token, uids, partition_name) VALUES ",
            );
            let service_placeholder = insert.argument(Argument::Text(service.into()));
            let head_row =
                format!("FROM dicom_changefeed_heads WHERE service = {service_placeholder}");
            for (position, (partition, change)) in chunk.iter().enumerate() {
                if position > 0 {
                    insert.push(", ");
                }
                // The head's last sequence is the last entry's of this service's changes.
                let behind = (count - 1 - (chunk_number * ENTRIES_PER_INSERT + position)) as i64;
                let behind = insert.argument(Argument::Integer(behind));
                let state = match change.action {
                    ChangeAction::Delete => ChangeState::Deleted,
                    ChangeAction::Create | ChangeAction::Update => ChangeState::Current,
                };
                insert.push(&format!(
                    "({service_placeholder}, (SELECT last_sequence {head_row}) - {behind}, \
                     (SELECT last_timestamp {head_row}), "
                ));
                insert.bind_separated([
                    Argument::Integer(change.action.code()),
                    Argument::Integer(state.code()),
                    Argument::Bytes(change.sop_token.into()),
                    Argument::Bytes(change.uids.into()),
                    Argument::NullableText(partition.map(Into::into)),
                ]);
                insert.push(")");
            }
            statements.push(insert);
        }
    }
    statements
}

/// Changes by the service whose feed they go to, with their partition: a partition's changes
/// go to its service's feed, marked with the partition.
fn by_service<'c, 'a>(
    changes: &'c [(&'a str, NewChange<'a>)],
) -> BTreeMap<&'a str, Vec<(Option<&'a str>, &'c NewChange<'a>)>> {
    let mut by_service: BTreeMap<&str, Vec<(Option<&str>, &NewChange<'_>)>> = BTreeMap::new();
    for (scope, change) in changes {
        let (service, partition) = crate::split_scope(scope);
        by_service
            .entry(service)
            .or_default()
            .push((partition, change));
    }
    by_service
}

/// Now, in microseconds since 1970.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Index {
    /// The entries of `service`'s change feed in `window`, in sequence order, with the
    /// metadata of current entries when `include_metadata`.
    pub async fn change_feed(
        &self,
        service: &str,
        window: ChangeFeedWindow,
        include_metadata: bool,
    ) -> Result<Vec<ChangeFeedEntry>, IndexError> {
        // The feed is the service's, across its partitions.
        let (service, _) = crate::split_scope(service);
        let mut sql = select_entries(service, include_metadata);
        match window {
            ChangeFeedWindow::Sequences { after, through } => {
                sql.push(" AND f.sequence > ")
                    .bind(Argument::Integer(after))
                    .push(" AND f.sequence <= ")
                    .bind(Argument::Integer(through))
                    .push(" ORDER BY f.sequence");
            }
            ChangeFeedWindow::Time {
                start_micros,
                end_micros,
                offset,
                limit,
            } => {
                sql.push(" AND f.timestamp_us >= ")
                    .bind(Argument::Integer(start_micros))
                    .push(" AND f.timestamp_us < ")
                    .bind(Argument::Integer(end_micros))
                    .push(" ORDER BY f.timestamp_us, f.sequence LIMIT ")
                    .bind(Argument::Integer(limit))
                    .push(" OFFSET ")
                    .bind(Argument::Integer(offset));
            }
        }
        let rows = sql.query().fetch_all(self.database.pool()).await?;
        rows.iter()
            .map(|row| self.open_entry(service, row))
            .collect()
    }

    /// The latest entry of `service`'s change feed, or `None` when it has none.
    pub async fn latest_change(
        &self,
        service: &str,
        include_metadata: bool,
    ) -> Result<Option<ChangeFeedEntry>, IndexError> {
        let (service, _) = crate::split_scope(service);
        let mut sql = select_entries(service, include_metadata);
        sql.push(" ORDER BY f.sequence DESC LIMIT 1");
        let row = sql.query().fetch_optional(self.database.pool()).await?;
        row.map(|row| self.open_entry(service, &row)).transpose()
    }

    /// Opens one row of [`select_entries`].
    fn open_entry(
        &self,
        service: &str,
        row: &sqlx::any::AnyRow,
    ) -> Result<ChangeFeedEntry, IndexError> {
        let sop_token: Vec<u8> = column(row, 4)?;
        let partition_name: Option<String> = column(row, 7)?;
        // The entry's values are bound to its partition's scope.
        let scope = crate::partition_scope(
            service,
            partition_name
                .as_deref()
                .unwrap_or(crate::DEFAULT_PARTITION),
        );
        let service = scope.as_str();
        let uids: SealedUids = from_json(&self.open_sealed(
            service,
            INSTANCE_TABLE,
            &sop_token,
            UIDS_COLUMN,
            &column::<Vec<u8>>(row, 5)?,
        )?)?;
        let metadata = match column::<Option<Vec<u8>>>(row, 6)? {
            Some(sealed) => Some(from_json(&self.open_sealed(
                service,
                INSTANCE_TABLE,
                &sop_token,
                METADATA_COLUMN,
                &sealed,
            )?)?),
            None => None,
        };
        Ok(ChangeFeedEntry {
            sequence: column(row, 0)?,
            timestamp_micros: column(row, 1)?,
            action: ChangeAction::from_code(column(row, 2)?)?,
            state: ChangeState::from_code(column(row, 3)?)?,
            study_instance_uid: uids.study,
            series_instance_uid: uids.series,
            sop_instance_uid: uids.sop,
            metadata,
            partition_name,
        })
    }
}

/// `SELECT sequence, timestamp, action, state, sop token, sealed UIDs, sealed metadata (or
/// NULL), partition (or NULL)` of `service`'s entries, ready for more conditions.
fn select_entries(service: &str, include_metadata: bool) -> Sql<'_> {
    let mut sql = if include_metadata {
        let mut sql = Sql::new(
            "SELECT f.sequence, f.timestamp_us, f.action, f.state, f.sop_token, f.uids, \
             i.metadata, f.partition_name FROM dicom_changefeed f LEFT JOIN dicom_instances i \
             ON i.service = (CASE WHEN f.partition_name IS NULL THEN f.service \
             ELSE f.service || '#' || f.partition_name END) \
             AND i.uid_token = f.sop_token AND f.state = ",
        );
        sql.bind(Argument::Integer(ChangeState::Current.code()));
        sql
    } else {
        Sql::new(
            "SELECT f.sequence, f.timestamp_us, f.action, f.state, f.sop_token, f.uids, \
             NULL, f.partition_name FROM dicom_changefeed f",
        )
    };
    sql.push(" WHERE f.service = ")
        .bind(Argument::Text(service.into()));
    sql
}
