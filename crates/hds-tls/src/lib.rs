//! The certificates behind hds's HTTPS listeners: a local certificate authority, or the
//! operator's own certificate.
//!
//! On first start hds creates a CA (ECDSA P-256) and writes its certificate to
//! `{data-dir}/tls/ca.pem`, which clients trust (`--ca-cert`, `REQUESTS_CA_BUNDLE`, ...). The
//! CA's private key never sits in plaintext at rest: it is sealed under the platform root key in
//! `{data-dir}/tls/ca-key.sealed`. Server certificates are issued in memory at each start, for
//! the loopback names and the hosts hds is reached by at that start (the listen address, the
//! public URL's host), so they follow a changed address and never need renewing on disk; the CA
//! stays. They carry the Subject and Authority Key Identifier extensions that strict X.509
//! verification requires (`openssl verify -x509_strict`, Python 3.13's `ssl`).
//!
//! An operator may bring a certificate and key instead ([`ServerCertificate::from_pem_files`]);
//! hds checks them before it listens ([`ServerCertificate::verify_for_hosts`]).
//!
//! Key vaults are always HTTPS (the Azure SDKs refuse bearer tokens over plain HTTP), which is why
//! the CA exists even when the main listener runs with `--http`.
#![deny(missing_docs)]

mod certificate;

pub use certificate::{ServerCertificate, trusted_roots};

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
use zeroize::Zeroizing;

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
    /// A PEM file holds no certificate.
    #[error("{0}: no PEM certificate in the file")]
    NoCertificate(PathBuf),
    /// A PEM file holds no private key.
    #[error("{0}: no PEM private key in the file (PKCS#8, PKCS#1 or SEC1)")]
    NoPrivateKey(PathBuf),
    /// Users other than the owner and the file's group may access the private key.
    #[error(
        "{}: the private key is accessible to other users (mode {mode:03o}); run chmod 600 on it \
         (or 640 to share it with a group)",
        key.display()
    )]
    KeyFileExposed {
        /// The key file.
        key: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The private key is not the certificate's.
    #[error(
        "the private key in {} does not belong to the certificate in {}",
        key.display(),
        certificate.display()
    )]
    KeyMismatch {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The private key could not be used (an unsupported algorithm, for one).
    #[error("{}: the private key cannot be used: {reason}", key.display())]
    UnusableKey {
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: rustls::Error,
    },
    /// Nothing to verify a certificate against.
    #[error("no CA certificates to trust: {0}")]
    NoTrustAnchors(String),
    /// A host name or address that cannot be put in or checked against a certificate.
    #[error("'{0}' is not a valid DNS name or IP address")]
    InvalidName(String),
    /// Clients would refuse the certificate for a host it must serve.
    #[error("{certificate} cannot serve {host}: {reason}")]
    CertificateRefused {
        /// Where the certificate came from.
        certificate: String,
        /// The host.
        host: String,
        /// What kind of refusal.
        refusal: Refusal,
        /// Why, in the operator's terms.
        reason: String,
    },
}

/// Why clients would refuse a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Past its `notAfter`.
    Expired,
    /// Before its `notBefore`.
    NotYetValid,
    /// It names other hosts than the one asked for.
    OtherNames,
    /// Its chain leads to no trusted CA.
    UntrustedIssuer,
    /// Anything else (a bad signature, a CA certificate used as a server's, ...).
    Other,
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
            // Nodes sharing one data dir may start at once: one creates the CA, the others
            // wait for the lock and then read it (the key and certificate must be one pair).
            let lock_path = tls_dir.join("ca.lock");
            let lock = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&lock_path)
                .map_err(|source| io_error(&lock_path, source))?;
            lock.lock().map_err(|source| io_error(&lock_path, source))?;
            if !(ca_pem_path.exists() && sealed_key_path.exists()) {
                create_ca(&ca_pem_path, &sealed_key_path, root_key)?;
            }
            drop(lock);
        }
        let ca_pem =
            fs::read_to_string(&ca_pem_path).map_err(|source| io_error(&ca_pem_path, source))?;
        let sealed =
            fs::read(&sealed_key_path).map_err(|source| io_error(&sealed_key_path, source))?;
        let key_der = root_key.open(CA_KEY_PURPOSE, b"", &sealed)?;
        let key_pem = Zeroizing::new(String::from_utf8_lossy(&key_der).into_owned());
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

    /// A fresh server certificate for `localhost`, `127.0.0.1`, `::1` and `names` (DNS names
    /// or IP addresses; `*.domain` wildcards allowed), signed by this CA.
    ///
    /// The leaf carries a Subject Key Identifier, an Authority Key Identifier naming the CA's
    /// key (strict verifiers refuse a leaf without one) and `basicConstraints CA:FALSE`.
    pub fn issue(&self, names: &[String]) -> Result<ServerCertificate, TlsError> {
        let loopback = ["localhost", "127.0.0.1", "::1"].map(str::to_owned);
        let mut subject_alt_names: Vec<SanType> = Vec::new();
        for name in loopback.iter().chain(names) {
            let name = name.trim().to_ascii_lowercase();
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    // A wildcard's name is checked without its `*.` label.
                    let checked = name.strip_prefix("*.").unwrap_or(&name);
                    if rustls::pki_types::DnsName::try_from(checked).is_err() {
                        return Err(TlsError::InvalidName(name));
                    }
                    SanType::DnsName(
                        name.clone()
                            .try_into()
                            .map_err(|_| TlsError::InvalidName(name.clone()))?,
                    )
                }
            };
            if !subject_alt_names.contains(&san) {
                subject_alt_names.push(san);
            }
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "hds");
        params.subject_alt_names = subject_alt_names;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
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
        Ok(ServerCertificate::issued(chain, key))
    }

    /// A rustls server configuration with a fresh certificate from [`LocalCa::issue`], offering
    /// HTTP/2 and HTTP/1.1.
    pub fn server_config(
        &self,
        extra_names: &[String],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        self.issue(extra_names)?.server_config()
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

pub(crate) fn io_error(path: &Path, source: std::io::Error) -> TlsError {
    TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}
