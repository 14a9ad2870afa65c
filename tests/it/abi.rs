//! The plugin ABI from the outside: a plugin written in C against the header
//! alone, plugins that must be refused (with the path and the found and
//! expected values), and misbehaving plugins that must not take the server
//! down.

use std::time::Duration;

use iapd::pb::{self, Verdict};
use tonic::Code;

use crate::support::{Sandbox, Server, built_plugin, compile_c, error_info, root, unique, verify};

#[tokio::test]
async fn a_plugin_written_in_c_loads_and_serves_verify() {
    let sandbox = Sandbox::new();
    sandbox.compile_c_plugin("echo_store.c", "libecho_c.so");
    let config = sandbox.write_config("[stores.echo]\nplugin = \"libecho_c.so\"\n");
    let server = Server::start(Some(&config), &[]);
    let mut client = server.client().await;
    let answer = client.verify(verify("echo", "anything", "tok-123")).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid);
    assert_eq!(answer.verdict_reason, "echo: tok-123");
    assert_eq!(answer.purchase.unwrap().order_id, "tok-123");
    let stores = client.list_stores(pb::ListStoresRequest {}).await.unwrap().into_inner().stores;
    assert_eq!((stores[0].plugin_name.as_str(), stores[0].display_name.as_str()), ("echo_c", "Echo (C)"));
    // The C plugin declares Verify only.
    let status = client
        .consume(pb::ConsumeRequest {
            store: "echo".into(),
            app_id: "a".into(),
            product_id: "p".into(),
            proof: crate::support::token("t"),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(error_info(&status), Some(("OPERATION_NOT_SUPPORTED".into(), "iapd".into())));
}

/// Starts a server whose only store is the C fixture, expecting a refusal.
fn refused(fixture: &str, flags: &[&str], envs: &[(&str, &str)]) -> (String, std::path::PathBuf) {
    let sandbox = Sandbox::new();
    let path = sandbox.compile_c_plugin_with(fixture, "libfixture.so", flags);
    let config = sandbox.write_config("[stores.fixture]\nplugin = \"libfixture.so\"\n");
    let logs = match Server::try_start(Some(&config), envs) {
        Ok(_) => panic!("{fixture} was loaded but must be refused"),
        Err(logs) => logs,
    };
    let real = path.canonicalize().unwrap();
    assert!(logs.contains(&real.display().to_string()), "the refusal names the path:\n{logs}");
    (logs, real)
}

#[test]
fn a_plugin_for_abi_major_2_is_refused_before_any_of_its_code_runs() {
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("constructor-ran");
    let marker_text = marker.display().to_string();
    let (logs, _) = refused("abi_v2.c", &[], &[("ABI_TEST_MARKER", &marker_text)]);
    assert!(logs.contains("built for plugin ABI v2 (exports `iapd_plugin_v2`)"), "{logs}");
    assert!(logs.contains("this server supports v1"), "{logs}");
    assert!(!marker.exists(), "the v2 library's constructor ran: it was loaded");

    // The marker works: loading the library does run the constructor.
    let library = marker_dir.path().join("libv2.so");
    compile_c(&root().join("tests/fixtures/c/abi_v2.c"), &library, &["-shared", "-fPIC"]);
    let loader = marker_dir.path().join("loader.c");
    std::fs::write(
        &loader,
        "#include <dlfcn.h>\nint main(int c, char **v) { (void)c; return dlopen(v[1], RTLD_NOW) ? 0 : 1; }\n",
    )
    .unwrap();
    let program = marker_dir.path().join("loader");
    compile_c(&loader, &program, &["-ldl"]);
    let status = std::process::Command::new(&program).arg(&library).env("ABI_TEST_MARKER", &marker).status().unwrap();
    assert!(status.success() && marker.exists(), "control: dlopen runs the constructor");
}

#[test]
fn refusals_name_the_found_and_expected_values() {
    // (fixture, compiler flags choosing the defect, expected refusal)
    let cases: [(&str, &[&str], &str); 4] = [
        (
            "bad_descriptor.c",
            &["-DABI_MINOR=7", "-DMIN_HOST_MINOR=7"],
            "needs host ABI >= 1.7, this server provides 1.1",
        ),
        ("bad_descriptor.c", &["-DMAGIC=0xDEADBEEFu"], "bad magic: found 0xdeadbeef, expected 0x44504149"),
        ("bad_descriptor.c", &["-DABI_MAJOR=2"], "ABI major mismatch: found 2, expected 1"),
        ("missing_symbol.c", &[], "missing symbol `iapd_plugin_v1`"),
    ];
    for (fixture, flags, expected) in cases {
        let (logs, _) = refused(fixture, flags, &[]);
        assert!(logs.contains(expected), "{fixture} {flags:?}: expected `{expected}` in:\n{logs}");
        assert!(logs.contains("store `fixture`"), "{fixture}: names the store:\n{logs}");
    }
    // Control: with no defect selected, the same fixture passes every
    // descriptor check and is refused only later, by its stub `describe`.
    let (logs, _) = refused("bad_descriptor.c", &[], &[]);
    assert!(logs.contains("describe failed with status 12"), "{logs}");
}

/// A server with the sandbox and the faulty test plugin side by side.
fn faulty_server(extra: &str, envs: &[(&str, &str)]) -> (Server, Sandbox) {
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-test-plugin-faulty"), "libfaulty.so");
    sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libsandbox.so");
    let config = sandbox.write_config(&format!(
        "[stores.sandbox]\nplugin = \"libsandbox.so\"\n\n[stores.faulty]\nplugin = \"libfaulty.so\"\n{extra}"
    ));
    (Server::start(Some(&config), envs), sandbox)
}

fn faulty(product: &str) -> pb::VerifyRequest {
    verify("faulty", product, "t")
}

#[tokio::test]
async fn a_panicking_plugin_fails_that_call_and_the_server_keeps_serving() {
    let (mut server, _sandbox) = faulty_server("", &[]);
    let mut client = server.client().await;
    for product in ["panic", "panic-after-await", "panic", "panic-after-await"] {
        let status = client.verify(faulty(product)).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{product}");
        assert!(
            status.message().contains("plugin panicked: faulty plugin panicked on purpose"),
            "{}",
            status.message()
        );
        assert_eq!(error_info(&status), Some(("PLUGIN_PANICKED".into(), "faulty".into())));
    }
    assert!(server.is_running());
    assert_eq!(client.verify(faulty("ok")).await.unwrap().into_inner().verdict(), Verdict::Valid);
    let sandbox_answer = client.verify(verify("sandbox", "coins_100", &unique("purchased"))).await.unwrap();
    assert_eq!(sandbox_answer.into_inner().verdict(), Verdict::Valid);
}

#[test]
fn a_plugin_panicking_at_start_up_is_a_clear_start_up_error() {
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-test-plugin-faulty"), "libfaulty.so");
    let config = sandbox.write_config("[stores.faulty]\nplugin = \"libfaulty.so\"\nconfig = { panic_in_new = true }\n");
    let logs = Server::try_start(Some(&config), &[]).err().expect("start-up must fail");
    assert!(logs.contains("store `faulty`") && logs.contains("failed to start: plugin panicked"), "{logs}");
}

#[tokio::test]
async fn a_plugin_asking_for_an_origin_outside_its_allowlist_is_denied() {
    let (server, _sandbox) = faulty_server("", &[]);
    let mut client = server.client().await;
    let status = client.verify(faulty("forbidden")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{}", status.message());
    assert_eq!(error_info(&status), Some(("ORIGIN_NOT_ALLOWED".into(), "faulty".into())));
    assert!(server.wait_for_log("refused an http request to an origin not allowed"), "{}", server.logs());
}

#[tokio::test]
async fn the_host_performs_http_for_allowed_origins_only() {
    let allowed = spawn_http_responder("hello from the store").await;
    let other = spawn_http_responder("must not be reached").await;
    let (server, _sandbox) = faulty_server(&format!("allowed_origins = [\"http://{allowed}\"]\n"), &[]);
    let mut client = server.client().await;
    let fetch = |address: std::net::SocketAddr| {
        let mut request = faulty("fetch");
        request.proof.as_mut().unwrap().store_parameters.insert("url".into(), format!("http://{address}/purchases/1"));
        request
    };
    let answer = client.verify(fetch(allowed)).await.unwrap().into_inner();
    assert_eq!(answer.verdict_reason, "hello from the store");
    assert_eq!(answer.purchase.unwrap().raw_store_response, "200");
    let status = client.verify(fetch(other)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "another port is another origin");
}

#[tokio::test]
async fn a_plugin_that_never_completes_honours_the_deadline() {
    let (server, _sandbox) = faulty_server("", &[]);
    let mut client = server.client().await;
    for _ in 0..3 {
        let mut request = tonic::Request::new(faulty("never"));
        request.set_timeout(Duration::from_millis(250));
        let started = std::time::Instant::now();
        let status = client.verify(request).await.unwrap_err();
        crate::support::assert_deadline_ended(&status, started, Duration::from_millis(250));
    }
    assert_eq!(client.verify(faulty("ok")).await.unwrap().into_inner().verdict(), Verdict::Valid);
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    const SENTINEL: &str = "sentinel-secret-3f9a1c";
    let (server, _sandbox) =
        faulty_server("secrets = { token = { env = \"FAULTY_TOKEN\" } }\n", &[("FAULTY_TOKEN", SENTINEL)]);
    let mut client = server.client().await;
    let answer = client.verify(faulty("log-secret")).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid);
    assert!(server.wait_for_log("[redacted]"), "the plugin's log lines arrive, redacted:\n{}", server.logs());
    let logs = server.logs();
    assert!(!logs.contains(SENTINEL), "a secret leaked into the logs:\n{logs}");
}

#[test]
fn the_rust_mirror_matches_the_c_header_layout() {
    use iapd_sdk_plugin::abi::{Bytes, HostApi, PluginDescriptor};
    use std::mem::{offset_of, size_of};
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("layout");
    compile_c(&root().join("tests/fixtures/c/layout.c"), &program, &[]);
    let output = std::process::Command::new(&program).output().unwrap();
    let c_layout: std::collections::BTreeMap<String, usize> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (name, value) = line.split_once(' ').unwrap();
            (name.to_owned(), value.trim().parse().unwrap())
        })
        .collect();
    macro_rules! fields {
        ($c:literal, $rust:ty, [$($field:ident),*]) => {
            vec![$((concat!($c, ".", stringify!($field)), offset_of!($rust, $field))),*]
        };
    }
    let mut rust_layout = vec![
        ("iapd_bytes", size_of::<Bytes>()),
        ("iapd_plugin_descriptor", size_of::<PluginDescriptor>()),
        ("iapd_host_api", size_of::<HostApi>()),
    ];
    rust_layout.extend(fields!(
        "iapd_plugin_descriptor",
        PluginDescriptor,
        [
            magic,
            abi_major,
            abi_minor,
            struct_size,
            min_host_minor,
            flags,
            name,
            version,
            build_info,
            capabilities,
            describe,
            instance_new,
            instance_drop,
            call,
            cancel
        ]
    ));
    rust_layout.extend(fields!(
        "iapd_host_api",
        HostApi,
        [
            struct_size,
            abi_major,
            abi_minor,
            host,
            log,
            log_max_level,
            now_unix_millis,
            monotonic_nanos,
            get_secret,
            http_send,
            timer_start,
            complete
        ]
    ));
    assert_eq!(c_layout.len(), rust_layout.len(), "layout.c prints every field: {c_layout:?}");
    for (name, rust) in rust_layout {
        assert_eq!(c_layout.get(name), Some(&rust), "{name}: C and Rust disagree");
    }
}

/// A tiny HTTP/1.1 server answering every request with `body`.
async fn spawn_http_responder(body: &'static str) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 1024];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let response =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    address
}
