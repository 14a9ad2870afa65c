/*
 * iapd_plugin.h: the iapd store plugin ABI, major 1, minor 1.
 *
 * This header is the normative definition of the ABI. The Rust SDK mirrors it
 * and asserts every size and offset against it.
 *
 * Rules (read them before writing a plugin):
 *
 * 1. Only C types cross. Requests and responses are protobuf messages of the
 *    package iapd.plugin.v1 (proto/iapd/plugin/v1/plugin.proto), encoded.
 * 2. Every iapd_bytes is borrowed: valid only until the function it was passed
 *    to returns. The receiver copies what it keeps. No memory changes owner, so
 *    there are no free functions.
 * 3. The plugin exports one symbol, IAPD_PLUGIN_ENTRY_SYMBOL, returning a static
 *    descriptor. Calling it has no side effects. A plugin for another major
 *    exports another symbol name and is refused before it is loaded.
 * 4. The host does all I/O (HTTP, timers, logging, secrets) through the
 *    iapd_host_api table given to instance_new. Plugin code never blocks: it
 *    waits through http_send and timer_start.
 * 5. A call the plugin accepts (call returns IAPD_OK) is completed exactly once
 *    with host->complete, possibly before call returns, possibly from another
 *    thread, also after cancel. A call refused synchronously (non-OK return)
 *    gets no completion. An http_send or timer_start the host accepts gets
 *    exactly one done callback, never from inside http_send/timer_start.
 * 6. Entry points may be called concurrently from any host thread
 *    (IAPD_FLAG_THREAD_SAFE is required). Nothing may unwind across this ABI.
 * 7. The host never unloads a plugin; the descriptor's strings stay valid
 *    forever.
 * 8. Within major 1 the ABI only grows: fields are appended to the structs
 *    (guarded by struct_size), capability bits, method names and protobuf
 *    fields are added. Anything else is major 2 and a new entry symbol.
 */
#ifndef IAPD_PLUGIN_H
#define IAPD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IAPD_PLUGIN_MAGIC 0x44504149u /* the bytes "IAPD" read little-endian */
#define IAPD_ABI_MAJOR 1u
#define IAPD_ABI_MINOR 1u
#define IAPD_PLUGIN_ENTRY_SYMBOL "iapd_plugin_v1"

/* Status codes are numerically the gRPC codes. Receivers map values they do not
 * know to IAPD_UNKNOWN. */
typedef int32_t iapd_status;
enum {
  IAPD_OK = 0,
  IAPD_CANCELLED = 1,
  IAPD_UNKNOWN = 2,
  IAPD_INVALID_ARGUMENT = 3,
  IAPD_DEADLINE_EXCEEDED = 4,
  IAPD_NOT_FOUND = 5,
  IAPD_ALREADY_EXISTS = 6,
  IAPD_PERMISSION_DENIED = 7,
  IAPD_RESOURCE_EXHAUSTED = 8,
  IAPD_FAILED_PRECONDITION = 9,
  IAPD_ABORTED = 10,
  IAPD_OUT_OF_RANGE = 11,
  IAPD_UNIMPLEMENTED = 12,
  IAPD_INTERNAL = 13,
  IAPD_UNAVAILABLE = 14,
  IAPD_DATA_LOSS = 15,
  IAPD_UNAUTHENTICATED = 16
};

/* Log levels for iapd_host_api.log. */
enum {
  IAPD_LOG_ERROR = 1,
  IAPD_LOG_WARN = 2,
  IAPD_LOG_INFO = 3,
  IAPD_LOG_DEBUG = 4,
  IAPD_LOG_TRACE = 5
};

/* A borrowed byte view (see rule 2). ptr may be NULL when len is 0. */
typedef struct iapd_bytes {
  const uint8_t *ptr;
  size_t len;
} iapd_bytes;

typedef struct iapd_host iapd_host;         /* opaque, owned by the host */
typedef struct iapd_instance iapd_instance; /* opaque, owned by the plugin */

/* Receives borrowed bytes; called zero or one time before the function that
 * was given the sink returns. */
typedef void (*iapd_bytes_sink)(void *ud, iapd_bytes data);
/* Answers an http_send. On IAPD_OK response_pb is an encoded HttpResponse
 * (any HTTP status); otherwise it is empty and the request was not answered
 * (IAPD_DEADLINE_EXCEEDED, IAPD_UNAVAILABLE, IAPD_CANCELLED, ...). */
typedef void (*iapd_http_done)(void *ud, iapd_status status, iapd_bytes response_pb);
/* Answers a timer_start: IAPD_OK when the delay elapsed. */
typedef void (*iapd_timer_done)(void *ud, iapd_status status);

/* Host services, given to instance_new. The table and the host pointer stay
 * valid until instance_drop returns. A plugin compiled against a later minor
 * checks struct_size before reading a field added after 1.0. */
typedef struct iapd_host_api {
  uint32_t struct_size;
  uint16_t abi_major;
  uint16_t abi_minor;
  iapd_host *host;
  /* --- 1.0 --- */
  /* call_id is 0 when the message belongs to no call. */
  void (*log)(iapd_host *host, uint32_t level, iapd_bytes target, iapd_bytes message,
              uint64_t call_id);
  /* The most verbose level the host records; skip formatting anything above. */
  uint32_t (*log_max_level)(iapd_host *host);
  int64_t (*now_unix_millis)(iapd_host *host);
  uint64_t (*monotonic_nanos)(iapd_host *host);
  /* Looks up a secret the operator configured for this store. IAPD_OK: sink
   * was called with the value. IAPD_NOT_FOUND: no such secret. */
  iapd_status (*get_secret)(iapd_host *host, iapd_bytes name, iapd_bytes_sink sink, void *ud);
  /* Sends an encoded HttpRequest. IAPD_OK: done follows exactly once, later.
   * IAPD_PERMISSION_DENIED: the URL's origin is not allowed for this store.
   * IAPD_INVALID_ARGUMENT: the request does not decode or the URL is bad. */
  iapd_status (*http_send)(iapd_host *host, uint64_t call_id, iapd_bytes request_pb,
                           iapd_http_done done, void *ud);
  /* Starts a timer. IAPD_OK: done follows exactly once, later. */
  iapd_status (*timer_start)(iapd_host *host, uint64_t call_id, uint64_t delay_millis,
                             iapd_timer_done done, void *ud);
  /* Completes an accepted call (rule 5). payload_pb is the encoded response
   * when status is IAPD_OK and an encoded PluginError otherwise. */
  void (*complete)(iapd_host *host, uint64_t call_id, iapd_status status, iapd_bytes payload_pb);
  /* --- fields added in later minors are appended here --- */
} iapd_host_api;

/* Descriptor flags. */
#define IAPD_FLAG_THREAD_SAFE 0x0001u   /* required: entry points may run concurrently */
#define IAPD_FLAG_PANIC_GUARDED 0x0002u /* nothing unwinds out of any entry point */
/* Since 1.1 (hosts before 1.1 ignore it): call returns within microseconds and
 * never blocks, so a host may start calls on its own I/O threads instead of
 * handing them to plugin threads. A host that sees call take too long stops
 * doing so for this plugin. */
#define IAPD_FLAG_NONBLOCKING_CALL 0x0004u

/* Capability bits. Hosts ignore bits they do not know. */
#define IAPD_CAP_VERIFY (1ull << 0)
#define IAPD_CAP_ACKNOWLEDGE (1ull << 1)
#define IAPD_CAP_CONSUME (1ull << 2)
#define IAPD_CAP_LIST_ITEMS (1ull << 3)

typedef struct iapd_plugin_descriptor {
  uint32_t magic;          /* IAPD_PLUGIN_MAGIC */
  uint16_t abi_major;      /* IAPD_ABI_MAJOR */
  uint16_t abi_minor;      /* IAPD_ABI_MINOR of the header the plugin was built with */
  uint32_t struct_size;    /* sizeof(iapd_plugin_descriptor) in that header */
  uint16_t min_host_minor; /* the oldest host minor the plugin runs on */
  uint16_t flags;          /* IAPD_FLAG_* */
  const char *name;        /* [a-z0-9_-]+, static, NUL-terminated UTF-8 */
  const char *version;     /* the plugin's own version, for example "1.4.2" */
  const char *build_info;  /* free text, for example the SDK and compiler versions */
  uint64_t capabilities;   /* IAPD_CAP_* */
  /* --- 1.0 entry points, all required --- */
  /* Writes an encoded PluginInfo to sink. */
  iapd_status (*describe)(iapd_bytes_sink sink, void *ud);
  /* Creates an instance from an encoded PluginConfig. On failure writes an
   * encoded PluginError to err_sink. */
  iapd_status (*instance_new)(const iapd_host_api *host, iapd_bytes config_pb,
                              iapd_instance **out, iapd_bytes_sink err_sink, void *err_ud);
  /* Called only after every accepted call completed and every done arrived. */
  void (*instance_drop)(iapd_instance *instance);
  /* Starts a call (rule 5). method is a full name such as
   * "iapd.plugin.v1.Store/Verify"; an unknown method returns
   * IAPD_UNIMPLEMENTED. */
  iapd_status (*call)(iapd_instance *instance, uint64_t call_id, iapd_bytes method,
                      iapd_bytes request_pb);
  /* Best effort; the completion is still due. */
  void (*cancel)(iapd_instance *instance, uint64_t call_id);
  /* --- fields added in later minors are appended here --- */
} iapd_plugin_descriptor;

/* The one required export. */
const iapd_plugin_descriptor *iapd_plugin_v1(void);

#ifdef __cplusplus
}
#endif

#endif /* IAPD_PLUGIN_H */
