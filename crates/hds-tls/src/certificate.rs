//! A server certificate and its key: issued by the local CA at each start, or the operator's own.
//!
//! An operator's certificate is checked before anything listens, against the same trust hds uses
//! for its own calls to its vaults: a certificate those calls would refuse (expired, for another
//! name, from a CA hds does not trust, or with a key that is not its own) would otherwise surface
//! only later, as a vault that cannot be reached.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, RootCertStore};
use zeroize::Zeroizing;

use crate::{Refusal, TlsError, io_error};

/// Permission bits that let users other than the owner and the file's group at a key file.
const OTHERS_ACCESS: u32 = 0o007;

/// A certificate chain (leaf first) and the leaf's private key, ready to serve.
///
/// There is deliberately no `Debug`: the value holds a private key.
pub struct ServerCertificate {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Where the certificate came from, for error messages: a file, or the local CA.
    origin: String,
}

impl ServerCertificate {
    pub(crate) fn issued(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> ServerCertificate {
        ServerCertificate {
            chain,
            key,
            origin: "the local CA's certificate".to_owned(),
        }
    }

    /// Reads an operator's certificate chain and private key, both PEM.
    ///
    /// Refuses, naming the file: a file that is missing or unreadable, a key file that users
    /// outside its owner and group may access (as ssh refuses an exposed private key), a file
    /// without a certificate or key, and a key that is not the certificate's. The key's bytes
    /// are zeroized once parsed and never appear in an error.
    pub fn from_pem_files(
        certificate_path: &Path,
        key_path: &Path,
    ) -> Result<ServerCertificate, TlsError> {
        let certificate_pem =
            fs::read(certificate_path).map_err(|source| io_error(certificate_path, source))?;
        let chain = rustls_pemfile::certs(&mut certificate_pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| io_error(certificate_path, source))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(certificate_path.to_path_buf()));
        }

        check_key_file_permissions(key_path)?;
        let key_pem =
            Zeroizing::new(fs::read(key_path).map_err(|source| io_error(key_path, source))?);
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|source| io_error(key_path, source))?
            .ok_or_else(|| TlsError::NoPrivateKey(key_path.to_path_buf()))?;

        let certified =
            rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider());
        match certified {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(TlsError::KeyMismatch {
                    certificate: certificate_path.to_path_buf(),
                    key: key_path.to_path_buf(),
                });
            }
            Err(reason) => {
                return Err(TlsError::UnusableKey {
                    key: key_path.to_path_buf(),
                    reason,
                });
            }
        }
        Ok(ServerCertificate {
            chain,
            key,
            origin: certificate_path.display().to_string(),
        })
    }

    /// Checks that a client trusting `roots` accepts this certificate at `now` for each of
    /// `hosts` (DNS names or IP addresses): the chain leads to one of `roots`, every certificate
    /// in it is within its validity period, and the leaf names the host.
    pub fn verify_for_hosts(
        &self,
        roots: RootCertStore,
        hosts: &[String],
        now: UnixTime,
    ) -> Result<(), TlsError> {
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(provider()),
        )
        .build()
        .map_err(|error| TlsError::NoTrustAnchors(error.to_string()))?;
        let Some((end_entity, intermediates)) = self.chain.split_first() else {
            return Err(TlsError::NoCertificate(PathBuf::from(&self.origin)));
        };
        for host in hosts {
            let name = ServerName::try_from(host.as_str())
                .map_err(|_| TlsError::InvalidName(host.clone()))?;
            verifier
                .verify_server_cert(end_entity, intermediates, &name, &[], now)
                .map_err(|error| {
                    let (refusal, reason) = describe_refusal(error);
                    TlsError::CertificateRefused {
                        certificate: self.origin.clone(),
                        host: host.clone(),
                        refusal,
                        reason,
                    }
                })?;
        }
        Ok(())
    }

    /// A rustls server configuration serving this certificate, offering HTTP/2 and HTTP/1.1.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        // The provider is named, not taken from process state: other crates in the same
        // process may compile in a second rustls provider.
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// The certificate chain in PEM, leaf first (public; for clients and tests).
    pub fn chain_pem(&self) -> String {
        let mut pem = String::new();
        for certificate in &self.chain {
            let encoded = base64::engine::general_purpose::STANDARD.encode(certificate.as_ref());
            pem.push_str("-----BEGIN CERTIFICATE-----\n");
            for line in encoded.as_bytes().chunks(64) {
                // Base64 output is ASCII, so every chunk is valid UTF-8.
                pem.push_str(&String::from_utf8_lossy(line));
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
        }
        pem
    }
}

/// The CAs hds trusts for its own HTTPS calls: the system's store when `system_roots`, and
/// every certificate in `extra_ca_path` (PEM) when given. The one definition of that trust, so
/// the start-up check of an operator's certificate and the vault client agree.
pub fn trusted_roots(
    system_roots: bool,
    extra_ca_path: Option<&Path>,
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if system_roots {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    if let Some(path) = extra_ca_path {
        let pem = fs::read(path).map_err(|source| io_error(path, source))?;
        let mut found = 0;
        for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
            let certificate = certificate.map_err(|source| io_error(path, source))?;
            roots.add(certificate)?;
            found += 1;
        }
        if found == 0 {
            return Err(TlsError::NoCertificate(path.to_path_buf()));
        }
    }
    Ok(roots)
}

/// Refuses a key file that users outside its owner and group can reach. Group access is allowed
/// so that a key shared through a group (Debian's `ssl-cert`) can be used as it is.
fn check_key_file_permissions(key_path: &Path) -> Result<(), TlsError> {
    let metadata = fs::metadata(key_path).map_err(|source| io_error(key_path, source))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & OTHERS_ACCESS != 0 {
        return Err(TlsError::KeyFileExposed {
            key: key_path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Why a verifier refused the certificate: its kind, and the reason in the operator's terms.
fn describe_refusal(error: rustls::Error) -> (Refusal, String) {
    let rustls::Error::InvalidCertificate(error) = error else {
        return (Refusal::Other, error.to_string());
    };
    match error {
        CertificateError::ExpiredContext { not_after, .. } => (
            Refusal::Expired,
            format!("it expired on {}", format_time(not_after)),
        ),
        CertificateError::Expired => (Refusal::Expired, "it has expired".to_owned()),
        CertificateError::NotValidYetContext { not_before, .. } => (
            Refusal::NotYetValid,
            format!("it is not valid before {}", format_time(not_before)),
        ),
        CertificateError::NotValidYet => (Refusal::NotYetValid, "it is not valid yet".to_owned()),
        CertificateError::NotValidForNameContext { presented, .. } => {
            let presented: Vec<&str> = presented.iter().map(|name| plain_name(name)).collect();
            (
                Refusal::OtherNames,
                format!(
                    "it does not name this host (it names: {})",
                    presented.join(", ")
                ),
            )
        }
        CertificateError::NotValidForName => {
            (Refusal::OtherNames, "it does not name this host".to_owned())
        }
        CertificateError::UnknownIssuer => (
            Refusal::UntrustedIssuer,
            "it is not issued by a CA hds trusts (the system's CAs, and the --tls-ca file when \
             given)"
                .to_owned(),
        ),
        other => (Refusal::Other, other.to_string()),
    }
}

/// A presented name as a person writes it: webpki reports `IpAddress(10.0.0.1)` and
/// `DnsName("host")`.
fn plain_name(presented: &str) -> &str {
    for prefix in ["IpAddress(", "DnsName(", "UriName("] {
        if let Some(inner) = presented
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(')'))
        {
            return inner.trim_matches('"');
        }
    }
    presented
}

fn format_time(time: UnixTime) -> String {
    let seconds = i64::try_from(time.as_secs()).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|moment| {
            moment
                .format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{seconds} (Unix time)"))
}

/// The crypto provider every configuration here names (see `server_config`).
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}
