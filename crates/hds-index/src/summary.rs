//! ModalitiesInStudy kept on the study's row, sealed, so that a study search reads it with the
//! study instead of reading and opening every series of every study on its page.
//!
//! The column holds pieces, one per distinct modality, appended by the store that creates a
//! series with a modality the study does not have yet. Appending needs no decryption under the
//! write lock: each piece is sealed when its store is prepared, and starts with a token of its
//! value, which the append statement looks for so a modality is recorded once. (The token is
//! the service's token of that value, as equal Modality values of two series already share a
//! search token: it tells a reader of the database nothing the series tokens do not.)
//!
//! What cannot be kept by appending makes the column NULL, "not known", and searches read the
//! series again for that study: a series rewritten (its modality may have changed), a series
//! deleted, a study with more pieces than [`MAX_MODALITIES_BYTES`] holds. On SQLite the study's
//! series and instance counts sit beside it, kept by triggers (migration 0012); PostgreSQL
//! counts when it searches, so that its concurrent stores into one study do not queue on the
//! study's row.
//!
//! A piece: `u16` token length, token, `u32` sealed length, sealed value (big-endian lengths).

use std::time::Duration;

use hds_db::{Backend, WriteTransaction};

use crate::index::{MODALITIES_COLUMN, MODALITIES_IN_STUDY, STUDY_TABLE};
use crate::sql::column;
use crate::{Index, IndexCipher, IndexError, RowBinding};

/// The largest modalities column kept; a study that would exceed it is "not known" instead
/// (about 60 distinct modalities: more than any real study has, fewer than a hostile one may).
pub(crate) const MAX_MODALITIES_BYTES: usize = 4096;

/// The longest modality value given a piece (a CS value is at most 16 characters; anything
/// longer is left to the series read).
const MAX_MODALITY_LEN: usize = 64;

/// One modality of a new series, ready to append to its study's row.
#[derive(Debug, Clone)]
pub(crate) struct ModalityPiece {
    /// The piece's start (token length and token): what the append looks for.
    needle: Vec<u8>,
    /// The whole piece.
    piece: Vec<u8>,
}

/// The pieces of a series' Modality values (`series_attributes` as DICOM JSON), sealed for the
/// row of the study `study_token`. None when some value cannot be given a piece.
pub(crate) fn modality_pieces(
    cipher: &dyn IndexCipher,
    service: &str,
    study_token: &[u8],
    series_attributes: &hds_dicom::DicomJsonText,
) -> Result<Option<Vec<ModalityPiece>>, IndexError> {
    /// The one element read out of the series' attributes; the others are skipped unread.
    #[derive(serde::Deserialize)]
    struct Series {
        #[serde(rename = "00080060")]
        modality: Option<serde_json::Value>,
    }
    let series: Series = serde_json::from_str(series_attributes.as_str())
        .map_err(|error| IndexError::Corrupt(format!("a series' attributes: {error}")))?;
    let values = series
        .modality
        .as_ref()
        .and_then(|element| element.get("Value"))
        .and_then(serde_json::Value::as_array);
    let mut strings = Vec::new();
    for value in values.into_iter().flatten() {
        match value {
            serde_json::Value::String(value) => strings.push(value.as_str()),
            // An empty value (JSON null) is no modality, as the series read has it.
            serde_json::Value::Null => {}
            _ => return Ok(None),
        }
    }
    pieces_of(cipher, service, study_token, strings)
}

/// The pieces of `values`, sealed for the row of the study `study_token`; None when some value
/// cannot be given a piece.
fn pieces_of<'a>(
    cipher: &dyn IndexCipher,
    service: &str,
    study_token: &[u8],
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Vec<ModalityPiece>>, IndexError> {
    let mut pieces = Vec::new();
    for value in values {
        if value.len() > MAX_MODALITY_LEN {
            return Ok(None);
        }
        let token = cipher.token(service, MODALITIES_IN_STUDY, value)?;
        let sealed = cipher.seal(binding(service, study_token), value.as_bytes())?;
        let (Ok(token_len), Ok(sealed_len)) =
            (u16::try_from(token.len()), u32::try_from(sealed.len()))
        else {
            return Ok(None);
        };
        let mut needle = Vec::with_capacity(2 + token.len());
        needle.extend_from_slice(&token_len.to_be_bytes());
        needle.extend_from_slice(&token);
        let mut piece = needle.clone();
        piece.extend_from_slice(&sealed_len.to_be_bytes());
        piece.extend_from_slice(&sealed);
        pieces.push(ModalityPiece { needle, piece });
    }
    Ok(Some(pieces))
}

/// Opens a study row's modalities column: its modalities in the order they were appended.
pub(crate) fn open_modalities(
    cipher: &dyn IndexCipher,
    service: &str,
    study_token: &[u8],
    column: &[u8],
) -> Result<Vec<String>, IndexError> {
    let corrupt = || IndexError::Corrupt("a study's modalities are malformed".into());
    let mut rest = column;
    let mut modalities: Vec<String> = Vec::new();
    while !rest.is_empty() {
        let (token_len, after) = rest.split_first_chunk::<2>().ok_or_else(corrupt)?;
        let after = after
            .get(usize::from(u16::from_be_bytes(*token_len))..)
            .ok_or_else(corrupt)?;
        let (sealed_len, after) = after.split_first_chunk::<4>().ok_or_else(corrupt)?;
        let sealed_len = usize::try_from(u32::from_be_bytes(*sealed_len)).map_err(|_| corrupt())?;
        let sealed = after.get(..sealed_len).ok_or_else(corrupt)?;
        rest = &after[sealed_len..];
        let opened = cipher.open(binding(service, study_token), sealed)?;
        let value = String::from_utf8(opened).map_err(|_| corrupt())?;
        if !modalities.contains(&value) {
            modalities.push(value);
        }
    }
    Ok(modalities)
}

/// Appends to the study `study_id`'s modalities the pieces it does not have yet (its column
/// NULL stays NULL; too long a column becomes NULL).
pub(crate) async fn append_modalities(
    transaction: &mut WriteTransaction,
    backend: Backend,
    study_id: i64,
    pieces: &[ModalityPiece],
) -> Result<(), IndexError> {
    // SQLite's `||` yields text; cast back, byte for byte (the database is UTF-8, so nothing
    // is converted). PostgreSQL concatenates bytea as it is.
    let (concatenated, found) = match backend {
        Backend::Sqlite => (
            "CAST(modalities || $1 AS BLOB)",
            "instr(modalities, $2) = 0",
        ),
        Backend::Postgres => ("modalities || $1", "position($2 IN modalities) = 0"),
    };
    let sql = format!(
        "UPDATE dicom_studies SET modalities = CASE WHEN length(modalities) + length($1) > $3 \
         THEN NULL ELSE {concatenated} END \
         WHERE id = $4 AND modalities IS NOT NULL AND {found}"
    );
    let limit = i64::try_from(MAX_MODALITIES_BYTES).unwrap_or(i64::MAX);
    for piece in pieces {
        sqlx::query(&sql)
            .bind(piece.piece.as_slice())
            .bind(piece.needle.as_slice())
            .bind(limit)
            .bind(study_id)
            .execute(&mut **transaction)
            .await?;
    }
    Ok(())
}

/// Marks the modalities of the studies `study_ids` not known (their series changed in a way
/// appending cannot follow).
pub(crate) async fn forget_modalities(
    transaction: &mut WriteTransaction,
    study_ids: impl IntoIterator<Item = i64>,
) -> Result<(), IndexError> {
    for study_id in study_ids {
        sqlx::query("UPDATE dicom_studies SET modalities = NULL WHERE id = $1")
            .bind(study_id)
            .execute(&mut **transaction)
            .await?;
    }
    Ok(())
}

/// How many studies one step of [`Index::fill_study_modalities`] fills (one write transaction).
const FILL_BATCH: i64 = 64;

impl Index {
    /// Gives up to a batch of studies after `after` (by id) whose rows do not know their
    /// modalities (stored before the column existed, or whose series were deleted or rewritten)
    /// the modalities their series have now, in one write transaction. Studies whose service's
    /// keys are not in memory are left for a later pass. Returns the last study id looked at,
    /// or None when there was none.
    pub async fn fill_study_modalities(&self, after: i64) -> Result<Option<i64>, IndexError> {
        // On PostgreSQL the rows are locked first, so a store creating a series meanwhile
        // appends to the filled column after this commit (its append waits for the row), and
        // another node's pass skips them.
        let lock = match self.database.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let mut transaction = self.database.begin_write().await?;
        let studies = sqlx::query(&format!(
            "SELECT id, service, uid_token FROM dicom_studies \
             WHERE modalities IS NULL AND id > $1 ORDER BY id LIMIT $2{lock}"
        ))
        .bind(after)
        .bind(FILL_BATCH)
        .fetch_all(&mut *transaction)
        .await?;
        let mut last = None;
        for study in &studies {
            let id: i64 = column(study, 0)?;
            let service: String = column(study, 1)?;
            let study_token: Vec<u8> = column(study, 2)?;
            last = Some(id);
            let series = sqlx::query(
                "SELECT uid_token, attributes FROM dicom_series WHERE study_id = $1 ORDER BY id",
            )
            .bind(id)
            .fetch_all(&mut *transaction)
            .await?;
            let filled = self.modalities_column(&service, &study_token, &series);
            match filled {
                Ok(Some(modalities)) => {
                    sqlx::query("UPDATE dicom_studies SET modalities = $1 WHERE id = $2")
                        .bind(modalities.as_slice())
                        .bind(id)
                        .execute(&mut *transaction)
                        .await?;
                }
                Ok(None) => {}
                // Most likely the service's keys are not in memory (key access lost).
                Err(error) => tracing::debug!(%error, "a study's modalities are left unknown"),
            }
        }
        transaction.commit().await?;
        Ok(last)
    }

    /// The modalities column for a study whose series rows are `series`; None when it would not
    /// fit.
    fn modalities_column(
        &self,
        service: &str,
        study_token: &[u8],
        series: &[sqlx::any::AnyRow],
    ) -> Result<Option<Vec<u8>>, IndexError> {
        let mut modalities: Vec<String> = Vec::new();
        for row in series {
            let row_token: Vec<u8> = column(row, 0)?;
            let sealed: Vec<u8> = column(row, 1)?;
            self.add_series_modalities(&mut modalities, service, &row_token, &sealed)?;
        }
        let cipher = self.cipher.as_ref();
        let pieces = pieces_of(
            cipher,
            service,
            study_token,
            modalities.iter().map(String::as_str),
        )?;
        let column: Option<Vec<u8>> =
            pieces.map(|pieces| pieces.into_iter().flat_map(|piece| piece.piece).collect());
        Ok(column.filter(|column| column.len() <= MAX_MODALITIES_BYTES))
    }

    /// Fills the modalities of every study that lacks them (see
    /// [`Index::fill_study_modalities`]), one batch at a time, then again every `interval`.
    pub fn spawn_modalities_filler(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let index = self.clone();
        tokio::spawn(async move {
            loop {
                let mut after = 0;
                loop {
                    match index.fill_study_modalities(after).await {
                        Ok(Some(last)) => after = last,
                        Ok(None) => break,
                        Err(error) => {
                            tracing::warn!(%error, "filling studies' modalities failed; retrying later");
                            break;
                        }
                    }
                    tokio::task::yield_now().await;
                }
                tokio::time::sleep(interval).await;
            }
        })
    }
}

fn binding<'a>(service: &'a str, study_token: &'a [u8]) -> RowBinding<'a> {
    RowBinding {
        service,
        table: STUDY_TABLE,
        row_token: study_token,
        column: MODALITIES_COLUMN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PlaintextIndexCipher;

    fn series(modalities: serde_json::Value) -> hds_dicom::DicomJsonText {
        let mut attributes = serde_json::Map::new();
        attributes.insert(
            "0020000E".into(),
            serde_json::json!({"vr": "UI", "Value": ["1.2"]}),
        );
        attributes.insert(
            "00080060".into(),
            serde_json::json!({"vr": "CS", "Value": modalities}),
        );
        hds_dicom::DicomJsonText::from(&attributes)
    }

    #[test]
    fn pieces_open_to_their_values_once_each_and_a_damaged_column_is_refused() {
        let cipher = PlaintextIndexCipher;
        let mut column = Vec::new();
        for values in [
            serde_json::json!(["CT"]),
            serde_json::json!(["MR", null]),
            serde_json::json!(["CT"]),
        ] {
            let pieces = modality_pieces(&cipher, "svc", b"study", &series(values))
                .unwrap()
                .unwrap();
            for piece in pieces {
                assert!(piece.piece.starts_with(&piece.needle));
                column.extend_from_slice(&piece.piece);
            }
        }
        assert_eq!(
            open_modalities(&cipher, "svc", b"study", &column).unwrap(),
            ["CT", "MR"]
        );
        assert!(open_modalities(&cipher, "svc", b"study", &column[..column.len() - 1]).is_err());
        assert!(open_modalities(&cipher, "svc", b"study", &[0xff, 0xff, 0]).is_err());
    }

    #[test]
    fn a_value_that_cannot_be_a_piece_leaves_the_study_to_the_series_read() {
        let cipher = PlaintextIndexCipher;
        let long = "X".repeat(MAX_MODALITY_LEN + 1);
        for values in [serde_json::json!([long]), serde_json::json!([3])] {
            assert!(
                modality_pieces(&cipher, "svc", b"study", &series(values))
                    .unwrap()
                    .is_none()
            );
        }
        let none = modality_pieces(
            &cipher,
            "svc",
            b"study",
            &hds_dicom::DicomJsonText::from(&serde_json::Map::new()),
        )
        .unwrap();
        assert!(none.unwrap().is_empty());
    }
}
