//! QIDO-RS searches.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use hds_db::Backend;

use hds_dicom::extended::ExtendedKind;
use hds_dicom::{QueryLevel, SearchKind, SearchableAttribute};
use serde_json::value::RawValue;

use crate::index::{
    ATTRIBUTES_COLUMN, INSTANCE_TABLE, MODALITIES_IN_STUDY, SERIES_TABLE, SERIES_UID, SOP_UID,
    STUDY_TABLE, STUDY_UID, from_json,
};
use crate::sql::{Argument, Sql, column};
use crate::summary::open_modalities;
use crate::tokens::{
    date_range_tokens, exact_date_token, exact_domain, prefix_domain, prefix_query_value,
};
use crate::{ExtendedQueryTag, Index, IndexError};

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

/// A filter on an extended query tag (one the caller checked is ready and enabled).
#[derive(Debug, Clone)]
pub struct ExtendedFilter {
    /// The tag, as the service's registry has it.
    pub tag: ExtendedQueryTag,
    /// The match: exact (values normalized as `hds_dicom::extended` does), a fuzzy name or a
    /// date range.
    pub matcher: Matcher,
}

/// What a filter's conditions are about.
struct MatchedAttribute<'a> {
    /// The token domain: a keyword, or an extended tag's `x:{key}`.
    domain: &'a str,
    /// The level whose rows carry it.
    level: QueryLevel,
    /// Whether its values are dates (exact matches look up the day token).
    is_date: bool,
    /// Whether it is one of the UIDs rows are keyed by.
    is_uid: bool,
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
    /// Filters on extended query tags, all of which must match too.
    pub extended_filters: Vec<ExtendedFilter>,
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
    pub attributes: RawAttributes,
    /// NumberOfStudyRelatedSeries, or None below study level.
    pub number_of_related_series: Option<u64>,
    /// NumberOfStudyRelatedInstances / NumberOfSeriesRelatedInstances.
    pub number_of_related_instances: Option<u64>,
    /// ModalitiesInStudy (distinct, study level only).
    pub modalities_in_study: Vec<String>,
}

impl SearchHit {
    /// The first value of the element `key` (a tag as 8 hex digits, e.g. `0020000D`) when
    /// it is a string: a UID or another text value, parsed from that element alone.
    pub fn first_string(&self, key: &str) -> Option<String> {
        /// The values of an element, of which only strings are read.
        #[derive(serde::Deserialize)]
        struct Element {
            #[serde(rename = "Value", default)]
            values: Vec<serde_json::Value>,
        }
        let element: Element = serde_json::from_str(self.attributes.get(key)?.get()).ok()?;
        match element.values.into_iter().next()? {
            serde_json::Value::String(value) => Some(value),
            _ => None,
        }
    }
}

/// A DICOM JSON object keyed by tag, each element kept as its JSON text. A search's
/// attributes are copied into its response, not inspected, so a page of results is not parsed
/// into values only to be written out again; keys stay in tag order.
pub type RawAttributes = BTreeMap<String, Box<RawValue>>;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Uid,
    Tokens,
}

/// One condition of a search: the row of the searched level (or its parent, or some child, at
/// `attribute_level`) has one of `tokens`.
struct Condition {
    attribute_level: QueryLevel,
    target: Target,
    tokens: Vec<Vec<u8>>,
    /// How well this condition drives the search (lower is better), or None when it cannot:
    /// its rows are not found by an index probe on the tokens.
    drive_rank: Option<u8>,
}

impl Index {
    /// Runs a search; results in store order.
    ///
    /// One statement. Its subquery finds the page's row ids from the search tokens alone: its
    /// only scanned table is the token index of one condition (the driver), probed once per
    /// token, and each candidate is then checked by token-index probes from its id. The
    /// planner is given no path that walks the service's rows, so the cost grows with the
    /// candidates of the driver, not with the archive. Then the page's rows are read by primary
    /// key (and their service checked); a study's row also holds what its result reports of
    /// its series (`summary.rs`), so a study page reads one row per study. A second statement
    /// reads the series of studies whose rows do not know their modalities.
    pub async fn search(&self, query: &SearchQuery<'_>) -> Result<Vec<SearchHit>, IndexError> {
        let Some(sql) = self.search_sql(query)? else {
            return Ok(Vec::new());
        };
        let service = query.service;
        let rows = sql.query().fetch_all(self.database.pool()).await?;

        let mut hits = Vec::with_capacity(rows.len());
        // Studies whose modalities their rows do not know.
        let mut unknown_modalities = Vec::new();
        for row in &rows {
            let mut attributes = self.row_attributes(service, STUDY_TABLE, row, 1)?;
            let mut hit = SearchHit {
                attributes: RawAttributes::new(),
                number_of_related_series: None,
                number_of_related_instances: None,
                modalities_in_study: Vec::new(),
            };
            match query.level {
                QueryLevel::Study => {
                    hit.number_of_related_series = Some(count(column(row, 3)?)?);
                    hit.number_of_related_instances = Some(count(column(row, 4)?)?);
                    match column::<Option<Vec<u8>>>(row, 5)? {
                        Some(modalities) => {
                            let study_token: Vec<u8> = column(row, 1)?;
                            hit.modalities_in_study = open_modalities(
                                self.cipher.as_ref(),
                                service,
                                &study_token,
                                &modalities,
                            )?;
                        }
                        None => unknown_modalities.push((hits.len(), column::<i64>(row, 0)?)),
                    }
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
        if !unknown_modalities.is_empty() {
            let study_ids: Vec<i64> = unknown_modalities.iter().map(|(_, id)| *id).collect();
            let mut modalities = self.modalities_of(service, &study_ids).await?;
            for (at, study_id) in unknown_modalities {
                hits[at].modalities_in_study = modalities.remove(&study_id).unwrap_or_default();
            }
        }
        Ok(hits)
    }

    /// The database's plan for a search's statement (its page of ids and their rows): SQLite's
    /// `EXPLAIN QUERY PLAN` (one line per step), or PostgreSQL's `EXPLAIN (ANALYZE)`, which
    /// runs it and counts the rows each step visited. For diagnostics and for the
    /// tests that keep searches from visiting every row of a service. None when the search
    /// cannot match (a condition without tokens).
    pub async fn explain_search(
        &self,
        query: &SearchQuery<'_>,
    ) -> Result<Option<String>, IndexError> {
        let Some(search_sql) = self.search_sql(query)? else {
            return Ok(None);
        };
        // Each backend's plan statement, and the column of its rows that holds a plan line.
        let (prefix, detail_column) = match self.database.backend() {
            Backend::Sqlite => ("EXPLAIN QUERY PLAN ", 3),
            Backend::Postgres => ("EXPLAIN (ANALYZE) ", 0),
        };
        let explained = search_sql.prefixed(prefix);
        let rows = explained.query().fetch_all(self.database.pool()).await?;
        let mut plan = String::new();
        for row in &rows {
            let line: String = column(row, detail_column)?;
            plan.push_str(&line);
            plan.push('\n');
        }
        Ok(Some(plan))
    }

    /// The statement of a search (see [`Index::search`]); None when a condition has no tokens,
    /// so nothing can match.
    fn search_sql(&self, query: &SearchQuery<'_>) -> Result<Option<Sql<'static>>, IndexError> {
        let Some(page_sql) = self.page_sql(query)? else {
            return Ok(None);
        };
        let service = query.service;
        let columns = match query.level {
            QueryLevel::Study => {
                // The modalities a study's row keeps (`summary.rs`), and on SQLite its counts
                // (kept by triggers; PostgreSQL counts here: see its migration 0012).
                match self.database.backend() {
                    Backend::Sqlite => {
                        "st.id, st.uid_token, st.attributes, st.series_count, st.instance_count, \
                         st.modalities"
                    }
                    Backend::Postgres => {
                        "st.id, st.uid_token, st.attributes, \
                         (SELECT COUNT(*) FROM dicom_series c WHERE c.study_id = st.id), \
                         (SELECT COUNT(*) FROM dicom_instances c WHERE c.study_id = st.id), \
                         st.modalities"
                    }
                }
            }
            QueryLevel::Series => {
                "st.id, st.uid_token, st.attributes, se.uid_token, se.attributes, \
                 (SELECT COUNT(*) FROM dicom_instances c WHERE c.series_id = se.id)"
            }
            QueryLevel::Instance => {
                "st.id, st.uid_token, st.attributes, se.uid_token, se.attributes, i.uid_token, \
                 i.attributes"
            }
        };
        // CROSS JOIN: SQLite then reads the page first and its rows by primary key; left to
        // choose, it walked the service's studies by (service, id) and matched them to the page.
        let rows_of_page = match query.level {
            QueryLevel::Study => "CROSS JOIN dicom_studies st WHERE st.id = p.id",
            QueryLevel::Series => {
                "CROSS JOIN dicom_series se CROSS JOIN dicom_studies st \
                 WHERE se.id = p.id AND st.id = se.study_id"
            }
            QueryLevel::Instance => {
                "CROSS JOIN dicom_instances i CROSS JOIN dicom_series se \
                 CROSS JOIN dicom_studies st \
                 WHERE i.id = p.id AND se.id = i.series_id AND st.id = i.study_id"
            }
        };
        // One statement: the page's ids (a subquery the planner keeps whole: it has a LIMIT),
        // then their rows by primary key.
        let alias = level_alias(query.level);
        let mut sql = page_sql.prefixed(&format!("SELECT {columns} FROM ("));
        sql.push(&format!(") p {rows_of_page} AND st.service = "))
            .bind(Argument::Text(service.to_owned().into()))
            .push(&format!(" ORDER BY {alias}.id"));
        Ok(Some(sql))
    }

    /// The statement that finds the ids of a search's page, in store order; None when a
    /// condition has no tokens, so nothing can match.
    fn page_sql(&self, query: &SearchQuery<'_>) -> Result<Option<Sql<'static>>, IndexError> {
        let service = query.service;
        let cipher = self.cipher.as_ref();
        let level = query.level;
        let mut conditions = Vec::new();
        if let Some(study) = query.study_instance_uid {
            conditions.push(Condition {
                attribute_level: QueryLevel::Study,
                target: Target::Uid,
                tokens: vec![cipher.token(service, STUDY_UID, study)?],
                drive_rank: Some(0),
            });
        }
        if let Some(series) = query.series_instance_uid {
            conditions.push(Condition {
                attribute_level: QueryLevel::Series,
                target: Target::Uid,
                tokens: vec![cipher.token(service, SERIES_UID, series)?],
                // Series UID tokens are indexed under their study only.
                drive_rank: None,
            });
        }
        for filter in &query.filters {
            self.filter_conditions(&mut conditions, level, service, filter)?;
        }
        for filter in &query.extended_filters {
            self.extended_conditions(&mut conditions, level, service, filter)?;
        }
        if conditions
            .iter()
            .any(|condition| condition.tokens.is_empty())
        {
            return Ok(None);
        }
        let driver = conditions
            .iter()
            .enumerate()
            .filter_map(|(at, condition)| {
                condition
                    .drive_rank
                    .map(|rank| ((rank, condition.tokens.len(), at), at))
            })
            .min()
            .map(|(_, at)| at);

        let mut sql = Sql::new("");
        let service_argument = Argument::Text(service.to_owned().into());
        match driver {
            Some(at) => {
                // Every row the driver finds is the service's: its UIDs are looked up with the
                // service, and tokens of different services differ (see `IndexCipher`). The
                // second statement checks the service again.
                // The driver's rows are materialized before they are sorted: given `d` as a
                // plain subquery, PostgreSQL's planner may walk the token table's (study_id)
                // index in id order and filter every entry by token until it has a page (a
                // 31-day range at 10^6 instances: 100 ms instead of under 1 ms).
                sql.push("WITH d AS MATERIALIZED (");
                push_driver(&mut sql, level, &conditions[at], &service_argument);
                sql.push(") SELECT DISTINCT d.id FROM d WHERE 1 = 1");
                for (index, condition) in conditions.iter().enumerate() {
                    if index != at {
                        push_check(&mut sql, level, condition);
                    }
                }
            }
            None => {
                // Nothing to drive by: every row of the service, walked in id order by
                // (service, id) for studies and instances, so a page reads about a page.
                match level {
                    QueryLevel::Study => {
                        sql.push("SELECT d.id FROM dicom_studies d WHERE d.service = ")
                            .bind(service_argument);
                    }
                    QueryLevel::Series => {
                        sql.push("SELECT d.id FROM dicom_series d WHERE ");
                        push_service_check(&mut sql, level, service_argument);
                    }
                    QueryLevel::Instance => {
                        sql.push("SELECT d.id FROM dicom_instances d WHERE d.service = ")
                            .bind(service_argument);
                    }
                }
                for condition in &conditions {
                    push_check(&mut sql, level, condition);
                }
            }
        }
        sql.push(" ORDER BY d.id LIMIT ")
            .bind(Argument::Integer(i64::from(query.limit)))
            .push(" OFFSET ")
            .bind(Argument::Integer(i64::from(query.offset)));
        Ok(Some(sql))
    }

    /// Adds the conditions of one filter on rows of `level`.
    fn filter_conditions(
        &self,
        conditions: &mut Vec<Condition>,
        level: QueryLevel,
        service: &str,
        filter: &Filter,
    ) -> Result<(), IndexError> {
        let keyword = filter.attribute.keyword;
        // ModalitiesInStudy is the set of the series' Modality values: match series tokens.
        let (attribute_level, keyword) = if keyword == MODALITIES_IN_STUDY {
            (QueryLevel::Series, "Modality")
        } else {
            (filter.attribute.level, keyword)
        };
        let is_uid = matches!(keyword, STUDY_UID | SERIES_UID | SOP_UID);
        self.matcher_conditions(
            conditions,
            level,
            service,
            MatchedAttribute {
                domain: keyword,
                level: attribute_level,
                is_date: filter.attribute.kind == SearchKind::Date,
                is_uid,
            },
            &filter.matcher,
        )
    }

    /// Adds the conditions of a filter on an extended query tag.
    fn extended_conditions(
        &self,
        conditions: &mut Vec<Condition>,
        level: QueryLevel,
        service: &str,
        filter: &ExtendedFilter,
    ) -> Result<(), IndexError> {
        let domain = filter.tag.domain();
        self.matcher_conditions(
            conditions,
            level,
            service,
            MatchedAttribute {
                domain: &domain,
                level: filter.tag.definition.level,
                is_date: filter.tag.definition.vr.kind() == ExtendedKind::Date,
                is_uid: false,
            },
            &filter.matcher,
        )
    }

    /// Adds the conditions of `matcher` on `attribute` for rows of `level`.
    fn matcher_conditions(
        &self,
        conditions: &mut Vec<Condition>,
        level: QueryLevel,
        service: &str,
        attribute: MatchedAttribute<'_>,
        matcher: &Matcher,
    ) -> Result<(), IndexError> {
        let cipher = self.cipher.as_ref();
        let keyword = attribute.domain;
        let attribute_level = attribute.level;
        let is_uid = attribute.is_uid;
        // Each inner list is one condition: any of its tokens present. The rank says how few
        // rows its tokens are expected to find: an exact value few, a name prefix or a day
        // more, a range of dates most.
        let (rank, token_sets): (u8, Vec<Vec<Vec<u8>>>) = match matcher {
            Matcher::Exact(value) if attribute.is_date => (
                2,
                vec![vec![exact_date_token(cipher, service, keyword, value)?]],
            ),
            Matcher::Exact(value) => (
                1,
                vec![vec![cipher.token(
                    service,
                    &exact_domain(keyword),
                    value,
                )?]],
            ),
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
                    (2, vec![Vec::new()])
                } else {
                    (2, sets)
                }
            }
            Matcher::DateRange(from, to) => (
                3,
                vec![date_range_tokens(cipher, service, keyword, *from, *to)?],
            ),
        };
        let target = if is_uid { Target::Uid } else { Target::Tokens };
        for tokens in token_sets {
            let drive_rank = match target {
                Target::Tokens if level_rank(attribute_level) > level_rank(level) => {
                    // A child's value (a modality of some series) is shared by many rows.
                    Some(rank + 2)
                }
                Target::Tokens => Some(rank),
                // Study and instance UIDs are indexed with their service; series UIDs under
                // their study only.
                Target::Uid if attribute_level == QueryLevel::Series => None,
                Target::Uid => Some(0),
            };
            conditions.push(Condition {
                attribute_level,
                target,
                tokens,
                drive_rank,
            });
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
    ) -> Result<RawAttributes, IndexError> {
        let row_token: Vec<u8> = column(row, token_at)?;
        let sealed: Vec<u8> = column(row, token_at + 1)?;
        from_json(&self.open_sealed(service, table, &row_token, ATTRIBUTES_COLUMN, &sealed)?)
    }

    /// The distinct modalities of each study's series, in series order: for the studies whose
    /// rows do not keep them (`summary.rs`).
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
            let row_token: Vec<u8> = column(&row, 1)?;
            let sealed: Vec<u8> = column(&row, 2)?;
            let study_modalities = modalities.entry(study_id).or_default();
            self.add_series_modalities(study_modalities, service, &row_token, &sealed)?;
        }
        Ok(modalities)
    }

    /// Adds to `modalities` those of a series (its row token and sealed attributes) that it
    /// does not have yet.
    pub(crate) fn add_series_modalities(
        &self,
        modalities: &mut Vec<String>,
        service: &str,
        row_token: &[u8],
        sealed: &[u8],
    ) -> Result<(), IndexError> {
        let opened =
            self.open_sealed(service, SERIES_TABLE, row_token, ATTRIBUTES_COLUMN, sealed)?;
        // Only Modality is decoded; the series' other attributes are skipped unparsed.
        let series: SeriesModality = from_json(&opened)?;
        for value in series.values() {
            if !modalities.contains(&value) {
                modalities.push(value);
            }
        }
        Ok(())
    }
}

/// The Modality of a series' sealed attributes (a DICOM JSON object keyed by tag), read
/// without building the rest of the object.
#[derive(serde::Deserialize)]
struct SeriesModality {
    #[serde(rename = "00080060")]
    modality: Option<ModalityElement>,
}

impl SeriesModality {
    /// The series' modalities (an empty value is none).
    fn values(self) -> impl Iterator<Item = String> {
        self.modality
            .map(|element| element.values)
            .unwrap_or_default()
            .into_iter()
            .flatten()
    }
}

#[derive(serde::Deserialize)]
struct ModalityElement {
    /// A CS value may be empty (JSON null) in DICOM JSON.
    #[serde(rename = "Value", default)]
    values: Vec<Option<String>>,
}

/// The table of a level's rows.
fn row_table(level: QueryLevel) -> &'static str {
    match level {
        QueryLevel::Study => "dicom_studies",
        QueryLevel::Series => "dicom_series",
        QueryLevel::Instance => "dicom_instances",
    }
}

/// The column of `level`'s rows that holds the id of their parent at `parent_level`.
fn parent_column(parent_level: QueryLevel) -> &'static str {
    match parent_level {
        QueryLevel::Study => "study_id",
        _ => "series_id",
    }
}

fn bind_tokens(sql: &mut Sql<'_>, tokens: &[Vec<u8>]) {
    sql.bind_list(
        tokens
            .iter()
            .map(|token| Argument::Bytes(token.clone().into())),
    );
}

/// Appends `SELECT <id of a row of level> AS id FROM ...`: the rows of `level` that meet
/// `condition` (possibly repeated), found by probing the index of its tokens or UIDs.
fn push_driver<'a>(
    sql: &mut Sql<'a>,
    level: QueryLevel,
    condition: &Condition,
    service: &Argument<'a>,
) {
    let attribute_level = condition.attribute_level;
    let (token_table, token_row) = token_table(attribute_level);
    let rows = row_table(level);
    let attribute_rows = row_table(attribute_level);
    let relation = level_rank(attribute_level).cmp(&level_rank(level));
    match (condition.target, relation) {
        (Target::Tokens, Ordering::Equal) => {
            sql.push(&format!(
                "SELECT t.{token_row} AS id FROM {token_table} t WHERE t.token IN "
            ));
        }
        (Target::Tokens, Ordering::Less) => {
            // A parent's tokens, then its rows of this level by their parent index.
            let parent = parent_column(attribute_level);
            sql.push(&format!(
                "SELECT r.id AS id FROM {token_table} t JOIN {rows} r ON r.{parent} = t.{token_row} \
                 WHERE t.token IN "
            ));
        }
        (Target::Tokens, Ordering::Greater) => {
            let parent = parent_column(level);
            sql.push(&format!(
                "SELECT c.{parent} AS id FROM {token_table} t JOIN {attribute_rows} c \
                 ON c.id = t.{token_row} WHERE t.token IN "
            ));
        }
        (Target::Uid, Ordering::Equal) => {
            sql.push(&format!(
                "SELECT r.id AS id FROM {rows} r WHERE r.service = "
            ))
            .bind(service.clone())
            .push(" AND r.uid_token IN ");
        }
        (Target::Uid, Ordering::Less) => {
            let parent = parent_column(attribute_level);
            sql.push(&format!(
                "SELECT r.id AS id FROM {attribute_rows} a JOIN {rows} r ON r.{parent} = a.id \
                 WHERE a.service = "
            ))
            .bind(service.clone())
            .push(" AND a.uid_token IN ");
        }
        (Target::Uid, Ordering::Greater) => {
            let parent = parent_column(level);
            sql.push(&format!(
                "SELECT c.{parent} AS id FROM {attribute_rows} c WHERE c.service = "
            ))
            .bind(service.clone())
            .push(" AND c.uid_token IN ");
        }
    }
    bind_tokens(sql, &condition.tokens);
}

/// Appends the check that candidate `d` belongs to the service, for candidates that were not
/// found by token: a primary-key probe in an expression (never a join, which a planner could
/// turn into a walk of the service's rows).
fn push_service_check<'a>(sql: &mut Sql<'a>, level: QueryLevel, service: Argument<'a>) {
    match level {
        QueryLevel::Study => {
            sql.push("(SELECT s.service FROM dicom_studies s WHERE s.id = d.id) = ");
        }
        QueryLevel::Series => {
            sql.push(
                "(SELECT s.service FROM dicom_series x JOIN dicom_studies s ON s.id = x.study_id \
                 WHERE x.id = d.id) = ",
            );
        }
        QueryLevel::Instance => {
            sql.push("(SELECT s.service FROM dicom_instances s WHERE s.id = d.id) = ");
        }
    }
    sql.bind(service);
}

/// Appends ` AND <condition>` on candidate `d` (a row of `level`): index probes from the
/// candidate's id.
fn push_check(sql: &mut Sql<'_>, level: QueryLevel, condition: &Condition) {
    let attribute_level = condition.attribute_level;
    let (token_table, token_row) = token_table(attribute_level);
    let rows = row_table(level);
    let attribute_rows = row_table(attribute_level);
    let relation = level_rank(attribute_level).cmp(&level_rank(level));
    match (condition.target, relation) {
        (Target::Tokens, Ordering::Equal) => {
            sql.push(&format!(
                " AND EXISTS (SELECT 1 FROM {token_table} t WHERE t.{token_row} = d.id \
                 AND t.token IN "
            ));
        }
        (Target::Tokens, Ordering::Less) => {
            let parent = parent_column(attribute_level);
            sql.push(&format!(
                " AND EXISTS (SELECT 1 FROM {rows} r JOIN {token_table} t \
                 ON t.{token_row} = r.{parent} WHERE r.id = d.id AND t.token IN "
            ));
        }
        (Target::Tokens, Ordering::Greater) => {
            let parent = parent_column(level);
            sql.push(&format!(
                " AND EXISTS (SELECT 1 FROM {attribute_rows} c JOIN {token_table} t \
                 ON t.{token_row} = c.id WHERE c.{parent} = d.id AND t.token IN "
            ));
        }
        (Target::Uid, Ordering::Equal) => {
            sql.push(&format!(
                " AND EXISTS (SELECT 1 FROM {rows} r WHERE r.id = d.id AND r.uid_token IN "
            ));
        }
        (Target::Uid, Ordering::Less) => {
            let parent = parent_column(attribute_level);
            sql.push(&format!(
                " AND EXISTS (SELECT 1 FROM {rows} r JOIN {attribute_rows} a ON a.id = r.{parent} \
                 WHERE r.id = d.id AND a.uid_token IN "
            ));
        }
        (Target::Uid, Ordering::Greater) => {
            let parent = parent_column(level);
            sql.push(&format!(
                " AND EXISTS (SELECT 1 FROM {attribute_rows} c WHERE c.{parent} = d.id \
                 AND c.uid_token IN "
            ));
        }
    }
    bind_tokens(sql, &condition.tokens);
    sql.push(")");
}

fn count(value: i64) -> Result<u64, IndexError> {
    u64::try_from(value).map_err(|_| IndexError::Corrupt("negative count".into()))
}
