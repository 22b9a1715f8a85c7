//! The certificate `hds up` serves on the main listener and every vault listener: the operator's
//! (`--tls-cert`, `--tls-key`), checked before anything listens, or one the local CA issues for
//! the hosts of this start.

use std::path::PathBuf;

use anyhow::Context;
use hds_tls::{LocalCa, Refusal, ServerCertificate, TlsError};
use rustls::pki_types::UnixTime;

use crate::cli::UpOptions;

/// What hds serves, and what its own calls to its vaults trust.
pub struct ServedCertificate {
    /// The certificate and key of every HTTPS listener.
    pub certificate: ServerCertificate,
    /// The CA file hds's vault client trusts beside the system's: the local CA's `ca.pem`, or
    /// the operator's `--tls-ca`.
    pub trusted_ca: Option<PathBuf>,
    /// A line for the start banner: where clients find what to trust.
    pub banner: String,
}

/// The certificate for this start. `public_url` is the main listener's public URL.
pub fn served_certificate(
    options: &UpOptions,
    local_ca: &LocalCa,
    public_url: &str,
) -> anyhow::Result<ServedCertificate> {
    let public_host = host_of(public_url)?;
    // Vaults are addressed as https://{listen address}:{port}/ (or the --vault-address behind
    // a balancer), so hds (and every vault client) reaches them by that address.
    let vault_host = options
        .vault_address
        .unwrap_or_else(|| options.listen.ip())
        .to_string();
    let (Some(certificate_path), Some(key_path)) = (&options.tls_cert, &options.tls_key) else {
        let mut names = vec![vault_host, public_host];
        if let Some(domain) = &options.vault_domain {
            names.push(format!("*.vault.{domain}"));
        }
        let certificate = local_ca
            .issue(&names)
            .context("issuing the server certificate")?;
        return Ok(ServedCertificate {
            certificate,
            trusted_ca: Some(local_ca.ca_pem_path().to_path_buf()),
            banner: format!("  CA:        {}", local_ca.ca_pem_path().display()),
        });
    };
    let certificate = ServerCertificate::from_pem_files(certificate_path, key_path)
        .context("--tls-cert/--tls-key")?;
    let roots = hds_tls::trusted_roots(true, options.tls_ca.as_deref()).context("--tls-ca")?;
    let check = |host: &String, role: String| {
        certificate
            .verify_for_hosts(roots.clone(), std::slice::from_ref(host), UnixTime::now())
            .map_err(|error| match &error {
                TlsError::CertificateRefused {
                    refusal: Refusal::OtherNames,
                    ..
                } => anyhow::Error::new(error).context(format!("--tls-cert must name {role}")),
                _ => anyhow::Error::new(error).context("--tls-cert cannot be served"),
            })
    };
    check(
        &vault_host,
        format!(
            "the {} {vault_host}: the key vaults are served at \
             https://{vault_host}:PORT/ and hds calls them there",
            if options.vault_address.is_some() {
                "--vault-address"
            } else {
                "listen address"
            }
        ),
    )?;
    if !options.http {
        check(&public_host, format!("the public URL's host {public_host}"))?;
    }
    if let Some(domain) = &options.vault_domain {
        // Any vault's name: the certificate must cover `*.vault.DOMAIN`.
        check(
            &format!("any-vault.vault.{domain}"),
            format!(
                "*.vault.{domain} (--vault-domain): vaults are served at https://{{vault}}.vault.{domain}/"
            ),
        )?;
    }
    Ok(ServedCertificate {
        certificate,
        trusted_ca: options.tls_ca.clone(),
        banner: format!("  TLS:       {}", certificate_path.display()),
    })
}

/// The host of `url` as a certificate names it: a DNS name, or an IP address without brackets.
fn host_of(url: &str) -> anyhow::Result<String> {
    let parsed = reqwest::Url::parse(url)
        .with_context(|| format!("--public-url '{url}' is not an absolute URL"))?;
    let host = parsed
        .host_str()
        .with_context(|| format!("--public-url '{url}' has no host"))?;
    // An IPv6 host comes bracketed, as URLs write it.
    Ok(host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase())
}
