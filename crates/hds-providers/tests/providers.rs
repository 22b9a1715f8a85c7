//! The providers through hds-arm's HTTP surface, with real identity and vault services, on
//! SQLite and on a throwaway PostgreSQL cluster. DICOM services run on a fake host that
//! records its calls and checks key access the way the real one does: the key must exist and
//! the chosen identity must be allowed to unwrap with it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use hds_arm::{Arm, ArmConfig, ArmError, ArmFuture, Caller, ResourceId, Subscription};
use hds_crypto::root::RootKey;
use hds_db::Database;
use hds_db::testing::PostgresCluster;
use hds_identity::roles::{
    KEY_VAULT_CRYPTO_OFFICER, KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER, READER, actions,
};
use hds_identity::{
    AdminCredentials, BootstrapInfo, DICOM_AUDIENCE, Decision, Identity, IdentityConfig,
    MANAGEMENT_AUDIENCE, TokenError,
};
use hds_keyvault::{KeyVaultService, ServiceConfig, VaultAddressing, VaultError};
use hds_providers::{
    DicomServiceHost, DicomServiceSpec, HealthReport, KeyAccessState, KeyIdentityKind,
    ProviderDependencies, access_control, register_all,
};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const BASE_URL: &str = "https://hds.test:8443";
const VAULT_DOMAIN: &str = "hds.test";
const API_DICOM: &str = "2023-06-01-preview";

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostCall {
    Apply(Box<DicomServiceSpec>),
    Remove(String),
    Moved(String, String),
}

/// Records every call; `apply` validates the key like the real host would.
struct FakeHost {
    identity: Identity,
    vaults: Arc<KeyVaultService>,
    calls: Mutex<Vec<HostCall>>,
    health: Mutex<HashMap<String, HealthReport>>,
}

impl FakeHost {
    fn calls(&self) -> Vec<HostCall> {
        self.calls.lock().expect("lock").clone()
    }

    fn applies(&self) -> Vec<DicomServiceSpec> {
        self.calls()
            .into_iter()
            .filter_map(|call| match call {
                HostCall::Apply(spec) => Some(*spec),
                _ => None,
            })
            .collect()
    }

    async fn validate(&self, spec: &DicomServiceSpec) -> Result<(), ArmError> {
        let Some(key) = &spec.key else { return Ok(()) };
        let refuse = |code: &str| ArmError::new(StatusCode::BAD_REQUEST, code, "fake host refused");
        let rest = key
            .key_url
            .strip_prefix("https://")
            .ok_or_else(|| refuse("InvalidKeyUrl"))?;
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| refuse("InvalidKeyUrl"))?;
        let vault_name = host
            .strip_suffix(&format!(".vault.{VAULT_DOMAIN}"))
            .ok_or_else(|| refuse("InvalidKeyUrl"))?;
        let mut parts = path.split('/');
        let (Some("keys"), Some(key_name)) = (parts.next(), parts.next()) else {
            return Err(refuse("InvalidKeyUrl"));
        };
        let version = parts.next();
        let vault = self
            .vaults
            .get_vault(vault_name)
            .await
            .map_err(|_| refuse("KeyVaultNotFound"))?;
        match self.vaults.get_key(&vault, key_name, version).await {
            Ok(_) => {}
            Err(VaultError::KeyNotFound(_)) => return Err(refuse("KeyNotFound")),
            Err(error) => return Err(ArmError::internal(&error)),
        }
        let scope = format!("{}/keys/{key_name}", vault.resource_id);
        let decision = self
            .identity
            .authorize(&key.principal_id, actions::KEYS_UNWRAP, &scope, true)
            .await
            .map_err(|error| ArmError::internal(&error))?;
        match decision {
            Decision::Allow => Ok(()),
            Decision::Deny(_) => Err(refuse("KeyVaultAccessForbidden")),
        }
    }
}

impl DicomServiceHost for FakeHost {
    fn apply(&self, spec: DicomServiceSpec) -> ArmFuture<'_, ()> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(HostCall::Apply(Box::new(spec.clone())));
            self.validate(&spec).await
        })
    }

    fn remove<'a>(&'a self, resource_id: &'a str) -> ArmFuture<'a, ()> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(HostCall::Remove(resource_id.to_owned()));
            Ok(())
        })
    }

    fn health<'a>(&'a self, resource_id: &'a str) -> ArmFuture<'a, HealthReport> {
        Box::pin(async move {
            Ok(self
                .health
                .lock()
                .expect("lock")
                .get(&resource_id.to_lowercase())
                .cloned()
                .unwrap_or_else(|| HealthReport::healthy(None)))
        })
    }

    fn moved<'a>(&'a self, old_id: &'a str, new_id: &'a str) -> ArmFuture<'a, ()> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(HostCall::Moved(old_id.to_owned(), new_id.to_owned()));
            Ok(())
        })
    }
}

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Harness {
    _directory: tempfile::TempDir,
    router: Router,
    arm: Arm,
    identity: Identity,
    host: Arc<FakeHost>,
    info: BootstrapInfo,
    token: String,
}

impl Harness {
    async fn new(backend: Backend) -> Harness {
        let directory = tempfile::tempdir().expect("temporary directory");
        let url = match backend {
            Backend::Sqlite => format!("sqlite:{}", directory.path().join("hds.db").display()),
            Backend::Postgres => PostgresCluster::shared()
                .expect("PostgreSQL test cluster")
                .fresh_database()
                .await
                .expect("fresh database"),
        };
        let database = Database::connect(&url).await.expect("database");
        let root_key = Arc::new(RootKey::generate());
        let identity = Identity::open(
            database.clone(),
            Arc::clone(&root_key),
            IdentityConfig::new(BASE_URL),
        )
        .await
        .expect("identity");
        let info = identity
            .bootstrap(directory.path())
            .await
            .expect("bootstrap");
        let vaults = Arc::new(
            KeyVaultService::open(
                database.clone(),
                root_key,
                ServiceConfig {
                    addressing: VaultAddressing::Domain {
                        domain: VAULT_DOMAIN.into(),
                        port: None,
                    },
                },
            )
            .await
            .expect("vault service"),
        );
        let host = Arc::new(FakeHost {
            identity: identity.clone(),
            vaults: Arc::clone(&vaults),
            calls: Mutex::new(Vec::new()),
            health: Mutex::new(HashMap::new()),
        });
        let dependencies = ProviderDependencies {
            database: database.clone(),
            identity: identity.clone(),
            key_vault: vaults,
            dicom_host: host.clone(),
            public_base_url: format!("{BASE_URL}/"),
            vault_events: None,
            events: None,
        };
        let config = ArmConfig {
            tenant_id: info.tenant_id.clone(),
            subscriptions: vec![Subscription {
                subscription_id: info.subscription_id.clone(),
                display_name: "Default".into(),
            }],
            public_base_url: Some(BASE_URL.into()),
        };
        let builder = Arm::builder(database, config, access_control(identity.clone()));
        let arm = register_all(builder, &dependencies)
            .build()
            .await
            .expect("control plane");
        let admin: AdminCredentials = serde_json::from_slice(
            &std::fs::read(&info.admin_credentials_path).expect("admin.json"),
        )
        .expect("admin.json parses");
        let token = identity
            .issue_token_for_client_credentials(
                &admin.client_id,
                &admin.client_secret,
                MANAGEMENT_AUDIENCE,
            )
            .await
            .expect("token")
            .expect("admin credentials are valid")
            .access_token;
        let harness = Harness {
            _directory: directory,
            router: hds_arm::router(arm.clone()),
            arm,
            identity,
            host,
            info,
            token,
        };
        for group in ["rg1", "rg2"] {
            harness
                .ok(
                    Method::PUT,
                    &harness.group(group),
                    "2022-09-01",
                    json!({"location": "westus3"}),
                )
                .await;
        }
        harness
    }

    fn group(&self, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{name}",
            self.info.subscription_id
        )
    }

    fn subscription(&self) -> String {
        format!("/subscriptions/{}", self.info.subscription_id)
    }

    fn uai(&self, group: &str, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}",
            self.group(group)
        )
    }

    fn vault(&self, group: &str, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.KeyVault/vaults/{name}",
            self.group(group)
        )
    }

    fn workspace(&self, group: &str, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.HealthcareApis/workspaces/{name}",
            self.group(group)
        )
    }

    fn service(&self, group: &str, workspace: &str, name: &str) -> String {
        format!("{}/dicomservices/{name}", self.workspace(group, workspace))
    }

    fn caller(&self) -> Caller {
        Caller {
            principal_id: self.info.admin_principal_id.clone(),
            tenant_id: self.info.tenant_id.clone(),
        }
    }

    /// A new service principal and its management token: a caller with no role until the test
    /// assigns one.
    async fn management_principal(&self, name: &str) -> (String, String) {
        let principal = self
            .identity
            .create_service_principal(name)
            .await
            .expect("service principal");
        let token = self
            .identity
            .issue_token_for_client_credentials(
                &principal.client_id,
                &principal.client_secret,
                MANAGEMENT_AUDIENCE,
            )
            .await
            .expect("token")
            .expect("valid credentials")
            .access_token;
        (principal.principal_id, token)
    }

    async fn call_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        api_version: &str,
        body: Option<Value>,
    ) -> (StatusCode, http::HeaderMap, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{path}?api-version={api_version}"))
            .header("host", "hds.test:8443")
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map_or_else(Body::empty, |body| Body::from(body.to_string()));
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).expect("request"))
            .await
            .expect("infallible router");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        (status, headers, value)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        api_version: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, _, value) = self
            .call_as(Some(&self.token), method, path, api_version, body)
            .await;
        (status, value)
    }

    /// A call that must succeed (2xx); returns the body.
    async fn ok(&self, method: Method, path: &str, api_version: &str, body: Value) -> Value {
        let body = if method == Method::GET || method == Method::DELETE {
            None
        } else {
            Some(body)
        };
        let (status, value) = self.call(method.clone(), path, api_version, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value
    }

    /// A call that must fail with `status` and `code`; returns the message.
    async fn fails(
        &self,
        method: Method,
        path: &str,
        api_version: &str,
        body: Value,
        status: StatusCode,
        code: &str,
    ) -> String {
        let (actual, value) = self
            .call(method.clone(), path, api_version, Some(body))
            .await;
        assert_eq!(actual, status, "{method} {path}: {value}");
        assert_eq!(value["error"]["code"], code, "{value}");
        value["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn put_uai(&self, group: &str, name: &str) -> Value {
        self.ok(
            Method::PUT,
            &self.uai(group, name),
            "2023-01-31",
            json!({"location": "westus3"}),
        )
        .await
    }

    async fn put_workspace(&self, group: &str, name: &str) {
        self.ok(
            Method::PUT,
            &self.workspace(group, name),
            "2022-05-15",
            json!({"location": "westus3"}),
        )
        .await;
    }

    /// A purge-protected RBAC vault with one RSA key; returns the key's versioned URL.
    async fn put_vault_and_key(&self, group: &str, vault: &str, key: &str) -> String {
        self.ok(
            Method::PUT,
            &self.vault(group, vault),
            "2022-07-01",
            json!({"location": "westus3", "properties": {
                "tenantId": self.info.tenant_id, "sku": {"family": "A", "name": "standard"},
                "enableSoftDelete": true, "enablePurgeProtection": true,
                "enableRbacAuthorization": true, "accessPolicies": []
            }}),
        )
        .await;
        let key = self
            .ok(
                Method::PUT,
                &format!("{}/keys/{key}", self.vault(group, vault)),
                "2022-07-01",
                json!({"properties": {"kty": "RSA", "keySize": 2048, "keyOps": ["wrapKey", "unwrapKey"]}}),
            )
            .await;
        key["properties"]["keyUriWithVersion"]
            .as_str()
            .expect("keyUriWithVersion")
            .to_owned()
    }

    async fn assign(&self, scope: &str, role: &str, principal_id: &str) -> Value {
        self.ok(
            Method::PUT,
            &format!("{scope}/providers/Microsoft.Authorization/roleAssignments/{}", uuid::Uuid::new_v4()),
            "2022-04-01",
            json!({"properties": {
                "roleDefinitionId": format!("{}/providers/Microsoft.Authorization/roleDefinitions/{role}", self.subscription()),
                "principalId": principal_id, "principalType": "ServicePrincipal"
            }}),
        )
        .await
    }

    async fn may_unwrap(&self, principal_id: &str, key_scope: &str) -> bool {
        self.identity
            .authorize(principal_id, actions::KEYS_UNWRAP, key_scope, true)
            .await
            .expect("authorize")
            .is_allowed()
    }

    async fn token_validates(&self, token: &str) -> Result<(), TokenError> {
        self.identity
            .validate_token(token, DICOM_AUDIENCE)
            .await
            .map(|_| ())
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Sqlite).await; })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Backend::Postgres).await; })*
        }
    };
}

on_both_backends!(
    identity_types_on_a_dicom_service,
    key_identity_selection,
    role_assignments_at_three_scopes,
    access_control_over_identity,
    vault_rules_and_key_put,
    seed_templates_deploy_through_the_providers,
    move_gives_a_new_system_assigned_principal,
    resource_health_shapes,
    vault_permission_model_needs_the_right_to_assign_roles,
    workspace_names_are_unique_across_groups,
    attaching_an_identity_needs_assign_on_it,
    key_versions_through_the_control_plane,
    rotation_policy_through_the_control_plane,
);

async fn identity_types_on_a_dicom_service(backend: Backend) {
    let harness = Harness::new(backend).await;
    harness.put_workspace("rg1", "ws1").await;
    let service = harness.service("rg1", "ws1", "svc1");
    let uai = harness.put_uai("rg1", "id1").await;
    let uai_id = harness.uai("rg1", "id1");

    // None.
    let value = harness
        .ok(
            Method::PUT,
            &service,
            API_DICOM,
            json!({"location": "westus3", "identity": {"type": "None"}}),
        )
        .await;
    assert_eq!(value["identity"], json!({"type": "None"}));
    assert_eq!(value["properties"]["provisioningState"], "Succeeded");
    assert_eq!(
        value["properties"]["serviceUrl"],
        format!("{BASE_URL}/dicom/ws1/svc1")
    );
    assert_eq!(
        value["properties"]["authenticationConfiguration"],
        json!({"authority": format!("{BASE_URL}/{}", harness.info.tenant_id),
               "audiences": [DICOM_AUDIENCE, format!("{BASE_URL}/dicom/ws1/svc1")]})
    );
    assert_eq!(value["properties"]["publicNetworkAccess"], "Enabled");

    // SystemAssigned: a principal that can get tokens, stable across updates.
    let value = harness
        .ok(Method::PUT, &service, API_DICOM, json!({"location": "westus3", "identity": {"type": "SystemAssigned"}, "properties": {"custom": 7}}))
        .await;
    assert_eq!(value["identity"]["type"], "SystemAssigned");
    assert_eq!(
        value["identity"]["tenantId"],
        harness.info.tenant_id.as_str()
    );
    assert_eq!(
        value["properties"]["custom"], 7,
        "unknown properties are kept"
    );
    let system_principal = value["identity"]["principalId"]
        .as_str()
        .expect("principalId")
        .to_owned();
    let token = harness
        .identity
        .issue_token_for_managed_identity(&system_principal, DICOM_AUDIENCE)
        .await
        .expect("managed identity token")
        .access_token;
    harness
        .token_validates(&token)
        .await
        .expect("token validates");
    let again = harness
        .ok(
            Method::PUT,
            &service,
            API_DICOM,
            json!({"location": "westus3", "identity": {"type": "systemassigned"}}),
        )
        .await;
    assert_eq!(again["identity"]["principalId"], system_principal.as_str());
    let patched = harness
        .ok(
            Method::PATCH,
            &service,
            API_DICOM,
            json!({"tags": {"env": "test"}}),
        )
        .await;
    assert_eq!(
        patched["identity"]["principalId"],
        system_principal.as_str()
    );
    assert_eq!(patched["tags"]["env"], "test");

    // A PUT without `identity` keeps the identities the service has.
    let kept = harness
        .ok(
            Method::PUT,
            &service,
            API_DICOM,
            json!({"location": "westus3"}),
        )
        .await;
    assert_eq!(kept["identity"]["principalId"], system_principal.as_str());

    // Both, in any case and spacing.
    let both = harness
        .ok(Method::PUT, &service, API_DICOM, json!({"location": "westus3", "identity": {
            "type": "systemassigned, userassigned", "userAssignedIdentities": {uai_id.as_str(): {}}}}))
        .await;
    assert_eq!(both["identity"]["type"], "SystemAssigned,UserAssigned");
    assert_eq!(both["identity"]["principalId"], system_principal.as_str());
    assert_eq!(
        both["identity"]["userAssignedIdentities"][uai_id.as_str()],
        json!({"principalId": uai["properties"]["principalId"], "clientId": uai["properties"]["clientId"]})
    );

    // UserAssigned only: the system-assigned principal is deleted and its token dies.
    let user = harness
        .ok(
            Method::PUT,
            &service,
            API_DICOM,
            json!({"location": "westus3", "identity": {
            "type": "UserAssigned", "userAssignedIdentities": {uai_id.as_str(): {}}}}),
        )
        .await;
    assert_eq!(user["identity"]["type"], "UserAssigned");
    assert!(user["identity"].get("principalId").is_none());
    assert_eq!(
        harness.token_validates(&token).await,
        Err(TokenError::PrincipalDeleted)
    );
    assert!(
        harness
            .identity
            .principal(&system_principal)
            .await
            .expect("lookup")
            .is_none()
    );

    // Unknown user-assigned identities are refused clearly.
    let message = harness
        .fails(Method::PUT, &service, API_DICOM, json!({"location": "westus3", "identity": {
            "type": "UserAssigned", "userAssignedIdentities": {harness.uai("rg1", "missing"): {}}}}),
            StatusCode::BAD_REQUEST, "UserAssignedIdentityNotFound")
        .await;
    assert!(message.contains("missing"), "{message}");
    harness
        .fails(
            Method::PUT,
            &service,
            API_DICOM,
            json!({"location": "westus3", "identity": {"type": "UserAssigned"}}),
            StatusCode::BAD_REQUEST,
            "UserAssignedIdentitiesRequired",
        )
        .await;
    harness
        .fails(
            Method::PUT,
            &service,
            "2021-11-01",
            json!({"location": "westus3"}),
            StatusCode::BAD_REQUEST,
            "NoRegisteredProviderFound",
        )
        .await;

    // Deleting the user-assigned identity kills its principal.
    let uai_principal = uai["properties"]["principalId"]
        .as_str()
        .expect("principalId")
        .to_owned();
    harness
        .ok(Method::DELETE, &uai_id, "2023-01-31", Value::Null)
        .await;
    assert!(
        harness
            .identity
            .principal(&uai_principal)
            .await
            .expect("lookup")
            .is_none()
    );

    // Deleting the service goes through the host.
    harness
        .ok(Method::DELETE, &service, API_DICOM, Value::Null)
        .await;
    assert!(
        harness
            .host
            .calls()
            .contains(&HostCall::Remove(service.clone()))
    );
    let (status, _) = harness.call(Method::GET, &service, API_DICOM, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn key_identity_selection(backend: Backend) {
    let harness = Harness::new(backend).await;
    harness.put_workspace("rg1", "ws1").await;
    let key_url = harness.put_vault_and_key("rg1", "vault1", "key1").await;
    let vault = harness.vault("rg1", "vault1");
    let a = harness.put_uai("rg1", "ida").await;
    let b = harness.put_uai("rg1", "idb").await;
    let (a_id, b_id) = (harness.uai("rg1", "ida"), harness.uai("rg1", "idb"));
    for identity in [&a, &b] {
        harness
            .assign(
                &vault,
                KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER,
                identity["properties"]["principalId"]
                    .as_str()
                    .expect("principal"),
            )
            .await;
    }
    let service = harness.service("rg1", "ws1", "svc1");
    let encryption = |extra: Value| {
        let mut cmk = json!({"keyEncryptionKeyUrl": key_url});
        if !extra.is_null() {
            cmk["keyEncryptionKeyIdentity"] = extra;
        }
        json!({"encryption": {"customerManagedKeyEncryption": cmk}})
    };

    // One user-assigned identity: it is chosen.
    harness
        .ok(
            Method::PUT,
            &service,
            API_DICOM,
            json!({"location": "westus3",
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {a_id.as_str(): {}}},
            "properties": encryption(Value::Null)}),
        )
        .await;
    let spec = harness.host.applies().pop().expect("apply called");
    let binding = spec.key.expect("key binding");
    assert_eq!(binding.key_url, key_url);
    assert_eq!(
        binding.principal_id,
        a["properties"]["principalId"].as_str().expect("principal")
    );
    assert_eq!(
        binding.identity_kind,
        KeyIdentityKind::UserAssigned {
            resource_id: a_id.clone()
        }
    );
    assert_eq!(spec.service_url, format!("{BASE_URL}/dicom/ws1/svc1"));
    assert_eq!(spec.tenant_id, harness.info.tenant_id);

    // The same PUT again still reaches the host (it re-validates the key).
    let before = harness.host.applies().len();
    harness
        .ok(
            Method::PUT,
            &service,
            API_DICOM,
            json!({"location": "westus3",
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {a_id.as_str(): {}}},
            "properties": encryption(Value::Null)}),
        )
        .await;
    assert_eq!(harness.host.applies().len(), before + 1);

    // System-assigned plus one user-assigned: the user-assigned one.
    harness
        .ok(Method::PUT, &service, API_DICOM, json!({"location": "westus3",
            "identity": {"type": "SystemAssigned,UserAssigned", "userAssignedIdentities": {a_id.as_str(): {}}},
            "properties": encryption(Value::Null)}))
        .await;
    let binding = harness
        .host
        .applies()
        .pop()
        .and_then(|spec| spec.key)
        .expect("binding");
    assert_eq!(
        binding.identity_kind,
        KeyIdentityKind::UserAssigned {
            resource_id: a_id.clone()
        }
    );

    // Two user-assigned identities: refused without keyEncryptionKeyIdentity, and the stored
    // resource keeps its previous state.
    let two = json!({"type": "UserAssigned", "userAssignedIdentities": {a_id.as_str(): {}, b_id.as_str(): {}}});
    let message = harness
        .fails(
            Method::PUT,
            &service,
            API_DICOM,
            json!({"location": "westus3", "identity": two, "properties": encryption(Value::Null)}),
            StatusCode::BAD_REQUEST,
            "KeyEncryptionKeyIdentityRequired",
        )
        .await;
    assert!(message.contains("keyEncryptionKeyIdentity"), "{message}");
    let stored = harness
        .ok(Method::GET, &service, API_DICOM, Value::Null)
        .await;
    assert_eq!(stored["identity"]["type"], "SystemAssigned,UserAssigned");
    assert_eq!(
        stored["identity"]["userAssignedIdentities"]
            .as_object()
            .map(|map| map.len()),
        Some(1)
    );

    // ...and accepted with it.
    let chosen = harness
        .ok(Method::PUT, &service, API_DICOM, json!({"location": "westus3", "identity": two,
            "properties": encryption(json!({"identityType": "UserAssigned", "userAssignedIdentityResourceId": b_id}))}))
        .await;
    let binding = harness
        .host
        .applies()
        .pop()
        .and_then(|spec| spec.key)
        .expect("binding");
    assert_eq!(
        binding.identity_kind,
        KeyIdentityKind::UserAssigned {
            resource_id: b_id.clone()
        }
    );
    assert_eq!(
        binding.principal_id,
        b["properties"]["principalId"].as_str().expect("principal")
    );
    assert_eq!(
        chosen["properties"]["encryption"]["customerManagedKeyEncryption"]["keyEncryptionKeyIdentity"]
            ["identityType"],
        "UserAssigned"
    );
    harness
        .fails(Method::PUT, &service, API_DICOM, json!({"location": "westus3", "identity": two,
            "properties": encryption(json!({"identityType": "UserAssigned", "userAssignedIdentityResourceId": harness.uai("rg1", "idc")}))}),
            StatusCode::BAD_REQUEST, "KeyEncryptionKeyIdentityNotAttached")
        .await;

    // The key cannot be removed once set.
    harness
        .fails(
            Method::PUT,
            &service,
            API_DICOM,
            json!({"location": "westus3", "identity": two}),
            StatusCode::BAD_REQUEST,
            "CustomerManagedKeyCannotBeRemoved",
        )
        .await;

    // A key without any identity is refused before the host is asked.
    let other = harness.service("rg1", "ws1", "svc2");
    let before = harness.host.applies().len();
    harness
        .fails(
            Method::PUT,
            &other,
            API_DICOM,
            json!({"location": "westus3", "properties": encryption(Value::Null)}),
            StatusCode::BAD_REQUEST,
            "ManagedIdentityRequired",
        )
        .await;
    assert_eq!(harness.host.applies().len(), before);

    // System-assigned only: the host's refusal (no role yet) fails the PUT and leaves no
    // principal behind; after the role is granted the same PUT succeeds.
    harness
        .fails(Method::PUT, &other, API_DICOM, json!({"location": "westus3", "identity": {"type": "SystemAssigned"}, "properties": encryption(Value::Null)}),
            StatusCode::BAD_REQUEST, "KeyVaultAccessForbidden")
        .await;
    let refused = harness
        .host
        .applies()
        .pop()
        .and_then(|spec| spec.key)
        .expect("binding");
    assert_eq!(refused.identity_kind, KeyIdentityKind::SystemAssigned);
    assert!(
        harness
            .identity
            .principal(&refused.principal_id)
            .await
            .expect("lookup")
            .is_none()
    );
    let (status, _) = harness.call(Method::GET, &other, API_DICOM, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn role_assignments_at_three_scopes(backend: Backend) {
    let harness = Harness::new(backend).await;
    harness.put_vault_and_key("rg1", "vault1", "key1").await;
    let vault = harness.vault("rg1", "vault1");
    let key_scope = format!("{vault}/keys/key1");
    let principal = harness.put_uai("rg1", "id1").await["properties"]["principalId"]
        .as_str()
        .expect("principal")
        .to_owned();
    assert!(!harness.may_unwrap(&principal, &key_scope).await);

    let subscription = harness.subscription();
    let group = harness.group("rg1");
    let at_subscription = harness.assign(&subscription, READER, &principal).await;
    let at_group = harness
        .assign(&group, KEY_VAULT_CRYPTO_OFFICER, &principal)
        .await;
    // The resource-group assignment (the seed's Crypto Officer) reaches keys in the group.
    assert!(harness.may_unwrap(&principal, &key_scope).await);
    let at_vault = harness
        .assign(&vault, KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER, &principal)
        .await;
    for (assignment, scope, role) in [
        (&at_subscription, &subscription, READER),
        (&at_group, &group, KEY_VAULT_CRYPTO_OFFICER),
        (&at_vault, &vault, KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER),
    ] {
        assert_eq!(
            assignment["type"],
            "Microsoft.Authorization/roleAssignments"
        );
        assert_eq!(assignment["properties"]["scope"], scope.as_str());
        assert_eq!(assignment["properties"]["principalId"], principal.as_str());
        assert_eq!(
            assignment["properties"]["principalType"],
            "ServicePrincipal"
        );
        assert_eq!(
            assignment["properties"]["roleDefinitionId"],
            format!("{subscription}/providers/Microsoft.Authorization/roleDefinitions/{role}")
        );
        assert!(
            assignment["properties"]["createdOn"]
                .as_str()
                .is_some_and(|text| text.ends_with('Z'))
        );
        let id = assignment["id"].as_str().expect("id");
        assert!(id.starts_with(scope.as_str()), "{id}");
        let read = harness.ok(Method::GET, id, "2022-04-01", Value::Null).await;
        assert_eq!(read, *assignment);
    }

    // Lists: at the vault, what applies there (above); at the subscription, everything below.
    let names = |value: &Value| -> Vec<String> {
        value["value"]
            .as_array()
            .expect("list")
            .iter()
            .map(|entry| entry["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let at_vault_list = harness
        .ok(
            Method::GET,
            &format!("{vault}/providers/Microsoft.Authorization/roleAssignments"),
            "2022-04-01",
            Value::Null,
        )
        .await;
    let at_sub_list = harness
        .ok(
            Method::GET,
            &format!("{subscription}/providers/Microsoft.Authorization/roleAssignments"),
            "2022-04-01",
            Value::Null,
        )
        .await;
    for assignment in [&at_subscription, &at_group, &at_vault] {
        let name = assignment["name"].as_str().expect("name").to_owned();
        assert!(names(&at_vault_list).contains(&name));
        assert!(names(&at_sub_list).contains(&name));
    }

    // The same grant under another name conflicts; names must be GUIDs.
    let duplicate = json!({"properties": {
        "roleDefinitionId": format!("/providers/Microsoft.Authorization/roleDefinitions/{KEY_VAULT_CRYPTO_OFFICER}"),
        "principalId": principal}});
    harness
        .fails(
            Method::PUT,
            &format!(
                "{group}/providers/Microsoft.Authorization/roleAssignments/{}",
                uuid::Uuid::new_v4()
            ),
            "2022-04-01",
            duplicate.clone(),
            StatusCode::CONFLICT,
            "RoleAssignmentExists",
        )
        .await;
    harness
        .fails(
            Method::PUT,
            &format!("{group}/providers/Microsoft.Authorization/roleAssignments/not-a-guid"),
            "2022-04-01",
            duplicate,
            StatusCode::BAD_REQUEST,
            "InvalidRoleAssignmentId",
        )
        .await;
    harness
        .fails(Method::PUT, &format!("{group}/providers/Microsoft.Authorization/roleAssignments/{}", uuid::Uuid::new_v4()),
            "2022-04-01", json!({"properties": {"roleDefinitionId": "/providers/Microsoft.Authorization/roleDefinitions/00000000-0000-0000-0000-000000000000", "principalId": principal}}),
            StatusCode::BAD_REQUEST, "RoleDefinitionDoesNotExist")
        .await;

    // Deleting the grants takes the key access away once none is left.
    let group_assignment = at_group["id"].as_str().expect("id");
    harness
        .ok(Method::DELETE, group_assignment, "2022-04-01", Value::Null)
        .await;
    assert!(
        harness.may_unwrap(&principal, &key_scope).await,
        "the vault-scope grant remains"
    );
    harness
        .ok(
            Method::DELETE,
            at_vault["id"].as_str().expect("id"),
            "2022-04-01",
            Value::Null,
        )
        .await;
    assert!(!harness.may_unwrap(&principal, &key_scope).await);
    let (status, value) = harness
        .call(Method::GET, group_assignment, "2022-04-01", None)
        .await;
    assert_eq!(
        (status, value["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("RoleAssignmentNotFound"))
    );
    let (status, _) = harness
        .call(Method::DELETE, group_assignment, "2022-04-01", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Role definitions keep Azure's GUIDs at any scope.
    for scope in [&subscription, &group, &vault] {
        let definition = harness
            .ok(Method::GET, &format!("{scope}/providers/Microsoft.Authorization/roleDefinitions/{KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER}"), "2022-04-01", Value::Null)
            .await;
        assert_eq!(definition["name"], KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER);
        assert_eq!(
            definition["properties"]["roleName"],
            "Key Vault Crypto Service Encryption User"
        );
        assert_eq!(definition["properties"]["type"], "BuiltInRole");
        assert_eq!(definition["properties"]["assignableScopes"], json!(["/"]));
        let permissions = &definition["properties"]["permissions"][0];
        assert!(
            permissions["dataActions"]
                .as_array()
                .is_some_and(|list| !list.is_empty())
        );
        assert!(permissions["notDataActions"].is_array() && permissions["notActions"].is_array());
    }
    let all = harness
        .ok(
            Method::GET,
            &format!("{subscription}/providers/Microsoft.Authorization/roleDefinitions"),
            "2022-04-01",
            Value::Null,
        )
        .await;
    let listed = names(&all);
    for guid in [
        KEY_VAULT_CRYPTO_OFFICER,
        KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER,
        READER,
    ] {
        assert!(listed.iter().any(|name| name == guid), "{guid}");
    }
}

async fn access_control_over_identity(backend: Backend) {
    let harness = Harness::new(backend).await;
    let vault_body = json!({"location": "westus3", "properties": {"tenantId": harness.info.tenant_id, "sku": {"family": "A", "name": "standard"}}});
    let vault = harness.vault("rg1", "vault1");

    // No token: 401 with the challenge naming the authority.
    let (status, headers, value) = harness
        .call_as(
            None,
            Method::PUT,
            &vault,
            "2022-07-01",
            Some(vault_body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{value}");
    let challenge = headers
        .get("www-authenticate")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    assert!(
        challenge.contains(&format!("{BASE_URL}/{}", harness.info.tenant_id)),
        "{challenge}"
    );

    // A token for another audience is refused too.
    let admin: AdminCredentials = serde_json::from_slice(
        &std::fs::read(&harness.info.admin_credentials_path).expect("admin.json"),
    )
    .expect("parses");
    let dicom_token = harness
        .identity
        .issue_token_for_client_credentials(&admin.client_id, &admin.client_secret, DICOM_AUDIENCE)
        .await
        .expect("token")
        .expect("valid credentials")
        .access_token;
    let (status, _, _) = harness
        .call_as(
            Some(&dicom_token),
            Method::PUT,
            &vault,
            "2022-07-01",
            Some(vault_body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A principal without roles: 403 naming the action; a role granted through ARM lets it in.
    let (outsider, outsider_token) = harness.management_principal("outsider").await;
    let (status, _, value) = harness
        .call_as(
            Some(&outsider_token),
            Method::PUT,
            &vault,
            "2022-07-01",
            Some(vault_body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(value["error"]["code"], "AuthorizationFailed");
    assert!(
        value["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Microsoft.KeyVault/vaults/write")
    );
    harness
        .assign(
            &harness.group("rg1"),
            "b24988ac-6180-42a0-ab88-20f7382dd24c",
            &outsider,
        )
        .await;
    let (status, _, value) = harness
        .call_as(
            Some(&outsider_token),
            Method::PUT,
            &vault,
            "2022-07-01",
            Some(vault_body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    // Contributor of rg1 only: rg2 stays closed.
    let (status, _, _) = harness
        .call_as(
            Some(&outsider_token),
            Method::GET,
            &harness.group("rg2"),
            "2022-09-01",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

async fn vault_rules_and_key_put(backend: Backend) {
    let harness = Harness::new(backend).await;
    let vault = harness.vault("rg1", "vault1");
    let tenant = harness.info.tenant_id.clone();
    let body = |properties: Value| {
        let mut merged = json!({"tenantId": tenant, "sku": {"family": "A", "name": "standard"}});
        hds_arm::merge_patch(&mut merged, &properties);
        json!({"location": "westus3", "properties": merged})
    };
    harness
        .fails(
            Method::PUT,
            &vault,
            "2022-07-01",
            body(json!({"softDeleteRetentionInDays": 5})),
            StatusCode::BAD_REQUEST,
            "InvalidSoftDeleteRetentionPeriod",
        )
        .await;
    harness
        .fails(
            Method::PUT,
            &vault,
            "2022-07-01",
            body(json!({"softDeleteRetentionInDays": 91})),
            StatusCode::BAD_REQUEST,
            "InvalidSoftDeleteRetentionPeriod",
        )
        .await;
    harness
        .fails(Method::PUT, &vault, "2022-07-01", json!({"location": "westus3", "properties": {"sku": {"family": "A", "name": "standard"}}}), StatusCode::BAD_REQUEST, "TenantIdRequired")
        .await;
    harness
        .fails(
            Method::PUT,
            &vault,
            "2022-07-01",
            body(json!({"sku": {"family": "A", "name": "gold"}})),
            StatusCode::BAD_REQUEST,
            "InvalidSku",
        )
        .await;
    let created = harness
        .ok(Method::PUT, &vault, "2022-07-01", body(json!({"softDeleteRetentionInDays": 30, "enableRbacAuthorization": true, "enabledForDeployment": false})))
        .await;
    let properties = &created["properties"];
    assert_eq!(properties["softDeleteRetentionInDays"], 30);
    assert_eq!(properties["enableSoftDelete"], true);
    assert_eq!(properties["enablePurgeProtection"], false);
    assert_eq!(properties["enableRbacAuthorization"], true);
    assert_eq!(
        properties["enabledForDeployment"], false,
        "unmodelled properties are kept"
    );
    assert_eq!(
        properties["vaultUri"],
        format!("https://vault1.vault.{VAULT_DOMAIN}/")
    );
    assert_eq!(properties["provisioningState"], "Succeeded");

    // Retention is fixed; leaving it out keeps it.
    harness
        .fails(
            Method::PUT,
            &vault,
            "2022-07-01",
            body(json!({"softDeleteRetentionInDays": 60})),
            StatusCode::BAD_REQUEST,
            "SoftDeleteRetentionPeriodImmutable",
        )
        .await;
    let kept = harness
        .ok(Method::PUT, &vault, "2022-07-01", body(json!({})))
        .await;
    assert_eq!(kept["properties"]["softDeleteRetentionInDays"], 30);
    // Purge protection is one-way.
    let protected = harness
        .ok(
            Method::PUT,
            &vault,
            "2022-07-01",
            body(json!({"enablePurgeProtection": true})),
        )
        .await;
    assert_eq!(protected["properties"]["enablePurgeProtection"], true);
    harness
        .fails(
            Method::PUT,
            &vault,
            "2022-07-01",
            body(json!({"enablePurgeProtection": false})),
            StatusCode::BAD_REQUEST,
            "PurgeProtectionCannotBeDisabled",
        )
        .await;
    let patched = harness
        .ok(
            Method::PATCH,
            &vault,
            "2022-07-01",
            json!({"tags": {"a": "b"}}),
        )
        .await;
    assert_eq!(patched["properties"]["enablePurgeProtection"], true);
    harness
        .fails(
            Method::PUT,
            &vault,
            "2022-07-01",
            body(json!({"enableSoftDelete": false})),
            StatusCode::BAD_REQUEST,
            "SoftDeleteCannotBeDisabled",
        )
        .await;
    // Vault names are global.
    harness
        .fails(
            Method::PUT,
            &harness.vault("rg2", "vault1"),
            "2022-07-01",
            body(json!({})),
            StatusCode::CONFLICT,
            "VaultAlreadyExists",
        )
        .await;

    // Keys: the first PUT creates version one; later PUTs return it unchanged.
    let key = format!("{vault}/keys/key1");
    let (status, first) = harness
        .call(Method::PUT, &key, "2022-07-01", Some(json!({"properties": {"kty": "RSA", "keySize": 2048, "curveName": "P-256", "keyOps": ["wrapKey", "unwrapKey"], "attributes": {"enabled": true}}})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let properties = &first["properties"];
    assert_eq!(properties["kty"], "RSA");
    assert_eq!(properties["keySize"], 2048);
    assert_eq!(properties["keyOps"], json!(["wrapKey", "unwrapKey"]));
    assert_eq!(
        properties["keyUri"],
        format!("https://vault1.vault.{VAULT_DOMAIN}/keys/key1")
    );
    let versioned = properties["keyUriWithVersion"]
        .as_str()
        .expect("keyUriWithVersion")
        .to_owned();
    assert!(
        versioned.starts_with(&format!("https://vault1.vault.{VAULT_DOMAIN}/keys/key1/")),
        "{versioned}"
    );
    assert_eq!(properties["attributes"]["enabled"], true);
    assert!(
        properties.get("curveName").is_none(),
        "curveName is ignored for RSA"
    );
    let (status, second) = harness
        .call(
            Method::PUT,
            &key,
            "2022-07-01",
            Some(json!({"properties": {"kty": "RSA-HSM", "keySize": 4096}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        second["properties"]["keyUriWithVersion"],
        versioned.as_str()
    );
    assert_eq!(second["properties"]["keySize"], 2048);
    let read = harness
        .ok(Method::GET, &key, "2022-07-01", Value::Null)
        .await;
    assert_eq!(read["properties"]["keyUriWithVersion"], versioned.as_str());
    let listed = harness
        .ok(
            Method::GET,
            &format!("{vault}/keys"),
            "2022-07-01",
            Value::Null,
        )
        .await;
    assert_eq!(listed["value"].as_array().map(Vec::len), Some(1));
    harness
        .fails(
            Method::PUT,
            &format!("{vault}/keys/ec"),
            "2022-07-01",
            json!({"properties": {"kty": "EC", "curveName": "P-256"}}),
            StatusCode::BAD_REQUEST,
            "KeyTypeNotSupported",
        )
        .await;
    harness
        .fails(
            Method::PUT,
            &format!("{vault}/keys/small"),
            "2022-07-01",
            json!({"properties": {"kty": "RSA", "keySize": 1024}}),
            StatusCode::BAD_REQUEST,
            "InvalidKeySize",
        )
        .await;

    // A purge-protected vault holding keys is not deleted.
    harness
        .fails(
            Method::DELETE,
            &vault,
            "2022-07-01",
            Value::Null,
            StatusCode::CONFLICT,
            "VaultPurgeProtected",
        )
        .await;
    let unprotected = harness.vault("rg1", "vault2");
    harness
        .ok(Method::PUT, &unprotected, "2022-07-01", body(json!({})))
        .await;
    harness
        .ok(
            Method::PUT,
            &format!("{unprotected}/keys/k"),
            "2022-07-01",
            json!({"properties": {"kty": "RSA"}}),
        )
        .await;
    harness
        .ok(Method::DELETE, &unprotected, "2022-07-01", Value::Null)
        .await;
    let (status, _) = harness
        .call(Method::GET, &unprotected, "2022-07-01", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The seed templates, read from the repository's fixtures.
fn template(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/arm")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).expect("template fixture")).expect("template JSON")
}

async fn seed_templates_deploy_through_the_providers(backend: Backend) {
    let harness = Harness::new(backend).await;
    let group = ResourceId::parse(&harness.group("rg1")).expect("group id");
    let caller = harness.caller();

    // The user-assigned template: vault, key, identity, role assignment, workspace, service.
    let deployment = harness
        .arm
        .deploy(
            &caller,
            &group,
            "cmk-user",
            template("arm-template-user-assigned.json"),
            json!({
                "workspaceName": {"value": "ws1"},
                "dicomServiceName": {"value": "svc1"},
                "keyVaultName": {"value": "seedvault"},
                "keyName": {"value": "seedkey"},
                "userAssignedIdentityName": {"value": "seedidentity"},
                "roleAssignmentName": {"value": "seed-role"},
                "tenantId": {"value": harness.info.tenant_id},
            }),
        )
        .await
        .expect("user-assigned template deploys");
    assert_eq!(deployment["properties"]["provisioningState"], "Succeeded");
    let identity = harness
        .ok(
            Method::GET,
            &harness.uai("rg1", "seedidentity"),
            "2023-01-31",
            Value::Null,
        )
        .await;
    let principal = identity["properties"]["principalId"]
        .as_str()
        .expect("principal")
        .to_owned();
    let key = harness
        .ok(
            Method::GET,
            &format!("{}/keys/seedkey", harness.vault("rg1", "seedvault")),
            "2022-07-01",
            Value::Null,
        )
        .await;
    let spec = harness.host.applies().pop().expect("apply");
    let binding = spec.key.expect("key binding");
    assert_eq!(
        binding.key_url,
        key["properties"]["keyUriWithVersion"]
            .as_str()
            .expect("uri")
    );
    assert_eq!(binding.principal_id, principal);
    assert_eq!(
        binding.identity_kind,
        KeyIdentityKind::UserAssigned {
            resource_id: harness.uai("rg1", "seedidentity")
        }
    );
    let vault = harness
        .ok(
            Method::GET,
            &harness.vault("rg1", "seedvault"),
            "2022-07-01",
            Value::Null,
        )
        .await;
    assert_eq!(vault["properties"]["enablePurgeProtection"], true);
    assert!(
        harness
            .may_unwrap(
                &principal,
                &format!("{}/keys/seedkey", harness.vault("rg1", "seedvault"))
            )
            .await
    );
    let service = harness
        .ok(
            Method::GET,
            &harness.service("rg1", "ws1", "svc1"),
            API_DICOM,
            Value::Null,
        )
        .await;
    assert_eq!(service["properties"]["provisioningState"], "Succeeded");
    assert_eq!(service["identity"]["type"], "UserAssigned");

    // Deploying it again re-validates (the seed's "update the DICOM service").
    let before = harness.host.applies().len();
    harness
        .arm
        .deploy(&caller, &group, "cmk-user", template("arm-template-user-assigned.json"), json!({
            "workspaceName": {"value": "ws1"}, "dicomServiceName": {"value": "svc1"},
            "keyVaultName": {"value": "seedvault"}, "keyName": {"value": "seedkey"},
            "userAssignedIdentityName": {"value": "seedidentity"}, "roleAssignmentName": {"value": "seed-role"},
            "tenantId": {"value": harness.info.tenant_id},
        }))
        .await
        .expect("redeploys");
    assert_eq!(harness.host.applies().len(), before + 1);

    // The system-assigned template, as the seed document runs it: before the identity holds a
    // role on the vault the deployment fails with the host's reason...
    let key_url = binding.key_url.clone();
    let parameters = json!({"workspaceName": {"value": "ws1"}, "dicomServiceName": {"value": "svc2"}, "keyEncryptionKeyUrl": {"value": key_url}});
    let error = harness
        .arm
        .deploy(
            &caller,
            &group,
            "cmk-system",
            template("arm-template-system-assigned.json"),
            parameters.clone(),
        )
        .await
        .expect_err("no role yet");
    assert_eq!(error.code(), "DeploymentFailed");
    assert_eq!(
        error.details().first().map(ArmError::code),
        Some("KeyVaultAccessForbidden")
    );
    // ...then: enable the identity, grant it the role, update the service with the template.
    let enabled = harness
        .ok(
            Method::PUT,
            &harness.service("rg1", "ws1", "svc2"),
            API_DICOM,
            json!({"location": "West US 3", "identity": {"type": "SystemAssigned"}}),
        )
        .await;
    let system_principal = enabled["identity"]["principalId"]
        .as_str()
        .expect("principal")
        .to_owned();
    harness
        .assign(
            &harness.vault("rg1", "seedvault"),
            KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER,
            &system_principal,
        )
        .await;
    harness
        .arm
        .deploy(
            &caller,
            &group,
            "cmk-system",
            template("arm-template-system-assigned.json"),
            parameters,
        )
        .await
        .expect("system-assigned template deploys once the role is granted");
    let binding = harness
        .host
        .applies()
        .pop()
        .and_then(|spec| spec.key)
        .expect("binding");
    assert_eq!(binding.identity_kind, KeyIdentityKind::SystemAssigned);
    assert_eq!(binding.principal_id, system_principal);
}

async fn move_gives_a_new_system_assigned_principal(backend: Backend) {
    let harness = Harness::new(backend).await;
    let key_url = harness.put_vault_and_key("rg1", "vault1", "key1").await;
    harness.put_workspace("rg1", "ws1").await;
    let old_id = harness.service("rg1", "ws1", "svc1");
    let enabled = harness
        .ok(
            Method::PUT,
            &old_id,
            API_DICOM,
            json!({"location": "westus3", "identity": {"type": "SystemAssigned"}}),
        )
        .await;
    let old_principal = enabled["identity"]["principalId"]
        .as_str()
        .expect("principal")
        .to_owned();
    harness
        .assign(
            &harness.vault("rg1", "vault1"),
            KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER,
            &old_principal,
        )
        .await;
    let with_key = json!({"location": "westus3", "identity": {"type": "SystemAssigned"},
        "properties": {"encryption": {"customerManagedKeyEncryption": {"keyEncryptionKeyUrl": key_url}}}});
    harness
        .ok(Method::PUT, &old_id, API_DICOM, with_key.clone())
        .await;

    let (status, value) = harness
        .call(Method::POST, &format!("{}/moveResources", harness.group("rg1")), "2021-04-01",
            Some(json!({"resources": [harness.workspace("rg1", "ws1")], "targetResourceGroup": harness.group("rg2")})))
        .await;
    assert!(status.is_success(), "{status} {value}");
    let new_id = harness.service("rg2", "ws1", "svc1");
    let moved = harness
        .ok(Method::GET, &new_id, API_DICOM, Value::Null)
        .await;
    let new_principal = moved["identity"]["principalId"]
        .as_str()
        .expect("principal")
        .to_owned();
    assert_ne!(new_principal, old_principal);
    assert!(
        harness
            .identity
            .principal(&old_principal)
            .await
            .expect("lookup")
            .is_none()
    );
    assert!(
        harness
            .identity
            .principal(&new_principal)
            .await
            .expect("lookup")
            .is_some()
    );
    assert!(harness.host.calls().iter().any(|call| matches!(call,
        HostCall::Moved(old, new) if old.eq_ignore_ascii_case(&old_id) && new.eq_ignore_ascii_case(&new_id))));
    assert!(
        harness
            .host
            .applies()
            .iter()
            .all(|spec| !spec.resource_id.eq_ignore_ascii_case(&new_id)),
        "a move does not re-validate"
    );

    // Key access is lost until the new principal is granted the role and the service updated.
    harness
        .fails(
            Method::PUT,
            &new_id,
            API_DICOM,
            with_key.clone(),
            StatusCode::BAD_REQUEST,
            "KeyVaultAccessForbidden",
        )
        .await;
    let after_failure = harness
        .ok(Method::GET, &new_id, API_DICOM, Value::Null)
        .await;
    assert_eq!(
        after_failure["identity"]["principalId"],
        new_principal.as_str(),
        "a refused update keeps the identity"
    );
    harness
        .assign(
            &harness.vault("rg1", "vault1"),
            KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER,
            &new_principal,
        )
        .await;
    harness.ok(Method::PUT, &new_id, API_DICOM, with_key).await;
}

async fn resource_health_shapes(backend: Backend) {
    let harness = Harness::new(backend).await;
    let key_url = harness.put_vault_and_key("rg1", "vault1", "key1").await;
    harness.put_workspace("rg1", "ws1").await;
    let service = harness.service("rg1", "ws1", "svc1");
    let uai = harness.put_uai("rg1", "id1").await;
    harness
        .assign(
            &harness.vault("rg1", "vault1"),
            KEY_VAULT_CRYPTO_SERVICE_ENCRYPTION_USER,
            uai["properties"]["principalId"]
                .as_str()
                .expect("principal"),
        )
        .await;
    harness
        .ok(Method::PUT, &service, API_DICOM, json!({"location": "westus3",
            "identity": {"type": "UserAssigned", "userAssignedIdentities": {harness.uai("rg1", "id1"): {}}},
            "properties": {"encryption": {"customerManagedKeyEncryption": {"keyEncryptionKeyUrl": key_url}}}}))
        .await;
    let status_path =
        format!("{service}/providers/Microsoft.ResourceHealth/availabilityStatuses/current");

    let healthy = harness
        .ok(Method::GET, &status_path, "2023-10-01-preview", Value::Null)
        .await;
    assert_eq!(healthy["name"], "current");
    assert_eq!(
        healthy["type"],
        "Microsoft.ResourceHealth/availabilityStatuses"
    );
    assert_eq!(healthy["id"], status_path.as_str());
    assert_eq!(healthy["location"], "westus3");
    assert_eq!(healthy["properties"]["availabilityState"], "Available");
    for field in [
        "summary",
        "occuredTime",
        "reportedTime",
        "detailedStatus",
        "title",
    ] {
        assert!(healthy["properties"].get(field).is_some(), "{field}");
    }

    let since = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    let set = |state: KeyAccessState| {
        harness.host.health.lock().expect("lock").insert(
            service.to_lowercase(),
            HealthReport {
                state,
                since: Some(since),
                last_checked: Some(time::OffsetDateTime::now_utc()),
                reason: Some("the vault answered 403 Forbidden (ForbiddenByRbac)".into()),
                latch_after: hds_providers::DEFAULT_LOST_ACCESS_LATCH,
            },
        );
    };
    set(KeyAccessState::KeyAccessLost);
    let lost = harness
        .ok(Method::GET, &status_path, "2023-10-01-preview", Value::Null)
        .await;
    let properties = &lost["properties"];
    assert_eq!(properties["availabilityState"], "Unavailable");
    assert_eq!(properties["reasonChronicity"], "Transient");
    assert_eq!(properties["reasonType"], "Unplanned");
    let since_text = since
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format");
    assert_eq!(properties["occuredTime"], since_text.as_str());
    let summary = properties["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&key_url)
            && summary.contains("ForbiddenByRbac")
            && summary.contains("500"),
        "{summary}"
    );
    assert!(summary.contains(&harness.uai("rg1", "id1")), "{summary}");
    let detail = properties["detailedStatus"].as_str().unwrap_or_default();
    assert!(
        detail.contains("30 minutes") && detail.contains("only an update"),
        "{detail}"
    );
    let actions = properties["recommendedActions"]
        .as_array()
        .expect("actions");
    assert!(actions.iter().any(|action| {
        action["action"]
            .as_str()
            .unwrap_or_default()
            .contains("Key Vault Crypto Service Encryption User")
    }));

    set(KeyAccessState::RequiresUpdate);
    let latched = harness
        .ok(Method::GET, &status_path, "2023-10-01-preview", Value::Null)
        .await;
    assert_eq!(latched["properties"]["availabilityState"], "Unavailable");
    assert_eq!(latched["properties"]["reasonChronicity"], "Persistent");
    let actions = latched["properties"]["recommendedActions"]
        .as_array()
        .expect("actions");
    assert!(actions.iter().any(|action| {
        action["action"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Update the DICOM service")
    }));

    set(KeyAccessState::Unknown);
    let unknown = harness
        .ok(Method::GET, &status_path, "2023-10-01-preview", Value::Null)
        .await;
    assert_eq!(unknown["properties"]["availabilityState"], "Unknown");

    let listed = harness
        .ok(
            Method::GET,
            &format!(
                "{}/providers/Microsoft.ResourceHealth/availabilityStatuses",
                harness.group("rg1")
            ),
            "2023-10-01-preview",
            Value::Null,
        )
        .await;
    assert_eq!(listed["value"].as_array().map(Vec::len), Some(1));
    let (status, _) = harness
        .call(
            Method::GET,
            &format!("{service}/providers/Microsoft.ResourceHealth/availabilityStatuses/other"),
            "2023-10-01-preview",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Who may use a vault's keys (its permission model and access policies) changes only with the
/// right to assign roles at the vault's scope: a Contributor may write the vault, not grant
/// itself unwrapKey by switching it to access policies.
async fn vault_permission_model_needs_the_right_to_assign_roles(backend: Backend) {
    const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
    const OWNER: &str = "8e3af657-a8ff-443c-a75c-2fe8c4bcb635";
    let harness = Harness::new(backend).await;
    harness.put_vault_and_key("rg1", "guarded", "cmk").await;
    let vault = harness.vault("rg1", "guarded");
    let tenant = harness.info.tenant_id.clone();

    let principal_with = |name: &'static str, role: &'static str| {
        let harness = &harness;
        async move {
            let (principal_id, token) = harness.management_principal(name).await;
            harness
                .assign(&harness.group("rg1"), role, &principal_id)
                .await;
            (principal_id, token)
        }
    };
    let (contributor, contributor_token) = principal_with("contributor", CONTRIBUTOR).await;
    let body = |rbac: bool, policies: Value| {
        json!({"location": "westus3", "tags": {"team": "imaging"}, "properties": {
            "tenantId": tenant, "sku": {"family": "A", "name": "standard"},
            "enableSoftDelete": true, "enablePurgeProtection": true,
            "enableRbacAuthorization": rbac, "accessPolicies": policies
        }})
    };
    let self_grant = json!([{"tenantId": tenant, "objectId": contributor,
        "permissions": {"keys": ["get", "wrapKey", "unwrapKey"]}}]);
    let as_contributor = |method: Method, path: String, body: Value| {
        let harness = &harness;
        let token = contributor_token.clone();
        async move {
            let (status, _, value) = harness
                .call_as(Some(&token), method, &path, "2022-07-01", Some(body))
                .await;
            (status, value)
        }
    };
    let refused = |status: StatusCode, value: &Value| {
        assert_eq!(status, StatusCode::FORBIDDEN, "{value}");
        assert_eq!(value["error"]["code"], "AuthorizationFailed", "{value}");
        let message = value["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("Microsoft.Authorization/roleAssignments/write"),
            "{message}"
        );
    };

    // Switching to access policies and granting itself unwrapKey, in one PUT or in steps.
    let (status, value) =
        as_contributor(Method::PUT, vault.clone(), body(false, self_grant.clone())).await;
    refused(status, &value);
    let (status, value) = as_contributor(Method::PUT, vault.clone(), body(false, json!([]))).await;
    refused(status, &value);
    let (status, value) = as_contributor(
        Method::PATCH,
        vault.clone(),
        json!({"properties": {"enableRbacAuthorization": false}}),
    )
    .await;
    refused(status, &value);
    let (status, value) =
        as_contributor(Method::PUT, vault.clone(), body(true, self_grant.clone())).await;
    refused(status, &value);
    let current = harness
        .ok(Method::GET, &vault, "2022-07-01", json!({}))
        .await;
    assert_eq!(current["properties"]["enableRbacAuthorization"], true);
    assert_eq!(current["properties"]["accessPolicies"], json!([]));

    // The control: the Contributor may still write the vault when who may use it stays.
    let (status, value) = as_contributor(Method::PUT, vault.clone(), body(true, json!([]))).await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["tags"]["team"], "imaging");

    // A new vault: the permission model alone grants nothing, access policies do.
    let fresh = harness.vault("rg1", "fresh");
    let (status, value) =
        as_contributor(Method::PUT, fresh.clone(), body(false, self_grant.clone())).await;
    refused(status, &value);
    let (status, value) = as_contributor(Method::PUT, fresh.clone(), body(false, json!([]))).await;
    assert_eq!(status, StatusCode::CREATED, "{value}");
    let (status, value) =
        as_contributor(Method::PUT, fresh.clone(), body(false, self_grant.clone())).await;
    refused(status, &value);

    // An Owner of the group may change both.
    let (_, owner_token) = principal_with("owner", OWNER).await;
    let (status, _, value) = harness
        .call_as(
            Some(&owner_token),
            Method::PUT,
            &vault,
            "2022-07-01",
            Some(body(false, self_grant.clone())),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    assert_eq!(value["properties"]["enableRbacAuthorization"], false);
    assert_eq!(
        value["properties"]["accessPolicies"][0]["objectId"],
        json!(contributor)
    );
}

/// A workspace name is the first segment of the data-plane URL, so it is unique across the
/// whole hds: of two concurrent PUTs of one name in two groups exactly one wins, the other
/// (and any later one, in any case) answers 409; the claim follows a move and ends with a
/// delete; workspaces stored before names were claimed keep theirs.
async fn workspace_names_are_unique_across_groups(backend: Backend) {
    let harness = Harness::new(backend).await;
    let body = json!({"location": "westus3"});
    let (legacy_id, legacy_request) = (
        ResourceId::parse(&harness.workspace("rg1", "legacy")).expect("id"),
        hds_arm::PutRequest::parse(&body).expect("request"),
    );
    harness
        .arm
        .store()
        .upsert(&hds_arm::Resource::from_request(
            legacy_id,
            &legacy_request,
            "Succeeded",
        ))
        .await
        .expect("a workspace stored before names were claimed");
    harness
        .fails(
            Method::PUT,
            &harness.workspace("rg2", "legacy"),
            "2022-05-15",
            body.clone(),
            StatusCode::CONFLICT,
            "WorkspaceNameNotAvailable",
        )
        .await;

    for round in 0..8 {
        let name = format!("race{round}");
        let (in_first, in_second) = (
            harness.workspace("rg1", &name),
            harness.workspace("rg2", &name),
        );
        let (first, second) = tokio::join!(
            harness.call(Method::PUT, &in_first, "2022-05-15", Some(body.clone())),
            harness.call(Method::PUT, &in_second, "2022-05-15", Some(body.clone())),
        );
        let outcomes = [&first, &second];
        let winners = outcomes
            .iter()
            .filter(|(status, _)| status.is_success())
            .count();
        assert_eq!(winners, 1, "exactly one wins: {first:?} {second:?}");
        let loser = outcomes
            .iter()
            .find(|(status, _)| !status.is_success())
            .expect("one loses");
        assert_eq!(loser.0, StatusCode::CONFLICT, "{loser:?}");
        assert_eq!(loser.1["error"]["code"], "WorkspaceNameNotAvailable");
        assert_eq!(loser.1["error"]["details"][0]["code"], "AlreadyExists");
        let winner_group = if first.0.is_success() { "rg1" } else { "rg2" };
        let loser_group = if first.0.is_success() { "rg2" } else { "rg1" };
        let (status, _) = harness
            .call(
                Method::GET,
                &harness.workspace(loser_group, &name),
                "2022-05-15",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "the loser stored nothing");
        harness
            .ok(
                Method::PUT,
                &harness.workspace(winner_group, &name),
                "2022-05-15",
                body.clone(),
            )
            .await;
    }

    harness.put_workspace("rg1", "owned").await;
    harness
        .fails(
            Method::PUT,
            &harness.workspace("rg2", "OWNED"),
            "2022-05-15",
            body.clone(),
            StatusCode::CONFLICT,
            "WorkspaceNameNotAvailable",
        )
        .await;
    let (status, value) = harness
        .call(
            Method::POST,
            &format!("{}/moveResources", harness.group("rg1")),
            "2021-04-01",
            Some(json!({"resources": [harness.workspace("rg1", "owned")], "targetResourceGroup": harness.group("rg2")})),
        )
        .await;
    assert!(status.is_success(), "{status} {value}");
    harness
        .fails(
            Method::PUT,
            &harness.workspace("rg1", "owned"),
            "2022-05-15",
            body.clone(),
            StatusCode::CONFLICT,
            "WorkspaceNameNotAvailable",
        )
        .await;
    harness.put_workspace("rg2", "owned").await;
    harness
        .ok(
            Method::DELETE,
            &harness.workspace("rg2", "owned"),
            "2022-05-15",
            Value::Null,
        )
        .await;
    harness.put_workspace("rg1", "owned").await;
}

/// Attaching a user-assigned identity needs `assign/action` on it: Contributor on the
/// service's group alone gets 403 `LinkedAuthorizationFailed` for an identity in another
/// group (and learns nothing of it); Contributor on the identity too lets the same PUT through.
async fn attaching_an_identity_needs_assign_on_it(backend: Backend) {
    let harness = Harness::new(backend).await;
    harness.put_workspace("rg2", "ws2").await;
    let foreign = harness.put_uai("rg1", "foreign").await;
    let foreign_id = harness.uai("rg1", "foreign");
    let (outsider, token) = harness.management_principal("contributor-on-rg2").await;
    harness
        .assign(
            &harness.group("rg2"),
            hds_identity::roles::CONTRIBUTOR,
            &outsider,
        )
        .await;
    let service = harness.service("rg2", "ws2", "svc2");
    let body = |identity: &str| {
        json!({"location": "westus3", "identity": {
            "type": "UserAssigned", "userAssignedIdentities": { identity: {} }
        }})
    };
    let (status, _, value) = harness
        .call_as(
            Some(&token),
            Method::PUT,
            &service,
            API_DICOM,
            Some(body(&foreign_id)),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{value}");
    assert_eq!(value["error"]["code"], "LinkedAuthorizationFailed");
    let message = value["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Microsoft.ManagedIdentity/userAssignedIdentities/assign/action"),
        "{message}"
    );
    // A missing identity in a group the caller has no rights on: the same 403, not a 400
    // telling it the identity does not exist.
    let (status, _, value) = harness
        .call_as(
            Some(&token),
            Method::PUT,
            &service,
            API_DICOM,
            Some(body(&harness.uai("rg1", "absent"))),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{value}");
    assert_eq!(value["error"]["code"], "LinkedAuthorizationFailed");
    let (status, _, _) = harness
        .call_as(Some(&token), Method::GET, &service, API_DICOM, None)
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused PUT stores nothing"
    );
    assert!(
        harness
            .host
            .applies()
            .iter()
            .all(|spec| !spec.resource_id.eq_ignore_ascii_case(&service)),
        "a refused attach never reaches the host"
    );

    // Its own identity (in its group) it may attach; with Contributor on the foreign one too,
    // that one as well.
    harness.put_uai("rg2", "own").await;
    let (status, _, value) = harness
        .call_as(
            Some(&token),
            Method::PUT,
            &service,
            API_DICOM,
            Some(body(&harness.uai("rg2", "own"))),
        )
        .await;
    assert!(status.is_success(), "{status} {value}");
    harness
        .assign(&foreign_id, hds_identity::roles::CONTRIBUTOR, &outsider)
        .await;
    let (status, _, value) = harness
        .call_as(
            Some(&token),
            Method::PUT,
            &service,
            API_DICOM,
            Some(body(&foreign_id)),
        )
        .await;
    assert!(status.is_success(), "{status} {value}");
    assert_eq!(
        value["identity"]["userAssignedIdentities"][&foreign_id]["principalId"],
        foreign["properties"]["principalId"]
    );
}

/// A key's versions through ARM: list, read, rotate, disable and enable one; the writes need the
/// vault's data-plane permission, not only the ARM one.
async fn key_versions_through_the_control_plane(backend: Backend) {
    const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
    let harness = Harness::new(backend).await;
    let first_url = harness.put_vault_and_key("rg1", "versioned", "cmk").await;
    let key = format!("{}/keys/cmk", harness.vault("rg1", "versioned"));
    let first = first_url.rsplit('/').next().expect("version").to_owned();
    let versions = harness
        .ok(
            Method::GET,
            &format!("{key}/versions"),
            "2022-07-01",
            Value::Null,
        )
        .await;
    assert_eq!(
        versions["value"].as_array().map(Vec::len),
        Some(1),
        "{versions}"
    );
    assert_eq!(versions["value"][0]["name"], first.as_str());
    assert_eq!(
        versions["value"][0]["type"],
        "Microsoft.KeyVault/vaults/keys/versions"
    );

    let rotated = harness
        .ok(
            Method::POST,
            &format!("{key}/rotate"),
            "2022-07-01",
            json!({}),
        )
        .await;
    let second_url = rotated["properties"]["keyUriWithVersion"]
        .as_str()
        .expect("keyUriWithVersion")
        .to_owned();
    assert_ne!(second_url, first_url);
    assert_eq!(rotated["properties"]["keySize"], 2048);
    let current = harness
        .ok(Method::GET, &key, "2022-07-01", Value::Null)
        .await;
    assert_eq!(
        current["properties"]["keyUriWithVersion"],
        second_url.as_str()
    );

    let first_id = format!("{key}/versions/{first}");
    let disabled = harness
        .ok(
            Method::PATCH,
            &first_id,
            "2022-07-01",
            json!({"properties": {"attributes": {"enabled": false}}}),
        )
        .await;
    assert_eq!(disabled["properties"]["attributes"]["enabled"], false);
    let read = harness
        .ok(Method::GET, &first_id, "2022-07-01", Value::Null)
        .await;
    assert_eq!(read["properties"]["attributes"]["enabled"], false);
    assert_eq!(read["properties"]["keyUriWithVersion"], first_url.as_str());
    let versions = harness
        .ok(
            Method::GET,
            &format!("{key}/versions"),
            "2022-07-01",
            Value::Null,
        )
        .await;
    let enabled: Vec<&Value> = versions["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|version| &version["properties"]["attributes"]["enabled"])
        .collect();
    assert_eq!(enabled, [&json!(false), &json!(true)], "oldest first");
    harness
        .ok(
            Method::PATCH,
            &first_id,
            "2022-07-01",
            json!({"properties": {"attributes": {"enabled": true}}}),
        )
        .await;

    // Hostile or unsupported requests: clear 4xx.
    for body in [
        json!({"properties": {"attributes": {"enabled": "no"}}}),
        json!({"properties": {"attributes": {"keySize": 4096}}}),
        json!({"properties": {}}),
        json!({"tags": {"a": "b"}, "properties": {"attributes": {"enabled": true}}}),
        json!([1, 2]),
    ] {
        harness
            .fails(
                Method::PATCH,
                &first_id,
                "2022-07-01",
                body,
                StatusCode::BAD_REQUEST,
                "InvalidRequestContent",
            )
            .await;
    }
    let missing = format!("{key}/versions/{}", "0".repeat(32));
    harness
        .fails(
            Method::PATCH,
            &missing,
            "2022-07-01",
            json!({"properties": {"attributes": {"enabled": false}}}),
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
        )
        .await;
    let (status, _) = harness
        .call(
            Method::GET,
            &format!("{key}/versions/..%2F{}", "x".repeat(300)),
            "2022-07-01",
            None,
        )
        .await;
    assert!(status.is_client_error(), "{status}");
    harness
        .fails(
            Method::PUT,
            &missing,
            "2022-07-01",
            json!({"properties": {}}),
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
        )
        .await;
    harness
        .fails(
            Method::POST,
            &format!("{key}/explode"),
            "2022-07-01",
            json!({}),
            StatusCode::NOT_FOUND,
            "InvalidAction",
        )
        .await;

    // A Contributor may write ARM resources but holds no data action on the vault's keys.
    let (principal, token) = harness.management_principal("contributor").await;
    harness
        .assign(&harness.group("rg1"), CONTRIBUTOR, &principal)
        .await;
    let (status, _, value) = harness
        .call_as(
            Some(&token),
            Method::PATCH,
            &first_id,
            "2022-07-01",
            Some(json!({"properties": {"attributes": {"enabled": false}}})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{value}");
    let (status, _, value) = harness
        .call_as(
            Some(&token),
            Method::POST,
            &format!("{key}/rotate"),
            "2022-07-01",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{value}");
    let read = harness
        .ok(Method::GET, &first_id, "2022-07-01", Value::Null)
        .await;
    assert_eq!(
        read["properties"]["attributes"]["enabled"], true,
        "the refused PATCH changed nothing"
    );
}

/// A key's rotation policy through ARM (`properties.rotationPolicy`): shown on GET, set by a
/// PATCH or PUT that changes it (only with the vault's data-plane permission), hostile bodies
/// refused with 400 before anything is written, the same policy sent again accepted from anyone
/// who may write the key.
async fn rotation_policy_through_the_control_plane(backend: Backend) {
    const CONTRIBUTOR: &str = "b24988ac-6180-42a0-ab88-20f7382dd24c";
    let harness = Harness::new(backend).await;
    harness.put_vault_and_key("rg1", "rotating", "cmk").await;
    let key = format!("{}/keys/cmk", harness.vault("rg1", "rotating"));
    let read = harness
        .ok(Method::GET, &key, "2022-07-01", Value::Null)
        .await;
    assert_eq!(
        read["properties"]["rotationPolicy"]["lifetimeActions"],
        json!([{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "notify"}}]),
        "the vault's default policy: {read}"
    );
    let policy = json!({
        "lifetimeActions": [
            {"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "rotate"}},
            {"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "notify"}}
        ],
        "attributes": {"expiryTime": "P1Y"}
    });
    let patched = harness
        .ok(
            Method::PATCH,
            &key,
            "2022-07-01",
            json!({"properties": {"rotationPolicy": policy}}),
        )
        .await;
    let shown = &patched["properties"]["rotationPolicy"];
    assert_eq!(
        shown["lifetimeActions"], policy["lifetimeActions"],
        "{patched}"
    );
    assert_eq!(shown["attributes"]["expiryTime"], "P1Y");
    assert!(shown["attributes"]["created"].is_i64(), "{shown}");
    // The vault itself holds it: a rotation gives the new version the policy's expiry.
    let rotated = harness
        .ok(
            Method::POST,
            &format!("{key}/rotate"),
            "2022-07-01",
            json!({}),
        )
        .await;
    let attributes = &rotated["properties"]["attributes"];
    let lifetime =
        attributes["exp"].as_i64().expect("exp") - attributes["created"].as_i64().expect("created");
    // The expiry is set as the rotation starts, the creation once the key is generated.
    assert!((lifetime - 365 * 86_400).abs() <= 300, "{rotated}");
    assert_eq!(
        rotated["properties"]["rotationPolicy"]["attributes"]["expiryTime"],
        "P1Y"
    );
    // Removing the expiry (merge patch: null removes) keeps the rest.
    let patched = harness
        .ok(
            Method::PATCH,
            &key,
            "2022-07-01",
            json!({"properties": {"rotationPolicy": {
                "lifetimeActions": [{"trigger": {"timeAfterCreate": "P60D"}, "action": {"type": "rotate"}}],
                "attributes": {"expiryTime": null}
            }}}),
        )
        .await;
    let shown = &patched["properties"]["rotationPolicy"];
    assert_eq!(
        shown["lifetimeActions"],
        json!([{"trigger": {"timeAfterCreate": "P60D"}, "action": {"type": "rotate"}}])
    );
    assert!(shown["attributes"].get("expiryTime").is_none(), "{shown}");

    // Hostile bodies: 400 naming the field, nothing written.
    for policy in [
        json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P1D"}, "action": {"type": "rotate"}}]}),
        json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "PT9999999999H"}, "action": {"type": "rotate"}}]}),
        json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P1D".repeat(5000)}, "action": {"type": "rotate"}}]}),
        json!({"lifetimeActions": vec![json!({"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "rotate"}}); 1000]}),
        json!({"lifetimeActions": [{"trigger": {"timeAfterCreate": "P90D"}, "action": {"type": "<script>"}}]}),
        json!({"lifetimeActions": "rotate"}),
        json!({"attributes": {"expiryTime": "P1D"}}),
        json!({"unknown": true}),
        json!(42),
    ] {
        harness
            .fails(
                Method::PATCH,
                &key,
                "2022-07-01",
                json!({"properties": {"rotationPolicy": policy}}),
                StatusCode::BAD_REQUEST,
                "InvalidRotationPolicy",
            )
            .await;
    }
    let read = harness
        .ok(Method::GET, &key, "2022-07-01", Value::Null)
        .await;
    assert_eq!(
        read["properties"]["rotationPolicy"],
        patched["properties"]["rotationPolicy"]
    );

    // A new key may be created with its policy (a template's way).
    let created = harness
        .ok(
            Method::PUT,
            &format!("{}/keys/born-rotating", harness.vault("rg1", "rotating")),
            "2022-07-01",
            json!({"properties": {"kty": "RSA", "keySize": 2048, "rotationPolicy": {
                "lifetimeActions": [{"trigger": {"timeAfterCreate": "P30D"}, "action": {"type": "rotate"}}]
            }}}),
        )
        .await;
    assert_eq!(
        created["properties"]["rotationPolicy"]["lifetimeActions"][0]["trigger"]["timeAfterCreate"],
        "P30D"
    );

    // A Contributor may write the key resource but holds no data action on the vault: a
    // changed policy is refused, the same policy again is not a change.
    let (principal, token) = harness.management_principal("contributor").await;
    harness
        .assign(&harness.group("rg1"), CONTRIBUTOR, &principal)
        .await;
    let (status, _, value) = harness
        .call_as(
            Some(&token),
            Method::PATCH,
            &key,
            "2022-07-01",
            Some(json!({"properties": {"rotationPolicy": {"lifetimeActions": []}}})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{value}");
    let (status, _, value) = harness
        .call_as(
            Some(&token),
            Method::PATCH,
            &key,
            "2022-07-01",
            Some(json!({"tags": {"team": "radiology"}})),
        )
        .await;
    assert!(status.is_success(), "{status} {value}");
    let (status, _, value) = harness
        .call_as(
            Some(&token),
            Method::PUT,
            &format!("{}/keys/contributors-key", harness.vault("rg1", "rotating")),
            "2022-07-01",
            Some(json!({"properties": {"kty": "RSA", "keySize": 2048, "rotationPolicy": {
                "lifetimeActions": [{"trigger": {"timeAfterCreate": "P30D"}, "action": {"type": "rotate"}}]
            }}})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{value}");
    let (status, _) = harness
        .call(
            Method::GET,
            &format!("{}/keys/contributors-key", harness.vault("rg1", "rotating")),
            "2022-07-01",
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the refused PUT created nothing"
    );
    let read = harness
        .ok(Method::GET, &key, "2022-07-01", Value::Null)
        .await;
    assert_eq!(
        read["properties"]["rotationPolicy"], patched["properties"]["rotationPolicy"],
        "the refused PATCH changed nothing"
    );
}
