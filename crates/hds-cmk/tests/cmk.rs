//! The client, validation, the remote KEK and the monitor's real probe against a small HTTPS
//! vault stub that answers like Key Vault (including each failure), and once against hds's own
//! key vault listening in-process.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hds_cmk::client::BearerChallenge;
use hds_cmk::monitor::SystemClock;
use hds_cmk::token::TokenFuture;
use hds_cmk::validate::VaultFactsFuture;
use hds_cmk::{
    ClientConfig, CmkError, ForbiddenReason, KeyAccessMonitor, KeyBinding, KeyUrl, KeyUser,
    KeyValidator, KeyVaultClient, MonitorConfig, NoVaultDirectory, RemoteKek, TokenDestinations,
    TokenSource, ValidationCode, VaultDirectory, VaultFacts, VaultKeyProbe, WrapAlgorithm,
};
use hds_crypto::keys::{
    KekError, KeyEncryptionKey, LocalRsaKek, RSA_OAEP, RsaKeySize, ServiceRootKey, WrappedKey,
};
use hds_crypto::root::RootKey;
use hds_tls::LocalCa;
use serde_json::{Value, json};

const TENANT: &str = "tenant-1";
const PRINCIPAL: &str = "principal-1";
const V1: &str = "0000000000000000000000000000000a";
const V2: &str = "0000000000000000000000000000000b";

// ----- the stub vault -----

#[derive(Clone)]
struct StubVersion {
    version: String,
    kty: &'static str,
    size_bits: usize,
    key_ops: Vec<&'static str>,
    enabled: bool,
    nbf: Option<i64>,
    exp: Option<i64>,
}

impl StubVersion {
    fn rsa(version: &str) -> StubVersion {
        StubVersion {
            version: version.to_owned(),
            kty: "RSA",
            size_bits: 2048,
            key_ops: vec!["encrypt", "decrypt", "wrapKey", "unwrapKey"],
            enabled: true,
            nbf: None,
            exp: None,
        }
    }
}

struct StubState {
    tenant: String,
    /// token -> (principal, tenant)
    tokens: HashMap<String, (String, String)>,
    /// Principals holding a role on the keys.
    authorized: HashSet<String>,
    firewall_blocks: bool,
    server_error: bool,
    /// key name -> versions, oldest first
    keys: HashMap<String, Vec<StubVersion>>,
}

struct Stub {
    state: Mutex<StubState>,
    /// Every key's wrap/unwrap is done with these (one RSA key, two OAEP variants).
    kek_oaep256: LocalRsaKek,
    kek_oaep: LocalRsaKek,
    base_url: Mutex<String>,
}

type SharedStub = Arc<Stub>;

fn error(status: StatusCode, code: &str, inner: Option<&str>, message: &str) -> Response {
    let mut body = json!({"error": {"code": code, "message": message}});
    if let Some(inner) = inner {
        body["error"]["innererror"] = json!({"code": inner});
    }
    (status, Json(body)).into_response()
}

fn challenge(tenant: &str, message: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "Unauthorized", None, message);
    let value = format!(
        "Bearer authorization=\"https://login.stub.test/{tenant}\", resource=\"https://vault.azure.net\""
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, value.parse().unwrap());
    response
}

/// A refusal, boxed: responses are large.
type Refusal = Box<Response>;

/// The gate every request passes: token, tenant, firewall, RBAC.
fn admit(stub: &Stub, headers: &HeaderMap) -> Result<(), Refusal> {
    let state = stub.state.lock().unwrap();
    if state.server_error {
        return Err(Box::new(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            None,
            "down",
        )));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(bearer) = bearer else {
        return Err(Box::new(challenge(
            &state.tenant,
            "Request is missing a Bearer or PoP token.",
        )));
    };
    let Some((principal, tenant)) = state.tokens.get(bearer).cloned() else {
        return Err(Box::new(challenge(
            &state.tenant,
            "The token is not valid.",
        )));
    };
    if tenant != state.tenant {
        return Err(Box::new(challenge(
            &state.tenant,
            "AKV10032: Invalid issuer.",
        )));
    }
    if state.firewall_blocks {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("ForbiddenByFirewall"),
            "Client address is not authorized and caller is not a trusted service.",
        )));
    }
    if !state.authorized.contains(&principal) {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("ForbiddenByRbac"),
            &format!(
                "Caller is not authorized to perform action on resource. Caller: oid={principal}"
            ),
        )));
    }
    Ok(())
}

fn find_version(stub: &Stub, name: &str, version: Option<&str>) -> Result<StubVersion, Refusal> {
    let state = stub.state.lock().unwrap();
    let versions = state.keys.get(name);
    let found = match version {
        Some(version) => {
            versions.and_then(|versions| versions.iter().find(|v| v.version == version))
        }
        None => versions.and_then(|versions| versions.last()),
    };
    found.cloned().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "KeyNotFound",
            None,
            &format!("A key with (name/id) {name} was not found in this key vault."),
        ))
    })
}

async fn get_key(
    State(stub): State<SharedStub>,
    headers: HeaderMap,
    Path(path): Path<Vec<String>>,
) -> Response {
    if let Err(response) = admit(&stub, &headers) {
        return *response;
    }
    let name = &path[0];
    let version = path.get(1).map(String::as_str).filter(|v| !v.is_empty());
    let found = match find_version(&stub, name, version) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    let mut modulus = vec![0xc5u8; found.size_bits / 8];
    modulus[0] = 0x80 | 0x35;
    let base = stub.base_url.lock().unwrap().clone();
    let mut attributes = json!({"enabled": found.enabled, "recoveryLevel": "Recoverable"});
    if let Some(nbf) = found.nbf {
        attributes["nbf"] = json!(nbf);
    }
    if let Some(exp) = found.exp {
        attributes["exp"] = json!(exp);
    }
    Json(json!({
        "key": {
            "kid": format!("{base}keys/{name}/{}", found.version),
            "kty": found.kty,
            "key_ops": found.key_ops,
            "n": URL_SAFE_NO_PAD.encode(&modulus),
            "e": "AQAB",
        },
        "attributes": attributes,
    }))
    .into_response()
}

async fn get_key_latest(
    state: State<SharedStub>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    get_key(state, headers, Path(vec![name])).await
}

async fn get_key_version(
    state: State<SharedStub>,
    headers: HeaderMap,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    get_key(state, headers, Path(vec![name, version])).await
}

async fn list_keys(State(stub): State<SharedStub>, headers: HeaderMap) -> Response {
    match admit(&stub, &headers) {
        Ok(()) => Json(json!({"value": []})).into_response(),
        Err(response) => *response,
    }
}

async fn key_operation(
    State(stub): State<SharedStub>,
    headers: HeaderMap,
    Path((name, version, operation)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if let Err(response) = admit(&stub, &headers) {
        return *response;
    }
    let version = Some(version.as_str()).filter(|v| !v.is_empty());
    let found = match find_version(&stub, &name, version) {
        Ok(found) => found,
        Err(response) => return *response,
    };
    if !found.enabled {
        return error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("KeyDisabled"),
            &format!("Operation {operation} is not allowed on a disabled key."),
        );
    }
    let wanted = if operation == "wrapkey" {
        "wrapKey"
    } else {
        "unwrapKey"
    };
    if !found.key_ops.contains(&wanted) {
        return error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("KeyOperationForbidden"),
            &format!("Operation {wanted} is not permitted on this key."),
        );
    }
    let kek = match body["alg"].as_str() {
        Some("RSA-OAEP-256") => &stub.kek_oaep256,
        Some("RSA-OAEP") => &stub.kek_oaep,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                None,
                "unsupported alg",
            );
        }
    };
    let Some(value) = body["value"]
        .as_str()
        .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            None,
            "value must be base64url",
        );
    };
    let base = stub.base_url.lock().unwrap().clone();
    let kid = format!("{base}keys/{name}/{}", found.version);
    let result = if operation == "wrapkey" {
        kek.wrap_key_now(&value).map(|wrapped| wrapped.ciphertext)
    } else {
        let wrapped = WrappedKey {
            kid: kek.key_id().to_owned(),
            algorithm: body["alg"].as_str().unwrap_or_default().to_owned(),
            ciphertext: value,
        };
        kek.unwrap_key_now(&wrapped).map(|plain| plain.to_vec())
    };
    match result {
        Ok(bytes) => {
            Json(json!({"kid": kid, "value": URL_SAFE_NO_PAD.encode(bytes)})).into_response()
        }
        Err(_) => error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            None,
            "the ciphertext does not decrypt",
        ),
    }
}

struct StubServer {
    stub: SharedStub,
    handle: Handle,
    base_url: String,
    _ca_dir: tempfile::TempDir,
    ca_pem: std::path::PathBuf,
}

impl StubServer {
    async fn start() -> StubServer {
        let ca_dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(ca_dir.path(), &RootKey::generate()).unwrap();
        let kek_oaep256 = LocalRsaKek::generate("stub", RsaKeySize::Rsa2048).unwrap();
        let pkcs8 = kek_oaep256.to_pkcs8().unwrap();
        let kek_oaep = LocalRsaKek::from_pkcs8("stub", &pkcs8)
            .unwrap()
            .with_wrap_algorithm(RSA_OAEP)
            .unwrap();
        let mut keys = HashMap::new();
        keys.insert("cmk".to_owned(), vec![StubVersion::rsa(V1)]);
        let stub = Arc::new(Stub {
            state: Mutex::new(StubState {
                tenant: TENANT.to_owned(),
                tokens: HashMap::from([
                    (
                        "token-1".to_owned(),
                        (PRINCIPAL.to_owned(), TENANT.to_owned()),
                    ),
                    (
                        "token-foreign".to_owned(),
                        ("principal-f".to_owned(), "tenant-2".to_owned()),
                    ),
                    (
                        "token-norole".to_owned(),
                        ("principal-n".to_owned(), TENANT.to_owned()),
                    ),
                ]),
                authorized: HashSet::from([PRINCIPAL.to_owned(), "principal-f".to_owned()]),
                firewall_blocks: false,
                server_error: false,
                keys,
            }),
            kek_oaep256,
            kek_oaep,
            base_url: Mutex::new(String::new()),
        });
        let router = Router::new()
            .route("/keys", get(list_keys))
            .route("/keys/{name}", get(get_key_latest))
            .route("/keys/{name}/", get(get_key_latest))
            .route("/keys/{name}/{version}", get(get_key_version))
            .route("/keys/{name}/{version}/{operation}", post(key_operation))
            .with_state(Arc::clone(&stub));
        let listener =
            TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let base_url = format!("https://127.0.0.1:{}/", address.port());
        *stub.base_url.lock().unwrap() = base_url.clone();
        let tls = RustlsConfig::from_config(ca.server_config(&[]).unwrap());
        let handle = Handle::new();
        let server = axum_server::from_tcp_rustls(listener, tls).handle(handle.clone());
        tokio::spawn(async move {
            let _ = server.serve(router.into_make_service()).await;
        });
        StubServer {
            stub,
            handle,
            base_url,
            ca_pem: ca.ca_pem_path().to_owned(),
            _ca_dir: ca_dir,
        }
    }

    fn edit(&self, change: impl FnOnce(&mut StubState)) {
        change(&mut self.stub.state.lock().unwrap());
    }

    fn add_key(&self, name: &str, version: StubVersion) {
        self.edit(|state| state.keys.entry(name.to_owned()).or_default().push(version));
    }

    fn key_url(&self, name: &str, version: Option<&str>) -> String {
        match version {
            Some(version) => format!("{}keys/{name}/{version}", self.base_url),
            None => format!("{}keys/{name}", self.base_url),
        }
    }

    fn client(&self) -> KeyVaultClient {
        self.client_with(WrapAlgorithm::RsaOaep256)
    }

    fn client_with(&self, algorithm: WrapAlgorithm) -> KeyVaultClient {
        self.client_allowing(algorithm, self.destinations())
    }

    fn client_allowing(
        &self,
        algorithm: WrapAlgorithm,
        destinations: TokenDestinations,
    ) -> KeyVaultClient {
        KeyVaultClient::new(
            &ClientConfig {
                ca_pem_path: Some(self.ca_pem.clone()),
                trust_system_roots: false,
                wrap_algorithm: algorithm,
                ..ClientConfig::default()
            },
            destinations,
        )
        .unwrap()
    }

    /// Tokens may go to this stub, and nowhere else.
    fn destinations(&self) -> TokenDestinations {
        TokenDestinations::none().with_host(self.authority())
    }

    fn authority(&self) -> &str {
        self.base_url
            .trim_start_matches("https://")
            .trim_end_matches('/')
    }
}

impl Drop for StubServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

// ----- tokens and directories -----

/// Tokens by principal; unknown principals do not exist.
struct StaticTokens(HashMap<String, String>);

impl StaticTokens {
    fn stub() -> Arc<StaticTokens> {
        Arc::new(StaticTokens(HashMap::from([
            (PRINCIPAL.to_owned(), "token-1".to_owned()),
            ("principal-f".to_owned(), "token-foreign".to_owned()),
            ("principal-n".to_owned(), "token-norole".to_owned()),
        ])))
    }
}

impl TokenSource for StaticTokens {
    fn token(&self, principal_id: &str, resource: &str) -> TokenFuture<'_> {
        let result = if resource != hds_cmk::VAULT_RESOURCE {
            Err(CmkError::TokenUnavailable("wrong resource".into()))
        } else {
            self.0
                .get(principal_id)
                .cloned()
                .ok_or_else(|| CmkError::ManagedIdentityNotFound {
                    principal_id: principal_id.to_owned(),
                })
        };
        Box::pin(async move { result })
    }
}

/// A directory that knows one set of facts for every vault.
struct FixedDirectory(Option<VaultFacts>);

impl VaultDirectory for FixedDirectory {
    fn vault_facts<'a>(&'a self, _vault_base_url: &'a str) -> VaultFactsFuture<'a> {
        let facts = self.0.clone();
        Box::pin(async move { facts })
    }
}

fn good_facts() -> VaultFacts {
    VaultFacts {
        resource_id: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v"
            .into(),
        tenant_id: TENANT.into(),
        enable_soft_delete: true,
        enable_purge_protection: true,
        network_default_deny: false,
        bypass_azure_services: true,
    }
}

fn validator(server: &StubServer, facts: Option<VaultFacts>) -> KeyValidator {
    KeyValidator::new(
        server.client(),
        StaticTokens::stub(),
        Arc::new(FixedDirectory(facts)),
    )
}

fn user(principal_id: &str) -> KeyUser<'_> {
    KeyUser {
        principal_id,
        tenant_id: TENANT,
    }
}

async fn refusal(
    validator: &KeyValidator,
    key_url: &str,
    principal_id: &str,
) -> hds_cmk::ValidationError {
    validator
        .validate(key_url, user(principal_id))
        .await
        .expect_err("validation should refuse")
}

// ----- client -----

#[tokio::test]
async fn client_gets_wraps_and_unwraps() {
    let server = StubServer::start().await;
    let client = server.client();
    let url = KeyUrl::parse(&server.key_url("cmk", None)).unwrap();
    let facts = client.get_key(&url, "token-1").await.unwrap();
    assert_eq!(facts.kid.to_string(), server.key_url("cmk", Some(V1)));
    assert_eq!(
        (facts.kty.as_str(), facts.key_size, facts.enabled),
        ("RSA", 2048, true)
    );
    assert!(facts.permits("wrapKey") && facts.permits("unwrapKey"));

    let wrapped = client
        .wrap_key(&url, "token-1", b"thirty-two bytes of key material")
        .await
        .unwrap();
    assert_eq!(wrapped.kid, server.key_url("cmk", Some(V1)));
    assert_eq!(wrapped.algorithm, "RSA-OAEP-256");
    assert_eq!(wrapped.ciphertext.len(), 256);
    let unwrapped = client.unwrap_key("token-1", &wrapped).await.unwrap();
    assert_eq!(unwrapped.as_slice(), b"thirty-two bytes of key material");

    // RSA-OAEP (SHA-1) for HSMs that do no better.
    let sha1 = server.client_with(WrapAlgorithm::RsaOaep);
    let wrapped = sha1.wrap_key(&url, "token-1", b"k").await.unwrap();
    assert_eq!(wrapped.algorithm, "RSA-OAEP");
    assert_eq!(
        sha1.unwrap_key("token-1", &wrapped)
            .await
            .unwrap()
            .as_slice(),
        b"k"
    );
    // Unwrapping an altered ciphertext is refused by the vault.
    let mut altered = wrapped.clone();
    altered.ciphertext[10] ^= 1;
    assert!(matches!(
        sha1.unwrap_key("token-1", &altered).await,
        Err(CmkError::BadRequest { .. })
    ));
}

#[tokio::test]
async fn client_types_the_vaults_errors() {
    let server = StubServer::start().await;
    let client = server.client();
    let url = KeyUrl::parse(&server.key_url("cmk", Some(V1))).unwrap();
    assert!(matches!(
        client.get_key(&url, "token-norole").await,
        Err(CmkError::Forbidden {
            reason: ForbiddenReason::Rbac,
            ..
        })
    ));
    match client.get_key(&url, "bogus").await {
        Err(CmkError::Unauthorized {
            tenant_mismatch: false,
            message,
        }) => {
            assert!(message.contains("login.stub.test/tenant-1"), "{message}");
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert!(matches!(
        client.get_key(&url, "token-foreign").await,
        Err(CmkError::Unauthorized {
            tenant_mismatch: true,
            ..
        })
    ));
    let missing = KeyUrl::parse(&server.key_url("cmk", Some(V2))).unwrap();
    assert!(matches!(
        client.get_key(&missing, "token-1").await,
        Err(CmkError::KeyNotFound { .. })
    ));
    server.edit(|state| state.keys.get_mut("cmk").unwrap()[0].enabled = false);
    assert!(matches!(
        client.wrap_key(&url, "token-1", b"k").await,
        Err(CmkError::KeyDisabled { .. })
    ));
    server.edit(|state| state.firewall_blocks = true);
    assert!(matches!(
        client.get_key(&url, "token-1").await,
        Err(CmkError::Forbidden {
            reason: ForbiddenReason::Firewall,
            ..
        })
    ));
    server.edit(|state| state.server_error = true);
    let error = client.get_key(&url, "token-1").await.unwrap_err();
    assert!(matches!(error, CmkError::Server { status: 500, .. }));
    assert!(error.is_unreachable());

    // The challenge names the vault's tenant.
    server.edit(|state| state.server_error = false);
    let challenge: BearerChallenge = client.challenge(&url).await.unwrap().unwrap();
    assert_eq!(challenge.tenant_id(), Some(TENANT));

    // Nothing listens on the port (an allowed one): a network error.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let client = server.client_allowing(
        WrapAlgorithm::RsaOaep256,
        TokenDestinations::none().with_host(&format!("127.0.0.1:{port}")),
    );
    let gone = KeyUrl::parse(&format!("https://127.0.0.1:{port}/keys/cmk/{V1}")).unwrap();
    let error = client.get_key(&gone, "token-1").await.unwrap_err();
    assert!(matches!(error, CmkError::Network(_)), "{error:?}");
    assert!(error.is_unreachable());
}

#[tokio::test]
async fn client_refuses_an_untrusted_certificate() {
    let server = StubServer::start().await;
    let client = KeyVaultClient::new(
        &ClientConfig {
            ca_pem_path: None,
            trust_system_roots: true,
            ..ClientConfig::default()
        },
        server.destinations(),
    )
    .unwrap();
    let url = KeyUrl::parse(&server.key_url("cmk", None)).unwrap();
    assert!(matches!(
        client.get_key(&url, "token-1").await,
        Err(CmkError::Network(_))
    ));
    let bad_ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad_ca.path(), "not a certificate").unwrap();
    assert!(matches!(
        KeyVaultClient::new(
            &ClientConfig {
                ca_pem_path: Some(bad_ca.path().to_owned()),
                ..ClientConfig::default()
            },
            server.destinations(),
        ),
        Err(CmkError::Configuration(_))
    ));
}

// ----- validation -----

#[tokio::test]
async fn validation_accepts_good_keys() {
    let server = StubServer::start().await;
    server.add_key(
        "hsm",
        StubVersion {
            kty: "RSA-HSM",
            size_bits: 3072,
            ..StubVersion::rsa(V1)
        },
    );
    let checked = validator(&server, Some(good_facts()));
    let valid = checked
        .validate(&server.key_url("cmk", Some(V1)), user(PRINCIPAL))
        .await
        .unwrap();
    assert_eq!(valid.facts.version(), V1);
    assert!(valid.warnings.is_empty());
    let valid = checked
        .validate(&server.key_url("hsm", None), user(PRINCIPAL))
        .await
        .unwrap();
    assert_eq!(valid.facts.kid.to_string(), server.key_url("hsm", Some(V1)));
    assert!(!valid.key_url.is_versioned());
    // With a trailing slash, and a later version becoming the latest.
    server.add_key("cmk", StubVersion::rsa(V2));
    let valid = checked
        .validate(
            &format!("{}/", server.key_url("cmk", None)),
            user(PRINCIPAL),
        )
        .await
        .unwrap();
    assert_eq!(valid.facts.version(), V2);
    // A vault hds does not host: vault settings skipped with a warning, tenant still checked.
    let unknown = KeyValidator::new(
        server.client(),
        StaticTokens::stub(),
        Arc::new(NoVaultDirectory),
    );
    let valid = unknown
        .validate(&server.key_url("cmk", None), user(PRINCIPAL))
        .await
        .unwrap();
    assert_eq!(valid.warnings.len(), 1);
    assert!(valid.warnings[0].contains("purge protection"));
    let foreign = unknown
        .validate(
            &server.key_url("cmk", None),
            KeyUser {
                principal_id: PRINCIPAL,
                tenant_id: "tenant-9",
            },
        )
        .await
        .unwrap_err();
    assert_eq!(foreign.code, ValidationCode::KeyVaultTenantMismatch);
    assert!(
        foreign.message.contains("tenant-9") && foreign.message.contains(TENANT),
        "{}",
        foreign.message
    );
}

#[tokio::test]
async fn validation_names_each_key_problem() {
    let server = StubServer::start().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    server.add_key(
        "ec",
        StubVersion {
            kty: "EC",
            ..StubVersion::rsa(V1)
        },
    );
    server.add_key(
        "big",
        StubVersion {
            size_bits: 4096,
            ..StubVersion::rsa(V1)
        },
    );
    server.add_key(
        "noops",
        StubVersion {
            key_ops: vec!["wrapKey", "encrypt"],
            ..StubVersion::rsa(V1)
        },
    );
    server.add_key(
        "off",
        StubVersion {
            enabled: false,
            ..StubVersion::rsa(V1)
        },
    );
    server.add_key(
        "late",
        StubVersion {
            nbf: Some(now + 86_400),
            ..StubVersion::rsa(V1)
        },
    );
    server.add_key(
        "old",
        StubVersion {
            exp: Some(now - 86_400),
            ..StubVersion::rsa(V1)
        },
    );
    let checked = validator(&server, Some(good_facts()));

    let error = refusal(&checked, "http://vault/keys/k", PRINCIPAL).await;
    assert_eq!(error.code, ValidationCode::InvalidKeyEncryptionKeyUrl);
    let error = refusal(&checked, &server.key_url("nope", None), PRINCIPAL).await;
    assert_eq!(error.code, ValidationCode::KeyVaultKeyNotFound);
    assert!(error.message.contains("keys/nope"), "{}", error.message);
    let error = refusal(&checked, &server.key_url("cmk", Some(V2)), PRINCIPAL).await;
    assert_eq!(error.code, ValidationCode::KeyVaultKeyNotFound);
    let error = refusal(&checked, &server.key_url("ec", None), PRINCIPAL).await;
    assert_eq!(error.code, ValidationCode::KeyTypeNotSupported);
    assert!(
        error.message.contains("RSA or RSA-HSM"),
        "{}",
        error.message
    );
    let error = refusal(&checked, &server.key_url("big", None), PRINCIPAL).await;
    assert_eq!(error.code, ValidationCode::KeySizeNotSupported);
    assert!(
        error.message.contains("4096") && error.message.contains("2048-bit or 3072-bit"),
        "{}",
        error.message
    );
    let error = refusal(&checked, &server.key_url("noops", None), PRINCIPAL).await;
    assert_eq!(error.code, ValidationCode::KeyOperationsNotAllowed);
    assert!(error.message.contains("unwrapKey"), "{}", error.message);
    let error = refusal(&checked, &server.key_url("off", None), PRINCIPAL).await;
    assert_eq!(error.code, ValidationCode::KeyDisabled);
    let error = refusal(&checked, &server.key_url("late", None), PRINCIPAL).await;
    assert_eq!(error.code, ValidationCode::KeyNotYetValid);
    let error = refusal(&checked, &server.key_url("old", None), PRINCIPAL).await;
    assert_eq!(error.code, ValidationCode::KeyExpired);
}

#[tokio::test]
async fn validation_names_each_vault_and_identity_problem() {
    let server = StubServer::start().await;
    let url = server.key_url("cmk", Some(V1));
    let with = |facts: VaultFacts| validator(&server, Some(facts));

    let error = refusal(
        &with(VaultFacts {
            tenant_id: "tenant-2".into(),
            ..good_facts()
        }),
        &url,
        PRINCIPAL,
    )
    .await;
    assert_eq!(error.code, ValidationCode::KeyVaultTenantMismatch);
    let error = refusal(
        &with(VaultFacts {
            enable_soft_delete: false,
            ..good_facts()
        }),
        &url,
        PRINCIPAL,
    )
    .await;
    assert_eq!(error.code, ValidationCode::KeyVaultSoftDeleteDisabled);
    let error = refusal(
        &with(VaultFacts {
            enable_purge_protection: false,
            ..good_facts()
        }),
        &url,
        PRINCIPAL,
    )
    .await;
    assert_eq!(error.code, ValidationCode::KeyVaultPurgeProtectionDisabled);
    let error = refusal(
        &with(VaultFacts {
            network_default_deny: true,
            bypass_azure_services: false,
            ..good_facts()
        }),
        &url,
        PRINCIPAL,
    )
    .await;
    assert_eq!(
        error.code,
        ValidationCode::KeyVaultFirewallBlocksTrustedServices
    );
    assert!(error.message.contains("AzureServices"), "{}", error.message);
    // Denying by default with the bypass on is fine.
    assert!(
        with(VaultFacts {
            network_default_deny: true,
            ..good_facts()
        })
        .validate(&url, user(PRINCIPAL))
        .await
        .is_ok()
    );

    let checked = validator(&server, Some(good_facts()));
    let error = refusal(&checked, &url, "principal-gone").await;
    assert_eq!(error.code, ValidationCode::ManagedIdentityNotFound);
    assert!(
        error.message.contains("principal-gone"),
        "{}",
        error.message
    );
    let error = refusal(&checked, &url, "principal-n").await;
    assert_eq!(error.code, ValidationCode::KeyAccessDenied);
    assert!(error.message.contains("principal-n"), "{}", error.message);
    assert!(
        error
            .message
            .contains("Key Vault Crypto Service Encryption User"),
        "{}",
        error.message
    );
    assert!(
        error
            .message
            .contains("e147488a-f6f5-4113-8e2d-b22465e65bf6"),
        "{}",
        error.message
    );
    // The identity's token is from another tenant than the vault's (the facts said otherwise).
    let error = refusal(&checked, &url, "principal-f").await;
    assert_eq!(error.code, ValidationCode::KeyVaultTenantMismatch);

    server.edit(|state| state.firewall_blocks = true);
    let error = refusal(&checked, &url, PRINCIPAL).await;
    assert_eq!(
        error.code,
        ValidationCode::KeyVaultFirewallBlocksTrustedServices
    );
    server.edit(|state| {
        state.firewall_blocks = false;
        state.server_error = true;
    });
    let error = refusal(&checked, &url, PRINCIPAL).await;
    assert_eq!(error.code, ValidationCode::KeyVaultUnreachable);
    // An allowed host where nothing listens: unreachable.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let open = KeyValidator::new(
        server.client_allowing(
            WrapAlgorithm::RsaOaep256,
            TokenDestinations::none().with_host(&format!("127.0.0.1:{port}")),
        ),
        StaticTokens::stub(),
        Arc::new(FixedDirectory(None)),
    );
    let error = refusal(
        &open,
        &format!("https://127.0.0.1:{port}/keys/cmk"),
        PRINCIPAL,
    )
    .await;
    assert_eq!(error.code, ValidationCode::KeyVaultUnreachable);
}

// ----- the remote KEK -----

#[tokio::test]
async fn remote_kek_wraps_the_service_root_key() {
    let server = StubServer::start().await;
    let url = KeyUrl::parse(&server.key_url("cmk", None)).unwrap();
    let versionless = RemoteKek::new(
        server.client(),
        StaticTokens::stub(),
        PRINCIPAL,
        url.clone(),
    );
    assert_eq!(
        versionless.unwrap_err(),
        hds_cmk::KeyUrlError::VersionRequired
    );
    let kek = RemoteKek::latest(server.client(), StaticTokens::stub(), PRINCIPAL, &url)
        .await
        .unwrap();
    assert_eq!(kek.key_id(), server.key_url("cmk", Some(V1)));
    let root = ServiceRootKey::generate();
    let wrapped = root.wrap_with(&kek).await.unwrap();
    assert_eq!(wrapped.kid, server.key_url("cmk", Some(V1)));
    let unwrapped = ServiceRootKey::unwrap_with(&kek, &wrapped).await.unwrap();
    // Same key: a study key wrapped by one opens under the other.
    let study = hds_crypto::keys::StudyKey::generate();
    let sealed = root.wrap_study_key("svc", b"study", &study);
    assert!(unwrapped.unwrap_study_key("svc", b"study", &sealed).is_ok());

    // After a rotation, a key wrapped by the older version still unwraps.
    server.add_key("cmk", StubVersion::rsa(V2));
    let rotated = RemoteKek::latest(server.client(), StaticTokens::stub(), PRINCIPAL, &url)
        .await
        .unwrap();
    assert_eq!(rotated.key_id(), server.key_url("cmk", Some(V2)));
    assert!(
        ServiceRootKey::unwrap_with(&rotated, &wrapped)
            .await
            .is_ok()
    );

    // A key wrapped by another key is refused without asking the vault.
    let foreign = WrappedKey {
        kid: server.key_url("other", Some(V1)),
        ..wrapped.clone()
    };
    assert_eq!(
        ServiceRootKey::unwrap_with(&kek, &foreign)
            .await
            .unwrap_err(),
        KekError::WrongKey
    );
    let unknown_alg = WrappedKey {
        algorithm: "RSA1_5".into(),
        ..wrapped.clone()
    };
    assert!(matches!(
        ServiceRootKey::unwrap_with(&kek, &unknown_alg).await,
        Err(KekError::UnsupportedAlgorithm(_))
    ));
    let mut altered = wrapped.clone();
    altered.ciphertext[0] ^= 1;
    assert_eq!(
        ServiceRootKey::unwrap_with(&kek, &altered)
            .await
            .unwrap_err(),
        KekError::UnwrapFailed
    );

    // Lost access, disabled key, vault down: the errors the monitor tells apart.
    server.edit(|state| {
        state.authorized.remove(PRINCIPAL);
    });
    assert_eq!(
        ServiceRootKey::unwrap_with(&kek, &wrapped)
            .await
            .unwrap_err(),
        KekError::AccessDenied
    );
    server.edit(|state| {
        state.authorized.insert(PRINCIPAL.to_owned());
        state.keys.get_mut("cmk").unwrap()[0].enabled = false;
    });
    assert_eq!(
        ServiceRootKey::unwrap_with(&kek, &wrapped)
            .await
            .unwrap_err(),
        KekError::KeyNotFoundOrDisabled
    );
    server.edit(|state| state.server_error = true);
    assert!(matches!(
        root.wrap_with(&kek).await,
        Err(KekError::Unavailable(_))
    ));
    let gone = RemoteKek::new(
        server.client(),
        StaticTokens::stub(),
        "principal-gone",
        kek.key_url().clone(),
    )
    .unwrap();
    server.edit(|state| state.server_error = false);
    assert_eq!(
        root.wrap_with(&gone).await.unwrap_err(),
        KekError::AccessDenied
    );
}

// ----- the monitor's real probe -----

#[tokio::test]
async fn monitor_probes_the_vault() {
    let server = StubServer::start().await;
    let directory = tempfile::tempdir().unwrap();
    let database = hds_db::Database::connect(&format!(
        "sqlite:{}",
        directory.path().join("hds.db").display()
    ))
    .await
    .unwrap();
    let probe = Arc::new(VaultKeyProbe::new(
        server.client(),
        StaticTokens::stub(),
        Arc::new(SystemClock),
    ));
    let monitor = KeyAccessMonitor::open(
        database,
        MonitorConfig::default(),
        probe,
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let binding = KeyBinding {
        key_url: KeyUrl::parse(&server.key_url("cmk", None)).unwrap(),
        principal_id: PRINCIPAL.into(),
        tenant_id: TENANT.into(),
    };
    monitor.register("svc", binding).await.unwrap();
    assert!(monitor.probe_now("svc").await.unwrap().is_healthy());
    assert_eq!(
        monitor.current_key_id("svc"),
        Some(server.key_url("cmk", Some(V1)))
    );

    server.edit(|state| {
        state.authorized.remove(PRINCIPAL);
    });
    let state = monitor.probe_now("svc").await.unwrap();
    assert_eq!(state.name(), "KeyAccessLost");
    assert_eq!(
        state.reason().unwrap().code,
        ValidationCode::KeyAccessDenied
    );
    server.edit(|state| state.keys.get_mut("cmk").unwrap()[0].enabled = false);
    server.edit(|state| {
        state.authorized.insert(PRINCIPAL.to_owned());
    });
    let state = monitor.probe_now("svc").await.unwrap();
    assert_eq!(state.reason().unwrap().code, ValidationCode::KeyDisabled);
    server.edit(|state| state.keys.get_mut("cmk").unwrap()[0].enabled = true);
    server.add_key("cmk", StubVersion::rsa(V2));
    assert!(monitor.probe_now("svc").await.unwrap().is_healthy());
    assert_eq!(
        monitor.current_key_id("svc"),
        Some(server.key_url("cmk", Some(V2)))
    );
}

// ----- where tokens go -----

/// A plain TCP listener that records whether anyone connected: a host that is not a vault.
struct PlainListener {
    listener: TcpListener,
}

impl PlainListener {
    fn bind() -> PlainListener {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        PlainListener { listener }
    }

    fn key_url(&self, version: Option<&str>) -> String {
        let port = self.listener.local_addr().unwrap().port();
        match version {
            Some(version) => format!("https://127.0.0.1:{port}/keys/cmk/{version}"),
            None => format!("https://127.0.0.1:{port}/keys/cmk"),
        }
    }

    /// Whether a connection is waiting. A refused request returns before it would connect, so
    /// once the call under test has returned, any connection it made is already queued here.
    fn saw_a_connection(&self) -> bool {
        match self.listener.accept() {
            Ok(_) => true,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(error) => panic!("accept failed: {error}"),
        }
    }
}

#[tokio::test]
async fn tokens_go_nowhere_but_allowed_vaults() {
    let server = StubServer::start().await;
    let elsewhere = PlainListener::bind();
    let client = server.client();
    let url = KeyUrl::parse(&elsewhere.key_url(Some(V1))).unwrap();

    // Every request the client makes is refused before it connects.
    let refused = |result: Result<(), CmkError>| match result {
        Err(CmkError::DestinationNotAllowed { host }) => {
            assert_eq!(host, url.authority());
        }
        other => panic!("expected a refused destination, got {other:?}"),
    };
    refused(client.get_key(&url, "token-1").await.map(drop));
    refused(client.challenge(&url).await.map(drop));
    refused(client.wrap_key(&url, "token-1", b"k").await.map(drop));
    let wrapped = WrappedKey {
        kid: url.to_string(),
        algorithm: "RSA-OAEP-256".into(),
        ciphertext: vec![0; 256],
    };
    refused(client.unwrap_key("token-1", &wrapped).await.map(drop));
    assert!(!elsewhere.saw_a_connection());

    // Validation names the rule, whatever the directory knows (here: nothing) ...
    for facts in [None, Some(good_facts())] {
        let error = refusal(
            &validator(&server, facts),
            &elsewhere.key_url(None),
            PRINCIPAL,
        )
        .await;
        assert_eq!(error.code, ValidationCode::KeyVaultHostNotAllowed);
        assert!(error.message.contains("serves"), "{}", error.message);
        assert!(error.message.contains(url.authority()), "{}", error.message);
    }
    assert!(!elsewhere.saw_a_connection());

    // ... and so do the remote key and the monitor's probe.
    let kek = RemoteKek::new(client.clone(), StaticTokens::stub(), PRINCIPAL, url.clone()).unwrap();
    assert_eq!(
        kek.wrap_key(b"thirty-two bytes of key material")
            .await
            .unwrap_err(),
        KekError::AccessDenied
    );
    let directory = tempfile::tempdir().unwrap();
    let database = hds_db::Database::connect(&format!(
        "sqlite:{}",
        directory.path().join("hds.db").display()
    ))
    .await
    .unwrap();
    let probe = Arc::new(VaultKeyProbe::new(
        client.clone(),
        StaticTokens::stub(),
        Arc::new(SystemClock),
    ));
    let monitor = KeyAccessMonitor::open(
        database,
        MonitorConfig::default(),
        probe,
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let binding = KeyBinding {
        key_url: url.clone(),
        principal_id: PRINCIPAL.into(),
        tenant_id: TENANT.into(),
    };
    monitor.register("svc", binding).await.unwrap();
    let state = monitor.probe_now("svc").await.unwrap();
    assert_eq!(state.name(), "KeyAccessLost");
    assert_eq!(
        state.reason().unwrap().code,
        ValidationCode::KeyVaultHostNotAllowed
    );
    assert!(!elsewhere.saw_a_connection());

    // The control: the same client reaches the stub it allows, and a client allowing the
    // listener's host does connect to it (so the checks above could have failed).
    assert!(
        client
            .get_key(
                &KeyUrl::parse(&server.key_url("cmk", None)).unwrap(),
                "token-1"
            )
            .await
            .is_ok()
    );
    let open = server.client_allowing(
        WrapAlgorithm::RsaOaep256,
        TokenDestinations::none().with_host(url.authority()),
    );
    let error = open.get_key(&url, "token-1").await.unwrap_err();
    assert!(matches!(error, CmkError::Network(_)), "{error:?}");
    assert!(elsewhere.saw_a_connection());
}

// ----- against hds's own key vault -----

mod real_vault {
    use super::*;
    use hds_keyvault::access::Caller;
    use hds_keyvault::model::{CreateKeyOptions, KeyType, VaultProperties};
    use hds_keyvault::{
        DataPlaneState, KeyVaultService, ServiceConfig, StaticAccessControl, VaultAddressing,
        VaultListeners,
    };

    /// Facts from the vault service, found by data-plane base URL.
    struct ServiceDirectory(Arc<KeyVaultService>);

    impl VaultDirectory for ServiceDirectory {
        fn vault_facts<'a>(&'a self, vault_base_url: &'a str) -> VaultFactsFuture<'a> {
            Box::pin(async move {
                let vaults = self.0.list_vaults().await.ok()?;
                let vault = vaults
                    .into_iter()
                    .find(|vault| vault.vault_uri == vault_base_url)?;
                let acls = &vault.properties.network_acls;
                Some(VaultFacts {
                    resource_id: vault.resource_id.clone(),
                    tenant_id: vault.properties.tenant_id.clone(),
                    enable_soft_delete: vault.properties.enable_soft_delete,
                    enable_purge_protection: vault.properties.enable_purge_protection,
                    network_default_deny: acls.default_action
                        == hds_keyvault::model::DefaultAction::Deny,
                    bypass_azure_services: acls.bypass
                        == hds_keyvault::model::Bypass::AzureServices,
                })
            })
        }
    }

    #[tokio::test]
    async fn validates_and_wraps_against_hds_keyvault() {
        let data_dir = tempfile::tempdir().unwrap();
        let root_key = Arc::new(RootKey::generate());
        let database = hds_db::Database::connect(&format!(
            "sqlite:{}",
            data_dir.path().join("hds.db").display()
        ))
        .await
        .unwrap();
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let service = Arc::new(
            KeyVaultService::open(
                database.clone(),
                Arc::clone(&root_key),
                ServiceConfig {
                    addressing: VaultAddressing::Loopback { address: loopback },
                },
            )
            .await
            .unwrap(),
        );
        let access = Arc::new(StaticAccessControl::new());
        let caller = |principal: &str| Caller {
            principal_id: principal.to_owned(),
            tenant_id: TENANT.to_owned(),
            is_trusted_service: true,
        };
        access.add_token("token-1", caller(PRINCIPAL));
        access.add_token("token-norole", caller("principal-n"));
        for action in [
            "Microsoft.KeyVault/vaults/keys/read",
            "Microsoft.KeyVault/vaults/keys/wrap/action",
            "Microsoft.KeyVault/vaults/keys/unwrap/action",
        ] {
            access.grant(PRINCIPAL, action);
        }
        let mut properties = VaultProperties::new(TENANT);
        properties.enable_purge_protection = true;
        let (vault, _) = service
            .create_or_update_vault(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/cmkvault",
                "cmkvault",
                properties,
            )
            .await
            .unwrap();
        let bundle = service
            .create_key(&vault, "cmk", CreateKeyOptions::rsa(KeyType::Rsa))
            .await
            .unwrap();
        let mut big = CreateKeyOptions::rsa(KeyType::RsaHsm);
        big.key_size = Some(4096);
        service.create_key(&vault, "big", big).await.unwrap();

        let ca = LocalCa::load_or_create(&data_dir.path().join("tls"), &root_key).unwrap();
        let state = DataPlaneState {
            service: Arc::clone(&service),
            access: access.clone(),
            token_authority: "https://127.0.0.1:1".into(),
        };
        let listeners = VaultListeners::new(state, ca.server_config(&[]).unwrap(), loopback);
        listeners.start_all().await.unwrap();

        // Tokens go to the vaults the service serves, found as validation finds them.
        let served: Arc<dyn VaultDirectory> = Arc::new(ServiceDirectory(Arc::clone(&service)));
        let client = KeyVaultClient::new(
            &ClientConfig {
                ca_pem_path: Some(ca.ca_pem_path().to_owned()),
                trust_system_roots: false,
                ..ClientConfig::default()
            },
            TokenDestinations::none().with_served_vaults(served.clone()),
        )
        .unwrap();
        let checked = KeyValidator::new(client.clone(), StaticTokens::stub(), served);
        let key_url = bundle.key_uri_with_version();
        let valid = checked.validate(&key_url, user(PRINCIPAL)).await.unwrap();
        assert_eq!(valid.facts.kid.to_string(), key_url);
        assert_eq!(valid.facts.key_size, 2048);
        assert!(valid.warnings.is_empty());
        let versionless = checked
            .validate(&bundle.key_uri(), user(PRINCIPAL))
            .await
            .unwrap();
        assert_eq!(versionless.facts.kid.to_string(), key_url);

        let error = checked
            .validate(&key_url, user("principal-n"))
            .await
            .unwrap_err();
        assert_eq!(error.code, ValidationCode::KeyAccessDenied);
        assert!(error.message.contains("principal-n"), "{}", error.message);
        let error = checked
            .validate(&format!("{}keys/big", vault.vault_uri), user(PRINCIPAL))
            .await
            .unwrap_err();
        assert_eq!(error.code, ValidationCode::KeySizeNotSupported);
        let error = checked
            .validate(&format!("{}keys/absent", vault.vault_uri), user(PRINCIPAL))
            .await
            .unwrap_err();
        assert_eq!(error.code, ValidationCode::KeyVaultKeyNotFound);
        // Purge protection is on; a vault without it is refused.
        let (bare, _) = service
            .create_or_update_vault(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/barevault",
                "barevault",
                VaultProperties::new(TENANT),
            )
            .await
            .unwrap();
        let error = checked
            .validate(&format!("{}keys/cmk", bare.vault_uri), user(PRINCIPAL))
            .await
            .unwrap_err();
        assert_eq!(error.code, ValidationCode::KeyVaultPurgeProtectionDisabled);

        // Without vault facts: the tenant comes from the vault's bearer challenge.
        let unknown = KeyValidator::new(
            client.clone(),
            StaticTokens::stub(),
            Arc::new(NoVaultDirectory),
        );
        let valid = unknown.validate(&key_url, user(PRINCIPAL)).await.unwrap();
        assert_eq!(valid.warnings.len(), 1);
        let other_tenant = KeyUser {
            principal_id: PRINCIPAL,
            tenant_id: "tenant-2",
        };
        let error = unknown.validate(&key_url, other_tenant).await.unwrap_err();
        assert_eq!(error.code, ValidationCode::KeyVaultTenantMismatch);

        let kek = RemoteKek::new(
            client.clone(),
            StaticTokens::stub(),
            PRINCIPAL,
            valid.facts.kid.clone(),
        )
        .unwrap();
        let root = ServiceRootKey::generate();
        let wrapped = root.wrap_with(&kek).await.unwrap();
        assert_eq!(wrapped.kid, key_url);
        assert!(ServiceRootKey::unwrap_with(&kek, &wrapped).await.is_ok());
        access.revoke(PRINCIPAL, "Microsoft.KeyVault/vaults/keys/unwrap/action");
        assert_eq!(
            ServiceRootKey::unwrap_with(&kek, &wrapped)
                .await
                .unwrap_err(),
            KekError::AccessDenied
        );

        listeners.shutdown();
        database.close().await;
    }
}
