//! What the Azure CLI needs of the control plane beyond plain CRUD: deployment bodies in ARM's
//! lenient JSON, the subscription and group `resources` lists with `$filter`/`$top` (each
//! resource authorized on its own), the provider lookup with API versions, and query
//! parameter names percent-decoded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hds_arm::{
    Arm, ArmAccessControl, ArmConfig, ArmError, ArmFuture, Caller, PlainProvider, ResourceId,
    Subscription,
};
use hds_db::Database;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000001";
const TENANT: &str = "11111111-1111-1111-1111-111111111111";
const WIDGETS: &str = "Microsoft.Test/widgets";

fn caller() -> Caller {
    Caller {
        principal_id: "22222222-2222-2222-2222-222222222222".into(),
        tenant_id: TENANT.into(),
    }
}

/// Allows everything except reading a widget whose name starts with `secret`: what a caller
/// holding roles on some resources of a subscription and not on others sees.
struct NotSecrets;

impl ArmAccessControl for NotSecrets {
    fn authenticate<'a>(&'a self, _headers: &'a HeaderMap) -> ArmFuture<'a, Caller> {
        Box::pin(async { Ok(caller()) })
    }

    fn authorize<'a>(
        &'a self,
        caller: &'a Caller,
        action: &'a str,
        scope: &'a ResourceId,
    ) -> ArmFuture<'a, ()> {
        Box::pin(async move {
            if action.eq_ignore_ascii_case("Microsoft.Test/widgets/read")
                && scope.name().starts_with("secret")
            {
                Err(ArmError::authorization_failed(
                    &caller.principal_id,
                    action,
                    scope.as_str(),
                ))
            } else {
                Ok(())
            }
        })
    }
}

async fn control_plane() -> (tempfile::TempDir, Router) {
    let directory = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite:{}", directory.path().join("hds.db").display());
    let database = Database::connect(&url).await.expect("open SQLite");
    let config = ArmConfig {
        tenant_id: TENANT.into(),
        subscriptions: vec![Subscription {
            subscription_id: SUBSCRIPTION.into(),
            display_name: "First".into(),
        }],
        public_base_url: Some("https://arm.example".into()),
    };
    let arm = Arm::builder(database, config, Arc::new(NotSecrets))
        .provider(Arc::new(PlainProvider::new(vec![
            WIDGETS,
            "Microsoft.Test/widgets/parts",
        ])))
        .build()
        .await
        .expect("control plane");
    (directory, hds_arm::router(arm))
}

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    body: Option<String>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:1")
        .header("content-type", "application/json")
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
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

fn group(name: &str) -> String {
    format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/{name}")
}

async fn put(router: &Router, path: &str, body: Value) {
    let (status, answer) = call(
        router,
        Method::PUT,
        &format!("{path}?api-version=2021-04-01"),
        Some(body.to_string()),
    )
    .await;
    assert!(status.is_success(), "{path}: {status} {answer}");
}

async fn names(router: &Router, path: &str) -> Vec<String> {
    let (status, body) = call(router, Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    let mut names: Vec<String> = body["value"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|item| item["name"].as_str().expect("a name").to_owned())
        .collect();
    names.sort();
    names
}

async fn seed(router: &Router) {
    for name in ["one", "two"] {
        put(router, &group(name), json!({"location": "westus3"})).await;
    }
    let widget =
        |group_name: &str, name: &str| format!("{}/providers/{WIDGETS}/{name}", group(group_name));
    put(
        router,
        &widget("one", "alpha"),
        json!({"location": "westus3", "tags": {"env": "test"}}),
    )
    .await;
    put(
        router,
        &widget("two", "beta"),
        json!({"location": "eastus"}),
    )
    .await;
    put(
        router,
        &widget("two", "secret-gamma"),
        json!({"location": "eastus"}),
    )
    .await;
    // A child without a location (a proxy resource, like a vault's key) is not listed.
    put(
        router,
        &format!("{}/parts/p1", widget("one", "alpha")),
        json!({}),
    )
    .await;
}

#[tokio::test]
async fn subscription_resources_are_filtered_and_authorized_one_by_one() {
    let (_directory, router) = control_plane().await;
    seed(&router).await;
    let base = format!("/subscriptions/{SUBSCRIPTION}/resources?api-version=2015-11-01");
    // The unreadable widget is left out; the groups themselves and the child are not resources
    // of the list.
    assert_eq!(names(&router, &base).await, ["alpha", "beta"]);
    let filtered = |filter: &str| {
        format!(
            "{base}&$filter={}",
            filter.replace(' ', "%20").replace('\'', "%27")
        )
    };
    assert_eq!(
        names(
            &router,
            &filtered("resourceType eq 'microsoft.test/WIDGETS'")
        )
        .await,
        ["alpha", "beta"]
    );
    assert_eq!(
        names(
            &router,
            &filtered("resourceType eq 'Microsoft.Test/widgets' and name eq 'Beta'")
        )
        .await,
        ["beta"]
    );
    assert_eq!(
        names(&router, &filtered("resourceGroup eq 'one'")).await,
        ["alpha"]
    );
    assert_eq!(
        names(&router, &filtered("location eq 'East US'")).await,
        ["beta"]
    );
    assert_eq!(
        names(
            &router,
            &filtered("tagName eq 'env' and tagValue eq 'test'")
        )
        .await,
        ["alpha"]
    );
    // The unreadable one stays hidden even when named.
    assert!(
        names(&router, &filtered("name eq 'secret-gamma'"))
            .await
            .is_empty()
    );
    assert_eq!(names(&router, &format!("{base}&$top=1")).await.len(), 1);

    // The group's list takes the same filter and the same per-resource check.
    let group_list = format!("{}/resources?api-version=2021-04-01", group("two"));
    assert_eq!(names(&router, &group_list).await, ["beta"]);
    assert!(
        names(
            &router,
            &format!("{group_list}&$filter=name%20eq%20%27alpha%27")
        )
        .await
        .is_empty()
    );
}

#[tokio::test]
async fn hostile_filters_and_tops_are_refused() {
    let (_directory, router) = control_plane().await;
    seed(&router).await;
    let base = format!("/subscriptions/{SUBSCRIPTION}/resources?api-version=2015-11-01");
    let long = "a".repeat(hds_arm::MAX_FILTER_BYTES + 1);
    for query in [
        "$filter=properties%20eq%20%27x%27".to_owned(),
        "$filter=name%20ne%20%27x%27".to_owned(),
        "$filter=name%20eq%20%27x%27%20or%20name%20eq%20%27y%27".to_owned(),
        "$filter=name%20eq%20%27unterminated".to_owned(),
        "$filter=atScope()".to_owned(),
        "$filter=tagValue%20eq%20%27x%27".to_owned(),
        format!("$filter=name%20eq%20%27{long}%27"),
        "$top=0".to_owned(),
        "$top=100000".to_owned(),
        "$top=many".to_owned(),
        "$filter=%ff".to_owned(),
    ] {
        let (status, body) = call(&router, Method::GET, &format!("{base}&{query}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["error"]["code"].is_string(), "{query}: {body}");
    }
}

#[tokio::test]
async fn providers_name_their_types_and_api_versions() {
    let (_directory, router) = control_plane().await;
    for path in [
        format!("/subscriptions/{SUBSCRIPTION}/providers/microsoft.test?api-version=2021-04-01"),
        "/providers/Microsoft.Test?api-version=2021-04-01".to_owned(),
    ] {
        let (status, body) = call(&router, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["namespace"], "Microsoft.Test");
        assert_eq!(body["registrationState"], "Registered");
        let types = body["resourceTypes"].as_array().expect("types");
        let widgets = types
            .iter()
            .find(|item| item["resourceType"] == "widgets")
            .expect("widgets listed");
        assert!(
            !widgets["apiVersions"]
                .as_array()
                .expect("versions")
                .is_empty()
        );
        assert!(
            types
                .iter()
                .any(|item| item["resourceType"] == "widgets/parts")
        );
    }
    let (status, body) = call(
        &router,
        Method::GET,
        &format!(
            "/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Nothing?api-version=2021-04-01"
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "InvalidResourceNamespace");
    let (status, body) = call(
        &router,
        Method::GET,
        "/providers?api-version=2021-04-01",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["value"]
            .as_array()
            .expect("list")
            .iter()
            .any(|item| item["namespace"] == "Microsoft.Resources")
    );
}

#[tokio::test]
async fn query_parameter_names_are_percent_decoded() {
    let (_directory, router) = control_plane().await;
    let (status, body) = call(
        &router,
        Method::GET,
        &format!("/subscriptions/{SUBSCRIPTION}/resourcegroups?api%2Dversion=2021-04-01"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The body `az deployment group create` sends: the template file's text under an unquoted
/// `template` key, with the file's comments and trailing commas.
#[tokio::test]
async fn deployments_accept_the_lenient_json_az_sends() {
    let (_directory, router) = control_plane().await;
    put(&router, &group("one"), json!({"location": "westus3"})).await;
    let template = r#"{
        // A template with the comments and trailing commas ARM allows.
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "resources": [
            {
                "type": "Microsoft.Test/widgets",
                "apiVersion": "2021-04-01", /* the version */
                "name": "deployed",
                "location": "westus3",
            },
        ],
    }"#;
    let body = format!(
        r#"{{"properties": {{template: {template}, "parameters": {{}}, "mode": "Incremental"}}}}"#
    );
    let deployment = format!(
        "{}/providers/Microsoft.Resources/deployments/lenient",
        group("one")
    );
    let (status, answer) = call(
        &router,
        Method::PUT,
        &format!("{deployment}?api-version=2022-09-01"),
        Some(body),
    )
    .await;
    assert!(status.is_success(), "{status} {answer}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, state) = call(
            &router,
            Method::GET,
            &format!("{deployment}?api-version=2022-09-01"),
            None,
        )
        .await;
        let provisioning = state["properties"]["provisioningState"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if provisioning == "Succeeded" {
            break;
        }
        assert!(provisioning != "Failed", "{state}");
        assert!(
            Instant::now() < deadline,
            "the deployment did not finish: {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = call(
        &router,
        Method::GET,
        &format!(
            "{}/providers/{WIDGETS}/deployed?api-version=2021-04-01",
            group("one")
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Still malformed after the lenient rewrite: a 400 with a position, not a crash.
    for bad in ["{template: }", "{\"a\": 'unterminated", "{/* open", "[1,,]"] {
        let (status, answer) = call(
            &router,
            Method::PUT,
            &format!("{deployment}?api-version=2022-09-01"),
            Some(bad.to_owned()),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {answer}");
        assert_eq!(answer["error"]["code"], "InvalidRequestContent", "{bad}");
    }
}
