//! The host's side of the C ABI: opening libraries, reading descriptors,
//! calling entry points, and the `extern "C"` host callbacks. All of the
//! host's `unsafe` code is in this module; everything it calls is safe.
//!
//! Libraries are opened with `RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE` and never
//! closed: unloading Rust code with thread-locals is unsound, so the handle is
//! leaked on purpose and every `'static` below relies on that.

use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use iapd_sdk_plugin::abi::{self, Bytes, BytesSink, Host, HostApi, Instance, PluginDescriptor, status};
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

use super::context::HostContext;
use super::load::{DescriptorInfo, LoadError, check_descriptor};

/// The longest byte view the host accepts from a plugin; a longer one is
/// treated as malformed instead of being read.
const MAX_VIEW_BYTES: usize = 64 * 1024 * 1024;

/// A loaded plugin's descriptor. Valid forever: the library is never unloaded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Descriptor(&'static PluginDescriptor);

// SAFETY: the descriptor is immutable static data of a library that is never
// unloaded, and the ABI requires its entry points to be callable from any
// thread (IAPD_FLAG_THREAD_SAFE, checked before use).
unsafe impl Send for Descriptor {}
// SAFETY: see Send.
unsafe impl Sync for Descriptor {}

/// Opens the library (running its initializers) and calls its entry symbol.
/// Call only after `load::check_symbols` accepted the file.
pub(crate) fn open(path: &Path) -> Result<(Descriptor, DescriptorInfo), LoadError> {
    let flags = RTLD_NOW | RTLD_LOCAL | libc::RTLD_NODELETE;
    // SAFETY: loading runs the library's initializers; the file is in the
    // operator's plugins folder and exports this major's entry symbol.
    // Termination routines never run because the library is never closed.
    let library = unsafe { Library::open(Some(path), flags) }
        .map_err(|err| LoadError::Open { path: path.to_owned(), reason: err.to_string() })?;
    let symbol = format!("{}\0", abi::ENTRY_SYMBOL);
    // SAFETY: the header declares the entry symbol with exactly this type.
    let entry = unsafe { library.get::<unsafe extern "C" fn() -> *const PluginDescriptor>(symbol.as_bytes()) }
        .map_err(|err| LoadError::Open { path: path.to_owned(), reason: err.to_string() })?;
    // SAFETY: the entry symbol takes no arguments and has no side effects.
    let pointer = unsafe { entry() };
    std::mem::forget(library); // never unload (see the module docs)
    if pointer.is_null() {
        return Err(LoadError::Descriptor {
            path: path.to_owned(),
            plugin: String::new(),
            problem: format!("`{}` returned a null descriptor", abi::ENTRY_SYMBOL),
        });
    }
    // SAFETY: a non-null pointer from the entry symbol points to a static
    // descriptor that starts with the fixed prefix (magic..struct_size), which
    // every major keeps. Only those 12 bytes are read, by value (unaligned, in
    // case the plugin got even that wrong), before the declared size is checked:
    // a reference to the whole struct would claim 88 bytes that may not exist.
    let prefix = unsafe { pointer.cast::<abi::DescriptorPrefix>().read_unaligned() };
    let mut info = DescriptorInfo {
        magic: prefix.magic,
        abi_major: prefix.abi_major,
        abi_minor: prefix.abi_minor,
        struct_size: prefix.struct_size,
        min_host_minor: 0,
        flags: 0,
        name: None,
        version: String::new(),
        build_info: String::new(),
        capabilities: 0,
        entry_points_present: false,
    };
    let prefix_ok = prefix.magic == abi::PLUGIN_MAGIC
        && prefix.abi_major == abi::ABI_MAJOR
        && prefix.struct_size >= abi::DESCRIPTOR_SIZE_1_0;
    if !prefix_ok {
        // Refused for its magic, major or size, in the checks' own order.
        check_descriptor(path, &info)?;
        return Err(LoadError::Descriptor {
            path: path.to_owned(),
            plugin: String::new(),
            problem: "descriptor prefix refused".to_owned(),
        });
    }
    // SAFETY: the descriptor declares at least the 1.0 size, the size of
    // `PluginDescriptor`, and is static data of a library never unloaded.
    let descriptor = unsafe { &*pointer };
    info.min_host_minor = descriptor.min_host_minor;
    info.flags = descriptor.flags;
    // SAFETY: the strings are static NUL-terminated strings of the library
    // (or null), per the header.
    unsafe {
        info.name = read_str(descriptor.name);
        info.version = read_str(descriptor.version).unwrap_or_default();
        info.build_info = read_str(descriptor.build_info).unwrap_or_default();
    }
    info.capabilities = descriptor.capabilities;
    info.entry_points_present = descriptor.describe.is_some()
        && descriptor.instance_new.is_some()
        && descriptor.instance_drop.is_some()
        && descriptor.call.is_some()
        && descriptor.cancel.is_some();
    Ok((Descriptor(descriptor), info))
}

/// # Safety
/// `text` is null or a NUL-terminated string valid forever.
unsafe fn read_str(text: *const c_char) -> Option<String> {
    if text.is_null() {
        return None;
    }
    // SAFETY: guaranteed by the caller.
    let text = unsafe { CStr::from_ptr(text) };
    text.to_str().ok().map(str::to_owned)
}

/// Views bytes a plugin passed; `None` when the view is absurd.
///
/// # Safety
/// `bytes` must be valid for `'a` as the ABI promises for the current call.
unsafe fn view<'a>(bytes: Bytes) -> Option<&'a [u8]> {
    if bytes.len == 0 {
        return Some(&[]);
    }
    if bytes.ptr.is_null() || bytes.len > MAX_VIEW_BYTES {
        return None;
    }
    // SAFETY: guaranteed by the caller.
    Some(unsafe { std::slice::from_raw_parts(bytes.ptr, bytes.len) })
}

unsafe extern "C" fn collect_into(ud: *mut c_void, data: Bytes) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ud` is the `Vec<u8>` of the caller below, alive during the
        // call that was given this sink; `data` is valid during this call.
        unsafe {
            if let Some(data) = view(data) {
                (*ud.cast::<Vec<u8>>()).extend_from_slice(data);
            }
        }
    }));
}

impl Descriptor {
    /// Calls `describe`; the encoded PluginInfo.
    pub(crate) fn describe(self) -> Result<Vec<u8>, abi::Status> {
        let describe = self.0.describe.ok_or(status::INTERNAL)?;
        let mut out = Vec::new();
        // SAFETY: checked entry point; the sink writes into `out`, which
        // outlives the call.
        let code = unsafe { describe(Some(collect_into), (&raw mut out).cast::<c_void>()) };
        if code == status::OK { Ok(out) } else { Err(code) }
    }

    /// Calls `instance_new` with a host table bound to `context`.
    pub(crate) fn instance_new(
        self,
        context: Arc<HostContext>,
        config: &[u8],
    ) -> Result<InstanceHandle, (abi::Status, Vec<u8>)> {
        let instance_new = self.0.instance_new.ok_or((status::INTERNAL, Vec::new()))?;
        let table = host_table(context);
        let mut instance: *mut Instance = std::ptr::null_mut();
        let mut error = Vec::new();
        // SAFETY: checked entry point; the table is leaked so it outlives the
        // instance; `config` and `error` outlive the call.
        let code = unsafe {
            instance_new(
                table,
                Bytes::borrow(config),
                &raw mut instance,
                Some(collect_into),
                (&raw mut error).cast::<c_void>(),
            )
        };
        if code != status::OK || instance.is_null() {
            return Err((if code == status::OK { status::INTERNAL } else { code }, error));
        }
        Ok(InstanceHandle { instance, descriptor: self })
    }
}

/// A plugin instance. Never dropped: stores live as long as the process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InstanceHandle {
    instance: *mut Instance,
    descriptor: Descriptor,
}

// SAFETY: the plugin declared IAPD_FLAG_THREAD_SAFE (checked at load), so its
// instance may be used from any thread concurrently.
unsafe impl Send for InstanceHandle {}
// SAFETY: see Send.
unsafe impl Sync for InstanceHandle {}

impl InstanceHandle {
    /// Starts a call; see the header's rule 5.
    pub(crate) fn call(self, call_id: u64, method: &str, request: &[u8]) -> abi::Status {
        let Some(call) = self.descriptor.0.call else { return status::INTERNAL };
        // SAFETY: checked entry point on a live instance; the views outlive
        // the call.
        unsafe { call(self.instance, call_id, Bytes::borrow(method.as_bytes()), Bytes::borrow(request)) }
    }

    /// Asks the plugin to cancel a call; its completion is still due.
    pub(crate) fn cancel(self, call_id: u64) {
        if let Some(cancel) = self.descriptor.0.cancel {
            // SAFETY: checked entry point on a live instance.
            unsafe { cancel(self.instance, call_id) }
        }
    }
}

/// Builds the host table for one instance. Leaked with its context: the
/// instance may use both until the process ends.
fn host_table(context: Arc<HostContext>) -> &'static HostApi {
    Box::leak(Box::new(HostApi {
        struct_size: abi::HOST_API_SIZE_1_0,
        abi_major: abi::ABI_MAJOR,
        abi_minor: abi::ABI_MINOR,
        host: Arc::into_raw(context).cast_mut().cast::<Host>(),
        log: Some(host_log),
        log_max_level: Some(host_log_max_level),
        now_unix_millis: Some(host_now_unix_millis),
        monotonic_nanos: Some(host_monotonic_nanos),
        get_secret: Some(host_get_secret),
        http_send: Some(host_http_send),
        timer_start: Some(host_timer_start),
        complete: Some(host_complete),
    }))
}

/// The context behind a host pointer, with a new strong reference.
///
/// # Safety
/// `host` must be a pointer from `host_table` (they are never freed).
unsafe fn context(host: *mut Host) -> Option<Arc<HostContext>> {
    let pointer = host.cast_const().cast::<HostContext>();
    if pointer.is_null() {
        return None;
    }
    // SAFETY: `pointer` came from Arc::into_raw in host_table and that
    // reference is never released, so the count stays above zero.
    unsafe {
        Arc::increment_strong_count(pointer);
        Some(Arc::from_raw(pointer))
    }
}

/// Runs a callback body, turning a host panic into `fallback` instead of
/// unwinding into the plugin (which would abort the process).
fn guarded<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

unsafe extern "C" fn host_log(host: *mut Host, level: u32, target: Bytes, message: Bytes, call_id: u64) {
    guarded((), || {
        // SAFETY: the host pointer is ours; the views are valid during this
        // call.
        let (Some(context), Some(target), Some(message)) =
            (unsafe { context(host) }, unsafe { view(target) }, unsafe { view(message) })
        else {
            return;
        };
        context.log(level, target, message, call_id);
    })
}

unsafe extern "C" fn host_log_max_level(host: *mut Host) -> u32 {
    // SAFETY: the host pointer is ours.
    guarded(0, || unsafe { context(host) }.map_or(0, |context| context.log_max_level()))
}

unsafe extern "C" fn host_now_unix_millis(_host: *mut Host) -> i64 {
    guarded(0, super::context::now_unix_millis)
}

unsafe extern "C" fn host_monotonic_nanos(_host: *mut Host) -> u64 {
    guarded(0, super::context::monotonic_nanos)
}

unsafe extern "C" fn host_get_secret(host: *mut Host, name: Bytes, sink: BytesSink, ud: *mut c_void) -> abi::Status {
    guarded(status::INTERNAL, || {
        // SAFETY: the host pointer is ours; `name` is valid during this call.
        let (Some(context), Some(name)) = (unsafe { context(host) }, unsafe { view(name) }) else {
            return status::INVALID_ARGUMENT;
        };
        let Some(value) = context.secret(name) else { return status::NOT_FOUND };
        let Some(sink) = sink else { return status::INVALID_ARGUMENT };
        // SAFETY: the plugin's sink and its `ud`; the view outlives the call.
        unsafe { sink(ud, Bytes::borrow(value)) };
        status::OK
    })
}

/// A plugin's HTTP completion callback, to be called exactly once.
pub(crate) struct HttpDone {
    done: unsafe extern "C" fn(*mut c_void, abi::Status, Bytes),
    ud: *mut c_void,
}

// SAFETY: the ABI lets the host call `done` from any thread; `ud` is the
// plugin's and is only handed back to it.
unsafe impl Send for HttpDone {}

impl HttpDone {
    /// Delivers the answer (consumes self: exactly once).
    pub(crate) fn deliver(self, code: abi::Status, response: &[u8]) {
        // SAFETY: the plugin's callback with its own `ud`, called once; the
        // view outlives the call.
        guarded((), || unsafe { (self.done)(self.ud, code, Bytes::borrow(response)) })
    }
}

unsafe extern "C" fn host_http_send(
    host: *mut Host,
    call_id: u64,
    request: Bytes,
    done: abi::HttpDone,
    ud: *mut c_void,
) -> abi::Status {
    guarded(status::INTERNAL, || {
        // SAFETY: the host pointer is ours; `request` is valid during this call.
        let (Some(context), Some(request)) = (unsafe { context(host) }, unsafe { view(request) }) else {
            return status::INVALID_ARGUMENT;
        };
        let Some(done) = done else { return status::INVALID_ARGUMENT };
        context.http_send(call_id, request, HttpDone { done, ud })
    })
}

/// A plugin's timer callback, to be called exactly once.
pub(crate) struct TimerDone {
    done: unsafe extern "C" fn(*mut c_void, abi::Status),
    ud: *mut c_void,
}

// SAFETY: as for HttpDone.
unsafe impl Send for TimerDone {}

impl TimerDone {
    /// Delivers the timer's end (consumes self: exactly once).
    pub(crate) fn deliver(self, code: abi::Status) {
        // SAFETY: the plugin's callback with its own `ud`, called once.
        guarded((), || unsafe { (self.done)(self.ud, code) })
    }
}

unsafe extern "C" fn host_timer_start(
    host: *mut Host,
    call_id: u64,
    delay_millis: u64,
    done: abi::TimerDone,
    ud: *mut c_void,
) -> abi::Status {
    guarded(status::INTERNAL, || {
        // SAFETY: the host pointer is ours.
        let Some(context) = (unsafe { context(host) }) else { return status::INVALID_ARGUMENT };
        let Some(done) = done else { return status::INVALID_ARGUMENT };
        context.timer_start(call_id, delay_millis, TimerDone { done, ud })
    })
}

unsafe extern "C" fn host_complete(host: *mut Host, call_id: u64, code: abi::Status, payload: Bytes) {
    guarded((), || {
        // SAFETY: the host pointer is ours; `payload` is valid during this
        // call and copied before it returns.
        let Some(context) = (unsafe { context(host) }) else { return };
        // SAFETY: `payload` is valid during this call; `complete` copies it.
        match unsafe { view(payload) } {
            Some(payload) => context.complete(call_id, code, payload),
            None => context.complete(call_id, status::INTERNAL, &[]),
        }
    })
}
