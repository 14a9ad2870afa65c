//! HTTP and timers through the host, as futures.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use prost::Message;

use crate::runtime::lock;
use crate::{Code, Ctx, PluginError, abi, proto};

/// An HTTP request for the host to send.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest(proto::HttpRequest);

impl HttpRequest {
    /// A request with any method.
    pub fn new(method: &str, url: impl Into<String>) -> Self {
        HttpRequest(proto::HttpRequest { method: method.to_owned(), url: url.into(), ..Default::default() })
    }

    /// A GET request.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A POST request.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.0.headers.push(proto::Header { name: name.to_owned(), value: value.as_ref().to_vec() });
        self
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", format!("Bearer {token}"))
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.0.body = body.into();
        self
    }

    /// Sets a JSON body and its content type.
    pub fn json<T: serde::Serialize>(self, value: &T) -> Result<Self, PluginError> {
        let body = serde_json::to_vec(value)
            .map_err(|err| PluginError::internal(format!("cannot encode request body as json: {err}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    /// Bounds how long the host waits for the answer (never past the call's
    /// deadline).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.0.timeout_millis = timeout.as_millis().try_into().unwrap_or(u32::MAX);
        self
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.0.method
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.0.url
    }

    /// The first value of header `name` (case-insensitive), if UTF-8.
    pub fn header_value(&self, name: &str) -> Option<&str> {
        find_header(&self.0.headers, name)
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.0.body
    }

    /// The wire form.
    pub fn into_proto(self) -> proto::HttpRequest {
        self.0
    }

    /// From the wire form.
    pub fn from_proto(request: proto::HttpRequest) -> Self {
        HttpRequest(request)
    }
}

/// The store's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse(proto::HttpResponse);

impl HttpResponse {
    /// A response, for tests and emulators.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        HttpResponse(proto::HttpResponse { status: u32::from(status), headers: Vec::new(), body: body.into() })
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.0.headers.push(proto::Header { name: name.to_owned(), value: value.as_ref().to_vec() });
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        u16::try_from(self.0.status).unwrap_or(0)
    }

    /// The first value of header `name` (case-insensitive), if UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.0.headers, name)
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.0.body
    }

    /// `Retry-After` as a number of seconds (HTTP dates are not read: the
    /// stores iapd knows send seconds).
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after")?.trim().parse::<u64>().ok().map(Duration::from_secs)
    }

    /// The body parsed as JSON of type `T`. A body that is not is INTERNAL
    /// `MALFORMED_RESPONSE` with the HTTP status, and the message names the
    /// type expected and where parsing stopped but quotes nothing of the
    /// body, which can hold tokens.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, PluginError> {
        serde_json::from_slice(&self.0.body).map_err(|err| {
            let problem = match err.classify() {
                serde_json::error::Category::Eof => "the body ends early",
                serde_json::error::Category::Syntax => "the body is not json",
                serde_json::error::Category::Data => "the body is json of another shape",
                serde_json::error::Category::Io => "the body could not be read",
            };
            let status = self.status();
            PluginError::malformed_response(
                status,
                format!(
                    "store answered http {status} with malformed json: expected {}, but {problem} (line {}, column {})",
                    short_type_name::<T>(),
                    err.line(),
                    err.column()
                ),
            )
        })
    }

    /// The wire form.
    pub fn into_proto(self) -> proto::HttpResponse {
        self.0
    }

    /// From the wire form.
    pub fn from_proto(response: proto::HttpResponse) -> Self {
        HttpResponse(response)
    }
}

/// Characters left as they are in a URL path segment (RFC 3986 unreserved).
const PATH_SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `value` percent-encoded for use as one URL path segment (a product id or
/// a purchase token the caller sent).
pub fn path_segment(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, PATH_SEGMENT).to_string()
}

/// [`PATH_SEGMENT`] with `:`, `@`, `=` and `+` left as they are: characters
/// RFC 3986 allows raw in a segment (`pchar`).
const PATH_SEGMENT_PCHAR: &percent_encoding::AsciiSet =
    &PATH_SEGMENT.remove(b':').remove(b'@').remove(b'=').remove(b'+');

/// `value` percent-encoded for use as one URL path segment, like
/// [`path_segment`], but keeping `:`, `@`, `=` and `+` raw, for a store whose
/// own URLs show them so (Amazon's receipt ids and shared secrets end in `=`
/// and hold `:`) and which may not decode them. `/`, `?`, `#`, `%`, `;`, `,`,
/// spaces and non-ASCII are still encoded, so a value stays one segment.
pub fn path_segment_pchar(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, PATH_SEGMENT_PCHAR).to_string()
}

/// `T`'s name without its module path: `TokenResponse`, not
/// `iapd_plugin_x::auth::fetch::TokenResponse`.
fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    let base = full.split('<').next().unwrap_or(full);
    base.rsplit("::").next().unwrap_or(base)
}

fn find_header<'a>(headers: &'a [proto::Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case(name))
        .and_then(|header| std::str::from_utf8(&header.value).ok())
}

/// A value delivered by a host callback, awaited by the plugin's future.
struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

struct Delivery<T>(Arc<Mutex<Slot<T>>>);

impl<T> Future for Delivery<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut slot = lock(&self.0);
        match slot.value.take() {
            Some(value) => Poll::Ready(value),
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

fn deliver<T>(slot: &Mutex<Slot<T>>, value: T) {
    let waker = {
        let mut slot = lock(slot);
        slot.value = Some(value);
        slot.waker.take()
    };
    if let Some(waker) = waker {
        waker.wake();
    }
}

fn new_slot<T>() -> Arc<Mutex<Slot<T>>> {
    Arc::new(Mutex::new(Slot { value: None, waker: None }))
}

pub(crate) async fn send(cx: Ctx, request: HttpRequest) -> Result<HttpResponse, PluginError> {
    let encoded = request.0.encode_to_vec();
    let slot = new_slot::<Result<HttpResponse, PluginError>>();
    let sink = slot.clone();
    let accepted = cx.host.http_send(
        cx.call_id,
        &encoded,
        Box::new(move |status, body| {
            let result = if status == abi::status::OK {
                proto::HttpResponse::decode(body)
                    .map(HttpResponse)
                    .map_err(|err| PluginError::internal(format!("host sent a malformed http response: {err}")))
            } else {
                Err(host_error(status, &format!("http request to {} failed", request.0.url)))
            };
            deliver(&sink, result);
        }),
    );
    if accepted != abi::status::OK {
        return Err(host_error(accepted, "the host refused the http request"));
    }
    Delivery(slot).await
}

pub(crate) async fn sleep(cx: Ctx, delay: Duration) -> Result<(), PluginError> {
    let slot = new_slot::<abi::Status>();
    let sink = slot.clone();
    let millis = delay.as_millis().try_into().unwrap_or(u64::MAX);
    let accepted = cx.host.timer_start(cx.call_id, millis, Box::new(move |status| deliver(&sink, status)));
    if accepted != abi::status::OK {
        return Err(host_error(accepted, "the host refused the timer"));
    }
    match Delivery(slot).await {
        abi::status::OK => Ok(()),
        status => Err(host_error(status, "timer failed")),
    }
}

fn host_error(status: abi::Status, context: &str) -> PluginError {
    let code = Code::from_status(status);
    let (detail, reason) = match code {
        Code::PermissionDenied => ("origin not allowed for this store", "ORIGIN_NOT_ALLOWED"),
        Code::DeadlineExceeded => ("deadline exceeded", "UPSTREAM_TIMEOUT"),
        Code::Cancelled => ("cancelled", "CANCELLED"),
        Code::Unavailable => ("store unreachable", "UPSTREAM_UNREACHABLE"),
        Code::InvalidArgument => ("malformed request", "MALFORMED_HTTP_REQUEST"),
        _ => ("host error", "HOST_ERROR"),
    };
    PluginError::new(code, format!("{context}: {detail}")).with_reason(reason)
}

#[cfg(test)]
mod tests {
    use super::HttpResponse;
    use crate::Code;

    #[test]
    fn pchar_segments_keep_what_rfc_3986_allows_raw_and_encode_the_rest() {
        let cases = [
            ("koxIn_LO2u7rc-_MF40hKz1vqSSJSlitfTNDeH_JAs8=:3:11", "koxIn_LO2u7rc-_MF40hKz1vqSSJSlitfTNDeH_JAs8=:3:11"),
            ("kyplB1fdRX1m6/GNAVW0l6jv9Nl1V/GemSopKBHM84w=", "kyplB1fdRX1m6%2FGNAVW0l6jv9Nl1V%2FGemSopKBHM84w="),
            ("2:a+b@c", "2:a+b@c"),
            ("a?b#c%d;e,f g", "a%3Fb%23c%25d%3Be%2Cf%20g"),
            ("é", "%C3%A9"),
        ];
        for (value, encoded) in cases {
            assert_eq!(super::path_segment_pchar(value), encoded, "{value}");
        }
        assert_eq!(super::path_segment("a=:b"), "a%3D%3Ab", "path_segment itself is unchanged");
    }

    #[derive(Debug, serde::Deserialize)]
    struct TokenAnswer {
        access_token: String,
        expires_in: u64,
    }

    #[test]
    fn a_body_that_is_not_the_json_expected_is_malformed_response_and_never_quoted() {
        let cases = [
            (200, r#"{"access_token": "ya29.s3cr3t", "expires_in"#, "the body ends early"),
            (200, "<html>s3cr3t</html>", "the body is not json"),
            (201, r#"{"access_token": "ya29.s3cr3t", "expires_in": "s3cr3t"}"#, "json of another shape"),
        ];
        for (status, body, problem) in cases {
            let err = HttpResponse::new(status, body).json::<TokenAnswer>().expect_err(body);
            assert_eq!((err.code(), err.reason(), err.http_status()), (Code::Internal, "MALFORMED_RESPONSE", status));
            assert!(err.message().contains("malformed json: expected TokenAnswer"), "{err}");
            assert!(err.message().contains(problem), "{err}");
            assert!(!err.message().contains("s3cr3t"), "the body is never quoted: {err}");
        }
        let answer: TokenAnswer =
            HttpResponse::new(200, r#"{"access_token": "t", "expires_in": 60}"#).json().expect("well-formed");
        assert_eq!((answer.access_token.as_str(), answer.expires_in), ("t", 60));
    }
}
