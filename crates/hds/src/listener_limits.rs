//! The limits of the main listener: how many connections it holds, how many requests it runs
//! at once, how long a client may take to send a request head, and how long a connection may
//! sit without a byte either way.
//!
//! Without them a client that opens connections and trickles a byte now and then keeps each
//! one (and a file descriptor) forever, until no other client can connect.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_server::accept::Accept;
use hds_metrics::{HttpMetrics, OpenConnection};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// The most connections held at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// The most requests handled at once; more are answered 503 at once.
    pub max_in_flight_requests: usize,
    /// How long a client may take to send a whole request head (HTTP/1).
    pub header_read_timeout: Duration,
    /// How long a connection may go without a byte read or written while it waits for the
    /// client (between requests, or a client that stopped reading or sending).
    pub idle_timeout: Duration,
}

/// Applies the HTTP/1 header-read timeout to a server's connection builder.
pub fn configure_http<A>(server: &mut axum_server::Server<A>, limits: &ListenerLimits) {
    server
        .http_builder()
        .http1()
        .timer(TokioTimer)
        .header_read_timeout(limits.header_read_timeout);
}

/// An acceptor that admits at most `max_connections` connections at once and closes the ones
/// idle for longer than `idle_timeout`; `inner` (TCP options) runs on the admitted ones, and TLS
/// goes on top of this one.
#[derive(Clone)]
pub struct LimitedAcceptor<A> {
    inner: A,
    connections: Arc<Semaphore>,
    idle_timeout: Duration,
    metrics: HttpMetrics,
}

impl<A> LimitedAcceptor<A> {
    /// Wraps `inner` with the connection limits of `limits`, counting the open connections in
    /// `metrics`.
    pub fn new(inner: A, limits: &ListenerLimits, metrics: HttpMetrics) -> LimitedAcceptor<A> {
        LimitedAcceptor {
            inner,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            idle_timeout: limits.idle_timeout,
            metrics,
        }
    }
}

impl<A, S> Accept<TcpStream, S> for LimitedAcceptor<A>
where
    A: Accept<TcpStream, S> + Clone + Send + Sync + 'static,
    A::Future: Send,
    A::Stream: Send,
    A::Service: Send,
    S: Send + 'static,
{
    type Stream = IdleStream<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let permit = self.connections.clone().try_acquire_owned();
        let inner = self.inner.clone();
        let idle_timeout = self.idle_timeout;
        let metrics = self.metrics.clone();
        Box::pin(async move {
            // Past the cap the connection is dropped (closed) at once: it holds nothing.
            let Ok(permit) = permit else {
                tracing::warn!("connection refused: the listener holds its maximum");
                return Err(io::Error::other("connection limit reached"));
            };
            let counted = metrics.connection_opened();
            let (stream, service) = inner.accept(stream, service).await?;
            Ok((
                IdleStream::new(stream, idle_timeout, (permit, counted)),
                service,
            ))
        })
    }
}

/// A connection that fails its pending read or write once nothing has moved either way for
/// its idle timeout, and holds its place under the connection cap until dropped.
pub struct IdleStream<S> {
    inner: S,
    idle_timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Its place under the cap, and its count in the open-connections gauge.
    _held: (OwnedSemaphorePermit, OpenConnection),
}

impl<S> IdleStream<S> {
    fn new(
        inner: S,
        idle_timeout: Duration,
        held: (OwnedSemaphorePermit, OpenConnection),
    ) -> IdleStream<S> {
        IdleStream {
            inner,
            idle_timeout,
            deadline: Box::pin(tokio::time::sleep(idle_timeout)),
            _held: held,
        }
    }

    /// Something moved: the idle clock starts again.
    fn progressed(&mut self) {
        let next = tokio::time::Instant::now() + self.idle_timeout;
        self.deadline.as_mut().reset(next);
    }

    /// Waiting on the peer: an error once the idle timeout has passed.
    fn poll_idle(&mut self, context: &mut Context<'_>) -> Poll<io::Error> {
        match self.deadline.as_mut().poll(context) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for longer than the idle timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buffer.filled().len();
        match Pin::new(&mut this.inner).poll_read(context, buffer) {
            Poll::Ready(result) => {
                if buffer.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(context).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(context, data) {
            Poll::Ready(result) => {
                if matches!(result, Ok(written) if written > 0) {
                    this.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(context).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(context, buffers) {
            Poll::Ready(result) => {
                if matches!(result, Ok(written) if written > 0) {
                    this.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(context).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(context) {
            Poll::Pending => this.poll_idle(context).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(context)
    }
}

/// The cap on requests handled at once, as middleware state, and the gauge that counts them.
#[derive(Clone)]
pub struct InFlightRequests {
    places: Arc<Semaphore>,
    metrics: HttpMetrics,
}

impl InFlightRequests {
    /// At most `limit` requests at once, counted in `metrics`.
    pub fn new(limit: usize, metrics: HttpMetrics) -> InFlightRequests {
        InFlightRequests {
            places: Arc::new(Semaphore::new(limit)),
            metrics,
        }
    }
}

/// Middleware: runs the request if fewer than the cap are in flight, else answers 503 with
/// `Retry-After`. A request stays in flight until its response body is finished, since a
/// streamed body is where a large response spends its time.
pub async fn limit_in_flight(
    axum::extract::State(in_flight): axum::extract::State<InFlightRequests>,
    request: Request,
    next: Next,
) -> Response {
    let Ok(permit) = in_flight.places.clone().try_acquire_owned() else {
        let body = serde_json::json!({ "error": {
            "code": "ServerBusy",
            "message": "the server is handling as many requests as it allows; retry shortly",
        }});
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let admitted = (permit, in_flight.metrics.request_admitted());
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    // The place (and its count) moves into the body and is dropped with it.
    let body = body.map_frame(move |frame| {
        let _held = &admitted;
        frame
    });
    Response::from_parts(parts, Body::new(body))
}

/// hyper's timer on tokio's clock, for the header-read timeout.
#[derive(Debug, Clone, Copy)]
struct TokioTimer;

impl hyper::rt::Timer for TokioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(TokioSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(TokioSleep(Box::pin(tokio::time::sleep_until(
            tokio::time::Instant::from_std(deadline),
        ))))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: Instant) {
        *sleep = self.sleep_until(new_deadline);
    }
}

struct TokioSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for TokioSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        self.get_mut().0.as_mut().poll(context)
    }
}

impl hyper::rt::Sleep for TokioSleep {}
