//! Hostile input against the control plane's HTTP surface: paths that smuggle separators or
//! control characters, names Azure refuses, oversized and overdeep bodies, templates built to
//! exhaust the evaluator, corrupt stored rows, and operation statuses read by someone without
//! rights on the operation's resource. Each case asserts the refusal and that the control
//! plane still serves afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hds_arm::{
    AllowAll, Arm, ArmAccessControl, ArmConfig, ArmError, ArmFuture, Caller, PlainProvider,
    ResourceId, Subscription,
};
use hds_db::Database;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000001";
const TENANT: &str = "11111111-1111-1111-1111-111111111111";
const OWNER: &str = "22222222-2222-2222-2222-222222222222";
const STRANGER: &str = "33333333-3333-3333-3333-333333333333";

fn caller(principal_id: &str) -> Caller {
    Caller {
        principal_id: principal_id.into(),
        tenant_id: TENANT.into(),
    }
}

fn config() -> ArmConfig {
    ArmConfig {
        tenant_id: TENANT.into(),
        subscriptions: vec![Subscription {
            subscription_id: SUBSCRIPTION.into(),
            display_name: "First".into(),
        }],
        public_base_url: Some("https://arm.example".into()),
    }
}

async fn sqlite() -> (tempfile::TempDir, Database) {
    let directory = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite:{}", directory.path().join("hds.db").display());
    let database = Database::connect(&url).await.expect("open SQLite");
    (directory, database)
}

async fn control_plane(database: Database, access: Arc<dyn ArmAccessControl>) -> Arm {
    Arm::builder(database, config(), access)
        .provider(Arc::new(PlainProvider::new(vec![
            "Microsoft.KeyVault/vaults",
            "Microsoft.ManagedIdentity/userAssignedIdentities",
        ])))
        .build()
        .await
        .expect("control plane")
}

async fn send(
    router: &Router,
    method: Method,
    path: &str,
    body: Body,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router
        .clone()
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("infallible router");
    let status = response.status();
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
    (status, value)
}

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map_or_else(Body::empty, |body| Body::from(body.to_string()));
    send(router, method, path, body, &[]).await
}

fn group(name: &str) -> String {
    format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{name}")
}

async fn put_group(router: &Router, name: &str) -> (StatusCode, Value) {
    call(
        router,
        Method::PUT,
        &format!("{}?api-version=2021-04-01", group(name)),
        Some(json!({"location": "westus3"})),
    )
    .await
}

/// The names of the listed resource groups; the listing must answer 200.
async fn listed_groups(router: &Router) -> Vec<String> {
    let (status, body) = call(
        router,
        Method::GET,
        &format!("/subscriptions/{SUBSCRIPTION}/resourcegroups?api-version=2021-04-01"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|group| group["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn assert_arm_error(status: StatusCode, body: &Value, expected_status: StatusCode, code: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
}

#[tokio::test]
async fn paths_that_smuggle_separators_or_control_characters_are_refused_before_storing() {
    let (_directory, database) = sqlite().await;
    let arm = control_plane(database, Arc::new(AllowAll::new(caller(OWNER)))).await;
    let router = hds_arm::router(arm.clone());
    let (status, body) = put_group(&router, "kept").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    for hostile in [
        "x%2Fy",
        "x%2fy",
        "x%00y",
        "x%0Ay",
        "x%0D%0Ay",
        "x%09y",
        "%2E",
        "%2E%2E",
        "x%E2%80%AEgpj",
        "x%E2%80%8By",
        "x%7Fy",
    ] {
        let (status, body) = put_group(&router, hostile).await;
        assert_arm_error(status, &body, StatusCode::BAD_REQUEST, "InvalidRequestUri");
    }
    // Literal dot segments (a client that does not normalize them).
    for hostile in [
        format!(
            "/subscriptions/{SUBSCRIPTION}/resourceGroups/../resourceGroups/kept?api-version=2021-04-01"
        ),
        format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/./x?api-version=2021-04-01"),
    ] {
        let (status, body) = call(
            &router,
            Method::PUT,
            &hostile,
            Some(json!({"location": "westus3"})),
        )
        .await;
        assert_arm_error(status, &body, StatusCode::BAD_REQUEST, "InvalidRequestUri");
    }
    // An encoded separator in a resource name, on every method.
    let vault = format!(
        "{}/providers/Microsoft.KeyVault/vaults/a%2Fb?api-version=2022-07-01",
        group("kept")
    );
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        let (status, body) = call(
            &router,
            method,
            &vault,
            Some(json!({"location": "westus3"})),
        )
        .await;
        assert_arm_error(status, &body, StatusCode::BAD_REQUEST, "InvalidRequestUri");
    }
    // Nothing was stored, and listing still works for everyone.
    assert_eq!(listed_groups(&router).await, vec!["kept".to_owned()]);
    let stored = arm
        .store()
        .list_within(&ResourceId::subscription(SUBSCRIPTION))
        .await
        .expect("list");
    assert_eq!(stored.len(), 1);
}

#[tokio::test]
async fn names_follow_the_rule_of_their_type() {
    let (_directory, database) = sqlite().await;
    let arm = control_plane(database, Arc::new(AllowAll::new(caller(OWNER)))).await;
    let router = hds_arm::router(arm);

    for good in ["a", "rg_(1).x-y", "Gruppe-%C3%84rzte"] {
        let (status, body) = put_group(&router, good).await;
        assert_eq!(status, StatusCode::CREATED, "{good}: {body}");
    }
    let too_long = "g".repeat(91);
    for bad in [
        "ends.",
        "a%20b",
        "semi;colon",
        "star*",
        too_long.as_str(),
        "%D9%A0%E2%80%8F",
    ] {
        let (status, body) = put_group(&router, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(
            ["InvalidResourceGroup", "InvalidRequestUri"]
                .contains(&body["error"]["code"].as_str().unwrap_or_default()),
            "{bad}: {body}"
        );
    }
    let (status, body) = put_group(&router, &"g".repeat(90)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let vault = |name: &str| {
        format!(
            "{}/providers/Microsoft.KeyVault/vaults/{name}?api-version=2022-07-01",
            group("a")
        )
    };
    for bad in [
        "kv",
        "kv--1",
        "1kv",
        "kv-",
        "kv_1",
        "kvkvkvkvkvkvkvkvkvkvkvkvk",
    ] {
        let (status, body) = call(
            &router,
            Method::PUT,
            &vault(bad),
            Some(json!({"location": "westus3"})),
        )
        .await;
        assert_arm_error(status, &body, StatusCode::BAD_REQUEST, "VaultNameNotValid");
    }
    let (status, body) = call(
        &router,
        Method::PUT,
        &vault("kv-1"),
        Some(json!({"location": "westus3"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let identity = format!(
        "{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/-id?api-version=2023-01-31",
        group("a")
    );
    let (status, body) = call(
        &router,
        Method::PUT,
        &identity,
        Some(json!({"location": "westus3"})),
    )
    .await;
    assert_arm_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "InvalidResourceName",
    );

    // A deployment name is checked too.
    let deployment = format!(
        "{}/providers/Microsoft.Resources/deployments/{}?api-version=2021-04-01",
        group("a"),
        "d".repeat(65)
    );
    let body = json!({"properties": {"mode": "Incremental", "template": {"resources": []}}});
    let (status, body) = call(&router, Method::PUT, &deployment, Some(body)).await;
    assert_arm_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "InvalidDeploymentName",
    );
}

#[tokio::test]
async fn oversized_and_overdeep_bodies_are_refused_with_an_arm_error() {
    let (_directory, database) = sqlite().await;
    let arm = control_plane(database, Arc::new(AllowAll::new(caller(OWNER)))).await;
    let router = hds_arm::router(arm);
    let path = format!("{}?api-version=2021-04-01", group("big"));

    // One byte past 4 MiB, declared.
    let padding = "x".repeat(4 * 1024 * 1024);
    let body = format!("{{\"location\":\"westus3\",\"tags\":{{\"p\":\"{padding}\"}}}}");
    let (status, response) = send(&router, Method::PUT, &path, Body::from(body.clone()), &[]).await;
    assert_arm_error(
        status,
        &response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestContentTooLarge",
    );
    // The same, streamed without a length.
    let stream = futures::stream::iter(
        body.into_bytes()
            .chunks(64 * 1024)
            .map(|chunk| Ok::<_, std::io::Error>(chunk.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (status, response) =
        send(&router, Method::PUT, &path, Body::from_stream(stream), &[]).await;
    assert_arm_error(
        status,
        &response,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestContentTooLarge",
    );
    // A length that lies about being huge is refused before reading.
    let (status, response) = send(
        &router,
        Method::PUT,
        &path,
        Body::from("{}"),
        &[("content-length", "99999999999")],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{response}");

    // Nesting: past the JSON reader's own limit, and past ours.
    for depth in [100_000, 200, 65] {
        let body = format!(
            "{{\"location\":\"westus3\",\"properties\":{}1{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let (status, response) = send(&router, Method::PUT, &path, Body::from(body), &[]).await;
        assert_arm_error(
            status,
            &response,
            StatusCode::BAD_REQUEST,
            "InvalidRequestContent",
        );
    }
    let (status, response) = put_group(&router, "big").await;
    assert_eq!(status, StatusCode::CREATED, "{response}");
}

#[tokio::test]
async fn a_corrupt_stored_row_is_skipped_by_listings_on_sqlite() {
    let (_directory, database) = sqlite().await;
    corrupt_rows_suite(database).await;
}

#[tokio::test]
async fn a_corrupt_stored_row_is_skipped_by_listings_on_postgres() {
    let cluster = hds_db::testing::PostgresCluster::shared().expect("PostgreSQL test cluster");
    let url = cluster.fresh_database().await.expect("fresh database");
    let database = Database::connect(&url).await.expect("open PostgreSQL");
    corrupt_rows_suite(database).await;
}

async fn corrupt_rows_suite(database: Database) {
    let arm = control_plane(database.clone(), Arc::new(AllowAll::new(caller(OWNER)))).await;
    let router = hds_arm::router(arm.clone());
    put_group(&router, "good").await;
    let subscription_key = format!("/subscriptions/{SUBSCRIPTION}");
    // A group whose id reads back as something else, and one whose tags are not JSON.
    for (id, tags) in [
        (format!("{subscription_key}/resourceGroups/x/y"), None),
        (
            format!("{subscription_key}/resourceGroups/badtags"),
            Some("{not json"),
        ),
        (format!("{subscription_key}/resourceGroups/badtime"), None),
    ] {
        let created = if id.ends_with("badtime") {
            "yesterday"
        } else {
            "2024-01-01T00:00:00Z"
        };
        sqlx::query(
            "INSERT INTO arm_resources (id_key, id, subscription_key, group_key, parent_key, type_key, \
             resource_type, name, location, tags, properties, identity, sku, kind, provisioning_state, \
             created_at, changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(id.to_lowercase())
        .bind(id.clone())
        .bind(SUBSCRIPTION.to_lowercase())
        .bind("corrupt")
        .bind(subscription_key.to_lowercase())
        .bind("microsoft.resources/resourcegroups")
        .bind("Microsoft.Resources/resourceGroups")
        .bind("corrupt")
        .bind(Some("westus3"))
        .bind(tags)
        .bind("{}")
        .bind(None::<String>)
        .bind(None::<String>)
        .bind(None::<String>)
        .bind("Succeeded")
        .bind(created)
        .bind("2024-01-01T00:00:00Z")
        .execute(database.pool())
        .await
        .expect("insert a corrupt row");
    }
    assert_eq!(listed_groups(&router).await, vec!["good".to_owned()]);
    // What `hds up` reads at startup.
    let stored = arm
        .store()
        .list_within(&ResourceId::subscription(SUBSCRIPTION))
        .await
        .expect("listing skips corrupt rows");
    assert_eq!(stored.len(), 1);
    // And the good group still serves.
    let (status, body) = call(
        &router,
        Method::GET,
        &format!("{}?api-version=2021-04-01", group("good")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

// ---- templates -------------------------------------------------------------------------

fn deployment_path(name: &str) -> String {
    format!(
        "{}/providers/Microsoft.Resources/deployments/{name}?api-version=2021-04-01",
        group("rg")
    )
}

async fn deploy(router: &Router, name: &str, template: Value) -> (StatusCode, Value) {
    call(
        router,
        Method::PUT,
        &deployment_path(name),
        Some(json!({"properties": {"mode": "Incremental", "template": template}})),
    )
    .await
}

fn assert_limit(status: StatusCode, body: &Value, limit: &str) {
    assert_arm_error(status, body, StatusCode::BAD_REQUEST, "InvalidTemplate");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(limit), "expected '{limit}' in {message}");
}

#[tokio::test]
async fn hostile_templates_are_refused_and_the_control_plane_keeps_serving() {
    let (_directory, database) = sqlite().await;
    let arm = control_plane(database, Arc::new(AllowAll::new(caller(OWNER)))).await;
    let router = hds_arm::router(arm);
    put_group(&router, "rg").await;

    // The output that used to abort the process: `concat(` nested 100,000 deep.
    let deep = format!("[{}'x'{}]", "concat(".repeat(100_000), ")".repeat(100_000));
    let (status, body) = deploy(
        &router,
        "deep",
        json!({"outputs": {"o": {"type": "string", "value": deep}}}),
    )
    .await;
    assert_limit(status, &body, "length of an expression");
    let nested = format!("[{}'x'{}]", "concat(".repeat(3000), ")".repeat(3000));
    let (status, body) = deploy(
        &router,
        "nested",
        json!({"outputs": {"o": {"type": "string", "value": nested}}}),
    )
    .await;
    assert_limit(status, &body, "nesting depth of an expression");

    // A string doubled 64 times: as a chain of 64 variables (deeper than evaluation nests),
    // and as 16 variables of 16 copies each (the evaluated size runs out).
    let doubling = |levels: usize, copies: usize| {
        let mut variables = serde_json::Map::new();
        variables.insert("d0".into(), json!("0123456789abcdef"));
        for index in 1..=levels {
            let previous = format!("variables('d{}')", index - 1);
            variables.insert(
                format!("d{index}"),
                json!(format!("[concat({})]", vec![previous; copies].join(", "))),
            );
        }
        json!({"variables": variables, "outputs": {"o": {"type": "int", "value": format!("[length(variables('d{levels}'))]")}}})
    };
    let started = Instant::now();
    let (status, body) = deploy(&router, "doubling", doubling(64, 2)).await;
    assert_limit(status, &body, "evaluation depth");
    let (status, body) = deploy(&router, "sixteenfold", doubling(16, 16)).await;
    assert_limit(status, &body, "evaluated size");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );

    // replace() and format() that multiply their input.
    let big = "a".repeat(20_000);
    let (status, body) = deploy(
        &router,
        "replace",
        json!({"parameters": {"big": {"type": "string", "defaultValue": big}},
               "outputs": {"o": {"type": "string", "value": "[replace(parameters('big'), 'a', parameters('big'))]"}}}),
    )
    .await;
    assert_limit(status, &body, "evaluated size");
    let (status, body) = deploy(
        &router,
        "range",
        json!({"outputs": {"o": {"type": "array", "value": "[range(0, 100000000)]"}}}),
    )
    .await;
    assert_limit(status, &body, "count of 'range'");

    // Counts.
    let many = |count: usize, value: Value| -> serde_json::Map<String, Value> {
        (0..count)
            .map(|index| (format!("n{index}"), value.clone()))
            .collect()
    };
    let (status, body) = deploy(
        &router,
        "parameters",
        json!({"parameters": many(257, json!({"type": "int", "defaultValue": 1}))}),
    )
    .await;
    assert_limit(status, &body, "number of parameters");
    let (status, body) = deploy(
        &router,
        "variables",
        json!({"variables": many(257, json!(1))}),
    )
    .await;
    assert_limit(status, &body, "number of variables");
    let (status, body) = deploy(
        &router,
        "outputs",
        json!({"outputs": many(65, json!({"type": "int", "value": 1}))}),
    )
    .await;
    assert_limit(status, &body, "number of outputs");
    let resources: Vec<Value> = (0..801)
        .map(|index| json!({"type": "Microsoft.KeyVault/vaults", "apiVersion": "2022-07-01", "name": format!("kv{index}"), "location": "westus3"}))
        .collect();
    let (status, body) = deploy(&router, "resources", json!({"resources": resources})).await;
    assert_limit(status, &body, "number of resources");

    // At the limits, a template still deploys.
    let (status, body) = deploy(
        &router,
        "fine",
        json!({"parameters": many(256, json!({"type": "int", "defaultValue": 1})),
               "variables": many(256, json!("[concat('a', 'b')]")),
               "outputs": many(64, json!({"type": "string", "value": "[variables('n1')]"}))}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(listed_groups(&router).await, vec!["rg".to_owned()]);
}

// ---- operation statuses ------------------------------------------------------------------

/// `Bearer owner` may do anything; `Bearer stranger` may do nothing.
struct OwnerOnly;

impl ArmAccessControl for OwnerOnly {
    fn authenticate<'a>(&'a self, headers: &'a HeaderMap) -> ArmFuture<'a, Caller> {
        Box::pin(async move {
            match headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
            {
                Some("Bearer owner") => Ok(caller(OWNER)),
                Some("Bearer stranger") => Ok(caller(STRANGER)),
                _ => Err(ArmError::unauthenticated(
                    "InvalidAuthenticationToken",
                    "The access token is missing or invalid.",
                    "https://login.example/tenant",
                )),
            }
        })
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        action: &'a str,
        scope: &'a ResourceId,
    ) -> ArmFuture<'a, ()> {
        Box::pin(async move {
            if caller.principal_id == OWNER {
                Ok(())
            } else {
                Err(ArmError::authorization_failed(
                    &caller.principal_id,
                    action,
                    scope.as_str(),
                ))
            }
        })
    }
}

#[tokio::test]
async fn operation_statuses_are_authorized_on_the_operation_resource() {
    let (_directory, database) = sqlite().await;
    let arm = control_plane(database, Arc::new(OwnerOnly)).await;
    let router = hds_arm::router(arm);
    let owner = [("authorization", "Bearer owner")];
    let stranger = [("authorization", "Bearer stranger")];
    let body = Body::from(json!({"location": "westus3"}).to_string());
    let (status, response) = send(
        &router,
        Method::PUT,
        &format!("{}?api-version=2021-04-01", group("rg")),
        body,
        &owner,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{response}");

    // A deployment runs as an operation.
    let request = Request::builder()
        .method(Method::PUT)
        .uri(deployment_path("d1"))
        .header("authorization", "Bearer owner")
        .body(Body::from(
            json!({"properties": {"mode": "Incremental", "template": {"resources": []}}})
                .to_string(),
        ))
        .expect("request");
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible router");
    assert_eq!(response.status(), StatusCode::CREATED);
    let url = response
        .headers()
        .get("azure-asyncoperation")
        .and_then(|value| value.to_str().ok())
        .expect("Azure-AsyncOperation")
        .to_owned();
    let path = url
        .strip_prefix("https://arm.example")
        .expect("public base");

    let (status, response) = send(&router, Method::GET, path, Body::empty(), &owner).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    let (status, response) = send(&router, Method::GET, path, Body::empty(), &stranger).await;
    assert_arm_error(
        status,
        &response,
        StatusCode::NOT_FOUND,
        "OperationNotFound",
    );
    // The same answer as for an operation that does not exist.
    let missing = format!(
        "/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Resources/locations/global/operationStatuses/{}?api-version=2021-04-01",
        uuid::Uuid::new_v4()
    );
    let (status, absent) = send(&router, Method::GET, &missing, Body::empty(), &owner).await;
    assert_arm_error(status, &absent, StatusCode::NOT_FOUND, "OperationNotFound");
    // Anonymous callers learn nothing either.
    let (status, _) = send(&router, Method::GET, path, Body::empty(), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The operation is listed under its own namespace only.
    let elsewhere = path.replace("Microsoft.Resources", "Microsoft.KeyVault");
    let (status, response) = send(&router, Method::GET, &elsewhere, Body::empty(), &owner).await;
    assert_arm_error(
        status,
        &response,
        StatusCode::NOT_FOUND,
        "OperationNotFound",
    );
}
