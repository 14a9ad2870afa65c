//! Shared helpers: running the real `iapd` binary on a free port with real
//! plugin libraries, compiling the C fixtures, and reading status details.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iapd::pb::purchase_service_client::PurchaseServiceClient;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real binary, built by cargo for this test run.
pub fn iapd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iapd"))
}

/// A plugin library built by `cargo build --workspace`, by crate name.
pub fn built_plugin(crate_name: &str) -> PathBuf {
    let file = libloading::library_filename(crate_name.replace('-', "_"));
    let path = iapd_bin().parent().expect("binary folder").join(file);
    assert!(
        path.exists(),
        "{} is missing: the integration tests load the real plugins; run `cargo build --workspace` first (tests/run.sh does)",
        path.display()
    );
    path
}

/// A temporary folder for one test: its plugins folder and config.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("plugins")).expect("plugins dir");
        Sandbox { dir }
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Puts a built plugin library into the plugins folder under `file_name`.
    pub fn add_plugin(&self, built: &Path, file_name: &str) {
        let target = self.plugins_dir().join(file_name);
        if std::fs::hard_link(built, &target).is_err() {
            std::fs::copy(built, &target).expect("copy plugin");
        }
    }

    /// Compiles a C fixture from tests/fixtures/c into the plugins folder.
    pub fn compile_c_plugin(&self, fixture: &str, file_name: &str) -> PathBuf {
        self.compile_c_plugin_with(fixture, file_name, &[])
    }

    /// Like `compile_c_plugin`, with extra compiler flags (such as `-D`).
    pub fn compile_c_plugin_with(&self, fixture: &str, file_name: &str, flags: &[&str]) -> PathBuf {
        let source = root().join("tests/fixtures/c").join(fixture);
        let output = self.plugins_dir().join(file_name);
        let mut args = vec!["-shared", "-fPIC"];
        args.extend_from_slice(flags);
        compile_c(&source, &output, &args);
        output
    }

    /// Writes a config file whose plugins folder is this sandbox's.
    pub fn write_config(&self, stores_toml: &str) -> PathBuf {
        let path = self.dir.path().join("iapd.toml");
        let mut text = format!("[plugins]\ndir = {:?}\n\n{stores_toml}", self.plugins_dir().display().to_string());
        // Each test's ledger lives in its own folder.
        if !stores_toml.contains("[ledger]") {
            text.push_str(&format!(
                "\n[ledger]\ndata_dir = {:?}\n",
                self.dir.path().join("data").display().to_string()
            ));
        }
        std::fs::write(&path, text).expect("write config");
        path
    }
}

/// Compiles C with the system compiler against the SDK's header alone.
pub fn compile_c(source: &Path, output: &Path, extra: &[&str]) {
    let include = root().join("sdk-plugin/include");
    let status = Command::new("cc")
        .args(extra)
        .args(["-Wall", "-Werror", "-O1", "-I"])
        .arg(&include)
        .arg("-o")
        .arg(output)
        .arg(source)
        .status()
        .expect("run cc (a C compiler is needed for the ABI tests)");
    assert!(status.success(), "cc failed for {}", source.display());
}

/// Secrets the tests hand to servers (API keys) and the logs of every
/// server the tests ran: no log line of the test run may hold a secret. Each
/// side checks against the other as it arrives, so the order of tests does
/// not matter.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static ALL_LOGS: Mutex<Vec<Arc<Mutex<String>>>> = Mutex::new(Vec::new());

/// Registers a secret the test uses; panics if a server logged it already.
pub fn secret(value: String) -> String {
    for logs in ALL_LOGS.lock().unwrap().iter() {
        assert!(!logs.lock().unwrap().contains(&value), "a server logged a secret a test gave it");
    }
    SECRETS.lock().unwrap().push(value.clone());
    value
}

fn assert_no_secret(logs: &str) {
    if let Some(found) = SECRETS.lock().unwrap().iter().find(|secret| logs.contains(secret.as_str())) {
        let at = logs.find(found.as_str()).unwrap_or(0);
        panic!("a server logged a secret (at byte {at} of its logs; the secret is not shown)");
    }
}

/// The real `iapd serve`, running until dropped.
pub struct Server {
    child: Child,
    pub address: SocketAddr,
    logs: Arc<Mutex<String>>,
    /// The ledger's folder, when the test did not choose one.
    _data: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `iapd serve` with `config` (or the embedded defaults) on a free
    /// port and waits until it serves.
    pub fn start(config: Option<&Path>, envs: &[(&str, &str)]) -> Server {
        Self::try_start(config, envs).unwrap_or_else(|logs| panic!("iapd did not start:\n{logs}"))
    }

    /// Like `start`, but returns the logs when the server exits instead.
    pub fn try_start(config: Option<&Path>, envs: &[(&str, &str)]) -> Result<Server, String> {
        let mut command = Command::new(iapd_bin());
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        command.args(["serve", "--listen", "127.0.0.1:0"]);
        command.env("IAPD_LOG", "info,iapd=debug").env_remove("IAPD_CONFIG");
        // Each server's ledger lives in a folder of its own (on the embedded
        // defaults it would be the working directory), unless the test says.
        let data = (!envs.iter().any(|(name, _)| matches!(*name, "IAPD_LEDGER__DATA_DIR" | "IAPD_LEDGER__URL")))
            .then(|| tempfile::tempdir().expect("ledger folder"));
        if let Some(data) = &data {
            command.env("IAPD_LEDGER__DATA_DIR", data.path());
        }
        for (name, value) in envs {
            command.env(name, value);
        }
        let mut child = command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn iapd");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // A text line has `address=…`, a JSON one `"address":"…"`.
                if line.contains("iapd serving")
                    && let Some(address) = line
                        .split("address=")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                        .or_else(|| line.split("\"address\":\"").nth(1).and_then(|rest| rest.split('"').next()))
                {
                    let _ = address_tx.send(address.parse::<SocketAddr>().ok());
                }
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
            let _ = address_tx.send(None);
        });
        match address_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(address)) => {
                ALL_LOGS.lock().unwrap().push(logs.clone());
                Ok(Server { child, address, logs, _data: data })
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                let logs = logs.lock().unwrap().clone();
                assert_no_secret(&logs);
                Err(logs)
            }
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn client(&self) -> PurchaseServiceClient<Channel> {
        PurchaseServiceClient::connect(self.url()).await.expect("connect to iapd")
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the server has logged `text`; false after 5 s.
    pub fn wait_for_log(&self, text: &str) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if self.logs().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub fn wait(mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < timeout, "iapd did not exit within {timeout:?}; logs:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Not while unwinding: a second panic would abort the test binary.
        if !std::thread::panicking() {
            assert_no_secret(&self.logs());
        }
    }
}

/// Runs `iapd <args>` to completion: (success, stdout, stderr).
pub fn run_iapd(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(iapd_bin());
    command.args(args).env_remove("IAPD_CONFIG");
    for (name, value) in envs {
        command.env(name, value);
    }
    let output = command.output().expect("run iapd");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A purchase-token proof.
pub fn token(value: &str) -> Option<iapd::pb::PurchaseProof> {
    Some(iapd::pb::PurchaseProof {
        proof: Some(iapd::pb::purchase_proof::Proof::PurchaseToken(value.to_owned())),
        store_parameters: Default::default(),
    })
}

/// A sandbox Verify request.
pub fn verify(store: &str, product: &str, purchase_token: &str) -> iapd::pb::VerifyRequest {
    iapd::pb::VerifyRequest {
        store: store.to_owned(),
        app_id: "com.example.game".to_owned(),
        product_id: product.to_owned(),
        proof: token(purchase_token),
        user_id: String::new(),
    }
}

/// `ErrorInfo` (reason, domain) of a status, if present.
pub fn error_info(status: &tonic::Status) -> Option<(String, String)> {
    status.get_details_error_info().map(|info| (info.reason, info.domain))
}

/// A unique suffix, so tests never share sandbox state.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A tool installed by tests/run.sh (or found on PATH).
pub fn tool(name: &str) -> PathBuf {
    let local = [root().join(".tools/venv/bin").join(name), root().join(".tools/node/node_modules/.bin").join(name)];
    if let Some(found) = local.into_iter().find(|path| path.exists()) {
        return found;
    }
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|path| path.exists()));
    on_path.unwrap_or_else(|| {
        panic!("`{name}` is not installed: run the tests with `bash tests/run.sh`, which installs it")
    })
}

/// Asserts a call ended by its deadline. The server answers DEADLINE_EXCEEDED
/// shortly before the deadline; on a loaded machine a tonic client's own
/// timer can still fire first, which tonic reports as CANCELLED "Timeout
/// expired". Either way the call ended at the deadline, not when the store did.
pub fn assert_deadline_ended(status: &tonic::Status, started: Instant, deadline: Duration) {
    let by_server = status.code() == tonic::Code::DeadlineExceeded;
    let by_client = status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired";
    assert!(by_server || by_client, "not a deadline: {status:?}");
    assert!(started.elapsed() < deadline + Duration::from_secs(1), "ended {:?} after start", started.elapsed());
}

/// Every page of a store's catalog for `app_id`, following the page tokens.
pub async fn list_pages(
    client: &mut PurchaseServiceClient<Channel>,
    store: &str,
    app_id: &str,
    page_size: i32,
) -> Vec<Vec<iapd::pb::CatalogItem>> {
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = iapd::pb::ListItemsRequest {
            store: store.into(),
            app_id: app_id.into(),
            page_size,
            page_token,
            ..Default::default()
        };
        let page = client.list_items(request).await.expect("list_items").into_inner();
        pages.push(page.items);
        if page.next_page_token.is_empty() {
            return pages;
        }
        page_token = page.next_page_token;
    }
}

/// The product ids of every item of a store's catalog, in order.
pub async fn list_product_ids(
    client: &mut PurchaseServiceClient<Channel>,
    store: &str,
    app_id: &str,
    page_size: i32,
) -> Vec<String> {
    list_pages(client, store, app_id, page_size).await.into_iter().flatten().map(|item| item.product_id).collect()
}
