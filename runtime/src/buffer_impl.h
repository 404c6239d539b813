/* Private side of runtime buffers (rkv/buffer.h): the handle, and the entry points of the two
 * backends buffer.c dispatches to besides its own CPU path: CUDA (buffer_cuda.cu, stubs in
 * buffer.c without nvcc) and the emulated device (buffer_emu.c). buffer.c has already checked
 * every argument when these run. */
#ifndef RKV_BUFFER_IMPL_H
#define RKV_BUFFER_IMPL_H

#include <rkv/buffer.h>

#include "backend_impl.h"

#ifdef __cplusplus
extern "C" {
#endif

struct rkv_buffer {
  rkv_backend *backend;
  rkv_buffer_kind kind;
  size_t size;
  void *ptr;     /* what rkv_buffer_ptr hands out */
  void *store;   /* where the bytes are for the host: == ptr except for emulated DEVICE buffers */
  bool borrowed; /* rkv_buffer_wrap: the caller owns the memory */
  /* the emulated device's list of live buffers (rkv_emu_view looks addresses up in it) */
  struct rkv_buffer *emu_prev, *emu_next;
};

/* Direction of a transfer, for the CUDA copy kind. */
typedef enum rkvi_copy_dir {
  RKVI_COPY_H2D = 0,
  RKVI_COPY_D2H = 1,
  RKVI_COPY_ANY = 2 /* buffer to buffer: device or pinned on either side (UVA) */
} rkvi_copy_dir;

/* CUDA: cudaMalloc / cudaHostAlloc, their frees, cudaMemcpyAsync and cudaMemsetAsync on the
 * backend's stream. RKV_OK or RKV_ERR_CUDA (text in b->err, sticky errors poison b). */
rkv_status rkvi_cuda_buffer_alloc(rkv_backend *b, rkv_buffer_kind kind, size_t bytes, void **out);
void rkvi_cuda_buffer_free(rkv_backend *b, rkv_buffer_kind kind, void *p);
rkv_status rkvi_cuda_buffer_memcpy(rkv_backend *b, void *dst, const void *src, size_t bytes,
                                   rkvi_copy_dir dir);
rkv_status rkvi_cuda_buffer_fill(rkv_backend *b, void *dst, uint8_t value, size_t bytes);

/* Emulated device. */
/* A DEVICE buffer's memory: *addr in an inaccessible reserved range, *store the host bytes
 * (filled with 0xFF). RKV_ERR_NO_MEMORY with text when either cannot be had. */
rkv_status rkvi_emu_alloc(rkv_backend *b, size_t bytes, void **addr, void **store);
void rkvi_emu_free(rkv_backend *b, size_t bytes, void *addr, void *store);
void rkvi_emu_link(rkv_buffer *buf);
void rkvi_emu_unlink(rkv_buffer *buf);
/* Runs the queue in order (hazards recorded, not reported). */
void rkvi_emu_run(rkv_backend *b);
/* RKV_ERR_INVALID_ARG when [p, p + bytes) touches a live DEVICE buffer's address range. */
rkv_status rkvi_emu_check_host(rkv_backend *b, const void *p, size_t bytes, const char *what);
/* Queues dst <- src (fill < 0) or dst <- fill byte; src_host / dst_host mark the sides that are
 * host memory the host could touch, whose bytes are saved for the hazard check. */
rkv_status rkvi_emu_enqueue(rkv_backend *b, const char *what, void *dst, const void *src,
                            size_t bytes, int fill, bool src_host, bool dst_host);

#ifdef __cplusplus
}
#endif
#endif /* RKV_BUFFER_IMPL_H */
