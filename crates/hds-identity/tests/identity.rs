//! The identity service end to end, on SQLite and on a real PostgreSQL cluster: bootstrap,
//! the token endpoint over HTTP, token validation (including the attacks a validator must
//! refuse), managed identities, role assignments and authorization.

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
    RsaPublicKeyComponents,
};
use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hds_crypto::root::RootKey;
use hds_db::Database;
use hds_db::testing::PostgresCluster;
use hds_identity::principals::ManagedIdentityKind;
use hds_identity::roles::{self, actions};
use hds_identity::{
    AdminCredentials, BootstrapInfo, DICOM_AUDIENCE, Decision, ExternalIssuer, ExternalIssuerError,
    Identity, IdentityConfig, IdentityError, MANAGEMENT_AUDIENCE, MAX_TOKEN_BYTES,
    RoleAssignmentRequest, ScopeFilter, TokenError, VAULT_AUDIENCE, external_principal_id,
};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

const BASE_URL: &str = "http://127.0.0.1:8080";
const EXTERNAL_ISSUER: &str = "https://login.example.org/tenant-x/v2.0";
const EXTERNAL_RSA_ISSUER: &str = "https://rsa.example.org";

#[derive(Clone, Copy)]
enum Store {
    Sqlite,
    Postgres,
}

/// A key the tests hold, trusted as an external issuer: lets them mint tokens with any claims.
struct TestIssuer {
    ec_key: EcdsaKeyPair,
    rsa_key: RsaKeyPair,
}

impl TestIssuer {
    fn new() -> TestIssuer {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("ec key");
        let ec_key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("ec key");
        let rsa_key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa key");
        TestIssuer { ec_key, rsa_key }
    }

    fn ec_jwks(&self) -> String {
        let point = self.ec_key.public_key().as_ref();
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "ext-ec", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]})
        .to_string()
    }

    fn rsa_jwks(&self) -> String {
        let components: RsaPublicKeyComponents<Vec<u8>> = self.rsa_key.public_key().into();
        serde_json::json!({"keys": [{
            "kty": "RSA", "kid": "ext-rsa", "use": "sig",
            "n": URL_SAFE_NO_PAD.encode(&components.n), "e": URL_SAFE_NO_PAD.encode(&components.e),
        }]})
        .to_string()
    }

    fn sign_es256(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = signing_input(&header, &claims);
        let signature = self
            .ec_key
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }

    fn sign_rs256(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = signing_input(&header, &claims);
        let mut signature = vec![0; self.rsa_key.public_modulus_len()];
        self.rsa_key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn hs256(secret: &[u8], header: serde_json::Value, claims: serde_json::Value) -> String {
    let input = signing_input(&header, &claims);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

struct Harness {
    identity: Identity,
    info: BootstrapInfo,
    data_dir: tempfile::TempDir,
    database_url: String,
    root_key: Arc<RootKey>,
    issuer: Arc<TestIssuer>,
}

impl Harness {
    async fn new(store: Store) -> Harness {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let database_url = match store {
            Store::Sqlite => format!("sqlite:{}", data_dir.path().join("hds.db").display()),
            Store::Postgres => PostgresCluster::shared()
                .expect("PostgreSQL test cluster")
                .fresh_database()
                .await
                .expect("fresh database"),
        };
        let root_key =
            Arc::new(RootKey::load_or_create(&data_dir.path().join("root.key")).expect("root key"));
        let issuer = Arc::new(TestIssuer::new());
        let identity = open(&database_url, &root_key, &issuer).await;
        let info = identity
            .bootstrap(data_dir.path())
            .await
            .expect("bootstrap");
        Harness {
            identity,
            info,
            data_dir,
            database_url,
            root_key,
            issuer,
        }
    }

    /// A second service on the same database and root key, as after a restart.
    async fn reopen(&self) -> Identity {
        open(&self.database_url, &self.root_key, &self.issuer).await
    }

    fn admin_file(&self) -> AdminCredentials {
        read_admin(self.data_dir.path())
    }

    fn resource_group(&self) -> String {
        self.info.resource_group_id.clone()
    }

    fn subscription(&self) -> String {
        format!("/subscriptions/{}", self.info.subscription_id)
    }

    fn vault(&self, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.KeyVault/vaults/{name}",
            self.resource_group()
        )
    }
}

async fn open(database_url: &str, root_key: &Arc<RootKey>, issuer: &TestIssuer) -> Identity {
    let database = Database::connect(database_url).await.expect("database");
    let config = IdentityConfig::new(format!("{BASE_URL}/"))
        .with_external_issuer(
            ExternalIssuer::from_jwks_json(EXTERNAL_ISSUER, &issuer.ec_jwks()).expect("jwks"),
        )
        .with_external_issuer(
            ExternalIssuer::from_jwks_json(EXTERNAL_RSA_ISSUER, &issuer.rsa_jwks()).expect("jwks"),
        );
    Identity::open(database, root_key.clone(), config)
        .await
        .expect("open identity")
}

fn read_admin(data_dir: &Path) -> AdminCredentials {
    let bytes = std::fs::read(data_dir.join("admin.json")).expect("admin.json");
    serde_json::from_slice(&bytes).expect("admin.json parses")
}

async fn send(
    identity: &Identity,
    request: Request<Body>,
) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let response = identity
        .router()
        .oneshot(request)
        .await
        .expect("router answers");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

fn token_request(tenant: &str, body: &str) -> Request<Body> {
    Request::post(format!("/{tenant}/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(body.to_owned()))
        .expect("request")
}

fn client_credentials_body(client_id: &str, client_secret: &str, scope: &str) -> String {
    serde_urlencoded::to_string([
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_secret", client_secret),
        ("scope", scope),
    ])
    .expect("form")
}

async fn token_for(
    identity: &Identity,
    tenant: &str,
    client_id: &str,
    client_secret: &str,
    scope: &str,
) -> String {
    let (status, _, json) = send(
        identity,
        token_request(
            tenant,
            &client_credentials_body(client_id, client_secret, scope),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

fn decode_part(token: &str, index: usize) -> serde_json::Value {
    let part = token.split('.').nth(index).expect("part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
}

// ---------------------------------------------------------------------------------------------

async fn client_credentials_over_http(store: Store) {
    let harness = Harness::new(store).await;
    let identity = &harness.identity;
    let tenant = &harness.info.tenant_id;
    let admin = harness.admin_file();
    assert_eq!(&admin.tenant_id, tenant);
    assert_eq!(admin.endpoint.as_deref(), Some(BASE_URL));

    // Discovery names the issuer and a JWKS URL that serves the signing key.
    let (status, _, discovery) = send(
        identity,
        Request::get(format!("/{tenant}/v2.0/.well-known/openid-configuration"))
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let issuer = format!("{BASE_URL}/{tenant}/v2.0");
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(
        discovery["token_endpoint"],
        format!("{BASE_URL}/{tenant}/oauth2/v2.0/token").as_str()
    );
    let jwks_path = discovery["jwks_uri"]
        .as_str()
        .expect("jwks_uri")
        .strip_prefix(BASE_URL)
        .expect("same base")
        .to_owned();
    let (status, _, jwks) = send(
        identity,
        Request::get(jwks_path)
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1));

    // The client-credentials grant.
    let body = client_credentials_body(
        &admin.client_id,
        &admin.client_secret,
        "https://management.azure.com/.default",
    );
    let (status, headers, json) = send(identity, token_request(tenant, &body)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 3599);
    assert_eq!(json["ext_expires_in"], 3599);
    assert!(
        headers["cache-control"]
            .to_str()
            .expect("ascii")
            .contains("no-store")
    );
    let token = json["access_token"].as_str().expect("token");
    let header = decode_part(token, 0);
    let claims = decode_part(token, 1);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], jwks["keys"][0]["kid"]);
    assert_eq!(claims["iss"], issuer.as_str());
    assert_eq!(claims["aud"], "https://management.azure.com");
    assert_eq!(claims["tid"], tenant.as_str());
    assert_eq!(claims["oid"], harness.info.admin_principal_id.as_str());
    assert_eq!(claims["appid"], admin.client_id.as_str());
    let issued_at = claims["iat"].as_i64().expect("iat");
    assert_eq!(claims["nbf"].as_i64(), Some(issued_at));
    assert_eq!(claims["exp"].as_i64(), Some(issued_at + 3600));

    // It validates for the management audience, with or without a trailing slash.
    let principal = identity
        .validate_token(token, MANAGEMENT_AUDIENCE)
        .await
        .expect("valid token");
    assert_eq!(principal.principal_id, harness.info.admin_principal_id);
    assert!(!principal.external);
    identity
        .validate_token(token, "https://management.azure.com/")
        .await
        .expect("trailing slash");

    // HTTP Basic client authentication works too.
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", admin.client_id, admin.client_secret));
    let request = Request::post(format!("/{tenant}/oauth2/v2.0/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("authorization", format!("Basic {basic}"))
        .body(Body::from(
            "grant_type=client_credentials&scope=https%3A%2F%2Fvault.azure.net%2F.default",
        ))
        .expect("request");
    let (status, _, json) = send(identity, request).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(
        decode_part(json["access_token"].as_str().expect("token"), 1)["aud"],
        "https://vault.azure.net"
    );

    // Errors come in the OAuth2 shape.
    let cases = [
        (
            client_credentials_body(
                &admin.client_id,
                "wrong-secret",
                "https://management.azure.com/.default",
            ),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            client_credentials_body(
                &uuid::Uuid::new_v4().to_string(),
                &admin.client_secret,
                "https://management.azure.com/.default",
            ),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            client_credentials_body(
                &admin.client_id,
                &admin.client_secret,
                "https://management.azure.com/user_impersonation",
            ),
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            format!("grant_type=password&client_id={}", admin.client_id),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            "grant_type=client_credentials&scope=x%2F.default".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (body, expected_status, expected_error) in cases {
        let (status, _, json) = send(identity, token_request(tenant, &body)).await;
        assert_eq!(status, expected_status, "{body}: {json}");
        assert_eq!(json["error"], expected_error, "{body}");
        assert!(
            json["error_description"]
                .as_str()
                .is_some_and(|text| text.starts_with("AADSTS")),
            "{json}"
        );
        assert!(
            !json.to_string().contains(&admin.client_secret),
            "the secret is never echoed"
        );
    }
    let (status, _, json) = send(
        identity,
        token_request(
            &uuid::Uuid::new_v4().to_string(),
            &client_credentials_body(&admin.client_id, &admin.client_secret, "a/.default"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["error"], "invalid_tenant");
}

async fn validator_rejects_what_it_must(store: Store) {
    let harness = Harness::new(store).await;
    let identity = &harness.identity;
    let tenant = &harness.info.tenant_id;
    let admin = harness.admin_file();
    let token = token_for(
        identity,
        tenant,
        &admin.client_id,
        &admin.client_secret,
        "https://vault.azure.net/.default",
    )
    .await;
    let platform_kid = decode_part(&token, 0)["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    let platform_claims = decode_part(&token, 1);
    let (signing_input, signature) = token.rsplit_once('.').expect("jws");
    let (_, payload) = signing_input.split_once('.').expect("jws");

    // Wrong audience.
    assert!(matches!(
        identity.validate_token(&token, DICOM_AUDIENCE).await,
        Err(TokenError::WrongAudience { .. })
    ));
    // Bad signature: one flipped bit.
    let mut signature_bytes = URL_SAFE_NO_PAD.decode(signature).expect("base64");
    signature_bytes[10] ^= 1;
    let tampered = format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(&signature_bytes)
    );
    assert_eq!(
        identity.validate_token(&tampered, VAULT_AUDIENCE).await,
        Err(TokenError::InvalidSignature)
    );
    // Changed claims under the original signature.
    let mut elevated = platform_claims.clone();
    elevated["oid"] = serde_json::json!(uuid::Uuid::new_v4().to_string());
    let forged = format!(
        "{}.{}.{signature}",
        signing_input.split('.').next().expect("header"),
        URL_SAFE_NO_PAD.encode(elevated.to_string())
    );
    assert_eq!(
        identity.validate_token(&forged, VAULT_AUDIENCE).await,
        Err(TokenError::InvalidSignature)
    );
    // alg: none, with and without a signature.
    let none_header =
        URL_SAFE_NO_PAD.encode(serde_json::json!({"alg": "none", "kid": platform_kid}).to_string());
    for unsigned in [
        format!("{none_header}.{payload}."),
        format!("{none_header}.{payload}.{signature}"),
    ] {
        assert_eq!(
            identity.validate_token(&unsigned, VAULT_AUDIENCE).await,
            Err(TokenError::InvalidSignature)
        );
    }
    // HS256 keyed with the public key (the JWK JSON, and its raw point) as the HMAC secret.
    let jwks = identity.jwks().await.expect("jwks");
    let public_jwk = serde_json::to_vec(&jwks.keys[0]).expect("json");
    let header = serde_json::json!({"alg": "HS256", "kid": platform_kid, "typ": "JWT"});
    for secret in [
        public_jwk.clone(),
        URL_SAFE_NO_PAD
            .decode(jwks.keys[0].x.as_deref().expect("x"))
            .expect("x"),
    ] {
        let confused = hs256(&secret, header.clone(), platform_claims.clone());
        assert_eq!(
            identity.validate_token(&confused, VAULT_AUDIENCE).await,
            Err(TokenError::InvalidSignature)
        );
    }
    // Unknown kid.
    let unknown_kid = harness.issuer.sign_es256(
        serde_json::json!({"alg": "ES256", "kid": "no-such-key"}),
        platform_claims.clone(),
    );
    assert_eq!(
        identity.validate_token(&unknown_kid, VAULT_AUDIENCE).await,
        Err(TokenError::UnknownSigningKey)
    );
    // The platform's issuer and kid, signed by someone else's key.
    let impostor = harness.issuer.sign_es256(
        serde_json::json!({"alg": "ES256", "kid": platform_kid}),
        platform_claims.clone(),
    );
    assert_eq!(
        identity.validate_token(&impostor, VAULT_AUDIENCE).await,
        Err(TokenError::InvalidSignature)
    );
    // Wrong issuer: a well-signed token from an issuer nobody configured.
    let mut foreign = platform_claims.clone();
    foreign["iss"] = serde_json::json!("https://evil.example.com/v2.0");
    let foreign = harness.issuer.sign_es256(
        serde_json::json!({"alg": "ES256", "kid": "ext-ec"}),
        foreign,
    );
    assert_eq!(
        identity.validate_token(&foreign, VAULT_AUDIENCE).await,
        Err(TokenError::UntrustedIssuer)
    );
    // Garbage.
    assert_eq!(
        identity.validate_token("not-a-token", VAULT_AUDIENCE).await,
        Err(TokenError::Malformed)
    );

    // An external issuer's tokens: time and audience checks with claims the tests control.
    let external_oid = uuid::Uuid::new_v4().to_string();
    let claims = |audience: &str, not_before: i64, expires: i64| serde_json::json!({"iss": EXTERNAL_ISSUER, "aud": audience, "nbf": not_before, "iat": not_before, "exp": expires, "oid": external_oid, "tid": "tenant-x"});
    let ec_header = serde_json::json!({"alg": "ES256", "kid": "ext-ec", "typ": "JWT"});
    let t = now();
    let good = harness.issuer.sign_es256(
        ec_header.clone(),
        claims("https://vault.azure.net/", t, t + 600),
    );
    let principal = identity
        .validate_token(&good, VAULT_AUDIENCE)
        .await
        .expect("external token");
    assert!(principal.external);
    assert_eq!(
        principal.principal_id,
        external_principal_id(EXTERNAL_ISSUER, "tenant-x", &external_oid)
    );
    assert_eq!(principal.issuer, EXTERNAL_ISSUER);
    let expired = harness.issuer.sign_es256(
        ec_header.clone(),
        claims(VAULT_AUDIENCE, t - 7200, t - 3600),
    );
    assert_eq!(
        identity.validate_token(&expired, VAULT_AUDIENCE).await,
        Err(TokenError::Expired)
    );
    let early = harness.issuer.sign_es256(
        ec_header.clone(),
        claims(VAULT_AUDIENCE, t + 3600, t + 7200),
    );
    assert_eq!(
        identity.validate_token(&early, VAULT_AUDIENCE).await,
        Err(TokenError::NotYetValid)
    );
    let elsewhere = harness.issuer.sign_es256(
        ec_header.clone(),
        claims("https://vault.azure.net.evil", t, t + 600),
    );
    assert!(matches!(
        identity.validate_token(&elsewhere, VAULT_AUDIENCE).await,
        Err(TokenError::WrongAudience { .. })
    ));
    // An RSA issuer: RS256 accepted; HS256 keyed with its public key refused.
    let rsa_claims = serde_json::json!({"iss": EXTERNAL_RSA_ISSUER, "aud": DICOM_AUDIENCE, "nbf": t, "exp": t + 600, "sub": "app-1"});
    let rs256 = harness.issuer.sign_rs256(
        serde_json::json!({"alg": "RS256", "kid": "ext-rsa"}),
        rsa_claims.clone(),
    );
    assert_eq!(
        identity
            .validate_token(&rs256, DICOM_AUDIENCE)
            .await
            .expect("rs256")
            .principal_id,
        external_principal_id(EXTERNAL_RSA_ISSUER, "", "app-1")
    );
    let components: RsaPublicKeyComponents<Vec<u8>> = harness.issuer.rsa_key.public_key().into();
    for secret in [
        harness.issuer.rsa_key.public_key().as_ref().to_vec(),
        components.n.clone(),
        harness.issuer.rsa_jwks().into_bytes(),
    ] {
        let confused = hs256(
            &secret,
            serde_json::json!({"alg": "HS256", "kid": "ext-rsa"}),
            rsa_claims.clone(),
        );
        assert_eq!(
            identity.validate_token(&confused, DICOM_AUDIENCE).await,
            Err(TokenError::InvalidSignature)
        );
    }
    let rs_as_es = harness.issuer.sign_rs256(
        serde_json::json!({"alg": "ES256", "kid": "ext-rsa"}),
        rsa_claims,
    );
    assert_eq!(
        identity.validate_token(&rs_as_es, DICOM_AUDIENCE).await,
        Err(TokenError::InvalidSignature)
    );

    // A deleted principal's token stops working at once.
    let service = identity
        .create_service_principal("short-lived")
        .await
        .expect("service principal");
    let service_token = token_for(
        identity,
        tenant,
        &service.client_id,
        &service.client_secret,
        "https://management.azure.com/.default",
    )
    .await;
    identity
        .validate_token(&service_token, MANAGEMENT_AUDIENCE)
        .await
        .expect("valid before deletion");
    // Once a token verified, the same claims under another signature still do not.
    let (signed, signature) = service_token.rsplit_once('.').expect("compact JWS");
    let mut signature = signature.as_bytes().to_vec();
    signature[4] = if signature[4] == b'A' { b'B' } else { b'A' };
    let resigned = format!(
        "{signed}.{}",
        String::from_utf8(signature).expect("base64url")
    );
    assert_eq!(
        identity
            .validate_token(&resigned, MANAGEMENT_AUDIENCE)
            .await,
        Err(TokenError::InvalidSignature)
    );
    identity
        .validate_token(&service_token, MANAGEMENT_AUDIENCE)
        .await
        .expect("still valid");
    assert!(
        identity
            .delete_principal(&service.principal_id)
            .await
            .expect("delete")
    );
    assert_eq!(
        identity
            .validate_token(&service_token, MANAGEMENT_AUDIENCE)
            .await,
        Err(TokenError::PrincipalDeleted)
    );
    let body = client_credentials_body(
        &service.client_id,
        &service.client_secret,
        "https://management.azure.com/.default",
    );
    let (status, _, _) = send(identity, token_request(tenant, &body)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a deleted principal gets no new tokens"
    );
}

async fn signing_keys_rotate_and_persist(store: Store) {
    let harness = Harness::new(store).await;
    let identity = &harness.identity;
    let tenant = &harness.info.tenant_id;
    let admin = harness.admin_file();
    let before = token_for(
        identity,
        tenant,
        &admin.client_id,
        &admin.client_secret,
        "https://management.azure.com/.default",
    )
    .await;

    // Another node (or a restart) shares the sealed key: it validates the token.
    let restarted = harness.reopen().await;
    restarted
        .validate_token(&before, MANAGEMENT_AUDIENCE)
        .await
        .expect("validates after restart");
    assert_eq!(
        restarted.jwks().await.expect("jwks"),
        identity.jwks().await.expect("jwks")
    );

    identity.rotate_signing_key().await.expect("rotate");
    let after = token_for(
        identity,
        tenant,
        &admin.client_id,
        &admin.client_secret,
        "https://management.azure.com/.default",
    )
    .await;
    assert_ne!(
        decode_part(&before, 0)["kid"],
        decode_part(&after, 0)["kid"],
        "new tokens use the new key"
    );
    let jwks = identity.jwks().await.expect("jwks");
    assert_eq!(
        jwks.keys.len(),
        2,
        "the retired key stays published while its tokens live"
    );
    identity
        .validate_token(&before, MANAGEMENT_AUDIENCE)
        .await
        .expect("old token still valid");
    identity
        .validate_token(&after, MANAGEMENT_AUDIENCE)
        .await
        .expect("new token valid");
    // The other node learns of the new key when it first meets its kid.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    restarted
        .validate_token(&after, MANAGEMENT_AUDIENCE)
        .await
        .expect("other node reloads keys");

    // A different root key cannot open the sealed signing keys.
    let database = Database::connect(&harness.database_url)
        .await
        .expect("database");
    let wrong_root = Arc::new(RootKey::generate());
    let opened = Identity::open(database, wrong_root, IdentityConfig::new(BASE_URL)).await;
    assert!(
        matches!(opened, Err(IdentityError::RootKey(_))),
        "{opened:?}"
    );
}

async fn managed_identities(store: Store) {
    let harness = Harness::new(store).await;
    let identity = &harness.identity;
    let dicom_service = format!(
        "{}/providers/Microsoft.HealthcareApis/workspaces/ws1/dicomservices/dicom1",
        harness.resource_group()
    );
    let system = identity
        .create_managed_identity(ManagedIdentityKind::SystemAssigned, &dicom_service)
        .await
        .expect("system-assigned identity");
    assert_eq!(system.tenant_id, harness.info.tenant_id);
    // Enabling again (an update of the resource, in another case) keeps the same identity.
    let again = identity
        .create_managed_identity(
            ManagedIdentityKind::SystemAssigned,
            &dicom_service.to_uppercase(),
        )
        .await
        .expect("again");
    assert_eq!(again.principal_id, system.principal_id);

    // The hosted service gets tokens in process, and the vault accepts them.
    let token = identity
        .issue_token_for_managed_identity(&system.principal_id, VAULT_AUDIENCE)
        .await
        .expect("token");
    assert_eq!(token.expires_in, 3599);
    let caller = identity
        .validate_token(&token.access_token, VAULT_AUDIENCE)
        .await
        .expect("valid");
    assert_eq!(caller.principal_id, system.principal_id);
    assert_eq!(caller.client_id.as_deref(), Some(system.client_id.as_str()));

    // Service principals cannot use the in-process provider.
    let admin = harness.info.admin_principal_id.clone();
    assert!(matches!(
        identity
            .issue_token_for_managed_identity(&admin, VAULT_AUDIENCE)
            .await,
        Err(IdentityError::PrincipalNotFound)
    ));

    // User-assigned: only for userAssignedIdentities resources.
    let user_resource = format!(
        "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai1",
        harness.resource_group()
    );
    let user = identity
        .create_managed_identity(ManagedIdentityKind::UserAssigned, &user_resource)
        .await
        .expect("user-assigned identity");
    assert_ne!(user.principal_id, user.client_id);
    assert_eq!(user.resource_id, user_resource);
    assert!(matches!(
        identity
            .create_managed_identity(ManagedIdentityKind::UserAssigned, &dicom_service)
            .await,
        Err(IdentityError::InvalidScope(_))
    ));
    assert_eq!(
        identity
            .managed_identity(ManagedIdentityKind::UserAssigned, &user_resource)
            .await
            .expect("lookup")
            .map(|found| found.principal_id),
        Some(user.principal_id.clone())
    );

    // Disabling the system-assigned identity deletes it: its token stops working, its role
    // assignments go, and enabling again makes a new principal.
    identity
        .assign_role(&RoleAssignmentRequest {
            scope: harness.vault("v1"),
            name: uuid::Uuid::new_v4().to_string(),
            role_definition_id: roles::KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER.to_owned(),
            principal_id: system.principal_id.clone(),
            principal_type: None,
        })
        .await
        .expect("assign");
    assert!(
        identity
            .delete_managed_identity(ManagedIdentityKind::SystemAssigned, &dicom_service)
            .await
            .expect("disable")
    );
    assert_eq!(
        identity
            .validate_token(&token.access_token, VAULT_AUDIENCE)
            .await,
        Err(TokenError::PrincipalDeleted)
    );
    assert!(
        identity
            .role_assignments_of(&system.principal_id)
            .await
            .expect("list")
            .is_empty()
    );
    let renewed = identity
        .create_managed_identity(ManagedIdentityKind::SystemAssigned, &dicom_service)
        .await
        .expect("re-enable");
    assert_ne!(renewed.principal_id, system.principal_id);
}

/// Every role against data and control actions, assigned at subscription scope.
async fn role_operation_matrix(store: Store) {
    let harness = Harness::new(store).await;
    let identity = &harness.identity;
    let vault = harness.vault("v1");
    let dicom = format!(
        "{}/providers/Microsoft.HealthcareApis/workspaces/ws/dicomservices/d",
        harness.resource_group()
    );
    let key_scope = format!("{vault}/keys/cmk");
    // (operation, scope, data action?)
    let operations: [(&str, &str, bool); 12] = [
        (actions::KEYS_READ, &key_scope, true),
        (actions::KEYS_WRAP, &key_scope, true),
        (actions::KEYS_UNWRAP, &key_scope, true),
        (actions::KEYS_CREATE, &vault, true),
        (actions::KEYS_DELETE, &key_scope, true),
        (actions::DICOM_READ, &dicom, true),
        (actions::DICOM_WRITE, &dicom, true),
        ("Microsoft.KeyVault/vaults/write", &vault, false),
        ("Microsoft.KeyVault/vaults/read", &vault, false),
        (actions::ROLE_ASSIGNMENTS_WRITE, &vault, false),
        (
            "Microsoft.HealthcareApis/workspaces/dicomservices/write",
            &dicom,
            false,
        ),
        (
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
            &vault,
            true,
        ),
    ];
    // Expected: one letter per operation above, A(llow) or D(eny).
    let matrix = [
        (roles::OWNER, "DDDDDDDAAAAD"),
        (roles::CONTRIBUTOR, "DDDDDDDAADAD"),
        (roles::READER, "DDDDDDDDADDD"),
        (roles::USER_ACCESS_ADMINISTRATOR, "DDDDDDDDAADD"),
        (roles::KEY_VAULT_ADMINISTRATOR, "AAAAADDDDDDA"),
        (roles::KEY_VAULT_CRYPTO_OFFICER, "AAAAADDDDDDD"),
        (roles::KEY_VAULT_CRYPTO_USER, "AAADDDDDDDDD"),
        (
            roles::KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER,
            "AAADDDDDDDDD",
        ),
        (roles::KEY_VAULT_READER, "ADDDDDDDDDDD"),
        (roles::DICOM_DATA_OWNER, "DDDDDAADDDDD"),
        (roles::DICOM_DATA_READER, "DDDDDADDDDDD"),
    ];
    assert_eq!(
        matrix.len(),
        identity.role_definitions().len(),
        "every built-in role is in the matrix"
    );
    for (role, expected) in matrix {
        let principal = identity
            .create_service_principal(role)
            .await
            .expect("principal");
        identity
            .assign_role(&RoleAssignmentRequest {
                scope: harness.subscription(),
                name: uuid::Uuid::new_v4().to_string(),
                role_definition_id: format!(
                    "{}/providers/Microsoft.Authorization/roleDefinitions/{role}",
                    harness.subscription()
                ),
                principal_id: principal.principal_id.clone(),
                principal_type: None,
            })
            .await
            .expect("assign");
        let mut actual = String::new();
        for (action, scope, is_data_action) in operations {
            let decision = identity
                .authorize(&principal.principal_id, action, scope, is_data_action)
                .await
                .expect("authorize");
            actual.push(if decision.is_allowed() { 'A' } else { 'D' });
        }
        assert_eq!(actual, expected, "role {role}");
    }
    // A principal with no assignment is denied, and the reason names the permission.
    let nobody = uuid::Uuid::new_v4().to_string();
    match identity
        .authorize(&nobody, actions::KEYS_UNWRAP, &key_scope, true)
        .await
        .expect("authorize")
    {
        Decision::Deny(reason) => {
            let message = reason.to_string();
            assert!(message.contains(actions::KEYS_UNWRAP), "{message}");
            assert!(message.contains(&key_scope), "{message}");
        }
        Decision::Allow => panic!("deny by default"),
    }
}

async fn scope_inheritance_and_assignment_lifecycle(store: Store) {
    let harness = Harness::new(store).await;
    let identity = &harness.identity;
    let user_assigned = identity
        .create_managed_identity(
            ManagedIdentityKind::UserAssigned,
            &format!(
                "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/uai",
                harness.resource_group()
            ),
        )
        .await
        .expect("identity");
    let vault = harness.vault("kv1");
    let other_group_vault = format!(
        "{}/resourceGroups/other/providers/Microsoft.KeyVault/vaults/kv1",
        harness.subscription()
    );

    // The seed's template: Key Vault Crypto Officer at resource-group scope, with the role
    // named through resourceId() at that resource group.
    let name = uuid::Uuid::new_v4().to_string();
    let request = RoleAssignmentRequest {
        scope: harness.resource_group(),
        name: name.clone(),
        role_definition_id: format!(
            "{}/providers/Microsoft.Authorization/roleDefinitions/14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
            harness.resource_group()
        ),
        principal_id: user_assigned.principal_id.clone(),
        principal_type: Some("ServicePrincipal".to_owned()),
    };
    let assignment = identity.assign_role(&request).await.expect("assign");
    assert_eq!(
        assignment.id,
        format!(
            "{}/providers/Microsoft.Authorization/roleAssignments/{name}",
            harness.resource_group()
        )
    );
    assert_eq!(
        assignment.role_definition_id,
        format!(
            "{}/providers/Microsoft.Authorization/roleDefinitions/{}",
            harness.subscription(),
            roles::KEY_VAULT_CRYPTO_OFFICER
        )
    );
    let principal = &user_assigned.principal_id;
    for (scope, allowed) in [
        (format!("{vault}/keys/cmk"), true),
        (vault.to_uppercase(), true),
        (harness.resource_group(), true),
        (other_group_vault.clone(), false),
        (harness.subscription(), false),
        (
            format!(
                "{}2/providers/Microsoft.KeyVault/vaults/kv1",
                harness.resource_group()
            ),
            false,
        ),
    ] {
        let decision = identity
            .authorize(principal, actions::KEYS_WRAP, &scope, true)
            .await
            .expect("authorize");
        assert_eq!(decision.is_allowed(), allowed, "{scope}");
    }

    // Resource scope: covers the resource and below, not its siblings.
    let reader = identity
        .create_service_principal("reader")
        .await
        .expect("principal");
    identity
        .assign_role(&RoleAssignmentRequest {
            scope: format!("{vault}/"),
            name: uuid::Uuid::new_v4().to_string(),
            role_definition_id: format!(
                "/providers/Microsoft.Authorization/roleDefinitions/{}",
                roles::KEY_VAULT_READER
            ),
            principal_id: reader.principal_id.clone(),
            principal_type: None,
        })
        .await
        .expect("assign at resource scope");
    assert!(
        identity
            .authorize(
                &reader.principal_id,
                actions::KEYS_READ,
                &format!("{vault}/keys/k"),
                true
            )
            .await
            .expect("authorize")
            .is_allowed()
    );
    assert!(
        !identity
            .authorize(
                &reader.principal_id,
                actions::KEYS_READ,
                &harness.vault("kv2"),
                true
            )
            .await
            .expect("authorize")
            .is_allowed()
    );

    // PUT is idempotent; a changed body under the same name, or the same grant under another
    // name, conflicts; unknown roles and non-GUID names are refused.
    assert_eq!(
        identity.assign_role(&request).await.expect("idempotent"),
        assignment
    );
    let changed = RoleAssignmentRequest {
        role_definition_id: roles::READER.to_owned(),
        ..request.clone()
    };
    assert!(matches!(
        identity.assign_role(&changed).await,
        Err(IdentityError::RoleAssignmentUpdateNotPermitted)
    ));
    let duplicate = RoleAssignmentRequest {
        name: uuid::Uuid::new_v4().to_string(),
        scope: harness.resource_group().to_lowercase(),
        ..request.clone()
    };
    assert!(matches!(
        identity.assign_role(&duplicate).await,
        Err(IdentityError::RoleAssignmentExists { .. })
    ));
    let unknown_role = RoleAssignmentRequest {
        name: uuid::Uuid::new_v4().to_string(),
        role_definition_id: uuid::Uuid::new_v4().to_string(),
        ..request.clone()
    };
    assert!(matches!(
        identity.assign_role(&unknown_role).await,
        Err(IdentityError::RoleDefinitionNotFound)
    ));
    let bad_name = RoleAssignmentRequest {
        name: "not-a-guid".to_owned(),
        ..request.clone()
    };
    assert!(matches!(
        identity.assign_role(&bad_name).await,
        Err(IdentityError::InvalidArgument(_))
    ));

    // Listing: at and above the vault sees the subscription's admin roles and the group's
    // assignment; with below, from the group, the vault's too.
    let at_vault = identity
        .list_role_assignments(&vault, ScopeFilter::AtAndAbove)
        .await
        .expect("list");
    assert_eq!(at_vault.len(), 3 + 1 + 1, "{at_vault:#?}");
    let at_group = identity
        .list_role_assignments(&harness.resource_group(), ScopeFilter::AtAndAbove)
        .await
        .expect("list");
    assert_eq!(at_group.len(), 3 + 1);
    let below_group = identity
        .list_role_assignments(&harness.resource_group(), ScopeFilter::AtAboveAndBelow)
        .await
        .expect("list");
    assert_eq!(below_group.len(), 3 + 1 + 1);
    let other_group = identity
        .list_role_assignments(
            &format!("{}/resourceGroups/other", harness.subscription()),
            ScopeFilter::AtAboveAndBelow,
        )
        .await
        .expect("list");
    assert_eq!(other_group.len(), 3);

    // Removing the assignment takes the permission away; the id compares case-insensitively.
    let removed = identity
        .remove_role_assignment(&assignment.id.to_uppercase())
        .await
        .expect("remove");
    assert_eq!(
        removed.as_ref().map(|removed| &removed.name),
        Some(&assignment.name)
    );
    assert!(
        identity
            .role_assignment(&assignment.id)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        !identity
            .authorize(
                principal,
                actions::KEYS_WRAP,
                &format!("{vault}/keys/cmk"),
                true
            )
            .await
            .expect("authorize")
            .is_allowed()
    );
    assert!(
        identity
            .remove_role_assignment(&assignment.id)
            .await
            .expect("remove again")
            .is_none()
    );

    // External principals can be named by role assignments.
    let t = now();
    let external_oid = uuid::Uuid::new_v4().to_string();
    let external_token = harness.issuer.sign_es256(
        serde_json::json!({"alg": "ES256", "kid": "ext-ec"}),
        serde_json::json!({"iss": EXTERNAL_ISSUER, "aud": DICOM_AUDIENCE, "nbf": t, "exp": t + 600, "oid": external_oid}),
    );
    let caller = identity
        .validate_token(&external_token, DICOM_AUDIENCE)
        .await
        .expect("external");
    let dicom = format!(
        "{}/providers/Microsoft.HealthcareApis/workspaces/ws/dicomservices/d",
        harness.resource_group()
    );
    assert!(
        !identity
            .authorize(&caller.principal_id, actions::DICOM_READ, &dicom, true)
            .await
            .expect("authorize")
            .is_allowed()
    );
    identity
        .assign_role(&RoleAssignmentRequest {
            scope: dicom.clone(),
            name: uuid::Uuid::new_v4().to_string(),
            role_definition_id: roles::DICOM_DATA_READER.to_owned(),
            principal_id: caller.principal_id.clone(),
            principal_type: Some("User".to_owned()),
        })
        .await
        .expect("assign to an external principal");
    assert!(
        identity
            .authorize(&caller.principal_id, actions::DICOM_READ, &dicom, true)
            .await
            .expect("authorize")
            .is_allowed()
    );
    assert!(
        !identity
            .authorize(&caller.principal_id, actions::DICOM_WRITE, &dicom, true)
            .await
            .expect("authorize")
            .is_allowed()
    );
}

async fn bootstrap_is_idempotent(store: Store) {
    let harness = Harness::new(store).await;
    let first = harness.info.clone();
    assert!(first.admin_credentials_written);
    let admin_file = harness.admin_file();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first.admin_credentials_path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let subscription_scope = format!("/subscriptions/{}", first.subscription_id);
    let admin_roles = |assignments: Vec<hds_identity::RoleAssignment>| {
        let mut names: Vec<&'static str> = assignments
            .iter()
            .filter(|assignment| assignment.scope == subscription_scope)
            .filter_map(|assignment| assignment.role_definition().map(|role| role.role_name))
            .collect();
        names.sort_unstable();
        names
    };
    let expected_roles = vec!["DICOM Data Owner", "Key Vault Administrator", "Owner"];
    assert_eq!(
        admin_roles(
            harness
                .identity
                .role_assignments_of(&first.admin_principal_id)
                .await
                .expect("list")
        ),
        expected_roles
    );

    // A restart: a new service on the same database and data dir changes nothing.
    let restarted = harness.reopen().await;
    let second = restarted
        .bootstrap(harness.data_dir.path())
        .await
        .expect("second bootstrap");
    assert_eq!(second.tenant_id, first.tenant_id);
    assert_eq!(second.subscription_id, first.subscription_id);
    assert_eq!(second.admin_principal_id, first.admin_principal_id);
    assert!(!second.admin_credentials_written);
    assert!(harness.admin_file() == admin_file, "admin.json untouched");
    assert_eq!(
        admin_roles(
            restarted
                .role_assignments_of(&first.admin_principal_id)
                .await
                .expect("list")
        ),
        expected_roles
    );

    // Cut off half-way: the database has the admin, but its assignments and admin.json were
    // never written. The next start completes both; the admin's secret is replaced.
    for assignment in restarted
        .role_assignments_of(&first.admin_principal_id)
        .await
        .expect("list")
        .into_iter()
        .take(2)
    {
        restarted
            .remove_role_assignment(&assignment.id)
            .await
            .expect("remove");
    }
    std::fs::remove_file(&first.admin_credentials_path).expect("remove admin.json");
    std::fs::write(
        first.admin_credentials_path.with_extension("json.tmp"),
        b"{partial",
    )
    .expect("leftover temp file");
    let third = restarted
        .bootstrap(harness.data_dir.path())
        .await
        .expect("third bootstrap");
    assert!(third.admin_credentials_written);
    assert_eq!(third.admin_principal_id, first.admin_principal_id);
    assert_eq!(
        admin_roles(
            restarted
                .role_assignments_of(&first.admin_principal_id)
                .await
                .expect("list")
        ),
        expected_roles
    );
    let rewritten = harness.admin_file();
    assert_eq!(rewritten.client_id, admin_file.client_id);
    assert_ne!(rewritten.client_secret, admin_file.client_secret);
    let tenant = &first.tenant_id;
    let old = client_credentials_body(
        &admin_file.client_id,
        &admin_file.client_secret,
        "https://management.azure.com/.default",
    );
    let (status, _, _) = send(&restarted, token_request(tenant, &old)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the replaced secret no longer works"
    );
    token_for(
        &restarted,
        tenant,
        &rewritten.client_id,
        &rewritten.client_secret,
        "https://management.azure.com/.default",
    )
    .await;

    // Two bootstraps at once on a fresh database make one tenant, one admin.
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let url = match store {
        Store::Sqlite => format!("sqlite:{}", data_dir.path().join("hds.db").display()),
        Store::Postgres => PostgresCluster::shared()
            .expect("cluster")
            .fresh_database()
            .await
            .expect("database"),
    };
    let fresh = open(&url, &harness.root_key, &harness.issuer).await;
    let (left, right) = tokio::join!(
        fresh.bootstrap(data_dir.path()),
        fresh.bootstrap(data_dir.path())
    );
    let (left, right) = (left.expect("left"), right.expect("right"));
    assert_eq!(left.tenant_id, right.tenant_id);
    assert_eq!(left.admin_principal_id, right.admin_principal_id);
    let credentials = read_admin(data_dir.path());
    token_for(
        &fresh,
        &left.tenant_id,
        &credentials.client_id,
        &credentials.client_secret,
        "https://vault.azure.net/.default",
    )
    .await;
}

async fn authenticate_answers_with_challenges(store: Store) {
    use hds_identity::auth::{Authenticated, ManagementAudience, authenticate};
    let harness = Harness::new(store).await;
    let identity = &harness.identity;
    let tenant = &harness.info.tenant_id;
    let admin = harness.admin_file();
    let authority = format!("{BASE_URL}/{tenant}");

    let mut headers = http::HeaderMap::new();
    let error = authenticate(identity, &headers, MANAGEMENT_AUDIENCE)
        .await
        .expect_err("no token");
    assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
    let response = axum::response::IntoResponse::into_response(error);
    assert_eq!(
        response.headers()["www-authenticate"],
        format!(
            "Bearer authorization_uri=\"{authority}\", resource_id=\"https://management.azure.com\""
        )
        .as_str()
    );
    let error = authenticate(identity, &headers, "https://vault.azure.net/")
        .await
        .expect_err("no token");
    let response = axum::response::IntoResponse::into_response(error);
    assert_eq!(
        response.headers()["www-authenticate"],
        format!("Bearer authorization=\"{authority}\", resource=\"https://vault.azure.net\"")
            .as_str()
    );

    let vault_token = token_for(
        identity,
        tenant,
        &admin.client_id,
        &admin.client_secret,
        "https://vault.azure.net/.default",
    )
    .await;
    headers.insert(
        "authorization",
        format!("Bearer {vault_token}").parse().expect("header"),
    );
    let error = authenticate(identity, &headers, MANAGEMENT_AUDIENCE)
        .await
        .expect_err("wrong audience");
    assert_eq!(error.status(), StatusCode::UNAUTHORIZED);
    let caller = authenticate(identity, &headers, VAULT_AUDIENCE)
        .await
        .expect("right audience");
    assert_eq!(caller.principal_id, harness.info.admin_principal_id);

    // 403 names the missing permission.
    let reader = identity
        .create_service_principal("nobody")
        .await
        .expect("principal");
    let reader_token = token_for(
        identity,
        tenant,
        &reader.client_id,
        &reader.client_secret,
        "https://vault.azure.net/.default",
    )
    .await;
    let reader_caller = identity
        .validate_token(&reader_token, VAULT_AUDIENCE)
        .await
        .expect("valid");
    let error = identity
        .require(
            &reader_caller,
            actions::KEYS_UNWRAP,
            &harness.vault("v"),
            true,
        )
        .await
        .expect_err("forbidden");
    assert_eq!(error.status(), StatusCode::FORBIDDEN);
    let response = axum::response::IntoResponse::into_response(error);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains(actions::KEYS_UNWRAP),
        "{body}"
    );
    identity
        .require(&caller, actions::KEYS_UNWRAP, &harness.vault("v"), true)
        .await
        .expect("admin may");

    // The extractor, in a router whose state is the identity service.
    async fn whoami(Authenticated { principal, .. }: Authenticated<ManagementAudience>) -> String {
        principal.principal_id
    }
    let app = axum::Router::new()
        .route("/whoami", axum::routing::get(whoami))
        .with_state(identity.clone());
    let management_token = token_for(
        identity,
        tenant,
        &admin.client_id,
        &admin.client_secret,
        "https://management.azure.com/.default",
    )
    .await;
    let response = app
        .clone()
        .oneshot(
            Request::get("/whoami")
                .header("authorization", format!("Bearer {management_token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(bytes.as_ref(), harness.info.admin_principal_id.as_bytes());
    let response = app
        .oneshot(
            Request::get("/whoami")
                .header("authorization", format!("Bearer {vault_token}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
}

async fn external_issuer_keys_by_url(store: Store) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let harness = Harness::new(store).await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let jwks = harness.issuer.rsa_jwks();
    let app = {
        let fetches = fetches.clone();
        axum::Router::new().route(
            "/keys",
            axum::routing::get(move || {
                let fetches = fetches.clone();
                let jwks = jwks.clone();
                async move {
                    fetches.fetch_add(1, Ordering::SeqCst);
                    jwks
                }
            }),
        )
    };
    // Served over HTTPS under a CA of the test's own, which the identity service is told to
    // trust for JWKS fetches.
    let ca_dir = tempfile::tempdir().expect("CA directory");
    let ca = hds_tls::LocalCa::load_or_create(ca_dir.path(), &harness.root_key).expect("CA");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let address = listener.local_addr().expect("address");
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(
        ca.server_config(&[]).expect("server certificate"),
    );
    let handle = axum_server::Handle::new();
    let server = {
        let handle = handle.clone();
        tokio::spawn(async move {
            axum_server::from_tcp_rustls(listener, tls)
                .handle(handle)
                .serve(app.into_make_service())
                .await
        })
    };

    let database = Database::connect(&harness.database_url)
        .await
        .expect("database");
    let issuer_url = "https://idp.example.net";
    let config = IdentityConfig::new(BASE_URL)
        .with_jwks_ca(ca.ca_pem_path())
        .with_external_issuer(
            ExternalIssuer::from_jwks_url(issuer_url, format!("https://{address}/keys"))
                .expect("an https JWKS URL"),
        );
    let identity = Identity::open(database, harness.root_key.clone(), config)
        .await
        .expect("open");
    let t = now();
    let claims = serde_json::json!({"iss": issuer_url, "aud": MANAGEMENT_AUDIENCE, "nbf": t, "exp": t + 600, "oid": "user-1"});
    let token = harness.issuer.sign_rs256(
        serde_json::json!({"alg": "RS256", "kid": "ext-rsa"}),
        claims.clone(),
    );
    for _ in 0..3 {
        let caller = identity
            .validate_token(&token, MANAGEMENT_AUDIENCE)
            .await
            .expect("validated with fetched keys");
        assert_eq!(
            caller.principal_id,
            external_principal_id(issuer_url, "", "user-1")
        );
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "the document is cached");
    // An unknown kid right after a fetch does not fetch again (rate limit).
    let unknown = harness.issuer.sign_rs256(
        serde_json::json!({"alg": "RS256", "kid": "rotated"}),
        claims,
    );
    assert_eq!(
        identity.validate_token(&unknown, MANAGEMENT_AUDIENCE).await,
        Err(TokenError::UnknownSigningKey)
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    handle.shutdown();
    server.await.expect("server task").expect("server");

    // Plain HTTP is refused when the issuer is configured, before anything is fetched.
    for refused in [
        format!("http://{address}/keys"),
        "HTTP://idp.example.net/keys".to_owned(),
        "file:///etc/passwd".to_owned(),
        "https://".to_owned(),
    ] {
        assert_eq!(
            ExternalIssuer::from_jwks_url(issuer_url, refused.clone()).unwrap_err(),
            ExternalIssuerError::JwksNotHttps,
            "{refused}"
        );
    }
    assert!(matches!(
        ExternalIssuer::from_jwks_url("", "https://idp.example.net/keys"),
        Err(ExternalIssuerError::Invalid(_))
    ));
}

/// External issuers' principals live in their own namespace, and their tokens are bounded:
/// length, lifetime, `exp`, `nbf` and claim sizes.
async fn external_principals_are_namespaced_and_bounded(store: Store) {
    let harness = Harness::new(store).await;
    let identity = &harness.identity;
    let admin = harness.info.admin_principal_id.clone();
    let header = serde_json::json!({"alg": "ES256", "kid": "ext-ec", "typ": "JWT"});
    let t = now();
    let sign = |claims: serde_json::Value| harness.issuer.sign_es256(header.clone(), claims);

    // A token of a trusted external issuer whose oid and sub are the bootstrap admin's
    // principal id is some other principal: it gets none of the admin's rights.
    let impostor = sign(serde_json::json!({
        "iss": EXTERNAL_ISSUER, "aud": MANAGEMENT_AUDIENCE, "nbf": t, "exp": t + 600,
        "oid": admin, "sub": admin, "tid": harness.info.tenant_id,
    }));
    let caller = identity
        .validate_token(&impostor, MANAGEMENT_AUDIENCE)
        .await
        .expect("a valid external token");
    assert!(caller.external);
    assert_ne!(caller.principal_id, admin);
    assert_eq!(
        uuid::Uuid::parse_str(&caller.principal_id)
            .expect("a GUID")
            .get_version_num(),
        5
    );
    assert!(
        identity
            .authorize(
                &admin,
                "Microsoft.Resources/subscriptions/resourceGroups/read",
                &harness.subscription(),
                false
            )
            .await
            .expect("authorize")
            .is_allowed(),
        "the control: the admin may"
    );
    assert!(
        !identity
            .authorize(
                &caller.principal_id,
                "Microsoft.Resources/subscriptions/resourceGroups/read",
                &harness.subscription(),
                false
            )
            .await
            .expect("authorize")
            .is_allowed()
    );
    // Issuer, tenant and subject each change the id, and no triple shares another's name.
    let id =
        |issuer: &str, tenant: &str, subject: &str| external_principal_id(issuer, tenant, subject);
    assert_ne!(
        id(EXTERNAL_ISSUER, "t", "u"),
        id(EXTERNAL_RSA_ISSUER, "t", "u")
    );
    assert_ne!(
        id(EXTERNAL_ISSUER, "t", "u"),
        id(EXTERNAL_ISSUER, "t2", "u")
    );
    assert_ne!(
        id(EXTERNAL_ISSUER, "ab", "c"),
        id(EXTERNAL_ISSUER, "a", "bc")
    );
    assert_eq!(id(EXTERNAL_ISSUER, "t", "u"), id(EXTERNAL_ISSUER, "t", "u"));

    let validate =
        |token: String| async move { identity.validate_token(&token, MANAGEMENT_AUDIENCE).await };
    let claims = |extra: serde_json::Value| {
        let mut claims = serde_json::json!({"iss": EXTERNAL_ISSUER, "aud": MANAGEMENT_AUDIENCE, "oid": "user-1"});
        for (name, value) in extra.as_object().expect("an object") {
            claims[name] = value.clone();
        }
        claims
    };
    // exp is required.
    assert_eq!(
        validate(sign(claims(serde_json::json!({"nbf": t})))).await,
        Err(TokenError::MissingClaim("exp"))
    );
    // nbf is honoured (beyond the five minutes of clock skew).
    assert_eq!(
        validate(sign(claims(
            serde_json::json!({"nbf": t + 600, "exp": t + 1200})
        )))
        .await,
        Err(TokenError::NotYetValid)
    );
    // At most 24 hours of lifetime, counted from nbf, else iat, else now.
    let day = 24 * 3600;
    assert!(
        validate(sign(claims(
            serde_json::json!({"nbf": t, "exp": t + day - 60})
        )))
        .await
        .is_ok()
    );
    for too_long in [
        serde_json::json!({"nbf": t, "exp": t + day + 60}),
        serde_json::json!({"iat": t - 3600, "exp": t + day - 600}),
        serde_json::json!({"exp": t + day + 3600}),
        serde_json::json!({"nbf": t - 3 * day, "exp": t + 600}),
    ] {
        assert_eq!(
            validate(sign(claims(too_long.clone()))).await,
            Err(TokenError::LifetimeTooLong { limit_seconds: day }),
            "{too_long}"
        );
    }
    // Identity claims are bounded.
    let long = "x".repeat(300);
    assert_eq!(
        validate(sign(claims(
            serde_json::json!({"nbf": t, "exp": t + 600, "oid": long})
        )))
        .await,
        Err(TokenError::ClaimTooLarge {
            claim: "oid",
            limit: 256
        })
    );
    // A subject is required.
    assert_eq!(
        validate(sign(serde_json::json!({"iss": EXTERNAL_ISSUER, "aud": MANAGEMENT_AUDIENCE, "nbf": t, "exp": t + 600}))).await,
        Err(TokenError::MissingClaim("oid or sub"))
    );
    // A megabyte of token is refused by its length, before anything is decoded.
    let huge = format!("{}.e30.AA", "A".repeat(1024 * 1024));
    assert_eq!(
        validate(huge).await,
        Err(TokenError::TooLarge {
            limit: MAX_TOKEN_BYTES
        })
    );
}

/// A Graph request to the identity's Graph routes with `token`.
async fn graph(
    identity: &Identity,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(match body {
            Some(body) => Body::from(body.to_string()),
            None => Body::empty(),
        })
        .expect("request");
    let response = identity
        .graph_router()
        .oneshot(request)
        .await
        .expect("router answers");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

async fn token_status(
    identity: &Identity,
    tenant: &str,
    client_id: &str,
    secret: &str,
) -> (StatusCode, serde_json::Value) {
    let (status, _, json) = send(
        identity,
        token_request(
            tenant,
            &client_credentials_body(client_id, secret, &format!("{DICOM_AUDIENCE}/.default")),
        ),
    )
    .await;
    (status, json)
}

/// App registrations through Graph: who may, secrets shown once with expiry, hostile input,
/// and deletion revoking access here at once and on another node within the cache's bound.
async fn applications_and_their_secrets(store: Store) {
    let harness = Harness::new(store).await;
    let identity = &harness.identity;
    let tenant = harness.info.tenant_id.clone();
    let admin = harness.admin_file();
    let admin_token = token_for(
        identity,
        &tenant,
        &admin.client_id,
        &admin.client_secret,
        &format!("{BASE_URL}/.default"),
    )
    .await;

    // Deny by default: a Contributor of the subscription may not register applications.
    let contributor = identity
        .create_service_principal("contributor")
        .await
        .expect("principal");
    identity
        .assign_role(&RoleAssignmentRequest {
            scope: harness.subscription(),
            name: uuid::Uuid::new_v4().to_string(),
            role_definition_id: roles::CONTRIBUTOR.to_owned(),
            principal_id: contributor.principal_id.clone(),
            principal_type: None,
        })
        .await
        .expect("assign");
    let contributor_token = token_for(
        identity,
        &tenant,
        &contributor.client_id,
        &contributor.client_secret,
        &format!("{BASE_URL}/.default"),
    )
    .await;
    for (method, path) in [
        ("POST", "/v1.0/applications"),
        ("GET", "/v1.0/applications"),
        ("GET", "/v1.0/servicePrincipals"),
    ] {
        let (status, body) = graph(
            identity,
            &contributor_token,
            method,
            path,
            Some(serde_json::json!({"displayName": "x"})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "Authorization_RequestDenied");
    }
    let (status, _) = graph(identity, "not-a-token", "GET", "/v1.0/applications", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Create an application, its service principal, a secret.
    let (status, app) = graph(
        identity,
        &admin_token,
        "POST",
        "/v1.0/applications",
        Some(serde_json::json!({"displayName": "viewer", "keyCredentials": []})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let app_object = app["id"].as_str().expect("id").to_owned();
    let app_id = app["appId"].as_str().expect("appId").to_owned();
    let (status, sp) = graph(
        identity,
        &admin_token,
        "POST",
        "/v1.0/servicePrincipals",
        Some(serde_json::json!({"appId": app_id, "accountEnabled": true})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{sp}");
    let sp_object = sp["id"].as_str().expect("id").to_owned();
    assert_eq!(sp["appId"], app_id.as_str());
    let (status, body) = graph(
        identity,
        &admin_token,
        "POST",
        "/v1.0/servicePrincipals",
        Some(serde_json::json!({"appId": app_id})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "one service principal per application: {body}"
    );
    let (status, body) = graph(
        identity,
        &admin_token,
        "POST",
        "/v1.0/servicePrincipals",
        Some(serde_json::json!({"appId": uuid::Uuid::new_v4().to_string()})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("does not reference"),
        "{body}"
    );

    let add_password = format!("/v1.0/applications/{app_object}/addPassword");
    let (status, password) = graph(
        identity,
        &admin_token,
        "POST",
        &add_password,
        Some(serde_json::json!({"passwordCredential": {"displayName": "rbac"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{password}");
    let secret = password["secretText"]
        .as_str()
        .expect("secretText")
        .to_owned();
    assert!(secret.starts_with(|c: char| c.is_ascii_alphanumeric()));
    let key_id = password["keyId"].as_str().expect("keyId").to_owned();
    let (status, shown) = graph(
        identity,
        &admin_token,
        "GET",
        &format!("/v1.0/applications/{app_object}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["passwordCredentials"][0]["keyId"], key_id.as_str());
    assert!(
        shown["passwordCredentials"][0]["secretText"].is_null(),
        "a secret is shown once"
    );
    assert_eq!(shown["passwordCredentials"][0]["hint"], &secret[..3]);
    assert!(!shown.to_string().contains(&secret));

    // The application signs in as its service principal.
    let (status, json) = token_status(identity, &tenant, &app_id, &secret).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let token = json["access_token"].as_str().expect("token").to_owned();
    let principal = identity
        .validate_token(&token, DICOM_AUDIENCE)
        .await
        .expect("valid");
    assert_eq!(principal.principal_id, sp_object);
    let (status, _) = token_status(identity, &tenant, &app_id, "wrong-secret").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Lists with the filters az sends.
    let (status, list) = graph(
        identity,
        &admin_token,
        "GET",
        &format!(
            "/v1.0/servicePrincipals?$filter=servicePrincipalNames%2Fany(c%3Ac%20eq%20'{app_id}')"
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["value"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["value"][0]["id"], sp_object.as_str());
    let (status, list) = graph(
        identity,
        &admin_token,
        "GET",
        "/v1.0/applications?$filter=startswith(displayName%2C'view')",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["value"].as_array().map(Vec::len), Some(1));
    let (status, _) = graph(
        identity,
        &admin_token,
        "GET",
        "/v1.0/applications?$filter=secret%20eq%20'x'",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Hostile input: each refused with a 4xx, nothing created.
    let long_name = "n".repeat(257);
    for (path, body, expected) in [
        (
            "/v1.0/applications",
            serde_json::json!({"displayName": long_name}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1.0/applications",
            serde_json::json!({"displayName": "a\u{0}b"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1.0/applications",
            serde_json::json!({"displayName": "   "}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1.0/applications",
            serde_json::json!({"displayName": "x", "identifierUris": ["api://x"]}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1.0/applications",
            serde_json::json!({"displayName": "x".repeat(20_000)}),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            add_password.as_str(),
            serde_json::json!({"passwordCredential": {"endDateTime": "2001-01-01T00:00:00Z"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            add_password.as_str(),
            serde_json::json!({"passwordCredential": {"endDateTime": "2999-01-01T00:00:00Z"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            add_password.as_str(),
            serde_json::json!({"passwordCredential": {"endDateTime": "tomorrow"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            add_password.as_str(),
            serde_json::json!({"passwordCredential": {"secretText": "chosen-by-caller"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v1.0/servicePrincipals",
            serde_json::json!({"appId": "../../etc"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, body) = graph(identity, &admin_token, "POST", path, Some(body)).await;
        assert_eq!(status, expected, "{path}: {body}");
    }
    let (status, _) = graph(
        identity,
        &admin_token,
        "GET",
        "/v1.0/applications/not-a-guid",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = graph(identity, &admin_token, "GET", "/v1.0/applications", None).await;
    assert_eq!(
        list["value"].as_array().map(Vec::len),
        Some(1),
        "nothing was created by hostile input"
    );
    // Neither the admin nor a managed identity can be deleted through Graph.
    let (status, _) = graph(
        identity,
        &admin_token,
        "DELETE",
        &format!(
            "/v1.0/servicePrincipals/{}",
            harness.info.admin_principal_id
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // At most 16 passwords per object.
    let mut extra = 1;
    loop {
        let (status, body) = graph(
            identity,
            &admin_token,
            "POST",
            &add_password,
            Some(serde_json::json!({})),
        )
        .await;
        if status != StatusCode::OK {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            break;
        }
        extra += 1;
        assert!(extra <= 16, "more than 16 passwords were accepted");
    }
    assert_eq!(extra, 16);

    // An expired secret is refused with Entra's code; a removed one is refused too.
    let database = Database::connect(&harness.database_url)
        .await
        .expect("database");
    sqlx::query("UPDATE identity_password_credentials SET end_at = 1000 WHERE key_id = $1")
        .bind(&key_id)
        .execute(database.pool())
        .await
        .expect("expire");
    let (status, json) = token_status(identity, &tenant, &app_id, &secret).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    assert!(
        json["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("AADSTS7000222"),
        "{json}"
    );
    let (status, fresh) = graph(
        identity,
        &admin_token,
        "POST",
        &format!("/v1.0/servicePrincipals/{sp_object}/addPassword"),
        Some(serde_json::json!({"passwordCredential": {"displayName": "sp"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{fresh}");
    let fresh_secret = fresh["secretText"].as_str().expect("secret").to_owned();
    assert_eq!(
        token_status(identity, &tenant, &app_id, &fresh_secret)
            .await
            .0,
        StatusCode::OK
    );
    let (status, _) = graph(
        identity,
        &admin_token,
        "POST",
        &format!("/v1.0/servicePrincipals/{sp_object}/removePassword"),
        Some(serde_json::json!({"keyId": fresh["keyId"]})),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        token_status(identity, &tenant, &app_id, &fresh_secret)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // Deleting the application revokes its access: here at once, on another node (its own
    // access cache, warmed) within the cache's 5 s bound.
    let dicom = format!(
        "{}/providers/Microsoft.HealthcareApis/workspaces/ws/dicomservices/d",
        harness.resource_group()
    );
    identity
        .assign_role(&RoleAssignmentRequest {
            scope: dicom.clone(),
            name: uuid::Uuid::new_v4().to_string(),
            role_definition_id: roles::DICOM_DATA_READER.to_owned(),
            principal_id: sp_object.clone(),
            principal_type: None,
        })
        .await
        .expect("assign");
    let other_node = harness.reopen().await;
    for node in [identity, &other_node] {
        assert!(
            node.authorize(&sp_object, actions::DICOM_READ, &dicom, true)
                .await
                .expect("authorize")
                .is_allowed()
        );
        node.validate_token(&token, DICOM_AUDIENCE)
            .await
            .expect("valid");
    }
    let (status, _) = graph(
        identity,
        &admin_token,
        "DELETE",
        &format!("/v1.0/applications/{app_object}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        !identity
            .authorize(&sp_object, actions::DICOM_READ, &dicom, true)
            .await
            .expect("authorize")
            .is_allowed()
    );
    assert_eq!(
        identity.validate_token(&token, DICOM_AUDIENCE).await.err(),
        Some(TokenError::PrincipalDeleted)
    );
    let deleted_at = std::time::Instant::now();
    loop {
        let allowed = other_node
            .authorize(&sp_object, actions::DICOM_READ, &dicom, true)
            .await
            .expect("authorize")
            .is_allowed();
        if !allowed {
            break;
        }
        // The bound is 5 s (the cache's entry lifetime); the rest is slack for a loaded machine.
        assert!(
            deleted_at.elapsed() < std::time::Duration::from_secs(15),
            "another node still allows a deleted principal"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        other_node
            .validate_token(&token, DICOM_AUDIENCE)
            .await
            .is_err()
    );
    assert_eq!(
        identity
            .role_assignments_of(&sp_object)
            .await
            .expect("list")
            .len(),
        0
    );
    let (status, _) = graph(
        identity,
        &admin_token,
        "GET",
        &format!("/v1.0/servicePrincipals/{sp_object}"),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the application took its service principal along"
    );
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Store::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario(super::Store::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    client_credentials_over_http,
    validator_rejects_what_it_must,
    signing_keys_rotate_and_persist,
    managed_identities,
    role_operation_matrix,
    scope_inheritance_and_assignment_lifecycle,
    bootstrap_is_idempotent,
    authenticate_answers_with_challenges,
    external_issuer_keys_by_url,
    external_principals_are_namespaced_and_bounded,
    applications_and_their_secrets,
);
