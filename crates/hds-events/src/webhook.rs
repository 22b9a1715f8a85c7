//! The outbound HTTP client of event delivery, and which URLs it may call.
//!
//! It is built to be useless against hds itself: it sends no `Authorization` header, no cookie
//! and no client certificate (a URL with user info is refused, since that would become basic
//! authentication), follows no redirect, and reads at most [`MAX_RESPONSE_BYTES`] of a
//! response (only the handshake's; a delivery's answer is judged by its status alone). Every
//! request is bounded in time (Event Grid waits 30 s for an answer). A URL is `https`, or
//! `http` to a loopback address (a receiver on the same machine, and tests); the main
//! listener's own authorities can be refused outright.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use serde_json::Value;

use crate::EventError;
use crate::payload::validation_event;
use crate::store::DeliverySchema;

/// The longest endpoint URL.
pub const MAX_URL_CHARS: usize = 2048;

/// The most of a response body read (the handshake's answer is a short JSON object).
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// The origin Event Grid names in the CloudEvents handshake (and receivers check for).
const EVENT_GRID_ORIGIN: &str = "eventgrid.azure.net";

/// How the client is built.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// How long a request may take, answer included.
    pub request_timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Whether the system's CA certificates are trusted for `https` receivers.
    pub trust_system_roots: bool,
    /// More CA certificates to trust (PEM).
    pub ca_pem_path: Option<PathBuf>,
    /// `host:port` authorities (lowercase) no endpoint may name: hds's own listener.
    pub forbidden_authorities: Vec<String>,
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            trust_system_roots: true,
            ca_pem_path: None,
            forbidden_authorities: Vec::new(),
        }
    }
}

/// Why an endpoint URL is refused; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlRefusal(pub String);

fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|address| address.is_loopback())
}

/// Checks an endpoint URL: absolute, at most [`MAX_URL_CHARS`], `https` (or `http` to a
/// loopback address), no user info or fragment, not one of `forbidden` authorities.
pub fn check_endpoint_url(text: &str, forbidden: &[String]) -> Result<Url, UrlRefusal> {
    if text.chars().count() > MAX_URL_CHARS {
        return Err(UrlRefusal(format!(
            "The endpoint URL is longer than {MAX_URL_CHARS} characters."
        )));
    }
    let url = Url::parse(text.trim())
        .map_err(|_| UrlRefusal("The endpoint URL is not an absolute URL.".into()))?;
    let host = url
        .host_str()
        .filter(|host| !host.is_empty())
        .ok_or_else(|| UrlRefusal("The endpoint URL has no host.".into()))?
        .to_owned();
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&host) => {}
        "http" => {
            return Err(UrlRefusal(
                "The endpoint URL must use https (http is allowed only to a loopback address such as 127.0.0.1)."
                    .into(),
            ));
        }
        _ => {
            return Err(UrlRefusal("The endpoint URL must be an https URL.".into()));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefusal(
            "The endpoint URL must not carry a user name or password.".into(),
        ));
    }
    if url.fragment().is_some() {
        return Err(UrlRefusal(
            "The endpoint URL must not have a fragment.".into(),
        ));
    }
    let authority = format!(
        "{}:{}",
        host.to_lowercase(),
        url.port_or_known_default().unwrap_or_default()
    );
    if forbidden
        .iter()
        .any(|own| own.eq_ignore_ascii_case(&authority))
    {
        return Err(UrlRefusal(
            "The endpoint URL names hds's own listener; events go to a receiver of their own."
                .into(),
        ));
    }
    Ok(url)
}

/// What a delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// A 2xx answer.
    Acknowledged,
    /// An answer Event Grid does not retry (400, 401, 403, 413): the batch is dead-lettered.
    Refused(u16),
    /// Anything else (another status, no answer in time, no connection): retried later.
    Failed(String),
}

/// The client that posts events. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    forbidden: Arc<Vec<String>>,
}

impl WebhookClient {
    /// A client per `config`.
    pub fn new(config: &WebhookConfig) -> Result<WebhookClient, EventError> {
        let roots =
            hds_tls::trusted_roots(config.trust_system_roots, config.ca_pem_path.as_deref())
                .map_err(|error| EventError::Configuration(format!("trusted CAs: {error}")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| EventError::Configuration(error.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("hds-events")
            .build()
            .map_err(|error| EventError::Configuration(error.to_string()))?;
        Ok(WebhookClient {
            http,
            forbidden: Arc::new(
                config
                    .forbidden_authorities
                    .iter()
                    .map(|authority| authority.to_lowercase())
                    .collect(),
            ),
        })
    }

    /// Checks `url` as [`check_endpoint_url`] does with this client's forbidden authorities.
    pub fn check(&self, url: &str) -> Result<Url, UrlRefusal> {
        check_endpoint_url(url, &self.forbidden)
    }

    /// The handshake before a subscription is active. Event Grid schema: the validation event
    /// is posted, and the answer must be 2xx with `{"validationResponse": code}`. CloudEvents:
    /// the CloudEvents webhook abuse protection, an `OPTIONS` with
    /// `WebHook-Request-Origin: eventgrid.azure.net`, answered 2xx with that origin (or `*`)
    /// in `WebHook-Allowed-Origin`. The error says what failed, without the answer's body.
    pub async fn validate(
        &self,
        url: &str,
        schema: DeliverySchema,
        subscription_name: &str,
        topic: &str,
    ) -> Result<(), String> {
        let url = self.check(url).map_err(|refusal| refusal.0)?;
        match schema {
            DeliverySchema::EventGrid => {
                let code = uuid::Uuid::new_v4().to_string().to_uppercase();
                let body = validation_event(topic, &code).to_string();
                let response = self
                    .http
                    .post(url)
                    .header("Content-Type", "application/json; charset=utf-8")
                    .header("aeg-event-type", "SubscriptionValidation")
                    .header("aeg-subscription-name", subscription_name.to_uppercase())
                    .header("aeg-delivery-count", "0")
                    .header("aeg-data-version", "1")
                    .header("aeg-metadata-version", "1")
                    .body(body)
                    .send()
                    .await
                    .map_err(|error| describe_send_error(&error))?;
                let status = response.status();
                if !status.is_success() {
                    return Err(format!(
                        "The endpoint answered the validation event with HTTP {}.",
                        status.as_u16()
                    ));
                }
                let body = read_limited(response).await?;
                let answer: Value = serde_json::from_slice(&body).map_err(|_| {
                    "The endpoint's answer to the validation event is not the JSON object {\"validationResponse\": code}.".to_owned()
                })?;
                let given = answer
                    .as_object()
                    .and_then(|object| {
                        object
                            .iter()
                            .find(|(name, _)| name.eq_ignore_ascii_case("validationResponse"))
                    })
                    .and_then(|(_, value)| value.as_str());
                if given.is_some_and(|given| given.eq_ignore_ascii_case(&code)) {
                    Ok(())
                } else {
                    Err("The endpoint's validationResponse is not the validation event's validationCode.".into())
                }
            }
            DeliverySchema::CloudEvents => {
                let response = self
                    .http
                    .request(reqwest::Method::OPTIONS, url)
                    .header("WebHook-Request-Origin", EVENT_GRID_ORIGIN)
                    .header("WebHook-Request-Rate", "120")
                    .send()
                    .await
                    .map_err(|error| describe_send_error(&error))?;
                let status = response.status();
                let allowed = response
                    .headers()
                    .get("WebHook-Allowed-Origin")
                    .and_then(|value| value.to_str().ok())
                    .map(str::trim)
                    .is_some_and(|origin| {
                        origin == "*" || origin.eq_ignore_ascii_case(EVENT_GRID_ORIGIN)
                    });
                if status.is_success() && allowed {
                    Ok(())
                } else {
                    Err(format!(
                        "The endpoint answered the CloudEvents handshake (OPTIONS) with HTTP {} and without 'WebHook-Allowed-Origin: {EVENT_GRID_ORIGIN}'.",
                        status.as_u16()
                    ))
                }
            }
        }
    }

    /// Posts one batch. `delivery_count` is the number of earlier attempts at it.
    pub(crate) async fn deliver(
        &self,
        url: &str,
        schema: DeliverySchema,
        subscription_name: &str,
        delivery_count: i64,
        events: Vec<Value>,
    ) -> Delivery {
        let url = match self.check(url) {
            Ok(url) => url,
            Err(refusal) => return Delivery::Failed(refusal.0),
        };
        let (content_type, body) = match schema {
            DeliverySchema::EventGrid => ("application/json; charset=utf-8", Value::Array(events)),
            DeliverySchema::CloudEvents if events.len() == 1 => (
                "application/cloudevents+json; charset=utf-8",
                events.into_iter().next().unwrap_or(Value::Null),
            ),
            DeliverySchema::CloudEvents => (
                "application/cloudevents-batch+json; charset=utf-8",
                Value::Array(events),
            ),
        };
        let sent = self
            .http
            .post(url)
            .header("Content-Type", content_type)
            .header("aeg-event-type", "Notification")
            .header("aeg-subscription-name", subscription_name.to_uppercase())
            .header("aeg-delivery-count", delivery_count.to_string())
            .header("aeg-data-version", "1")
            .header("aeg-metadata-version", "1")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            // The answer's body is not read: dropping the response closes what is left.
            Ok(response) if response.status().is_success() => Delivery::Acknowledged,
            Ok(response) => match response.status().as_u16() {
                status @ (400 | 401 | 403 | 413) => Delivery::Refused(status),
                status => Delivery::Failed(format!("HTTP {status}")),
            },
            Err(error) => Delivery::Failed(describe_send_error(&error)),
        }
    }
}

/// What failed in sending, without the URL (whose query may hold a secret).
fn describe_send_error(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "The endpoint did not answer in time.".into()
    } else if error.is_connect() {
        "The endpoint could not be reached.".into()
    } else {
        "The request to the endpoint failed.".into()
    }
}

/// At most [`MAX_RESPONSE_BYTES`] of `response`'s body; more is an error.
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| "The endpoint's answer could not be read.".to_owned())?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "The endpoint's answer to the validation event is longer than {MAX_RESPONSE_BYTES} bytes."
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_rules() {
        let none: Vec<String> = Vec::new();
        assert!(check_endpoint_url("https://receiver.example/hook?code=x", &none).is_ok());
        assert!(check_endpoint_url("http://127.0.0.1:9000/hook", &none).is_ok());
        assert!(check_endpoint_url("http://[::1]:9000/hook", &none).is_ok());
        assert!(check_endpoint_url("http://localhost/hook", &none).is_ok());
        assert!(check_endpoint_url("http://receiver.example/hook", &none).is_err());
        assert!(check_endpoint_url("http://10.0.0.1/hook", &none).is_err());
        assert!(check_endpoint_url("ftp://receiver.example/", &none).is_err());
        assert!(check_endpoint_url("https://user:pass@receiver.example/", &none).is_err());
        assert!(check_endpoint_url("https://receiver.example/#x", &none).is_err());
        assert!(check_endpoint_url("/relative", &none).is_err());
        let long = format!("https://receiver.example/{}", "a".repeat(MAX_URL_CHARS));
        assert!(check_endpoint_url(&long, &none).is_err());
        let own = vec!["127.0.0.1:8443".to_owned()];
        assert!(check_endpoint_url("https://127.0.0.1:8443/subscriptions", &own).is_err());
        assert!(check_endpoint_url("http://127.0.0.1:8444/hook", &own).is_ok());
    }
}
