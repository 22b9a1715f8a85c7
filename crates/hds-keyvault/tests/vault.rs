//! The vault's domain and data plane: the HTTP API through `oneshot`, access control and the
//! firewall, soft delete and purge protection, sealing and persistence, and one real HTTPS
//! listener.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hds_crypto::root::RootKey;
use hds_db::Database;
use hds_keyvault::access::Caller;
use hds_keyvault::material::RsaKeyMaterial;
use hds_keyvault::model::{
    AccessPolicy, CreateKeyOptions, DefaultAction, KeyPermission, KeyType, NetworkAcls, Vault,
    VaultProperties,
};
use hds_keyvault::service::Clock;
use hds_keyvault::{
    DataPlaneState, KeyVaultService, ServiceConfig, StaticAccessControl, VaultAddressing,
    VaultListeners, VaultSelector, data_plane_router,
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::Row;
use tower::ServiceExt;

const TENANT: &str = "tenant-1";
const OFFICER: &str = "officer-oid";
const READER: &str = "reader-oid";
const TRUSTED: &str = "trusted-oid";
const VERSION: &str = "api-version=7.5";

/// A clock tests move by hand.
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

struct Fixture {
    _data_dir: tempfile::TempDir,
    database_url: String,
    root_key: Arc<RootKey>,
    service: Arc<KeyVaultService>,
    access: Arc<StaticAccessControl>,
    clock: Arc<ManualClock>,
}

impl Fixture {
    async fn new() -> Fixture {
        let data_dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite:{}", data_dir.path().join("hds.db").display());
        Fixture::on(data_dir, database_url).await
    }

    async fn postgres() -> Fixture {
        let cluster = hds_db::testing::PostgresCluster::shared().unwrap();
        let database_url = cluster.fresh_database().await.unwrap();
        Fixture::on(tempfile::tempdir().unwrap(), database_url).await
    }

    async fn on(data_dir: tempfile::TempDir, database_url: String) -> Fixture {
        let root_key = Arc::new(RootKey::generate());
        let clock = Arc::new(ManualClock(AtomicI64::new(1_800_000_000)));
        let service = Arc::new(open_service(&database_url, &root_key, Arc::clone(&clock)).await);
        let access = Arc::new(StaticAccessControl::new());
        let caller = |principal: &str, trusted: bool| Caller {
            principal_id: principal.to_owned(),
            tenant_id: TENANT.to_owned(),
            is_trusted_service: trusted,
        };
        access.add_token("officer", caller(OFFICER, false));
        access.add_token("reader", caller(READER, false));
        access.add_token("trusted", caller(TRUSTED, true));
        access.add_token(
            "foreign",
            Caller {
                principal_id: OFFICER.into(),
                tenant_id: "other-tenant".into(),
                is_trusted_service: false,
            },
        );
        access.grant(OFFICER, "*");
        access.grant(TRUSTED, "*");
        access.grant(READER, "Microsoft.KeyVault/vaults/keys/read");
        Fixture {
            _data_dir: data_dir,
            database_url,
            root_key,
            service,
            access,
            clock,
        }
    }

    async fn vault(&self, name: &str, edit: impl FnOnce(&mut VaultProperties)) -> Vault {
        let mut properties = VaultProperties::new(TENANT);
        edit(&mut properties);
        let resource_id = format!(
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/{name}"
        );
        self.service
            .create_or_update_vault(&resource_id, name, properties)
            .await
            .unwrap()
            .0
    }

    fn router(&self, vault: &Vault, client: IpAddr) -> Router {
        let state = DataPlaneState {
            service: Arc::clone(&self.service),
            access: self.access.clone(),
            token_authority: "https://login.hds.test".into(),
        };
        data_plane_router(state, VaultSelector::Fixed(vault.name.clone()))
            .layer(MockConnectInfo(SocketAddr::new(client, 50_000)))
    }

    fn advance_days(&self, days: i64) {
        self.clock.0.fetch_add(days * 86_400, Ordering::SeqCst);
    }
}

async fn open_service(
    database_url: &str,
    root_key: &Arc<RootKey>,
    clock: Arc<ManualClock>,
) -> KeyVaultService {
    let database = Database::connect(database_url).await.unwrap();
    let config = ServiceConfig {
        addressing: VaultAddressing::Loopback {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        },
    };
    KeyVaultService::open(database, Arc::clone(root_key), config)
        .await
        .unwrap()
        .with_clock(clock)
}

fn loopback() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
}

impl Answer {
    fn inner_code(&self) -> &str {
        self.body["error"]["innererror"]["code"]
            .as_str()
            .unwrap_or("")
    }

    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => request.body(Body::empty()).unwrap(),
    };
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Answer {
        status,
        headers,
        body,
    }
}

async fn create(router: &Router, name: &str, body: Value) -> Answer {
    call(
        router,
        Method::POST,
        &format!("/keys/{name}/create?{VERSION}"),
        Some("officer"),
        Some(body),
    )
    .await
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(value: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(value.as_str().unwrap()).unwrap()
}

/// `kid` → the path after the vault URL.
fn path_of(kid: &str, vault: &Vault) -> String {
    format!("/{}", kid.strip_prefix(&vault.vault_uri).unwrap())
}

#[tokio::test]
async fn request_without_token_is_challenged_before_the_body_is_read() {
    let fixture = Fixture::new().await;
    let vault = fixture.vault("challenged", |_| {}).await;
    let router = fixture.router(&vault, loopback());
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("/keys/k/create?{VERSION}"))
        .body(Body::from("this is not json"))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = response.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer authorization=\"https://login.hds.test/{TENANT}\", resource=\"https://vault.azure.net\""
        )
    );

    let unknown = call(
        &router,
        Method::GET,
        &format!("/keys?{VERSION}"),
        Some("nonsense"),
        None,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert!(unknown.headers.contains_key(header::WWW_AUTHENTICATE));
    let foreign = call(
        &router,
        Method::GET,
        &format!("/keys?{VERSION}"),
        Some("foreign"),
        None,
    )
    .await;
    assert_eq!(foreign.status, StatusCode::UNAUTHORIZED);
    assert!(foreign.message().contains("tenant"));
}

#[tokio::test]
async fn api_version_is_required_and_dated_versions_are_accepted() {
    let fixture = Fixture::new().await;
    let vault = fixture.vault("versions", |_| {}).await;
    let router = fixture.router(&vault, loopback());
    let missing = call(&router, Method::GET, "/keys", Some("officer"), None).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.body["error"]["code"], "BadParameter");
    assert!(missing.message().contains("api-version"));
    let wrong = call(
        &router,
        Method::GET,
        "/keys?api-version=1.0",
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    // Query names are percent-decoded like values: the JavaScript SDK sends `api%2Dversion`.
    let encoded = call(
        &router,
        Method::GET,
        "/keys?api%2Dversion=7%2E5&maxresults=5",
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(encoded.status, StatusCode::OK, "{:?}", encoded.body);
    let encoded_wrong = call(
        &router,
        Method::GET,
        "/keys?api%2Dversion=1.0",
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(encoded_wrong.status, StatusCode::BAD_REQUEST);
    assert!(encoded_wrong.message().contains("not recognized"));
    for version in ["7.4", "7.6-preview.2", "2016-10-01"] {
        let listed = call(
            &router,
            Method::GET,
            &format!("/keys?api-version={version}"),
            Some("officer"),
            None,
        )
        .await;
        assert_eq!(listed.status, StatusCode::OK, "{version}");
    }
}

#[tokio::test]
async fn create_get_wrap_unwrap_sign_verify() {
    create_get_wrap_unwrap_sign_verify_on(Fixture::new().await).await;
}

async fn create_get_wrap_unwrap_sign_verify_on(fixture: Fixture) {
    let vault = fixture.vault("crypto", |_| {}).await;
    let router = fixture.router(&vault, loopback());
    let created = create(
        &router,
        "Kek",
        json!({"kty": "RSA", "key_size": 2048, "tags": {"a": "b"}}),
    )
    .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    let key = &created.body["key"];
    let kid = key["kid"].as_str().unwrap();
    let version = kid.rsplit('/').next().unwrap();
    assert_eq!(kid, format!("{}keys/Kek/{version}", vault.vault_uri));
    assert_eq!(version.len(), 32);
    assert!(version.bytes().all(|byte| byte.is_ascii_hexdigit()));
    assert_eq!(unb64(&key["n"]).len(), 256);
    assert_eq!(unb64(&key["e"]), vec![1, 0, 1]);
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        assert!(
            key.get(private).is_none(),
            "{private} must never be returned"
        );
    }
    assert_eq!(
        created.body["attributes"]["recoveryLevel"],
        "Recoverable+Purgeable"
    );
    assert_eq!(created.body["attributes"]["recoverableDays"], 90);
    assert_eq!(created.body["tags"]["a"], "b");

    // Names are case-insensitive; the latest is served at /keys/{name}/ too (as the SDK asks).
    let latest = call(
        &router,
        Method::GET,
        &format!("/keys/kek/?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(latest.body["key"]["kid"], kid);
    let by_version = call(
        &router,
        Method::GET,
        &format!("{}?{VERSION}", path_of(kid, &vault)),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(by_version.body["key"]["n"], key["n"]);

    let secret = [7u8; 32];
    let wrapped = call(
        &router,
        Method::POST,
        &format!("{}/wrapkey?{VERSION}", path_of(kid, &vault)),
        Some("officer"),
        Some(json!({"alg": "RSA-OAEP-256", "value": b64(&secret)})),
    )
    .await;
    assert_eq!(wrapped.status, StatusCode::OK, "{:?}", wrapped.body);
    assert_eq!(wrapped.body["kid"], kid);
    let unwrapped = call(
        &router,
        Method::POST,
        &format!("{}/unwrapkey?{VERSION}", path_of(kid, &vault)),
        Some("officer"),
        Some(json!({"alg": "RSA-OAEP-256", "value": wrapped.body["value"]})),
    )
    .await;
    assert_eq!(unb64(&unwrapped.body["value"]), secret);
    // A versionless key id: the SDKs send an empty version segment and get the latest.
    let latest_unwrap = call(
        &router,
        Method::POST,
        &format!("/keys/Kek//unwrapkey?{VERSION}"),
        Some("officer"),
        Some(json!({"alg": "RSA-OAEP-256", "value": wrapped.body["value"]})),
    )
    .await;
    assert_eq!(
        latest_unwrap.status,
        StatusCode::OK,
        "{:?}",
        latest_unwrap.body
    );
    assert_eq!(latest_unwrap.body["kid"], kid);
    assert_eq!(unb64(&latest_unwrap.body["value"]), secret);

    let bad_alg = call(
        &router,
        Method::POST,
        &format!("{}/unwrapkey?{VERSION}", path_of(kid, &vault)),
        Some("officer"),
        Some(json!({"alg": "A256KW", "value": wrapped.body["value"]})),
    )
    .await;
    assert_eq!(bad_alg.status, StatusCode::BAD_REQUEST);
    assert!(bad_alg.message().contains("RSA-OAEP-256"));

    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, b"payload");
    let signed = call(
        &router,
        Method::POST,
        &format!("{}/sign?{VERSION}", path_of(kid, &vault)),
        Some("officer"),
        Some(json!({"alg": "RS384", "value": b64(digest.as_ref())})),
    )
    .await;
    assert_eq!(signed.status, StatusCode::OK);
    let verify = |signature: Value| {
        let router = router.clone();
        let path = format!("{}/verify?{VERSION}", path_of(kid, &vault));
        let digest = b64(digest.as_ref());
        async move {
            call(
                &router,
                Method::POST,
                &path,
                Some("officer"),
                Some(json!({"alg": "RS384", "digest": digest, "value": signature})),
            )
            .await
            .body["value"]
                .clone()
        }
    };
    assert_eq!(verify(signed.body["value"].clone()).await, json!(true));
    let mut forged = unb64(&signed.body["value"]);
    forged[10] ^= 1;
    assert_eq!(verify(json!(b64(&forged))).await, json!(false));
}

#[tokio::test]
async fn disabled_expired_and_restricted_keys_refuse_operations() {
    disabled_expired_and_restricted_keys_refuse_operations_on(Fixture::new().await).await;
}

async fn disabled_expired_and_restricted_keys_refuse_operations_on(fixture: Fixture) {
    let vault = fixture.vault("refusals", |_| {}).await;
    let router = fixture.router(&vault, loopback());
    let created = create(&router, "k", json!({"kty": "RSA"})).await;
    let key_path = path_of(created.body["key"]["kid"].as_str().unwrap(), &vault);
    let wrap = |router: Router, path: String| async move {
        call(
            &router,
            Method::POST,
            &format!("{path}/wrapkey?{VERSION}"),
            Some("officer"),
            Some(json!({"alg": "RSA-OAEP", "value": b64(b"0123456789abcdef")})),
        )
        .await
    };

    let disabled = call(
        &router,
        Method::PATCH,
        &format!("{key_path}?{VERSION}"),
        Some("officer"),
        Some(json!({"attributes": {"enabled": false}})),
    )
    .await;
    assert_eq!(disabled.body["attributes"]["enabled"], false);
    let refused = wrap(router.clone(), key_path.clone()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.body["error"]["code"], "Forbidden");
    assert_eq!(refused.inner_code(), "KeyDisabled");
    assert!(
        refused
            .message()
            .contains("Operation wrapKey is not allowed on a disabled key")
    );

    let now = fixture.service.now();
    call(
        &router,
        Method::PATCH,
        &format!("{key_path}?{VERSION}"),
        Some("officer"),
        Some(json!({"attributes": {"enabled": true, "exp": now - 1}})),
    )
    .await;
    assert_eq!(
        wrap(router.clone(), key_path.clone()).await.inner_code(),
        "KeyExpired"
    );
    call(
        &router,
        Method::PATCH,
        &format!("{key_path}?{VERSION}"),
        Some("officer"),
        Some(json!({"attributes": {"exp": now + 3600, "nbf": now + 60}})),
    )
    .await;
    assert_eq!(
        wrap(router.clone(), key_path.clone()).await.inner_code(),
        "KeyNotYetValid"
    );
    call(
        &router,
        Method::PATCH,
        &format!("{key_path}?{VERSION}"),
        Some("officer"),
        Some(json!({"attributes": {"nbf": now - 60}, "key_ops": ["unwrapKey"]})),
    )
    .await;
    let not_permitted = wrap(router.clone(), key_path.clone()).await;
    assert_eq!(not_permitted.status, StatusCode::FORBIDDEN);
    assert!(not_permitted.message().contains("key_ops"));
    call(
        &router,
        Method::PATCH,
        &format!("{key_path}?{VERSION}"),
        Some("officer"),
        Some(json!({"key_ops": ["wrapKey", "unwrapKey"]})),
    )
    .await;
    assert_eq!(
        wrap(router.clone(), key_path.clone()).await.status,
        StatusCode::OK
    );

    let unknown = call(
        &router,
        Method::GET,
        &format!("/keys/missing?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["error"]["code"], "KeyNotFound");
    let bad_size = create(&router, "small", json!({"kty": "RSA", "key_size": 1024})).await;
    assert_eq!(bad_size.status, StatusCode::BAD_REQUEST);
    assert!(bad_size.message().contains("2048, 3072 or 4096"));
    let bad_type = create(&router, "ec", json!({"kty": "EC"})).await;
    assert!(bad_type.message().contains("use RSA or RSA-HSM"));
    let bad_json = call(
        &router,
        Method::POST,
        &format!("/keys/x/create?{VERSION}"),
        Some("officer"),
        Some(json!({"key_size": "big"})),
    )
    .await;
    assert_eq!(bad_json.status, StatusCode::BAD_REQUEST);
    assert!(
        !bad_json.message().contains("big"),
        "rejections must not echo the input"
    );
}

#[tokio::test]
async fn soft_delete_recover_purge_protection_and_retention() {
    soft_delete_recover_purge_protection_and_retention_on(Fixture::new().await).await;
}

async fn soft_delete_recover_purge_protection_and_retention_on(fixture: Fixture) {
    let vault = fixture
        .vault("softdel", |properties| {
            properties.enable_purge_protection = true;
            properties.soft_delete_retention_in_days = 7;
        })
        .await;
    let router = fixture.router(&vault, loopback());
    let created = create(&router, "doomed", json!({"kty": "RSA"})).await;
    assert_eq!(
        created.body["attributes"]["recoveryLevel"],
        "CustomizedRecoverable"
    );

    let deleted = call(
        &router,
        Method::DELETE,
        &format!("/keys/doomed?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        deleted.body["recoveryId"],
        format!("{}deletedkeys/doomed", vault.vault_uri)
    );
    let deleted_date = deleted.body["deletedDate"].as_i64().unwrap();
    assert_eq!(
        deleted.body["scheduledPurgeDate"].as_i64().unwrap(),
        deleted_date + 7 * 86_400
    );
    assert_eq!(deleted.body["key"]["kid"], created.body["key"]["kid"]);

    let gone = call(
        &router,
        Method::GET,
        &format!("/keys/doomed?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let held = create(&router, "doomed", json!({"kty": "RSA"})).await;
    assert_eq!(held.status, StatusCode::CONFLICT);
    assert!(held.message().contains("recovered or purged"));
    let listed = call(
        &router,
        Method::GET,
        &format!("/deletedkeys?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(
        listed.body["value"][0]["recoveryId"],
        deleted.body["recoveryId"]
    );
    let reader = call(
        &router,
        Method::GET,
        &format!("/deletedkeys/doomed?{VERSION}"),
        Some("reader"),
        None,
    )
    .await;
    assert_eq!(reader.status, StatusCode::FORBIDDEN);
    assert!(reader.message().contains("deletedKeys/read"));

    let purge = call(
        &router,
        Method::DELETE,
        &format!("/deletedkeys/doomed?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(purge.status, StatusCode::FORBIDDEN);
    assert!(purge.message().contains("purge protection"));

    let recovered = call(
        &router,
        Method::POST,
        &format!("/deletedkeys/doomed/recover?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(recovered.body["key"]["kid"], created.body["key"]["kid"]);
    assert_eq!(
        call(
            &router,
            Method::GET,
            &format!("/keys/doomed?{VERSION}"),
            Some("officer"),
            None
        )
        .await
        .status,
        StatusCode::OK
    );

    // Deleted again, then the retention passes: the key is purged by itself and the name is free.
    call(
        &router,
        Method::DELETE,
        &format!("/keys/doomed?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    fixture.advance_days(6);
    assert_eq!(
        call(
            &router,
            Method::GET,
            &format!("/deletedkeys/doomed?{VERSION}"),
            Some("officer"),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    fixture.advance_days(1);
    assert_eq!(
        call(
            &router,
            Method::GET,
            &format!("/deletedkeys/doomed?{VERSION}"),
            Some("officer"),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        create(&router, "doomed", json!({"kty": "RSA"}))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn purge_without_protection_and_hard_delete_without_soft_delete() {
    let fixture = Fixture::new().await;
    let vault = fixture.vault("purgeable", |_| {}).await;
    let router = fixture.router(&vault, loopback());
    create(&router, "k", json!({"kty": "RSA"})).await;
    call(
        &router,
        Method::DELETE,
        &format!("/keys/k?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    let purged = call(
        &router,
        Method::DELETE,
        &format!("/deletedkeys/k?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(purged.status, StatusCode::NO_CONTENT);
    let gone = call(
        &router,
        Method::GET,
        &format!("/deletedkeys/k?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);

    let hard = fixture
        .vault("hard", |properties| properties.enable_soft_delete = false)
        .await;
    let router = fixture.router(&hard, loopback());
    let created = create(&router, "k", json!({"kty": "RSA"})).await;
    assert_eq!(created.body["attributes"]["recoveryLevel"], "Purgeable");
    call(
        &router,
        Method::DELETE,
        &format!("/keys/k?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(
        call(
            &router,
            Method::GET,
            &format!("/deletedkeys/k?{VERSION}"),
            Some("officer"),
            None
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        create(&router, "k", json!({"kty": "RSA"})).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn firewall_applies_to_loopback_and_lets_trusted_services_bypass() {
    let fixture = Fixture::new().await;
    let vault = fixture
        .vault("walled", |properties| {
            properties.network_acls = NetworkAcls {
                default_action: DefaultAction::Deny,
                ip_rules: vec!["198.51.100.0/24".parse().unwrap()],
                ..NetworkAcls::default()
            };
        })
        .await;
    let blocked = call(
        &fixture.router(&vault, loopback()),
        Method::GET,
        &format!("/keys?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(blocked.status, StatusCode::FORBIDDEN);
    assert_eq!(blocked.inner_code(), "ForbiddenByFirewall");
    assert!(blocked.message().contains("127.0.0.1"));
    assert!(blocked.message().contains("ipRules"));
    let trusted = call(
        &fixture.router(&vault, loopback()),
        Method::GET,
        &format!("/keys?{VERSION}"),
        Some("trusted"),
        None,
    )
    .await;
    assert_eq!(trusted.status, StatusCode::OK);
    let listed = "198.51.100.20".parse().unwrap();
    let allowed = call(
        &fixture.router(&vault, listed),
        Method::GET,
        &format!("/keys?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(allowed.status, StatusCode::OK);

    let mut strict = vault.properties.clone();
    strict.network_acls.bypass = hds_keyvault::model::Bypass::None;
    let (vault, created) = fixture
        .service
        .create_or_update_vault(&vault.resource_id, &vault.name, strict)
        .await
        .unwrap();
    assert!(!created);
    let trusted = call(
        &fixture.router(&vault, loopback()),
        Method::GET,
        &format!("/keys?{VERSION}"),
        Some("trusted"),
        None,
    )
    .await;
    assert_eq!(trusted.inner_code(), "ForbiddenByFirewall");
}

#[tokio::test]
async fn access_policies_grant_per_permission_when_rbac_is_off() {
    access_policies_grant_per_permission_when_rbac_is_off_on(Fixture::new().await).await;
}

async fn access_policies_grant_per_permission_when_rbac_is_off_on(fixture: Fixture) {
    let vault = fixture
        .vault("policies", |properties| {
            properties.enable_rbac_authorization = false;
            properties.access_policies = vec![
                AccessPolicy {
                    tenant_id: TENANT.into(),
                    object_id: OFFICER.into(),
                    key_permissions: vec![KeyPermission::All],
                },
                AccessPolicy {
                    tenant_id: TENANT.into(),
                    object_id: READER.into(),
                    key_permissions: vec![KeyPermission::Get, KeyPermission::UnwrapKey],
                },
            ];
        })
        .await;
    let router = fixture.router(&vault, loopback());
    let created = create(&router, "k", json!({"kty": "RSA"})).await;
    assert_eq!(created.status, StatusCode::OK);
    let key_path = path_of(created.body["key"]["kid"].as_str().unwrap(), &vault);
    assert_eq!(
        call(
            &router,
            Method::GET,
            &format!("/keys/k?{VERSION}"),
            Some("reader"),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    let wrap = call(
        &router,
        Method::POST,
        &format!("{key_path}/wrapkey?{VERSION}"),
        Some("reader"),
        Some(json!({"alg": "RSA-OAEP", "value": b64(b"k")})),
    )
    .await;
    assert_eq!(wrap.status, StatusCode::FORBIDDEN);
    assert_eq!(wrap.inner_code(), "AccessDenied");
    assert!(wrap.message().contains("wrapKey"));
    let list = call(
        &router,
        Method::GET,
        &format!("/keys?{VERSION}"),
        Some("reader"),
        None,
    )
    .await;
    assert_eq!(list.status, StatusCode::FORBIDDEN);
    // RBAC grants do not count when the vault uses access policies.
    let trusted = call(
        &router,
        Method::GET,
        &format!("/keys?{VERSION}"),
        Some("trusted"),
        None,
    )
    .await;
    assert_eq!(trusted.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn rbac_denies_actions_not_granted() {
    let fixture = Fixture::new().await;
    let vault = fixture.vault("rbac", |_| {}).await;
    let router = fixture.router(&vault, loopback());
    let created = create(&router, "k", json!({"kty": "RSA"})).await;
    let key_path = path_of(created.body["key"]["kid"].as_str().unwrap(), &vault);
    assert_eq!(
        call(
            &router,
            Method::GET,
            &format!("/keys/k?{VERSION}"),
            Some("reader"),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    let unwrap = call(
        &router,
        Method::POST,
        &format!("{key_path}/unwrapkey?{VERSION}"),
        Some("reader"),
        Some(json!({"alg": "RSA-OAEP", "value": b64(&[0u8; 256])})),
    )
    .await;
    assert_eq!(unwrap.status, StatusCode::FORBIDDEN);
    assert_eq!(unwrap.inner_code(), "ForbiddenByRbac");
    assert!(
        unwrap
            .message()
            .contains("Microsoft.KeyVault/vaults/keys/unwrap/action")
    );
    assert!(
        unwrap
            .message()
            .contains(&format!("{}/keys/k", vault.resource_id))
    );
    fixture
        .access
        .grant(READER, "Microsoft.KeyVault/vaults/keys/wrap/action");
    let wrap = call(
        &router,
        Method::POST,
        &format!("{key_path}/wrapkey?{VERSION}"),
        Some("reader"),
        Some(json!({"alg": "RSA-OAEP", "value": b64(b"k")})),
    )
    .await;
    assert_eq!(wrap.status, StatusCode::OK);
}

#[tokio::test]
async fn listing_pages_with_next_links_and_versions() {
    listing_pages_with_next_links_and_versions_on(Fixture::new().await).await;
}

async fn listing_pages_with_next_links_and_versions_on(fixture: Fixture) {
    let vault = fixture.vault("paging", |_| {}).await;
    let router = fixture.router(&vault, loopback());
    for name in ["a", "b", "c"] {
        create(&router, name, json!({"kty": "RSA"})).await;
    }
    let first = call(
        &router,
        Method::GET,
        &format!("/keys?{VERSION}&maxresults=2"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(first.body["value"].as_array().unwrap().len(), 2);
    assert_eq!(
        first.body["value"][0]["kid"],
        format!("{}keys/a", vault.vault_uri)
    );
    let next = first.body["nextLink"].as_str().unwrap();
    let second = call(
        &router,
        Method::GET,
        &path_of(next, &vault),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(second.body["value"].as_array().unwrap().len(), 1);
    assert_eq!(
        second.body["value"][0]["kid"],
        format!("{}keys/c", vault.vault_uri)
    );
    assert!(second.body["nextLink"].is_null());
    let too_many = call(
        &router,
        Method::GET,
        &format!("/keys?{VERSION}&maxresults=26"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(too_many.status, StatusCode::BAD_REQUEST);

    let rotated = call(
        &router,
        Method::POST,
        &format!("/keys/a/rotate?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(rotated.status, StatusCode::OK);
    assert_ne!(rotated.body["key"]["kid"], first.body["value"][0]["kid"]);
    let versions = call(
        &router,
        Method::GET,
        &format!("/keys/a/versions?{VERSION}&maxresults=1"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(versions.body["value"].as_array().unwrap().len(), 1);
    let next = versions.body["nextLink"].as_str().unwrap();
    let last = call(
        &router,
        Method::GET,
        &path_of(next, &vault),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(last.body["value"][0]["kid"], rotated.body["key"]["kid"]);
}

#[tokio::test]
async fn backup_restores_only_here_and_hsm_keys_never_leave() {
    backup_restores_only_here_and_hsm_keys_never_leave_on(Fixture::new().await).await;
}

async fn backup_restores_only_here_and_hsm_keys_never_leave_on(fixture: Fixture) {
    let vault = fixture.vault("backups", |_| {}).await;
    let other = fixture.vault("elsewhere", |_| {}).await;
    let router = fixture.router(&vault, loopback());
    let created = create(&router, "k", json!({"kty": "RSA"})).await;
    let backup = call(
        &router,
        Method::POST,
        &format!("/keys/k/backup?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(backup.status, StatusCode::OK);
    let blob = backup.body["value"].clone();
    let other_router = fixture.router(&other, loopback());
    let restored = call(
        &other_router,
        Method::POST,
        &format!("/keys/restore?{VERSION}"),
        Some("officer"),
        Some(json!({"value": blob})),
    )
    .await;
    assert_eq!(restored.status, StatusCode::OK, "{:?}", restored.body);
    assert_eq!(restored.body["key"]["n"], created.body["key"]["n"]);
    assert_eq!(
        restored.body["key"]["kid"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next(),
        created.body["key"]["kid"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
    );
    let again = call(
        &other_router,
        Method::POST,
        &format!("/keys/restore?{VERSION}"),
        Some("officer"),
        Some(json!({"value": blob})),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);

    let mut tampered = unb64(&blob);
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let rejected = call(
        &other_router,
        Method::POST,
        &format!("/keys/restore?{VERSION}"),
        Some("officer"),
        Some(json!({"value": b64(&tampered)})),
    )
    .await;
    assert_eq!(rejected.status, StatusCode::BAD_REQUEST);

    // Another hds (another root key) cannot restore it.
    let stranger = Fixture::new().await;
    let stranger_vault = stranger.vault("stranger", |_| {}).await;
    let refused = call(
        &stranger.router(&stranger_vault, loopback()),
        Method::POST,
        &format!("/keys/restore?{VERSION}"),
        Some("officer"),
        Some(json!({"value": blob})),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);

    create(&router, "hsm", json!({"kty": "RSA-HSM"})).await;
    let hsm = call(
        &router,
        Method::POST,
        &format!("/keys/hsm/backup?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(hsm.status, StatusCode::BAD_REQUEST);
    assert!(hsm.message().contains("non-extractable"));
}

/// Reads every sealed private key of `vault` straight from the database.
async fn sealed_rows(database_url: &str) -> Vec<(String, String, String, Vec<u8>)> {
    let database = Database::connect(database_url).await.unwrap();
    let rows =
        sqlx::query("SELECT vault, name, version, sealed_private FROM keyvault_key_versions")
            .fetch_all(database.pool())
            .await
            .unwrap();
    rows.iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect()
}

#[tokio::test]
async fn private_keys_are_sealed_at_rest_and_survive_a_restart() {
    private_keys_are_sealed_at_rest_and_survive_a_restart_on(Fixture::new().await).await;
}

async fn private_keys_are_sealed_at_rest_and_survive_a_restart_on(fixture: Fixture) {
    let vault = fixture.vault("sealed", |_| {}).await;
    let options = CreateKeyOptions::rsa(KeyType::Rsa);
    let (bundle, created) = fixture
        .service
        .create_key_if_absent(&vault, "kek", options.clone())
        .await
        .unwrap();
    assert!(created);

    let rows = sealed_rows(&fixture.database_url).await;
    assert_eq!(rows.len(), 1);
    let (vault_key, key_name, version, sealed) = &rows[0];
    let context = format!("{vault_key}/{key_name}/{version}");
    let pkcs8 = fixture
        .root_key
        .open("keyvault/key-material", context.as_bytes(), sealed)
        .unwrap();
    let material = RsaKeyMaterial::from_pkcs8(&pkcs8).unwrap();
    assert_eq!(material.modulus(), bundle.key.modulus.as_slice());
    assert!(
        !sealed
            .windows(64)
            .any(|window| pkcs8.windows(64).any(|plain| plain == window))
    );
    // Bound to its row: it does not open as another version.
    assert!(
        fixture
            .root_key
            .open(
                "keyvault/key-material",
                format!("{vault_key}/{key_name}/other").as_bytes(),
                sealed
            )
            .is_err()
    );

    let secret = [42u8; 32];
    let (_, wrapped) = fixture
        .service
        .encrypt(
            &vault,
            "kek",
            None,
            hds_keyvault::model::KeyOperation::WrapKey,
            hds_keyvault::material::EncryptionAlgorithm::RsaOaep256,
            &secret,
        )
        .await
        .unwrap();

    // A restart: same database and root key.
    let reopened = open_service(
        &fixture.database_url,
        &fixture.root_key,
        Arc::clone(&fixture.clock),
    )
    .await;
    let vault = reopened.get_vault("SEALED").await.unwrap();
    assert_eq!(
        vault.port,
        fixture.service.get_vault("sealed").await.unwrap().port
    );
    let (_, unwrapped) = reopened
        .decrypt(
            &vault,
            "kek",
            Some(&bundle.key.version),
            hds_keyvault::model::KeyOperation::UnwrapKey,
            hds_keyvault::material::EncryptionAlgorithm::RsaOaep256,
            &wrapped,
        )
        .await
        .unwrap();
    assert_eq!(unwrapped.as_slice(), secret);

    // A different root key cannot open the keys, and says nothing about why over HTTP.
    let wrong_key = Arc::new(RootKey::generate());
    let stranger = Arc::new(
        open_service(
            &fixture.database_url,
            &wrong_key,
            Arc::clone(&fixture.clock),
        )
        .await,
    );
    let state = DataPlaneState {
        service: stranger,
        access: fixture.access.clone(),
        token_authority: "https://x".into(),
    };
    let router = data_plane_router(state, VaultSelector::Fixed("sealed".into()))
        .layer(MockConnectInfo(SocketAddr::new(loopback(), 1)));
    let failed = call(
        &router,
        Method::POST,
        &format!("/keys/kek/{}/unwrapkey?{VERSION}", bundle.key.version),
        Some("officer"),
        Some(json!({"alg": "RSA-OAEP-256", "value": b64(&wrapped)})),
    )
    .await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!failed.message().contains("integrity"));
}

#[tokio::test]
async fn arm_semantics_of_vaults_and_keys() {
    arm_semantics_of_vaults_and_keys_on(Fixture::new().await).await;
}

async fn arm_semantics_of_vaults_and_keys_on(fixture: Fixture) {
    let resource_id =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/armvault";
    let mut properties = VaultProperties::new(TENANT);
    properties.enable_purge_protection = true;
    let (vault, created) = fixture
        .service
        .create_or_update_vault(resource_id, "armvault", properties.clone())
        .await
        .unwrap();
    assert!(created);
    let port = vault.port.unwrap();
    assert_eq!(vault.vault_uri, format!("https://127.0.0.1:{port}/"));
    let (again, created) = fixture
        .service
        .create_or_update_vault(resource_id, "ArmVault", properties.clone())
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.port, Some(port));

    let mut off = properties.clone();
    off.enable_purge_protection = false;
    let refused = fixture
        .service
        .create_or_update_vault(resource_id, "armvault", off)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("enablePurgeProtection"));
    let mut shorter = properties.clone();
    shorter.soft_delete_retention_in_days = 30;
    assert!(
        fixture
            .service
            .create_or_update_vault(resource_id, "armvault", shorter)
            .await
            .is_err()
    );
    assert!(
        fixture
            .service
            .create_or_update_vault(resource_id, "-bad", properties.clone())
            .await
            .is_err()
    );

    let mut options = CreateKeyOptions::rsa(KeyType::RsaHsm);
    options.key_size = Some(3072);
    options.tags = BTreeMap::from([("env".to_owned(), "test".to_owned())]);
    let (first, created) = fixture
        .service
        .create_key_if_absent(&vault, "cmk", options.clone())
        .await
        .unwrap();
    assert!(created);
    assert_eq!(first.key.key_size, 3072);
    assert_eq!(
        first.key_uri(),
        format!("https://127.0.0.1:{port}/keys/cmk")
    );
    assert_eq!(
        first.key_uri_with_version(),
        format!("https://127.0.0.1:{port}/keys/cmk/{}", first.key.version)
    );
    let (second, created) = fixture
        .service
        .create_key_if_absent(&vault, "cmk", options)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(second.key.version, first.key.version);
    assert_eq!(
        fixture
            .service
            .get_key(&vault, "cmk", None)
            .await
            .unwrap()
            .key
            .version,
        first.key.version
    );

    // Purge protection keeps the vault while it holds keys, even deleted ones.
    let refused = fixture.service.delete_vault("armvault").await.unwrap_err();
    assert!(matches!(
        refused,
        hds_keyvault::VaultError::VaultNotEmpty(_)
    ));
    fixture.service.delete_key(&vault, "cmk").await.unwrap();
    assert!(fixture.service.delete_vault("armvault").await.is_err());
    fixture.advance_days(91);
    assert!(fixture.service.delete_vault("armvault").await.unwrap());
    assert!(fixture.service.get_vault("armvault").await.is_err());
    assert!(!fixture.service.delete_vault("armvault").await.unwrap());
}

#[tokio::test]
async fn domain_addressing_routes_by_host() {
    let data_dir = tempfile::tempdir().unwrap();
    let database = Database::connect(&format!(
        "sqlite:{}",
        data_dir.path().join("hds.db").display()
    ))
    .await
    .unwrap();
    let config = ServiceConfig {
        addressing: VaultAddressing::Domain {
            domain: "hds.example".into(),
            port: Some(8443),
        },
    };
    let service = Arc::new(
        KeyVaultService::open(database, Arc::new(RootKey::generate()), config)
            .await
            .unwrap(),
    );
    let resource_id =
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/Alpha";
    let (vault, _) = service
        .create_or_update_vault(resource_id, "Alpha", VaultProperties::new(TENANT))
        .await
        .unwrap();
    assert_eq!(vault.vault_uri, "https://alpha.vault.hds.example:8443/");
    assert_eq!(vault.port, None);
    let access = Arc::new(StaticAccessControl::new());
    access.add_token(
        "t",
        Caller {
            principal_id: "p".into(),
            tenant_id: TENANT.into(),
            is_trusted_service: false,
        },
    );
    access.grant("p", "*");
    let state = DataPlaneState {
        service,
        access,
        token_authority: "https://x".into(),
    };
    let router = hds_keyvault::host_routed_router(state, "hds.example")
        .layer(MockConnectInfo(SocketAddr::new(loopback(), 1)));
    let request = |host: &str| {
        Request::builder()
            .uri(format!("/keys?{VERSION}"))
            .header(header::HOST, host)
            .header(header::AUTHORIZATION, "Bearer t")
            .body(Body::empty())
            .unwrap()
    };
    let found = router
        .clone()
        .oneshot(request("alpha.vault.hds.example:8443"))
        .await
        .unwrap();
    assert_eq!(found.status(), StatusCode::OK);
    let missing = router
        .clone()
        .oneshot(request("beta.vault.hds.example"))
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let wrong = router
        .clone()
        .oneshot(request("alpha.vault.other.example"))
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
}

fn https_client(ca_pem_path: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca_pem_path).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

#[tokio::test]
async fn vault_listener_serves_https_on_its_stored_port() {
    let fixture = Fixture::new().await;
    let vault = fixture.vault("listened", |_| {}).await;
    let tls_dir = fixture._data_dir.path().join("tls");
    let ca = hds_tls::LocalCa::load_or_create(&tls_dir, &fixture.root_key).unwrap();
    let state = DataPlaneState {
        service: Arc::clone(&fixture.service),
        access: fixture.access.clone(),
        token_authority: "https://login.hds.test".into(),
    };
    let listeners = VaultListeners::new(state, ca.server_config(&[]).unwrap(), loopback());
    let started = listeners.start_all().await.unwrap();
    assert_eq!(
        started,
        vec![(
            "listened".to_owned(),
            SocketAddr::new(loopback(), vault.port.unwrap())
        )]
    );
    let client = https_client(ca.ca_pem_path());

    let challenged = client
        .get(format!("{}keys?{VERSION}", vault.vault_uri))
        .send()
        .await
        .unwrap();
    assert_eq!(challenged.status(), reqwest::StatusCode::UNAUTHORIZED);
    let created = client
        .post(format!("{}keys/k/create?{VERSION}", vault.vault_uri))
        .bearer_auth("officer")
        .json(&json!({"kty": "RSA"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::OK);
    let body: Value = created.json().await.unwrap();
    assert!(
        body["key"]["kid"]
            .as_str()
            .unwrap()
            .starts_with(&vault.vault_uri)
    );

    listeners.shutdown();
    assert!(listeners.addresses().is_empty());
}

/// The same scenarios on PostgreSQL (a throwaway cluster from hds-db's `testing` feature).
#[tokio::test]
async fn scenarios_on_postgres() {
    create_get_wrap_unwrap_sign_verify_on(Fixture::postgres().await).await;
    disabled_expired_and_restricted_keys_refuse_operations_on(Fixture::postgres().await).await;
    soft_delete_recover_purge_protection_and_retention_on(Fixture::postgres().await).await;
    listing_pages_with_next_links_and_versions_on(Fixture::postgres().await).await;
    backup_restores_only_here_and_hsm_keys_never_leave_on(Fixture::postgres().await).await;
    private_keys_are_sealed_at_rest_and_survive_a_restart_on(Fixture::postgres().await).await;
    arm_semantics_of_vaults_and_keys_on(Fixture::postgres().await).await;
    access_policies_grant_per_permission_when_rbac_is_off_on(Fixture::postgres().await).await;
    rotation_policies_rotate_keys_when_due_on(Fixture::postgres().await).await;
}

fn policy_uri(name: &str) -> String {
    format!("/keys/{name}/rotationpolicy?{VERSION}")
}

async fn versions_of(router: &Router, name: &str) -> Vec<Value> {
    let listed = call(
        router,
        Method::GET,
        &format!("/keys/{name}/versions?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    listed.body["value"].as_array().unwrap().clone()
}

#[tokio::test]
async fn rotation_policies_rotate_keys_when_due() {
    rotation_policies_rotate_keys_when_due_on(Fixture::new().await).await;
}

async fn rotation_policies_rotate_keys_when_due_on(fixture: Fixture) {
    let vault = fixture.vault("rotating", |_| {}).await;
    let router = fixture.router(&vault, loopback());
    assert_eq!(
        create(&router, "Cmk", json!({"kty": "RSA"})).await.status,
        StatusCode::OK
    );

    // A key that never had a policy has Key Vault's default: notify 30 days before expiry.
    let default = call(
        &router,
        Method::GET,
        &policy_uri("Cmk"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(default.status, StatusCode::OK, "{:?}", default.body);
    assert_eq!(
        default.body["id"],
        format!("{}keys/Cmk/rotationpolicy", vault.vault_uri)
    );
    assert_eq!(
        default.body["lifetimeActions"],
        json!([{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}])
    );
    assert!(default.body["attributes"].get("created").is_none());

    let policy = json!({
        "lifetimeActions": [
            {"trigger": {"timeAfterCreate": "P30D"}, "action": {"type": "rotate"}},
            {"trigger": {"timeBeforeExpiry": "P7D"}, "action": {"type": "Notify"}},
        ],
        "attributes": {"expiryTime": "P90D"},
    });
    let set = call(
        &router,
        Method::PUT,
        &policy_uri("Cmk"),
        Some("officer"),
        Some(policy),
    )
    .await;
    assert_eq!(set.status, StatusCode::OK, "{:?}", set.body);
    assert_eq!(set.body["lifetimeActions"][0]["action"]["type"], "Rotate");
    assert_eq!(
        set.body["lifetimeActions"][0]["trigger"]["timeAfterCreate"],
        "P30D"
    );
    assert_eq!(set.body["attributes"]["expiryTime"], "P90D");
    assert_eq!(
        set.body["attributes"]["created"],
        json!(fixture.service.now())
    );
    let read = call(
        &router,
        Method::GET,
        &policy_uri("Cmk"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(read.body, set.body);

    // Not due yet: the pass does nothing, however often it runs.
    fixture.advance_days(29);
    assert!(fixture.service.rotate_due_keys().await.unwrap().is_empty());
    assert_eq!(versions_of(&router, "Cmk").await.len(), 1);
    // Due: exactly one new version, expiring as the policy says, and not due again at once.
    fixture.advance_days(2);
    let rotated = fixture.service.rotate_due_keys().await.unwrap();
    assert_eq!(rotated.len(), 1);
    assert!(fixture.service.rotate_due_keys().await.unwrap().is_empty());
    let latest = call(
        &router,
        Method::GET,
        &format!("/keys/Cmk?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(latest.body["key"]["kid"], rotated[0]);
    assert_eq!(
        latest.body["attributes"]["exp"],
        json!(fixture.service.now() + 90 * 86_400)
    );
    assert_eq!(versions_of(&router, "Cmk").await.len(), 2);

    // The policy is persisted: a service opened afresh on the same database rotates the key
    // again when its next time comes.
    let reopened = Arc::new(
        open_service(
            &fixture.database_url,
            &fixture.root_key,
            Arc::clone(&fixture.clock),
        )
        .await,
    );
    fixture.advance_days(31);
    assert_eq!(reopened.rotate_due_keys().await.unwrap().len(), 1);
    assert_eq!(versions_of(&router, "Cmk").await.len(), 3);

    // A manual rotation also takes the policy's expiry.
    let manual = call(
        &router,
        Method::POST,
        &format!("/keys/Cmk/rotate?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(manual.status, StatusCode::OK, "{:?}", manual.body);
    assert_eq!(
        manual.body["attributes"]["exp"],
        json!(fixture.service.now() + 90 * 86_400)
    );

    // A before-expiry trigger fires on a key whose expiry is near, and never on one without.
    let expiring = fixture.service.now() + 10 * 86_400;
    assert_eq!(
        create(
            &router,
            "Expiring",
            json!({"kty": "RSA", "attributes": {"exp": expiring}})
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        create(&router, "Forever", json!({"kty": "RSA"}))
            .await
            .status,
        StatusCode::OK
    );
    let before_expiry = json!({"lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Rotate"}}]});
    for name in ["Expiring", "Forever"] {
        let set = call(
            &router,
            Method::PUT,
            &policy_uri(name),
            Some("officer"),
            Some(before_expiry.clone()),
        )
        .await;
        assert_eq!(set.status, StatusCode::OK, "{:?}", set.body);
    }
    let rotated = fixture.service.rotate_due_keys().await.unwrap();
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    assert!(rotated[0].contains("/keys/Expiring/"));
    assert_eq!(versions_of(&router, "Forever").await.len(), 1);

    // Purging a key removes its policy: a new key of the same name starts with the default.
    let deleted = call(
        &router,
        Method::DELETE,
        &format!("/keys/Expiring?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    // A deleted key is not rotated, and its policy is not served.
    assert!(fixture.service.rotate_due_keys().await.unwrap().is_empty());
    let gone = call(
        &router,
        Method::GET,
        &policy_uri("Expiring"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let purged = call(
        &router,
        Method::DELETE,
        &format!("/deletedkeys/Expiring?{VERSION}"),
        Some("officer"),
        None,
    )
    .await;
    assert_eq!(purged.status, StatusCode::NO_CONTENT, "{:?}", purged.body);
    assert_eq!(
        create(&router, "Expiring", json!({"kty": "RSA"}))
            .await
            .status,
        StatusCode::OK
    );
    let fresh = call(
        &router,
        Method::GET,
        &policy_uri("Expiring"),
        Some("officer"),
        None,
    )
    .await;
    assert!(
        fresh.body["attributes"].get("created").is_none(),
        "{:?}",
        fresh.body
    );
}

#[tokio::test]
async fn rotation_policy_input_and_access_are_checked() {
    let fixture = Fixture::new().await;
    let vault = fixture.vault("policing", |_| {}).await;
    let router = fixture.router(&vault, loopback());
    assert_eq!(
        create(&router, "k", json!({"kty": "RSA"})).await.status,
        StatusCode::OK
    );
    let rotate = |trigger: Value| json!({"trigger": trigger, "action": {"type": "Rotate"}});
    let hostile = [
        (
            json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P-1D"}))]}),
            "ISO 8601",
        ),
        (
            json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P99999999999D"}))]}),
            "ISO 8601",
        ),
        (
            json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P1D".repeat(5000)}))]}),
            "ISO 8601",
        ),
        (
            json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P1D"}))]}),
            "at least 7 days",
        ),
        (
            json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P30D", "timeBeforeExpiry": "P30D"}))]}),
            "exactly one",
        ),
        (
            json!({"lifetimeActions": [rotate(json!({}))]}),
            "exactly one",
        ),
        (
            json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P30D"}}]}),
            "action.type",
        ),
        (
            json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P30D"}, "action": {"type": "Explode"}}]}),
            "Rotate or Notify",
        ),
        (
            json!({"lifetimeActions": vec![rotate(json!({"timeAfterCreate": "P30D"})); 1000]}),
            "at most 2",
        ),
        (
            json!({"lifetimeActions": [rotate(json!({"timeAfterCreate": "P30D"}))], "attributes": {"expiryTime": "P7D"}}),
            "at least 28 days",
        ),
        (json!({"lifetimeActions": "many"}), "not valid"),
    ];
    for (body, fragment) in hostile {
        let refused = call(
            &router,
            Method::PUT,
            &policy_uri("k"),
            Some("officer"),
            Some(body),
        )
        .await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{fragment}: {:?}",
            refused.body
        );
        assert!(
            refused.message().contains(fragment),
            "{fragment}: {}",
            refused.message()
        );
    }

    // The policy routes are not key versions: a missing key is named without the path's tail.
    for method in [Method::GET, Method::PUT] {
        let missing = call(
            &router,
            method,
            &policy_uri("absent"),
            Some("officer"),
            Some(json!({"lifetimeActions": []})),
        )
        .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND, "{:?}", missing.body);
        assert!(missing.message().contains("absent"));
        assert!(
            !missing.message().contains("rotationpolicy"),
            "{}",
            missing.message()
        );
    }

    // RBAC: reading a key is not reading its policy; each policy action is its own grant.
    let denied = call(&router, Method::GET, &policy_uri("k"), Some("reader"), None).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(
        denied
            .message()
            .contains("Microsoft.KeyVault/vaults/keyrotationpolicies/read")
    );
    fixture
        .access
        .grant(READER, "Microsoft.KeyVault/vaults/keyrotationpolicies/read");
    assert_eq!(
        call(&router, Method::GET, &policy_uri("k"), Some("reader"), None)
            .await
            .status,
        StatusCode::OK
    );
    let write = call(
        &router,
        Method::PUT,
        &policy_uri("k"),
        Some("reader"),
        Some(json!({"lifetimeActions": []})),
    )
    .await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    assert!(
        write
            .message()
            .contains("Microsoft.KeyVault/vaults/keyrotationpolicies/write")
    );
    let rotate_denied = call(
        &router,
        Method::POST,
        &format!("/keys/k/rotate?{VERSION}"),
        Some("reader"),
        None,
    )
    .await;
    assert_eq!(rotate_denied.status, StatusCode::FORBIDDEN);
    assert!(
        rotate_denied
            .message()
            .contains("Microsoft.KeyVault/vaults/keys/rotate/action")
    );

    // Access policies: getrotationpolicy and setrotationpolicy, as Key Vault names them.
    let policed = fixture
        .vault("policed", |properties| {
            properties.enable_rbac_authorization = false;
            properties.access_policies = vec![
                AccessPolicy {
                    tenant_id: TENANT.into(),
                    object_id: OFFICER.into(),
                    key_permissions: vec![KeyPermission::All],
                },
                AccessPolicy {
                    tenant_id: TENANT.into(),
                    object_id: READER.into(),
                    key_permissions: vec![KeyPermission::Get, KeyPermission::GetRotationPolicy],
                },
            ];
        })
        .await;
    let router = fixture.router(&policed, loopback());
    assert_eq!(
        create(&router, "k", json!({"kty": "RSA"})).await.status,
        StatusCode::OK
    );
    assert_eq!(
        call(&router, Method::GET, &policy_uri("k"), Some("reader"), None)
            .await
            .status,
        StatusCode::OK
    );
    let set = call(
        &router,
        Method::PUT,
        &policy_uri("k"),
        Some("reader"),
        Some(json!({"lifetimeActions": []})),
    )
    .await;
    assert_eq!(set.status, StatusCode::FORBIDDEN);
    assert!(
        set.message().contains("setrotationpolicy"),
        "{}",
        set.message()
    );
}

#[tokio::test]
async fn random_bytes_are_fresh_and_bounded() {
    let fixture = Fixture::new().await;
    let vault = fixture.vault("random", |_| {}).await;
    let router = fixture.router(&vault, loopback());
    let uri = format!("/rng?{VERSION}");
    let first = call(
        &router,
        Method::POST,
        &uri,
        Some("reader"),
        Some(json!({"count": 128})),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let second = call(
        &router,
        Method::POST,
        &uri,
        Some("reader"),
        Some(json!({"count": 128})),
    )
    .await;
    assert_eq!(unb64(&first.body["value"]).len(), 128);
    assert_ne!(first.body["value"], second.body["value"]);
    let one = call(
        &router,
        Method::POST,
        &uri,
        Some("reader"),
        Some(json!({"count": 1})),
    )
    .await;
    assert_eq!(unb64(&one.body["value"]).len(), 1);
    for body in [
        json!({"count": 0}),
        json!({"count": 129}),
        json!({"count": u64::MAX}),
        json!({"count": -1}),
        json!({}),
    ] {
        let refused = call(
            &router,
            Method::POST,
            &uri,
            Some("reader"),
            Some(body.clone()),
        )
        .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body}");
    }
    let unauthenticated = call(&router, Method::POST, &uri, None, Some(json!({"count": 8}))).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
}

/// Two nodes behind a balancer on one PostgreSQL database: a vault created through either gets
/// the first free port of the range, a second vault the next one, and both nodes name every
/// vault at the balancer's address.
#[tokio::test]
async fn balanced_vaults_are_named_at_the_balancer_on_every_node() {
    let cluster = hds_db::testing::PostgresCluster::shared().unwrap();
    let url = cluster.fresh_database().await.unwrap();
    let root_key = Arc::new(RootKey::generate());
    let low = {
        // Eight ports free on both node addresses, so the test does not depend on luck.
        let probe = std::net::TcpListener::bind(("127.0.0.2", 0)).unwrap();
        let low = probe
            .local_addr()
            .unwrap()
            .port()
            .saturating_sub(8)
            .max(1024);
        drop(probe);
        low
    };
    let node = |bind: [u8; 4]| {
        let url = url.clone();
        let root_key = root_key.clone();
        async move {
            let database = Database::connect(&url).await.unwrap();
            KeyVaultService::open(
                database,
                root_key,
                ServiceConfig {
                    addressing: VaultAddressing::Balanced {
                        bind: IpAddr::V4(Ipv4Addr::from(bind)),
                        advertised: IpAddr::V4(Ipv4Addr::LOCALHOST),
                        ports: (low, low + 7),
                    },
                },
            )
            .await
            .unwrap()
        }
    };
    let first = node([127, 0, 0, 2]).await;
    let second = node([127, 0, 0, 3]).await;
    let (created, _) = first
        .create_or_update_vault("/vaults/one", "one", VaultProperties::new(TENANT))
        .await
        .unwrap();
    let (other, _) = second
        .create_or_update_vault("/vaults/two", "two", VaultProperties::new(TENANT))
        .await
        .unwrap();
    let (one, two) = (created.port.unwrap(), other.port.unwrap());
    assert!((low..=low + 7).contains(&one) && (low..=low + 7).contains(&two));
    assert_ne!(one, two);
    for service in [&first, &second] {
        assert_eq!(
            service.get_vault("one").await.unwrap().vault_uri,
            format!("https://127.0.0.1:{one}/")
        );
        assert_eq!(
            service.get_vault("two").await.unwrap().vault_uri,
            format!("https://127.0.0.1:{two}/")
        );
    }
}
