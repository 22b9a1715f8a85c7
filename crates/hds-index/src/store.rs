//! Recording stored instances: the index's write path for STOW-RS.
//!
//! Two things make it fast enough to keep up with the blob store:
//!
//! - **Few statements per instance.** One SELECT learns, under the write lock, everything the
//!   store decides on (is the SOP instance there, the study key, the study and series rows and
//!   digests). A study's and a series' rows are written again only when their attributes or
//!   search tokens differ from what the row holds (a keyed digest of both is kept in the row),
//!   which for the 2nd to Nth instance of a series is never. The common case is three
//!   statements: that SELECT, the instance row and its tokens. In a group (below) the SELECTs
//!   of all its stores are one statement, and their instance rows, their tokens and their
//!   change feed entries (with the feed's head row) one text of several statements, sent in one
//!   round trip (`write_new_instances`). BEGIN goes with the SELECT and COMMIT with the
//!   writes (`Database::begin_write_batched`), so a group of N stores takes two round trips,
//!   not 5N + 2. Each round trip to sqlx's connection thread costs more than most of these
//!   statements' own work.
//! - **The change feed in the same commit.** Each recorded store appends a `create` entry (an
//!   upsert first marks the replaced version's entries `replaced`), the head row last, so the
//!   feed numbers commits in the order they become visible (`changefeed.rs`).
//! - **Group commit on SQLite.** SQLite has one writer at a time, and each statement is a round
//!   trip to sqlx's connection thread. One writer task takes every store queued meanwhile and
//!   records them in one transaction, answering each caller after the commit. A group that fails
//!   is rolled back and its stores are retried one transaction each, so one bad store never
//!   fails its neighbours. PostgreSQL, whose writers do not exclude each other, stores in the
//!   caller's task, one transaction per instance.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use hds_db::{Backend, Database, WriteTransaction};
use hds_dicom::QueryLevel;
use hds_metrics::GroupCommitMetrics;
use tokio::sync::{mpsc, oneshot};

use crate::changefeed::{self, ChangeAction, ChangeState, NewChange};
use crate::extended::ExtendedQueryTag;
use crate::index::{
    ATTRIBUTES_COLUMN, FRAMES_COLUMN, INSTANCE_TABLE, METADATA_COLUMN, MODALITIES_IN_STUDY,
    SERIES_TABLE, SERIES_UID, SOP_UID, STUDY_TABLE, STUDY_UID, SealedUids, TOKENS_PER_INSERT,
    UIDS_COLUMN, to_json,
};
use crate::sql::{Argument, Sql, column};
use crate::summary::{ModalityPiece, append_modalities, forget_modalities, modality_pieces};
use crate::tokens::{term_tokens, value_tokens};
use crate::{IndexCipher, IndexError, NewInstance, RowBinding, StoreMode, StoreOutcome};

/// Token domain of the row digests (never a search token: no query names it).
const ROW_DIGEST_DOMAIN: &str = "row-digest";

/// The most stores one group transaction records. Bounds how long the write lock is held and
/// how much a failed group retries.
const MAX_GROUP: usize = 64;

/// How many instance rows one INSERT carries (12 parameters each, well under SQLite's limit).
const INSTANCES_PER_INSERT: usize = 32;

/// How many stores may wait for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 1024;

/// An instance ready to be recorded: every token and sealed value computed, nothing borrowed,
/// so the writer can hold a group of them.
pub(crate) struct PreparedInstance {
    service: String,
    study_token: Vec<u8>,
    series_token: Vec<u8>,
    sop_token: Vec<u8>,
    study: PreparedRow,
    series: PreparedRow,
    instance_attributes: Vec<u8>,
    metadata: Vec<u8>,
    uids: Vec<u8>,
    frames: Option<Vec<u8>>,
    instance_tokens: BTreeSet<Vec<u8>>,
    /// The series' modalities as pieces of its study's ModalitiesInStudy, appended when this
    /// store creates the series; None when they cannot be pieces (see `summary.rs`).
    modality_pieces: Option<Vec<ModalityPiece>>,
    blob_name: String,
    size: i64,
    transfer_syntax_uid: String,
    wrapped_study_key: Vec<u8>,
    wrapped_blob_key: Vec<u8>,
    new_study_key_generation: Option<i64>,
    /// Whether an instance of the same SOPInstanceUID is replaced rather than refused
    /// (upsert or update).
    replace: bool,
    /// Whether the replacement is a bulk update's (the instance must exist; the original kept).
    update: bool,
    /// The extended query tags whose values this instance could not index: (tag id, why).
    pub(crate) extended_errors: Vec<(i64, String)>,
}

/// A study or series row as this store would leave it.
struct PreparedRow {
    /// Sealed attributes.
    attributes: Vec<u8>,
    /// Search tokens.
    tokens: BTreeSet<Vec<u8>>,
    /// Keyed digest of the row token, the plaintext attributes and the tokens: equal digests
    /// mean the stored row already says what this store would write.
    digest: Vec<u8>,
}

impl PreparedInstance {
    /// Computes every token and sealed value of `instance` (in the caller's task: this is the
    /// CPU work, kept out of the write lock).
    pub(crate) fn new(
        cipher: &dyn IndexCipher,
        instance: &NewInstance<'_>,
        extended_tags: &[ExtendedQueryTag],
    ) -> Result<PreparedInstance, IndexError> {
        let service = instance.service;
        let parsed = instance.parsed;
        let extended = ExtendedIndexing::of(cipher, service, parsed, extended_tags)?;
        let study_token = cipher.token(service, STUDY_UID, &parsed.study_instance_uid)?;
        let series_token = cipher.token(service, SERIES_UID, &parsed.series_instance_uid)?;
        let sop_token = cipher.token(service, SOP_UID, &parsed.sop_instance_uid)?;
        let seal = |table: &'static str, row_token: &[u8], column: &'static str, plain: &[u8]| {
            cipher.seal(
                RowBinding {
                    service,
                    table,
                    row_token,
                    column,
                },
                plain,
            )
        };
        let level_tokens = |level: QueryLevel| {
            let mut tokens = extended.tokens(level);
            for term in parsed.terms_at(level) {
                if !matches!(
                    term.attribute.keyword,
                    STUDY_UID | SERIES_UID | SOP_UID | MODALITIES_IN_STUDY
                ) {
                    term_tokens(cipher, service, term, &mut tokens)?;
                }
            }
            Ok::<_, IndexError>(tokens)
        };
        let row = |table: &'static str,
                   row_token: &[u8],
                   attributes: &hds_dicom::DicomJsonText,
                   level: QueryLevel| {
            let plain = extended.attributes(attributes, level)?;
            let tokens = level_tokens(level)?;
            let digest = row_digest(cipher, service, table, row_token, &plain, &tokens)?;
            Ok::<_, IndexError>(PreparedRow {
                attributes: seal(table, row_token, ATTRIBUTES_COLUMN, &plain)?,
                tokens,
                digest,
            })
        };
        let study = row(
            STUDY_TABLE,
            &study_token,
            &parsed.study_attributes,
            QueryLevel::Study,
        )?;
        let series = row(
            SERIES_TABLE,
            &series_token,
            &parsed.series_attributes,
            QueryLevel::Series,
        )?;
        let instance_attributes = seal(
            INSTANCE_TABLE,
            &sop_token,
            ATTRIBUTES_COLUMN,
            &extended.attributes(&parsed.instance_attributes, QueryLevel::Instance)?,
        )?;
        let metadata = seal(
            INSTANCE_TABLE,
            &sop_token,
            METADATA_COLUMN,
            parsed.metadata.as_str().as_bytes(),
        )?;
        let uids = SealedUids {
            study: parsed.study_instance_uid.clone(),
            series: parsed.series_instance_uid.clone(),
            sop: parsed.sop_instance_uid.clone(),
        };
        let uids = seal(INSTANCE_TABLE, &sop_token, UIDS_COLUMN, &to_json(&uids)?)?;
        let frames = match &parsed.frames {
            Some(frames) => Some(seal(
                INSTANCE_TABLE,
                &sop_token,
                FRAMES_COLUMN,
                &to_json(frames)?,
            )?),
            None => None,
        };
        let instance_tokens = level_tokens(QueryLevel::Instance)?;
        let modality_pieces =
            modality_pieces(cipher, service, &study_token, &parsed.series_attributes)?;
        let size = i64::try_from(instance.size)
            .map_err(|_| IndexError::Corrupt("instance size out of range".into()))?;
        Ok(PreparedInstance {
            service: service.to_owned(),
            study_token,
            series_token,
            sop_token,
            study,
            series,
            instance_attributes,
            metadata,
            uids,
            frames,
            instance_tokens,
            modality_pieces,
            blob_name: instance.blob_name.to_owned(),
            size,
            transfer_syntax_uid: parsed.transfer_syntax_uid.clone(),
            wrapped_study_key: instance.keys.wrapped_study_key.clone(),
            wrapped_blob_key: instance.keys.wrapped_blob_key.clone(),
            new_study_key_generation: instance.keys.new_study_key_generation,
            replace: matches!(instance.mode, StoreMode::Replace | StoreMode::Update),
            update: instance.mode == StoreMode::Update,
            extended_errors: extended.errors,
        })
    }
}

/// What a store indexes of the service's extended query tags: per level, the elements that
/// join the row's attributes and their tokens; and the tags whose values did not fit.
struct ExtendedIndexing {
    /// (level, tag path, element, tokens).
    found: Vec<(QueryLevel, String, serde_json::Value, BTreeSet<Vec<u8>>)>,
    errors: Vec<(i64, String)>,
}

impl ExtendedIndexing {
    fn of(
        cipher: &dyn IndexCipher,
        service: &str,
        parsed: &hds_dicom::ParsedInstance,
        tags: &[ExtendedQueryTag],
    ) -> Result<ExtendedIndexing, IndexError> {
        let mut indexing = ExtendedIndexing {
            found: Vec::new(),
            errors: Vec::new(),
        };
        if tags.is_empty() {
            return Ok(indexing);
        }
        // Read out of the metadata's text only for the instances that need it.
        let metadata = parsed
            .metadata
            .to_map()
            .map_err(|error| IndexError::Corrupt(format!("an instance's metadata: {error}")))?;
        for tag in tags {
            match hds_dicom::extended::extract_values(&metadata, &tag.definition) {
                Ok(Some(found)) => {
                    let mut tokens = BTreeSet::new();
                    for value in &found.values {
                        value_tokens(cipher, service, &tag.domain(), value, &mut tokens)?;
                    }
                    indexing.found.push((
                        tag.definition.level,
                        tag.definition.path(),
                        found.element,
                        tokens,
                    ));
                }
                Ok(None) => {}
                Err(error) => indexing.errors.push((tag.id, error.to_string())),
            }
        }
        Ok(indexing)
    }

    /// The tokens of the level's values.
    fn tokens(&self, level: QueryLevel) -> BTreeSet<Vec<u8>> {
        self.found
            .iter()
            .filter(|(found_level, ..)| *found_level == level)
            .flat_map(|(.., tokens)| tokens.iter().cloned())
            .collect()
    }

    /// The level's attributes (DICOM JSON text) with the level's elements added.
    fn attributes<'a>(
        &self,
        attributes: &'a hds_dicom::DicomJsonText,
        level: QueryLevel,
    ) -> Result<std::borrow::Cow<'a, [u8]>, IndexError> {
        let mut elements = self
            .found
            .iter()
            .filter(|(found_level, ..)| *found_level == level)
            .peekable();
        if elements.peek().is_none() {
            return Ok(std::borrow::Cow::Borrowed(attributes.as_str().as_bytes()));
        }
        let mut extended = attributes.to_map().map_err(|error| {
            IndexError::Corrupt(format!("an instance's level attributes: {error}"))
        })?;
        for (_, path, element, _) in elements {
            extended.insert(path.clone(), element.clone());
        }
        Ok(std::borrow::Cow::Owned(to_json(&extended)?))
    }
}

/// The keyed digest of a study or series row's content. Keyed (an index token over a SHA-256
/// of the content) because the attributes are patient data; bound to the row so equal content
/// in two rows looks unrelated. Every piece is length-prefixed, so no two contents encode alike.
fn row_digest(
    cipher: &dyn IndexCipher,
    service: &str,
    table: &str,
    row_token: &[u8],
    attributes_json: &[u8],
    tokens: &BTreeSet<Vec<u8>>,
) -> Result<Vec<u8>, IndexError> {
    let mut content = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let pieces = [table.as_bytes(), row_token, attributes_json]
        .into_iter()
        .chain(tokens.iter().map(Vec::as_slice));
    for piece in pieces {
        content.update(&(piece.len() as u64).to_be_bytes());
        content.update(piece);
    }
    let content = content.finish();
    cipher.token(service, ROW_DIGEST_DOMAIN, &hex::encode(content.as_ref()))
}

/// What one store did inside a transaction.
struct Written {
    outcome: StoreOutcome,
    /// Whether it wrote anything. A store that was not [`StoreOutcome::Stored`] but wrote must
    /// have its transaction rolled back.
    wrote: bool,
}

impl Written {
    fn nothing(outcome: StoreOutcome) -> Written {
        Written {
            outcome,
            wrote: false,
        }
    }
}

/// What the store reads before deciding, in one statement.
struct Current {
    instance_exists: bool,
    root_generation: Option<i64>,
    study_key: Option<Vec<u8>>,
    study: Option<(i64, Option<Vec<u8>>)>,
    series: Option<(i64, Option<Vec<u8>>)>,
}

/// Reads what [`write_parents`] decides on, for each of `stores` in one statement (a group
/// commit reads all its stores at once). On PostgreSQL the service key and study key rows are
/// locked against a rotation or study deletion until the transaction ends; on SQLite the write
/// lock already holds everything still.
async fn read_current(
    transaction: &mut WriteTransaction,
    backend: Backend,
    stores: &[&PreparedInstance],
) -> Result<Vec<Current>, IndexError> {
    let lock = match backend {
        Backend::Postgres => " FOR SHARE",
        Backend::Sqlite => "",
    };
    let mut currents = Vec::with_capacity(stores.len());
    for chunk in stores.chunks(INSTANCES_PER_INSERT) {
        // A batched transaction begins with its first read.
        let mut select = Sql::new(transaction.begin_text());
        select.push("WITH job (position, service, sop, study, series, keys) AS (VALUES ");
        for (position, prepared) in chunk.iter().enumerate() {
            if position > 0 {
                select.push(", ");
            }
            select.bind_list([
                Argument::Integer(position as i64),
                Argument::Text(prepared.service.as_str().into()),
                Argument::Bytes(prepared.sop_token.as_slice().into()),
                Argument::Bytes(prepared.study_token.as_slice().into()),
                Argument::Bytes(prepared.series_token.as_slice().into()),
                // A partition's root key is its service's.
                Argument::Text(crate::split_scope(prepared.service.as_str()).0.into()),
            ]);
        }
        select.push(&format!(
            ") SELECT job.position, \
               (SELECT id FROM dicom_instances WHERE service = job.service \
                  AND uid_token = job.sop), \
               (SELECT generation FROM dicom_service_keys WHERE service = job.keys{lock}), \
               (SELECT wrapped_key FROM dicom_study_keys WHERE service = job.service \
                  AND study_token = job.study{lock}), \
               (SELECT id FROM dicom_studies WHERE service = job.service \
                  AND uid_token = job.study), \
               (SELECT digest FROM dicom_studies WHERE service = job.service \
                  AND uid_token = job.study), \
               (SELECT se.id FROM dicom_series se JOIN dicom_studies st ON st.id = se.study_id \
                  WHERE st.service = job.service AND st.uid_token = job.study \
                  AND se.uid_token = job.series), \
               (SELECT se.digest FROM dicom_series se \
                  JOIN dicom_studies st ON st.id = se.study_id \
                  WHERE st.service = job.service AND st.uid_token = job.study \
                  AND se.uid_token = job.series) \
             FROM job ORDER BY job.position"
        ));
        let rows = select.query().fetch_all(&mut **transaction).await?;
        if rows.len() != chunk.len() {
            return Err(IndexError::Corrupt(
                "the stores' read returned a row count other than the stores'".into(),
            ));
        }
        for row in &rows {
            currents.push(Current::from_row(row)?);
        }
    }
    Ok(currents)
}

impl Current {
    /// Reads one row of [`read_current`]'s SELECT (its first column is the store's position).
    fn from_row(row: &sqlx::any::AnyRow) -> Result<Current, IndexError> {
        let study = column::<Option<i64>>(row, 4)?
            .map(|id| Ok::<_, IndexError>((id, column::<Option<Vec<u8>>>(row, 5)?)))
            .transpose()?;
        let series = column::<Option<i64>>(row, 6)?
            .map(|id| Ok::<_, IndexError>((id, column::<Option<Vec<u8>>>(row, 7)?)))
            .transpose()?;
        Ok(Current {
            instance_exists: column::<Option<i64>>(row, 1)?.is_some(),
            root_generation: column(row, 2)?,
            study_key: column(row, 3)?,
            study,
            series,
        })
    }
}

/// Records one prepared instance in `transaction`. Of concurrent stores of the same
/// SOPInstanceUID exactly one gets [`StoreOutcome::Stored`].
async fn write_instance(
    transaction: &mut WriteTransaction,
    backend: Backend,
    prepared: &PreparedInstance,
) -> Result<Written, IndexError> {
    let current = read_current(transaction, backend, &[prepared])
        .await?
        .pop()
        .ok_or_else(|| IndexError::Corrupt("the store's read returned no row".into()))?;
    let decided = write_parents(transaction, backend, prepared, current).await?;
    let (study_id, series_id, wrote, replaced) = match decided {
        Decided::Finished(written) => return Ok(written),
        Decided::Ready {
            study_id,
            series_id,
            wrote,
            replaced,
        } => (study_id, series_id, wrote, replaced),
    };
    let pending = PendingInstance {
        prepared,
        study_id,
        series_id,
        replaced,
    };
    let inserted = insert_instances(transaction, std::slice::from_ref(&pending)).await?;
    Ok(if inserted.first() == Some(&true) {
        record_changes(transaction, std::slice::from_ref(&pending)).await?;
        Written {
            outcome: pending.outcome(),
            wrote: true,
        }
    } else {
        // PostgreSQL: a concurrent store of the same SOPInstanceUID committed first; the study
        // and series updates must be rolled back.
        Written {
            outcome: StoreOutcome::AlreadyExists,
            wrote,
        }
    })
}

/// Where a store stands once its study and series rows are in place.
enum Decided {
    /// The store ends here (the instance is there already, or the study key changed).
    Finished(Written),
    /// The study and series rows are written; the instance row remains to be inserted.
    Ready {
        study_id: i64,
        series_id: i64,
        /// Whether the study or series rows or the study key were written.
        wrote: bool,
        /// The instance this store replaces, whose row it deleted.
        replaced: Option<ExistingInstance>,
    },
}

/// Decides a store on what `current` says and writes what it needs besides its instance row:
/// the study key of a new study, the study and series rows when their content changed.
async fn write_parents(
    transaction: &mut WriteTransaction,
    backend: Backend,
    prepared: &PreparedInstance,
    current: Current,
) -> Result<Decided, IndexError> {
    if prepared.update && !current.instance_exists {
        return Ok(Decided::Finished(Written::nothing(StoreOutcome::NotFound)));
    }
    let replacing = if current.instance_exists {
        if !prepared.replace {
            return Ok(Decided::Finished(Written::nothing(
                StoreOutcome::AlreadyExists,
            )));
        }
        match existing_instance(transaction, prepared).await? {
            // Only in place: a SOP instance filed under another study or series is refused as
            // POST would, rather than moved.
            Some(existing)
                if current.study.as_ref().map(|(id, _)| *id) != Some(existing.study_id)
                    || current.series.as_ref().map(|(id, _)| *id) != Some(existing.series_id) =>
            {
                return Ok(Decided::Finished(Written::nothing(if prepared.update {
                    StoreOutcome::NotFound
                } else {
                    StoreOutcome::AlreadyExists
                })));
            }
            None if prepared.update => {
                return Ok(Decided::Finished(Written::nothing(StoreOutcome::NotFound)));
            }
            existing => existing,
        }
    } else {
        None
    };
    let mut wrote = false;
    // The blob key must be wrapped under the study key the study has now: a study deleted (its
    // key destroyed) or a root key rotated since the caller got the key would leave an
    // instance nobody can open.
    let study_key = match (current.study_key, prepared.new_study_key_generation) {
        (Some(study_key), _) => study_key,
        // A study key made for this store: written here, under the root key generation it was
        // wrapped with (a rotation since would leave it wrapped by a key that is gone).
        (None, Some(generation)) if current.root_generation == Some(generation) => {
            let inserted = sqlx::query(
                "INSERT INTO dicom_study_keys (service, study_token, wrapped_key) \
                 VALUES ($1, $2, $3) ON CONFLICT (service, study_token) DO NOTHING \
                 RETURNING service",
            )
            .bind(prepared.service.as_str())
            .bind(prepared.study_token.as_slice())
            .bind(prepared.wrapped_study_key.as_slice())
            .fetch_optional(&mut **transaction)
            .await?;
            if inserted.is_none() {
                // PostgreSQL: a concurrent store gave the study its key first.
                return Ok(Decided::Finished(Written::nothing(
                    StoreOutcome::StudyKeyChanged,
                )));
            }
            wrote = true;
            prepared.wrapped_study_key.clone()
        }
        (None, _) => {
            return Ok(Decided::Finished(Written::nothing(
                StoreOutcome::StudyKeyChanged,
            )));
        }
    };
    if study_key != prepared.wrapped_study_key {
        return Ok(Decided::Finished(Written {
            outcome: StoreOutcome::StudyKeyChanged,
            wrote,
        }));
    }
    // The replaced row goes (its tokens with it) before the new one is inserted; its blob is
    // the caller's to delete after the commit, as a delete's are.
    let replaced = match replacing {
        Some(existing) => {
            sqlx::query("DELETE FROM dicom_instances WHERE id = $1")
                .bind(existing.id)
                .execute(&mut **transaction)
                .await?;
            wrote = true;
            Some(existing)
        }
        None => None,
    };

    // On SQLite the write lock makes "the row is absent" final, so a new row has no tokens to
    // replace; on PostgreSQL a concurrent store may have created it meanwhile.
    let row_state = |existed: bool| match (existed, backend) {
        (false, Backend::Sqlite) => RowTokens::New,
        _ => RowTokens::Existing,
    };
    let mut study_row_written = false;
    let study_id = match current.study {
        Some((id, Some(digest))) if digest == prepared.study.digest => id,
        existing => {
            wrote = true;
            study_row_written = true;
            let parent = ParentOf::Study(&prepared.service);
            let tokens = row_state(existing.is_some());
            write_row(
                transaction,
                parent,
                &prepared.study_token,
                &prepared.study,
                tokens,
            )
            .await?
        }
    };
    let series_id = match current.series {
        Some((id, Some(digest))) if digest == prepared.series.digest => id,
        existing => {
            wrote = true;
            if backend == Backend::Postgres && !study_row_written {
                // One lock order for every transaction that writes a study's series: the
                // study's row first (the upsert above took it), then the series row, then the
                // study's row again for its modalities. A store that inserted a series before
                // locking the study would wait, at the modalities, for one that holds the study
                // and waits for that series key: PostgreSQL fails one of them as a deadlock.
                // The lock is the one the modalities' UPDATE takes (not FOR UPDATE, which would
                // also wait for every store whose instance row's foreign key checks the study).
                sqlx::query("SELECT id FROM dicom_studies WHERE id = $1 FOR NO KEY UPDATE")
                    .bind(study_id)
                    .fetch_optional(&mut **transaction)
                    .await?;
            }
            let parent = ParentOf::Series(study_id);
            let tokens = row_state(existing.is_some());
            let series_id = write_row(
                transaction,
                parent,
                &prepared.series_token,
                &prepared.series,
                tokens,
            )
            .await?;
            // The study's ModalitiesInStudy gains a new series' modalities; a series rewritten
            // may have changed its modality, which appending cannot undo.
            match (&existing, &prepared.modality_pieces) {
                (None, Some(pieces)) => {
                    append_modalities(transaction, backend, study_id, pieces).await?;
                }
                _ => forget_modalities(transaction, [study_id]).await?,
            }
            series_id
        }
    };

    Ok(Decided::Ready {
        study_id,
        series_id,
        wrote,
        replaced,
    })
}

/// The row a replacing store would delete.
struct ExistingInstance {
    id: i64,
    study_id: i64,
    series_id: i64,
    blob_name: String,
    /// Its blob key and size (an update keeps them as the original's when it has none).
    blob_key: Option<Vec<u8>>,
    size: i64,
    /// The version before its first update: (blob name, wrapped blob key, size).
    original: Option<(String, Option<Vec<u8>>, i64)>,
}

impl ExistingInstance {
    /// The original version the updated row keeps: the existing one's, or, at the first
    /// update, the version it replaces.
    fn original_for_update(&self) -> (String, Option<Vec<u8>>, i64) {
        match &self.original {
            Some(original) => original.clone(),
            None => (self.blob_name.clone(), self.blob_key.clone(), self.size),
        }
    }
}

/// The row of `prepared`'s SOP instance, if there is one (read only by replacing stores).
async fn existing_instance(
    transaction: &mut WriteTransaction,
    prepared: &PreparedInstance,
) -> Result<Option<ExistingInstance>, IndexError> {
    let row = sqlx::query(
        "SELECT id, study_id, series_id, blob_name, blob_key, size, original_blob_name, \
         original_blob_key, original_size FROM dicom_instances \
         WHERE service = $1 AND uid_token = $2",
    )
    .bind(prepared.service.as_str())
    .bind(prepared.sop_token.as_slice())
    .fetch_optional(&mut **transaction)
    .await?;
    row.map(|row| {
        let original = match column::<Option<String>>(&row, 6)? {
            Some(name) => Some((
                name,
                column::<Option<Vec<u8>>>(&row, 7)?,
                column::<Option<i64>>(&row, 8)?.unwrap_or(0),
            )),
            None => None,
        };
        Ok(ExistingInstance {
            id: column(&row, 0)?,
            study_id: column(&row, 1)?,
            series_id: column(&row, 2)?,
            blob_name: column(&row, 3)?,
            blob_key: column(&row, 4)?,
            size: column(&row, 5)?,
            original,
        })
    })
    .transpose()
}

/// The group path's writes when no store replaces an instance (the common case), in one round
/// trip on SQLite: the instance rows, their search tokens (each row found by its identity, so
/// no ids need to come back first), the change feed's head row and entries. The group read,
/// under the write lock, found none of these instances, and the group keeps one store per SOP
/// instance, so a row that exists after all is a failure of the group (which then stores one
/// by one), not a row to skip.
async fn write_new_instances(
    transaction: &mut WriteTransaction,
    pending: &[PendingInstance<'_>],
) -> Result<(), IndexError> {
    let mut batch = Sql::default();
    for chunk in pending.chunks(INSTANCES_PER_INSERT) {
        batch.append_statement(instance_insert(chunk, ""));
    }
    for instance in pending {
        let prepared = instance.prepared;
        let tokens: Vec<&Vec<u8>> = prepared.instance_tokens.iter().collect();
        for tokens in tokens.chunks(TOKENS_PER_INSERT) {
            let mut insert = Sql::new(
                "INSERT INTO dicom_instance_tokens (instance_id, token) \
                 SELECT instance.id, token.column1 FROM (VALUES ",
            );
            for (position, token) in tokens.iter().enumerate() {
                if position > 0 {
                    insert.push(", ");
                }
                insert.bind_list([Argument::Bytes(token.as_slice().into())]);
            }
            insert.push(") AS token, dicom_instances AS instance WHERE instance.service = ");
            insert.bind(Argument::Text(prepared.service.as_str().into()));
            insert.push(" AND instance.uid_token = ");
            insert.bind(Argument::Bytes(prepared.sop_token.as_slice().into()));
            insert.push(" ON CONFLICT DO NOTHING");
            batch.append_statement(insert);
        }
    }
    changefeed::push_append_sqlite(&mut batch, &new_changes(pending));
    // A batched transaction commits with its writes.
    if let Some(commit) = transaction.commit_text() {
        batch.append_statement(Sql::new(commit));
    }
    batch.query().execute(&mut **transaction).await?;
    Ok(())
}

/// Records the stores of `pending`, whose rows are inserted, in the change feed: a replaced
/// instance's entries become `replaced`, then each store appends a create entry.
async fn record_changes(
    transaction: &mut WriteTransaction,
    pending: &[PendingInstance<'_>],
) -> Result<(), IndexError> {
    for instance in pending
        .iter()
        .filter(|instance| instance.replaced.is_some())
    {
        let prepared = instance.prepared;
        changefeed::mark(
            transaction,
            &prepared.service,
            &[prepared.sop_token.as_slice()],
            ChangeState::Replaced,
        )
        .await?;
    }
    // An updated row keeps its original version (the first one it replaced).
    for instance in pending.iter().filter(|instance| instance.prepared.update) {
        let Some(existing) = &instance.replaced else {
            continue;
        };
        let (name, key, size) = existing.original_for_update();
        sqlx::query(
            "UPDATE dicom_instances SET original_blob_name = $1, original_blob_key = $2, \
             original_size = $3 WHERE service = $4 AND uid_token = $5",
        )
        .bind(name)
        .bind(key)
        .bind(size)
        .bind(instance.prepared.service.as_str())
        .bind(instance.prepared.sop_token.as_slice())
        .execute(&mut **transaction)
        .await?;
    }
    changefeed::append(transaction, &new_changes(pending)).await
}

/// The change feed entries of the stores in `pending`: one per store, by scope.
fn new_changes<'a>(pending: &[PendingInstance<'a>]) -> Vec<(&'a str, NewChange<'a>)> {
    pending
        .iter()
        .map(|instance| {
            let prepared = instance.prepared;
            (
                prepared.service.as_str(),
                NewChange {
                    action: if prepared.update {
                        ChangeAction::Update
                    } else {
                        ChangeAction::Create
                    },
                    sop_token: &prepared.sop_token,
                    uids: &prepared.uids,
                },
            )
        })
        .collect()
}

/// A store whose study and series rows are in place and whose instance row is not yet.
struct PendingInstance<'a> {
    prepared: &'a PreparedInstance,
    study_id: i64,
    series_id: i64,
    /// The instance it replaces.
    replaced: Option<ExistingInstance>,
}

impl PendingInstance<'_> {
    /// What the store did once its row is inserted.
    fn outcome(&self) -> StoreOutcome {
        match &self.replaced {
            // The first update keeps the replaced version as the original; a later one
            // supersedes an intermediate version, whose blob goes.
            Some(existing) if self.prepared.update => StoreOutcome::Updated {
                superseded_blob_name: existing
                    .original
                    .as_ref()
                    .map(|_| existing.blob_name.clone()),
            },
            Some(existing) => StoreOutcome::Replaced {
                previous_blob_name: existing.blob_name.clone(),
            },
            None => StoreOutcome::Stored,
        }
    }
}

/// Inserts the instance rows of `pending` and their search tokens, a few statements for all of
/// them (each statement is a round trip to the database). Returns, for each, whether its row
/// was inserted: `false` when the SOP instance is there already (on PostgreSQL, a concurrent
/// store committed it first).
async fn insert_instances(
    transaction: &mut WriteTransaction,
    pending: &[PendingInstance<'_>],
) -> Result<Vec<bool>, IndexError> {
    let mut inserted: HashMap<(String, Vec<u8>), i64> = HashMap::with_capacity(pending.len());
    for chunk in pending.chunks(INSTANCES_PER_INSERT) {
        let insert = instance_insert(
            chunk,
            " ON CONFLICT (service, uid_token) DO NOTHING RETURNING id, service, uid_token",
        );
        for row in insert.query().fetch_all(&mut **transaction).await? {
            inserted.insert((column(&row, 1)?, column(&row, 2)?), column(&row, 0)?);
        }
    }

    // The new rows have no tokens yet: every token is inserted, all rows' in few statements.
    let mut token_rows = Vec::new();
    let mut stored = Vec::with_capacity(pending.len());
    for instance in pending {
        let prepared = instance.prepared;
        let key = (prepared.service.clone(), prepared.sop_token.clone());
        let id = inserted.remove(&key);
        stored.push(id.is_some());
        if let Some(id) = id {
            token_rows.extend(prepared.instance_tokens.iter().map(|token| (id, token)));
        }
    }
    for chunk in token_rows.chunks(TOKENS_PER_INSERT) {
        let mut insert = Sql::new("INSERT INTO dicom_instance_tokens (instance_id, token) VALUES ");
        for (position, (id, token)) in chunk.iter().enumerate() {
            if position > 0 {
                insert.push(", ");
            }
            insert.bind_list([
                Argument::Integer(*id),
                Argument::Bytes(token.as_slice().into()),
            ]);
        }
        insert.push(" ON CONFLICT DO NOTHING");
        insert.query().execute(&mut **transaction).await?;
    }
    Ok(stored)
}

/// The INSERT of a chunk of instance rows, `tail` after their values.
fn instance_insert<'a>(chunk: &[PendingInstance<'a>], tail: &str) -> Sql<'a> {
    let mut insert = Sql::new(
        "INSERT INTO dicom_instances (service, study_id, series_id, uid_token, blob_name, \
         size, transfer_syntax_uid, uids, attributes, metadata, frames, blob_key) VALUES ",
    );
    for (position, instance) in chunk.iter().enumerate() {
        if position > 0 {
            insert.push(", ");
        }
        let prepared = instance.prepared;
        insert.bind_list([
            Argument::Text(prepared.service.as_str().into()),
            Argument::Integer(instance.study_id),
            Argument::Integer(instance.series_id),
            Argument::Bytes(prepared.sop_token.as_slice().into()),
            Argument::Text(prepared.blob_name.as_str().into()),
            Argument::Integer(prepared.size),
            Argument::Text(prepared.transfer_syntax_uid.as_str().into()),
            Argument::Bytes(prepared.uids.as_slice().into()),
            Argument::Bytes(prepared.instance_attributes.as_slice().into()),
            Argument::Bytes(prepared.metadata.as_slice().into()),
            Argument::NullableBytes(prepared.frames.as_deref().map(Into::into)),
            Argument::Bytes(prepared.wrapped_blob_key.as_slice().into()),
        ]);
    }
    insert.push(tail);
    insert
}

/// What a study or series row hangs off: its service, or its study's row.
#[derive(Clone, Copy)]
enum ParentOf<'a> {
    Study(&'a str),
    Series(i64),
}

/// Inserts a study or series row, or replaces its attributes and digest, then makes its search
/// tokens `row.tokens`. Returns the row's id.
async fn write_row(
    transaction: &mut WriteTransaction,
    parent: ParentOf<'_>,
    uid_token: &[u8],
    row: &PreparedRow,
    tokens: RowTokens,
) -> Result<i64, IndexError> {
    let (table, parent_column, token_table, token_column) = match parent {
        ParentOf::Study(_) => ("dicom_studies", "service", "dicom_study_tokens", "study_id"),
        ParentOf::Series(_) => (
            "dicom_series",
            "study_id",
            "dicom_series_tokens",
            "series_id",
        ),
    };
    // A new study's modalities are known: none yet (`summary.rs`); an existing row keeps its.
    let (extra_column, extra_value) = match parent {
        ParentOf::Study(_) => (", modalities", ", $5"),
        ParentOf::Series(_) => ("", ""),
    };
    let sql = format!(
        "INSERT INTO {table} ({parent_column}, uid_token, attributes, digest{extra_column}) \
         VALUES ($1, $2, $3, $4{extra_value}) ON CONFLICT ({parent_column}, uid_token) DO UPDATE \
         SET attributes = excluded.attributes, digest = excluded.digest RETURNING id"
    );
    let query = match parent {
        ParentOf::Study(service) => sqlx::query(&sql).bind(service),
        ParentOf::Series(study_id) => sqlx::query(&sql).bind(study_id),
    };
    let query = query
        .bind(uid_token)
        .bind(row.attributes.as_slice())
        .bind(row.digest.as_slice());
    let query = match parent {
        ParentOf::Study(_) => query.bind(&[][..]),
        ParentOf::Series(_) => query,
    };
    let inserted = query.fetch_one(&mut **transaction).await?;
    let id: i64 = column(&inserted, 0)?;
    replace_tokens(
        transaction,
        token_table,
        token_column,
        id,
        &row.tokens,
        tokens,
    )
    .await?;
    Ok(id)
}

/// How often a replacing store tries when a concurrent store of the same SOP instance commits
/// between its read and its insert (PostgreSQL).
const REPLACE_ATTEMPTS: u32 = 4;

/// A store that PostgreSQL fails as a deadlock or a serialization failure is run again, up to
/// this many tries in all. The store path takes its locks in one order (`write_parents`), so
/// none is expected; this keeps a conflict nobody foresaw from reaching a client as an error.
const CONFLICT_ATTEMPTS: u32 = 5;

/// Records one instance in a transaction of its own, again from the start when PostgreSQL
/// fails the transaction as a conflict (see [`CONFLICT_ATTEMPTS`]).
pub(crate) async fn store_alone(
    database: &Database,
    prepared: &PreparedInstance,
) -> Result<StoreOutcome, IndexError> {
    let mut conflicts = 0;
    loop {
        match store_alone_once(database, prepared).await {
            Err(error) if is_transaction_conflict(&error) && conflicts + 1 < CONFLICT_ATTEMPTS => {
                conflicts += 1;
                tracing::debug!(%error, conflicts, "a store's transaction conflicted; running it again");
                // A few milliseconds, more each time and not in step with the other party.
                let pause =
                    rand::Rng::gen_range(&mut rand::thread_rng(), 1..=5 * u64::from(conflicts));
                tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            }
            outcome => return outcome,
        }
    }
}

/// Whether the database failed a transaction as a conflict that running it again resolves.
fn is_transaction_conflict(error: &IndexError) -> bool {
    match error {
        IndexError::Database(error) | IndexError::Setup(hds_db::DbError::Sqlx(error)) => {
            hds_db::is_transaction_conflict(error)
        }
        _ => false,
    }
}

/// [`store_alone`]'s one try.
async fn store_alone_once(
    database: &Database,
    prepared: &PreparedInstance,
) -> Result<StoreOutcome, IndexError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut transaction = database.begin_write().await?;
        let written = write_instance(&mut transaction, database.backend(), prepared).await?;
        match written.outcome {
            StoreOutcome::Stored | StoreOutcome::Replaced { .. } | StoreOutcome::Updated { .. } => {
                transaction.commit().await?;
                return Ok(written.outcome);
            }
            outcome => {
                if written.wrote {
                    transaction.rollback().await?;
                }
                // A replacing store that lost its insert to a concurrent one replaces that.
                let raced = written.wrote && outcome == StoreOutcome::AlreadyExists;
                if !(prepared.replace && raced && attempts < REPLACE_ATTEMPTS) {
                    return Ok(outcome);
                }
            }
        }
    }
}

/// Why a group was not committed: its stores are retried alone.
enum GroupFailed {
    /// A store wrote and then turned out not to be stored (cannot happen under SQLite's write
    /// lock, but the group would otherwise commit its half).
    PartialWrite,
    /// The database failed.
    Error(IndexError),
}

impl From<IndexError> for GroupFailed {
    fn from(error: IndexError) -> Self {
        GroupFailed::Error(error)
    }
}

impl From<sqlx::Error> for GroupFailed {
    fn from(error: sqlx::Error) -> Self {
        GroupFailed::Error(error.into())
    }
}

impl From<hds_db::DbError> for GroupFailed {
    fn from(error: hds_db::DbError) -> Self {
        GroupFailed::Error(error.into())
    }
}

/// Records a group of instances in one transaction, or none of them. Each store is decided and
/// its study and series rows written in turn; the instance rows of all of them are inserted
/// together at the end (see [`insert_instances`]).
async fn store_group(
    database: &Database,
    group: &[StoreJob],
) -> Result<Vec<StoreOutcome>, GroupFailed> {
    // Two round trips when no store starts a study or series: BEGIN goes with the read, and
    // COMMIT with the writes (`Database::begin_write_batched`).
    let mut transaction = database.begin_write_batched().await?;
    match write_group(&mut transaction, database.backend(), group).await {
        Ok(outcomes) => {
            transaction.commit().await?;
            Ok(outcomes)
        }
        Err(failed) => {
            // Rolled back now, so the stores retried alone find the write lock free.
            if let Err(error) = transaction.rollback().await {
                tracing::warn!(%error, "rolling back a failed group commit failed");
            }
            Err(failed)
        }
    }
}

/// The statements of [`store_group`], committed by the caller (or with the last of them).
async fn write_group(
    transaction: &mut WriteTransaction,
    backend: Backend,
    group: &[StoreJob],
) -> Result<Vec<StoreOutcome>, GroupFailed> {
    let stores: Vec<&PreparedInstance> = group.iter().map(|job| &job.prepared).collect();
    let currents = read_current(transaction, backend, &stores).await?;
    // The instance rows are inserted together below, or the group fails as a whole.
    let mut outcomes: Vec<StoreOutcome> = Vec::with_capacity(group.len());
    let mut pending = Vec::with_capacity(group.len());
    let mut pending_instances = HashSet::with_capacity(group.len());
    let mut written = GroupWrites::default();
    for (job, mut current) in group.iter().zip(currents) {
        let prepared = &job.prepared;
        // Instance rows are inserted only at the end, so a second store of a SOP instance
        // in the same group would not see the first: it is a duplicate of it.
        let instance = (prepared.service.as_str(), prepared.sop_token.as_slice());
        if pending_instances.contains(&instance) {
            // A replacing store must replace the one before it: alone, in order.
            if prepared.replace {
                return Err(GroupFailed::PartialWrite);
            }
            outcomes.push(StoreOutcome::AlreadyExists);
            continue;
        }
        written.show(prepared, &mut current);
        match write_parents(transaction, backend, prepared, current).await? {
            Decided::Finished(written) => {
                if written.wrote {
                    return Err(GroupFailed::PartialWrite);
                }
                outcomes.push(written.outcome);
            }
            Decided::Ready {
                study_id,
                series_id,
                replaced,
                ..
            } => {
                written.record(prepared, study_id, series_id);
                pending_instances.insert(instance);
                let instance = PendingInstance {
                    prepared,
                    study_id,
                    series_id,
                    replaced,
                };
                outcomes.push(instance.outcome());
                pending.push(instance);
            }
        }
    }
    if pending.iter().all(|instance| instance.replaced.is_none()) {
        write_new_instances(transaction, &pending).await?;
    } else {
        // A replacing store's marks go between the rows and the feed: statement by statement.
        let inserted = insert_instances(transaction, &pending).await?;
        if inserted.contains(&false) {
            return Err(GroupFailed::PartialWrite);
        }
        record_changes(transaction, &pending).await?;
    }
    Ok(outcomes)
}

/// What the stores of a group wrote so far that the group's read, made before any of them, does
/// not show: after a store is ready for its instance row, its study key, study row and series
/// row say exactly what its own would.
#[derive(Default)]
struct GroupWrites<'a> {
    /// By (service, study token): the study key, the study row's id and digest.
    studies: HashMap<(&'a str, &'a [u8]), WrittenStudy<'a>>,
    /// By (service, study token, series token): the series row's id and digest.
    series: HashMap<SeriesKey<'a>, (i64, &'a [u8])>,
}

/// (service, study token, series token).
type SeriesKey<'a> = (&'a str, &'a [u8], &'a [u8]);

/// A study as a store of the group left it.
#[derive(Clone, Copy)]
struct WrittenStudy<'a> {
    wrapped_key: &'a [u8],
    id: i64,
    digest: &'a [u8],
}

impl<'a> GroupWrites<'a> {
    /// Brings `current`, read at the start of the group, up to date for `prepared`.
    fn show(&self, prepared: &PreparedInstance, current: &mut Current) {
        let service = prepared.service.as_str();
        let study = (service, prepared.study_token.as_slice());
        if let Some(written) = self.studies.get(&study) {
            current.study_key = Some(written.wrapped_key.to_vec());
            current.study = Some((written.id, Some(written.digest.to_vec())));
        }
        let series = (
            service,
            prepared.study_token.as_slice(),
            prepared.series_token.as_slice(),
        );
        if let Some(&(series_id, digest)) = self.series.get(&series) {
            current.series = Some((series_id, Some(digest.to_vec())));
        }
    }

    /// Records that `prepared` left its study and series rows (and study key) in place.
    fn record(&mut self, prepared: &'a PreparedInstance, study_id: i64, series_id: i64) {
        let service = prepared.service.as_str();
        self.studies.insert(
            (service, prepared.study_token.as_slice()),
            WrittenStudy {
                wrapped_key: prepared.wrapped_study_key.as_slice(),
                id: study_id,
                digest: prepared.study.digest.as_slice(),
            },
        );
        self.series.insert(
            (
                service,
                prepared.study_token.as_slice(),
                prepared.series_token.as_slice(),
            ),
            (series_id, prepared.series.digest.as_slice()),
        );
    }
}

/// What must hold before a store's row may commit: for an instance, that its blob is on stable
/// storage. The blob's syncs run meanwhile (while the instance is parsed and waits for its
/// group), so a store waits for them only if they are not done when its group is about to
/// commit. Cheap to clone; every clone reports the same outcome.
#[derive(Clone)]
pub struct CommitGate(Shared<BoxFuture<'static, Result<(), Arc<str>>>>);

impl CommitGate {
    /// A gate that has passed.
    pub fn open() -> CommitGate {
        CommitGate::new(async { Ok(()) })
    }

    /// A gate that passes when `condition` returns `Ok`. Nothing polls `condition` before the
    /// store's group is about to commit: work it waits for must already be running.
    pub fn new(condition: impl Future<Output = Result<(), String>> + Send + 'static) -> CommitGate {
        CommitGate(
            condition
                .map(|passed| passed.map_err(Arc::from))
                .boxed()
                .shared(),
        )
    }

    /// Waits for the gate; an error means the row must not be recorded.
    pub(crate) async fn passed(&self) -> Result<(), IndexError> {
        self.0
            .clone()
            .await
            .map_err(|reason| IndexError::NotDurable(reason.to_string()))
    }
}

impl std::fmt::Debug for CommitGate {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("CommitGate")
    }
}

/// One store waiting for the group writer.
struct StoreJob {
    prepared: PreparedInstance,
    gate: CommitGate,
    reply: oneshot::Sender<Result<StoreOutcome, IndexError>>,
}

/// The handle on the group writer task (SQLite). The task ends when the last handle is dropped.
#[derive(Clone)]
pub(crate) struct GroupWriter {
    jobs: mpsc::Sender<StoreJob>,
}

impl GroupWriter {
    /// Starts the writer task on the current tokio runtime.
    pub(crate) fn start(database: Database, commits: GroupCommitMetrics) -> GroupWriter {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run_group_writer(database, queue, commits));
        GroupWriter { jobs }
    }

    /// Queues `prepared` and waits until its group is committed (or it failed alone). Its
    /// group commits only once `gate` passed.
    pub(crate) async fn store(
        &self,
        prepared: PreparedInstance,
        gate: CommitGate,
    ) -> Result<StoreOutcome, IndexError> {
        let (reply, outcome) = oneshot::channel();
        self.jobs
            .send(StoreJob {
                prepared,
                gate,
                reply,
            })
            .await
            .map_err(|_| IndexError::WriterStopped)?;
        outcome.await.map_err(|_| IndexError::WriterStopped)?
    }
}

/// The writer loop: waits for a store, takes every other store queued meanwhile (up to
/// [`MAX_GROUP`]), records them together, answers each after the commit.
async fn run_group_writer(
    database: Database,
    mut queue: mpsc::Receiver<StoreJob>,
    commits: GroupCommitMetrics,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        // Stores whose caller gave up are not recorded: nobody would delete their blob.
        group.retain(|job| !job.reply.is_closed());
        // Each store's gate (its blob's syncs, which ran while it waited in the queue) before
        // the transaction begins, so the write lock is never held while waiting on a disk. A
        // store whose gate fails is answered now and left out of the group.
        let gates = futures::future::join_all(group.iter().map(|job| job.gate.passed())).await;
        let mut passed = Vec::with_capacity(group.len());
        for (job, gate) in group.drain(..).zip(gates) {
            match gate {
                Ok(()) => passed.push(job),
                Err(error) => {
                    let _ = job.reply.send(Err(error));
                }
            }
        }
        group = passed;
        if group.is_empty() {
            continue;
        }
        // A group of one too: its two round trips are fewer than a store alone makes.
        let outcomes = match store_group(&database, &group).await {
            Ok(outcomes) => Some(outcomes),
            Err(GroupFailed::PartialWrite) => None,
            Err(GroupFailed::Error(error)) => {
                tracing::warn!(%error, stores = group.len(), "group commit failed; storing one by one");
                None
            }
        };
        match outcomes {
            Some(outcomes) => {
                commits.record(group.len());
                for (job, outcome) in group.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            None => {
                for job in group.drain(..) {
                    let outcome = store_alone(&database, &job.prepared).await;
                    commits.record(1);
                    let _ = job.reply.send(outcome);
                }
            }
        }
    }
}

/// Whether a row whose tokens are being set may already have some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowTokens {
    /// The row was inserted by this transaction: it has no tokens yet.
    New,
    /// The row existed: its tokens are replaced.
    Existing,
}

/// Makes the search tokens of one row exactly `tokens`: tokens no longer wanted are deleted
/// and the others inserted if absent, rather than every token deleted and inserted again.
async fn replace_tokens(
    transaction: &mut WriteTransaction,
    table: &'static str,
    row_column: &'static str,
    row_id: i64,
    tokens: &BTreeSet<Vec<u8>>,
    row: RowTokens,
) -> Result<(), IndexError> {
    let tokens: Vec<&Vec<u8>> = tokens.iter().collect();
    if row == RowTokens::Existing {
        let mut delete = Sql::new(&format!("DELETE FROM {table} WHERE {row_column} = "));
        delete.bind(Argument::Integer(row_id));
        // Beyond one statement's worth of parameters, delete them all and insert them all.
        if !tokens.is_empty() && tokens.len() <= TOKENS_PER_INSERT {
            delete.push(" AND token NOT IN ").bind_list(
                tokens
                    .iter()
                    .map(|token| Argument::Bytes(token.as_slice().into())),
            );
        }
        delete.query().execute(&mut **transaction).await?;
    }
    for chunk in tokens.chunks(TOKENS_PER_INSERT) {
        let mut insert = Sql::new(&format!(
            "INSERT INTO {table} ({row_column}, token) VALUES "
        ));
        let row_placeholder = insert.argument(Argument::Integer(row_id));
        for (position, token) in chunk.iter().enumerate() {
            if position > 0 {
                insert.push(", ");
            }
            insert.push("(").push(&row_placeholder).push(", ");
            insert
                .bind(Argument::Bytes(token.as_slice().into()))
                .push(")");
        }
        insert.push(" ON CONFLICT DO NOTHING");
        insert.query().execute(&mut **transaction).await?;
    }
    Ok(())
}
