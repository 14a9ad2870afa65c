//! `iapd-emulator`: runs a store emulator on its own, so a plugin (or iapd
//! with it) can be tried without the store.
//!
//! ```text
//! iapd-emulator google-play --listen 127.0.0.1:8095
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use iapd_emulators::Emulator;
use iapd_emulators::amazon::{self, Amazon};
use iapd_emulators::app_store::{self, AppStore};
use iapd_emulators::cafe_bazaar::{self, CafeBazaar};
use iapd_emulators::google_play::{self, GooglePlay};
use iapd_emulators::huawei::{self, Huawei};
use iapd_emulators::microsoft_store::{self, MicrosoftStore};
use iapd_emulators::samsung::{self, Samsung};

/// The test-only key every Google Play emulator trusts unless told otherwise
/// (made by `tests/fixtures/google-play/make-keys.sh`).
const FIXTURE_KEY: &str = include_str!("../../fixtures/google-play/service-account.json");

#[derive(Parser)]
#[command(name = "iapd-emulator", about = "Store API emulators for trying iapd's store plugins")]
struct Cli {
    #[command(subcommand)]
    store: Store,
}

#[derive(Subcommand)]
enum Store {
    /// The Google Play Developer API (Android Publisher v3) and its OAuth token endpoint.
    GooglePlay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8095")]
        listen: SocketAddr,
        /// A state file (apps, catalogs, purchases); the built-in demo state if absent.
        #[arg(long)]
        state: Option<PathBuf>,
        /// A service-account JSON key to trust (repeatable); the test fixture key if absent.
        #[arg(long = "service-account")]
        service_accounts: Vec<PathBuf>,
    },
    /// The Cafe Bazaar Developer API v2 and its OAuth token endpoint.
    CafeBazaar {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8096")]
        listen: SocketAddr,
        /// A state file (OAuth clients, apps, purchases); the built-in demo state if absent.
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Samsung's Galaxy Store receipt, access token, purchase acknowledgment and item APIs, and the
    /// legacy Tizen Store ticket check.
    Samsung {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8097")]
        listen: SocketAddr,
        /// A state file (service accounts, apps, receipts, Tizen tickets); the built-in demo state if absent.
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// The Microsoft Store's Entra token endpoint, collections query and consume, recurrences and
    /// Store ID key renewal; POST /emulator/v1/keys stands in for the Windows client.
    #[command(name = "microsoft-store")]
    Microsoft {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8101")]
        listen: SocketAddr,
        /// A state file (Entra clients, accounts and their items); the built-in demo state if absent.
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// The App Store Server API (production, and the sandbox under /sandbox) and verifyReceipt,
    /// signing transactions with a certificate chain of its own.
    #[command(name = "app-store")]
    Apple {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8098")]
        listen: SocketAddr,
        /// A state file (bundle ids, api keys, transactions, receipts); the built-in demo state if absent.
        #[arg(long)]
        state: Option<PathBuf>,
        /// Writes the root certificate (PEM) verifiers must trust to this file.
        #[arg(long)]
        root_out: Option<PathBuf>,
    },
    /// The Amazon Appstore's Receipt Verification Service (production, and the RVS Cloud Sandbox
    /// under /sandbox).
    Amazon {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8102")]
        listen: SocketAddr,
        /// A state file (shared secrets, receipts); the built-in demo state if absent.
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Huawei AppGallery's IAP server APIs (OAuth token, order and subscription services) and the
    /// AppGallery Connect product API, signing purchase data with a test IAP key.
    Huawei {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8103")]
        listen: SocketAddr,
        /// A state file (apps, Connect API clients, purchases); the built-in demo state if absent.
        #[arg(long)]
        state: Option<PathBuf>,
        /// The IAP private key (PKCS#8 PEM) to sign with; the test fixture key if absent.
        #[arg(long)]
        signing_key: Option<PathBuf>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let (name, listen, emulator): (&str, SocketAddr, Arc<dyn Emulator>) = match Cli::parse().store {
        Store::GooglePlay { listen, state, service_accounts } => {
            let seed = parse_state(state.as_deref(), google_play::DEFAULT_STATE)?;
            let emulator = GooglePlay::new(seed);
            let keys = if service_accounts.is_empty() {
                vec![FIXTURE_KEY.to_owned()]
            } else {
                service_accounts.iter().map(|path| read(path)).collect::<anyhow::Result<_>>()?
            };
            for key in &keys {
                emulator.add_service_account(key).map_err(anyhow::Error::msg)?;
            }
            ("google play", listen, Arc::new(emulator))
        }
        Store::CafeBazaar { listen, state } => {
            let seed = parse_state(state.as_deref(), cafe_bazaar::DEFAULT_STATE)?;
            ("cafe bazaar", listen, Arc::new(CafeBazaar::new(seed)))
        }
        Store::Samsung { listen, state } => {
            let seed = parse_state(state.as_deref(), samsung::DEFAULT_STATE)?;
            ("samsung", listen, Arc::new(Samsung::new(seed).map_err(anyhow::Error::msg)?))
        }
        Store::Microsoft { listen, state } => {
            let seed = parse_state(state.as_deref(), microsoft_store::DEFAULT_STATE)?;
            ("microsoft store", listen, Arc::new(MicrosoftStore::new(seed).map_err(anyhow::Error::msg)?))
        }
        Store::Apple { listen, state, root_out } => {
            let seed = parse_state(state.as_deref(), app_store::DEFAULT_STATE)?;
            let emulator = AppStore::new(seed).map_err(anyhow::Error::msg)?;
            if let Some(path) = root_out {
                std::fs::write(&path, emulator.root_pem())
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("app store emulator root certificate written to {}", path.display());
            }
            ("app store", listen, Arc::new(emulator))
        }
        Store::Amazon { listen, state } => {
            let seed = parse_state(state.as_deref(), amazon::DEFAULT_STATE)?;
            ("amazon", listen, Arc::new(Amazon::new(seed)))
        }
        Store::Huawei { listen, state, signing_key } => {
            let seed = parse_state(state.as_deref(), huawei::DEFAULT_STATE)?;
            let key = match signing_key {
                Some(path) => read(&path)?,
                None => huawei::FIXTURE_SIGNING_KEY.to_owned(),
            };
            ("huawei", listen, Arc::new(Huawei::new(seed, &key).map_err(anyhow::Error::msg)?))
        }
    };
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("{name} emulator listening on http://{}", listener.local_addr()?);
    iapd_emulators::serve(listener, emulator, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await;
    Ok(())
}

fn read(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A state file, or the emulator's built-in demo state.
fn parse_state<T: serde::de::DeserializeOwned>(path: Option<&std::path::Path>, default: &str) -> anyhow::Result<T> {
    let text = match path {
        Some(path) => read(path)?,
        None => default.to_owned(),
    };
    serde_json::from_str(&text).context("not a state file of this emulator")
}
