/* The device eviction protocol as the library itself calls it (the evictor, evictor_device.c):
 * the same functions <rkv/evict_cuda.h> exports, under internal names, so that the public ones
 * can carry RKV_DEPRECATED without the library warning about itself. Semantics: evict_cuda.h.
 * Private to the rkv module. */
#ifndef RKV_EVICT_CUDA_INTERNAL_H
#define RKV_EVICT_CUDA_INTERNAL_H

#include <rkv/evict_cuda.h>

/* The most streams one compression launch takes: the kernels put them on a grid's y or z
 * dimension. The evictor splits larger batches (evictor_device.c). */
#define RKVI_EVICT_CUDA_MAX_STREAMS 65535u
/* The longest stream (tokens after the protected prefix) R-KV's kernels take: its similarity
 * tiles of 64 x 64 keys lie on a grid's y dimension. The evictor refuses a longer one before
 * it cuts anything (evictor_device.c, precheck). */
#define RKVI_EVICT_CUDA_MAX_SIM_LEN (65535 * 64)

#ifdef __cplusplus
extern "C" {
#endif

rkv_status rkvi_evict_cuda_workspace_size(const rkv_evict_params *p, const rkv_kv_pool *pool,
                                          uint32_t num_streams, uint32_t group, int32_t max_len,
                                          size_t *bytes);
rkv_status rkvi_evict_cuda_compress(const rkv_evict_params *p, rkv_kv_pool *pool,
                                    const rkv_evict_cuda_batch *batch, void *workspace,
                                    size_t ws_bytes);
/* protect: the sequence's protected prefix, whole blocks (the evictor passes
 * rkv_blockmgr_seq_protected; the public describe refuses a protected sequence). Each stream is
 * described from its first unprotected block on: the kernels select among positions [protect,
 * old_len) as a stream of old_len - protect tokens, and the new row lists the fresh ids after the
 * protected blocks (ceil(budget / block_size) of them when the cut kept protect + budget tokens),
 * so the protected blocks are never read for selection nor written. */
rkv_status rkvi_evict_cuda_describe(const rkv_blockmgr *m, int64_t seq, int32_t protect,
                                    const rkv_compact_map *maps, uint32_t n_maps,
                                    uint32_t num_q_heads, int32_t window, int64_t qwin_seq_offset,
                                    int32_t old_base, int32_t new_base,
                                    rkv_evict_cuda_stream *streams, int32_t *new_blocks,
                                    uint32_t new_cap, uint32_t *n_new);
rkv_status rkvi_evict_cuda_freed_blocks(const rkv_blockmgr *m, const int32_t *old_blocks,
                                        uint32_t n_old, int32_t *out, uint32_t cap,
                                        uint32_t *n_out);
rkv_status rkvi_evict_cuda_pack(const rkv_evict_cuda_stream *streams, uint32_t n_streams,
                                const int32_t *old_blocks, uint32_t n_old,
                                const int32_t *new_blocks, uint32_t n_new, const int32_t *freed,
                                uint32_t n_freed, void *host, size_t host_cap, void *device,
                                rkv_evict_cuda_batch *batch, size_t *bytes);

#ifdef __cplusplus
}
#endif
#endif /* RKV_EVICT_CUDA_INTERNAL_H */
