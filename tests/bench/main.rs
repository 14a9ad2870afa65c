//! iapd's benchmarks. Not timed tests: each compares against a baseline
//! measured in the same run, on the same machine, and prints the numbers
//! that BENCHMARKS.md records.
//!
//! Run: `cargo build --release --workspace && cargo bench --features bench-internals --bench bench`
//! (`... --bench bench -- abi|throughput|concurrency|latency|ledger|events` runs one.)

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iapd::config::{Config, Sources};
use iapd::host::PluginHost;
use iapd::pb::{self, purchase_service_client::PurchaseServiceClient};
use iapd_sdk_plugin::abi;
use iapd_sdk_plugin::proto as plugin;
use prost::Message;

fn main() {
    // `BENCH_LOG=iapd=debug` shows what the servers log (the ledger's batch
    // sizes, say); nothing by default, so the numbers are the point.
    if let Ok(filter) = std::env::var("BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let only = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let wants = |name: &str| only.as_deref().is_none_or(|only| only == name);
    println!("machine: {} cores", std::thread::available_parallelism().map_or(0, usize::from));
    if wants("abi") {
        runtime.block_on(abi_overhead());
    }
    if wants("throughput") {
        runtime.block_on(throughput());
    }
    if wants("concurrency") {
        runtime.block_on(concurrency());
    }
    if wants("latency") {
        runtime.block_on(latency());
    }
    if wants("ledger") {
        runtime.block_on(ledger());
    }
    if wants("events") {
        runtime.block_on(event_latency());
    }
    if wants("operators") {
        runtime.block_on(operators());
    }
}

/// The folder of the release build, where the plugins are.
fn build_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iapd")).parent().unwrap().to_owned()
}

/// Without the ledger: most benchmarks measure the path to the stores; the
/// ledger's cost is measured on its own, in (6).
const LEDGER_OFF: &str = "enabled = false\n";

/// A config file in a temporary folder: the release build's plugins and `rest`.
fn config_file(rest: &str) -> (PathBuf, tempfile::TempDir) {
    config_file_with_ledger(rest, LEDGER_OFF)
}

/// A config file as [`config_file`], with `ledger` as its `[ledger]` table.
fn config_file_with_ledger(rest: &str, ledger: &str) -> (PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iapd.toml");
    let text = format!("[plugins]\ndir = {:?}\n\n{rest}\n[ledger]\n{ledger}", build_dir().display().to_string());
    std::fs::write(&path, text).unwrap();
    (path, dir)
}

fn config(stores: &str) -> (Config, tempfile::TempDir) {
    config_with_ledger(stores, LEDGER_OFF)
}

fn config_with_ledger(stores: &str, ledger: &str) -> (Config, tempfile::TempDir) {
    let (path, dir) = config_file_with_ledger(stores, ledger);
    (Config::load(&Sources { file: Some(path) }).expect("config (build the plugins with --release first)"), dir)
}

/// The real `iapd serve` on a free port of 127.0.0.1, stopped when dropped.
struct Iapd {
    child: std::process::Child,
    address: std::net::SocketAddr,
}

impl Iapd {
    fn start(config: &std::path::Path, log_filter: &str) -> Iapd {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_iapd"))
            .args(["--config", &config.display().to_string(), "serve", "--listen", "127.0.0.1:0"])
            .env("IAPD_LOG", log_filter)
            .env_remove("IAPD_CONFIG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut seen = String::new();
        let address = loop {
            let Some(Ok(line)) = lines.next() else { panic!("iapd exited:\n{seen}") };
            if line.contains("iapd serving")
                && let Some(rest) = line.split("address=").nth(1)
            {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
            seen.push_str(&line);
            seen.push('\n');
        };
        // A full pipe would block iapd's logging.
        std::thread::spawn(move || lines.for_each(drop));
        Iapd { child, address }
    }
}

impl Drop for Iapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn verify_request(product: &str, token: &str) -> plugin::VerifyRequest {
    plugin::VerifyRequest {
        app_id: "com.example.game".into(),
        product_id: product.into(),
        proof: Some(plugin::Proof {
            kind: Some(plugin::proof::Kind::PurchaseToken(token.into())),
            store_parameters: Default::default(),
        }),
        user_id: String::new(),
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * fraction) as usize]
}

/// (1) The cost of crossing the ABI: a Verify through the loaded sandbox
/// library (encode, blocking-pool hop, C call, plugin decode/encode,
/// completion, decode) against the same store called in-process through the
/// SDK's kit (no ABI, no threads).
async fn abi_overhead() {
    const CALLS: usize = 50_000;
    let (config, _dir) = config("[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n");
    let host = PluginHost::start(&config).await.unwrap();
    let store = host.store("sandbox").unwrap();
    let request = verify_request("coins_100", "purchased-bench").encode_to_vec();
    let mut through_abi = Vec::with_capacity(CALLS);
    for index in 0..CALLS + 5_000 {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        let answer = store.call(abi::method::VERIFY, request.clone(), deadline).await.unwrap();
        let answer = plugin::VerifyResponse::decode(answer.as_slice()).unwrap();
        if index >= 5_000 {
            through_abi.push(started.elapsed());
        }
        assert_eq!(answer.verdict(), plugin::Verdict::Valid);
    }
    // The same C ABI call on this thread: the ABI's own cost, without the hop.
    let mut inline = Vec::with_capacity(CALLS);
    for index in 0..CALLS + 5_000 {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        let answer = store.call_on_current_thread(abi::method::VERIFY, request.clone(), deadline).await.unwrap();
        if index >= 5_000 {
            inline.push(started.elapsed());
        }
        assert!(!answer.is_empty());
    }
    let kit = iapd_sdk_plugin::kit::builder().build::<iapd_plugin_sandbox::Sandbox>().unwrap();
    let mut direct = Vec::with_capacity(CALLS);
    for index in 0..CALLS + 5_000 {
        let started = Instant::now();
        let answer = kit.verify(verify_request("coins_100", "purchased-bench")).unwrap();
        if index >= 5_000 {
            direct.push(started.elapsed());
        }
        assert_eq!(answer.verdict(), plugin::Verdict::Valid);
    }
    // For reference: the cost of tokio's blocking-pool round trip, which the
    // host used to dispatch plugin calls before it had its own threads.
    let mut hop = Vec::with_capacity(CALLS);
    for index in 0..CALLS + 5_000 {
        let started = Instant::now();
        tokio::task::spawn_blocking(|| ()).await.unwrap();
        if index >= 5_000 {
            hop.push(started.elapsed());
        }
    }
    for samples in [&mut through_abi, &mut direct, &mut hop, &mut inline] {
        samples.sort();
    }
    let (abi_median, direct_median, hop_median, inline_median) =
        (percentile(&through_abi, 0.5), percentile(&direct, 0.5), percentile(&hop, 0.5), percentile(&inline, 0.5));
    println!("\n(1) ABI crossing, {CALLS} sequential Verify calls to the sandbox store");
    println!("| path | median | p99 |");
    println!("|---|---|---|");
    println!("| direct in-process call (SDK kit, no ABI) | {direct_median:?} | {:?} |", percentile(&direct, 0.99));
    println!("| through the C ABI (host call path) | {abi_median:?} | {:?} |", percentile(&through_abi, 0.99));
    println!(
        "| through the C ABI, plugin called on this thread | {inline_median:?} | {:?} |",
        percentile(&inline, 0.99)
    );
    println!(
        "| reference: tokio `spawn_blocking` round trip, empty closure | {hop_median:?} | {:?} |",
        percentile(&hop, 0.99)
    );
    println!(
        "ABI crossing overhead (C ABI on this thread - direct, medians): {:?}",
        inline_median.saturating_sub(direct_median)
    );
    println!("host path overhead (host path - direct, medians): {:?}", abi_median.saturating_sub(direct_median));
}

/// A bare tonic unary handler answering Verify with a canned response of the
/// same shape, the baseline for (2).
#[derive(Debug, Clone)]
struct Bare(pb::VerifyResponse);

#[tonic::async_trait]
impl pb::purchase_service_server::PurchaseService for Bare {
    async fn verify(
        &self,
        _request: tonic::Request<pb::VerifyRequest>,
    ) -> Result<tonic::Response<pb::VerifyResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.0.clone()))
    }
    async fn acknowledge(
        &self,
        _: tonic::Request<pb::AcknowledgeRequest>,
    ) -> Result<tonic::Response<pb::AcknowledgeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn consume(
        &self,
        _: tonic::Request<pb::ConsumeRequest>,
    ) -> Result<tonic::Response<pb::ConsumeResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn list_items(
        &self,
        _: tonic::Request<pb::ListItemsRequest>,
    ) -> Result<tonic::Response<pb::ListItemsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn list_stores(
        &self,
        _: tonic::Request<pb::ListStoresRequest>,
    ) -> Result<tonic::Response<pb::ListStoresResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    type WatchEventsStream = tokio_stream::Empty<Result<pb::WatchEventsResponse, tonic::Status>>;
    async fn grant(
        &self,
        _: tonic::Request<pb::GrantRequest>,
    ) -> Result<tonic::Response<pb::GrantResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn confirm_grant(
        &self,
        _: tonic::Request<pb::ConfirmGrantRequest>,
    ) -> Result<tonic::Response<pb::ConfirmGrantResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn get_entitlements(
        &self,
        _: tonic::Request<pb::GetEntitlementsRequest>,
    ) -> Result<tonic::Response<pb::GetEntitlementsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn list_purchases(
        &self,
        _: tonic::Request<pb::ListPurchasesRequest>,
    ) -> Result<tonic::Response<pb::ListPurchasesResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
    async fn watch_events(
        &self,
        _: tonic::Request<pb::WatchEventsRequest>,
    ) -> Result<tonic::Response<Self::WatchEventsStream>, tonic::Status> {
        Err(tonic::Status::unimplemented(""))
    }
}

/// [`public_request`], for any caller.
fn public_request_of(_caller: usize) -> pb::VerifyRequest {
    public_request()
}

fn public_request() -> pb::VerifyRequest {
    pb::VerifyRequest {
        store: "sandbox".into(),
        app_id: "com.example.game".into(),
        product_id: "coins_100".into(),
        proof: Some(pb::PurchaseProof {
            proof: Some(pb::purchase_proof::Proof::PurchaseToken("purchased-bench".into())),
            store_parameters: Default::default(),
        }),
        user_id: String::new(),
    }
}

/// A Verify of a purchase no call has verified before, for a user of its own:
/// with the ledger on, each one records a new purchase, its claim and an event.
fn fresh_request() -> pb::VerifyRequest {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut request = public_request();
    request.proof.as_mut().unwrap().proof = Some(pb::purchase_proof::Proof::PurchaseToken(format!("purchased-{n}")));
    request.user_id = format!("u{n}");
    request
}

/// CPU time this process has used (user + system), from /proc.
fn process_cpu() -> Duration {
    cpu_time("self")
}

/// CPU time process `pid` has used (user + system), from /proc.
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line (11 and 12 after the
    // command name), in clock ticks of 10 ms.
    let field = |index: usize| fields.get(index).and_then(|value| value.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10)
}

/// Requests per second from `WORKERS` concurrent callers over `CONNECTIONS`,
/// and the process's CPU time per request (client and server together).
async fn measure_rps(address: std::net::SocketAddr, seconds: u64) -> (f64, Duration) {
    measure_rps_of(address, seconds, public_request, false).await
}

/// [`measure_rps`] with the requests `request` makes. With `ledger`, every
/// answer must carry a ledger entry of a new purchase, newly claimed (so the
/// call wrote it); without, none.
async fn measure_rps_of(
    address: std::net::SocketAddr,
    seconds: u64,
    request: fn() -> pb::VerifyRequest,
    ledger: bool,
) -> (f64, Duration) {
    let cpu_before = process_cpu();
    let (total, elapsed) = drive(
        address,
        seconds,
        move |_| tonic::Request::new(request()),
        move |answer| {
            assert_eq!(answer.ledger.is_some(), ledger);
            if let Some(entry) = &answer.ledger {
                assert!(!entry.seen_before && entry.claim() == pb::Claim::New, "{entry:?}");
            }
        },
    )
    .await;
    let cpu = process_cpu().saturating_sub(cpu_before);
    (total as f64 / elapsed.as_secs_f64(), cpu / u32::try_from(total.max(1)).unwrap_or(u32::MAX))
}

/// The harness of every throughput benchmark: 64 closed-loop callers over 4
/// connections for `seconds`, caller `i` sending `request(i)` and checking
/// each answer; the calls answered and the time they took.
async fn drive(
    address: std::net::SocketAddr,
    seconds: u64,
    request: impl Fn(usize) -> tonic::Request<pb::VerifyRequest> + Clone + Send + 'static,
    check: impl Fn(&pb::VerifyResponse) + Clone + Send + 'static,
) -> (u64, Duration) {
    const CONNECTIONS: usize = 4;
    const WORKERS: usize = 64;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(PurchaseServiceClient::connect(format!("http://{address}")).await.unwrap());
    }
    let stop = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|index| {
            let mut client = clients[index % CONNECTIONS].clone();
            let (request, check) = (request.clone(), check.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < stop {
                    let answer = client.verify(request(index)).await.unwrap().into_inner();
                    check(&answer);
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.unwrap();
    }
    (total, started.elapsed())
}

/// Starts iapd in this process with the sandbox store; returns its address
/// and a canned answer for the bare handler.
async fn start_iapd(
    inline_calls: bool,
) -> (std::net::SocketAddr, pb::VerifyResponse, Arc<PluginHost>, tempfile::TempDir) {
    start_iapd_with_ledger(inline_calls, LEDGER_OFF).await
}

/// [`start_iapd`] with `ledger` as the `[ledger]` table.
async fn start_iapd_with_ledger(
    inline_calls: bool,
    ledger: &str,
) -> (std::net::SocketAddr, pb::VerifyResponse, Arc<PluginHost>, tempfile::TempDir) {
    let threads = std::env::var("BENCH_PLUGIN_THREADS").unwrap_or_else(|_| "2".into());
    let (config, dir) = config_with_ledger(
        &format!(
            "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\nplugin_threads = {threads}\ninline_calls = {inline_calls}\n"
        ),
        ledger,
    );
    let host = Arc::new(PluginHost::start(&config).await.unwrap());
    assert_eq!(host.store("sandbox").unwrap().calls_inline(), inline_calls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let serving = tokio::spawn(iapd::serve(listener, config, host.clone(), std::future::pending()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut client = PurchaseServiceClient::connect(format!("http://{address}")).await.unwrap();
    // The listener is bound already: the first call waits for the ledger's
    // migrations, or fails if serve did.
    match client.verify(public_request()).await {
        Ok(answer) => (address, answer.into_inner(), host, dir),
        Err(status) if serving.is_finished() => panic!("iapd stopped: {:?} ({status})", serving.await),
        Err(status) => panic!("{status}"),
    }
}

/// One row of (2): the median pair and the spread of the ratios.
fn report_ratios(what: &str, bare: &[f64], through: &[f64], cpu_ratio: f64) {
    let mut ratios: Vec<(f64, f64, f64)> = bare.iter().zip(through).map(|(b, t)| (*b, *t, t / b)).collect();
    ratios.sort_by(|a, b| a.2.total_cmp(&b.2));
    let (b, t, r) = ratios[ratios.len() / 2];
    let (low, high) = (ratios[0].2, ratios[ratios.len() - 1].2);
    println!("| {what} | {b:.0} | {t:.0} | **{r:.2}** | {low:.2}-{high:.2} | {cpu_ratio:.2} |");
}

/// (2) Verify through iapd and the sandbox plugin against a bare tonic
/// handler: same client, same run, alternating rounds. iapd runs twice: with
/// the sandbox's calls started inline (its shipped configuration) and handed
/// to plugin threads (every store's default).
async fn throughput() {
    const ROUNDS: usize = 15;
    const SECONDS: u64 = 1;
    let (inline_address, canned_answer, inline_host, _inline_dir) = start_iapd(true).await;
    let (threads_address, _, _threads_host, _threads_dir) = start_iapd(false).await;
    let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bare_address = bare_listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::purchase_service_server::PurchaseServiceServer::new(Bare(canned_answer)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(bare_listener)),
    );
    if let Ok(seconds) = std::env::var("BENCH_PROFILE_IAPD_SECONDS") {
        // Load on one iapd alone, for a profiler.
        let address =
            if std::env::var_os("BENCH_PROFILE_THREADS").is_some() { threads_address } else { inline_address };
        let (rps, cpu) = measure_rps(address, seconds.parse().unwrap_or(10)).await;
        println!("iapd alone: {rps:.0} req/s, {cpu:?} CPU per request");
        return;
    }
    for address in [bare_address, inline_address, threads_address] {
        let _ = measure_rps(address, 1).await; // warm up
    }
    // The machine's speed drifts (a shared VM): rounds measured back to back,
    // many of them, and the median ratio, are steadier than long rounds.
    let (mut bare, mut inline, mut threads) = (Vec::new(), Vec::new(), Vec::new());
    let mut cpu = [Vec::new(), Vec::new(), Vec::new()];
    let sandbox = inline_host.store("sandbox").unwrap();
    println!("inline after the warm-up: {}", sandbox.calls_inline());
    // Three overruns move the store to its plugin threads for good: the
    // rounds it was still inline at the end of were inline throughout.
    let mut inline_rounds = Vec::new();
    for _ in 0..ROUNDS {
        for (index, (address, rates)) in
            [(bare_address, &mut bare), (inline_address, &mut inline), (threads_address, &mut threads)]
                .into_iter()
                .enumerate()
        {
            let (rps, cpu_per_call) = measure_rps(address, SECONDS).await;
            rates.push(rps);
            cpu[index].push(cpu_per_call);
            if index == 1 {
                inline_rounds.push(sandbox.calls_inline());
            }
        }
    }
    let median = |samples: &mut Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2].as_secs_f64()
    };
    let [bare_cpu, inline_cpu, threads_cpu] = cpu.map(|mut samples| median(&mut samples));
    println!(
        "\n(2) Verify throughput, 64 concurrent callers over 4 connections, {ROUNDS} back-to-back rounds of {SECONDS} s each"
    );
    println!(
        "| iapd + sandbox plugin | bare tonic handler (req/s) | iapd (req/s) | ratio, median round | ratio range | CPU ratio |"
    );
    println!("|---|---|---|---|---|---|");
    report_ratios("calls inline (the sandbox's shipped configuration)", &bare, &inline, bare_cpu / inline_cpu);
    report_ratios("calls on plugin threads (every store's default)", &bare, &threads, bare_cpu / threads_cpu);
    let kept: Vec<usize> = (0..ROUNDS).filter(|round| inline_rounds[*round]).collect();
    println!("rounds the inline server stayed inline: {} of {ROUNDS}", kept.len());
    if !kept.is_empty() && kept.len() < ROUNDS {
        let pick = |rates: &[f64]| kept.iter().map(|round| rates[*round]).collect::<Vec<_>>();
        report_ratios("calls inline, only the rounds still inline", &pick(&bare), &pick(&inline), f64::NAN);
    }
    let overruns = sandbox.counters().inline_overruns.load(std::sync::atomic::Ordering::Relaxed);
    println!("inline calls over their budget: {overruns}; still inline at the end: {}", sandbox.calls_inline());
    println!(
        "CPU per request, client and server together (medians): bare {:.1} µs, inline {:.1} µs, plugin threads {:.1} µs",
        bare_cpu * 1e6,
        inline_cpu * 1e6,
        threads_cpu * 1e6
    );
}

/// A slow store: answers every HTTP request after one second.
async fn slow_store() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    while !seen.windows(4).any(|window| window == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => seen.extend_from_slice(&buffer[..read]),
                        }
                    }
                    seen.clear();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let body = r#"{"purchaseState":0}"#;
                    let response = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    if socket.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// (3) 10,000 concurrent Verifies against a plugin whose HTTP call takes one
/// second, through the real binary: all must succeed on a bounded number of
/// threads.
async fn concurrency() {
    const CALLS: usize = 10_000;
    const CONNECTIONS: usize = 100;
    let slow = slow_store().await;
    let (config_path, _dir) = config_file(&format!(
        "[server]\nmax_concurrent_requests = 20000\n\n[stores.slow]\nplugin = \"iapd_test_plugin_faulty\"\nallowed_origins = [\"http://{slow}\"]\nmax_in_flight = 20000\n"
    ));
    let iapd = Iapd::start(&config_path, "warn,iapd::service=info");
    let (pid, address) = (iapd.child.id(), iapd.address);
    let threads_before = proc_status(pid, "Threads:");
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(PurchaseServiceClient::connect(format!("http://{address}")).await.unwrap());
    }
    let url = format!("http://{slow}/purchases/1");
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak_threads = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak_threads = peak_threads.max(proc_status(pid, "Threads:"));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak_threads
        })
    };
    let started = Instant::now();
    let calls: Vec<_> = (0..CALLS)
        .map(|index| {
            let mut client = clients[index % CONNECTIONS].clone();
            let mut request = public_request();
            request.store = "slow".into();
            request.product_id = "fetch".into();
            request.proof.as_mut().unwrap().store_parameters.insert("url".into(), url.clone());
            tokio::spawn(async move {
                let mut request = tonic::Request::new(request);
                request.set_timeout(Duration::from_secs(60));
                client.verify(request).await.map(|answer| answer.into_inner().verdict() == pb::Verdict::Valid)
            })
        })
        .collect();
    let mut succeeded = 0;
    let mut failures = std::collections::BTreeMap::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(true) => succeeded += 1,
            Ok(false) => *failures.entry("wrong verdict".to_owned()).or_insert(0) += 1,
            Err(status) => *failures.entry(format!("{:?}: {}", status.code(), status.message())).or_insert(0) += 1,
        }
    }
    let elapsed = started.elapsed();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak_threads = sampler.join().unwrap();
    let peak_rss_kib = proc_status(pid, "VmHWM:");
    drop(iapd);
    println!("\n(3) {CALLS} concurrent Verifies, each waiting on a 1 s store answer, through the real binary");
    println!("| succeeded | failed | wall time | iapd threads (idle → peak) | iapd peak RSS |");
    println!("|---|---|---|---|---|");
    println!(
        "| {succeeded} | {} | {:.2} s | {threads_before} → {peak_threads} | {:.1} MiB |",
        CALLS - succeeded,
        elapsed.as_secs_f64(),
        peak_rss_kib as f64 / 1024.0
    );
    if !failures.is_empty() {
        println!("failures: {failures:?}");
    }
}

/// A network store of (5), and what differs between them: the emulator,
/// iapd's config for it, the proof, and the store request a Verify makes.
#[derive(Debug, Clone, Copy)]
enum Network {
    GooglePlay,
    CafeBazaar,
    Samsung,
    AppStore,
}

const APPLE_ISSUER: &str = "57246542-96fe-1a63-e053-0824d011072a";

fn fixture(path: &str) -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)).unwrap()
}

impl Network {
    fn store_id(self) -> &'static str {
        match self {
            Network::GooglePlay => "google-play",
            Network::CafeBazaar => "cafe-bazaar",
            Network::Samsung => "samsung",
            Network::AppStore => "apple",
        }
    }

    fn app_id(self) -> &'static str {
        match self {
            Network::GooglePlay | Network::CafeBazaar => "com.example.game",
            Network::Samsung => "com.example.galaxy",
            Network::AppStore => "com.example.ios",
        }
    }

    /// Where the emulator's state keeps the purchases, the field naming one,
    /// and the one every caller's copy is made from (a valid coins_100).
    fn template(self) -> (&'static str, &'static str, &'static str, &'static str) {
        use iapd_emulators::{app_store, cafe_bazaar, google_play, samsung};
        match self {
            Network::GooglePlay => (google_play::DEFAULT_STATE, "purchases", "purchaseToken", "gp-purchased"),
            Network::CafeBazaar => (cafe_bazaar::DEFAULT_STATE, "purchases", "purchaseToken", "bz-purchased"),
            Network::Samsung => (samsung::DEFAULT_STATE, "receipts", "purchaseId", "sg-purchased"),
            Network::AppStore => (app_store::DEFAULT_STATE, "transactions", "transactionId", "2000000000000001"),
        }
    }

    /// Caller `index`'s own purchase: concurrent identical lookups share one
    /// store request in iapd, so callers sharing a purchase would not each
    /// pay a round trip.
    fn purchase_id(self, index: usize) -> String {
        match self {
            Network::AppStore => format!("3{index:015}"), // Apple's ids are digits
            _ => format!("bench-{index}"),
        }
    }

    /// The emulator on a free port, and the stores' config pointed at it
    /// (the fixture's, where there is one).
    fn start_emulator(self, dir: &std::path::Path) -> (iapd_emulators::Running, String) {
        use iapd_emulators::{app_store::AppStore, cafe_bazaar::CafeBazaar, google_play::GooglePlay, samsung::Samsung};
        let absolute = format!("{}/tests/fixtures/", env!("CARGO_MANIFEST_DIR"));
        let pointed = |running: iapd_emulators::Running, fixture_address: &str, text: String| {
            let text =
                text.replace(fixture_address, &running.address.to_string()).replace("tests/fixtures/", &absolute);
            (running, text)
        };
        match self {
            Network::GooglePlay => {
                let key = fixture("google-play/service-account.json");
                let emulator = GooglePlay::with_default_state();
                emulator.add_service_account(&key).unwrap();
                let running = iapd_emulators::spawn(Arc::new(emulator)).unwrap();
                // The key names its token endpoint, the emulator's default port.
                let key_file = dir.join("service-account.json");
                std::fs::write(&key_file, key.replace("127.0.0.1:8095", &running.address.to_string())).unwrap();
                let text = fixture("google-play/iapd.toml")
                    .replace("tests/fixtures/google-play/service-account.json", &key_file.display().to_string());
                pointed(running, "127.0.0.1:8095", text)
            }
            Network::CafeBazaar => pointed(
                iapd_emulators::spawn(Arc::new(CafeBazaar::with_default_state())).unwrap(),
                "127.0.0.1:8096",
                fixture("cafe-bazaar/iapd.toml"),
            ),
            Network::Samsung => pointed(
                iapd_emulators::spawn(Arc::new(Samsung::with_default_state())).unwrap(),
                "127.0.0.1:8097",
                fixture("samsung/iapd.toml"),
            ),
            Network::AppStore => {
                // The emulator makes its root CA at start-up: no fixture config.
                let emulator = AppStore::with_default_state();
                let root = emulator.root_pem();
                let running = iapd_emulators::spawn(Arc::new(emulator)).unwrap();
                let url = running.url();
                let text = format!(
                    "[stores.apple]\nplugin = \"iapd_plugin_app_store\"\nallowed_origins = [\"{url}\"]\n\n\
                     [stores.apple.config]\npackages = [\"com.example.ios\"]\ntrusted_roots = ['''{root}''']\n\
                     issuer_id = \"{APPLE_ISSUER}\"\nkey_id = \"EMULATOR01\"\napi_root = \"{url}\"\n\
                     sandbox_api_root = \"{url}/sandbox\"\nreceipt_url = \"{url}/verifyReceipt\"\n\
                     sandbox_receipt_url = \"{url}/sandbox/verifyReceipt\"\n\n\
                     [stores.apple.secrets]\nprivate_key = {{ file = \"{absolute}app-store/SubscriptionKey_EMULATOR01.p8\" }}\n"
                );
                (running, text)
            }
        }
    }

    /// A token for the direct calls, obtained once: the plugin caches its own.
    async fn token(self, http: &reqwest::Client, url: &str) -> Option<String> {
        let now = i64::try_from(std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_secs()).unwrap();
        let oauth = |path: &str, form: String| {
            let request = http
                .post(format!("{url}{path}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form)
                .send();
            async move {
                let body = request.await.unwrap().bytes().await.unwrap();
                let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
                Some(answer["access_token"].as_str().expect("an access token").to_owned())
            }
        };
        match self {
            Network::GooglePlay => {
                let key = fixture("google-play/service-account.json");
                let assertion = iapd_emulators::google_play::assertion(&key, now).unwrap();
                oauth("/token", format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"))
                    .await
            }
            Network::CafeBazaar => {
                oauth(
                    "/devapi/v2/auth/token/",
                    "grant_type=refresh_token&client_id=iapd-demo&client_secret=demo-client-secret&refresh_token=demo-refresh-token"
                        .to_owned(),
                )
                .await
            }
            Network::Samsung => None, // the receipt API takes no credentials
            Network::AppStore => {
                let key = fixture("app-store/SubscriptionKey_EMULATOR01.p8");
                Some(iapd_emulators::app_store::api_token(&key, "EMULATOR01", APPLE_ISSUER, self.app_id(), now).unwrap())
            }
        }
    }

    /// The store request the plugin makes for a Verify of `id`.
    fn store_request(
        self,
        http: &reqwest::Client,
        url: &str,
        id: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let app = self.app_id();
        let path = match self {
            Network::GooglePlay => {
                format!("/androidpublisher/v3/applications/{app}/purchases/products/coins_100/tokens/{id}")
            }
            Network::CafeBazaar => format!("/devapi/v2/api/validate/{app}/inapp/coins_100/purchases/{id}/"),
            Network::Samsung => format!("/iap/v6/receipt?purchaseID={id}"),
            Network::AppStore => format!("/inApps/v1/transactions/{id}"),
        };
        let request = http.get(format!("{url}{path}"));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn verify(self, id: &str) -> pb::VerifyRequest {
        use pb::purchase_proof::Proof;
        let proof = match self {
            Network::GooglePlay | Network::CafeBazaar => Proof::PurchaseToken(id.into()),
            Network::Samsung => Proof::PurchaseId(id.into()),
            Network::AppStore => Proof::TransactionId(id.into()),
        };
        pb::VerifyRequest {
            store: self.store_id().into(),
            app_id: self.app_id().into(),
            product_id: "coins_100".into(),
            proof: Some(pb::PurchaseProof { proof: Some(proof), store_parameters: Default::default() }),
            user_id: String::new(),
        }
    }
}

/// One caller of (5): the same purchase, directly or through iapd.
#[derive(Clone)]
struct Caller {
    store: Network,
    http: reqwest::Client,
    grpc: PurchaseServiceClient<tonic::transport::Channel>,
    url: String,
    token: Option<String>,
    id: String,
}

/// Every call's bound: a stuck call fails the benchmark instead of hanging it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Caller {
    async fn call(&mut self, through_iapd: bool) -> Duration {
        let started = Instant::now();
        if through_iapd {
            let mut request = tonic::Request::new(self.store.verify(&self.id));
            request.set_timeout(CALL_TIMEOUT);
            let answer = self.grpc.verify(request).await.unwrap().into_inner();
            assert_eq!(answer.verdict(), pb::Verdict::Valid, "{}", answer.verdict_reason);
        } else {
            let request = self.store.store_request(&self.http, &self.url, &self.id, self.token.as_deref());
            let response = request.timeout(CALL_TIMEOUT).send().await.unwrap();
            let status = response.status();
            let body = response.bytes().await.unwrap();
            assert!(status.is_success(), "{status}: {body:?}");
        }
        started.elapsed()
    }
}

/// One path's measurements in (5), over the rounds.
#[derive(Default)]
struct PathSamples {
    latencies: Vec<Duration>,
    round_p99: Vec<Duration>,
    rates: Vec<f64>,
    cpu_per_call: Vec<Duration>,
}

impl PathSamples {
    /// `callers` each calling `calls` times, or until `limit`, on one path.
    /// CPU counts this process (callers and emulator) and iapd's.
    async fn phase(&mut self, callers: &[Caller], through_iapd: bool, calls: usize, limit: Duration, iapd: u32) {
        let cpu = || process_cpu() + cpu_time(&iapd.to_string());
        let (started, cpu_before) = (Instant::now(), cpu());
        let stop = started + limit;
        let tasks: Vec<_> = callers
            .iter()
            .cloned()
            .map(|mut caller| {
                tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(calls);
                    while samples.len() < calls && Instant::now() < stop {
                        samples.push(caller.call(through_iapd).await);
                    }
                    samples
                })
            })
            .collect();
        let mut samples = Vec::new();
        for task in tasks {
            samples.extend(task.await.unwrap());
        }
        self.rates.push(samples.len() as f64 / started.elapsed().as_secs_f64());
        self.cpu_per_call.push(cpu().saturating_sub(cpu_before) / u32::try_from(samples.len().max(1)).unwrap());
        samples.sort();
        self.round_p99.push(percentile(&samples, 0.99));
        self.latencies.extend(samples);
    }
}

fn median<T: PartialOrd + Copy>(values: &[T]) -> T {
    let mut values = values.to_vec();
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// (5) The latency a Verify through iapd adds over the same store request
/// made directly, per network store against its emulator: the real binary,
/// the real plugin, loopback only. Direct and through-iapd phases alternate,
/// in rounds, one caller at a time and then many at once.
async fn latency() {
    const ROUNDS: usize = 3;
    const SEQUENTIAL_CALLS: usize = 2_000;
    const LOAD_CALLERS: usize = 32;
    const LOAD_CALLS: usize = 500; // per caller
    // Bounds each phase when calls are slow (a 40 ms stall makes 2,000 calls 80 s).
    const PHASE_LIMIT: Duration = Duration::from_secs(10);
    // As in the host: the client's TLS stack needs a provider, even for http.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The same client settings as the host's.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
        .unwrap();
    // Neighbours' load shows in the p99 of a shared machine.
    println!("load average before (5): {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    let mut tables = [Vec::new(), Vec::new()];
    for store in [Network::GooglePlay, Network::CafeBazaar, Network::Samsung, Network::AppStore] {
        let dir = tempfile::tempdir().unwrap();
        let (emulator, stores) = store.start_emulator(dir.path());
        let url = emulator.url();
        let (template_state, list, field, template_id) = store.template();
        let state: serde_json::Value = serde_json::from_str(template_state).unwrap();
        let template = state[list].as_array().unwrap().iter().find(|entry| entry[field] == template_id).unwrap();
        for index in 0..LOAD_CALLERS {
            let mut purchase = template.clone();
            purchase[field] = store.purchase_id(index).into();
            let added = http.post(format!("{url}/emulator/v1/purchases")).body(purchase.to_string()).send().await;
            assert!(added.unwrap().status().is_success());
        }
        let (config_path, _config_dir) = config_file(&stores);
        let iapd = Iapd::start(&config_path, "info");
        let grpc = PurchaseServiceClient::connect(format!("http://{}", iapd.address)).await.unwrap();
        let token = store.token(&http, &url).await;
        let callers: Vec<Caller> = (0..LOAD_CALLERS)
            .map(|index| Caller {
                store,
                http: http.clone(),
                grpc: grpc.clone(),
                url: url.clone(),
                token: token.clone(),
                id: store.purchase_id(index),
            })
            .collect();
        // Warm-up: connections, the plugin's token, the App Store's chain cache.
        for through_iapd in [false, true] {
            PathSamples::default().phase(&callers, through_iapd, 20, Duration::from_secs(2), iapd.child.id()).await;
        }
        let mut measured = 0;
        let [sequential, load] = &mut tables;
        for (table, callers, calls) in [(sequential, &callers[..1], SEQUENTIAL_CALLS), (load, &callers[..], LOAD_CALLS)]
        {
            let mut paths = [PathSamples::default(), PathSamples::default()];
            for _ in 0..ROUNDS {
                for (path, through_iapd) in paths.iter_mut().zip([false, true]) {
                    path.phase(callers, through_iapd, calls, PHASE_LIMIT, iapd.child.id()).await;
                }
            }
            let added_p99: Vec<String> = (paths[0].round_p99.iter().zip(&paths[1].round_p99))
                .map(|(direct, through)| format!("{:+.2}", millis(*through) - millis(*direct)))
                .collect();
            let [(d_calls, d50, d99, d_rate, d_cpu), (t_calls, t50, t99, t_rate, t_cpu)] = paths.map(|mut path| {
                path.latencies.sort();
                let (p50, p99) = (percentile(&path.latencies, 0.5), percentile(&path.latencies, 0.99));
                let cpu = median(&path.cpu_per_call).as_micros();
                (path.latencies.len(), millis(p50), millis(p99), median(&path.rates), cpu)
            });
            measured += d_calls + t_calls;
            table.push(format!(
                "| {} | {d_calls}+{t_calls} | {d50:.2} / {d99:.2} | {t50:.2} / {t99:.2} | **{:+.2}** / **{:+.2}** | {} | {d_rate:.0} / {t_rate:.0} | {d_cpu} / {t_cpu} |",
                store.store_id(),
                t50 - d50,
                t99 - d99,
                added_p99.join(", "),
            ));
        }
        // Every measured call reached the store: none was answered from a
        // cache or folded into another caller's request.
        let stats = http.get(format!("{url}/emulator/v1/stats")).send().await.unwrap().bytes().await.unwrap();
        let stats: serde_json::Value = serde_json::from_slice(&stats).unwrap();
        let requests: u64 = stats["requests"].as_object().unwrap().values().filter_map(serde_json::Value::as_u64).sum();
        assert!(requests >= measured as u64, "{}: {requests} store requests for {measured} calls", store.store_id());
        drop(iapd);
        drop(emulator);
    }
    for (table, what) in tables.iter().zip([
        format!("one caller, {ROUNDS} rounds of up to {SEQUENTIAL_CALLS} calls per path"),
        format!("{LOAD_CALLERS} concurrent callers, {ROUNDS} rounds of up to {LOAD_CALLS} calls each per path"),
    ]) {
        println!(
            "\n(5) Verify latency added over a direct call to the store's emulator, {what} (phases of at most {PHASE_LIMIT:?})"
        );
        println!(
            "| store | calls (direct+iapd) | direct p50 / p99 (ms) | via iapd p50 / p99 (ms) | added p50 / p99 (ms) | added p99 per round | req/s direct / iapd | CPU µs per call direct / iapd |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for row in table {
            println!("{row}");
        }
    }
}

/// A PostgreSQL database of (6)'s own, dropped with this value.
struct BenchDatabase {
    admin: String,
    name: String,
    url: String,
}

impl BenchDatabase {
    /// Creates a database of a unique name through `admin`, a URL of the
    /// server's maintenance database.
    async fn create(admin: &str) -> Result<BenchDatabase, String> {
        use sqlx::Connection;
        let since_epoch = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap();
        let name = format!("iapd_bench_{}_{}", std::process::id(), since_epoch.as_millis());
        let mut url = reqwest::Url::parse(admin).map_err(|err| err.to_string())?;
        url.set_path(&format!("/{name}"));
        let mut connection = sqlx::PgConnection::connect(admin).await.map_err(|err| err.to_string())?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .map_err(|err| err.to_string())?;
        let _ = connection.close().await;
        Ok(BenchDatabase { admin: admin.to_owned(), name, url: url.to_string() })
    }

    /// The database's URL with `options` (libpq's `-c name=value` settings).
    fn url_with_options(&self, options: &str) -> String {
        let mut url = reqwest::Url::parse(&self.url).unwrap();
        url.query_pairs_mut().append_pair("options", options);
        url.to_string()
    }

    /// The server processes serving this database's connections.
    async fn backends(&self) -> Vec<u32> {
        use sqlx::Connection;
        let Ok(mut connection) = sqlx::PgConnection::connect(&self.admin).await else { return Vec::new() };
        let rows: Vec<(i32,)> = sqlx::query_as("SELECT pid FROM pg_stat_activity WHERE datname = $1")
            .bind(&self.name)
            .fetch_all(&mut connection)
            .await
            .unwrap_or_default();
        let _ = connection.close().await;
        rows.into_iter().filter_map(|(pid,)| u32::try_from(pid).ok()).collect()
    }
}

impl Drop for BenchDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs on the runtime: the statement gets a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                use sqlx::Connection;
                let mut connection = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut connection).await?;
                connection.close().await
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => println!("dropped database {}", self.name),
            other => println!("could not drop database {}: {other:?}", self.name),
        }
    }
}

/// One iapd of (6), and what its rounds measured.
struct LedgerServer {
    what: String,
    address: std::net::SocketAddr,
    host: Arc<PluginHost>,
    ledger: bool,
    /// Whether its CPU includes PostgreSQL backends of the bench database.
    postgres: bool,
    _dir: tempfile::TempDir,
    rates: Vec<f64>,
    ratios: Vec<f64>,
    cpu: Vec<Duration>,
    backend_cpu: Vec<Duration>,
}

impl LedgerServer {
    async fn start(what: &str, ledger: &str, postgres: bool) -> LedgerServer {
        let (address, _, host, dir) = start_iapd_with_ledger(true, ledger).await;
        LedgerServer {
            what: what.to_owned(),
            address,
            host,
            ledger: ledger != LEDGER_OFF,
            postgres,
            _dir: dir,
            rates: Vec::new(),
            ratios: Vec::new(),
            cpu: Vec::new(),
            backend_cpu: Vec::new(),
        }
    }
}

/// Median and p90 of `samples`, sorted in place.
fn median_p90(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (percentile(samples, 0.5), percentile(samples, 0.9))
}

/// (6) Verify throughput with the ledger recording every call, durably (the
/// commit before the answer), on SQLite and on PostgreSQL, as a ratio to the
/// same iapd with the ledger off: the harness of (2), every Verify a purchase
/// never seen before, claimed by a user of its own. Then the diagnostics
/// that say where the time goes.
async fn ledger() {
    use sqlx::Connection;
    const ROUNDS: usize = 15;
    const SECONDS: u64 = 1;
    let admin = std::env::var("BENCH_LEDGER_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let database = match BenchDatabase::create(&admin).await {
        Ok(database) => Some(database),
        Err(err) => {
            println!("PostgreSQL at {admin} is out of reach ({err}): its rows are skipped");
            None
        }
    };
    // The temporary folder is on the machine's disk; /dev/shm is memory, where
    // an fsync costs nothing (a diagnostic, not durable).
    let disk = tempfile::tempdir().unwrap();
    let memory = tempfile::tempdir_in("/dev/shm").ok();
    println!("load average before (6): {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());

    // Rounds run the servers in this order, back to back; each ledger round's
    // ratio is against the ledger-off round before it.
    let mut servers = vec![LedgerServer::start("ledger off", LEDGER_OFF, false).await];
    let data_dir = |dir: &std::path::Path| format!("enabled = true\ndata_dir = {:?}\n", dir.display().to_string());
    servers.push(LedgerServer::start("SQLite, durable", &data_dir(disk.path()), false).await);
    if let Some(memory) = &memory {
        servers.push(
            LedgerServer::start("diagnostic: SQLite in memory (/dev/shm, fsync free)", &data_dir(memory.path()), false)
                .await,
        );
    }
    if let Some(database) = &database {
        servers.push(LedgerServer::start("ledger off", LEDGER_OFF, false).await);
        let url = |url: &str| format!("enabled = true\nurl = {url:?}\n");
        servers.push(LedgerServer::start("PostgreSQL, durable", &url(&database.url), true).await);
        let relaxed = database.url_with_options("-c synchronous_commit=off");
        // The option must reach the server, or the diagnostic says nothing.
        let mut check = sqlx::PgConnection::connect(&relaxed).await.unwrap();
        let (setting,): (String,) = sqlx::query_as("SHOW synchronous_commit").fetch_one(&mut check).await.unwrap();
        assert_eq!(setting, "off");
        let _ = check.close().await;
        servers
            .push(LedgerServer::start("diagnostic: PostgreSQL, synchronous_commit = off", &url(&relaxed), true).await);
    }
    if let Ok(what) = std::env::var("BENCH_PROFILE_LEDGER") {
        // Load on one server alone, for a profiler: the first whose name
        // contains the variable's value (`off`, `SQLite`, `memory`, ...).
        let server = servers.iter().find(|server| server.what.contains(&what)).expect("no such server");
        let seconds = std::env::var("BENCH_PROFILE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
        println!("profiling {}: pid {}, {seconds} s", server.what, std::process::id());
        let (rps, cpu) = measure_rps_of(server.address, seconds, fresh_request, server.ledger).await;
        println!("{} alone: {rps:.0} req/s, {cpu:?} CPU per request", server.what);
        return;
    }
    for server in &servers {
        let _ = measure_rps_of(server.address, 1, fresh_request, server.ledger).await; // warm up
    }
    for _ in 0..ROUNDS {
        let mut baseline = 0.0;
        for server in &mut servers {
            let backends = match (&database, server.postgres) {
                (Some(database), true) => database.backends().await,
                _ => Vec::new(),
            };
            let backend_cpu = || backends.iter().map(|pid| cpu_time(&pid.to_string())).sum::<Duration>();
            let before = backend_cpu();
            let (rps, cpu) = measure_rps_of(server.address, SECONDS, fresh_request, server.ledger).await;
            let backend = backend_cpu().saturating_sub(before);
            server.backend_cpu.push(backend.div_f64((rps * SECONDS as f64).max(1.0)));
            if server.ledger {
                server.ratios.push(rps / baseline);
            } else {
                baseline = rps;
            }
            server.rates.push(rps);
            server.cpu.push(cpu);
        }
    }

    println!(
        "\n(6) Verify throughput with the ledger, 64 concurrent callers over 4 connections, {ROUNDS} back-to-back rounds of {SECONDS} s each per server, a new purchase and user every call"
    );
    println!(
        "| ledger | ledger off (req/s, median) | ledger on (req/s, median) | ratio, median round | ratio range | CPU µs per request, this process | + PostgreSQL backends | cores busy |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut off_rate = 0.0;
    for server in &servers {
        let rate = median(&server.rates);
        let cpu = median(&server.cpu);
        let busy = cpu.as_secs_f64() * rate;
        if !server.ledger {
            off_rate = rate;
            println!("| {} | {rate:.0} | | | | {:.1} | | {busy:.2} |", server.what, cpu.as_secs_f64() * 1e6);
            continue;
        }
        let mut ratios = server.ratios.clone();
        ratios.sort_by(f64::total_cmp);
        let backend = median(&server.backend_cpu);
        println!(
            "| {} | {off_rate:.0} | {rate:.0} | **{:.2}** | {:.2}-{:.2} | {:.1} | {} | {:.2} |",
            server.what,
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
            cpu.as_secs_f64() * 1e6,
            if server.postgres { format!("{:.1}", backend.as_secs_f64() * 1e6) } else { String::new() },
            busy + backend.as_secs_f64() * rate,
        );
    }
    for server in &servers {
        let sandbox = server.host.store("sandbox").unwrap();
        let overruns = sandbox.counters().inline_overruns.load(std::sync::atomic::Ordering::Relaxed);
        println!("{}: inline calls over their budget {overruns}, still inline {}", server.what, sandbox.calls_inline());
    }

    // Where a durable commit waits: the disk's flush, measured where the
    // SQLite file is (append 4 KiB, fdatasync; as a WAL commit does).
    {
        use std::io::Write;
        let mut file = std::fs::File::create(disk.path().join("fsync-probe")).unwrap();
        let mut samples = Vec::new();
        for _ in 0..300 {
            let started = Instant::now();
            file.write_all(&[7u8; 4096]).unwrap();
            file.sync_data().unwrap();
            samples.push(started.elapsed());
        }
        let (p50, p90) = median_p90(&mut samples);
        println!("\nappend 4 KiB + fdatasync in the SQLite folder, 300 times: median {p50:?}, p90 {p90:?}");
    }
    let Some(database) = &database else { return };
    {
        // One statement's round trip to PostgreSQL, unloaded.
        let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
        let mut samples = Vec::new();
        for _ in 0..2_000 {
            let started = Instant::now();
            sqlx::query("SELECT 1").execute(&mut connection).await.unwrap();
            samples.push(started.elapsed());
        }
        let (p50, p90) = median_p90(&mut samples);
        println!("PostgreSQL round trip (SELECT 1, one connection, no load), 2,000 times: median {p50:?}, p90 {p90:?}");
        let _ = connection.close().await;
    }
    // What the durable PostgreSQL ledger's backends are doing under the load:
    // pg_stat_activity sampled every 10 ms for 3 s.
    let durable = servers.iter().find(|server| server.postgres).unwrap();
    let (address, name) = (durable.address, database.name.clone());
    let mut connection = sqlx::PgConnection::connect(&database.admin).await.unwrap();
    let load = tokio::spawn(measure_rps_of(address, 3, fresh_request, true));
    let mut seen: std::collections::BTreeMap<String, u64> = Default::default();
    let mut samples = 0u64;
    while !load.is_finished() {
        let rows: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT state, wait_event_type, wait_event FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&name)
        .fetch_all(&mut connection)
        .await
        .unwrap();
        samples += 1;
        for (state, kind, event) in rows {
            let what = format!(
                "{} / {}",
                state.unwrap_or_default(),
                [kind, event].into_iter().flatten().collect::<Vec<_>>().join(":")
            );
            *seen.entry(what).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (rps, _) = load.await.unwrap();
    let mut seen: Vec<_> = seen.into_iter().collect();
    seen.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    println!(
        "PostgreSQL, durable, under the same load ({rps:.0} req/s): backends by state / wait event, mean count over {samples} samples"
    );
    for (what, count) in seen {
        println!("  {:5.2}  {what}", count as f64 / samples as f64);
    }
    let _ = connection.close().await;
}

/// (7) How long a ledger event takes to reach its subscribers: 100 of them
/// watching one app while Verifies of new purchases arrive one every 10 ms,
/// on SQLite, and on PostgreSQL with half the subscribers on a second
/// replica (which sees the first's events by polling).
async fn event_latency() {
    const SUBSCRIBERS: usize = 100;
    const VERIFIES: usize = 300;
    const PACE: Duration = Duration::from_millis(10);
    let admin = std::env::var("BENCH_LEDGER_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let database = BenchDatabase::create(&admin).await.map_err(|err| println!("no PostgreSQL: {err}")).ok();
    let disk = tempfile::tempdir().unwrap();
    let data_dir = format!("enabled = true\ndata_dir = {:?}\n", disk.path().display().to_string());
    let mut setups = vec![("SQLite, one replica", data_dir.clone(), None)];
    if let Some(database) = &database {
        let url = format!("enabled = true\nurl = {:?}\n", database.url);
        setups.push(("PostgreSQL, subscribers on the writing replica", url.clone(), None));
        setups.push(("PostgreSQL, subscribers on another replica", url.clone(), Some(url)));
    }
    println!("load average before (7): {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    println!(
        "\n(7) Event delivery: {SUBSCRIBERS} subscribers to one app's `claimed` events, {VERIFIES} Verifies of new purchases, one every {} ms",
        PACE.as_millis()
    );
    println!(
        "| ledger | from the Verify's answer: p50 | p99 | from its request (bounds the commit): p50 | p99 | deliveries |"
    );
    println!("|---|---|---|---|---|---|");
    for (setup, (what, ledger, other_replica)) in setups.into_iter().enumerate() {
        let (writer, _, _, _dir) = start_iapd_with_ledger(true, &ledger).await;
        let watched = match &other_replica {
            Some(ledger) => Some(start_iapd_with_ledger(true, ledger).await),
            None => None,
        };
        let watched_address = watched.as_ref().map_or(writer, |(address, ..)| *address);
        // An app of its own: the PostgreSQL setups share a database.
        let app = format!("com.example.events{}.{setup}", std::process::id());
        let mut arrivals = Vec::new();
        for index in 0..SUBSCRIBERS {
            // Four connections, as a backend's pool would have.
            if index % 25 == 0 {
                arrivals.push(PurchaseServiceClient::connect(format!("http://{watched_address}")).await.unwrap());
            }
        }
        let start_from = Instant::now();
        let mut subscribers = Vec::new();
        for index in 0..SUBSCRIBERS {
            let mut client = arrivals[index % arrivals.len()].clone();
            let request =
                pb::WatchEventsRequest { app_id: app.clone(), kinds: vec!["claimed".into()], ..Default::default() };
            let mut stream = client.watch_events(request).await.unwrap().into_inner();
            subscribers.push(tokio::spawn(async move {
                let mut seen = Vec::with_capacity(VERIFIES);
                while seen.len() < VERIFIES {
                    let event = stream.message().await.unwrap().unwrap().event.unwrap();
                    seen.push((event.user_id, start_from.elapsed()));
                }
                seen
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut client = PurchaseServiceClient::connect(format!("http://{writer}")).await.unwrap();
        let mut sent = std::collections::HashMap::new();
        for n in 0..VERIFIES {
            let mut request = fresh_request();
            request.app_id = app.clone();
            let user = request.user_id.clone();
            let asked = start_from.elapsed();
            let answer = client.verify(request).await.unwrap().into_inner();
            assert_eq!(answer.ledger.map(|entry| entry.claim()), Some(pb::Claim::New));
            sent.insert(user, (asked, start_from.elapsed()));
            tokio::time::sleep_until(tokio::time::Instant::from_std(
                start_from + Duration::from_millis(500) + PACE * (n as u32 + 1),
            ))
            .await;
        }
        let (mut from_answer, mut from_request) = (Vec::new(), Vec::new());
        for subscriber in subscribers {
            for (user, arrived) in subscriber.await.unwrap() {
                let (asked, answered) = sent[&user];
                // Before the answer reached the caller counts as no wait.
                from_answer.push(arrived.saturating_sub(answered));
                from_request.push(arrived.saturating_sub(asked));
            }
        }
        from_answer.sort();
        from_request.sort();
        let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
        println!(
            "| {what} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            ms(percentile(&from_answer, 0.5)),
            ms(percentile(&from_answer, 0.99)),
            ms(percentile(&from_request, 0.5)),
            ms(percentile(&from_request, 0.99)),
            from_answer.len()
        );
    }
}

/// An OTLP/gRPC collector that takes every export and answers it, reading
/// nothing of it: iapd's cost is measured, not a collector's, which runs on
/// the same two cores here and elsewhere in production. The bytes received.
async fn raw_collector(listener: tokio::net::TcpListener, received: Arc<std::sync::atomic::AtomicU64>) {
    while let Ok((socket, _)) = listener.accept().await {
        let received = received.clone();
        tokio::spawn(async move {
            let Ok(mut connection) = h2::server::handshake(socket).await else { return };
            while let Some(Ok((request, mut respond))) = connection.accept().await {
                let received = received.clone();
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    while let Some(Ok(chunk)) = body.data().await {
                        received.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    let head = http::Response::builder().header("content-type", "application/grpc").body(()).unwrap();
                    let Ok(mut send) = respond.send_response(head, false) else { return };
                    // An empty Export*ServiceResponse, then status OK.
                    let _ = send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false);
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                    let _ = send.send_trailers(trailers);
                });
            }
        });
    }
}

/// Verify throughput against the real binary, every request made by
/// `request` (by caller) with `key` (if any) as `authorization: Bearer`:
/// requests per second and the server's CPU per request.
async fn measure_keyed(
    server: &Iapd,
    key: Option<&str>,
    request: fn(usize) -> pb::VerifyRequest,
    seconds: u64,
) -> (f64, Duration) {
    let header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        key.map(|key| format!("Bearer {key}").parse().unwrap());
    let pid = server.child.id().to_string();
    let cpu_before = cpu_time(&pid);
    let request = move |caller| {
        let mut request = tonic::Request::new(request(caller));
        if let Some(header) = &header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        request
    };
    let (total, elapsed) = drive(server.address, seconds, request, |_| {}).await;
    let cpu = cpu_time(&pid).saturating_sub(cpu_before);
    (total as f64 / elapsed.as_secs_f64(), cpu / u32::try_from(total.max(1)).unwrap_or(u32::MAX))
}

/// A Google Play Verify of caller `index`'s own purchase.
fn google_play_request(index: usize) -> pb::VerifyRequest {
    pb::VerifyRequest {
        store: "google-play".into(),
        app_id: "com.example.game".into(),
        product_id: "coins_100".into(),
        proof: Some(pb::PurchaseProof {
            proof: Some(pb::purchase_proof::Proof::PurchaseToken(Network::GooglePlay.purchase_id(index % 64))),
            store_parameters: Default::default(),
        }),
        user_id: "user-42".into(),
    }
}

/// (8) Verify throughput with authentication and telemetry on, against the
/// same binary with both off: alternating rounds, the ledger off; once with
/// the sandbox store (an answer from memory: the worst case for any cost per
/// call) on its plugin threads, once with Google Play against its emulator.
/// "On" checks an API key on every call and exports metrics and traces (all
/// of them, or one in ten) to a collector in this process.
async fn operators() {
    const ROUNDS: usize = 15;
    const SECONDS: u64 = 1;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_address = listener.local_addr().unwrap();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn(raw_collector(listener, received.clone()));
    let (key, sha256) = iapd::auth::mint_key().unwrap();
    let tenants =
        format!("[tenants.bench]\napps = [\"com.example.game\"]\n[tenants.bench.keys.load]\nsha256 = \"{sha256}\"\n");
    // The Google Play emulator, with a purchase for each caller: concurrent
    // identical Verifies would share one request.
    let play_dir = tempfile::tempdir().unwrap();
    let (emulator, play_stores) = Network::GooglePlay.start_emulator(play_dir.path());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let (template_state, list, field, template_id) = Network::GooglePlay.template();
    let state: serde_json::Value = serde_json::from_str(template_state).unwrap();
    let template = state[list].as_array().unwrap().iter().find(|entry| entry[field] == template_id).unwrap();
    for index in 0..64 {
        let mut purchase = template.clone();
        purchase[field] = Network::GooglePlay.purchase_id(index).into();
        let added = http.post(format!("{}/emulator/v1/purchases", emulator.url())).body(purchase.to_string()).send();
        assert!(added.await.unwrap().status().is_success());
    }
    // On plugin threads, every store's default: inline calls can be moved to
    // the plugin threads mid-run when the machine preempts one (three
    // overruns of 5 ms), which would make rounds incomparable.
    let sandbox = "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\ninline_calls = false\n".to_owned();
    let mut tables = Vec::new();
    let mut dirs = Vec::new();
    for (name, stores, request) in [
        ("the sandbox store", sandbox, public_request_of as fn(usize) -> pb::VerifyRequest),
        ("Google Play, against its emulator", play_stores, google_play_request),
    ] {
        let mut start = |rest: &str| {
            let (config, dir) = config_file(&format!("{stores}\n{rest}"));
            dirs.push(dir);
            Iapd::start(&config, "info")
        };
        let telemetry = |ratio: f64| {
            format!(
                "{tenants}\n[telemetry]\notlp_endpoint = \"http://{collector_address}\"\nexport_interval_ms = 1000\ntrace_sample_ratio = {ratio:?}\n"
            )
        };
        let servers = [start(""), start(&tenants), start(&telemetry(1.0)), start(&telemetry(0.1))];
        let keys = [None, Some(key.as_str()), Some(key.as_str()), Some(key.as_str())];
        let profiled = std::env::var("BENCH_PROFILE_OPERATORS_STORE").map_or(true, |wanted| stores.contains(&wanted));
        let profile = std::env::var("BENCH_PROFILE_OPERATORS_SECONDS");
        if profile.is_ok() && !profiled {
            continue;
        }
        if let Ok(seconds) = profile {
            // Load on the server with both on alone, for a profiler (`perf record -p <pid>`);
            // BENCH_PROFILE_OPERATORS_STORE=google-play skips to that store.
            eprintln!("profiling iapd with key and telemetry: pid {}", servers[2].child.id());
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (rps, cpu) = measure_keyed(&servers[2], keys[2], request, seconds.parse().unwrap_or(10)).await;
            println!("{rps:.0} req/s, {cpu:?} of iapd's CPU per request");
            return;
        }
        for (server, key) in servers.iter().zip(keys) {
            let _ = measure_keyed(server, key, request, 1).await; // warm up
        }
        let mut rates = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        let mut cpu = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..ROUNDS {
            for (index, (server, key)) in servers.iter().zip(keys).enumerate() {
                let (rps, cpu_per_call) = measure_keyed(server, key, request, SECONDS).await;
                rates[index].push(rps);
                cpu[index].push(cpu_per_call);
            }
        }
        let median_cpu = |samples: &mut Vec<Duration>| {
            samples.sort();
            samples[samples.len() / 2].as_secs_f64() * 1e6
        };
        let [off_cpu, auth_cpu, on_cpu, sampled_cpu] = cpu.map(|mut samples| median_cpu(&mut samples));
        tables.push((name, rates, [off_cpu, auth_cpu, on_cpu, sampled_cpu]));
    }
    println!(
        "\n(8) Verify throughput with authentication and telemetry, 64 callers over 4 connections, {ROUNDS} rounds of {SECONDS} s"
    );
    println!("| store, server | off (req/s) | on (req/s) | ratio, median round | ratio range | CPU ratio |");
    println!("|---|---|---|---|---|---|");
    for (name, rates, [off_cpu, auth_cpu, on_cpu, sampled_cpu]) in &tables {
        report_ratios(&format!("{name}: API key checked on every call"), &rates[0], &rates[1], off_cpu / auth_cpu);
        report_ratios(
            &format!("{name}: API key, metrics and every trace exported"),
            &rates[0],
            &rates[2],
            off_cpu / on_cpu,
        );
        report_ratios(
            &format!("{name}: API key, metrics and one trace in 10 exported"),
            &rates[0],
            &rates[3],
            off_cpu / sampled_cpu,
        );
        println!(
            "{name}: iapd's CPU per request (medians): off {off_cpu:.1} µs, key {auth_cpu:.1} µs, every trace {on_cpu:.1} µs, one in 10 {sampled_cpu:.1} µs"
        );
    }
    println!("OTLP bytes received: {}", received.load(std::sync::atomic::Ordering::Relaxed));
}
