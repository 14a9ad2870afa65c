//! Connections: the accept loop and the life of each HTTP/2 connection.
//!
//! The server owns this loop, with hyper as tonic itself uses it, instead of
//! tonic's `serve`, because tonic has no idle timeout, no connection limit and
//! no say over the sockets it is handed. Routing and the calls are tonic's
//! (see `service.rs` and `layers.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tonic::body::Body;
use tower::{Service, ServiceExt};

use crate::auth::ClientNames;
use crate::config::ConnectionLimits;
use crate::tls::{HANDSHAKE_LIMIT, Tls, client_names};

/// How long a connection that was sent GOAWAY for being idle may take to
/// close before it is dropped (a peer that never completed its handshake
/// never answers).
const IDLE_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Accepts one connection and sets its socket options.
pub(crate) async fn accept(listener: &TcpListener) -> std::io::Result<(TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept().await?;
    // A response goes out as several small writes (headers, message,
    // trailers); with Nagle's algorithm the last one waits for the client's
    // delayed ACK, about 40 ms.
    stream.set_nodelay(true)?;
    Ok((stream, peer))
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops
/// accepting, asks every connection to finish (GOAWAY) and waits for them,
/// at most `drain_limit`.
pub(crate) async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: &ConnectionLimits,
    shutdown: impl Future<Output = ()>,
    drain_limit: Duration,
    tls: Option<Tls>,
) where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_pending_accept_reset_streams(limits.max_pending_resets)
        .keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout);
    let (stop, stopping) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = accept(&listener) => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::debug!(%peer, limit = limits.max_connections, "connection closed: server.max_connections reached");
                        continue;
                    };
                    let connection = Connection {
                        peer,
                        idle_timeout: limits.idle_timeout,
                        activity: Arc::new(Activity::new()),
                        stopping: stopping.clone(),
                    };
                    let http2 = http2.clone();
                    let service = service.clone();
                    let acceptor = tls.as_ref().map(Tls::acceptor);
                    connections.spawn(async move {
                        match acceptor {
                            None => connection.run(stream, None, service, http2).await,
                            Some(acceptor) => {
                                // Within the connection's own task, so a slow
                                // handshake holds up no one else.
                                match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
                                    Ok(Ok(stream)) => {
                                        let names = client_names(stream.get_ref().1);
                                        connection.run(stream, names, service, http2).await;
                                    }
                                    Ok(Err(err)) => tracing::debug!(%peer, error = %err, "tls handshake failed"),
                                    Err(_) => tracing::debug!(%peer, "tls handshake not finished in time"),
                                }
                            }
                        }
                        drop(slot);
                    });
                }
                Err(err) => {
                    // Out of file descriptors, usually: wait instead of spinning.
                    tracing::warn!(error = %err, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(drain_limit, drained).await.is_err() {
        tracing::warn!(open = connections.len(), "closing connections that did not finish in time");
        connections.abort_all();
    }
}

struct Connection {
    peer: SocketAddr,
    idle_timeout: Duration,
    activity: Arc<Activity>,
    stopping: watch::Receiver<bool>,
}

impl Connection {
    async fn run<S, I>(
        mut self,
        stream: I,
        client: Option<ClientNames>,
        service: S,
        http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    ) where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let activity = self.activity.clone();
        let per_call = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let call = activity.start();
            let service = service.clone();
            let client = client.clone();
            async move {
                let mut request = request.map(Body::new);
                if let Some(client) = client {
                    request.extensions_mut().insert(client);
                }
                let response = service.oneshot(request).await?;
                Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, _call: call })))
            }
        });
        let mut connection = pin!(http2.serve_connection(TokioIo::new(stream), per_call));
        let mut idle_close: Option<Instant> = None;
        let mut stopping = false;
        loop {
            let wake = match idle_close {
                Some(since) => since + IDLE_CLOSE_WAIT,
                None => self.activity.idle_deadline(self.idle_timeout).unwrap_or(Instant::now() + self.idle_timeout),
            };
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(peer = %self.peer, error = %err, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(wake.into()), if !stopping => {
                    if idle_close.is_some() {
                        if self.activity.calls() == 0 {
                            tracing::debug!(peer = %self.peer, "dropping an idle connection that did not close");
                            return;
                        }
                    } else if self.activity.idle_deadline(self.idle_timeout).is_some_and(|at| at <= Instant::now()) {
                        tracing::debug!(peer = %self.peer, "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        idle_close = Some(Instant::now());
                    }
                }
                _ = self.stopping.changed(), if !stopping => {
                    stopping = true;
                    if idle_close.is_none() {
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// The calls open on one connection, and since when it has had none.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    calls: AtomicUsize,
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity { epoch: Instant::now(), calls: AtomicUsize::new(0), idle_since_ms: AtomicU64::new(0) }
    }

    fn start(self: &Arc<Self>) -> OpenCall {
        self.calls.fetch_add(1, Ordering::SeqCst);
        OpenCall(self.clone())
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// When the connection becomes idle for `timeout`, if it has no call now.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        (self.calls() == 0)
            .then(|| self.epoch + Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst)) + timeout)
    }
}

/// A call counted as open until its response body is finished or dropped,
/// so a long response stream (health Watch) keeps its connection from idling.
#[derive(Debug)]
struct OpenCall(Arc<Activity>);

impl Drop for OpenCall {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.calls.fetch_sub(1, Ordering::SeqCst) == 1 {
            let now = u64::try_from(activity.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            activity.idle_since_ms.store(now, Ordering::SeqCst);
        }
    }
}

/// A response body that keeps its call open.
struct Tracked {
    body: Body,
    _call: OpenCall,
}

impl HttpBody for Tracked {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_do_not_delay_small_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let client = tokio::spawn(TcpStream::connect(address));
        let (stream, _) = accept(&listener).await.expect("accept");
        assert!(stream.nodelay().expect("read TCP_NODELAY"), "TCP_NODELAY is set on accepted connections");
        drop(client.await);
    }

    #[test]
    fn a_connection_is_idle_only_without_calls() {
        let activity = Arc::new(Activity::new());
        let timeout = Duration::from_secs(60);
        assert!(activity.idle_deadline(timeout).is_some(), "a new connection counts as idle");
        let first = activity.start();
        let second = activity.start();
        assert_eq!(activity.idle_deadline(timeout), None);
        drop(first);
        assert_eq!(activity.idle_deadline(timeout), None, "one call is still open");
        drop(second);
        let deadline = activity.idle_deadline(timeout).expect("idle again");
        assert!(deadline > Instant::now() + Duration::from_secs(59), "idle from the last call's end");
    }
}
