//! The C side of the SDK: the exported shims and the host table wrapper. All
//! of the SDK's `unsafe` code is in this module.
//!
//! Every `extern "C"` function here catches panics: since Rust 1.81 a panic
//! unwinding out of one aborts the process, which would take the server down.

use std::ffi::{CStr, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};

use prost::Message;

use crate::abi::{self, Bytes, BytesSink, HostApi, Instance, PluginDescriptor, status};
use crate::runtime::{Runtime, panicked};
use crate::{HostServices, HttpCallback, PluginError, Store, TimerCallback, proto};

// SAFETY: a descriptor is immutable static data: integers, pointers to static
// NUL-terminated strings and function pointers. Nothing writes to it after
// construction, so sharing it between threads is sound.
unsafe impl Sync for PluginDescriptor {}

/// Exports a [`Store`] as an iapd plugin: generates the `iapd_plugin_v1`
/// entry symbol and the guarded shims behind it. Call it once per crate.
#[macro_export]
macro_rules! export_store {
    ($store:ty) => {
        /// The iapd plugin ABI v1 entry point.
        #[unsafe(no_mangle)]
        pub extern "C" fn iapd_plugin_v1() -> *const $crate::abi::PluginDescriptor {
            static DESCRIPTOR: $crate::abi::PluginDescriptor =
                $crate::ffi::descriptor::<$store>($crate::ffi::cstr(concat!(env!("CARGO_PKG_VERSION"), "\0")));
            &DESCRIPTOR
        }
    };
}

/// Builds the descriptor for `S`; used by [`crate::export_store!`].
pub const fn descriptor<S: Store>(version: &'static CStr) -> PluginDescriptor {
    let panic_guarded = if cfg!(panic = "unwind") { abi::FLAG_PANIC_GUARDED } else { 0 };
    let nonblocking = if S::NONBLOCKING_CALL { abi::FLAG_NONBLOCKING_CALL } else { 0 };
    PluginDescriptor {
        magic: abi::PLUGIN_MAGIC,
        abi_major: abi::ABI_MAJOR,
        abi_minor: abi::ABI_MINOR,
        struct_size: abi::DESCRIPTOR_SIZE_1_0,
        min_host_minor: 0,
        flags: abi::FLAG_THREAD_SAFE | panic_guarded | nonblocking,
        name: S::NAME.as_ptr(),
        version: version.as_ptr(),
        build_info: cstr(crate::BUILD_INFO).as_ptr(),
        capabilities: S::CAPABILITIES,
        describe: Some(describe::<S>),
        instance_new: Some(instance_new::<S>),
        instance_drop: Some(instance_drop::<S>),
        call: Some(call::<S>),
        cancel: Some(cancel::<S>),
    }
}

/// A `&'static CStr` from a string literal ending in `\0`, at compile time.
pub const fn cstr(with_nul: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(with_nul.as_bytes()) {
        Ok(value) => value,
        Err(_) => panic!("string must end with exactly one NUL"),
    }
}

/// Runs `body`, turning a panic into `INTERNAL`.
fn guard(body: impl FnOnce() -> abi::Status) -> abi::Status {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(status::INTERNAL)
}

/// Views borrowed bytes as a slice.
///
/// # Safety
/// `bytes.ptr` must point to `bytes.len` readable bytes (or be anything when
/// `len` is 0) for the lifetime `'a`.
unsafe fn slice<'a>(bytes: Bytes) -> &'a [u8] {
    if bytes.len == 0 || bytes.ptr.is_null() {
        return &[];
    }
    // SAFETY: the caller guarantees `ptr` is valid for `len` bytes for `'a`.
    unsafe { std::slice::from_raw_parts(bytes.ptr, bytes.len) }
}

/// Calls a sink with borrowed bytes.
///
/// # Safety
/// `sink` and `ud` must be the pair the host passed.
unsafe fn emit(sink: BytesSink, ud: *mut c_void, data: &[u8]) {
    if let Some(sink) = sink {
        // SAFETY: the host's sink accepts a view valid during this call; `data`
        // outlives it.
        unsafe { sink(ud, Bytes::borrow(data)) }
    }
}

unsafe extern "C" fn describe<S: Store>(sink: BytesSink, ud: *mut c_void) -> abi::Status {
    guard(|| {
        let info = crate::described::<S>().encode_to_vec();
        // SAFETY: `sink`/`ud` come from the host for this call.
        unsafe { emit(sink, ud, &info) };
        status::OK
    })
}

unsafe extern "C" fn instance_new<S: Store>(
    host: *const HostApi,
    config_pb: Bytes,
    out: *mut *mut Instance,
    err_sink: BytesSink,
    err_ud: *mut c_void,
) -> abi::Status {
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<*mut Instance, PluginError> {
        // SAFETY: the host passes a table valid until instance_drop returns.
        let host = unsafe { FfiHost::new(host) }?;
        // SAFETY: `config_pb` is valid for the duration of this call.
        let config = proto::PluginConfig::decode(unsafe { slice(config_pb) })?;
        let host: Arc<dyn HostServices> = Arc::new(host);
        install_logger(&host);
        let runtime = Runtime::<S>::new(&config, host)?;
        Ok(Box::into_raw(Box::new(runtime)).cast::<Instance>())
    }))
    .unwrap_or_else(|panic| Err(panicked(&*panic)));
    match result {
        Ok(instance) if !out.is_null() => {
            // SAFETY: `out` is non-null and points to writable storage.
            unsafe { *out = instance };
            status::OK
        }
        Ok(instance) => {
            // SAFETY: `instance` came from Box::into_raw just above.
            drop(unsafe { Box::from_raw(instance.cast::<Runtime<S>>()) });
            status::INVALID_ARGUMENT
        }
        Err(err) => {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: the host's error sink for this call.
                unsafe { emit(err_sink, err_ud, &err.to_proto().encode_to_vec()) }
            }));
            err.code().to_status()
        }
    }
}

unsafe extern "C" fn instance_drop<S: Store>(instance: *mut Instance) {
    if instance.is_null() {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `instance` came from instance_new's Box::into_raw and the host
        // drops it once, after every call completed.
        drop(unsafe { Box::from_raw(instance.cast::<Runtime<S>>()) });
    }));
}

unsafe extern "C" fn call<S: Store>(
    instance: *mut Instance,
    call_id: u64,
    method: Bytes,
    request_pb: Bytes,
) -> abi::Status {
    guard(|| {
        // SAFETY: the host passes an instance from instance_new, alive until
        // instance_drop.
        let Some(runtime) = (unsafe { instance.cast::<Runtime<S>>().as_ref() }) else {
            return status::INVALID_ARGUMENT;
        };
        // SAFETY: both views are valid for the duration of this call; the
        // runtime copies what it keeps.
        let (method, request) = unsafe { (slice(method), slice(request_pb)) };
        let Ok(method) = std::str::from_utf8(method) else {
            return status::UNIMPLEMENTED;
        };
        match runtime.start_call(call_id, method, request) {
            Ok(()) => status::OK,
            Err(err) => err.code().to_status(),
        }
    })
}

unsafe extern "C" fn cancel<S: Store>(instance: *mut Instance, call_id: u64) {
    guard(|| {
        // SAFETY: as in `call`.
        if let Some(runtime) = unsafe { instance.cast::<Runtime<S>>().as_ref() } {
            runtime.cancel(call_id);
        }
        status::OK
    });
}

/// The host's table, checked once at instance creation.
struct FfiHost {
    api: *const HostApi,
}

// SAFETY: the ABI requires the host table to be usable from any thread
// concurrently (rule 6 of the header) and valid until instance_drop.
unsafe impl Send for FfiHost {}
// SAFETY: see `Send`; the table is never written through this pointer.
unsafe impl Sync for FfiHost {}

impl FfiHost {
    /// # Safety
    /// `api` must be null or point to a host table valid until instance_drop.
    unsafe fn new(api: *const HostApi) -> Result<FfiHost, PluginError> {
        // SAFETY: the caller guarantees validity when non-null.
        let Some(table) = (unsafe { api.as_ref() }) else {
            return Err(PluginError::invalid_argument("host table is null"));
        };
        if table.abi_major != abi::ABI_MAJOR || table.struct_size < abi::HOST_API_SIZE_1_0 {
            return Err(PluginError::failed_precondition(format!(
                "host table is abi {}.{} with size {}; this plugin needs abi {}.x with size >= {}",
                table.abi_major,
                table.abi_minor,
                table.struct_size,
                abi::ABI_MAJOR,
                abi::HOST_API_SIZE_1_0
            )));
        }
        let complete = [
            table.log.is_some(),
            table.log_max_level.is_some(),
            table.now_unix_millis.is_some(),
            table.monotonic_nanos.is_some(),
            table.get_secret.is_some(),
            table.http_send.is_some(),
            table.timer_start.is_some(),
            table.complete.is_some(),
        ];
        if complete.contains(&false) {
            return Err(PluginError::failed_precondition("host table lacks a 1.0 function"));
        }
        Ok(FfiHost { api })
    }

    fn table(&self) -> &HostApi {
        // SAFETY: checked non-null in `new`; valid until instance_drop, which
        // cannot run while a method of this instance is running.
        unsafe { &*self.api }
    }
}

macro_rules! host_fn {
    ($table:expr, $name:ident) => {
        // Checked present in FfiHost::new.
        $table.$name.expect(concat!("host table checked for ", stringify!($name)))
    };
}

impl HostServices for FfiHost {
    fn log_max_level(&self) -> u32 {
        let table = self.table();
        // SAFETY: a 1.0 host function, called with the host's own pointer.
        unsafe { host_fn!(table, log_max_level)(table.host) }
    }

    fn log(&self, level: u32, target: &str, message: &str, call_id: u64) {
        let table = self.table();
        // SAFETY: as above; the views outlive the call.
        unsafe {
            host_fn!(table, log)(
                table.host,
                level,
                Bytes::borrow(target.as_bytes()),
                Bytes::borrow(message.as_bytes()),
                call_id,
            )
        }
    }

    fn now_unix_millis(&self) -> i64 {
        let table = self.table();
        // SAFETY: a 1.0 host function, called with the host's own pointer.
        unsafe { host_fn!(table, now_unix_millis)(table.host) }
    }

    fn secret(&self, name: &str) -> Option<Vec<u8>> {
        unsafe extern "C" fn copy_into(ud: *mut c_void, data: Bytes) {
            let _ = catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: `ud` is the `Option<Vec<u8>>` below, alive during
                // get_secret; `data` is valid during this call.
                unsafe { *ud.cast::<Option<Vec<u8>>>() = Some(slice(data).to_vec()) }
            }));
        }
        let table = self.table();
        let mut value: Option<Vec<u8>> = None;
        // SAFETY: the sink writes into `value`, which outlives the call.
        let found = unsafe {
            host_fn!(table, get_secret)(
                table.host,
                Bytes::borrow(name.as_bytes()),
                Some(copy_into),
                (&raw mut value).cast::<c_void>(),
            )
        };
        if found == status::OK { value } else { None }
    }

    fn http_send(&self, call_id: u64, request: &[u8], done: HttpCallback) -> abi::Status {
        unsafe extern "C" fn on_done(ud: *mut c_void, status: abi::Status, response: Bytes) {
            // SAFETY: `ud` is the Box leaked below; the host calls `done`
            // exactly once, so it is reclaimed exactly once.
            let done = unsafe { Box::from_raw(ud.cast::<HttpCallback>()) };
            // SAFETY: `response` is valid during this call.
            let response = unsafe { slice(response) };
            let _ = catch_unwind(AssertUnwindSafe(|| done(status, response)));
        }
        let table = self.table();
        let ud = Box::into_raw(Box::new(done)).cast::<c_void>();
        // SAFETY: a 1.0 host function; `request` outlives the call.
        let accepted =
            unsafe { host_fn!(table, http_send)(table.host, call_id, Bytes::borrow(request), Some(on_done), ud) };
        if accepted != status::OK {
            // SAFETY: refused, so the host will never call `on_done`; reclaim.
            drop(unsafe { Box::from_raw(ud.cast::<HttpCallback>()) });
        }
        accepted
    }

    fn timer_start(&self, call_id: u64, delay_millis: u64, done: TimerCallback) -> abi::Status {
        unsafe extern "C" fn on_done(ud: *mut c_void, status: abi::Status) {
            // SAFETY: as in http_send: reclaimed exactly once.
            let done = unsafe { Box::from_raw(ud.cast::<TimerCallback>()) };
            let _ = catch_unwind(AssertUnwindSafe(|| done(status)));
        }
        let table = self.table();
        let ud = Box::into_raw(Box::new(done)).cast::<c_void>();
        // SAFETY: a 1.0 host function.
        let accepted = unsafe { host_fn!(table, timer_start)(table.host, call_id, delay_millis, Some(on_done), ud) };
        if accepted != status::OK {
            // SAFETY: refused, so `on_done` never runs; reclaim.
            drop(unsafe { Box::from_raw(ud.cast::<TimerCallback>()) });
        }
        accepted
    }

    fn complete(&self, call_id: u64, status: abi::Status, payload: &[u8]) {
        let table = self.table();
        // SAFETY: a 1.0 host function; `payload` outlives the call.
        unsafe { host_fn!(table, complete)(table.host, call_id, status, Bytes::borrow(payload)) }
    }
}

/// Forwards the `log` facade of this library to the first instance's host,
/// since the library has its own copy of `log`'s global logger.
fn install_logger(host: &Arc<dyn HostServices>) {
    static HOST: OnceLock<Arc<dyn HostServices>> = OnceLock::new();
    struct Bridge;
    impl log::Log for Bridge {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            HOST.get().is_some_and(|host| metadata.level() as u32 <= host.log_max_level())
        }
        fn log(&self, record: &log::Record<'_>) {
            if let Some(host) = HOST.get().filter(|_| self.enabled(record.metadata())) {
                host.log(record.level() as u32, record.target(), &record.args().to_string(), 0);
            }
        }
        fn flush(&self) {}
    }
    if HOST.set(host.clone()).is_ok() && log::set_logger(&Bridge).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}
