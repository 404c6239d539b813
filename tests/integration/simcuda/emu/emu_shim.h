/* Test-only seam for test_sim_cuda_emu and test_model_eval_emu: included first by the wrapped
 * simulator / eval tool sources, it renames the few library entries that need a GPU (a CUDA
 * backend, the device query-window push, the device eviction) to host emulations over a CPU
 * pool (emu_shim.c). Everything else (KV write, attention, tables, compaction, descriptors) is
 * the real library on a CPU pool. The rkv headers are included before the renames so their
 * prototypes keep the real names. */
#ifndef RKV_TEST_EMU_SHIM_H
#define RKV_TEST_EMU_SHIM_H

#include <rkv/attention.h>
#include <rkv/attention_cuda.h>
#include <rkv/evict.h>
#include <rkv/evict_cuda.h>
#include <rkv/runtime.h>

/* CUDA requests get a one-thread CPU backend, which emu_backend_get_kind reports as
 * RKV_BACKEND_CUDA until emu_backend_destroy (so code that picks its path by the backend's kind,
 * like the eval tool's model runner, takes the CUDA one). */
rkv_status emu_backend_create(const rkv_backend_config *cfg, rkv_backend **out);
rkv_backend_kind emu_backend_get_kind(const rkv_backend *b);
void emu_backend_destroy(rkv_backend *b);
/* Real pool; remembered in creation order (emu_pool). */
rkv_status emu_kv_pool_create(rkv_backend *b, const rkv_kv_layout *layout, uint32_t num_blocks,
                              rkv_kv_pool **out);
rkv_status emu_attn_cuda_qwindow_push(rkv_backend *backend, const rkv_cuda_qwindow *w,
                                      uint32_t layer, const float *q, const int32_t *q_indptr,
                                      const int32_t *seq_slots, const int64_t *pos,
                                      uint32_t num_seqs);
rkv_status emu_evict_cuda_workspace_size(const rkv_evict_params *p, const rkv_kv_pool *pool,
                                         uint32_t num_streams, uint32_t group, int32_t max_len,
                                         size_t *bytes);
rkv_status emu_evict_cuda_compress(const rkv_evict_params *p, rkv_kv_pool *pool,
                                   const rkv_evict_cuda_batch *batch, void *workspace,
                                   size_t ws_bytes);

/* The real calls, after the queued copies have run (stream order). */
rkv_status emu_attn_write_kv(rkv_kv_pool *pool, const float *k, const float *v,
                             const int64_t *slots, uint32_t n_rows);
rkv_status emu_attn_decode(rkv_kv_pool *pool, const rkv_attn_params *p, void *workspace,
                           size_t ws_bytes);
rkv_status emu_attn_prefill(rkv_kv_pool *pool, const rkv_attn_params *p, void *workspace,
                            size_t ws_bytes);
rkv_status emu_kv_pool_read_blocks(rkv_kv_pool *p, const int32_t *ids, size_t n_ids, void *host);
rkv_status emu_kv_pool_write_blocks(rkv_kv_pool *p, const int32_t *ids, size_t n_ids,
                                    const void *host);
rkv_status emu_kv_pool_copy_blocks(rkv_kv_pool *p, const rkv_block_copy *ops, size_t n);

/* The fake stream's copy queue (emu/cuda_runtime.h). */
void emu_fake_enqueue(void *dst, const void *src, size_t n);
void emu_fake_flush(void);
unsigned long emu_fake_hazards(void);

/* Test side: pools created since the last reset, and the count of emulated calls. */
void emu_reset(void);
rkv_kv_pool *emu_pool(unsigned i);
unsigned long emu_compress_calls(void);
unsigned long emu_push_calls(void);

#ifndef EMU_SHIM_IMPL
#define rkv_backend_create emu_backend_create
#define rkv_backend_get_kind emu_backend_get_kind
#define rkv_backend_destroy emu_backend_destroy
#define rkv_kv_pool_create emu_kv_pool_create
#define rkv_attn_cuda_qwindow_push emu_attn_cuda_qwindow_push
#define rkv_evict_cuda_workspace_size emu_evict_cuda_workspace_size
#define rkv_evict_cuda_compress emu_evict_cuda_compress
#define rkv_attn_write_kv emu_attn_write_kv
#define rkv_attn_decode emu_attn_decode
#define rkv_attn_prefill emu_attn_prefill
#define rkv_kv_pool_read_blocks emu_kv_pool_read_blocks
#define rkv_kv_pool_write_blocks emu_kv_pool_write_blocks
#define rkv_kv_pool_copy_blocks emu_kv_pool_copy_blocks
#endif

#endif /* RKV_TEST_EMU_SHIM_H */
