//! Blob stores in Azure Blob Storage or S3, named by a URL (`hds up --blob-store`).
//!
//! The URL names where blobs go and nothing secret: credentials come from the object store's
//! own environment variables (`AZURE_STORAGE_*`, `AWS_*`), so they never appear in a process
//! listing, a log line or an error message. A URL that carries a query (a SAS token pasted into
//! it), a user name or a password is refused for the same reason.
//!
//! A store is checked in two steps: [`BlobStore::open_remote`] refuses a configuration with no
//! credential source before anything is sent, and [`BlobStore::check_access`] lists one shard,
//! so a wrong key, a missing container or an unreachable endpoint stops `hds up` at startup
//! rather than at the first STOW.
//!
//! Durability: a blob written to an object store is durable when the store acknowledged the
//! request that completes it (the PUT of a small blob, the commit of a block list or the
//! completion of a multipart upload): that acknowledgement is what [`crate::BlobWriter::finish`]
//! waits for, and a caller records a blob in the index only after it returned.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, ObjectStore};

use crate::{BlobError, BlobStore};

/// The longest accepted `--blob-store` URL.
const MAX_URL_LEN: usize = 1024;

/// How long the startup check may take before the store counts as unreachable. The object
/// store client retries transient failures within it.
const ACCESS_CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Which object store service a [`RemoteLocation`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteKind {
    /// Azure Blob Storage (or Azurite).
    AzureBlob,
    /// Amazon S3 or a server that speaks its API.
    S3,
}

/// Where blobs live in an object store: a container or bucket and an optional prefix inside
/// it. Holds no credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLocation {
    kind: RemoteKind,
    /// The storage account, when the URL names it (`https://ACCOUNT.blob.core.windows.net`).
    account: Option<String>,
    /// The container (Azure) or bucket (S3).
    container: String,
    /// Path segments under which blob names go.
    prefix: Vec<String>,
}

/// Why a `--blob-store` value or its environment does not make a usable store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobConfigError {
    /// The URL is malformed or names something this build cannot use.
    #[error("--blob-store: {0}")]
    InvalidUrl(String),
    /// The URL's scheme is none of the supported ones.
    #[error(
        "--blob-store: unsupported scheme {0:?}: use az://CONTAINER, \
         https://ACCOUNT.blob.core.windows.net/CONTAINER or s3://BUCKET (or leave it unset for \
         the data dir)"
    )]
    UnsupportedScheme(String),
    /// No credential source is configured for the store.
    #[error("--blob-store {location}: no credentials: {hint}")]
    MissingCredentials {
        /// The store.
        location: String,
        /// Which variables would supply them.
        hint: &'static str,
    },
    /// The object store client refused the configuration.
    #[error("--blob-store {location}: {message}")]
    Client {
        /// The store.
        location: String,
        /// What the client said, with any signature redacted.
        message: String,
    },
}

impl RemoteLocation {
    /// Parses and validates a `--blob-store` URL.
    pub fn parse(text: &str) -> Result<RemoteLocation, BlobConfigError> {
        let invalid = |why: &str| BlobConfigError::InvalidUrl(why.to_owned());
        if text.len() > MAX_URL_LEN {
            return Err(invalid("the URL is longer than 1024 bytes"));
        }
        let url = url::Url::parse(text).map_err(|error| {
            BlobConfigError::InvalidUrl(format!("not a URL ({error}): {}", redact(text)))
        })?;
        let scheme = url.scheme().to_owned();
        let kind = match scheme.as_str() {
            "az" | "azure" | "https" => RemoteKind::AzureBlob,
            "s3" => RemoteKind::S3,
            _ => return Err(BlobConfigError::UnsupportedScheme(scheme)),
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "the URL must not carry a user name or password: credentials come from the environment",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                "the URL must not carry a query or fragment: put a SAS token in AZURE_STORAGE_SAS_KEY, not in the URL",
            ));
        }
        if url.port().is_some() {
            return Err(invalid(
                "the URL must not carry a port: name a local endpoint with AZURE_STORAGE_ENDPOINT, AZURITE_BLOB_STORAGE_URL or AWS_ENDPOINT",
            ));
        }
        let host = url
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| invalid("the URL names no container or bucket"))?
            .to_owned();
        let mut segments: Vec<String> = url
            .path_segments()
            .map(|segments| {
                segments
                    .filter(|segment| !segment.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let (account, container) = if scheme == "https" {
            let account = host
                .strip_suffix(".blob.core.windows.net")
                .filter(|account| valid_account(account))
                .ok_or_else(|| {
                    invalid("an https URL must be https://ACCOUNT.blob.core.windows.net/CONTAINER")
                })?
                .to_owned();
            if segments.is_empty() {
                return Err(invalid(
                    "https://ACCOUNT.blob.core.windows.net/CONTAINER: the container is missing",
                ));
            }
            (Some(account), segments.remove(0))
        } else {
            (None, host)
        };
        let container_ok = match kind {
            RemoteKind::AzureBlob => valid_container(&container),
            RemoteKind::S3 => valid_bucket(&container),
        };
        if !container_ok {
            return Err(BlobConfigError::InvalidUrl(format!(
                "{container:?} is not a valid {}",
                match kind {
                    RemoteKind::AzureBlob =>
                        "container name (3-63 lowercase letters, digits and single hyphens)",
                    RemoteKind::S3 =>
                        "bucket name (3-63 lowercase letters, digits, dots and hyphens)",
                }
            )));
        }
        if let Some(segment) = segments
            .iter()
            .find(|segment| !valid_prefix_segment(segment))
        {
            return Err(BlobConfigError::InvalidUrl(format!(
                "the prefix segment {segment:?} is not letters, digits, '.', '-' or '_'"
            )));
        }
        Ok(RemoteLocation {
            kind,
            account,
            container,
            prefix: segments,
        })
    }

    /// Which service the location is in.
    pub fn kind(&self) -> RemoteKind {
        self.kind
    }

    /// The container or bucket.
    pub fn container(&self) -> &str {
        &self.container
    }
}

impl fmt::Display for RemoteLocation {
    /// The location in canonical form (it holds no secret).
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, &self.account) {
            (RemoteKind::AzureBlob, Some(account)) => write!(
                formatter,
                "https://{account}.blob.core.windows.net/{}",
                self.container
            )?,
            (RemoteKind::AzureBlob, None) => write!(formatter, "az://{}", self.container)?,
            (RemoteKind::S3, _) => write!(formatter, "s3://{}", self.container)?,
        }
        for segment in &self.prefix {
            write!(formatter, "/{segment}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for RemoteLocation {
    type Err = BlobConfigError;

    fn from_str(text: &str) -> Result<RemoteLocation, BlobConfigError> {
        RemoteLocation::parse(text)
    }
}

/// Storage account names: 3 to 24 lowercase letters and digits.
fn valid_account(account: &str) -> bool {
    (3..=24).contains(&account.len())
        && account
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
}

/// Azure container names: 3 to 63 lowercase letters, digits and hyphens, starting and ending
/// with a letter or digit, no two hyphens in a row.
fn valid_container(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// S3 bucket names: 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending
/// with a letter or digit.
fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'.'
        })
        && name
            .bytes()
            .next()
            .is_some_and(|byte| byte.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|byte| byte.is_ascii_alphanumeric())
        && !name.contains("..")
}

fn valid_prefix_segment(segment: &str) -> bool {
    segment.len() <= 255
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_'))
}

/// Azurite's well-known development account and key (public, documented by Microsoft).
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The emulator as an explicit endpoint (`AZURITE_BLOB_STORAGE_URL`, default
/// `http://127.0.0.1:10000`, then the account), so that the endpoint comes from the environment
/// this store was given rather than from the process's.
fn emulator(builder: MicrosoftAzureBuilder, url: Option<String>) -> MicrosoftAzureBuilder {
    let account = builder
        .get_config_value(&AzureConfigKey::AccountName)
        .filter(|account| !account.is_empty())
        .unwrap_or_else(|| EMULATOR_ACCOUNT.to_owned());
    let has_credential = [
        AzureConfigKey::AccessKey,
        AzureConfigKey::SasKey,
        AzureConfigKey::Token,
    ]
    .iter()
    .any(|key| is_set(builder.get_config_value(key)));
    let base = url.unwrap_or_else(|| "http://127.0.0.1:10000".to_owned());
    let mut builder = builder
        .with_use_emulator(false)
        .with_endpoint(format!("{}/{account}", base.trim_end_matches('/')))
        .with_account(&account)
        .with_allow_http(true);
    if !has_credential {
        builder = builder.with_access_key(EMULATOR_KEY);
    }
    builder
}

/// Whether a configuration value turns a switch on.
fn is_on(value: Option<String>) -> bool {
    value.is_some_and(|value| {
        matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

fn is_set(value: Option<String>) -> bool {
    value.is_some_and(|value| !value.trim().is_empty())
}

impl BlobStore {
    /// A store in the object store `location` names, configured from the process environment
    /// (`AZURE_STORAGE_*` and `AZURITE_BLOB_STORAGE_URL` for Azure, `AWS_*` for S3). Sends
    /// nothing: see [`BlobStore::check_access`].
    pub fn open_remote(location: &RemoteLocation) -> Result<BlobStore, BlobConfigError> {
        Self::open_remote_with(location, std::env::vars())
    }

    /// [`BlobStore::open_remote`] with the environment given as `(NAME, value)` pairs.
    pub fn open_remote_with(
        location: &RemoteLocation,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<BlobStore, BlobConfigError> {
        let client_error = |error: object_store::Error| BlobConfigError::Client {
            location: location.to_string(),
            message: redact(&error.to_string()),
        };
        let store: Arc<dyn ObjectStore> = match location.kind {
            RemoteKind::AzureBlob => {
                let mut builder = MicrosoftAzureBuilder::new();
                let mut azurite_url = None;
                for (name, value) in environment {
                    if name == "AZURITE_BLOB_STORAGE_URL" {
                        azurite_url = Some(value);
                    } else if name == "IDENTITY_ENDPOINT" {
                        builder = builder.with_msi_endpoint(value);
                    } else if name.starts_with("AZURE_")
                        && let Ok(key) = name.to_ascii_lowercase().parse::<AzureConfigKey>()
                    {
                        builder = builder.with_config(key, value);
                    }
                }
                builder = builder.with_container_name(&location.container);
                if let Some(account) = &location.account {
                    builder = builder.with_account(account);
                }
                if is_on(builder.get_config_value(&AzureConfigKey::UseEmulator)) {
                    builder = emulator(builder, azurite_url);
                }
                let credentials = [
                    AzureConfigKey::AccessKey,
                    AzureConfigKey::SasKey,
                    AzureConfigKey::Token,
                    AzureConfigKey::ClientSecret,
                    AzureConfigKey::FederatedTokenFile,
                    AzureConfigKey::MsiEndpoint,
                    AzureConfigKey::ClientId,
                    AzureConfigKey::ObjectId,
                    AzureConfigKey::MsiResourceId,
                ]
                .iter()
                .any(|key| is_set(builder.get_config_value(key)))
                    || [
                        AzureConfigKey::UseEmulator,
                        AzureConfigKey::UseAzureCli,
                        AzureConfigKey::SkipSignature,
                    ]
                    .iter()
                    .any(|key| is_on(builder.get_config_value(key)));
                if !credentials {
                    return Err(BlobConfigError::MissingCredentials {
                        location: location.to_string(),
                        hint: "set AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_KEY, a service \
                               principal (AZURE_STORAGE_CLIENT_ID, AZURE_STORAGE_CLIENT_SECRET, \
                               AZURE_STORAGE_TENANT_ID), AZURE_FEDERATED_TOKEN_FILE, a managed \
                               identity (AZURE_CLIENT_ID or AZURE_MSI_ENDPOINT), or \
                               AZURE_STORAGE_USE_EMULATOR=true for Azurite",
                    });
                }
                if !is_on(builder.get_config_value(&AzureConfigKey::UseEmulator))
                    && !is_set(builder.get_config_value(&AzureConfigKey::AccountName))
                {
                    return Err(BlobConfigError::InvalidUrl(format!(
                        "{location}: the storage account is unknown: set AZURE_STORAGE_ACCOUNT_NAME \
                         or use https://ACCOUNT.blob.core.windows.net/{}",
                        location.container
                    )));
                }
                Arc::new(builder.build().map_err(client_error)?)
            }
            RemoteKind::S3 => {
                let mut builder = AmazonS3Builder::new();
                for (name, value) in environment {
                    if name.starts_with("AWS_")
                        && let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
                    {
                        builder = builder.with_config(key, value);
                    }
                }
                builder = builder.with_bucket_name(&location.container);
                let keys = is_set(builder.get_config_value(&AmazonS3ConfigKey::AccessKeyId))
                    && is_set(builder.get_config_value(&AmazonS3ConfigKey::SecretAccessKey));
                let credentials = keys
                    || [
                        AmazonS3ConfigKey::WebIdentityTokenFile,
                        AmazonS3ConfigKey::ContainerCredentialsRelativeUri,
                        AmazonS3ConfigKey::ContainerCredentialsFullUri,
                        AmazonS3ConfigKey::MetadataEndpoint,
                    ]
                    .iter()
                    .any(|key| is_set(builder.get_config_value(key)))
                    || is_on(builder.get_config_value(&AmazonS3ConfigKey::SkipSignature));
                if !credentials {
                    return Err(BlobConfigError::MissingCredentials {
                        location: location.to_string(),
                        hint: "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
                               AWS_WEB_IDENTITY_TOKEN_FILE, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI, \
                               or AWS_METADATA_ENDPOINT for an instance profile",
                    });
                }
                let endpoint = builder
                    .get_config_value(&AmazonS3ConfigKey::Endpoint)
                    .unwrap_or_default();
                if endpoint.starts_with("http://")
                    && !is_on(
                        builder.get_config_value(&AmazonS3ConfigKey::Client(
                            ClientConfigKey::AllowHttp,
                        )),
                    )
                {
                    return Err(BlobConfigError::InvalidUrl(format!(
                        "{location}: AWS_ENDPOINT is plain http: set AWS_ALLOW_HTTP=true to allow it (a local server only)"
                    )));
                }
                Arc::new(builder.build().map_err(client_error)?)
            }
        };
        let store = if location.prefix.is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(
                store,
                ObjectPath::from(location.prefix.join("/")),
            ))
        };
        Ok(BlobStore::from_object_store(store))
    }

    /// Checks that the store answers and grants access, by listing one shard: a wrong key, a
    /// missing container or bucket, or an unreachable endpoint is an error here.
    pub async fn check_access(&self) -> Result<(), BlobError> {
        if self.local.is_some() {
            return Ok(());
        }
        let prefix = ObjectPath::from("00");
        let listed = tokio::time::timeout(ACCESS_CHECK_TIMEOUT, async {
            let mut objects = self.store.list(Some(&prefix));
            objects.try_next().await.map(drop)
        })
        .await;
        match listed {
            Ok(result) => result.map_err(BlobError::from),
            Err(_) => Err(BlobError::Unreachable),
        }
    }

    /// Whether blobs are files in a local directory (rather than in an object store).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }
}

/// `text` with every signature-like query value (`sig=`, `signature=`, `x-amz-signature=`,
/// `x-amz-credential=`, `x-amz-security-token=`) replaced, so an error that quotes a request URL
/// never carries a usable SAS token or presigned credential.
pub(crate) fn redact(text: &str) -> String {
    const SECRET_KEYS: &[&str] = &[
        "sig=",
        "signature=",
        "x-amz-signature=",
        "x-amz-credential=",
        "x-amz-security-token=",
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    'outer: while !rest.is_empty() {
        let lower = rest.to_ascii_lowercase();
        // The earliest secret key that starts a query parameter.
        let mut earliest: Option<(usize, usize)> = None;
        for key in SECRET_KEYS {
            let mut from = 0;
            while let Some(found) = lower[from..].find(key) {
                let at = from + found;
                let starts_parameter =
                    at == 0 || matches!(lower.as_bytes()[at - 1], b'?' | b'&' | b';');
                if starts_parameter {
                    if earliest.is_none_or(|(start, _)| at < start) {
                        earliest = Some((at, key.len()));
                    }
                    break;
                }
                from = at + key.len();
            }
        }
        let Some((start, key_len)) = earliest else {
            out.push_str(rest);
            break 'outer;
        };
        let value_start = start + key_len;
        out.push_str(&rest[..value_start]);
        out.push_str("REDACTED");
        let value_end = rest[value_start..]
            .find(|c: char| c == '&' || c == ';' || c == '"' || c == '\'' || c.is_whitespace())
            .map_or(rest.len(), |end| value_start + end);
        rest = &rest[value_end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn supported_urls_parse_to_their_canonical_form() {
        for (text, canonical, kind) in [
            ("az://blobs", "az://blobs", RemoteKind::AzureBlob),
            (
                "azure://blobs/hds/a",
                "az://blobs/hds/a",
                RemoteKind::AzureBlob,
            ),
            (
                "https://acct1.blob.core.windows.net/blobs/",
                "https://acct1.blob.core.windows.net/blobs",
                RemoteKind::AzureBlob,
            ),
            ("s3://my.bucket-1", "s3://my.bucket-1", RemoteKind::S3),
            (
                "s3://bucket/under/here",
                "s3://bucket/under/here",
                RemoteKind::S3,
            ),
        ] {
            let location = RemoteLocation::parse(text).expect(text);
            assert_eq!(location.to_string(), canonical);
            assert_eq!(location.kind(), kind);
        }
    }

    #[test]
    fn unsupported_or_unsafe_urls_are_refused_with_the_reason() {
        let message = |text: &str| RemoteLocation::parse(text).expect_err(text).to_string();
        assert!(message("gs://bucket").contains("unsupported scheme \"gs\""));
        assert!(message("file:///var/lib/hds").contains("unsupported scheme \"file\""));
        assert!(message("/var/lib/hds").contains("not a URL"));
        let sas = message("https://acct1.blob.core.windows.net/c1c?sv=1&sig=SECRETSIG");
        assert!(sas.contains("AZURE_STORAGE_SAS_KEY"), "{sas}");
        assert!(!sas.contains("SECRETSIG"), "{sas}");
        assert!(message("s3://user:pw@bucket").contains("user name or password"));
        assert!(message("az://blobs:10000").contains("port"));
        assert!(message("https://acct1.example.com/c1c").contains("blob.core.windows.net"));
        assert!(message("https://acct1.blob.core.windows.net/").contains("container is missing"));
        assert!(message("az://Bad_Container").contains("not a valid container"));
        assert!(message("az://a--b").contains("not a valid container"));
        assert!(message("s3://ab").contains("not a valid bucket"));
        assert!(message("s3://bucket/a/b%2Fc").contains("prefix segment"));
        assert!(message("s3://bucket/a b").contains("prefix segment"));
        assert!(message(&format!("s3://bucket/{}", "a".repeat(2000))).contains("longer"));
    }

    #[test]
    fn a_store_without_credentials_is_refused_before_anything_is_sent() {
        let azure = RemoteLocation::parse("az://blobs").expect("url");
        let error =
            BlobStore::open_remote_with(&azure, env(&[("AZURE_STORAGE_ACCOUNT_NAME", "acct1")]))
                .err()
                .expect("refused");
        assert!(
            error.to_string().contains("no credentials")
                && error.to_string().contains("AZURE_STORAGE_ACCOUNT_KEY"),
            "{error}"
        );
        let error =
            BlobStore::open_remote_with(&azure, env(&[("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")]))
                .err()
                .expect("refused");
        assert!(
            error.to_string().contains("AZURE_STORAGE_ACCOUNT_NAME"),
            "{error}"
        );
        let s3 = RemoteLocation::parse("s3://bucket").expect("url");
        let error = BlobStore::open_remote_with(&s3, env(&[("AWS_ACCESS_KEY_ID", "id")]))
            .err()
            .expect("refused");
        assert!(
            error.to_string().contains("AWS_SECRET_ACCESS_KEY"),
            "{error}"
        );
        let error = BlobStore::open_remote_with(
            &s3,
            env(&[
                ("AWS_ACCESS_KEY_ID", "id"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
                ("AWS_ENDPOINT", "http://127.0.0.1:9"),
            ]),
        )
        .err()
        .expect("refused");
        assert!(error.to_string().contains("AWS_ALLOW_HTTP"), "{error}");
    }

    #[test]
    fn configured_stores_open_without_contacting_anything() {
        let azure =
            RemoteLocation::parse("https://acct1.blob.core.windows.net/blobs/hds").expect("url");
        let store = BlobStore::open_remote_with(
            &azure,
            env(&[("AZURE_STORAGE_SAS_KEY", "sv=2022-11-02&sig=abc")]),
        )
        .expect("azure");
        assert!(!store.is_local());
        let emulator = RemoteLocation::parse("az://blobs").expect("url");
        BlobStore::open_remote_with(&emulator, env(&[("AZURE_STORAGE_USE_EMULATOR", "true")]))
            .expect("azurite");
        let s3 = RemoteLocation::parse("s3://bucket").expect("url");
        BlobStore::open_remote_with(
            &s3,
            env(&[
                ("AWS_ACCESS_KEY_ID", "id"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
                ("AWS_ENDPOINT", "http://127.0.0.1:9"),
                ("AWS_ALLOW_HTTP", "true"),
            ]),
        )
        .expect("s3");
    }

    #[test]
    fn signatures_in_messages_are_redacted() {
        let text =
            "GET http://x/c/b?sv=2022&sig=abc%2Bdef&se=1 failed; X-Amz-Signature=ff00 'sig=q'";
        let redacted = redact(text);
        // Only query parameters are secrets; the same words elsewhere are left alone.
        assert_eq!(
            redacted,
            "GET http://x/c/b?sv=2022&sig=REDACTED&se=1 failed; X-Amz-Signature=ff00 'sig=q'"
        );
        let redacted = redact("u?a=1&X-Amz-Signature=ff00&X-Amz-Credential=AKIA/x sig=n");
        assert_eq!(
            redacted,
            "u?a=1&X-Amz-Signature=REDACTED&X-Amz-Credential=REDACTED sig=n"
        );
    }
}
