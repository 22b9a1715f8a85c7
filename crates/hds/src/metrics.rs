//! The HTTP side of hds's metrics: the middleware that records each request of the main
//! listener (by route template, never by path: UIDs in paths are PHI), the byte counts of
//! DICOMweb payloads, and the opt-in `/metrics` listener (`--metrics-listen`).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hds_metrics::{DicomWebPayload, HttpMetrics, Metrics};
use http_body::Frame;

/// The route label of requests that matched no route (one label for every unserved path).
const UNMATCHED_ROUTE: &str = "(unmatched)";

/// Records one request: its route template, method and status, its duration, and for
/// DICOMweb the bytes of STOW-RS bodies and WADO-RS responses as they stream.
pub async fn record_request(
    State(metrics): State<HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED_ROUTE.to_owned());
    let method = method_label(request.method());
    let dicomweb = route.starts_with("/dicom/");
    let request = if dicomweb && request.method() == Method::POST {
        let metrics = metrics.clone();
        request.map(|body| counted(body, metrics, DicomWebPayload::Stow))
    } else {
        request
    };
    let response = next.run(request).await;
    metrics.record_request(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    if dicomweb && method == "GET" && response.status().is_success() && !is_json(&response) {
        return response.map(|body| counted(body, metrics, DicomWebPayload::Wado));
    }
    response
}

/// The method as a label: the standard ones by name, anything else as `OTHER` (a method is
/// client input; one label per invented method would grow without bound).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// QIDO-RS results and metadata are JSON; WADO-RS payloads (instances, frames) are not.
fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains("json"))
}

fn counted(body: Body, metrics: HttpMetrics, payload: DicomWebPayload) -> Body {
    Body::new(CountedBody {
        inner: body,
        metrics,
        payload,
    })
}

/// A body that adds the length of each data frame to a DICOMweb byte counter as it passes.
struct CountedBody {
    inner: Body,
    metrics: HttpMetrics,
    payload: DicomWebPayload,
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.metrics
                .add_dicomweb_bytes(self.payload, data.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `GET /metrics` in plain HTTP on `address` until the task is aborted. The scrape
/// holds no PHI and no secret (see `hds_metrics`), but it does show traffic and service ids:
/// keep the address on loopback or a network only the scraper reaches.
pub async fn serve(
    address: SocketAddr,
    metrics: Metrics,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics listener {address}"))?;
    let router = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the metrics listener stopped");
        }
    }))
}

async fn scrape(State(metrics): State<Metrics>) -> Response {
    (
        [(header::CONTENT_TYPE, hds_metrics::CONTENT_TYPE)],
        metrics.encode(),
    )
        .into_response()
}
