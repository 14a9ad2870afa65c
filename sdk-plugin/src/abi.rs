//! The `repr(C)` mirror of `include/iapd_plugin.h`, the normative definition
//! of plugin ABI v1. Only C types: integers, pointers and function pointers.
//! Status, level and flag values are plain integers, never Rust enums, because
//! a value unknown to this side would be undefined behaviour in an enum.
//!
//! The host and the SDK both use these types; the layout assertions at the end
//! are checked against the C compiler's view in the tests.

use std::ffi::{c_char, c_void};

/// `IAPD_PLUGIN_MAGIC`: the bytes "IAPD" read little-endian.
pub const PLUGIN_MAGIC: u32 = 0x4450_4149;
/// `IAPD_ABI_MAJOR`.
pub const ABI_MAJOR: u16 = 1;
/// `IAPD_ABI_MINOR`: the minor this crate (and the host built with it) speaks.
pub const ABI_MINOR: u16 = 1;
/// `IAPD_PLUGIN_ENTRY_SYMBOL`.
pub const ENTRY_SYMBOL: &str = "iapd_plugin_v1";
/// The prefix every major's entry symbol starts with, to recognize plugins
/// built for another major.
pub const ENTRY_SYMBOL_PREFIX: &str = "iapd_plugin_v";

/// `IAPD_FLAG_THREAD_SAFE`.
pub const FLAG_THREAD_SAFE: u16 = 0x0001;
/// `IAPD_FLAG_PANIC_GUARDED`.
pub const FLAG_PANIC_GUARDED: u16 = 0x0002;
/// `IAPD_FLAG_NONBLOCKING_CALL` (since 1.1): `call` returns within
/// microseconds and never blocks, so the host may start calls on its own I/O
/// threads.
pub const FLAG_NONBLOCKING_CALL: u16 = 0x0004;

/// `IAPD_CAP_VERIFY`.
pub const CAP_VERIFY: u64 = 1 << 0;
/// `IAPD_CAP_ACKNOWLEDGE`.
pub const CAP_ACKNOWLEDGE: u64 = 1 << 1;
/// `IAPD_CAP_CONSUME`.
pub const CAP_CONSUME: u64 = 1 << 2;
/// `IAPD_CAP_LIST_ITEMS`.
pub const CAP_LIST_ITEMS: u64 = 1 << 3;

/// Full method names, dispatched by string so that new ones can be added
/// within a major.
pub mod method {
    /// Verify a purchase.
    pub const VERIFY: &str = "iapd.plugin.v1.Store/Verify";
    /// Acknowledge a purchase.
    pub const ACKNOWLEDGE: &str = "iapd.plugin.v1.Store/Acknowledge";
    /// Consume a purchase.
    pub const CONSUME: &str = "iapd.plugin.v1.Store/Consume";
    /// List the catalog.
    pub const LIST_ITEMS: &str = "iapd.plugin.v1.Store/ListItems";
}

/// `iapd_status`: numerically a gRPC status code.
pub type Status = i32;

/// Status codes (`IAPD_OK` ...), equal to the gRPC codes.
#[allow(missing_docs)]
pub mod status {
    use super::Status;
    pub const OK: Status = 0;
    pub const CANCELLED: Status = 1;
    pub const UNKNOWN: Status = 2;
    pub const INVALID_ARGUMENT: Status = 3;
    pub const DEADLINE_EXCEEDED: Status = 4;
    pub const NOT_FOUND: Status = 5;
    pub const ALREADY_EXISTS: Status = 6;
    pub const PERMISSION_DENIED: Status = 7;
    pub const RESOURCE_EXHAUSTED: Status = 8;
    pub const FAILED_PRECONDITION: Status = 9;
    pub const ABORTED: Status = 10;
    pub const OUT_OF_RANGE: Status = 11;
    pub const UNIMPLEMENTED: Status = 12;
    pub const INTERNAL: Status = 13;
    pub const UNAVAILABLE: Status = 14;
    pub const DATA_LOSS: Status = 15;
    pub const UNAUTHENTICATED: Status = 16;
}

/// `iapd_bytes`: a borrowed byte view, valid only during the call it is
/// passed to.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Bytes {
    /// May be null when `len` is 0.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl Bytes {
    /// A view of `data`; the caller keeps `data` alive for the call.
    pub fn borrow(data: &[u8]) -> Self {
        Bytes { ptr: data.as_ptr(), len: data.len() }
    }
}

/// `iapd_host`: opaque, owned by the host.
#[repr(C)]
#[derive(Debug)]
pub struct Host {
    _private: [u8; 0],
}

/// `iapd_instance`: opaque, owned by the plugin.
#[repr(C)]
#[derive(Debug)]
pub struct Instance {
    _private: [u8; 0],
}

/// `iapd_bytes_sink`.
pub type BytesSink = Option<unsafe extern "C" fn(ud: *mut c_void, data: Bytes)>;
/// `iapd_http_done`.
pub type HttpDone = Option<unsafe extern "C" fn(ud: *mut c_void, status: Status, response_pb: Bytes)>;
/// `iapd_timer_done`.
pub type TimerDone = Option<unsafe extern "C" fn(ud: *mut c_void, status: Status)>;

/// `iapd_host_api`: host services, append-only within a major.
#[repr(C)]
#[derive(Debug)]
#[allow(missing_docs)]
pub struct HostApi {
    pub struct_size: u32,
    pub abi_major: u16,
    pub abi_minor: u16,
    pub host: *mut Host,
    pub log: Option<unsafe extern "C" fn(host: *mut Host, level: u32, target: Bytes, message: Bytes, call_id: u64)>,
    pub log_max_level: Option<unsafe extern "C" fn(host: *mut Host) -> u32>,
    pub now_unix_millis: Option<unsafe extern "C" fn(host: *mut Host) -> i64>,
    pub monotonic_nanos: Option<unsafe extern "C" fn(host: *mut Host) -> u64>,
    pub get_secret:
        Option<unsafe extern "C" fn(host: *mut Host, name: Bytes, sink: BytesSink, ud: *mut c_void) -> Status>,
    pub http_send: Option<
        unsafe extern "C" fn(
            host: *mut Host,
            call_id: u64,
            request_pb: Bytes,
            done: HttpDone,
            ud: *mut c_void,
        ) -> Status,
    >,
    pub timer_start: Option<
        unsafe extern "C" fn(
            host: *mut Host,
            call_id: u64,
            delay_millis: u64,
            done: TimerDone,
            ud: *mut c_void,
        ) -> Status,
    >,
    pub complete: Option<unsafe extern "C" fn(host: *mut Host, call_id: u64, status: Status, payload_pb: Bytes)>,
}

/// `iapd_plugin_descriptor`: what the entry symbol returns.
#[repr(C)]
#[derive(Debug)]
#[allow(missing_docs)]
pub struct PluginDescriptor {
    pub magic: u32,
    pub abi_major: u16,
    pub abi_minor: u16,
    pub struct_size: u32,
    pub min_host_minor: u16,
    pub flags: u16,
    pub name: *const c_char,
    pub version: *const c_char,
    pub build_info: *const c_char,
    pub capabilities: u64,
    pub describe: Option<unsafe extern "C" fn(sink: BytesSink, ud: *mut c_void) -> Status>,
    pub instance_new: Option<
        unsafe extern "C" fn(
            host: *const HostApi,
            config_pb: Bytes,
            out: *mut *mut Instance,
            err_sink: BytesSink,
            err_ud: *mut c_void,
        ) -> Status,
    >,
    pub instance_drop: Option<unsafe extern "C" fn(instance: *mut Instance)>,
    pub call:
        Option<unsafe extern "C" fn(instance: *mut Instance, call_id: u64, method: Bytes, request_pb: Bytes) -> Status>,
    pub cancel: Option<unsafe extern "C" fn(instance: *mut Instance, call_id: u64)>,
}

/// The fixed start of every descriptor, in every major: what a host may read
/// before it knows how large the descriptor really is.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct DescriptorPrefix {
    pub magic: u32,
    pub abi_major: u16,
    pub abi_minor: u16,
    pub struct_size: u32,
}

/// `sizeof(iapd_plugin_descriptor)` in ABI 1.0; a host refuses smaller ones.
pub const DESCRIPTOR_SIZE_1_0: u32 = 88;
/// `sizeof(iapd_host_api)` in ABI 1.0.
pub const HOST_API_SIZE_1_0: u32 = 80;

#[cfg(target_pointer_width = "64")]
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<Bytes>() == 16 && align_of::<Bytes>() == 8);
    assert!(size_of::<PluginDescriptor>() == DESCRIPTOR_SIZE_1_0 as usize);
    assert!(size_of::<DescriptorPrefix>() == 12 && offset_of!(DescriptorPrefix, struct_size) == 8);
    assert!(offset_of!(PluginDescriptor, struct_size) == 8);
    assert!(offset_of!(PluginDescriptor, min_host_minor) == 12);
    assert!(offset_of!(PluginDescriptor, flags) == 14);
    assert!(offset_of!(PluginDescriptor, name) == 16);
    assert!(offset_of!(PluginDescriptor, capabilities) == 40);
    assert!(offset_of!(PluginDescriptor, describe) == 48);
    assert!(offset_of!(PluginDescriptor, cancel) == 80);
    assert!(size_of::<HostApi>() == HOST_API_SIZE_1_0 as usize);
    assert!(offset_of!(HostApi, host) == 8);
    assert!(offset_of!(HostApi, log) == 16);
    assert!(offset_of!(HostApi, get_secret) == 48);
    assert!(offset_of!(HostApi, complete) == 72);
};
