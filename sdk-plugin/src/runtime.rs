//! Drives plugin futures without an async runtime of its own.
//!
//! Each accepted call gets one task: a boxed future plus a small state machine.
//! The task is polled on whichever host thread wakes it (the thread that
//! started the call, or the one delivering an HTTP or timer answer). The state
//! machine makes sure only one thread polls at a time and that a wake arriving
//! during a poll leads to another poll, so no wake is lost.

use std::collections::HashMap;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};

use prost::Message;

use crate::abi::{self, method};
use crate::error::PluginError;
use crate::{Ctx, HostServices, Store, proto};

type CallFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, PluginError>> + Send>>;

/// Deserializes the store's `[stores.<id>.config]` table, naming the field
/// that is wrong by its key, `stores.<id>.config.retry.max_attempts`.
fn parse_config<C: serde::de::DeserializeOwned>(config: &proto::PluginConfig) -> Result<C, PluginError> {
    let key = |path: &str| format!("config key `stores.{}.config{path}`", config.store_id);
    let json = if config.config_json.trim().is_empty() { "{}" } else { &config.config_json };
    let table: serde_json::Value = serde_json::from_str(json)
        .map_err(|err| PluginError::invalid_argument(format!("{}: not json: {err}", key(""))))?;
    // From a `Value`, serde_json's errors carry no line and column: those
    // would point into the JSON the host made, not the operator's TOML.
    serde_path_to_error::deserialize(table).map_err(|err| {
        let path = match err.path().iter().next() {
            None => String::new(),
            Some(_) => format!(".{}", err.path()),
        };
        PluginError::invalid_argument(format!("{}: {}", key(&path), err.inner()))
    })
}

/// One plugin instance: the store and its calls in flight.
pub(crate) struct Runtime<S: Store> {
    store: Arc<S>,
    host: Arc<dyn HostServices>,
    calls: Arc<CallTable>,
}

type CallTable = Mutex<HashMap<u64, Arc<Task>>>;

impl<S: Store> Runtime<S> {
    pub(crate) fn new(config: &proto::PluginConfig, host: Arc<dyn HostServices>) -> Result<Self, PluginError> {
        let store_config = parse_config::<S::Config>(config)?;
        let init = crate::InitContext { store_id: config.store_id.clone(), host: host.clone() };
        let store = S::new(store_config, &init)?;
        Ok(Runtime { store: Arc::new(store), host, calls: Arc::default() })
    }

    /// Starts a call. `Err` means the call was refused and no completion
    /// follows; `Ok` means exactly one completion follows.
    pub(crate) fn start_call(&self, call_id: u64, method_name: &str, request: &[u8]) -> Result<(), PluginError> {
        let cx = Ctx { call_id, host: self.host.clone() };
        let store = self.store.clone();
        let future: CallFuture = match method_name {
            method::VERIFY => {
                let request = proto::VerifyRequest::decode(request)?;
                Box::pin(async move { Ok(store.verify(&cx, request).await?.encode_to_vec()) })
            }
            method::ACKNOWLEDGE => {
                let request = proto::AcknowledgeRequest::decode(request)?;
                Box::pin(async move { Ok(store.acknowledge(&cx, request).await?.encode_to_vec()) })
            }
            method::CONSUME => {
                let request = proto::ConsumeRequest::decode(request)?;
                Box::pin(async move { Ok(store.consume(&cx, request).await?.encode_to_vec()) })
            }
            method::LIST_ITEMS => {
                let request = proto::ListItemsRequest::decode(request)?;
                Box::pin(async move { Ok(store.list_items(&cx, request).await?.encode_to_vec()) })
            }
            other => return Err(PluginError::unimplemented(format!("unknown method `{other}`"))),
        };
        let task = Arc::new(Task {
            call_id,
            state: AtomicU8::new(IDLE),
            future: Mutex::new(Some(future)),
            completed: AtomicBool::new(false),
            host: self.host.clone(),
            calls: Arc::downgrade(&self.calls),
        });
        lock(&self.calls).insert(call_id, task.clone());
        task.run();
        Ok(())
    }

    /// Drops the call's future and completes it as cancelled, unless it has
    /// completed already.
    pub(crate) fn cancel(&self, call_id: u64) {
        let task = lock(&self.calls).remove(&call_id);
        if let Some(task) = task {
            let future = lock(&task.future).take();
            drop_quietly(future);
            task.finish(Err(PluginError::new(crate::Code::Cancelled, "call cancelled by the host")));
        }
    }

    /// Calls started and not yet completed.
    pub(crate) fn calls_in_flight(&self) -> usize {
        lock(&self.calls).len()
    }
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const NOTIFIED: u8 = 2;
const DONE: u8 = 3;

struct Task {
    call_id: u64,
    state: AtomicU8,
    future: Mutex<Option<CallFuture>>,
    completed: AtomicBool,
    host: Arc<dyn HostServices>,
    calls: Weak<CallTable>,
}

impl Task {
    fn run(self: &Arc<Self>) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let next = match current {
                IDLE => POLLING,
                POLLING => NOTIFIED,
                _ => return,
            };
            match self.state.compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if next == NOTIFIED => return, // the polling thread polls again
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        loop {
            let mut slot = lock(&self.future);
            let Some(future) = slot.as_mut() else {
                self.state.store(DONE, Ordering::Release);
                return;
            };
            // The future is dropped right after a panic, so no broken
            // invariant inside it is observed again.
            let polled = catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
            let result = match polled {
                Ok(Poll::Pending) => None,
                Ok(Poll::Ready(result)) => Some(result),
                Err(panic) => Some(Err(panicked(&*panic))),
            };
            if let Some(result) = result {
                let future = slot.take();
                drop(slot);
                drop_quietly(future);
                self.state.store(DONE, Ordering::Release);
                self.finish(result);
                return;
            }
            drop(slot);
            match self.state.compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(_) => self.state.store(POLLING, Ordering::Release), // woken during the poll
            }
        }
    }

    /// Completes the call once; later attempts are ignored.
    fn finish(&self, result: Result<Vec<u8>, PluginError>) {
        if self.completed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(calls) = self.calls.upgrade() {
            lock(&calls).remove(&self.call_id);
        }
        match result {
            Ok(payload) => self.host.complete(self.call_id, abi::status::OK, &payload),
            Err(err) => {
                let payload = err.to_proto().encode_to_vec();
                self.host.complete(self.call_id, err.code().to_status(), &payload)
            }
        }
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.run();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.run();
    }
}

/// Turns a panic payload into the error the call completes with.
pub(crate) fn panicked(payload: &(dyn std::any::Any + Send)) -> PluginError {
    let detail = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_owned());
    PluginError::internal(format!("plugin panicked: {detail}")).with_reason("PLUGIN_PANICKED")
}

fn drop_quietly<T>(value: T) {
    // A destructor that panics must not unwind into the host either.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(value)));
}

/// Locks ignoring poison: every critical section here leaves its data valid.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
