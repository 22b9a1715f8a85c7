//! Requests to the data plane: the token on each, busy answers retried, bodies read with a
//! bound, and the server's reason for a refusal in the error.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::Value;

use super::DicomClient;

/// The most bytes of a JSON (or error) response read.
pub const MAX_JSON_BYTES: usize = 64 * 1024 * 1024;
/// How often a request answered 503 or 429 is sent again.
const RETRIES: u32 = 5;
/// The longest wait between tries, whatever Retry-After says.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// How long to wait before the next try of a busy answer, or None when it should not be retried.
pub fn retry_wait(response: &reqwest::Response, attempt: u32) -> Option<Duration> {
    let status = response.status();
    if attempt >= RETRIES
        || !(status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS)
    {
        return None;
    }
    let advised = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let backoff = Duration::from_millis(250 << attempt.min(6));
    Some(advised.unwrap_or(backoff).min(MAX_RETRY_WAIT))
}

impl DicomClient {
    /// A request to `{base}/{path}` with the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}/{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends a request built by `build` (again while the server is busy).
    pub async fn send(
        &self,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let mut attempt = 0;
        loop {
            let response = build()
                .send()
                .await
                .with_context(|| format!("sending a request to {}", self.base))?;
            match retry_wait(&response, attempt) {
                Some(wait) => {
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                None => return Ok(response),
            }
        }
    }

    /// A GET of JSON: the parsed body, or an error with the server's reason.
    pub async fn get_json(&self, path: &str, query: &[(String, String)]) -> anyhow::Result<Value> {
        let response = self
            .send(|| {
                self.request(reqwest::Method::GET, path)
                    .query(query)
                    .header(reqwest::header::ACCEPT, "application/dicom+json")
            })
            .await?;
        let status = response.status();
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Array(Vec::new()));
        }
        let body = read_bounded(response, MAX_JSON_BYTES).await?;
        if !status.is_success() {
            bail!("{path}: {}", refusal(status, &body));
        }
        serde_json::from_slice(&body).with_context(|| format!("{path}: the answer is not JSON"))
    }
}

/// A response body, refusing one longer than `limit` bytes.
pub async fn read_bounded(response: reqwest::Response, limit: usize) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading the answer")?;
        if body.len() + chunk.len() > limit {
            bail!("the answer is longer than {limit} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// "STATUS: the server's message": the `error.message` (or `message`) of a JSON error body,
/// else its first line of text, cut short.
pub fn refusal(status: reqwest::StatusCode, body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|value| {
            value
                .pointer("/error/message")
                .or_else(|| value.get("message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            String::from_utf8_lossy(body)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        });
    let message: String = message.chars().take(400).collect();
    if message.is_empty() {
        format!("{status}")
    } else {
        format!("{status}: {message}")
    }
}
