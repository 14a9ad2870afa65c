//! A misbehaving store plugin, built only for the host's tests: it panics,
//! calls origins it may not, never answers, fetches arbitrary URLs and logs a
//! secret, so the tests can check that the host contains each of these.
//!
//! It serves Verify only. `VerifyRequest.product_id` selects the behaviour:
//!
//! | product id          | Verify                                                                 |
//! |---------------------|------------------------------------------------------------------------|
//! | `panic`             | panics on the first poll, before any await                             |
//! | `panic-after-await` | sleeps 10 ms, then panics (a panic inside a wake-driven poll)          |
//! | `forbidden`         | GETs `http://forbidden.invalid/x`; the host must refuse it (PERMISSION_DENIED, the call's error) |
//! | `fetch`             | GETs `proof.store_parameters["url"]`; VALID, `verdict_reason` = the body, `purchase.raw_store_response` = the HTTP status |
//! | `sleep`             | sleeps `proof.store_parameters["millis"]` ms, then VALID               |
//! | `block`             | blocks its thread for `proof.store_parameters["millis"]` ms (breaks the non-blocking promise below), then VALID |
//! | `thread`            | VALID, `verdict_reason` = the OS name of the thread that ran the call   |
//! | `never`             | never completes (for the host's deadline and cancel paths)             |
//! | `log-secret`        | logs secret `token` through `log` and `Ctx::log` (the host must redact it), then VALID |
//! | anything else       | VALID with an empty purchase                                           |
//!
//! It declares a non-blocking `call` (`NONBLOCKING_CALL`), which `block`
//! breaks, so the tests can check that the host stops starting its calls
//! inline.
//!
//! With config `{"panic_in_new": true}`, `Store::new` panics, for a test that a
//! panic in `instance_new` is caught.

#![forbid(unsafe_code)]

use std::time::Duration;

use iapd_sdk_plugin::prelude::*;
use iapd_sdk_plugin::proto::{self, Verdict};

/// The faulty store.
#[derive(Debug)]
pub struct Faulty;

/// The faulty store's configuration.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Makes `Store::new` panic.
    #[serde(default)]
    pub panic_in_new: bool,
}

/// VALID, with `purchase` as given.
/// The calling thread's name as the OS knows it (at most 15 bytes).
fn os_thread_name() -> String {
    std::fs::read_to_string("/proc/thread-self/comm").map(|name| name.trim_end().to_owned()).unwrap_or_default()
}

fn millis(request: &proto::VerifyRequest) -> Result<u64, PluginError> {
    let millis = parameter(request, "millis")?;
    millis.parse().map_err(|_| {
        PluginError::invalid_argument(format!("proof.store_parameters: millis `{millis}` is not a number"))
    })
}

fn valid(verdict_reason: String, purchase: Option<proto::Purchase>) -> proto::VerifyResponse {
    proto::VerifyResponse { verdict: Verdict::Valid.into(), verdict_reason, purchase }
}

/// A required `proof.store_parameters` entry.
fn parameter<'a>(request: &'a proto::VerifyRequest, name: &str) -> Result<&'a str, PluginError> {
    request
        .proof
        .as_ref()
        .and_then(|proof| proof.store_parameters.get(name))
        .map(String::as_str)
        .ok_or_else(|| PluginError::invalid_argument(format!("proof.store_parameters: `{name}` is required")))
}

impl Store for Faulty {
    const NAME: &'static CStr = c"faulty";
    const CAPABILITIES: u64 = CAP_VERIFY;
    const NONBLOCKING_CALL: bool = true;
    type Config = Config;

    fn info() -> proto::PluginInfo {
        proto::PluginInfo {
            display_name: "Faulty (test)".to_owned(),
            methods: vec![iapd_sdk_plugin::abi::method::VERIFY.to_owned()],
            allowed_origins: Vec::new(),
            secrets: vec!["token".to_owned()],
            proof_kinds: vec!["purchase_token".to_owned()],
        }
    }

    fn new(config: Config, _init: &InitContext) -> Result<Self, PluginError> {
        if config.panic_in_new {
            panic!("faulty plugin panicked in new on purpose");
        }
        Ok(Faulty)
    }

    async fn verify(&self, cx: &Ctx, request: proto::VerifyRequest) -> Result<proto::VerifyResponse, PluginError> {
        match request.product_id.as_str() {
            "panic" => panic!("faulty plugin panicked on purpose"),
            "panic-after-await" => {
                cx.sleep(Duration::from_millis(10)).await?;
                panic!("faulty plugin panicked on purpose after an await");
            }
            "forbidden" => {
                cx.http(HttpRequest::get("http://forbidden.invalid/x")).await?;
                Ok(valid("the host allowed a forbidden origin".to_owned(), None))
            }
            "fetch" => {
                let response = cx.http(HttpRequest::get(parameter(&request, "url")?)).await?;
                let purchase =
                    proto::Purchase { raw_store_response: response.status().to_string(), ..Default::default() };
                Ok(valid(String::from_utf8_lossy(response.body()).into_owned(), Some(purchase)))
            }
            "sleep" => {
                let millis = millis(&request)?;
                cx.sleep(Duration::from_millis(millis)).await?;
                Ok(valid(format!("slept {millis} ms"), None))
            }
            "block" => {
                let millis = millis(&request)?;
                std::thread::sleep(Duration::from_millis(millis));
                Ok(valid(format!("blocked {millis} ms"), None))
            }
            // The OS's name: the host's thread names live in the host's std.
            "thread" => Ok(valid(os_thread_name(), None)),
            "never" => std::future::pending().await,
            "log-secret" => {
                let secret = cx.secret("token")?;
                let value = secret.expose_str()?;
                iapd_sdk_plugin::log::info!("faulty plugin: the secret token is {value}");
                cx.log(iapd_sdk_plugin::log::Level::Info, &format!("faulty plugin: the secret token is {value}"));
                Ok(valid("logged the secret".to_owned(), None))
            }
            _ => Ok(valid(String::new(), Some(proto::Purchase::default()))),
        }
    }
}

export_store!(Faulty);

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use iapd_sdk_plugin::kit;

    use super::*;

    fn request(product_id: &str, parameters: &[(&str, &str)]) -> proto::VerifyRequest {
        let store_parameters: HashMap<String, String> =
            parameters.iter().map(|&(name, value)| (name.to_owned(), value.to_owned())).collect();
        proto::VerifyRequest {
            product_id: product_id.to_owned(),
            proof: Some(proto::Proof { kind: None, store_parameters }),
            ..Default::default()
        }
    }

    #[test]
    fn behaviours() {
        let kit = kit::builder()
            .secret("token", "s3cr3t")
            .allow_origin("http://echo.test")
            .http(|request| HttpResponse::new(201, format!("{} {}", request.method(), request.url())))
            .build::<Faulty>()
            .expect("build");
        for product in ["panic", "panic-after-await"] {
            let err = kit.verify(request(product, &[])).expect_err(product);
            assert_eq!((err.code(), err.reason()), (Code::Internal, "PLUGIN_PANICKED"), "{err}");
        }
        let err = kit.verify(request("forbidden", &[])).expect_err("forbidden");
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        let fetched = kit.verify(request("fetch", &[("url", "http://echo.test/a")])).expect("fetch");
        assert_eq!(fetched.verdict_reason, "GET http://echo.test/a");
        assert_eq!(fetched.purchase.expect("purchase").raw_store_response, "201");
        let err = kit.verify(request("fetch", &[])).expect_err("no url");
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert_eq!(kit.verify(request("sleep", &[("millis", "5")])).expect("sleep").verdict(), Verdict::Valid);
        assert_eq!(kit.verify(request("log-secret", &[])).expect("log").verdict(), Verdict::Valid);
        assert!(kit.logs().iter().any(|(_, line)| line.contains("s3cr3t")), "the kit does not redact");
        assert_eq!(kit.verify(request("other", &[])).expect("other").verdict(), Verdict::Valid);
    }

    #[test]
    fn config() {
        kit::builder().build::<Faulty>().expect("default config");
        let err = kit::builder().config_json(r#"{"typo": true}"#).build::<Faulty>().expect_err("typo");
        assert_eq!(err.code(), Code::InvalidArgument);
        // Like the real host, the kit turns a panic in Store::new into an error.
        let err = kit::builder().config_json(r#"{"panic_in_new": true}"#).build::<Faulty>().expect_err("panics");
        assert_eq!((err.code(), err.reason()), (Code::Internal, "PLUGIN_PANICKED"));
        assert!(err.message().contains("faulty plugin panicked in new on purpose"), "{}", err.message());
    }
}
