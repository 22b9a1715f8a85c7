//! RSA-HSM keys in a real PKCS#11 token: Debian's SoftHSM 2 (`apt-get install -y softhsm2`;
//! CI installs it). A throwaway token is initialized in a temporary directory, the vault is
//! opened on it, and a key is generated, used, refused for backup, looked for in the database
//! and in the token, reopened and purged; then the platform root key is wrapped by an AES key
//! of the token.
//!
//! This is its own test binary with a single test: SoftHSM reads `SOFTHSM2_CONF` from the
//! process environment, which is set before anything else runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPublicEncryptingKey, PublicEncryptingKey};
use aws_lc_rs::signature::{self, RsaPublicKeyComponents};
use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use hds_crypto::root::{RootKey, RootKeyError};
use hds_crypto::root_at_rest::{self, Protector};
use hds_db::Database;
use hds_keyvault::access::Caller;
use hds_keyvault::material::{EncryptionAlgorithm, RsaKeyMaterial};
use hds_keyvault::model::{Vault, VaultProperties};
use hds_keyvault::{
    DataPlaneState, KeyVaultService, PinSource, Pkcs11Config, Pkcs11Error, Pkcs11RootKeyWrapper,
    ServiceConfig, StaticAccessControl, VaultAddressing, VaultSelector, WrappingKeyCreation,
    data_plane_router,
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::Row;
use tower::ServiceExt;

const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN_LABEL: &str = "hds-test";
const USER_PIN: &str = "5678";
const TENANT: &str = "tenant-1";
const VERSION: &str = "api-version=7.5";
/// The start of an unencrypted PKCS#8 RSA private key after its outer length: version 0, the
/// rsaEncryption AlgorithmIdentifier, and the OCTET STRING holding RSAPrivateKey.
const PKCS8_RSA_MARKER: &[u8] = &[
    0x02, 0x01, 0x00, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    0x05, 0x00, 0x04,
];

/// SoftHSM's tools and module, or a failure that says what to install. Not a skip: CI installs
/// softhsm2, and a missing token must not pass unnoticed.
fn softhsm_util() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|directory| directory.join("softhsm2-util"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) if Path::new(SOFTHSM_MODULE).is_file() => path,
        _ => panic!(
            "SoftHSM 2 is not installed (softhsm2-util or {SOFTHSM_MODULE} is missing). \
             This test needs a real PKCS#11 token: install it with `apt-get install -y softhsm2` \
             (.ci/run installs it in CI) and run again."
        ),
    }
}

/// A throwaway token in `directory`; returns the SoftHSM config file to point
/// `SOFTHSM2_CONF` at.
fn init_token(softhsm_util: &Path, directory: &Path) -> PathBuf {
    let token_directory = directory.join("tokens");
    std::fs::create_dir(&token_directory).unwrap();
    let config = directory.join("softhsm2.conf");
    std::fs::write(
        &config,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            token_directory.display()
        ),
    )
    .unwrap();
    let output = Command::new(softhsm_util)
        .env("SOFTHSM2_CONF", &config)
        .args([
            "--init-token",
            "--free",
            "--label",
            TOKEN_LABEL,
            "--so-pin",
            "1234",
            "--pin",
            USER_PIN,
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "softhsm2-util --init-token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    config
}

struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

async fn call(router: &Router, method: Method, uri: &str, body: Option<Value>) -> Answer {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, "Bearer officer");
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => request.body(Body::empty()).unwrap(),
    };
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Answer { status, body }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(value: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(value.as_str().unwrap()).unwrap()
}

fn loopback_config() -> ServiceConfig {
    ServiceConfig {
        addressing: VaultAddressing::Loopback {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        },
    }
}

async fn open_service(
    database_url: &str,
    root_key: &Arc<RootKey>,
    pin_file: &Path,
) -> Arc<KeyVaultService> {
    let database = Database::connect(database_url).await.unwrap();
    let config = loopback_config();
    let pkcs11 = Pkcs11Config {
        module_path: PathBuf::from(SOFTHSM_MODULE),
        token_label: TOKEN_LABEL.to_owned(),
        user_pin: PinSource::File(pin_file.to_owned()),
    };
    Arc::new(
        KeyVaultService::open_with_pkcs11(database, Arc::clone(root_key), config, Some(pkcs11))
            .await
            .unwrap(),
    )
}

fn data_plane(service: &Arc<KeyVaultService>, vault: &Vault) -> Router {
    let access = Arc::new(StaticAccessControl::new());
    access.add_token(
        "officer",
        Caller {
            principal_id: "officer-oid".into(),
            tenant_id: TENANT.into(),
            is_trusted_service: false,
        },
    );
    access.grant("officer-oid", "*");
    let state = DataPlaneState {
        service: Arc::clone(service),
        access,
        token_authority: "https://login.hds.test".into(),
    };
    data_plane_router(state, VaultSelector::Fixed(vault.name.clone())).layer(MockConnectInfo(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50_000),
    ))
}

/// A session of the test's own on the token, to look at the vault's objects from outside.
fn inspection_session() -> Session {
    let context = Pkcs11::new(SOFTHSM_MODULE).unwrap();
    // The vault initialized the module in this process already.
    let _ = context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = context
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|slot| context.get_token_info(*slot).unwrap().label().trim_end() == TOKEN_LABEL)
        .unwrap();
    let session = context.open_ro_session(slot).unwrap();
    // Login is per application: the vault's login already covers this session.
    let _ = session.login(UserType::User, Some(&AuthPin::from(USER_PIN)));
    session
}

/// One DER element: (tag, contents, what follows).
fn der_element(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (length, header) = match input[1] {
        short if short < 0x80 => (usize::from(short), 2),
        long => {
            let count = usize::from(long & 0x7f);
            let length = input[2..2 + count]
                .iter()
                .fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
            (length, 2 + count)
        }
    };
    (
        tag,
        &input[header..header + length],
        &input[header + length..],
    )
}

/// The eight integers of an RSA private key in PKCS#8 (n, e, d, p, q, dp, dq, qi), as JWK
/// base64url values.
fn jwk_components(pkcs8: &[u8]) -> Vec<String> {
    let (_, private_key_info, _) = der_element(pkcs8);
    let (_, _version, rest) = der_element(private_key_info);
    let (_, _algorithm, rest) = der_element(rest);
    let (_, octets, _) = der_element(rest);
    let (_, mut integers, _) = der_element(octets);
    let mut values = Vec::new();
    while !integers.is_empty() {
        let (tag, value, rest) = der_element(integers);
        assert_eq!(tag, 0x02);
        let first = value.iter().position(|byte| *byte != 0).unwrap_or(0);
        values.push(b64(&value[first..]));
        integers = rest;
    }
    assert_eq!(values.len(), 9, "version and eight integers");
    values.split_off(1)
}

fn private_keys_with_id(session: &Session, object_id: &[u8]) -> usize {
    session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(object_id.to_vec()),
        ])
        .unwrap()
        .len()
}

#[test]
fn rsa_hsm_keys_live_in_a_softhsm_token() {
    let softhsm_util = softhsm_util();
    let directory = tempfile::tempdir().unwrap();
    let softhsm_config = init_token(&softhsm_util, directory.path());
    // SAFETY: this binary's only test sets the variable before it starts a runtime or loads the
    // module, so no other thread reads the environment concurrently.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &softhsm_config) };
    let pin_file = directory.path().join("user-pin");
    std::fs::write(&pin_file, format!("{USER_PIN}\n")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let database_path = directory.path().join("hds.db");
    let database_url = format!("sqlite:{}", database_path.display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(exercise_token(&database_url, &database_path, &pin_file));
    exercise_root_key_wrapping(directory.path(), &pin_file);
}

/// The platform root key wrapped by an AES key of the token: generated only when allowed,
/// sensitive and non-extractable, opening the same key again, and another key of the token
/// refused.
fn exercise_root_key_wrapping(directory: &Path, pin_file: &Path) {
    let config = Pkcs11Config {
        module_path: PathBuf::from(SOFTHSM_MODULE),
        token_label: TOKEN_LABEL.into(),
        user_pin: PinSource::File(pin_file.to_owned()),
    };
    let missing = Pkcs11RootKeyWrapper::open(&config, "root-wrap", WrappingKeyCreation::MustExist)
        .unwrap_err();
    assert!(
        matches!(missing, Pkcs11Error::KeyNotFound { .. }),
        "{missing}"
    );
    let wrapper =
        Pkcs11RootKeyWrapper::open(&config, "root-wrap", WrappingKeyCreation::GenerateIfMissing)
            .unwrap();
    let session = inspection_session();
    let keys = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(b"root-wrap".to_vec()),
        ])
        .unwrap();
    assert_eq!(keys.len(), 1);
    let attributes = session
        .get_attributes(
            keys[0],
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Token,
            ],
        )
        .unwrap();
    for attribute in attributes {
        match attribute {
            Attribute::Sensitive(value) | Attribute::Token(value) => assert!(value),
            Attribute::Extractable(value) => assert!(!value),
            other => panic!("unexpected attribute {other:?}"),
        }
    }
    let data_dir = directory.join("root-key-data-dir");
    std::fs::create_dir(&data_dir).unwrap();
    let created = root_at_rest::open_or_create(&data_dir, Protector::Wrapper(&wrapper)).unwrap();
    drop(wrapper);
    let reopened_wrapper =
        Pkcs11RootKeyWrapper::open(&config, "root-wrap", WrappingKeyCreation::MustExist).unwrap();
    let reopened =
        root_at_rest::open_or_create(&data_dir, Protector::Wrapper(&reopened_wrapper)).unwrap();
    assert!(reopened.same_key_as(&created));
    let other_key = Pkcs11RootKeyWrapper::open(
        &config,
        "other-wrap",
        WrappingKeyCreation::GenerateIfMissing,
    )
    .unwrap();
    assert!(matches!(
        root_at_rest::open_or_create(&data_dir, Protector::Wrapper(&other_key)),
        Err(RootKeyError::WrongWrappingKey(_))
    ));
}

async fn exercise_token(database_url: &str, database_path: &Path, pin_file: &Path) {
    let root_key = Arc::new(RootKey::generate());
    let wrong_label = KeyVaultService::open_with_pkcs11(
        Database::connect(database_url).await.unwrap(),
        Arc::clone(&root_key),
        loopback_config(),
        Some(Pkcs11Config {
            module_path: PathBuf::from(SOFTHSM_MODULE),
            token_label: "no-such-token".into(),
            user_pin: PinSource::File(pin_file.to_owned()),
        }),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        wrong_label.contains("no-such-token") && wrong_label.contains(TOKEN_LABEL),
        "{wrong_label}"
    );
    let service = open_service(database_url, &root_key, pin_file).await;
    assert_eq!(service.pkcs11_token_label(), Some(TOKEN_LABEL));
    let (vault, _) = service
        .create_or_update_vault(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/hsmvault",
            "hsmvault",
            VaultProperties::new(TENANT),
        )
        .await
        .unwrap();
    let router = data_plane(&service, &vault);

    let created = call(
        &router,
        Method::POST,
        &format!("/keys/cmk/create?{VERSION}"),
        Some(json!({"kty": "RSA-HSM", "key_size": 2048})),
    )
    .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    assert_eq!(created.body["key"]["kty"], "RSA-HSM");
    let kid = created.body["key"]["kid"].as_str().unwrap().to_owned();
    let key_path = format!("/{}", kid.strip_prefix(&vault.vault_uri).unwrap());
    let modulus = unb64(&created.body["key"]["n"]);
    let exponent = unb64(&created.body["key"]["e"]);
    assert_eq!(modulus.len(), 256);

    // Wrap locally with the public JWK (RSA-OAEP, SHA-1), unwrap in the token through the vault.
    let public = RsaPublicKeyComponents {
        n: modulus.as_slice(),
        e: exponent.as_slice(),
    };
    let encrypting: PublicEncryptingKey = aws_lc_rs::rsa::PublicKeyComponents {
        n: modulus.as_slice(),
        e: exponent.as_slice(),
    }
    .try_into()
    .unwrap();
    let oaep = OaepPublicEncryptingKey::new(encrypting).unwrap();
    let data_key = [0x5au8; 32];
    let mut wrapped = vec![0u8; oaep.ciphertext_size()];
    let wrapped_len = oaep
        .encrypt(&OAEP_SHA1_MGF1SHA1, &data_key, &mut wrapped, None)
        .unwrap()
        .len();
    wrapped.truncate(wrapped_len);
    let unwrapped = call(
        &router,
        Method::POST,
        &format!("{key_path}/unwrapkey?{VERSION}"),
        Some(json!({"alg": "RSA-OAEP", "value": b64(&wrapped)})),
    )
    .await;
    assert_eq!(unwrapped.status, StatusCode::OK, "{}", unwrapped.body);
    assert_eq!(unb64(&unwrapped.body["value"]), data_key);

    // The vault's own wrap (public key, software) unwraps in the token too.
    let wrapped_by_vault = call(
        &router,
        Method::POST,
        &format!("{key_path}/wrapkey?{VERSION}"),
        Some(json!({"alg": "RSA-OAEP", "value": b64(b"another data key, 32 bytes long!")})),
    )
    .await;
    assert_eq!(wrapped_by_vault.status, StatusCode::OK);
    let round_trip = call(
        &router,
        Method::POST,
        &format!("{key_path}/unwrapkey?{VERSION}"),
        Some(json!({"alg": "RSA-OAEP", "value": wrapped_by_vault.body["value"]})),
    )
    .await;
    assert_eq!(
        unb64(&round_trip.body["value"]),
        b"another data key, 32 bytes long!"
    );

    // RSA-OAEP-256 is refused both ways, with the algorithm to use instead.
    for operation in ["wrapkey", "unwrapkey", "encrypt", "decrypt"] {
        let refused = call(
            &router,
            Method::POST,
            &format!("{key_path}/{operation}?{VERSION}"),
            Some(json!({"alg": "RSA-OAEP-256", "value": b64(&wrapped)})),
        )
        .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{operation}");
        assert!(
            refused.message().contains("supports RSA-OAEP (SHA-1) only")
                && refused.message().contains("use alg RSA-OAEP"),
            "{operation}: {}",
            refused.message()
        );
    }

    // A tampered ciphertext is the client's error, not the token's.
    let mut tampered = wrapped.clone();
    tampered[10] ^= 1;
    let bad = call(
        &router,
        Method::POST,
        &format!("{key_path}/unwrapkey?{VERSION}"),
        Some(json!({"alg": "RSA-OAEP", "value": b64(&tampered)})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);

    // Sign in the token; verify locally with the public key and through the vault.
    let message = b"a message signed inside the token";
    for (alg, digest_algorithm, verification) in [
        (
            "RS256",
            &digest::SHA256,
            &signature::RSA_PKCS1_2048_8192_SHA256,
        ),
        (
            "RS512",
            &digest::SHA512,
            &signature::RSA_PKCS1_2048_8192_SHA512,
        ),
        (
            "PS256",
            &digest::SHA256,
            &signature::RSA_PSS_2048_8192_SHA256,
        ),
        (
            "PS384",
            &digest::SHA384,
            &signature::RSA_PSS_2048_8192_SHA384,
        ),
    ] {
        let digest = digest::digest(digest_algorithm, message);
        let signed = call(
            &router,
            Method::POST,
            &format!("{key_path}/sign?{VERSION}"),
            Some(json!({"alg": alg, "value": b64(digest.as_ref())})),
        )
        .await;
        assert_eq!(signed.status, StatusCode::OK, "{alg}: {}", signed.body);
        let signature_bytes = unb64(&signed.body["value"]);
        public
            .verify(verification, message, &signature_bytes)
            .unwrap_or_else(|_| panic!("{alg} signature from the token does not verify"));
        assert!(
            public
                .verify(verification, b"another message", &signature_bytes,)
                .is_err()
        );
        let verified = call(
            &router,
            Method::POST,
            &format!("{key_path}/verify?{VERSION}"),
            Some(
                json!({"alg": alg, "digest": b64(digest.as_ref()), "value": b64(&signature_bytes)}),
            ),
        )
        .await;
        assert_eq!(verified.body["value"], true, "{alg}");
    }

    // Backup is refused: the key is non-extractable.
    let backup = call(
        &router,
        Method::POST,
        &format!("/keys/cmk/backup?{VERSION}"),
        None,
    )
    .await;
    assert_eq!(backup.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        backup.body["error"]["innererror"]["code"],
        "NonExtractableKey"
    );

    // The database holds the public key and the object id, no private key.
    let database = Database::connect(database_url).await.unwrap();
    let rows = sqlx::query(
        "SELECT version, sealed_private, pkcs11_id, public_n FROM keyvault_key_versions",
    )
    .fetch_all(database.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    let version: String = rows[0].try_get("version").unwrap();
    let sealed: Vec<u8> = rows[0].try_get("sealed_private").unwrap();
    let object_id: Vec<u8> = rows[0].try_get("pkcs11_id").unwrap();
    let stored_modulus: Vec<u8> = rows[0].try_get("public_n").unwrap();
    assert!(sealed.is_empty(), "a token key's row holds no private key");
    assert_eq!(object_id, hex::decode(&version).unwrap());
    assert_eq!(stored_modulus, modulus);
    database.pool().close().await;
    let mut at_rest = std::fs::read(database_path).unwrap();
    if let Ok(wal) = std::fs::read(database_path.with_extension("db-wal")) {
        at_rest.extend_from_slice(&wal);
    }
    assert!(
        at_rest
            .windows(modulus.len())
            .any(|window| window == modulus)
    );
    assert!(
        !at_rest
            .windows(PKCS8_RSA_MARKER.len())
            .any(|window| window == PKCS8_RSA_MARKER),
        "no PKCS#8 private key may be stored"
    );

    // In the token the private key is sensitive and has never been extractable.
    let session = inspection_session();
    let handles = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(object_id.clone()),
        ])
        .unwrap();
    assert_eq!(handles.len(), 1);
    let attributes = session
        .get_attributes(
            handles[0],
            &[
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::NeverExtractable,
                AttributeType::Label,
                AttributeType::PrivateExponent,
            ],
        )
        .unwrap();
    let mut label = Vec::new();
    for attribute in &attributes {
        match attribute {
            Attribute::Token(value)
            | Attribute::Private(value)
            | Attribute::Sensitive(value)
            | Attribute::NeverExtractable(value) => assert!(*value, "{attribute:?}"),
            Attribute::Extractable(value) => assert!(!*value),
            Attribute::Label(value) => label = value.clone(),
            Attribute::PrivateExponent(_) => panic!("the token revealed the private exponent"),
            _ => {}
        }
    }
    assert_eq!(attributes.len(), 6, "{attributes:?}");
    assert_eq!(
        String::from_utf8(label).unwrap(),
        format!("hds-keyvault/hsmvault/cmk/{version}")
    );

    // Another service on the same database and token finds the key by its id.
    let reopened = open_service(database_url, &root_key, pin_file).await;
    let reopened_router = data_plane(&reopened, &vault);
    let again = call(
        &reopened_router,
        Method::POST,
        &format!("{key_path}/unwrapkey?{VERSION}"),
        Some(json!({"alg": "RSA-OAEP", "value": b64(&wrapped)})),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(unb64(&again.body["value"]), data_key);

    // Rotation makes a new token key; purging the key destroys both objects.
    let rotated = call(
        &router,
        Method::POST,
        &format!("/keys/cmk/rotate?{VERSION}"),
        None,
    )
    .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    assert_eq!(rotated.body["key"]["kty"], "RSA-HSM");
    let rotated_version = rotated.body["key"]["kid"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let rotated_id = hex::decode(&rotated_version).unwrap();
    assert_eq!(private_keys_with_id(&session, &rotated_id), 1);
    let deleted = call(
        &router,
        Method::DELETE,
        &format!("/keys/cmk?{VERSION}"),
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.body);
    assert_eq!(
        private_keys_with_id(&session, &object_id),
        1,
        "soft delete keeps the key"
    );
    let purged = call(
        &router,
        Method::DELETE,
        &format!("/deletedkeys/cmk?{VERSION}"),
        None,
    )
    .await;
    assert_eq!(purged.status, StatusCode::NO_CONTENT, "{}", purged.body);
    assert_eq!(private_keys_with_id(&session, &object_id), 0);
    assert_eq!(private_keys_with_id(&session, &rotated_id), 0);

    // An imported RSA-HSM key goes into the token too and is usable there.
    let software = RsaKeyMaterial::generate(KeySize::Rsa2048).unwrap();
    let pkcs8 = software.to_pkcs8().unwrap();
    let parts = jwk_components(&pkcs8);
    let imported = call(
        &router,
        Method::PUT,
        &format!("/keys/imported?{VERSION}"),
        Some(json!({"Hsm": true, "key": {
            "kty": "RSA", "n": parts[0], "e": parts[1], "d": parts[2], "p": parts[3],
            "q": parts[4], "dp": parts[5], "dq": parts[6], "qi": parts[7],
        }})),
    )
    .await;
    assert_eq!(imported.status, StatusCode::OK, "{}", imported.body);
    assert_eq!(imported.body["key"]["kty"], "RSA-HSM");
    let imported_kid = imported.body["key"]["kid"].as_str().unwrap();
    let imported_version = imported_kid.rsplit('/').next().unwrap();
    assert_eq!(
        private_keys_with_id(&session, &hex::decode(imported_version).unwrap()),
        1
    );
    let locally_wrapped = software
        .encrypt(EncryptionAlgorithm::RsaOaep, &data_key)
        .unwrap();
    let unwrapped = call(
        &router,
        Method::POST,
        &format!("/keys/imported/{imported_version}/unwrapkey?{VERSION}"),
        Some(json!({"alg": "RSA-OAEP", "value": b64(&locally_wrapped)})),
    )
    .await;
    assert_eq!(unwrapped.status, StatusCode::OK, "{}", unwrapped.body);
    assert_eq!(unb64(&unwrapped.body["value"]), data_key);
    let database = Database::connect(database_url).await.unwrap();
    let sealed: Vec<u8> =
        sqlx::query("SELECT sealed_private FROM keyvault_key_versions WHERE name = 'imported'")
            .fetch_one(database.pool())
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
    assert!(sealed.is_empty());
    database.pool().close().await;
    let private_exponent = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
    let mut at_rest = std::fs::read(database_path).unwrap();
    if let Ok(wal) = std::fs::read(database_path.with_extension("db-wal")) {
        at_rest.extend_from_slice(&wal);
    }
    assert!(
        !at_rest
            .windows(private_exponent.len())
            .any(|window| window == private_exponent.as_slice()),
        "the imported private exponent must not be stored"
    );
}
