//! Extended query tags: the registry of a service's tags, their errors, and what a store
//! indexes of them.
//!
//! A tag's values are ordinary search tokens of the level's rows, under the domain
//! `x:{tag key}` where the key is random per tag: a query reaches them only through the tag's
//! row, a deleted tag's tokens are unreachable (they go with their rows), and a tag added again
//! starts afresh. Its elements join the row's sealed attributes, so `includefield` returns them.
//! Stores index every tag that is being added or ready, as the registry read at most
//! [`TAG_CACHE_TTL`] ago says; the reindex (`reindex.rs`) covers the instances stored before,
//! and waits out that window before it declares a tag ready.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hds_dicom::QueryLevel;
use hds_dicom::extended::{
    ExtendedTagDefinition, ExtendedVr, MAX_EXTENDED_QUERY_TAGS, parse_level, tag_path,
};

use crate::index::{INSTANCE_TABLE, SealedUids, UIDS_COLUMN, from_json};
use crate::sql::{Argument, Sql, column};
use crate::{Index, IndexError, RowBinding};

/// How long a store may index with a registry read earlier (per process).
pub(crate) const TAG_CACHE_TTL: Duration = Duration::from_millis(500);

/// Where a tag is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagStatus {
    /// Its reindex operation has not finished: stores index it, queries refuse it.
    Adding,
    /// Indexed in every instance.
    Ready,
    /// Being deleted.
    Deleting,
}

/// Whether queries may use a ready tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagQueryStatus {
    /// Queries may use it.
    Enabled,
    /// Queries refuse it (set by its owner, or by the reindex when some instance failed).
    Disabled,
}

impl TagStatus {
    /// Azure's name.
    pub fn name(self) -> &'static str {
        match self {
            TagStatus::Adding => "Adding",
            TagStatus::Ready => "Ready",
            TagStatus::Deleting => "Deleting",
        }
    }

    fn parse(name: &str) -> Result<TagStatus, IndexError> {
        match name {
            "Adding" => Ok(TagStatus::Adding),
            "Ready" => Ok(TagStatus::Ready),
            "Deleting" => Ok(TagStatus::Deleting),
            _ => Err(IndexError::Corrupt(
                "unknown extended query tag status".into(),
            )),
        }
    }
}

impl TagQueryStatus {
    /// Azure's name.
    pub fn name(self) -> &'static str {
        match self {
            TagQueryStatus::Enabled => "Enabled",
            TagQueryStatus::Disabled => "Disabled",
        }
    }

    fn parse(name: &str) -> Result<TagQueryStatus, IndexError> {
        match name {
            "Enabled" => Ok(TagQueryStatus::Enabled),
            "Disabled" => Ok(TagQueryStatus::Disabled),
            _ => Err(IndexError::Corrupt(
                "unknown extended query tag query status".into(),
            )),
        }
    }
}

/// One extended query tag of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtendedQueryTag {
    /// What it is.
    pub definition: ExtendedTagDefinition,
    /// Where it is in its life.
    pub status: TagStatus,
    /// Whether queries may use it.
    pub query_status: TagQueryStatus,
    /// How many instances have a value of it that could not be indexed.
    pub error_count: u64,
    /// The operation adding it, while it is being added.
    pub operation_id: Option<String>,
    /// The row's id.
    pub(crate) id: i64,
    /// The random key of its token domain.
    pub(crate) key: String,
}

impl ExtendedQueryTag {
    /// Whether queries may use it now: ready and enabled.
    pub fn is_queryable(&self) -> bool {
        self.status == TagStatus::Ready && self.query_status == TagQueryStatus::Enabled
    }

    /// The token domain of its values.
    pub(crate) fn domain(&self) -> String {
        format!("x:{}", self.key)
    }
}

/// What adding tags did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddTagsOutcome {
    /// Recorded (status Adding); the operation reindexes the instances stored before.
    Started {
        /// The reindex operation's id.
        operation_id: String,
    },
    /// A tag with this path exists already; nothing was added.
    AlreadyExists(String),
    /// The service would have more than [`MAX_EXTENDED_QUERY_TAGS`] tags; nothing was added.
    TooMany,
    /// Another operation on the service's tags has not finished; nothing was added.
    OperationRunning,
}

/// What changing or deleting a tag did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagChange {
    /// Done; the tag as it is now (as it was, for a delete).
    Done(Box<ExtendedQueryTag>),
    /// The service has no tag with this path.
    NotFound,
    /// The tag is being added by a running operation (or deleted): not now.
    Busy,
}

/// One instance whose value of a tag was not indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagError {
    /// StudyInstanceUID.
    pub study_instance_uid: String,
    /// SeriesInstanceUID.
    pub series_instance_uid: String,
    /// SOPInstanceUID.
    pub sop_instance_uid: String,
    /// When it was found (microseconds since 1970, UTC).
    pub created_us: i64,
    /// Why (fixed text, no value).
    pub message: String,
}

/// A service's registry and when it was read.
type CachedTags = (Instant, Arc<Vec<ExtendedQueryTag>>);

/// The registry as a store last read it, per service.
#[derive(Default)]
pub(crate) struct TagCache {
    services: Mutex<HashMap<String, CachedTags>>,
}

impl TagCache {
    fn get(&self, service: &str) -> Option<Arc<Vec<ExtendedQueryTag>>> {
        let services = self.services.lock().ok()?;
        let (read_at, tags) = services.get(service)?;
        (read_at.elapsed() < TAG_CACHE_TTL).then(|| tags.clone())
    }

    fn put(&self, service: &str, tags: Arc<Vec<ExtendedQueryTag>>) {
        if let Ok(mut services) = self.services.lock() {
            services.insert(service.to_owned(), (Instant::now(), tags));
        }
    }

    /// Forgets a service's registry (this process changed it).
    pub(crate) fn forget(&self, service: &str) {
        if let Ok(mut services) = self.services.lock() {
            services.remove(service);
        }
    }
}

/// Microseconds since 1970 (UTC).
pub(crate) fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const TAG_COLUMNS: &str = "t.id, t.tag_key, t.path, t.vr, t.private_creator, t.level, t.status, \
     t.query_status, t.operation_id, \
     (SELECT COUNT(*) FROM dicom_extended_query_tag_errors e WHERE e.tag_id = t.id)";

fn level_code(level: QueryLevel) -> &'static str {
    hds_dicom::extended::level_name(level)
}

/// Reads a row of [`TAG_COLUMNS`] starting at `at`.
pub(crate) fn tag_from_row(
    row: &sqlx::any::AnyRow,
    at: usize,
) -> Result<ExtendedQueryTag, IndexError> {
    let path: String = column(row, at + 2)?;
    let vr: String = column(row, at + 3)?;
    let level: String = column(row, at + 5)?;
    let corrupt = |what: &str| IndexError::Corrupt(format!("extended query tag with a bad {what}"));
    let tag = hds_dicom::attributes::parse_hex_tag(&path).ok_or_else(|| corrupt("path"))?;
    let definition = ExtendedTagDefinition {
        tag,
        vr: ExtendedVr::parse(&vr).ok_or_else(|| corrupt("VR"))?,
        private_creator: column(row, at + 4)?,
        level: parse_level(&level).ok_or_else(|| corrupt("level"))?,
    };
    let status: String = column(row, at + 6)?;
    let query_status: String = column(row, at + 7)?;
    let errors: i64 = column(row, at + 9)?;
    Ok(ExtendedQueryTag {
        definition,
        status: TagStatus::parse(&status)?,
        query_status: TagQueryStatus::parse(&query_status)?,
        error_count: u64::try_from(errors).unwrap_or(0),
        operation_id: column(row, at + 8)?,
        id: column(row, at)?,
        key: column(row, at + 1)?,
    })
}

impl Index {
    /// Adds `definitions` to the service's tags (status Adding) and starts the operation that
    /// indexes them in the instances already stored, in one transaction. Stores index them
    /// from now on (within [`TAG_CACHE_TTL`] on every node).
    pub async fn add_extended_query_tags(
        &self,
        service: &str,
        definitions: &[ExtendedTagDefinition],
    ) -> Result<AddTagsOutcome, IndexError> {
        let mut transaction = self.database.begin_write().await?;
        let running: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM dicom_operations WHERE service = $1 \
             AND status IN ('notStarted', 'running')",
        )
        .bind(service)
        .fetch_one(&mut *transaction)
        .await?;
        if running > 0 {
            return Ok(AddTagsOutcome::OperationRunning);
        }
        let existing: Vec<String> =
            sqlx::query_scalar("SELECT path FROM dicom_extended_query_tags WHERE service = $1")
                .bind(service)
                .fetch_all(&mut *transaction)
                .await?;
        if let Some(duplicate) = definitions
            .iter()
            .map(ExtendedTagDefinition::path)
            .find(|path| existing.contains(path))
        {
            return Ok(AddTagsOutcome::AlreadyExists(duplicate));
        }
        if existing.len() + definitions.len() > MAX_EXTENDED_QUERY_TAGS {
            return Ok(AddTagsOutcome::TooMany);
        }
        let total: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM dicom_instances WHERE service = $1")
                .bind(service)
                .fetch_one(&mut *transaction)
                .await?;
        let operation_id = random_hex()?;
        let now = now_us();
        let resources: Vec<String> = definitions
            .iter()
            .map(ExtendedTagDefinition::path)
            .collect();
        sqlx::query(
            "INSERT INTO dicom_operations (id, service, kind, status, created_us, updated_us, \
             cursor_id, processed, total, resources, lease_owner, lease_until_us) \
             VALUES ($1, $2, 'reindex', 'notStarted', $3, $3, 0, 0, $4, $5, NULL, 0)",
        )
        .bind(&operation_id)
        .bind(service)
        .bind(now)
        .bind(total)
        .bind(
            serde_json::to_string(&resources)
                .map_err(|error| IndexError::Corrupt(format!("operation resources: {error}")))?,
        )
        .execute(&mut *transaction)
        .await?;
        for definition in definitions {
            sqlx::query(
                "INSERT INTO dicom_extended_query_tags (service, tag_key, path, vr, \
                 private_creator, level, status, query_status, operation_id, created_us) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'Adding', 'Enabled', $7, $8)",
            )
            .bind(service)
            .bind(random_hex()?)
            .bind(definition.path())
            .bind(definition.vr.code())
            .bind(definition.private_creator.as_deref())
            .bind(level_code(definition.level))
            .bind(&operation_id)
            .bind(now)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        self.tag_cache.forget(service);
        self.reindex_wakeup.notify_one();
        Ok(AddTagsOutcome::Started { operation_id })
    }

    /// The service's tags, in path order.
    pub async fn extended_query_tags(
        &self,
        service: &str,
    ) -> Result<Vec<ExtendedQueryTag>, IndexError> {
        let rows = sqlx::query(&format!(
            "SELECT {TAG_COLUMNS} FROM dicom_extended_query_tags t WHERE t.service = $1 \
             ORDER BY t.path"
        ))
        .bind(service)
        .fetch_all(self.database.pool())
        .await?;
        rows.iter().map(|row| tag_from_row(row, 0)).collect()
    }

    /// The service's tag with this path (8 hex digits, either case), if any.
    pub async fn extended_query_tag(
        &self,
        service: &str,
        tag: dicom_core::Tag,
    ) -> Result<Option<ExtendedQueryTag>, IndexError> {
        let row = sqlx::query(&format!(
            "SELECT {TAG_COLUMNS} FROM dicom_extended_query_tags t WHERE t.service = $1 \
             AND t.path = $2"
        ))
        .bind(service)
        .bind(tag_path(tag))
        .fetch_optional(self.database.pool())
        .await?;
        row.map(|row| tag_from_row(&row, 0)).transpose()
    }

    /// The tags a store indexes now (Adding or Ready), read at most [`TAG_CACHE_TTL`] ago.
    pub(crate) async fn indexed_tags(
        &self,
        service: &str,
    ) -> Result<Arc<Vec<ExtendedQueryTag>>, IndexError> {
        if let Some(tags) = self.tag_cache.get(service) {
            return Ok(tags);
        }
        let tags: Vec<ExtendedQueryTag> = self
            .extended_query_tags(service)
            .await?
            .into_iter()
            .filter(|tag| tag.status != TagStatus::Deleting)
            .collect();
        let tags = Arc::new(tags);
        self.tag_cache.put(service, tags.clone());
        Ok(tags)
    }

    /// Enables or disables queries on a ready tag.
    pub async fn set_extended_query_tag_query_status(
        &self,
        service: &str,
        tag: dicom_core::Tag,
        query_status: TagQueryStatus,
    ) -> Result<TagChange, IndexError> {
        let Some(current) = self.extended_query_tag(service, tag).await? else {
            return Ok(TagChange::NotFound);
        };
        if current.status != TagStatus::Ready {
            return Ok(TagChange::Busy);
        }
        let mut transaction = self.database.begin_write().await?;
        sqlx::query(
            "UPDATE dicom_extended_query_tags SET query_status = $1 WHERE id = $2 \
             AND status = 'Ready'",
        )
        .bind(query_status.name())
        .bind(current.id)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        self.tag_cache.forget(service);
        Ok(match self.extended_query_tag(service, tag).await? {
            Some(updated) => TagChange::Done(Box::new(updated)),
            None => TagChange::NotFound,
        })
    }

    /// Deletes a tag: its row and errors at once; its tokens become unreachable (they go with
    /// the rows that hold them). A tag whose operation is still running is [`TagChange::Busy`].
    pub async fn delete_extended_query_tag(
        &self,
        service: &str,
        tag: dicom_core::Tag,
    ) -> Result<TagChange, IndexError> {
        let mut transaction = self.database.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT {TAG_COLUMNS}, (SELECT o.status FROM dicom_operations o \
             WHERE o.id = t.operation_id) \
             FROM dicom_extended_query_tags t WHERE t.service = $1 AND t.path = $2"
        ))
        .bind(service)
        .bind(tag_path(tag))
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(row) = row else {
            return Ok(TagChange::NotFound);
        };
        let current = tag_from_row(&row, 0)?;
        let operation_status: Option<String> = column(&row, 10)?;
        if matches!(operation_status.as_deref(), Some("notStarted" | "running")) {
            return Ok(TagChange::Busy);
        }
        sqlx::query("DELETE FROM dicom_extended_query_tags WHERE id = $1")
            .bind(current.id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        self.tag_cache.forget(service);
        Ok(TagChange::Done(Box::new(current)))
    }

    /// The instances whose value of the tag could not be indexed, oldest first; `None` when
    /// the service has no such tag.
    pub async fn extended_query_tag_errors(
        &self,
        service: &str,
        tag: dicom_core::Tag,
        limit: u32,
        offset: u32,
    ) -> Result<Option<Vec<TagError>>, IndexError> {
        let Some(found) = self.extended_query_tag(service, tag).await? else {
            return Ok(None);
        };
        let mut sql = Sql::new(
            "SELECT i.uid_token, i.uids, e.created_us, e.message \
             FROM dicom_extended_query_tag_errors e \
             JOIN dicom_instances i ON i.id = e.instance_id WHERE e.tag_id = ",
        );
        sql.bind(Argument::Integer(found.id))
            .push(" AND i.service = ")
            .bind(Argument::Text(service.to_owned().into()))
            .push(" ORDER BY e.created_us, e.instance_id LIMIT ")
            .bind(Argument::Integer(i64::from(limit)))
            .push(" OFFSET ")
            .bind(Argument::Integer(i64::from(offset)));
        let rows = sql.query().fetch_all(self.database.pool()).await?;
        let mut errors = Vec::with_capacity(rows.len());
        for row in &rows {
            let sop_token: Vec<u8> = column(row, 0)?;
            let sealed: Vec<u8> = column(row, 1)?;
            let uids: SealedUids = from_json(&self.cipher.open(
                RowBinding {
                    service,
                    table: INSTANCE_TABLE,
                    row_token: &sop_token,
                    column: UIDS_COLUMN,
                },
                &sealed,
            )?)?;
            errors.push(TagError {
                study_instance_uid: uids.study,
                series_instance_uid: uids.series,
                sop_instance_uid: uids.sop,
                created_us: column(row, 2)?,
                message: column(row, 3)?,
            });
        }
        Ok(Some(errors))
    }

    /// Forgets a deleted service's tags and operations, exports included (its rows are gone
    /// already).
    pub async fn delete_extended_query_tags_of(&self, service: &str) -> Result<(), IndexError> {
        let mut transaction = self.database.begin_write().await?;
        sqlx::query("DELETE FROM dicom_extended_query_tags WHERE service = $1")
            .bind(service)
            .execute(&mut *transaction)
            .await?;
        sqlx::query("DELETE FROM dicom_operations WHERE service = $1")
            .bind(service)
            .execute(&mut *transaction)
            .await?;
        // Exports' sealed specifications (their SAS tokens) and error logs go with them.
        sqlx::query("DELETE FROM dicom_export_operations WHERE service = $1")
            .bind(service)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        self.tag_cache.forget(service);
        Ok(())
    }

    /// Records the tags whose values a just-stored instance could not index (by its SOP
    /// instance token). An instance gone meanwhile records nothing.
    pub(crate) async fn record_store_errors(
        &self,
        service: &str,
        sop_token: &[u8],
        errors: &[(i64, String)],
    ) -> Result<(), IndexError> {
        let mut transaction = self.database.begin_write().await?;
        let now = now_us();
        for (tag_id, message) in errors {
            sqlx::query(
                "INSERT INTO dicom_extended_query_tag_errors (tag_id, instance_id, message, \
                 created_us) SELECT t.id, i.id, $1, $2 FROM dicom_instances i \
                 JOIN dicom_extended_query_tags t ON t.id = $3 AND t.service = i.service \
                 WHERE i.service = $4 AND i.uid_token = $5 ON CONFLICT DO NOTHING",
            )
            .bind(message.as_str())
            .bind(now)
            .bind(*tag_id)
            .bind(service)
            .bind(sop_token)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }
}

/// 32 random hex digits (an operation id as Azure writes it, or a tag's key).
pub(crate) fn random_hex() -> Result<String, IndexError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| IndexError::Corrupt("the system's random generator failed".into()))?;
    Ok(hex::encode(bytes))
}
