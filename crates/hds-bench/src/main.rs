//! `hds-bench`: a DICOMweb load generator.
//!
//! It generates a synthetic CT corpus with dicom-rs, then measures, at a
//! chosen concurrency, STOW-RS, WADO-RS instance retrieval, WADO-RS metadata
//! and QIDO-RS study searches against any DICOMweb base URL, so that hds and
//! another server (Orthanc) can be compared with the same client.

mod client;
mod corpus;
mod multipart;
mod phases;
mod report;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

use crate::client::{ClientConfig, DicomWebClient};
use crate::corpus::{CorpusShape, PixelSize};
use crate::phases::{Bench, MetadataLevel, Phase, PhaseLimits};
use crate::report::{CorpusSummary, RunReport};

/// Measure a DICOMweb server: STOW-RS, WADO-RS, metadata and QIDO-RS.
#[derive(Debug, Parser)]
#[command(name = "hds-bench", version, about)]
struct Arguments {
    /// DICOMweb base URL, for example https://127.0.0.1:8443/dicom/default/dicom/v2
    /// or http://127.0.0.1:8042/dicom-web.
    #[arg(long, env = "HDS_BENCH_BASE_URL")]
    base_url: String,

    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,

    /// Studies in the corpus (one patient each).
    #[arg(long, default_value_t = 10)]
    studies: usize,

    /// Series in each study.
    #[arg(long, default_value_t = 1)]
    series_per_study: usize,

    /// Instances in each study.
    #[arg(long, default_value_t = 20)]
    instances_per_study: usize,

    /// Image matrix: N (square) or ROWSxCOLUMNS, 16 bits per pixel.
    /// 512 gives 512 KiB of pixel data per instance.
    #[arg(long, alias = "size", default_value = "512")]
    pixel_size: PixelSize,

    /// Seed of the corpus; reuse it to read back a corpus stored earlier
    /// (with --phases not including stow). Random when absent.
    #[arg(long)]
    seed: Option<u64>,

    /// Phases to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "stow,wado,metadata,qido"
    )]
    phases: Vec<Phase>,

    /// Instances per STOW-RS request.
    #[arg(long, default_value_t = 1)]
    stow_batch: usize,

    /// Requests per read phase (wado, metadata, each QIDO query kind);
    /// default: one per stored instance.
    #[arg(long)]
    requests: Option<usize>,

    /// Time budget per phase, in seconds: no request starts after it.
    #[arg(long, default_value_t = 120.0)]
    duration: f64,

    /// Per-request timeout, in seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,

    /// Level of the metadata requests.
    #[arg(long, value_enum, default_value = "instance")]
    metadata_level: MetadataLevel,

    /// Extra PEM root certificate for HTTPS (hds: {data-dir}/tls/ca.pem). Repeatable.
    #[arg(long = "ca-cert")]
    ca_certificates: Vec<PathBuf>,

    /// Bearer token sent with every request.
    #[arg(
        long,
        env = "HDS_BENCH_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_command"
    )]
    bearer_token: Option<String>,

    /// Shell command whose standard output is the bearer token.
    #[arg(long)]
    token_command: Option<String>,

    /// The `get` phase's paths, one per line, below the base URL (for example
    /// `/studies/1.2/series/1.3/instances/1.4/rendered`).
    #[arg(long)]
    paths: Option<PathBuf>,

    /// The `get` phase's Accept header; a response must be of its type.
    #[arg(long, default_value = "application/octet-stream")]
    accept: String,

    /// A new connection for every request (no keep-alive), as clients that
    /// do not pool connections behave; some servers close kept-alive
    /// connections under load, which a pooled client reports as failures.
    #[arg(long)]
    no_keep_alive: bool,

    /// Print the report as JSON on standard output (the table goes to standard error).
    #[arg(long)]
    json: bool,
}

/// Runs `sh -c command` and returns its trimmed output; the output is a
/// secret, so it appears in no error.
fn token_from_command(command: &str) -> anyhow::Result<String> {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot run the token command")?;
    if !output.status.success() {
        bail!("the token command failed ({})", output.status);
    }
    let token =
        String::from_utf8(output.stdout).context("the token command printed non-UTF-8 output")?;
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the token command printed nothing");
    }
    Ok(token)
}

fn seconds(value: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("{what} must be a non-negative number of seconds"))
}

async fn run(arguments: Arguments) -> anyhow::Result<RunReport> {
    if arguments.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if arguments.stow_batch == 0 {
        bail!("--stow-batch must be at least 1");
    }
    let phase_duration = seconds(arguments.duration, "--duration")?;
    let request_timeout = seconds(arguments.timeout, "--timeout")?;
    let bearer_token = match (&arguments.bearer_token, &arguments.token_command) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(command)) => Some(token_from_command(command)?),
        (None, None) => None,
    };

    let get_paths = match (&arguments.paths, arguments.phases.contains(&Phase::Get)) {
        (Some(file), true) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read --paths {}", file.display()))?;
            let paths: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(|line| format!("/{}", line.trim_start_matches('/')))
                .collect();
            if paths.is_empty() {
                bail!("--paths {} lists no path", file.display());
            }
            std::sync::Arc::new(paths)
        }
        (None, true) => bail!("the get phase needs --paths"),
        (_, false) => std::sync::Arc::default(),
    };
    let shape = CorpusShape {
        studies: arguments.studies,
        series_per_study: arguments.series_per_study,
        instances_per_study: arguments.instances_per_study,
        pixel_size: arguments.pixel_size,
        seed: arguments.seed.unwrap_or_else(rand::random),
    };
    let generation_started = Instant::now();
    // Only `get`: it reads data stored beforehand, so no corpus is generated.
    let only_get = arguments.phases.iter().all(|phase| *phase == Phase::Get);
    let corpus = if only_get {
        corpus::Corpus {
            studies: Vec::new(),
            instances: Vec::new(),
        }
    } else {
        tokio::task::spawn_blocking(move || corpus::generate(&shape))
            .await
            .context("corpus generation stopped")??
    };
    let corpus_summary = CorpusSummary::new(&shape, &corpus);
    eprintln!(
        "corpus: {} studies, {} instances, {:.1} MB, seed {} (generated in {:.1} s)",
        corpus.studies.len(),
        corpus.instances.len(),
        corpus_summary.bytes as f64 / 1e6,
        shape.seed,
        generation_started.elapsed().as_secs_f64()
    );

    let client = DicomWebClient::new(&ClientConfig {
        base_url: arguments.base_url.clone(),
        ca_certificates: arguments.ca_certificates.clone(),
        bearer_token,
        request_timeout,
        pool_size: if arguments.no_keep_alive {
            0
        } else {
            arguments.concurrency
        },
    })?;
    let bench = Bench::new(client, corpus);

    let mut reports = Vec::new();
    for phase in &arguments.phases {
        let stored_count = bench
            .stored
            .iter()
            .filter(|stored| stored.load(std::sync::atomic::Ordering::Relaxed))
            .count();
        let limits = PhaseLimits {
            concurrency: arguments.concurrency,
            requests: arguments.requests.unwrap_or(if *phase == Phase::Get {
                get_paths.len()
            } else {
                stored_count
            }),
            duration: phase_duration,
        };
        let phase_reports = match phase {
            Phase::Stow => vec![bench.stow(limits, arguments.stow_batch).await],
            Phase::Wado => vec![bench.wado(limits).await],
            Phase::Metadata => vec![bench.metadata(limits, arguments.metadata_level).await],
            Phase::Qido => vec![
                bench.qido_by_patient(limits).await,
                bench.qido_by_date(limits).await,
            ],
            Phase::Get => vec![
                bench
                    .get(
                        limits,
                        std::sync::Arc::clone(&get_paths),
                        std::sync::Arc::from(arguments.accept.as_str()),
                    )
                    .await,
            ],
        };
        for phase_report in phase_reports {
            eprintln!(
                "{}: {} requests, {} errors, {:.2} s",
                phase_report.phase,
                phase_report.requests,
                phase_report.errors,
                phase_report.elapsed_s
            );
            reports.push(phase_report);
        }
    }
    Ok(RunReport {
        tool: "hds-bench".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        base_url: arguments.base_url,
        concurrency: arguments.concurrency,
        corpus: corpus_summary,
        phases: reports,
    })
}

fn main() -> ExitCode {
    let arguments = Arguments::parse();
    let json = arguments.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hds-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let run_report = match runtime.block_on(run(arguments)) {
        Ok(run_report) => run_report,
        Err(error) => {
            eprintln!("hds-bench: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let table = report::table(&run_report);
    if json {
        eprint!("{table}");
        match serde_json::to_string_pretty(&run_report) {
            Ok(text) => println!("{text}"),
            Err(error) => {
                eprintln!("hds-bench: cannot serialise the report: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{table}");
    }
    // Failed requests make the run fail, so scripts notice a wrong answer.
    if run_report
        .phases
        .iter()
        .any(|phase| phase.errors > 0 || phase.requests == 0)
    {
        eprintln!("hds-bench: some requests failed or a phase had nothing to do");
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Arguments::command().debug_assert();
    }

    #[test]
    fn phases_parse_as_a_comma_list_and_defaults_apply() {
        let arguments = Arguments::try_parse_from([
            "hds-bench",
            "--base-url",
            "http://127.0.0.1:8042/dicom-web",
            "--phases",
            "stow,qido",
            "--size",
            "64x32",
        ])
        .expect("parses");
        assert_eq!(arguments.phases, vec![Phase::Stow, Phase::Qido]);
        assert_eq!(arguments.concurrency, 8);
        assert_eq!(
            arguments.pixel_size,
            PixelSize {
                rows: 64,
                columns: 32
            }
        );
        assert!(
            Arguments::try_parse_from(["hds-bench", "--base-url", "x", "--phases", "nope"])
                .is_err()
        );
        assert!(
            Arguments::try_parse_from([
                "hds-bench",
                "--base-url",
                "x",
                "--bearer-token",
                "a",
                "--token-command",
                "echo b"
            ])
            .is_err()
        );
    }

    #[test]
    fn the_token_command_output_is_trimmed_and_failures_are_errors() {
        assert_eq!(
            token_from_command("printf ' abc.def \\n'").expect("token"),
            "abc.def"
        );
        assert!(token_from_command("exit 3").is_err());
        assert!(token_from_command("true").is_err());
    }
}
