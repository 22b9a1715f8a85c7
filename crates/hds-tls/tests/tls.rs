//! The local CA's certificates (names, key identifiers, strict verification by OpenSSL) and the
//! checks on an operator's own certificate and key.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hds_crypto::root::RootKey;
use hds_tls::{LocalCa, ServerCertificate, TlsError, trusted_roots};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::UnixTime;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

/// A store trusting only the CA in `ca_pem`.
fn roots_of(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots
            .add(certificate.expect("CA PEM"))
            .expect("CA certificate");
    }
    roots
}

fn openssl(arguments: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .args(arguments)
        .output()
        .expect("openssl runs (Debian package: openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The key identifier OpenSSL prints for `extension` of the certificate in `path`.
fn key_identifier(path: &Path, extension: &str) -> String {
    let (ok, text) = openssl(&[
        "x509",
        "-in",
        path.to_str().expect("UTF-8 path"),
        "-noout",
        "-ext",
        extension,
    ]);
    assert!(ok, "{text}");
    let line = text
        .lines()
        .skip(1)
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or_else(|| panic!("no {extension} in:\n{text}"));
    line.trim_start_matches("keyid:").to_owned()
}

#[test]
fn issued_certificates_cover_the_given_hosts_and_follow_them_across_starts() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let root_key = RootKey::generate();
    let ca = LocalCa::load_or_create(directory.path(), &root_key).expect("CA");
    let roots = || roots_of(ca.ca_pem());
    let now = UnixTime::now();

    let first = ca
        .issue(&names(&["127.0.0.2", "HDS.example.org", "127.0.0.2"]))
        .expect("certificate");
    first
        .verify_for_hosts(
            roots(),
            &names(&[
                "localhost",
                "127.0.0.1",
                "::1",
                "127.0.0.2",
                "hds.example.org",
            ]),
            now,
        )
        .expect("every given host and the loopback names are covered");
    for uncovered in ["127.0.0.3", "other.example.org"] {
        let refused = first
            .verify_for_hosts(roots(), &names(&[uncovered]), now)
            .expect_err("a host not given is not covered");
        assert!(
            matches!(&refused, TlsError::CertificateRefused { host, refusal: hds_tls::Refusal::OtherNames, .. } if host == uncovered),
            "{refused}"
        );
    }

    // The next start on another address: the same CA (same ca.pem), a certificate for the new
    // address.
    let ca_pem_before = ca.ca_pem().to_owned();
    drop(ca);
    let ca = LocalCa::load_or_create(directory.path(), &root_key).expect("CA again");
    assert_eq!(ca.ca_pem(), ca_pem_before, "the CA stays");
    let second = ca.issue(&names(&["127.0.0.3"])).expect("certificate");
    second
        .verify_for_hosts(roots_of(&ca_pem_before), &names(&["127.0.0.3"]), now)
        .expect("the new address is covered, under the old CA");
    assert!(
        second
            .verify_for_hosts(roots_of(&ca_pem_before), &names(&["127.0.0.2"]), now)
            .is_err()
    );

    assert!(matches!(
        ca.issue(&names(&["not a host name"])),
        Err(TlsError::InvalidName(_))
    ));
}

#[test]
fn issued_certificates_pass_strict_x509_verification_with_key_identifiers() {
    let directory = tempfile::tempdir().expect("temporary directory");
    let root_key = RootKey::generate();
    // Issue under a CA loaded from disk, as at every start after the first.
    LocalCa::load_or_create(directory.path(), &root_key).expect("CA");
    let ca = LocalCa::load_or_create(directory.path(), &root_key).expect("CA reloaded");
    let leaf_path = directory.path().join("leaf.pem");
    let leaf = ca.issue(&names(&["127.0.0.2"])).expect("certificate");
    fs::write(&leaf_path, leaf.chain_pem()).expect("leaf written");
    let ca_path = ca.ca_pem_path().to_str().expect("UTF-8 path");
    let leaf_arg = leaf_path.to_str().expect("UTF-8 path");

    let (verified, text) = openssl(&["verify", "-x509_strict", "-CAfile", ca_path, leaf_arg]);
    assert!(verified, "openssl verify -x509_strict: {text}");
    let (verified, text) = openssl(&[
        "verify",
        "-x509_strict",
        "-CAfile",
        ca_path,
        "-verify_ip",
        "127.0.0.2",
        leaf_arg,
    ]);
    assert!(verified, "openssl verify -verify_ip: {text}");

    let authority = key_identifier(&leaf_path, "authorityKeyIdentifier");
    let ca_subject = key_identifier(ca.ca_pem_path(), "subjectKeyIdentifier");
    let leaf_subject = key_identifier(&leaf_path, "subjectKeyIdentifier");
    assert_eq!(authority, ca_subject, "the leaf's AKI names the CA's key");
    assert_ne!(
        leaf_subject, ca_subject,
        "the leaf has a key identifier of its own"
    );

    let (ok, text) = openssl(&[
        "x509",
        "-in",
        leaf_arg,
        "-noout",
        "-ext",
        "basicConstraints",
    ]);
    assert!(ok && text.contains("CA:FALSE"), "{text}");
}

/// A throwaway CA and a leaf it signs, written as PEM files the way an operator would have them.
struct OperatorFiles {
    directory: tempfile::TempDir,
    ca: PathBuf,
    certificate: PathBuf,
    key: PathBuf,
}

impl OperatorFiles {
    fn new(
        hosts: &[&str],
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> OperatorFiles {
        let directory = tempfile::tempdir().expect("temporary directory");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "operator test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");

        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "hds");
        params.subject_alt_names = hosts
            .iter()
            .map(|host| match host.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*host).try_into().expect("DNS name")),
            })
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = not_before;
        params.not_after = not_after;
        let leaf = params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf certificate");

        let files = OperatorFiles {
            ca: directory.path().join("ca.pem"),
            certificate: directory.path().join("cert.pem"),
            key: directory.path().join("key.pem"),
            directory,
        };
        fs::write(&files.ca, ca.pem()).expect("CA written");
        fs::write(&files.certificate, leaf.pem()).expect("certificate written");
        fs::write(&files.key, leaf_key.serialize_pem()).expect("key written");
        fs::set_permissions(&files.key, fs::Permissions::from_mode(0o600)).expect("chmod");
        files
    }

    fn valid(hosts: &[&str]) -> OperatorFiles {
        let now = time::OffsetDateTime::now_utc();
        OperatorFiles::new(
            hosts,
            now - time::Duration::days(1),
            now + time::Duration::days(30),
        )
    }

    fn load(&self) -> Result<ServerCertificate, TlsError> {
        ServerCertificate::from_pem_files(&self.certificate, &self.key)
    }
}

#[test]
fn an_operator_certificate_is_served_when_it_is_trusted_current_and_names_the_hosts() {
    let files = OperatorFiles::valid(&["127.0.0.2", "hds.example.org"]);
    let certificate = files.load().expect("the operator's files load");
    let roots = trusted_roots(true, Some(&files.ca)).expect("roots");
    certificate
        .verify_for_hosts(
            roots.clone(),
            &names(&["127.0.0.2", "hds.example.org"]),
            UnixTime::now(),
        )
        .expect("trusted through --tls-ca, current, and naming both hosts");
    certificate.server_config().expect("a server configuration");

    let refused = certificate
        .verify_for_hosts(roots, &names(&["127.0.0.3"]), UnixTime::now())
        .expect_err("a host the certificate does not name");
    assert!(refused.to_string().contains("does not name"), "{refused}");

    // Without --tls-ca the throwaway CA is not among the system's.
    let refused = certificate
        .verify_for_hosts(
            trusted_roots(true, None).expect("system roots"),
            &names(&["127.0.0.2"]),
            UnixTime::now(),
        )
        .expect_err("an issuer nobody trusts");
    assert!(
        refused
            .to_string()
            .contains("not issued by a CA hds trusts"),
        "{refused}"
    );
}

#[test]
fn an_expired_operator_certificate_is_refused_with_its_date() {
    let now = time::OffsetDateTime::now_utc();
    let files = OperatorFiles::new(
        &["127.0.0.2"],
        now - time::Duration::days(60),
        now - time::Duration::days(30),
    );
    let certificate = files.load().expect("an expired certificate still loads");
    let refused = certificate
        .verify_for_hosts(
            trusted_roots(true, Some(&files.ca)).expect("roots"),
            &names(&["127.0.0.2"]),
            UnixTime::now(),
        )
        .expect_err("expired");
    let message = refused.to_string();
    let expected_date = (now - time::Duration::days(30)).date().to_string();
    assert!(
        message.contains("expired on") && message.contains(&expected_date),
        "{message}"
    );
}

#[test]
fn operator_files_that_are_missing_exposed_or_mismatched_are_refused_by_name() {
    let files = OperatorFiles::valid(&["127.0.0.2"]);

    let missing = files.directory.path().join("absent.pem");
    let error = ServerCertificate::from_pem_files(&missing, &files.key)
        .err()
        .expect("missing certificate");
    assert!(error.to_string().contains("absent.pem"), "{error}");
    let error = ServerCertificate::from_pem_files(&files.certificate, &missing)
        .err()
        .expect("missing key");
    assert!(error.to_string().contains("absent.pem"), "{error}");

    fs::set_permissions(&files.key, fs::Permissions::from_mode(0o644)).expect("chmod");
    let error = files.load().err().expect("a world-readable key");
    assert!(
        matches!(error, TlsError::KeyFileExposed { mode: 0o644, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("chmod 600"), "{error}");
    // Shared with a group only: accepted.
    fs::set_permissions(&files.key, fs::Permissions::from_mode(0o640)).expect("chmod");
    files.load().expect("a group-readable key");

    let other = OperatorFiles::valid(&["127.0.0.2"]);
    let error = ServerCertificate::from_pem_files(&files.certificate, &other.key)
        .err()
        .expect("another certificate's key");
    assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error}");
    let key_pem = fs::read_to_string(&other.key).expect("key");
    assert!(
        !error
            .to_string()
            .contains(key_pem.lines().nth(1).expect("a key line")),
        "no key material in the message"
    );

    let error = ServerCertificate::from_pem_files(&files.key, &files.key)
        .err()
        .expect("a key file given as the certificate");
    assert!(matches!(error, TlsError::NoCertificate(_)), "{error}");
    let not_a_key = files.directory.path().join("not-a-key.pem");
    fs::copy(&files.ca, &not_a_key).expect("copy");
    fs::set_permissions(&not_a_key, fs::Permissions::from_mode(0o600)).expect("chmod");
    let error = ServerCertificate::from_pem_files(&files.certificate, &not_a_key)
        .err()
        .expect("a certificate given as the key");
    assert!(matches!(error, TlsError::NoPrivateKey(_)), "{error}");
}
