//! Serving an emulator over HTTP/1.1.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{Emulator, Request, Response};

/// Requests larger than this are refused, as any real API would.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Serves `emulator` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, emulator: Arc<dyn Emulator>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            () = &mut shutdown => return,
        };
        let emulator = emulator.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(emulator.clone(), request));
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(
    emulator: Arc<dyn Emulator>,
    request: hyper::Request<Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let Ok(body) = Limited::new(body, MAX_BODY_BYTES).collect().await else {
        return Ok(into_hyper(Response::empty(413)));
    };
    let url = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let mut request = Request::new(parts.method.as_str(), url).body(body.to_bytes().to_vec());
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            request = request.header(name.as_str(), value);
        }
    }
    let response = emulator.handle(&request);
    if !response.delay.is_zero() {
        tokio::time::sleep(response.delay).await;
    }
    Ok(into_hyper(response))
}

fn into_hyper(response: Response) -> hyper::Response<Full<Bytes>> {
    let mut builder = hyper::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        builder = builder.header(name, value);
    }
    builder.body(Full::new(Bytes::from(response.body))).unwrap_or_default()
}

/// An emulator served on a free port of 127.0.0.1 by a thread of its own,
/// until dropped.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves `emulator` on a free port in the background.
pub fn spawn(emulator: Arc<dyn Emulator>) -> std::io::Result<Running> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("emulator".into()).spawn(move || {
        runtime.block_on(async move {
            if let Ok(listener) = TcpListener::from_std(listener) {
                serve(listener, emulator, async move {
                    let _ = stopped.await;
                })
                .await;
            }
        });
    })?;
    Ok(Running { address, stop: Some(stop), thread: Some(thread) })
}
