/* librkv runtime buffers: device memory and page-locked host memory owned by a backend, and
 * the transfers between them, enqueued on the backend's stream. This is the only door to the
 * CUDA runtime's memory calls for code outside runtime/, attention/ and rkv/
 * (docs/RUNTIME-BUFFERS.md).
 *
 *   backend  DEVICE buffer               HOST_PINNED buffer          transfers
 *   CPU      host memory (allocator)     host memory (allocator)     memcpy, done on return
 *   CUDA     cudaMalloc                  cudaHostAlloc               cudaMemcpyAsync on the
 *                                                                    backend's stream
 *   emulated separate host memory behind host memory (allocator)     queued, run at the sync
 *            an inaccessible address                                 (<rkv/buffer_emu.h>)
 *
 * The async rule (every backend, whatever it does today):
 *   - An upload, or a copy whose source is a HOST_PINNED buffer, reads its host source at some
 *     moment between the call and the return of the next rkv_backend_sync. Until then the
 *     host must neither modify nor free those bytes. This holds for pageable and pinned
 *     sources alike: today's CUDA copies a pageable source into its own staging memory before
 *     returning, but a pinned source is read by the DMA engine whenever the stream gets there,
 *     and code written to this contract does not care which it was given.
 *   - A download, or a copy into a HOST_PINNED buffer, writes its host destination at some
 *     moment in that same interval: the host must not read, write or free it before the sync.
 *   - Work on the stream runs in call order, so an upload followed by a kernel or a download
 *     of the same bytes needs no sync in between; only the host side has to wait.
 *   - rkv_buffer_destroy and a growing rkv_buffer_reserve wait for the stream first, so a
 *     HOST_PINNED buffer may be destroyed or grown with copies from it still queued; a
 *     pageable source has no such owner and must outlive the sync.
 * The emulated device checks this rule and reports a violation at the next sync.
 *
 * Errors: NULL handles give RKV_ERR_INVALID_ARG; everything else also leaves a message in
 * rkv_backend_last_error of the buffer's backend. A failed call changes nothing: bounds
 * (offset + bytes within the buffer), kinds and backends are checked before anything is
 * enqueued or allocated. A CUDA error of an earlier, asynchronous operation may surface at
 * any later call (RKV_ERR_CUDA); a sticky one poisons the backend as the KV pools' do.
 *
 * A backend's buffers and its stream are used by one thread at a time, like the backend. */
#ifndef RKV_BUFFER_H
#define RKV_BUFFER_H

#include <rkv/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum rkv_buffer_kind {
  RKV_BUFFER_DEVICE = 0,     /* on the backend's device; host memory on the CPU backend */
  RKV_BUFFER_HOST_PINNED = 1 /* page-locked host memory on CUDA, aligned host memory else */
} rkv_buffer_kind;

/* Every buffer's address is a multiple of this (cudaMalloc's guarantee, kept on every
 * backend so kernels may use vector loads at offset 0). */
#define RKV_BUFFER_ALIGN 256

typedef struct rkv_buffer rkv_buffer;

/* A buffer of `bytes` bytes (0 is allowed: no memory, rkv_buffer_ptr NULL, grow it with
 * rkv_buffer_reserve). Contents start undefined (the emulated device fills them with 0xFF,
 * so reading what was never written shows up as NaN / -1). The handle, and host memory on
 * the CPU and emulated backends, come from the backend's allocator. *out = NULL on failure. */
RKV_API rkv_status rkv_buffer_create(rkv_backend *backend, rkv_buffer_kind kind, size_t bytes,
                                     rkv_buffer **out);
/* Waits for the backend's stream, then frees. NULL is a no-op. Destroy every buffer before
 * its backend. */
RKV_API void rkv_buffer_destroy(rkv_buffer *buf);

/* The buffer's address: a device pointer for a DEVICE buffer on CUDA and on the emulated
 * device (the host must not dereference it: on the emulated device doing so faults), a host
 * pointer otherwise. It changes when rkv_buffer_reserve grows the buffer. */
RKV_API void *rkv_buffer_ptr(const rkv_buffer *buf);
RKV_API size_t rkv_buffer_size(const rkv_buffer *buf);
RKV_API rkv_buffer_kind rkv_buffer_get_kind(const rkv_buffer *buf);
RKV_API rkv_backend *rkv_buffer_backend(const rkv_buffer *buf);

/* True when DEVICE buffers are host memory the host may use directly and every transfer is
 * done on return (the CPU backend); false on CUDA and on the emulated device, whose callers
 * take the device path: stage, transfer, sync. */
RKV_API bool rkv_backend_device_is_host(const rkv_backend *backend);

/* Host -> DEVICE buffer: bytes [off, off + bytes) of dst from src_host (async rule above).
 * dst must be a DEVICE buffer (a pinned buffer is host memory: write it directly). bytes 0 is
 * a no-op and src_host may then be NULL. */
RKV_API rkv_status rkv_buffer_upload(rkv_buffer *dst, size_t off, const void *src_host,
                                     size_t bytes);
/* DEVICE buffer -> host: bytes [off, off + bytes) of src into dst_host (async rule above:
 * the bytes are there after the next rkv_backend_sync). */
RKV_API rkv_status rkv_buffer_download(const rkv_buffer *src, size_t off, void *dst_host,
                                       size_t bytes);
/* Buffer -> buffer of the same backend, in stream order: device to device, and also pinned
 * to device (the staging upload) or device to pinned. Ranges of one buffer must not overlap. */
RKV_API rkv_status rkv_buffer_copy(rkv_buffer *dst, size_t dst_off, const rkv_buffer *src,
                                   size_t src_off, size_t bytes);
/* Sets bytes [off, off + bytes) of a DEVICE buffer to `value`, in stream order
 * (cudaMemsetAsync on CUDA). */
RKV_API rkv_status rkv_buffer_fill(rkv_buffer *dst, size_t off, uint8_t value, size_t bytes);

/* Makes the buffer at least `bytes` long. A request within the current size does nothing.
 * A larger one waits for the stream (a sync: queued work may still use the old memory),
 * allocates exactly `bytes`, copies the old contents to the start of the new memory, then
 * frees the old memory; the bytes past the old size are undefined and rkv_buffer_ptr
 * changes. Both allocations exist for a moment. On failure the buffer keeps its memory,
 * size and contents. Round requests up yourself if they creep upward. */
RKV_API rkv_status rkv_buffer_reserve(rkv_buffer *buf, size_t bytes);

/* A buffer over memory the caller owns (a KV pool's rkv_kv_pool_base, a framework's tensor),
 * so that the transfers above reach it: `ptr` must be `bytes` of memory of `kind` on this
 * backend (device memory of its device on CUDA, host memory on the CPU backend) and a multiple
 * of RKV_BUFFER_ALIGN. rkv_buffer_destroy frees only the handle (after waiting for the
 * stream); rkv_buffer_reserve cannot grow it (RKV_ERR_INVALID_ARG). The emulated device
 * refuses (RKV_ERR_UNSUPPORTED): its device memory is only what rkv_buffer_create made, so
 * that every device address it hands out faults on the host. *out = NULL on failure. */
RKV_API rkv_status rkv_buffer_wrap(rkv_backend *backend, rkv_buffer_kind kind, void *ptr,
                                   size_t bytes, rkv_buffer **out);

/* ---- Timing on the backend's stream ----------------------------------------------------
 * A pair of marks: start and stop are recorded where the stream has got to when they are
 * called, elapsed_ms waits for the stop mark and returns the time the stream took between
 * them. On CUDA these are CUDA events (cudaEventRecord, cudaEventElapsedTime: device time,
 * resolution about half a microsecond); on the CPU backend and the emulated device, whose
 * work is done by the time the stream is synchronised, each mark synchronises the backend
 * (rkv_backend_sync, so its errors and the emulator's hazards surface there) and reads a
 * monotonic host clock. Work queued before start is therefore never counted on any backend.
 * A timer belongs to one backend; destroy it before the backend. */
typedef struct rkv_backend_timer rkv_backend_timer;

/* The handle comes from the backend's allocator. *out = NULL on failure. */
RKV_API rkv_status rkv_backend_timer_create(rkv_backend *backend, rkv_backend_timer **out);
/* NULL is a no-op. */
RKV_API void rkv_backend_timer_destroy(rkv_backend_timer *t);
/* Records the start mark; a timer may be started again, which forgets the previous stop. */
RKV_API rkv_status rkv_backend_timer_start(rkv_backend_timer *t);
/* Records the stop mark; RKV_ERR_STATE before a start. */
RKV_API rkv_status rkv_backend_timer_stop(rkv_backend_timer *t);
/* Waits for the stop mark and writes the milliseconds between the marks to *ms;
 * RKV_ERR_STATE unless both marks are recorded. */
RKV_API rkv_status rkv_backend_timer_elapsed_ms(rkv_backend_timer *t, float *ms);

#ifdef __cplusplus
}
#endif
#endif /* RKV_BUFFER_H */
