/* librkv emulated device: a test backend for the host logic of device code paths (staging,
 * uploads, stream order, syncs) on machines without a GPU (docs/RUNTIME-BUFFERS.md).
 *
 * It is a CPU backend (rkv_backend_get_kind says RKV_BACKEND_CPU, rkv_backend_name "emu"; KV
 * pools and kernels are the CPU ones) whose rkv_buffer transfers behave like a GPU's:
 *   - A DEVICE buffer's storage is separate host memory. rkv_buffer_ptr returns an address in
 *     a reserved, inaccessible range of the same size, so the host faults when it
 *     dereferences a device pointer. Host pointers passed to upload/download that lie in such
 *     a range are rejected (a device pointer used as a host one).
 *   - Upload, download, copy and fill are queued, not run. The queue runs, in call order, at
 *     rkv_backend_sync, at rkv_emu_view (an emulated kernel launch), and when a buffer is
 *     destroyed or grown: the latest moment a GPU could run them, so a host that reads a
 *     download's destination early sees the old bytes.
 *   - Copy hazards: the host bytes an operation reads (upload sources, pinned copy sources)
 *     are saved when it is queued, and the bytes it writes (download and pinned copy
 *     destinations) too. When the queue runs, host bytes that differ from the saved ones were
 *     changed by the host while the operation was in flight: on a GPU the result would depend
 *     on timing. That is recorded as a hazard; so is an emulated kernel's access outside every
 *     live buffer, and host memory released while queued operations still use it
 *     (rkv_emu_host_release). The next rkv_backend_sync returns RKV_ERR_STATE with the first
 *     such hazard in rkv_backend_last_error (like an asynchronous CUDA error); the queue has
 *     run all the same. Each hazard is also logged at RKV_LOG_ERROR.
 * Fresh DEVICE memory (and the part a reserve adds) is filled with 0xFF bytes.
 * Not emulated: KV pool memory and the library's kernels (CPU pools, CPU kernels). */
#ifndef RKV_BUFFER_EMU_H
#define RKV_BUFFER_EMU_H

#include <rkv/buffer.h>

#ifdef __cplusplus
extern "C" {
#endif

/* An emulated-device backend. cfg as for rkv_backend_create (NULL = defaults); its kind must
 * be RKV_BACKEND_AUTO or RKV_BACKEND_CPU (the emulation never needs a GPU). */
RKV_API rkv_status rkv_backend_create_emulated(const rkv_backend_config *cfg, rkv_backend **out);
RKV_API bool rkv_backend_is_emulated(const rkv_backend *backend);

/* An emulated kernel's access to [dev, dev + bytes): runs the queue (the kernel sees every
 * earlier operation, in stream order), then gives the host address of those bytes in *host.
 * dev must lie, with all its bytes, inside one live buffer of the backend (a DEVICE address,
 * or a pinned buffer's host address, which a kernel may read on a GPU too); otherwise the
 * access is recorded as a hazard and RKV_ERR_INVALID_ARG returned. The view is valid until
 * the next call that queues, grows or frees. */
RKV_API rkv_status rkv_emu_view(rkv_backend *backend, const void *dev, size_t bytes, void **host);

/* The host is about to free or reuse [host, host + bytes): if a queued operation still reads
 * or writes those bytes, that is a hazard (recorded, RKV_ERR_STATE) and the operation is
 * detached from the memory (an upload then uses the bytes saved when it was queued, a
 * download's bytes are dropped), so the emulation never touches freed memory. RKV_OK on
 * other backends, which track nothing. */
RKV_API rkv_status rkv_emu_host_release(rkv_backend *backend, const void *host, size_t bytes);

/* Hazards recorded since the backend was created (0 on other backends), and the text of the
 * first one since the previous sync that reported (or of the last one reported; "" if none). */
RKV_API uint64_t rkv_emu_hazards(const rkv_backend *backend);
RKV_API const char *rkv_emu_hazard_text(const rkv_backend *backend);
/* Operations queued and not yet run (0 on other backends). */
RKV_API size_t rkv_emu_pending(const rkv_backend *backend);

#ifdef __cplusplus
}
#endif
#endif /* RKV_BUFFER_EMU_H */
