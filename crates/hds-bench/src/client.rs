//! A small DICOMweb client: just the requests the phases issue, each checking
//! that the answer is what a conforming server must send, so a fast wrong
//! answer counts as an error rather than as throughput.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use crate::multipart::{self, MultipartBody};

/// The DICOM JSON keyword-free tag keys the checks read.
const TAG_STUDY_INSTANCE_UID: &str = "0020000D";
const TAG_SOP_INSTANCE_UID: &str = "00080018";
const TAG_FAILED_SOP_SEQUENCE: &str = "00081198";
const TAG_REFERENCED_SOP_SEQUENCE: &str = "00081199";

const ACCEPT_DICOM_MULTIPART: &str =
    "multipart/related; type=\"application/dicom\"; transfer-syntax=*";
const ACCEPT_DICOM_JSON: &str = "application/dicom+json";

/// How to reach the server.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The DICOMweb base URL, without a trailing slash.
    pub base_url: String,
    /// Extra PEM root certificates to trust for HTTPS.
    pub ca_certificates: Vec<PathBuf>,
    /// A bearer token sent with every request.
    pub bearer_token: Option<String>,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Idle connections kept per host: the concurrency, so no request waits
    /// for a new connection once the pool is warm; 0 opens a connection per
    /// request.
    pub pool_size: usize,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A CA certificate file could not be read.
    #[error("cannot read CA certificate {path}: {source}")]
    ReadCertificate {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A CA certificate file is not PEM.
    #[error("CA certificate {path} is not a PEM certificate")]
    ParseCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The token has characters a header cannot carry.
    #[error("the bearer token is not a valid header value")]
    InvalidToken,
    /// reqwest could not build the client.
    #[error("cannot build the HTTP client: {0}")]
    Build(reqwest::Error),
}

/// Why one request failed; its `Display` is the error kind in reports and
/// never contains a URL (URLs carry UIDs) or a response body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestFailure {
    /// No HTTP response: connection, TLS or timeout.
    #[error("transport: {0}")]
    Transport(String),
    /// A status other than the expected success.
    #[error("HTTP {0}")]
    Status(u16),
    /// A success status with a body that does not hold what it must.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
}

impl From<reqwest::Error> for RequestFailure {
    fn from(error: reqwest::Error) -> Self {
        let kind = if error.is_timeout() {
            "timeout"
        } else if error.is_connect() {
            "connect"
        } else if error.is_body() || error.is_decode() {
            "body"
        } else {
            "request"
        };
        RequestFailure::Transport(kind.to_string())
    }
}

/// What a successful request moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// Instances or result sets handled.
    pub items: u64,
    /// Payload bytes sent or received.
    pub bytes: u64,
}

/// A DICOMweb client bound to one base URL.
#[derive(Clone, Debug)]
pub struct DicomWebClient {
    http: reqwest::Client,
    base_url: String,
    authorization: Option<HeaderValue>,
}

impl DicomWebClient {
    /// Builds a client; the TLS roots are the given CA certificates only,
    /// since the servers measured here are local and use a local CA.
    pub fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .pool_max_idle_per_host(config.pool_size)
            .tcp_nodelay(true);
        for path in &config.ca_certificates {
            let pem = std::fs::read(path).map_err(|source| ClientError::ReadCertificate {
                path: path.clone(),
                source,
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|_| ClientError::ParseCertificate { path: path.clone() })?;
            if certificates.is_empty() {
                return Err(ClientError::ParseCertificate { path: path.clone() });
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let authorization = match &config.bearer_token {
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| ClientError::InvalidToken)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        Ok(DicomWebClient {
            http: builder.build().map_err(ClientError::Build)?,
            base_url: config.base_url.trim_end_matches('/').to_string(),
            authorization,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self
            .http
            .request(method, format!("{}{}", self.base_url, path));
        match &self.authorization {
            Some(value) => request.header(AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    /// STOW-RS: stores `instance_count` instances sent as one multipart body,
    /// and checks the response references them all and reports no failure.
    pub async fn store(
        &self,
        body: MultipartBody,
        content_type: &str,
        instance_count: usize,
        payload_bytes: u64,
    ) -> Result<Transfer, RequestFailure> {
        let response = self
            .request(reqwest::Method::POST, "/studies")
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, body.len())
            .header(ACCEPT, ACCEPT_DICOM_JSON)
            .body(reqwest::Body::wrap(body))
            .send()
            .await
            .map_err(|error| RequestFailure::from(error.without_url()))?;
        let status = response.status().as_u16();
        let answer = response
            .bytes()
            .await
            .map_err(|error| RequestFailure::from(error.without_url()))?;
        if status != 200 {
            return Err(RequestFailure::Status(status));
        }
        let document: Value = serde_json::from_slice(&answer)
            .map_err(|_| RequestFailure::Invalid("STOW response is not JSON"))?;
        if sequence_length(&document, TAG_FAILED_SOP_SEQUENCE) > 0 {
            return Err(RequestFailure::Invalid("STOW reported failed instances"));
        }
        if sequence_length(&document, TAG_REFERENCED_SOP_SEQUENCE) != instance_count {
            return Err(RequestFailure::Invalid(
                "STOW did not reference every instance",
            ));
        }
        Ok(Transfer {
            items: instance_count as u64,
            bytes: payload_bytes,
        })
    }

    /// WADO-RS: retrieves one instance as a one-part multipart body holding
    /// a Part 10 file of at least `minimum_size` bytes.
    pub async fn retrieve_instance(
        &self,
        study_uid: &str,
        series_uid: &str,
        sop_instance_uid: &str,
        minimum_size: usize,
    ) -> Result<Transfer, RequestFailure> {
        let path = format!("/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}");
        let (content_type, body) = self.fetch(&path, ACCEPT_DICOM_MULTIPART).await?;
        let boundary = multipart::boundary_from_content_type(&content_type)
            .map_err(|_| RequestFailure::Invalid("WADO response is not multipart"))?;
        let parts = multipart::split_parts(&body, &boundary)
            .map_err(|_| RequestFailure::Invalid("WADO multipart body is malformed"))?;
        let [file] = parts.as_slice() else {
            return Err(RequestFailure::Invalid("WADO returned other than one part"));
        };
        if file.len() < minimum_size || file.get(128..132) != Some(b"DICM".as_slice()) {
            return Err(RequestFailure::Invalid(
                "WADO part is not the stored Part 10 file",
            ));
        }
        Ok(Transfer {
            items: 1,
            bytes: file.len() as u64,
        })
    }

    /// WADO-RS metadata at instance, series or study level: a DICOM JSON
    /// array of `expected_count` objects; at instance level, the object must
    /// carry the requested SOP Instance UID.
    pub async fn retrieve_metadata(
        &self,
        path: &str,
        expected_count: usize,
        expected_sop_instance_uid: Option<&str>,
    ) -> Result<Transfer, RequestFailure> {
        let document = self.get_json(path).await?;
        let Value::Array(objects) = &document.value else {
            return Err(RequestFailure::Invalid("metadata is not a JSON array"));
        };
        if objects.len() != expected_count {
            return Err(RequestFailure::Invalid(
                "metadata has the wrong number of instances",
            ));
        }
        if let Some(uid) = expected_sop_instance_uid
            && objects
                .first()
                .and_then(|object| first_string(object, TAG_SOP_INSTANCE_UID))
                != Some(uid)
        {
            return Err(RequestFailure::Invalid("metadata is for another instance"));
        }
        Ok(Transfer {
            items: objects.len() as u64,
            bytes: document.bytes,
        })
    }

    /// QIDO-RS study search; succeeds when the results include `study_uid`,
    /// and, if `exact` is set, hold nothing else.
    pub async fn search_studies(
        &self,
        query: &str,
        study_uid: &str,
        exact: bool,
    ) -> Result<Transfer, RequestFailure> {
        let document = self.get_json(&format!("/studies?{query}")).await?;
        let Value::Array(matches) = &document.value else {
            return Err(RequestFailure::Invalid("search result is not a JSON array"));
        };
        if !matches
            .iter()
            .any(|object| first_string(object, TAG_STUDY_INSTANCE_UID) == Some(study_uid))
        {
            return Err(RequestFailure::Invalid("search missed the expected study"));
        }
        if exact && matches.len() != 1 {
            return Err(RequestFailure::Invalid("search matched other studies"));
        }
        Ok(Transfer {
            items: 1,
            bytes: document.bytes,
        })
    }

    /// GET `path` (below the base URL) with `accept`: a 200 with a body whose
    /// content type starts with `expected_type` (the part before any
    /// parameter when `accept` has one), as for rendered images or transcoded
    /// instances.
    pub async fn get(&self, path: &str, accept: &str) -> Result<Transfer, RequestFailure> {
        let (content_type, body) = self.fetch(path, accept).await?;
        let content_type = content_type.to_ascii_lowercase();
        let asked = accept.split(';').next().unwrap_or_default().trim();
        if body.is_empty() || !content_type.starts_with(&asked.to_ascii_lowercase()) {
            return Err(RequestFailure::Invalid(
                "the response is empty or not of the type asked for",
            ));
        }
        Ok(Transfer {
            items: 1,
            bytes: body.len() as u64,
        })
    }

    /// GET `path` with `accept`: the response's content type and body, once read whole, when
    /// its status is 200.
    async fn fetch(&self, path: &str, accept: &str) -> Result<(String, Bytes), RequestFailure> {
        let response = self
            .request(reqwest::Method::GET, path)
            .header(ACCEPT, accept)
            .send()
            .await
            .map_err(|error| RequestFailure::from(error.without_url()))?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response
            .bytes()
            .await
            .map_err(|error| RequestFailure::from(error.without_url()))?;
        if status != 200 {
            return Err(RequestFailure::Status(status));
        }
        Ok((content_type, body))
    }

    async fn get_json(&self, path: &str) -> Result<JsonDocument, RequestFailure> {
        let (_, body) = self.fetch(path, ACCEPT_DICOM_JSON).await?;
        let value = serde_json::from_slice(&body)
            .map_err(|_| RequestFailure::Invalid("body is not JSON"))?;
        Ok(JsonDocument {
            value,
            bytes: body.len() as u64,
        })
    }
}

struct JsonDocument {
    value: Value,
    bytes: u64,
}

/// Number of items of a sequence attribute in a DICOM JSON object (0 when absent).
fn sequence_length(object: &Value, tag: &str) -> usize {
    object
        .get(tag)
        .and_then(|attribute| attribute.get("Value"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// The first value of a string attribute in a DICOM JSON object.
fn first_string<'a>(object: &'a Value, tag: &str) -> Option<&'a str> {
    object.get(tag)?.get("Value")?.as_array()?.first()?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dicom_json_helpers_read_values_and_tolerate_absence() {
        let object = json!({
            "00081199": {"vr": "SQ", "Value": [{}, {}]},
            "00081198": {"vr": "SQ"},
            "0020000D": {"vr": "UI", "Value": ["1.2.3"]}
        });
        assert_eq!(sequence_length(&object, TAG_REFERENCED_SOP_SEQUENCE), 2);
        assert_eq!(sequence_length(&object, TAG_FAILED_SOP_SEQUENCE), 0);
        assert_eq!(sequence_length(&object, "00100010"), 0);
        assert_eq!(first_string(&object, TAG_STUDY_INSTANCE_UID), Some("1.2.3"));
        assert_eq!(first_string(&object, TAG_SOP_INSTANCE_UID), None);
    }

    #[test]
    fn failure_kinds_carry_no_url() {
        let failure = RequestFailure::Status(503);
        assert_eq!(failure.to_string(), "HTTP 503");
        assert_eq!(
            RequestFailure::Transport("timeout".into()).to_string(),
            "transport: timeout"
        );
    }

    #[test]
    fn a_missing_ca_file_is_reported_with_its_path() {
        let config = ClientConfig {
            base_url: "https://127.0.0.1:1/dicom".into(),
            ca_certificates: vec![PathBuf::from("/nonexistent/ca.pem")],
            bearer_token: None,
            request_timeout: Duration::from_secs(1),
            pool_size: 1,
        };
        let error = DicomWebClient::new(&config).expect_err("missing file");
        assert!(matches!(error, ClientError::ReadCertificate { .. }));
    }

    #[test]
    fn a_token_with_a_newline_is_refused() {
        let config = ClientConfig {
            base_url: "http://127.0.0.1:1".into(),
            ca_certificates: Vec::new(),
            bearer_token: Some("abc\ndef".into()),
            request_timeout: Duration::from_secs(1),
            pool_size: 1,
        };
        assert!(matches!(
            DicomWebClient::new(&config),
            Err(ClientError::InvalidToken)
        ));
    }
}
