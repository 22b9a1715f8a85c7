//! The local certificate authority behind hds's HTTPS listeners.
//!
//! On first start hds creates a CA (ECDSA P-256) and writes its certificate to
//! `{data-dir}/tls/ca.pem`, which clients trust (`--ca-cert`, `REQUESTS_CA_BUNDLE`, ...). The
//! CA's private key never sits in plaintext at rest: it is sealed under the platform root key in
//! `{data-dir}/tls/ca-key.sealed`. Server certificates are issued in memory at each start, for the
//! loopback addresses and any configured host names, so they never need renewing on disk.
//!
//! Key vaults are always HTTPS (the Azure SDKs refuse bearer tokens over plain HTTP), which is why
//! the CA exists even when the main listener runs with `--http`.
#![deny(missing_docs)]

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hds_crypto::root::RootKey;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// The purpose string the CA key is sealed under.
const CA_KEY_PURPOSE: &str = "tls/ca-key";
/// The CA's common name; kept fixed so the issuer rebuilt at each start matches `ca.pem`.
const CA_COMMON_NAME: &str = "hds local CA";

/// Why the CA could not be loaded or a certificate issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Reading or writing a file under the TLS directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// Generating or parsing a certificate or key failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The sealed CA key did not open under this root key.
    #[error("the CA key does not open under this data dir's root key: {0}")]
    Sealed(#[from] hds_crypto::root::RootKeyError),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The local CA: its certificate (public) and its key (in memory only).
pub struct LocalCa {
    ca_pem_path: PathBuf,
    ca_pem: String,
    issuer: rcgen::Certificate,
    issuer_key: KeyPair,
}

impl LocalCa {
    /// Loads the CA from `tls_dir`, creating it on first start.
    pub fn load_or_create(tls_dir: &Path, root_key: &RootKey) -> Result<LocalCa, TlsError> {
        fs::create_dir_all(tls_dir).map_err(|source| io_error(tls_dir, source))?;
        let ca_pem_path = tls_dir.join("ca.pem");
        let sealed_key_path = tls_dir.join("ca-key.sealed");
        if !(ca_pem_path.exists() && sealed_key_path.exists()) {
            create_ca(&ca_pem_path, &sealed_key_path, root_key)?;
        }
        let ca_pem =
            fs::read_to_string(&ca_pem_path).map_err(|source| io_error(&ca_pem_path, source))?;
        let sealed =
            fs::read(&sealed_key_path).map_err(|source| io_error(&sealed_key_path, source))?;
        let key_der = root_key.open(CA_KEY_PURPOSE, b"", &sealed)?;
        let key_pem = String::from_utf8_lossy(&key_der).into_owned();
        let issuer_key = KeyPair::from_pem(&key_pem)?;
        // The issuer is rebuilt from the same distinguished name and key: leaf certificates it
        // signs name the same subject and key identifier as ca.pem, so they chain to it.
        let issuer = ca_params().self_signed(&issuer_key)?;
        Ok(LocalCa {
            ca_pem_path,
            ca_pem,
            issuer,
            issuer_key,
        })
    }

    /// Where the CA certificate is, for clients to trust.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// The CA certificate in PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A rustls server configuration with a fresh certificate for `127.0.0.1`, `::1`,
    /// `localhost` and `extra_names` (DNS names or IP addresses; `*.domain` wildcards allowed),
    /// offering HTTP/2 and HTTP/1.1.
    pub fn server_config(
        &self,
        extra_names: &[String],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        names.extend(extra_names.iter().cloned());
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "hds");
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => name.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(397);
        let leaf_key = KeyPair::generate()?;
        let leaf = params.signed_by(&leaf_key, &self.issuer, &self.issuer_key)?;
        // Only the leaf: clients hold ca.pem itself. The issuer object here is rebuilt at each
        // start, so it is a different certificate from ca.pem (same name and key), and sending
        // it would make strict verifiers see an untrusted self-signed certificate in the chain.
        let chain = vec![leaf.der().clone()];
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        // The provider is named, not taken from process state: other crates in the same
        // process may compile in a second rustls provider.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The CA's parameters, identical at every start.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2045, 1, 1);
    params
}

fn create_ca(
    ca_pem_path: &Path,
    sealed_key_path: &Path,
    root_key: &RootKey,
) -> Result<(), TlsError> {
    let key = KeyPair::generate()?;
    let certificate = ca_params().self_signed(&key)?;
    let sealed = root_key.seal(CA_KEY_PURPOSE, b"", key.serialize_pem().as_bytes());
    write_atomically(sealed_key_path, &sealed, 0o600)?;
    write_atomically(ca_pem_path, certificate.pem().as_bytes(), 0o644)
}

/// Writes to a temporary file beside `path` and renames it over: a crash leaves the old file
/// or the new one, never half of one.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let temporary = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(|source| io_error(&temporary, source))?;
    file.write_all(contents)
        .map_err(|source| io_error(&temporary, source))?;
    file.sync_all()
        .map_err(|source| io_error(&temporary, source))?;
    fs::rename(&temporary, path).map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}
