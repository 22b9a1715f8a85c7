//! `hds dicom search`: QIDO-RS at the study, series or instance level.

use anyhow::bail;
use clap::{Args, ValueEnum};
use serde_json::Value;

use super::{ServiceOptions, connect, convert, uid};
use crate::client::output::OutputOptions;

/// The most `--match` parameters.
const MAX_MATCHES: usize = 64;
/// The longest value of one match.
const MAX_MATCH_VALUE_LEN: usize = 1024;
/// The server's largest page (QIDO `limit`).
const PAGE: usize = 200;

/// What to search for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Level {
    /// Studies.
    Studies,
    /// Series (all, or of --study).
    Series,
    /// Instances (all, or of --study, or of --study and --series).
    Instances,
}

/// Options of `hds dicom search`.
#[derive(Debug, Args)]
pub struct SearchOptions {
    /// Studies, series or instances.
    #[arg(value_enum)]
    pub level: Level,
    /// Only within this study.
    #[arg(long)]
    pub study: Option<String>,
    /// Only within this series (needs --study).
    #[arg(long, requires = "study")]
    pub series: Option<String>,
    /// A QIDO match, KEYWORD=VALUE or TAG=VALUE (e.g. PatientID=123, StudyDate=20200101-,
    /// 00100010=Doe*); repeatable.
    #[arg(long = "match", short = 'm', value_name = "KEY=VALUE")]
    pub matches: Vec<String>,
    /// Match names by prefixes of their parts, ignoring case and accents.
    #[arg(long)]
    pub fuzzy: bool,
    /// More attributes in each result (keywords or tags, or `all`); repeatable.
    #[arg(long = "include-field", value_name = "FIELD")]
    pub include_fields: Vec<String>,
    /// The most results to return (1-200 per page; past 200 pages are fetched in turn).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    /// Skip this many results.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub offset: u32,
    /// Print DICOM JSON as the server sends it instead of attributes by keyword.
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub service: ServiceOptions,
    #[command(flatten)]
    pub output: OutputOptions,
}

/// A match's key: a keyword (letters and digits) or an 8-digit hex tag.
fn check_key(key: &str) -> anyhow::Result<()> {
    if key.is_empty() || key.len() > 64 || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
        bail!("--match {key:?}: the key must be a DICOM keyword or tag");
    }
    Ok(())
}

/// The query string's pairs, checked.
fn parameters(options: &SearchOptions) -> anyhow::Result<Vec<(String, String)>> {
    if options.matches.len() > MAX_MATCHES {
        bail!("at most {MAX_MATCHES} --match parameters");
    }
    let mut pairs = Vec::new();
    for argument in &options.matches {
        let Some((key, value)) = argument.split_once('=') else {
            bail!("--match {argument:?} is not KEY=VALUE");
        };
        check_key(key)?;
        if value.len() > MAX_MATCH_VALUE_LEN || value.chars().any(char::is_control) {
            bail!(
                "--match {key}: the value must be at most {MAX_MATCH_VALUE_LEN} bytes without control characters"
            );
        }
        pairs.push((key.to_owned(), value.to_owned()));
    }
    if options.fuzzy {
        pairs.push(("fuzzymatching".into(), "true".into()));
    }
    for field in &options.include_fields {
        check_key(field)?;
        pairs.push(("includefield".into(), field.clone()));
    }
    Ok(pairs)
}

/// The QIDO path of the level, within the study or series given.
pub fn level_path(
    level: Level,
    study: Option<&str>,
    series: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(study) = study {
        uid("--study", study)?;
    }
    if let Some(series) = series {
        uid("--series", series)?;
    }
    Ok(match (level, study, series) {
        (Level::Studies, None, None) => "studies".into(),
        (Level::Studies, _, _) => bail!("studies are searched without --study or --series"),
        (Level::Series, None, None) => "series".into(),
        (Level::Series, Some(study), None) => format!("studies/{study}/series"),
        (Level::Series, _, Some(_)) => bail!("series are searched without --series"),
        (Level::Instances, None, _) => "instances".into(),
        (Level::Instances, Some(study), None) => format!("studies/{study}/instances"),
        (Level::Instances, Some(study), Some(series)) => {
            format!("studies/{study}/series/{series}/instances")
        }
    })
}

/// Pages through a search from `offset` until `limit` results (or the end).
pub async fn search_pages(
    client: &super::DicomClient,
    path: &str,
    parameters: &[(String, String)],
    offset: usize,
    limit: usize,
) -> anyhow::Result<Vec<Value>> {
    let mut results = Vec::new();
    while results.len() < limit {
        let page = PAGE.min(limit - results.len());
        let mut query = parameters.to_vec();
        query.push(("limit".into(), page.to_string()));
        query.push(("offset".into(), (offset + results.len()).to_string()));
        let Value::Array(items) = client.get_json(path, &query).await? else {
            bail!("{path}: the answer is not a list of results");
        };
        let received = items.len();
        results.extend(items);
        if received < page {
            break;
        }
    }
    Ok(results)
}

/// `hds dicom search`.
pub async fn run(options: SearchOptions) -> anyhow::Result<()> {
    let path = level_path(
        options.level,
        options.study.as_deref(),
        options.series.as_deref(),
    )?;
    let query = parameters(&options)?;
    let client = connect(&options.service, &options.output).await?;
    let results = search_pages(
        &client,
        &path,
        &query,
        options.offset as usize,
        options.limit as usize,
    )
    .await?;
    let shown: Vec<Value> = if options.raw {
        results
    } else {
        results.iter().map(convert::keywords).collect()
    };
    options.output.print(&Value::Array(shown))
}
