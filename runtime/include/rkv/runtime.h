/* librkv runtime: the shared vocabulary of every module — status codes, the caller allocator,
 * logging, KV dtypes, the KV block layout, the per-stream block-table views the kernels read,
 * build capabilities, and the backend / KV pool objects that own KV storage.
 *
 * No global state: everything that varies lives in a handle. */
#ifndef RKV_RUNTIME_H
#define RKV_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <rkv/version.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define RKV_API
#else
#define RKV_API __attribute__((visibility("default")))
#endif

/* Marks a public call that still works in this release and goes away (or becomes internal) in
 * a later one: compilers that know the attribute warn at every use, naming the replacement. */
#if defined(__GNUC__) || defined(__clang__)
#define RKV_DEPRECATED(msg) __attribute__((deprecated(msg)))
#else
#define RKV_DEPRECATED(msg)
#endif

/* ---- Status ---------------------------------------------------------------------------- */

typedef enum rkv_status {
  RKV_OK = 0,
  RKV_ERR_INVALID_ARG = 1, /* NULL pointer, out-of-range value, malformed list */
  RKV_ERR_NO_MEMORY = 2,   /* host allocation failed (the call changed nothing) */
  RKV_ERR_NO_BLOCKS = 3,   /* KV pool exhausted: a normal status, the caller backs off */
  RKV_ERR_NOT_FOUND = 4,   /* unknown sequence / request id */
  RKV_ERR_EXISTS = 5,      /* duplicate id */
  RKV_ERR_UNSUPPORTED = 6, /* not built in (e.g. CUDA), or outside a closed dispatch set */
  RKV_ERR_CORRUPT = 7,     /* an invariant check failed */
  RKV_ERR_CUDA = 8,        /* CUDA runtime error (details in the handle's last error) */
  RKV_ERR_COMM = 9,        /* collective / communicator failure */
  RKV_ERR_IO = 10,         /* file could not be read or written */
  RKV_ERR_FORMAT = 11,     /* file or text has a malformed or unsupported format */
  RKV_ERR_TIMEOUT = 12,    /* a peer or device did not answer in time */
  RKV_ERR_STATE = 13,      /* the call is not valid in the object's current state */
  RKV_ERR_CAPACITY = 14,   /* a caller buffer or fixed table is too small */
  RKV_ERR_INTERNAL = 15,   /* a bug in librkv */
  RKV_STATUS_COUNT_
} rkv_status;

/* Human-readable description; never NULL (unknown codes give "unknown status"). */
RKV_API const char *rkv_status_str(rkv_status s);
/* Enum name, e.g. "RKV_ERR_NO_BLOCKS"; never NULL. */
RKV_API const char *rkv_status_name(rkv_status s);

/* ---- Caller allocator and logging ------------------------------------------------------ */

/* Host memory comes through this when given (NULL allocator, or either fn NULL = libc for
 * both, so memory is always freed by the allocator that made it).
 * alloc returns memory aligned to `align` (a power of two) or NULL. */
typedef struct rkv_allocator {
  void *(*alloc)(void *ctx, size_t size, size_t align);
  void (*free)(void *ctx, void *ptr, size_t size);
  void *ctx;
} rkv_allocator;

typedef enum rkv_log_level {
  RKV_LOG_ERROR = 0,
  RKV_LOG_WARN = 1,
  RKV_LOG_INFO = 2,
  RKV_LOG_DEBUG = 3
} rkv_log_level;

/* The library never prints; it calls this (when set) for messages at or below `level`. */
typedef struct rkv_logger {
  void (*fn)(void *ctx, rkv_log_level level, const char *msg);
  void *ctx;
  rkv_log_level level;
} rkv_logger;

/* ---- Build capabilities ---------------------------------------------------------------- */

RKV_API bool rkv_build_has_cuda(void);
RKV_API bool rkv_build_has_nccl(void);
RKV_API bool rkv_build_has_hwloc(void);
RKV_API bool rkv_build_has_mpi(void);
RKV_API bool rkv_build_has_blas(void);
/* The version of the library the program runs with, "MAJOR.MINOR.PATCH" (<rkv/version.h>
 * has the one it was compiled against). */
RKV_API const char *rkv_version_string(void);
/* The same as numbers; any pointer may be NULL. */
RKV_API void rkv_version(int *major, int *minor, int *patch);

/* ---- KV dtypes and block layout -------------------------------------------------------- */

typedef enum rkv_dtype {
  RKV_DTYPE_F32 = 0,
  RKV_DTYPE_F16 = 1,
  RKV_DTYPE_BF16 = 2,
  RKV_DTYPE_COUNT_
} rkv_dtype;

/* Bytes per element (0 for an invalid dtype). */
RKV_API size_t rkv_dtype_size(rkv_dtype dt);
/* "f32" / "f16" / "bf16"; "invalid" otherwise. */
RKV_API const char *rkv_dtype_name(rkv_dtype dt);
/* Parses "f32", "float32", "f16", "fp16", "float16", "bf16", "bfloat16". */
RKV_API rkv_status rkv_dtype_parse(const char *name, rkv_dtype *out);

/* Scalar conversions (round to nearest even); used by tests, tools and CPU kernels. */
RKV_API uint16_t rkv_f32_to_f16(float f);
RKV_API float rkv_f16_to_f32(uint16_t h);
RKV_API uint16_t rkv_f32_to_bf16(float f);
RKV_API float rkv_bf16_to_f32(uint16_t h);
/* Loads element i of a KV array of dtype dt as f32. */
RKV_API float rkv_dtype_load(rkv_dtype dt, const void *base, size_t i);
/* Stores v as element i of an array of dtype dt (rounded). */
RKV_API void rkv_dtype_store(rkv_dtype dt, void *base, size_t i, float v);

/* One block holds `block_size` token slots of ONE stream (sequence x layer x kv head):
 *   K [block_size][head_dim] followed by V [block_size][head_dim], both of `dtype`.
 * Block `id` lives at pool_base + id * rkv_kv_block_bytes(layout). A global slot number is
 * id * block_size + offset (int64, the "slot mapping" the KV write kernels take). */
typedef struct rkv_kv_layout {
  rkv_dtype dtype;
  uint32_t block_size;
  uint32_t head_dim;
} rkv_kv_layout;

RKV_API size_t rkv_kv_block_bytes(const rkv_kv_layout *layout);
/* Byte offsets of slot `offset`'s K and V rows inside a block. */
RKV_API size_t rkv_kv_k_offset(const rkv_kv_layout *layout, uint32_t offset);
RKV_API size_t rkv_kv_v_offset(const rkv_kv_layout *layout, uint32_t offset);

/* A block table over streams in CSR form (FlashInfer's paged layout, one row per stream):
 * stream s owns blocks indices[indptr[s] .. indptr[s+1]) in cache order; its last block holds
 * last_len[s] tokens (1..block_size), so its length is
 * (indptr[s+1]-indptr[s]-1)*block_size + last_len[s]; an empty stream has no blocks and
 * last_len 0. Stream order of a layer's export: sequence-major, kv head minor
 * (stream = batch_index * num_kv_heads + head). All arrays int32; pointers are borrowed. */
typedef struct rkv_block_table {
  int32_t num_streams;
  int32_t block_size;
  const int32_t *indptr;   /* [num_streams + 1] */
  const int32_t *indices;  /* [indptr[num_streams]] */
  const int32_t *last_len; /* [num_streams] */
} rkv_block_table;

/* Length in tokens of stream s of a table. */
RKV_API int64_t rkv_block_table_stream_len(const rkv_block_table *t, int32_t s);

/* A copy of one whole block (copy-on-write) or of one slot (compaction move). */
typedef struct rkv_block_copy {
  int32_t src;
  int32_t dst;
} rkv_block_copy;

typedef struct rkv_slot_move {
  int64_t src; /* global slot */
  int64_t dst; /* global slot */
} rkv_slot_move;

/* ---- Backends and KV pools ------------------------------------------------------------- */

typedef enum rkv_backend_kind {
  RKV_BACKEND_AUTO = 0, /* CUDA when built and a device is present, else CPU */
  RKV_BACKEND_CPU = 1,
  RKV_BACKEND_CUDA = 2
} rkv_backend_kind;

#define RKV_BACKEND_CONFIG_VERSION 1
typedef struct rkv_backend_config {
  uint32_t struct_size; /* sizeof(rkv_backend_config) */
  rkv_backend_kind kind;
  int32_t device;      /* CUDA device ordinal */
  int32_t num_threads; /* CPU worker threads; 0 = one per core */
  const rkv_allocator *allocator;
  const rkv_logger *logger;
} rkv_backend_config;
#define RKV_BACKEND_CONFIG_INIT \
  { sizeof(rkv_backend_config), RKV_BACKEND_AUTO, 0, 0, NULL, NULL }

typedef struct rkv_backend rkv_backend;
typedef struct rkv_kv_pool rkv_kv_pool;

/* Creates a backend. CUDA without a CUDA build returns RKV_ERR_UNSUPPORTED; CUDA without a
 * usable device returns RKV_ERR_CUDA. AUTO never fails for lack of a GPU. *out = NULL on
 * failure. */
RKV_API rkv_status rkv_backend_create(const rkv_backend_config *cfg, rkv_backend **out);
RKV_API void rkv_backend_destroy(rkv_backend *b);
RKV_API rkv_backend_kind rkv_backend_get_kind(const rkv_backend *b);
RKV_API const char *rkv_backend_name(const rkv_backend *b);
RKV_API const char *rkv_backend_last_error(const rkv_backend *b);
/* Waits for all work the backend queued (no-op on CPU). */
RKV_API rkv_status rkv_backend_sync(rkv_backend *b);
/* How many rkv_backend_sync calls on b have returned RKV_OK. Work enqueued before such a call
 * is complete, so a caller that read n when it enqueued a transfer knows the transfer is done
 * once this exceeds n, without waiting: a fence for reusing a staging buffer when someone else
 * (an engine's end-of-step sync) already waited. 0 for NULL. */
RKV_API uint64_t rkv_backend_sync_count(const rkv_backend *b);
/* The backend's CUDA stream as an opaque value (NULL on CPU). */
RKV_API void *rkv_backend_stream(const rkv_backend *b);

/* A KV pool of num_blocks blocks of `layout`, in host memory (CPU) or device memory (CUDA,
 * cudaMalloc). Contents start zeroed. */
RKV_API rkv_status rkv_kv_pool_create(rkv_backend *b, const rkv_kv_layout *layout,
                                      uint32_t num_blocks, rkv_kv_pool **out);
RKV_API void rkv_kv_pool_destroy(rkv_kv_pool *p);
/* Base address (host pointer on CPU, device pointer on CUDA). */
RKV_API void *rkv_kv_pool_base(const rkv_kv_pool *p);
RKV_API const rkv_kv_layout *rkv_kv_pool_layout(const rkv_kv_pool *p);
RKV_API uint32_t rkv_kv_pool_num_blocks(const rkv_kv_pool *p);
RKV_API rkv_backend *rkv_kv_pool_backend(const rkv_kv_pool *p);
/* Per-slot f32 score buffer [num_blocks * block_size] (zeroed at creation), indexed by global
 * slot: the accumulated attention mass H2O-style policies rank by. Decode attention adds to
 * it; copy_blocks and apply_moves carry it with the tokens. Host or device pointer. */
RKV_API float *rkv_kv_pool_scores(const rkv_kv_pool *p);
/* Copies whole blocks src -> dst (copy-on-write ops). Block ids are validated. The dsts must
 * be distinct and none may be a src of the same call: the CUDA backend runs the ops at once
 * (the CPU one in order). The block manager's copy plans always are. */
RKV_API rkv_status rkv_kv_pool_copy_blocks(rkv_kv_pool *p, const rkv_block_copy *ops, size_t n);
/* Applies a compaction move plan: K and V of each src slot to its dst slot, in order.
 * Plans from the block manager only move to lower-or-equal positions of the same stream or
 * into fresh blocks, so in-order application never reads an overwritten slot. Each dst slot
 * appears at most once (the CUDA backend gathers every src, then scatters at once). */
RKV_API rkv_status rkv_kv_pool_apply_moves(rkv_kv_pool *p, const rkv_slot_move *moves, size_t n);
/* Host <-> pool transfers of whole blocks (swap, tests, tools). `host` holds n_ids blocks
 * back to back, in the order of ids. write_blocks zeroes the written blocks' per-slot scores
 * (they hold other tokens now; read_blocks does not save scores: rkv_kv_pool_read_scores
 * below does). */
RKV_API rkv_status rkv_kv_pool_read_blocks(rkv_kv_pool *p, const int32_t *ids, size_t n_ids,
                                           void *host);
RKV_API rkv_status rkv_kv_pool_write_blocks(rkv_kv_pool *p, const int32_t *ids, size_t n_ids,
                                            const void *host);
/* The per-slot scores of whole blocks to and from the host, [n_ids][block_size] f32 in the
 * order of ids: a swap that keeps H2O's ranking saves them next to read_blocks and puts them
 * back after write_blocks. Block ids are validated. */
RKV_API rkv_status rkv_kv_pool_read_scores(rkv_kv_pool *p, const int32_t *ids, size_t n_ids,
                                           float *host);
RKV_API rkv_status rkv_kv_pool_write_scores(rkv_kv_pool *p, const int32_t *ids, size_t n_ids,
                                            const float *host);

#ifdef __cplusplus
}
#endif
#endif /* RKV_RUNTIME_H */
