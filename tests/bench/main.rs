//! iapd's benchmarks. Not timed tests: each compares against a baseline
//! measured in the same run, on the same machine, and prints the numbers
//! that BENCHMARKS.md records.
//!
//! Run: `cargo build --release --workspace && cargo bench --features bench-internals --bench bench`
//! (`... --bench bench -- abi|throughput|concurrency` runs one.)

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
}

/// The folder of the release build, where the plugins are.
fn build_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iapd")).parent().unwrap().to_owned()
}

fn config(stores: &str) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iapd.toml");
    // The ledger has a benchmark of its own; these measure the path without it.
    let text =
        format!("[plugins]\ndir = {:?}\n\n{stores}\n[ledger]\nenabled = false\n", build_dir().display().to_string());
    std::fs::write(&path, text).unwrap();
    (Config::load(&Sources { file: Some(path) }).expect("config (build the plugins with --release first)"), dir)
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

/// CPU time this process has used (user + system), from /proc.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
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
    const CONNECTIONS: usize = 4;
    const WORKERS: usize = 64;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(PurchaseServiceClient::connect(format!("http://{address}")).await.unwrap());
    }
    let stop = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let cpu_before = process_cpu();
    let workers: Vec<_> = (0..WORKERS)
        .map(|index| {
            let mut client = clients[index % CONNECTIONS].clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < stop {
                    client.verify(public_request()).await.unwrap();
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
    let cpu = process_cpu().saturating_sub(cpu_before);
    (total as f64 / started.elapsed().as_secs_f64(), cpu / u32::try_from(total.max(1)).unwrap_or(u32::MAX))
}

/// Starts iapd in this process with the sandbox store; returns its address
/// and a canned answer for the bare handler.
async fn start_iapd(
    inline_calls: bool,
) -> (std::net::SocketAddr, pb::VerifyResponse, Arc<PluginHost>, tempfile::TempDir) {
    let threads = std::env::var("BENCH_PLUGIN_THREADS").unwrap_or_else(|_| "2".into());
    let (config, dir) = config(&format!(
        "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\nplugin_threads = {threads}\ninline_calls = {inline_calls}\n"
    ));
    let host = Arc::new(PluginHost::start(&config).await.unwrap());
    assert_eq!(host.store("sandbox").unwrap().calls_inline(), inline_calls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(iapd::serve(listener, config, host.clone(), std::future::pending()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut client = PurchaseServiceClient::connect(format!("http://{address}")).await.unwrap();
    (address, client.verify(public_request()).await.unwrap().into_inner(), host, dir)
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
    for _ in 0..ROUNDS {
        for (index, (address, rates)) in
            [(bare_address, &mut bare), (inline_address, &mut inline), (threads_address, &mut threads)]
                .into_iter()
                .enumerate()
        {
            let (rps, cpu_per_call) = measure_rps(address, SECONDS).await;
            rates.push(rps);
            cpu[index].push(cpu_per_call);
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
    let sandbox = inline_host.store("sandbox").unwrap();
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
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("iapd.toml");
    std::fs::write(
        &config_path,
        format!(
            "[server]\nmax_concurrent_requests = 20000\n\n[plugins]\ndir = {:?}\n\n[stores.slow]\nplugin = \"iapd_test_plugin_faulty\"\nallowed_origins = [\"http://{slow}\"]\nmax_in_flight = 20000\n\n[ledger]\nenabled = false\n",
            build_dir().display().to_string()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_iapd"))
        .args(["--config", &config_path.display().to_string(), "serve", "--listen", "127.0.0.1:0"])
        .env("IAPD_LOG", "warn,iapd::service=info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let address = {
        use std::io::BufRead;
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut lines = stderr.lines();
        let address = loop {
            let line = lines.next().expect("iapd exited").unwrap();
            if let Some(rest) = line.split("address=").nth(1) {
                break rest.split_whitespace().next().unwrap().parse::<std::net::SocketAddr>().unwrap();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        address
    };
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
    let _ = child.kill();
    let _ = child.wait();
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
