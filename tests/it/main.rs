#![allow(unreachable_pub, clippy::unwrap_used)] // test code: panicking on a broken expectation is the point

//! Integration tests: one binary, one module per topic, shared helpers in
//! `support`. Most tests run the real `iapd` binary with the real plugin
//! libraries (built by `cargo build --workspace`) on a free port.

mod abi; // plugins in C and misbehaving plugins: loading, refusals, panics, allowlist, deadlines
mod amazon; // the Amazon plugin in the real binary against its emulator, a log scan for its secret, the README's Amazon walkthrough
mod api; // every RPC through a tonic client against the sandbox store
mod app_store; // the App Store plugin in the real binary against its emulator, and Apple's Python library
mod auth; // API keys and tenants on every RPC, health and reflection, TLS and mutual TLS from grpcurl, certificate reload
mod cafe_bazaar; // the Cafe Bazaar plugin in the real binary against its emulator
pub(crate) mod clients; // clients made from proto/ in Python, Go and Node, reading error details
mod config; // configuration errors, env overrides, check-config, plugins
mod google_play; // the Google Play plugin in the real binary against the emulator, and Google's Python client
mod grpcurl; // the README's grpcurl examples, reflection and health, run literally
mod huawei; // the Huawei plugin in the real binary against its emulator, and the README's Huawei walkthrough
mod in_process; // the server as a library: serve() on port 0 with a shutdown future
mod invariants; // architecture invariants from ARCHITECTURE.md
mod ledger; // the ledger on SQLite and PostgreSQL: claims, replays, kill -9, two replicas, a lost database
mod microsoft_store; // the Microsoft Store plugin in the real binary against its emulator, and the README's walkthrough
mod proto_lint; // buf lint on the public API
mod samsung; // the Samsung plugin in the real binary against its emulator, and the README's Samsung walkthrough
mod support;
mod telemetry; // OTLP export to an in-process collector: one Verify's span tree against Google Play, its metrics
mod transport;
mod trouble; // stores under trouble: one at its bulkhead beside one answering, health per store, circuit breaking // connections and the call contract under hostile clients, over raw HTTP/2
