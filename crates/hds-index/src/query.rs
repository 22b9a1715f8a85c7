//! QIDO-RS searches.

use std::collections::BTreeMap;

use hds_dicom::{QueryLevel, SearchKind, SearchableAttribute};
use serde_json::{Map, Value};

use crate::index::{
    ATTRIBUTES_COLUMN, INSTANCE_TABLE, MODALITIES_IN_STUDY, SERIES_TABLE, SERIES_UID, SOP_UID,
    STUDY_TABLE, STUDY_UID, from_json,
};
use crate::sql::{Argument, Sql, column};
use crate::tokens::{
    date_range_tokens, exact_date_token, exact_domain, prefix_domain, prefix_query_value,
};
use crate::{Index, IndexError};

/// How one filter matches.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// The normalized value equals this.
    Exact(String),
    /// Person name: some name-part word starts with each of these normalized prefixes (of which
    /// the first 64 characters count). An empty list matches
    /// nothing: a query of wildcards alone is not a search.
    FuzzyName(Vec<String>),
    /// A date (`YYYYMMDD`) within the inclusive bounds; either may be open.
    DateRange(Option<u32>, Option<u32>),
}

/// One attribute filter.
#[derive(Debug, Clone)]
pub struct Filter {
    /// The attribute.
    pub attribute: &'static SearchableAttribute,
    /// The match.
    pub matcher: Matcher,
}

/// A QIDO-RS search.
#[derive(Debug, Clone)]
pub struct SearchQuery<'a> {
    /// The DICOM service.
    pub service: &'a str,
    /// The level of the results.
    pub level: QueryLevel,
    /// Restrict to a study (series and instance searches under `studies/{study}`).
    pub study_instance_uid: Option<&'a str>,
    /// Restrict to a series (instance searches under `.../series/{series}`).
    pub series_instance_uid: Option<&'a str>,
    /// All filters must match; a filter on an attribute of a higher level matches the parent
    /// (e.g. PatientName in a series search filters by the series' study).
    pub filters: Vec<Filter>,
    /// At most this many results.
    pub limit: u32,
    /// Skip this many.
    pub offset: u32,
}

/// One result: the level's stored attributes (DICOM JSON object, plus those of the higher
/// levels), and the counts QIDO-RS reports.
#[derive(Debug, Clone)]
pub struct SearchHit {
    /// Attributes of the result and of its parents (DICOM JSON object keyed by tag).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// NumberOfStudyRelatedSeries, or None below study level.
    pub number_of_related_series: Option<u64>,
    /// NumberOfStudyRelatedInstances / NumberOfSeriesRelatedInstances.
    pub number_of_related_instances: Option<u64>,
    /// ModalitiesInStudy (distinct, study level only).
    pub modalities_in_study: Vec<String>,
}

/// The tag of Modality (0008,0060), read from series attributes for ModalitiesInStudy.
const MODALITY_TAG: &str = "00080060";

/// The rows of a level: table alias, token table and its row column.
fn level_alias(level: QueryLevel) -> &'static str {
    match level {
        QueryLevel::Study => "st",
        QueryLevel::Series => "se",
        QueryLevel::Instance => "i",
    }
}

fn level_rank(level: QueryLevel) -> u8 {
    match level {
        QueryLevel::Study => 0,
        QueryLevel::Series => 1,
        QueryLevel::Instance => 2,
    }
}

fn token_table(level: QueryLevel) -> (&'static str, &'static str) {
    match level {
        QueryLevel::Study => ("dicom_study_tokens", "study_id"),
        QueryLevel::Series => ("dicom_series_tokens", "series_id"),
        QueryLevel::Instance => ("dicom_instance_tokens", "instance_id"),
    }
}

/// What one condition compares: the row's UID token, or its search tokens.
enum Target {
    Uid,
    Tokens,
}

impl Index {
    /// Runs a search; results in store order.
    pub async fn search(&self, query: &SearchQuery<'_>) -> Result<Vec<SearchHit>, IndexError> {
        let service = query.service;
        let cipher = self.cipher.as_ref();
        let mut sql = Sql::new("SELECT ");
        sql.push(match query.level {
            QueryLevel::Study => {
                "st.id, st.uid_token, st.attributes, \
                 (SELECT COUNT(*) FROM dicom_series c WHERE c.study_id = st.id), \
                 (SELECT COUNT(*) FROM dicom_instances c WHERE c.study_id = st.id) \
                 FROM dicom_studies st"
            }
            QueryLevel::Series => {
                "st.id, st.uid_token, st.attributes, se.uid_token, se.attributes, \
                 (SELECT COUNT(*) FROM dicom_instances c WHERE c.series_id = se.id) \
                 FROM dicom_series se JOIN dicom_studies st ON st.id = se.study_id"
            }
            QueryLevel::Instance => {
                "st.id, st.uid_token, st.attributes, se.uid_token, se.attributes, i.uid_token, i.attributes \
                 FROM dicom_instances i JOIN dicom_series se ON se.id = i.series_id \
                 JOIN dicom_studies st ON st.id = i.study_id"
            }
        });
        sql.push(" WHERE st.service = ")
            .bind(Argument::Text(service.into()));
        if let Some(study) = query.study_instance_uid {
            sql.push(" AND st.uid_token = ").bind(Argument::Bytes(
                cipher.token(service, STUDY_UID, study)?.into(),
            ));
        }
        if let Some(series) = query.series_instance_uid {
            if query.level == QueryLevel::Study {
                push_child_uid_condition(
                    &mut sql,
                    QueryLevel::Study,
                    QueryLevel::Series,
                    cipher.token(service, SERIES_UID, series)?,
                );
            } else {
                sql.push(" AND se.uid_token = ").bind(Argument::Bytes(
                    cipher.token(service, SERIES_UID, series)?.into(),
                ));
            }
        }
        for filter in &query.filters {
            self.push_filter(&mut sql, query.level, service, filter)?;
        }
        let order = level_alias(query.level);
        sql.push(&format!(" ORDER BY {order}.id LIMIT "))
            .bind(Argument::Integer(i64::from(query.limit)))
            .push(" OFFSET ")
            .bind(Argument::Integer(i64::from(query.offset)));
        let rows = sql.query().fetch_all(self.database.pool()).await?;

        let mut hits = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut attributes = self.row_attributes(service, STUDY_TABLE, row, 1)?;
            let mut hit = SearchHit {
                attributes: Map::new(),
                number_of_related_series: None,
                number_of_related_instances: None,
                modalities_in_study: Vec::new(),
            };
            match query.level {
                QueryLevel::Study => {
                    hit.number_of_related_series = Some(count(column(row, 3)?)?);
                    hit.number_of_related_instances = Some(count(column(row, 4)?)?);
                }
                QueryLevel::Series => {
                    attributes.extend(self.row_attributes(service, SERIES_TABLE, row, 3)?);
                    hit.number_of_related_instances = Some(count(column(row, 5)?)?);
                }
                QueryLevel::Instance => {
                    attributes.extend(self.row_attributes(service, SERIES_TABLE, row, 3)?);
                    attributes.extend(self.row_attributes(service, INSTANCE_TABLE, row, 5)?);
                }
            }
            hit.attributes = attributes;
            hits.push(hit);
        }
        if query.level == QueryLevel::Study && !rows.is_empty() {
            let study_ids = rows
                .iter()
                .map(|row| column::<i64>(row, 0))
                .collect::<Result<Vec<_>, _>>()?;
            let mut modalities = self.modalities_of(service, &study_ids).await?;
            for (hit, study_id) in hits.iter_mut().zip(&study_ids) {
                hit.modalities_in_study = modalities.remove(study_id).unwrap_or_default();
            }
        }
        Ok(hits)
    }

    /// Appends the condition of one filter on rows of `level`.
    fn push_filter(
        &self,
        sql: &mut Sql,
        level: QueryLevel,
        service: &str,
        filter: &Filter,
    ) -> Result<(), IndexError> {
        let cipher = self.cipher.as_ref();
        let keyword = filter.attribute.keyword;
        // ModalitiesInStudy is the set of the series' Modality values: match series tokens.
        let (attribute_level, keyword) = if keyword == MODALITIES_IN_STUDY {
            (QueryLevel::Series, "Modality")
        } else {
            (filter.attribute.level, keyword)
        };
        let is_uid = matches!(keyword, STUDY_UID | SERIES_UID | SOP_UID);
        // Each inner list is one condition: any of its tokens present.
        let token_sets: Vec<Vec<Vec<u8>>> = match &filter.matcher {
            Matcher::Exact(value) if filter.attribute.kind == SearchKind::Date => {
                vec![vec![exact_date_token(cipher, service, keyword, value)?]]
            }
            Matcher::Exact(value) => {
                vec![vec![cipher.token(
                    service,
                    &exact_domain(keyword),
                    value,
                )?]]
            }
            Matcher::FuzzyName(words) => {
                let domain = prefix_domain(keyword);
                let sets: Vec<Vec<Vec<u8>>> = words
                    .iter()
                    .filter(|word| !word.is_empty())
                    .map(|word| {
                        cipher
                            .token(service, &domain, prefix_query_value(word))
                            .map(|token| vec![token])
                    })
                    .collect::<Result<_, _>>()?;
                if sets.is_empty() {
                    // No word to look for (`*` alone): one empty condition, which matches
                    // nothing, rather than no condition, which would match every row.
                    vec![Vec::new()]
                } else {
                    sets
                }
            }
            Matcher::DateRange(from, to) => {
                vec![date_range_tokens(cipher, service, keyword, *from, *to)?]
            }
        };
        let target = if is_uid { Target::Uid } else { Target::Tokens };
        for tokens in token_sets {
            push_condition(sql, level, attribute_level, &target, tokens);
        }
        Ok(())
    }

    /// The attributes of the row whose token is column `token_at` of `row` and whose sealed
    /// attributes are the column after it.
    fn row_attributes(
        &self,
        service: &str,
        table: &'static str,
        row: &sqlx::any::AnyRow,
        token_at: usize,
    ) -> Result<Map<String, Value>, IndexError> {
        let row_token: Vec<u8> = column(row, token_at)?;
        let sealed: Vec<u8> = column(row, token_at + 1)?;
        from_json(&self.open_sealed(service, table, &row_token, ATTRIBUTES_COLUMN, &sealed)?)
    }

    /// The distinct modalities of each study's series, in series order.
    async fn modalities_of(
        &self,
        service: &str,
        study_ids: &[i64],
    ) -> Result<BTreeMap<i64, Vec<String>>, IndexError> {
        let mut sql = Sql::new(
            "SELECT se.study_id, se.uid_token, se.attributes FROM dicom_series se WHERE se.study_id IN ",
        );
        sql.bind_list(study_ids.iter().map(|id| Argument::Integer(*id)))
            .push(" ORDER BY se.id");
        let rows = sql.query().fetch_all(self.database.pool()).await?;
        let mut modalities: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for row in rows {
            let study_id: i64 = column(&row, 0)?;
            let attributes = self.row_attributes(service, SERIES_TABLE, &row, 1)?;
            let values = attributes
                .get(MODALITY_TAG)
                .and_then(|element| element.get("Value"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str);
            let study_modalities = modalities.entry(study_id).or_default();
            for value in values {
                if !study_modalities.iter().any(|known| known == value) {
                    study_modalities.push(value.to_owned());
                }
            }
        }
        Ok(modalities)
    }
}

/// Appends ` AND <condition>`: the row of `level` (or its parent or some child at
/// `attribute_level`) has one of `tokens`.
fn push_condition(
    sql: &mut Sql,
    level: QueryLevel,
    attribute_level: QueryLevel,
    target: &Target,
    tokens: Vec<Vec<u8>>,
) {
    if tokens.is_empty() {
        sql.push(" AND 1 = 0");
        return;
    }
    let arguments = tokens
        .into_iter()
        .map(|token| Argument::Bytes(token.into()));
    if level_rank(attribute_level) <= level_rank(level) {
        // The row itself or a parent, which the query joins.
        let alias = level_alias(attribute_level);
        match target {
            Target::Uid => {
                sql.push(&format!(" AND {alias}.uid_token IN "))
                    .bind_list(arguments);
            }
            Target::Tokens => {
                // Driven by the tokens (the token table's primary key starts with the token):
                // the matching rows are found by one index probe per token, whatever the
                // number of rows in the service, rather than each row's tokens being searched.
                let (table, row_column) = token_table(attribute_level);
                sql.push(&format!(
                    " AND {alias}.id IN (SELECT t.{row_column} FROM {table} t WHERE t.token IN "
                ))
                .bind_list(arguments)
                .push(")");
            }
        }
        return;
    }
    // A child level: some child row matches.
    let alias = level_alias(level);
    let parent_column = match level {
        QueryLevel::Study => "study_id",
        _ => "series_id",
    };
    let child_table = match attribute_level {
        QueryLevel::Series => "dicom_series",
        _ => "dicom_instances",
    };
    match target {
        Target::Uid => {
            sql.push(&format!(
                " AND EXISTS (SELECT 1 FROM {child_table} c WHERE c.{parent_column} = {alias}.id AND c.uid_token IN "
            ))
            .bind_list(arguments)
            .push(")");
        }
        Target::Tokens => {
            let (table, row_column) = token_table(attribute_level);
            sql.push(&format!(
                " AND {alias}.id IN (SELECT c.{parent_column} FROM {table} t \
                 JOIN {child_table} c ON c.id = t.{row_column} WHERE t.token IN "
            ))
            .bind_list(arguments)
            .push(")");
        }
    }
}

fn push_child_uid_condition(
    sql: &mut Sql,
    level: QueryLevel,
    child_level: QueryLevel,
    token: Vec<u8>,
) {
    push_condition(sql, level, child_level, &Target::Uid, vec![token]);
}

fn count(value: i64) -> Result<u64, IndexError> {
    u64::try_from(value).map_err(|_| IndexError::Corrupt("negative count".into()))
}
