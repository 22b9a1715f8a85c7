//! `hds dicom retrieve`: a study, series or instance into a folder, one Part 10 file per
//! instance, byte for byte as stored (`transfer-syntax=*`: nothing is transcoded).
//!
//! The instances are listed with QIDO first, then fetched one request each, several at once,
//! each streamed to `{name}.partial` and renamed into place once complete: an interrupted
//! retrieve never leaves a truncated `.dcm`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use futures::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::http::{MAX_JSON_BYTES, read_bounded, refusal};
use super::search::{Level, level_path, search_pages};
use super::{DicomClient, ServiceOptions, Target, connect, uid};
use crate::client::output::OutputOptions;

/// Options of `hds dicom retrieve`.
#[derive(Debug, Args)]
pub struct RetrieveOptions {
    #[command(flatten)]
    pub target: Target,
    /// The folder to write into (created if missing).
    #[arg(long, short = 'd', value_name = "FOLDER")]
    pub to: PathBuf,
    /// Downloads at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Refuse a study or series of more instances than this.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_instances: u32,
    /// Refuse (and remove) an instance larger than this many bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024 * 1024)]
    pub max_instance_bytes: u64,
    #[command(flatten)]
    pub service: ServiceOptions,
    #[command(flatten)]
    pub output: OutputOptions,
}

/// One instance to fetch.
struct Wanted {
    study: String,
    series: String,
    instance: String,
}

fn first_string(result: &Value, tag: &str) -> Option<String> {
    result
        .pointer(&format!("/{tag}/Value/0"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The instances the target names, from QIDO; the UIDs the server returns are checked like
/// the user's own before they name files.
async fn instances(
    client: &DicomClient,
    target: &Target,
    max: usize,
) -> anyhow::Result<Vec<Wanted>> {
    if let (Some(series), Some(instance)) = (&target.series, &target.instance) {
        return Ok(vec![Wanted {
            study: target.study.clone(),
            series: series.clone(),
            instance: instance.clone(),
        }]);
    }
    let path = level_path(
        Level::Instances,
        Some(&target.study),
        target.series.as_deref(),
    )?;
    let results = search_pages(client, &path, &[], 0, max + 1).await?;
    if results.len() > max {
        bail!("{path} holds more than {max} instances; raise --max-instances to retrieve them");
    }
    let mut wanted = Vec::with_capacity(results.len());
    for result in &results {
        let study = first_string(result, "0020000D").unwrap_or_else(|| target.study.clone());
        let (Some(series), Some(instance)) = (
            first_string(result, "0020000E"),
            first_string(result, "00080018"),
        ) else {
            bail!("{path}: a result lacks SeriesInstanceUID or SOPInstanceUID");
        };
        for (what, value) in [
            ("the server's StudyInstanceUID", &study),
            ("the server's SeriesInstanceUID", &series),
            ("the server's SOPInstanceUID", &instance),
        ] {
            uid(what, value)?;
        }
        wanted.push(Wanted {
            study,
            series,
            instance,
        });
    }
    Ok(wanted)
}

/// Fetches one instance into `{folder}/{study}/{series}/{instance}.dcm`; its size in bytes.
async fn fetch(
    client: &DicomClient,
    folder: &Path,
    wanted: &Wanted,
    max_bytes: u64,
) -> anyhow::Result<(PathBuf, u64)> {
    let path = format!(
        "studies/{}/series/{}/instances/{}",
        wanted.study, wanted.series, wanted.instance
    );
    let response = client
        .send(|| {
            client.request(reqwest::Method::GET, &path).header(
                reqwest::header::ACCEPT,
                "application/dicom; transfer-syntax=*",
            )
        })
        .await?;
    let status = response.status();
    if !status.is_success() {
        let body = read_bounded(response, MAX_JSON_BYTES).await?;
        bail!("{path}: {}", refusal(status, &body));
    }
    let directory = folder.join(&wanted.study).join(&wanted.series);
    tokio::fs::create_dir_all(&directory)
        .await
        .with_context(|| format!("creating {}", directory.display()))?;
    let target = directory.join(format!("{}.dcm", wanted.instance));
    let partial = directory.join(format!("{}.dcm.partial", wanted.instance));
    let written = async {
        let mut file = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("writing {}", partial.display()))?;
        let mut stream = response.bytes_stream();
        let mut size = 0u64;
        while let Some(chunk) = stream.try_next().await.context("reading the instance")? {
            size += chunk.len() as u64;
            if size > max_bytes {
                bail!("{path} is larger than --max-instance-bytes ({max_bytes})");
            }
            file.write_all(&chunk)
                .await
                .with_context(|| format!("writing {}", partial.display()))?;
        }
        file.sync_all().await?;
        Ok(size)
    }
    .await;
    match written {
        Ok(size) => {
            tokio::fs::rename(&partial, &target)
                .await
                .with_context(|| format!("writing {}", target.display()))?;
            Ok((target, size))
        }
        Err(error) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(error)
        }
    }
}

/// `hds dicom retrieve`.
pub async fn run(options: RetrieveOptions) -> anyhow::Result<()> {
    options.target.path()?;
    let client = connect(&options.service, &options.output).await?;
    let started = Instant::now();
    let wanted = instances(&client, &options.target, options.max_instances as usize).await?;
    if wanted.is_empty() {
        bail!("{}: no instances", options.target.path()?);
    }
    tokio::fs::create_dir_all(&options.to)
        .await
        .with_context(|| format!("creating {}", options.to.display()))?;
    let outcomes: Vec<anyhow::Result<(PathBuf, u64)>> = futures::stream::iter(&wanted)
        .map(|item| fetch(&client, &options.to, item, options.max_instance_bytes))
        .buffer_unordered(usize::from(options.concurrency))
        .collect()
        .await;
    let mut files = Vec::new();
    let mut failures = Vec::new();
    let mut bytes = 0u64;
    for outcome in outcomes {
        match outcome {
            Ok((path, size)) => {
                bytes += size;
                files.push(path.display().to_string());
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                failures.push(format!("{error:#}"));
            }
        }
    }
    files.sort();
    let seconds = started.elapsed().as_secs_f64();
    options.output.print(&json!({
        "retrieved": files.len(),
        "failed": failures.len(),
        "bytes": bytes,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "folder": options.to.display().to_string(),
        "files": files,
        "failures": failures,
    }))?;
    if !failures.is_empty() {
        bail!(
            "{} of {} instances were not retrieved",
            failures.len(),
            wanted.len()
        );
    }
    Ok(())
}
