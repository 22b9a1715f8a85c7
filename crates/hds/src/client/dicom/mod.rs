//! `hds dicom ...`: the DICOMweb data plane of one DICOM service, for people without az or a
//! DICOMweb client: store files and folders, search, retrieve to a folder, delete.
//!
//! A service is named by `--workspace` and `--service` (its URL is then
//! `{endpoint}/dicom/{workspace}/{service}/v2`) or by `--service-url`, the `serviceUrl` the
//! control plane shows for it. Every UID, path and count given on the command line is checked
//! before a request is sent; UIDs the server returns are checked again before they name a file.

mod convert;
mod delete;
mod http;
mod retrieve;
mod search;
mod store;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::client::account::access_token;
use crate::client::credentials::{ConnectionOptions, Profile, http_client};
use crate::client::output::OutputOptions;

/// The audience of tokens for DICOM services' data planes.
pub const DICOM_AUDIENCE: &str = "https://dicom.healthcareapis.azure.com";
/// The DICOMweb API version the CLI speaks.
const API_VERSION: &str = "v2";
/// The longest service URL accepted.
const MAX_URL_LEN: usize = 2048;
/// A DICOM UID: at most 64 characters (PS3.5 9.1).
const MAX_UID_LEN: usize = 64;

/// `hds dicom ...`.
#[derive(Debug, Subcommand)]
pub enum DicomCommand {
    /// Store DICOM files (STOW-RS): files and folders, folders read recursively, several
    /// uploads at once. Exits non-zero when any file was not stored, naming its reason.
    Store(store::StoreOptions),
    /// Search studies, series or instances (QIDO-RS).
    Search(search::SearchOptions),
    /// Retrieve a study, series or instance (WADO-RS) into a folder as DICOM Part 10 files,
    /// byte for byte as stored: {folder}/{study}/{series}/{instance}.dcm.
    Retrieve(retrieve::RetrieveOptions),
    /// Delete a study, series or instance.
    Delete(delete::DeleteOptions),
}

/// Which DICOM service, and as whom.
#[derive(Debug, Clone, Args)]
pub struct ServiceOptions {
    /// The workspace of the DICOM service (with --service).
    #[arg(long, requires = "service", conflicts_with = "service_url")]
    pub workspace: Option<String>,
    /// The DICOM service's name (with --workspace).
    #[arg(long, requires = "workspace", conflicts_with = "service_url")]
    pub service: Option<String>,
    /// The service's URL, as its `serviceUrl` shows it (e.g.
    /// https://127.0.0.1:8443/dicom/default/dicom); /v2 is added unless it names a version.
    #[arg(long, env = "HDS_DICOM_SERVICE_URL")]
    pub service_url: Option<String>,
    #[command(flatten)]
    pub connection: ConnectionOptions,
}

/// What every `hds dicom` command runs with: an HTTP client, the service's versioned base URL
/// and a data-plane token.
pub struct DicomClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl DicomClient {
    /// The service's base URL (ending in the API version, without a trailing slash).
    pub fn base(&self) -> &str {
        &self.base
    }
}

/// Runs one `hds dicom` command.
pub async fn run(command: DicomCommand) -> anyhow::Result<()> {
    match command {
        DicomCommand::Store(options) => store::run(options).await,
        DicomCommand::Search(options) => search::run(options).await,
        DicomCommand::Retrieve(options) => retrieve::run(options).await,
        DicomCommand::Delete(options) => delete::run(options).await,
    }
}

/// Signs in and resolves the service's URL.
async fn connect(options: &ServiceOptions, output: &OutputOptions) -> anyhow::Result<DicomClient> {
    output.validate()?;
    let profile = options.connection.resolve()?;
    let base = service_base(options, &profile)?;
    let (token, _, _) = access_token(&profile, DICOM_AUDIENCE).await?;
    Ok(DicomClient {
        http: http_client(&profile)?,
        base,
        token,
    })
}

/// `{service-url}/v2`, or `{endpoint}/dicom/{workspace}/{service}/v2`.
fn service_base(options: &ServiceOptions, profile: &Profile) -> anyhow::Result<String> {
    let url = match (&options.service_url, &options.workspace, &options.service) {
        (Some(url), _, _) => {
            if url.len() > MAX_URL_LEN {
                bail!("--service-url is longer than {MAX_URL_LEN} characters");
            }
            let parsed = reqwest::Url::parse(url).context("--service-url is not a URL")?;
            if !matches!(parsed.scheme(), "https" | "http")
                || parsed.query().is_some()
                || parsed.fragment().is_some()
            {
                bail!("--service-url must be an http(s) URL without query or fragment: {url}");
            }
            url.trim_end_matches('/').to_owned()
        }
        (None, Some(workspace), Some(service)) => {
            for (flag, name) in [("--workspace", workspace), ("--service", service)] {
                resource_name(flag, name)?;
            }
            format!("{}/dicom/{workspace}/{service}", profile.endpoint)
        }
        _ => bail!(
            "name the DICOM service: --workspace NAME --service NAME, or --service-url URL \
             (or HDS_DICOM_SERVICE_URL)"
        ),
    };
    let versioned = url.rsplit('/').next().is_some_and(|last| {
        last.len() >= 2 && last.starts_with('v') && last[1..].parse::<u32>().is_ok()
    });
    Ok(if versioned {
        url
    } else {
        format!("{url}/{API_VERSION}")
    })
}

/// A workspace or service name as ARM allows them: letters, digits and '-', 1 to 64.
fn resource_name(flag: &str, name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        bail!("{flag} must be 1 to 64 letters, digits or '-': {name:?}");
    }
    Ok(())
}

/// Checks a DICOM UID: digits and dots, 1 to 64 characters, no empty component. UIDs name URL
/// path segments and files, so nothing else may pass.
pub fn uid(what: &str, value: &str) -> anyhow::Result<()> {
    if value.is_empty()
        || value.len() > MAX_UID_LEN
        || !value.chars().all(|c| c.is_ascii_digit() || c == '.')
        || value.split('.').any(str::is_empty)
    {
        let shown: String = value.chars().take(80).collect();
        bail!("{what} is not a DICOM UID (digits and dots, at most 64): {shown:?}");
    }
    Ok(())
}

/// The study / series / instance a command addresses.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The StudyInstanceUID.
    #[arg(long)]
    pub study: String,
    /// The SeriesInstanceUID (within --study).
    #[arg(long)]
    pub series: Option<String>,
    /// The SOPInstanceUID (within --series).
    #[arg(long, requires = "series")]
    pub instance: Option<String>,
}

impl Target {
    /// The DICOMweb path: `studies/{study}[/series/{series}[/instances/{instance}]]`.
    pub fn path(&self) -> anyhow::Result<String> {
        uid("--study", &self.study)?;
        let mut path = format!("studies/{}", self.study);
        if let Some(series) = &self.series {
            uid("--series", series)?;
            path.push_str(&format!("/series/{series}"));
        }
        if let Some(instance) = &self.instance {
            uid("--instance", instance)?;
            path.push_str(&format!("/instances/{instance}"));
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile {
            endpoint: "https://127.0.0.1:8443".into(),
            tenant_id: "t".into(),
            client_id: "c".into(),
            client_secret: "s".into(),
            subscription_id: None,
            ca_cert: None,
        }
    }

    fn options(
        workspace: Option<&str>,
        service: Option<&str>,
        url: Option<&str>,
    ) -> ServiceOptions {
        ServiceOptions {
            workspace: workspace.map(str::to_owned),
            service: service.map(str::to_owned),
            service_url: url.map(str::to_owned),
            connection: ConnectionOptions {
                endpoint: None,
                tenant: None,
                client_id: None,
                client_secret: None,
                ca_cert: None,
                data_dir: None,
            },
        }
    }

    #[test]
    fn service_addresses() {
        let base = |o: ServiceOptions| service_base(&o, &profile());
        assert_eq!(
            base(options(Some("ws"), Some("svc"), None)).expect("names"),
            "https://127.0.0.1:8443/dicom/ws/svc/v2"
        );
        assert_eq!(
            base(options(None, None, Some("https://h/dicom/a/b/"))).expect("url"),
            "https://h/dicom/a/b/v2"
        );
        assert_eq!(
            base(options(None, None, Some("https://h/dicom/a/b/v1"))).expect("versioned"),
            "https://h/dicom/a/b/v1"
        );
        for hostile in ["ws/../x", "", "a b"] {
            assert!(base(options(Some(hostile), Some("svc"), None)).is_err());
        }
        assert!(base(options(None, None, Some("file:///etc/passwd"))).is_err());
        assert!(base(options(None, None, Some("https://h/x?y=1"))).is_err());
        assert!(base(options(None, None, None)).is_err());
    }

    #[test]
    fn uids_are_digits_and_dots() {
        assert!(uid("x", "1.2.840.10008.1.2").is_ok());
        for hostile in ["", "1..2", "1.2.", "../../etc", "1.2/3", &"1".repeat(65)] {
            assert!(uid("x", hostile).is_err(), "{hostile}");
        }
    }
}
