//! Emulators of app stores' server APIs, faithful to the documented paths,
//! JSON bodies, error envelopes and auth flows, with state transitions and
//! injectable faults. iapd's tests point store plugins at them; anyone can run
//! one with the `iapd-emulator` binary to try a plugin without a store.
//!
//! Each emulator is a plain request → response function ([`Emulator`]), so a
//! plugin's unit tests can call it in-process through the SDK's kit, and
//! [`spawn`] serves it over HTTP for the server's integration tests.

pub mod amazon;
pub mod app_store;
pub mod cafe_bazaar;
mod faults;
pub mod google_play;
mod http;
pub mod huawei;
pub mod microsoft_store;
pub mod samsung;
mod store;

use std::time::Duration;

pub use faults::{Fault, Faults};
pub use http::{Running, serve, spawn};

/// An HTTP request as an emulator sees it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, percent-encoded as sent.
    pub path: String,
    /// The query pairs, decoded.
    pub query: Vec<(String, String)>,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// A request for `url` (an absolute URL or a path with its query).
    pub fn new(method: &str, url: &str) -> Request {
        let without_origin = url.find("://").map_or(url, |scheme_end| {
            let rest = &url[scheme_end + 3..];
            rest.find('/').map_or("/", |path_start| &rest[path_start..])
        });
        let (path, query) = without_origin.split_once('?').unwrap_or((without_origin, ""));
        Request {
            method: method.to_owned(),
            path: path.to_owned(),
            query: form_urlencoded::parse(query.as_bytes()).into_owned().collect(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// The first value of a header.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// The first value of a query parameter.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// The path's segments, percent-decoded.
    pub fn segments(&self) -> Vec<String> {
        self.path
            .trim_start_matches('/')
            .split('/')
            .map(|segment| percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned())
            .collect()
    }
}

/// An emulator's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// Headers besides `content-length`.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// How long the server waits before answering (a slow store); in-process,
    /// the kit delivers the answer that much later on its clock.
    pub delay: Duration,
}

impl Response {
    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("content-type".to_owned(), "application/json; charset=UTF-8".to_owned())],
            body: serde_json::to_vec_pretty(value).unwrap_or_default(),
            delay: Duration::ZERO,
        }
    }

    /// An answer with an empty body.
    pub fn empty(status: u16) -> Response {
        Response { status, headers: Vec::new(), body: Vec::new(), delay: Duration::ZERO }
    }

    /// The body as JSON, for tests.
    pub fn json_body(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A store emulator: one request in, one answer out.
pub trait Emulator: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: &Request) -> Response;
}

/// Answers the SDK kit's HTTP with `emulator`, in-process, so a plugin's unit
/// tests exercise the same emulator the integration tests serve over HTTP.
/// A delayed answer (a `delayMs` fault) is delivered that much later on the
/// kit's clock.
pub fn kit_handler(
    emulator: std::sync::Arc<dyn Emulator>,
) -> impl Fn(&iapd_sdk_plugin::HttpRequest) -> iapd_sdk_plugin::kit::Answer + Send + Sync + 'static {
    move |request| {
        let wire = request.clone().into_proto();
        let host = wire.url.split("://").nth(1).and_then(|rest| rest.split('/').next()).unwrap_or_default().to_owned();
        let mut emulated = Request::new(&wire.method, &wire.url).header("host", &host).body(wire.body);
        for header in wire.headers {
            emulated = emulated.header(&header.name, &String::from_utf8_lossy(&header.value));
        }
        let answer = emulator.handle(&emulated);
        let response =
            answer.headers.iter().fold(
                iapd_sdk_plugin::HttpResponse::new(answer.status, answer.body.clone()),
                |response, (name, value)| response.with_header(name, value),
            );
        iapd_sdk_plugin::kit::Answer::after(response, answer.delay)
    }
}
