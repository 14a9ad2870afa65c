//! Who may call: every RPC with no key, a wrong key, a revoked key, another
//! tenant's key, a read-only key and a key bound to one store; keys minted
//! by `iapd keys new`; health open to all; TLS and mutual TLS from grpcurl,
//! with a certificate replaced while serving; no key in any log line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use iapd::pb;
use iapd::pb::purchase_service_client::PurchaseServiceClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{Sandbox, Server, built_plugin, error_info, run_iapd, secret, token, tool, unique};

const ACME_APP: &str = "com.acme.game";
const RIVAL_APP: &str = "com.rival.app";

/// A key minted by `iapd keys new`: the key, and the config lines it printed.
struct Minted {
    key: String,
    config: String,
}

fn mint(tenant: &str, name: &str) -> Minted {
    let (ok, stdout, stderr) = run_iapd(&["keys", "new", "--tenant", tenant, "--name", name], &[]);
    assert!(ok, "iapd keys new failed: {stderr}");
    let key = stdout
        .lines()
        .find_map(|line| line.strip_prefix("api key (shown once; iapd keeps only its hash): "))
        .expect("the key line")
        .to_owned();
    let config = stdout.lines().skip_while(|line| !line.starts_with("[tenants.")).collect::<Vec<_>>().join("\n");
    assert!(config.contains(&format!("[tenants.{tenant}.keys.{name}]")) && !config.contains(&key), "{stdout}");
    Minted { key: secret(key), config }
}

struct Keys {
    backend: Minted,
    dashboard: Minted,
    sandbox_only: Minted,
    old: Minted,
    rival: Minted,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            backend: mint("acme", "backend"),
            dashboard: mint("acme", "dashboard"),
            sandbox_only: mint("acme", "sandbox-only"),
            old: mint("acme", "old"),
            rival: mint("rival", "backend"),
        }
    }

    /// Two sandbox stores and two tenants, each key with its scope.
    fn config(&self) -> String {
        format!(
            "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n\n[stores.sandbox-b]\nplugin = \"iapd_plugin_sandbox\"\n\n\
             [tenants.acme]\napps = [\"{ACME_APP}\"]\n\n{}\n\n{}\nrpcs = [\"read_only\"]\n\n{}\nstores = [\"sandbox\"]\n\n\
             {}\nrevoked = true\n\n[tenants.rival]\napps = [\"{RIVAL_APP}\"]\n\n{}\n",
            self.backend.config, self.dashboard.config, self.sandbox_only.config, self.old.config, self.rival.config
        )
    }
}

fn serve_tenants(keys: &Keys) -> (Sandbox, Server) {
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
    let config = sandbox.write_config(&keys.config());
    let server = Server::start(Some(&config), &[("IAPD_LOG", "trace")]);
    (sandbox, server)
}

/// A request with the key, if any, as `authorization: Bearer`.
fn with_key<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().expect("ascii key"));
    }
    request
}

/// The RPCs and the ids a call needs to succeed for its owner.
const RPCS: [&str; 10] = [
    "Verify",
    "Acknowledge",
    "Consume",
    "ListItems",
    "ListStores",
    "Grant",
    "ConfirmGrant",
    "GetEntitlements",
    "ListPurchases",
    "WatchEvents",
];

#[derive(Clone, Default)]
struct Ids {
    purchase_id: String,
    grant_id: String,
}

/// Calls `rpc` for `app` on `store` with `key`.
async fn call(
    client: &mut PurchaseServiceClient<Channel>,
    rpc: &str,
    key: Option<&str>,
    store: &str,
    app: &str,
    ids: &Ids,
) -> Result<(), tonic::Status> {
    let user = "u-acme-1";
    let proof = token(&format!("purchased-auth-{rpc}"));
    match rpc {
        "Verify" => {
            let request = pb::VerifyRequest {
                store: store.into(),
                app_id: app.into(),
                product_id: "coins_100".into(),
                proof,
                user_id: user.into(),
            };
            client.verify(with_key(request, key)).await.map(drop)
        }
        "Acknowledge" => {
            let request = pb::AcknowledgeRequest {
                store: store.into(),
                app_id: app.into(),
                product_id: "coins_100".into(),
                proof,
                developer_payload: String::new(),
            };
            client.acknowledge(with_key(request, key)).await.map(drop)
        }
        "Consume" => {
            let request =
                pb::ConsumeRequest { store: store.into(), app_id: app.into(), product_id: "coins_100".into(), proof };
            client.consume(with_key(request, key)).await.map(drop)
        }
        "ListItems" => {
            let request = pb::ListItemsRequest { store: store.into(), app_id: app.into(), ..Default::default() };
            client.list_items(with_key(request, key)).await.map(drop)
        }
        "ListStores" => client.list_stores(with_key(pb::ListStoresRequest {}, key)).await.map(drop),
        "Grant" => {
            let request = pb::GrantRequest { purchase_id: ids.purchase_id.clone(), user_id: user.into() };
            client.grant(with_key(request, key)).await.map(drop)
        }
        "ConfirmGrant" => {
            let request = pb::ConfirmGrantRequest { grant_id: ids.grant_id.clone() };
            client.confirm_grant(with_key(request, key)).await.map(drop)
        }
        "GetEntitlements" => {
            let request = pb::GetEntitlementsRequest { app_id: app.into(), user_id: user.into() };
            client.get_entitlements(with_key(request, key)).await.map(drop)
        }
        "ListPurchases" => {
            let request = pb::ListPurchasesRequest { app_id: app.into(), user_id: user.into(), ..Default::default() };
            client.list_purchases(with_key(request, key)).await.map(drop)
        }
        "WatchEvents" => {
            let request = pb::WatchEventsRequest { app_id: app.into(), ..Default::default() };
            client.watch_events(with_key(request, key)).await.map(drop)
        }
        other => panic!("no call for {other}"),
    }
}

/// The code and `ErrorInfo.reason` of a failed call; `None` if it succeeded.
fn outcome(result: Result<(), tonic::Status>) -> Option<(Code, String)> {
    result.err().map(|status| (status.code(), error_info(&status).map(|(reason, _)| reason).unwrap_or_default()))
}

/// A purchase of acme's verified, and a grant of it started, by acme's key.
async fn acme_purchase(client: &mut PurchaseServiceClient<Channel>, key: &str) -> Ids {
    let request = pb::VerifyRequest {
        store: "sandbox".into(),
        app_id: ACME_APP.into(),
        product_id: "coins_100".into(),
        proof: token("purchased-auth-owned"),
        user_id: "u-acme-1".into(),
    };
    let verified = client.verify(with_key(request, Some(key))).await.expect("verify").into_inner();
    assert_eq!(verified.verdict(), pb::Verdict::Valid, "{}", verified.verdict_reason);
    let purchase_id = verified.ledger.expect("recorded").purchase_id;
    let grant = pb::GrantRequest { purchase_id: purchase_id.clone(), user_id: "u-acme-1".into() };
    let grant_id = client.grant(with_key(grant, Some(key))).await.expect("grant").into_inner().grant_id;
    Ids { purchase_id, grant_id }
}

#[tokio::test]
async fn every_rpc_refuses_strangers_other_tenants_and_keys_out_of_scope() {
    let keys = Keys::new();
    let (_sandbox, server) = serve_tenants(&keys);
    let mut client = server.client().await;
    let ids = acme_purchase(&mut client, &keys.backend.key).await;
    let unknown_ids =
        Ids { purchase_id: format!("pur_{}", "0".repeat(32)), grant_id: format!("grt_{}", "0".repeat(32)) };
    let wrong = secret(format!("iapd_{}", "0".repeat(64)));
    let missing = Some((Code::Unauthenticated, "CREDENTIALS_MISSING".to_owned()));
    let invalid = Some((Code::Unauthenticated, "API_KEY_INVALID".to_owned()));
    let revoked = Some((Code::Unauthenticated, "API_KEY_REVOKED".to_owned()));
    let rpc_denied = Some((Code::PermissionDenied, "RPC_NOT_PERMITTED".to_owned()));
    for rpc in RPCS {
        assert_eq!(outcome(call(&mut client, rpc, None, "sandbox", ACME_APP, &ids).await), missing, "{rpc}, no key");
        assert_eq!(outcome(call(&mut client, rpc, Some(&wrong), "sandbox", ACME_APP, &ids).await), invalid, "{rpc}");
        assert_eq!(
            outcome(call(&mut client, rpc, Some(&keys.old.key), "sandbox", ACME_APP, &ids).await),
            revoked,
            "{rpc}, revoked key"
        );
        let owner = call(&mut client, rpc, Some(&keys.backend.key), "sandbox", ACME_APP, &ids).await;
        assert!(owner.is_ok(), "{rpc} by its owner: {owner:?}");
        let read_only = iapd::config::READ_ONLY_RPCS.contains(&rpc);
        let dashboard = outcome(call(&mut client, rpc, Some(&keys.dashboard.key), "sandbox", ACME_APP, &ids).await);
        assert_eq!(dashboard, if read_only { None } else { rpc_denied.clone() }, "{rpc} with a read-only key");
        // Another tenant: refused whether the app exists or not, and a
        // purchase or grant of another tenant's is as unknown as one never made.
        let rival = call(&mut client, rpc, Some(&keys.rival.key), "sandbox", ACME_APP, &ids).await;
        match rpc {
            "ListStores" => assert!(rival.is_ok(), "{rival:?}"),
            "Grant" | "ConfirmGrant" => {
                let never = call(&mut client, rpc, Some(&keys.rival.key), "sandbox", RIVAL_APP, &unknown_ids).await;
                assert_eq!(outcome(rival), outcome(never), "{rpc} of another tenant's purchase");
            }
            _ => {
                let status = rival.expect_err("another tenant's app");
                assert_eq!(status.code(), Code::PermissionDenied, "{rpc}: {status:?}");
                assert_eq!(error_info(&status).expect("ErrorInfo").0, "APP_NOT_PERMITTED");
                assert!(!status.message().contains("tenant `acme`"), "{}", status.message());
                let made_up = call(&mut client, rpc, Some(&keys.rival.key), "sandbox", "com.never.made", &ids).await;
                assert_eq!(outcome(Err(status)), outcome(made_up), "{rpc}: an app that does not exist");
            }
        }
    }
    // A key bound to one store: another store, or one that does not exist,
    // is refused alike; a key for all stores hears which exist.
    let store_denied = Some((Code::PermissionDenied, "STORE_NOT_PERMITTED".to_owned()));
    for store in ["sandbox-b", "no-such-store"] {
        let result = call(&mut client, "Verify", Some(&keys.sandbox_only.key), store, ACME_APP, &ids).await;
        assert_eq!(outcome(result), store_denied, "{store}");
    }
    let unknown = call(&mut client, "Verify", Some(&keys.backend.key), "no-such-store", ACME_APP, &ids).await;
    let unknown = unknown.expect_err("unknown store");
    assert_eq!(unknown.code(), Code::NotFound);
    assert!(unknown.message().contains("sandbox, sandbox-b"), "{}", unknown.message());
    let listed = |key: &str| {
        let mut client = client.clone();
        let key = key.to_owned();
        async move {
            let stores = client.list_stores(with_key(pb::ListStoresRequest {}, Some(&key))).await.unwrap();
            stores.into_inner().stores.into_iter().map(|store| store.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(&keys.sandbox_only.key).await, ["sandbox"]);
    assert_eq!(listed(&keys.backend.key).await, ["sandbox", "sandbox-b"]);
    // The acknowledgement counts are the caller's apps' only.
    let rival_stores = client.list_stores(with_key(pb::ListStoresRequest {}, Some(&keys.rival.key))).await.unwrap();
    for store in rival_stores.into_inner().stores {
        let counts = store.acknowledgements.unwrap_or_default();
        assert_eq!((counts.unacknowledged, counts.at_risk), (0, 0), "{}", store.id);
    }
    // x-api-key works as well as authorization.
    let mut request = tonic::Request::new(pb::ListStoresRequest {});
    request.metadata_mut().insert("x-api-key", keys.backend.key.parse().unwrap());
    client.list_stores(request).await.expect("x-api-key");
    let logs = server.logs();
    assert!(logs.contains("tenant=\"acme\"") || logs.contains("tenant=acme"), "spans name the tenant");
}

#[test]
fn health_and_reflection_are_open_and_the_api_is_not() {
    let keys = Keys::new();
    let (_sandbox, server) = serve_tenants(&keys);
    let address = server.address.to_string();
    let grpcurl = |args: &[&str]| {
        let output = Command::new(tool("grpcurl")).args(args).output().expect("run grpcurl");
        (
            output.status.success(),
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
        )
    };
    let (ok, out) = grpcurl(&["-plaintext", &address, "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "{out}");
    // Reflection describes only the public API, so that grpcurl can check
    // health and find the methods without a key.
    let (ok, out) = grpcurl(&["-plaintext", &address, "list"]);
    assert!(ok && out.contains("iapd.v1.PurchaseService"), "{out}");
    let (ok, out) = grpcurl(&["-plaintext", &address, "iapd.v1.PurchaseService/ListStores"]);
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    let header = format!("authorization: Bearer {}", keys.dashboard.key);
    let (ok, out) = grpcurl(&["-plaintext", "-H", &header, &address, "iapd.v1.PurchaseService/ListStores"]);
    assert!(ok && out.contains("sandbox"), "{out}");
}

#[test]
fn without_tenants_only_loopback_serves_without_keys() {
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
    let config = sandbox.write_config("[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n");
    let config_arg = config.display().to_string();
    let mut command = Command::new(crate::support::iapd_bin());
    let output = command
        .args(["--config", &config_arg, "serve", "--listen", "0.0.0.0:0"])
        .env_remove("IAPD_CONFIG")
        .output()
        .expect("run iapd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "served on every address without keys");
    assert!(stderr.contains("config key `auth.mode`") && stderr.contains("not a loopback address"), "{stderr}");
    // Said explicitly, it serves, and warns.
    let server = Server::start(Some(&config), &[("IAPD_AUTH__MODE", "off")]);
    assert!(server.logs().contains("authentication is off"), "{}", server.logs());
}

/// A certificate authority for the TLS tests.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed");
        Authority { pem: cert.pem(), issuer: Issuer::new(params, key) }
    }

    /// A leaf for `names` (the first also its common name): (cert, key) PEM.
    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write pem");
    path
}

#[test]
fn tls_and_mutual_tls_from_grpcurl_and_a_certificate_replaced_while_serving() {
    let keys = Keys::new();
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
    let pki = tempfile::tempdir().expect("pki folder");
    let servers_ca = Authority::new("iapd test server ca");
    let clients_ca = Authority::new("iapd test client ca");
    let stranger_ca = Authority::new("someone else's ca");
    let (cert, key) = servers_ca.leaf(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let cert_file = write(pki.path(), "server.pem", &cert);
    let key_file = write(pki.path(), "server.key", &key);
    let server_ca = write(pki.path(), "server-ca.pem", &servers_ca.pem);
    let client_ca = write(pki.path(), "client-ca.pem", &clients_ca.pem);
    let (client_cert, client_key) = clients_ca.leaf(&["backend.acme.test"], ExtendedKeyUsagePurpose::ClientAuth);
    let client_cert = write(pki.path(), "client.pem", &client_cert);
    let client_key = write(pki.path(), "client.key", &client_key);
    let (unmapped_cert, unmapped_key) = clients_ca.leaf(&["nobody.test"], ExtendedKeyUsagePurpose::ClientAuth);
    let unmapped_cert = write(pki.path(), "unmapped.pem", &unmapped_cert);
    let unmapped_key = write(pki.path(), "unmapped.key", &unmapped_key);
    let (stranger_cert, stranger_key) = stranger_ca.leaf(&["backend.acme.test"], ExtendedKeyUsagePurpose::ClientAuth);
    let stranger_cert = write(pki.path(), "stranger.pem", &stranger_cert);
    let stranger_key = write(pki.path(), "stranger.key", &stranger_key);
    let config = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nclient_certificates = \"optional\"\n\
         reload_interval_ms = 200\n\n{}\n[tenants.acme.clients.backend-mtls]\nsubject = \"backend.acme.test\"\nrpcs = [\"read_only\"]\n",
        cert_file.display().to_string(),
        key_file.display().to_string(),
        client_ca.display().to_string(),
        keys.config()
    );
    let config = sandbox.write_config(&config);
    let server = Server::start(Some(&config), &[]);
    let address = format!("127.0.0.1:{}", server.address.port());
    let list_stores = "iapd.v1.PurchaseService/ListStores";
    let grpcurl = |args: &[&str]| {
        let output = Command::new(tool("grpcurl")).args(args).arg(&address).arg(list_stores).output().expect("grpcurl");
        (
            output.status.success(),
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
        )
    };
    let path = |p: &PathBuf| p.display().to_string();
    let header = format!("authorization: Bearer {}", keys.backend.key);
    // Server TLS, with an API key.
    let (ok, out) = grpcurl(&["-cacert", &path(&server_ca), "-H", &header]);
    assert!(ok && out.contains("sandbox"), "{out}");
    // Mutual TLS: the certificate is the credential.
    let (ok, out) = grpcurl(&["-cacert", &path(&server_ca), "-cert", &path(&client_cert), "-key", &path(&client_key)]);
    assert!(ok && out.contains("sandbox"), "{out}");
    // Its scope is read-only.
    let verify = Command::new(tool("grpcurl"))
        .args(["-cacert", &path(&server_ca), "-cert", &path(&client_cert), "-key", &path(&client_key), "-d"])
        .arg(format!(
            r#"{{"store": "sandbox", "app_id": "{ACME_APP}", "product_id": "coins_100", "proof": {{"purchase_token": "purchased-{}"}}}}"#,
            unique("tls")
        ))
        .args([&address, "iapd.v1.PurchaseService/Verify"])
        .output()
        .expect("grpcurl");
    let out = String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success() && out.contains("PermissionDenied"), "{out}");
    // No credential at all, a certificate no tenant names, one from another CA, plaintext.
    let (ok, out) = grpcurl(&["-cacert", &path(&server_ca)]);
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    let (ok, out) =
        grpcurl(&["-cacert", &path(&server_ca), "-cert", &path(&unmapped_cert), "-key", &path(&unmapped_key)]);
    assert!(!ok && out.contains("Unauthenticated") && out.contains("not mapped"), "{out}");
    let (ok, out) =
        grpcurl(&["-cacert", &path(&server_ca), "-cert", &path(&stranger_cert), "-key", &path(&stranger_key)]);
    assert!(!ok && !out.contains("sandbox"), "a certificate from an unknown ca was taken: {out}");
    let (ok, out) = grpcurl(&["-plaintext", "-H", &header]);
    assert!(!ok, "plaintext was served: {out}");
    // A new certificate from another authority: written in place, it is
    // served to new connections without a restart.
    let renewed_ca = Authority::new("iapd test renewed server ca");
    let (cert, key) = renewed_ca.leaf(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    let renewed_ca_file = write(pki.path(), "renewed-ca.pem", &renewed_ca.pem);
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&cert_file, cert).unwrap();
    let started = Instant::now();
    loop {
        let (ok, out) = grpcurl(&["-cacert", &path(&renewed_ca_file), "-H", &header]);
        if ok {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the renewed certificate is not served: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.logs().contains("certificate files changed"), "{}", server.logs());
}
