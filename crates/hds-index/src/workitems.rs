//! UPS workitems at rest: one row per workitem, its dataset and its Transaction UID sealed bound
//! to the row, its search values as keyed tokens.
//!
//! The index knows nothing of UPS rules (those are `hds_dicom::workitem`'s): it stores what the
//! archive prepared and finds rows by tokens. A row's `version` grows with every write; a
//! replacement names the version it read and changes nothing when another write came between
//! (the caller reads again and re-decides), so two transactions racing on one workitem never
//! both win, on SQLite or on PostgreSQL, without holding a lock across the caller's decision.

use std::collections::BTreeSet;

use hds_dicom::SearchValue;
use hds_dicom::normalize::normalize_exact;
use hds_dicom::workitem::{KeyMatch, WorkitemKey};

use crate::sql::{Argument, Sql, column};
use crate::tokens::{
    date_range_tokens, exact_domain, prefix_domain, prefix_query_value, value_tokens,
};
use crate::{Index, IndexError, RowBinding};

/// The table name every sealed value of a workitem is bound to.
const WORKITEM_TABLE: &str = "workitem";
/// Its dataset's column.
const DATASET_COLUMN: &str = "dataset";
/// Its Transaction UID's column.
const TRANSACTION_COLUMN: &str = "transaction";
/// The token domain of Workitem UIDs (the rows' identities), apart from instances' UIDs.
const WORKITEM_UID: &str = "ups:SOPInstanceUID";
/// How many tokens one INSERT carries.
const TOKENS_PER_INSERT: usize = 400;

/// A workitem to write: its UID, its dataset (DICOM JSON, without the Transaction UID), its
/// owner's Transaction UID and the values it is found by.
pub struct WorkitemRecord<'a> {
    /// The Workitem UID (SOPInstanceUID).
    pub uid: &'a str,
    /// The dataset's DICOM JSON bytes.
    pub dataset: &'a [u8],
    /// The Transaction UID, once claimed.
    pub transaction_uid: Option<&'a str>,
    /// The search values (`hds_dicom::workitem::search_terms`).
    pub terms: &'a [(&'static WorkitemKey, SearchValue)],
}

/// A workitem as read, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWorkitem {
    /// The dataset's DICOM JSON bytes.
    pub dataset: Vec<u8>,
    /// The Transaction UID, once claimed.
    pub transaction_uid: Option<String>,
    /// The row's version: what a replacement must name.
    pub version: i64,
}

/// One search condition on workitems.
#[derive(Debug, Clone)]
pub struct WorkitemFilter {
    /// The key.
    pub key: &'static WorkitemKey,
    /// How its value matches.
    pub matcher: KeyMatch,
}

/// The token domain of a search key's values.
fn key_domain(key: &WorkitemKey) -> String {
    format!("ups:{}", key.name)
}

impl Index {
    /// The token a workitem row is keyed by.
    fn workitem_token(&self, service: &str, uid: &str) -> Result<Vec<u8>, IndexError> {
        self.cipher
            .token(service, WORKITEM_UID, &normalize_exact(uid))
    }

    fn seal_workitem(
        &self,
        service: &str,
        uid_token: &[u8],
        column: &'static str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, IndexError> {
        self.cipher.seal(
            RowBinding {
                service,
                table: WORKITEM_TABLE,
                row_token: uid_token,
                column,
            },
            plaintext,
        )
    }

    /// The tokens of a record's search values.
    fn workitem_tokens(
        &self,
        service: &str,
        terms: &[(&'static WorkitemKey, SearchValue)],
    ) -> Result<BTreeSet<Vec<u8>>, IndexError> {
        let mut tokens = BTreeSet::new();
        for (key, value) in terms {
            value_tokens(
                self.cipher.as_ref(),
                service,
                &key_domain(key),
                value,
                &mut tokens,
            )?;
        }
        Ok(tokens)
    }

    /// Records a new workitem; `false` (nothing written) when the service has one of this UID.
    pub async fn create_workitem(
        &self,
        service: &str,
        record: &WorkitemRecord<'_>,
    ) -> Result<bool, IndexError> {
        let uid_token = self.workitem_token(service, record.uid)?;
        let dataset = self.seal_workitem(service, &uid_token, DATASET_COLUMN, record.dataset)?;
        let transaction = record
            .transaction_uid
            .map(|uid| self.seal_workitem(service, &uid_token, TRANSACTION_COLUMN, uid.as_bytes()))
            .transpose()?;
        let tokens = self.workitem_tokens(service, record.terms)?;
        let mut write = self.database.begin_write().await?;
        let row = sqlx::query(
            "INSERT INTO dicom_workitems (service, uid_token, version, dataset, transaction_uid) \
             VALUES ($1, $2, 1, $3, $4) ON CONFLICT (service, uid_token) DO NOTHING RETURNING id",
        )
        .bind(service)
        .bind(uid_token.as_slice())
        .bind(dataset.as_slice())
        .bind(transaction.as_deref())
        .fetch_optional(&mut *write)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let id: i64 = column(&row, 0)?;
        insert_tokens(&mut write, id, &tokens).await?;
        write.commit().await?;
        Ok(true)
    }

    /// The service's workitem of this UID, opened; `None` when there is none.
    pub async fn workitem(
        &self,
        service: &str,
        uid: &str,
    ) -> Result<Option<StoredWorkitem>, IndexError> {
        let uid_token = self.workitem_token(service, uid)?;
        let row = sqlx::query(
            "SELECT version, dataset, transaction_uid FROM dicom_workitems \
             WHERE service = $1 AND uid_token = $2",
        )
        .bind(service)
        .bind(uid_token.as_slice())
        .fetch_optional(self.database.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let dataset = self.open_workitem(
            service,
            &uid_token,
            DATASET_COLUMN,
            &column::<Vec<u8>>(&row, 1)?,
        )?;
        let transaction_uid = match column::<Option<Vec<u8>>>(&row, 2)? {
            Some(sealed) => Some(
                String::from_utf8(self.open_workitem(
                    service,
                    &uid_token,
                    TRANSACTION_COLUMN,
                    &sealed,
                )?)
                .map_err(|_| IndexError::Corrupt("a workitem's Transaction UID".into()))?,
            ),
            None => None,
        };
        Ok(Some(StoredWorkitem {
            dataset,
            transaction_uid,
            version: column(&row, 0)?,
        }))
    }

    fn open_workitem(
        &self,
        service: &str,
        uid_token: &[u8],
        column: &'static str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, IndexError> {
        self.cipher.open(
            RowBinding {
                service,
                table: WORKITEM_TABLE,
                row_token: uid_token,
                column,
            },
            sealed,
        )
    }

    /// Replaces a workitem read at `version` (its dataset, Transaction UID and tokens, in one
    /// transaction); `false` (nothing written) when it changed or went meanwhile.
    pub async fn replace_workitem(
        &self,
        service: &str,
        version: i64,
        record: &WorkitemRecord<'_>,
    ) -> Result<bool, IndexError> {
        let uid_token = self.workitem_token(service, record.uid)?;
        let dataset = self.seal_workitem(service, &uid_token, DATASET_COLUMN, record.dataset)?;
        let transaction = record
            .transaction_uid
            .map(|uid| self.seal_workitem(service, &uid_token, TRANSACTION_COLUMN, uid.as_bytes()))
            .transpose()?;
        let tokens = self.workitem_tokens(service, record.terms)?;
        let mut write = self.database.begin_write().await?;
        let row = sqlx::query(
            "UPDATE dicom_workitems SET version = version + 1, dataset = $1, \
             transaction_uid = $2 WHERE service = $3 AND uid_token = $4 AND version = $5 \
             RETURNING id",
        )
        .bind(dataset.as_slice())
        .bind(transaction.as_deref())
        .bind(service)
        .bind(uid_token.as_slice())
        .bind(version)
        .fetch_optional(&mut *write)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let id: i64 = column(&row, 0)?;
        sqlx::query("DELETE FROM dicom_workitem_tokens WHERE workitem_id = $1")
            .bind(id)
            .execute(&mut *write)
            .await?;
        insert_tokens(&mut write, id, &tokens).await?;
        write.commit().await?;
        Ok(true)
    }

    /// The datasets of the service's workitems that meet every filter, newest first (as Azure
    /// pages them), skipping `offset` and at most `limit`.
    pub async fn search_workitems(
        &self,
        service: &str,
        filters: &[WorkitemFilter],
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Vec<u8>>, IndexError> {
        let mut sql =
            Sql::new("SELECT w.uid_token, w.dataset FROM dicom_workitems w WHERE w.service = ");
        sql.bind(Argument::Text(service.to_owned().into()));
        for filter in filters {
            let domain = key_domain(filter.key);
            let groups: Vec<Vec<Vec<u8>>> = match &filter.matcher {
                KeyMatch::Exact(value) => {
                    vec![vec![self.cipher.token(
                        service,
                        &exact_domain(&domain),
                        value,
                    )?]]
                }
                KeyMatch::FuzzyName(words) => {
                    if words.is_empty() {
                        return Ok(Vec::new());
                    }
                    words
                        .iter()
                        .map(|word| {
                            self.cipher
                                .token(service, &prefix_domain(&domain), prefix_query_value(word))
                                .map(|token| vec![token])
                        })
                        .collect::<Result<_, _>>()?
                }
                KeyMatch::DateRange(from, to) => {
                    vec![date_range_tokens(
                        self.cipher.as_ref(),
                        service,
                        &domain,
                        *from,
                        *to,
                    )?]
                }
            };
            for tokens in groups {
                sql.push(
                    " AND EXISTS (SELECT 1 FROM dicom_workitem_tokens t \
                     WHERE t.workitem_id = w.id AND t.token IN ",
                )
                .bind_list(
                    tokens
                        .into_iter()
                        .map(|token| Argument::Bytes(token.into())),
                )
                .push(")");
            }
        }
        sql.push(" ORDER BY w.id DESC LIMIT ")
            .bind(Argument::Integer(i64::from(limit)))
            .push(" OFFSET ")
            .bind(Argument::Integer(i64::from(offset)));
        let rows = sql.query().fetch_all(self.database.pool()).await?;
        rows.iter()
            .map(|row| {
                let uid_token: Vec<u8> = column(row, 0)?;
                let sealed: Vec<u8> = column(row, 1)?;
                self.open_workitem(service, &uid_token, DATASET_COLUMN, &sealed)
            })
            .collect()
    }

    /// Forgets a deleted service's workitems (their keys are gone with its keyring already).
    pub async fn delete_workitems_of(&self, service: &str) -> Result<(), IndexError> {
        let mut write = self.database.begin_write().await?;
        sqlx::query("DELETE FROM dicom_workitems WHERE service = $1")
            .bind(service)
            .execute(&mut *write)
            .await?;
        write.commit().await?;
        Ok(())
    }
}

async fn insert_tokens(
    write: &mut hds_db::WriteTransaction,
    id: i64,
    tokens: &BTreeSet<Vec<u8>>,
) -> Result<(), IndexError> {
    let tokens: Vec<&Vec<u8>> = tokens.iter().collect();
    for chunk in tokens.chunks(TOKENS_PER_INSERT / 2) {
        let mut insert = Sql::new("INSERT INTO dicom_workitem_tokens (workitem_id, token) VALUES ");
        for (position, token) in chunk.iter().enumerate() {
            if position > 0 {
                insert.push(", ");
            }
            insert.bind_list([
                Argument::Integer(id),
                Argument::Bytes(token.as_slice().into()),
            ]);
        }
        insert.query().execute(&mut **write).await?;
    }
    Ok(())
}
