/* Private backend interface: the CPU backend implements it in backend.c, the CUDA backend in
 * backend_cuda.cu (compiled only when nvcc is found). Other modules reach a pool's memory
 * through the public accessors and check rkv_backend_get_kind to pick CPU or CUDA kernels. */
#ifndef RKV_BACKEND_IMPL_H
#define RKV_BACKEND_IMPL_H

#include "rkv_internal.h"

#ifdef __cplusplus
extern "C" {
#endif

struct rkv_backend {
  rkv_backend_kind kind;
  int32_t device;
  int32_t num_threads;
  rkv_allocator alloc;
  bool has_alloc;
  rkv_logger logger;
  bool has_logger;
  void *stream;   /* cudaStream_t on CUDA */
  bool poisoned;  /* a sticky CUDA error happened; every later call fails */
  uint64_t syncs; /* rkv_backend_sync calls that returned RKV_OK */
  char err[RKV_ERRBUF];
  struct rkvi_emu *emu; /* emulated device state (buffer_emu.c); NULL on real backends */
};

struct rkv_kv_pool {
  rkv_backend *backend;
  rkv_kv_layout layout;
  uint32_t num_blocks;
  size_t block_bytes;
  size_t bytes;
  void *base;    /* host or device */
  float *scores; /* [num_blocks * block_size], host or device */
};

/* CUDA side (backend_cuda.cu). Each returns RKV_OK or RKV_ERR_CUDA with text in b->err. */
rkv_status rkvi_cuda_backend_init(rkv_backend *b);
void rkvi_cuda_backend_fini(rkv_backend *b);
rkv_status rkvi_cuda_sync(rkv_backend *b);
rkv_status rkvi_cuda_pool_alloc(rkv_kv_pool *p);
void rkvi_cuda_pool_free(rkv_kv_pool *p);
rkv_status rkvi_cuda_copy_blocks(rkv_kv_pool *p, const rkv_block_copy *ops, size_t n);
rkv_status rkvi_cuda_apply_moves(rkv_kv_pool *p, const rkv_slot_move *moves, size_t n);
rkv_status rkvi_cuda_read_blocks(rkv_kv_pool *p, const int32_t *ids, size_t n, void *host);
rkv_status rkvi_cuda_write_blocks(rkv_kv_pool *p, const int32_t *ids, size_t n, const void *host);
/* Scores of whole blocks between the pool and the host (to_host: pool -> host). */
rkv_status rkvi_cuda_scores_copy(rkv_kv_pool *p, const int32_t *ids, size_t n, float *host,
                                 bool to_host);
/* The CUDA events behind rkv_backend_timer (timer.c): a pair made with timing enabled, one
 * recorded on the backend's stream, the milliseconds between them once the stop event is
 * reached (the host waits for it). */
rkv_status rkvi_cuda_event_pair_create(rkv_backend *b, void **start, void **stop);
void rkvi_cuda_event_pair_destroy(void *start, void *stop);
rkv_status rkvi_cuda_event_record(rkv_backend *b, void *event);
rkv_status rkvi_cuda_event_elapsed(rkv_backend *b, void *start, void *stop, float *ms);
/* Number of CUDA devices (0 when the driver or a device is missing). */
int rkvi_cuda_device_count(void);

const rkv_allocator *rkvi_backend_allocator(const rkv_backend *b);
/* A caller's backend config (any struct_size from the first release on, NULL = defaults)
 * with the defaults filled in; RKV_ERR_INVALID_ARG for an unknown struct_size. */
rkv_status rkvi_backend_config_load(const rkv_backend_config *cfg, rkv_backend_config *out);

/* Emulated device (buffer_emu.c): runs the queued transfers at the sync and reports the first
 * hazard recorded since the previous report (RKV_ERR_STATE); fini also frees the state. */
rkv_status rkvi_emu_sync(rkv_backend *b);
void rkvi_emu_fini(rkv_backend *b);

#ifdef __cplusplus
}
#endif
#endif /* RKV_BACKEND_IMPL_H */
