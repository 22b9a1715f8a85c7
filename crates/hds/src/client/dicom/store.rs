//! `hds dicom store PATH...`: files and folders (read recursively), one STOW-RS request per
//! file, a bounded number at once. Each file's body streams from disk. A file the service
//! refuses is reported with the failure reason of its STOW response's FailedSOPSequence; any
//! file not stored makes the command exit non-zero.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use super::http::{MAX_JSON_BYTES, read_bounded, refusal, retry_wait};
use super::{DicomClient, ServiceOptions, connect, uid};
use crate::client::output::OutputOptions;

/// How deep folders are followed.
const MAX_DEPTH: usize = 64;

/// Options of `hds dicom store`.
#[derive(Debug, Args)]
pub struct StoreOptions {
    /// DICOM files, and folders whose files (at any depth) are all sent.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Store into this study only (STOW-RS `studies/{study}`): instances of other studies are
    /// refused (reason 43265).
    #[arg(long)]
    pub study: Option<String>,
    /// Uploads at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// The most files one command sends; more is an error before anything is sent.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub max_files: u32,
    /// Files larger than this many bytes are not sent (reported as failures).
    #[arg(long, default_value_t = 2 * 1024 * 1024 * 1024)]
    pub max_file_bytes: u64,
    #[command(flatten)]
    pub service: ServiceOptions,
    #[command(flatten)]
    pub output: OutputOptions,
}

/// The files named by `paths`: files as they are, folders walked (symbolic links to folders
/// are not followed, so a link cycle cannot loop), sorted within each folder.
fn collect(paths: &[PathBuf], max_files: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let metadata =
            std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if metadata.is_dir() {
            walk(path, 0, &mut files, max_files)?;
        } else if metadata.is_file() {
            files.push(path.clone());
        } else {
            bail!("{} is neither a file nor a folder", path.display());
        }
        if files.len() > max_files {
            bail!("more than {max_files} files to store; raise --max-files");
        }
    }
    Ok(files)
}

fn walk(
    folder: &Path,
    depth: usize,
    files: &mut Vec<PathBuf>,
    max_files: usize,
) -> anyhow::Result<()> {
    if depth > MAX_DEPTH {
        bail!("{} is more than {MAX_DEPTH} folders deep", folder.display());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(folder)
        .with_context(|| format!("cannot read {}", folder.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read {}", folder.display()))?;
    entries.sort();
    for entry in entries {
        let own = std::fs::symlink_metadata(&entry)
            .with_context(|| format!("cannot read {}", entry.display()))?;
        if own.is_dir() {
            walk(&entry, depth + 1, files, max_files)?;
        } else if own.is_file()
            || (own.file_type().is_symlink()
                && std::fs::metadata(&entry).is_ok_and(|m| m.is_file()))
        {
            files.push(entry);
        }
        if files.len() > max_files {
            bail!("more than {max_files} files to store; raise --max-files");
        }
    }
    Ok(())
}

/// PS3.18 / PS3.4 failure reasons and the DICOM service's own, as words.
pub fn reason_text(reason: u64) -> &'static str {
    match reason {
        272 => "processing failure (not a readable DICOM file)",
        290 => "SOP class not supported",
        42752 => "out of resources",
        43264 => "validation failed (a required attribute is missing or malformed)",
        43265 => "the StudyInstanceUID differs from the study stored into",
        45070 => "the instance is already stored",
        49152 => "cannot understand",
        _ => "refused",
    }
}

/// What became of one file.
struct Outcome {
    path: PathBuf,
    bytes: u64,
    result: Result<Value, Value>,
}

fn first_value<'a>(item: &'a Value, tag: &str) -> Option<&'a Value> {
    item.pointer(&format!("/{tag}/Value/0"))
}

/// A failure record: where, why (the reason code and its words), and which instance.
fn failure(path: &Path, status: Option<u16>, reason: Option<u64>, message: String) -> Value {
    json!({
        "path": path.display().to_string(),
        "status": status,
        "failureReason": reason,
        "message": message,
    })
}

/// Sends one file.
async fn store_one(client: &DicomClient, route: &str, path: &Path, max_bytes: u64) -> Outcome {
    let size = match tokio::fs::metadata(path).await {
        Ok(metadata) => metadata.len(),
        Err(error) => {
            return Outcome {
                path: path.to_owned(),
                bytes: 0,
                result: Err(failure(path, None, None, format!("cannot read: {error}"))),
            };
        }
    };
    if size > max_bytes {
        return Outcome {
            path: path.to_owned(),
            bytes: 0,
            result: Err(failure(
                path,
                None,
                None,
                format!("{size} bytes is more than --max-file-bytes ({max_bytes})"),
            )),
        };
    }
    let result = send_file(client, route, path, size).await;
    Outcome {
        path: path.to_owned(),
        bytes: size,
        result: result.unwrap_or_else(|error| Err(failure(path, None, None, format!("{error:#}")))),
    }
}

/// The STOW request for one file (sent again while the service is busy), and what its answer
/// says: the stored instance, or the failure with its reason.
async fn send_file(
    client: &DicomClient,
    route: &str,
    path: &Path,
    size: u64,
) -> anyhow::Result<Result<Value, Value>> {
    let mut attempt = 0;
    let response = loop {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let response = client
            .request(reqwest::Method::POST, route)
            .header(reqwest::header::CONTENT_TYPE, "application/dicom")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .header(reqwest::header::ACCEPT, "application/dicom+json")
            .body(body)
            .send()
            .await
            .context("sending")?;
        match retry_wait(&response, attempt) {
            Some(wait) => {
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
            None => break response,
        }
    };
    let status = response.status();
    let body = read_bounded(response, MAX_JSON_BYTES).await?;
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    if let Some(answer) = parsed
        .as_ref()
        .filter(|_| status.is_success() || status == reqwest::StatusCode::CONFLICT)
    {
        if let Some(failed) = first_value(answer, "00081198") {
            let reason = first_value(failed, "00081197").and_then(Value::as_u64);
            let mut record = failure(
                path,
                Some(status.as_u16()),
                reason,
                reason.map_or("refused", reason_text).to_owned(),
            );
            if let Some(instance) = first_value(failed, "00081155") {
                record["sopInstanceUid"] = instance.clone();
            }
            return Ok(Err(record));
        }
        if status.is_success()
            && let Some(stored) = first_value(answer, "00081199")
        {
            return Ok(Ok(json!({
                "path": path.display().to_string(),
                "sopInstanceUid": first_value(stored, "00081155"),
                "url": first_value(stored, "00081190"),
            })));
        }
    }
    Ok(Err(failure(
        path,
        Some(status.as_u16()),
        None,
        refusal(status, &body),
    )))
}

/// A progress line on a terminal (nothing when stderr is not one).
fn progress(total: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} files  {msg}  [{elapsed_precise}]")
    {
        bar.set_style(style);
    }
    bar
}

fn rates(count: usize, bytes: u64, seconds: f64) -> (f64, f64) {
    let seconds = seconds.max(1e-3);
    (count as f64 / seconds, bytes as f64 / 1e6 / seconds)
}

fn rounded(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// `hds dicom store`.
pub async fn run(options: StoreOptions) -> anyhow::Result<()> {
    let route = match &options.study {
        Some(study) => {
            uid("--study", study)?;
            format!("studies/{study}")
        }
        None => "studies".to_owned(),
    };
    let files = collect(&options.paths, options.max_files as usize)?;
    if files.is_empty() {
        bail!("no files to store under the paths given");
    }
    let client = connect(&options.service, &options.output).await?;
    let bar = progress(files.len());
    let started = Instant::now();
    let mut stored = Vec::new();
    let mut failures = Vec::new();
    let mut bytes = 0u64;
    let mut outcomes = futures::stream::iter(&files)
        .map(|path| store_one(&client, &route, path, options.max_file_bytes))
        .buffer_unordered(usize::from(options.concurrency));
    while let Some(outcome) = outcomes.next().await {
        match outcome.result {
            Ok(record) => {
                bytes += outcome.bytes;
                stored.push(record);
            }
            Err(record) => {
                let reason = match record["failureReason"].as_u64() {
                    Some(code) => format!("failure reason {code}: {}", reason_text(code)),
                    None => record["message"].as_str().unwrap_or("refused").to_owned(),
                };
                bar.suspend(|| eprintln!("{}: not stored ({reason})", outcome.path.display()));
                failures.push(record);
            }
        }
        let (per_second, megabytes) = rates(stored.len(), bytes, started.elapsed().as_secs_f64());
        bar.set_message(format!(
            "{per_second:.1} instances/s  {megabytes:.1} MB/s  {} failed",
            failures.len()
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let (per_second, megabytes) = rates(stored.len(), bytes, seconds);
    let mut reasons = serde_json::Map::new();
    for record in &failures {
        let key = record["failureReason"]
            .as_u64()
            .map_or_else(|| "other".to_owned(), |code| code.to_string());
        let count = reasons.get(&key).and_then(Value::as_u64).unwrap_or(0);
        reasons.insert(key, json!(count + 1));
    }
    options.output.print(&json!({
        "files": files.len(),
        "stored": stored.len(),
        "failed": failures.len(),
        "bytes": bytes,
        "seconds": rounded(seconds),
        "instancesPerSecond": rounded(per_second),
        "megabytesPerSecond": rounded(megabytes),
        "failureReasons": reasons,
        "failures": failures,
        "instances": stored,
    }))?;
    if !failures.is_empty() {
        bail!(
            "{} of {} files were not stored",
            failures.len(),
            files.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_walked_with_bounds() {
        let root = tempfile::tempdir().expect("tempdir");
        let nested = root.path().join("a/b");
        std::fs::create_dir_all(&nested).expect("mkdir");
        std::fs::write(root.path().join("one.dcm"), b"1").expect("write");
        std::fs::write(nested.join("two.dcm"), b"2").expect("write");
        // A link back to the root is not followed.
        std::os::unix::fs::symlink(root.path(), nested.join("loop")).expect("symlink");
        let files = collect(&[root.path().to_owned()], 10).expect("collect");
        assert_eq!(
            files,
            vec![nested.join("two.dcm"), root.path().join("one.dcm")]
        );
        let error = collect(&[root.path().to_owned()], 1).expect_err("too many");
        assert!(error.to_string().contains("--max-files"), "{error}");
        let error = collect(&[root.path().join("missing")], 10).expect_err("missing");
        assert!(error.to_string().contains("cannot read"), "{error}");
    }
}
