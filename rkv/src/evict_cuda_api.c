/* The public, deprecated device eviction calls of <rkv/evict_cuda.h>: each forwards to its
 * internal twin (evict_cuda_internal.h), which the evictor uses. They keep working in this
 * release for engines that drive the protocol themselves; rkv_evictor replaces them. */
#include "evict_cuda_internal.h"

rkv_status rkv_evict_cuda_workspace_size(const rkv_evict_params *p, const rkv_kv_pool *pool,
                                         uint32_t num_streams, uint32_t group, int32_t max_len,
                                         size_t *bytes) {
  return rkvi_evict_cuda_workspace_size(p, pool, num_streams, group, max_len, bytes);
}

rkv_status rkv_evict_cuda_compress(const rkv_evict_params *p, rkv_kv_pool *pool,
                                   const rkv_evict_cuda_batch *batch, void *workspace,
                                   size_t ws_bytes) {
  return rkvi_evict_cuda_compress(p, pool, batch, workspace, ws_bytes);
}

rkv_status rkv_evict_cuda_describe(const rkv_blockmgr *m, int64_t seq, const rkv_compact_map *maps,
                                   uint32_t n_maps, uint32_t num_q_heads, int32_t window,
                                   int64_t qwin_seq_offset, int32_t old_base, int32_t new_base,
                                   rkv_evict_cuda_stream *streams, int32_t *new_blocks,
                                   uint32_t new_cap, uint32_t *n_new) {
  /* The protocol cuts every stream to the budget, so the kernels would rank and rewrite a
   * protected prefix (shared cached blocks among them); rkv_evictor supports it. */
  if (m && rkv_blockmgr_seq_protected(m, seq) > 0) return RKV_ERR_UNSUPPORTED;
  return rkvi_evict_cuda_describe(m, seq, 0, maps, n_maps, num_q_heads, window, qwin_seq_offset,
                                  old_base, new_base, streams, new_blocks, new_cap, n_new);
}

rkv_status rkv_evict_cuda_freed_blocks(const rkv_blockmgr *m, const int32_t *old_blocks,
                                       uint32_t n_old, int32_t *out, uint32_t cap,
                                       uint32_t *n_out) {
  return rkvi_evict_cuda_freed_blocks(m, old_blocks, n_old, out, cap, n_out);
}

rkv_status rkv_evict_cuda_pack(const rkv_evict_cuda_stream *streams, uint32_t n_streams,
                               const int32_t *old_blocks, uint32_t n_old, const int32_t *new_blocks,
                               uint32_t n_new, const int32_t *freed, uint32_t n_freed, void *host,
                               size_t host_cap, void *device, rkv_evict_cuda_batch *batch,
                               size_t *bytes) {
  return rkvi_evict_cuda_pack(streams, n_streams, old_blocks, n_old, new_blocks, n_new, freed,
                              n_freed, host, host_cap, device, batch, bytes);
}
