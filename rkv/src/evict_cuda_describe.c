/* Host half of the GPU eviction flow (rkv/evict_cuda.h): turns the maps that
 * rkv_blockmgr_compact_uniform returned into the per-stream descriptors and new rows the
 * device kernels read. Plain C over the block manager's public API, so it builds (and is
 * tested) without CUDA. */
#include <string.h>
#include "evict_cuda_internal.h"

#include "rkv_internal.h"

rkv_status rkvi_evict_cuda_describe(const rkv_blockmgr *m, int64_t seq, int32_t protect,
                                    const rkv_compact_map *maps, uint32_t n_maps,
                                    uint32_t num_q_heads, int32_t window, int64_t qwin_seq_offset,
                                    int32_t old_base, int32_t new_base,
                                    rkv_evict_cuda_stream *streams, int32_t *new_blocks,
                                    uint32_t new_cap, uint32_t *n_new) {
  if (!m || (n_maps && (!maps || !streams)) || !n_new || window <= 0 || old_base < 0 ||
      new_base < 0 || qwin_seq_offset < 0)
    return RKV_ERR_INVALID_ARG;
  const rkv_blockmgr_config *cfg = rkv_blockmgr_get_config(m);
  const uint32_t kvh = cfg->num_kv_heads;
  if (num_q_heads == 0 || num_q_heads % kvh != 0) return RKV_ERR_INVALID_ARG;
  if (protect < 0 || protect % (int32_t)cfg->block_size != 0) return RKV_ERR_INVALID_ARG;
  const int32_t fixed = protect / (int32_t)cfg->block_size; /* blocks the kernels never see */
  if (!rkv_blockmgr_seq_exists(m, seq)) return RKV_ERR_NOT_FOUND;
  const uint32_t group = num_q_heads / kvh;
  const int64_t row = (int64_t)window * cfg->head_dim; /* elements of one head's window */

  /* First pass: sizes only, so a too-small new_blocks changes nothing. */
  uint64_t need = 0;
  for (uint32_t i = 0; i < n_maps; i++) {
    const int32_t *ids;
    int32_t nb;
    if (maps[i].layer >= cfg->num_layers || maps[i].head >= kvh) return RKV_ERR_INVALID_ARG;
    rkv_status s = rkv_blockmgr_stream_blocks(m, seq, maps[i].layer, maps[i].head, &ids, &nb);
    if (s != RKV_OK) return s;
    /* a cut stream kept its protected blocks and had tokens after them */
    if (fixed && (maps[i].old_len <= protect || maps[i].old_n_blocks <= fixed || nb < fixed))
      return RKV_ERR_INVALID_ARG;
    need += (uint64_t)(nb - fixed);
  }
  if (need + (uint64_t)new_base > INT32_MAX) return RKV_ERR_INVALID_ARG;
  *n_new = (uint32_t)need;
  if (need > new_cap || (need && !new_blocks)) return RKV_ERR_CAPACITY;

  uint32_t w = 0;
  for (uint32_t i = 0; i < n_maps; i++) {
    const int32_t *ids;
    int32_t nb;
    (void)rkv_blockmgr_stream_blocks(m, seq, maps[i].layer, maps[i].head, &ids, &nb);
    rkv_evict_cuda_stream *d = &streams[i];
    d->old_len = maps[i].old_len - protect;
    d->old_offset = old_base + maps[i].old_offset + fixed;
    d->new_offset = new_base + (int32_t)w;
    d->kv_head = (int32_t)maps[i].head;
    d->qwin_offset = qwin_seq_offset +
                     ((int64_t)maps[i].layer * num_q_heads + (int64_t)maps[i].head * group) * row;
    for (int32_t b = fixed; b < nb; b++) new_blocks[w++] = ids[b];
  }
  return RKV_OK;
}

rkv_status rkvi_evict_cuda_freed_blocks(const rkv_blockmgr *m, const int32_t *old_blocks,
                                        uint32_t n_old, int32_t *out, uint32_t cap,
                                        uint32_t *n_out) {
  if (!m || (n_old && !old_blocks) || !n_out) return RKV_ERR_INVALID_ARG;
  uint32_t n = 0;
  for (uint32_t i = 0; i < n_old; i++) {
    uint32_t ref = 0;
    if (rkv_blockmgr_block_ref(m, old_blocks[i], &ref) != RKV_OK) return RKV_ERR_INVALID_ARG;
    if (ref != 0) continue;
    bool dup = false;
    for (uint32_t k = 0; k < n && k < cap && !dup; k++) dup = out[k] == old_blocks[i];
    if (dup) continue;
    if (n < cap && out) out[n] = old_blocks[i];
    n++;
  }
  *n_out = n;
  return n > cap || (n && !out) ? RKV_ERR_CAPACITY : RKV_OK;
}

static size_t pack_align(size_t x) {
  return (x + 255u) & ~(size_t)255u;
}

rkv_status rkvi_evict_cuda_pack(const rkv_evict_cuda_stream *streams, uint32_t n_streams,
                                const int32_t *old_blocks, uint32_t n_old,
                                const int32_t *new_blocks, uint32_t n_new, const int32_t *freed,
                                uint32_t n_freed, void *host, size_t host_cap, void *device,
                                rkv_evict_cuda_batch *batch, size_t *bytes) {
  if (!bytes || !n_streams || !streams || (n_old && !old_blocks) || (n_new && !new_blocks) ||
      (n_freed && !freed))
    return RKV_ERR_INVALID_ARG;
  const size_t o_old = pack_align((size_t)n_streams * sizeof *streams);
  const size_t o_new = o_old + pack_align((size_t)n_old * sizeof(int32_t));
  const size_t o_fr = o_new + pack_align((size_t)n_new * sizeof(int32_t));
  *bytes = o_fr + (size_t)n_freed * sizeof(int32_t);
  if (!host) return RKV_OK;
  if (!device || !batch) return RKV_ERR_INVALID_ARG;
  if (host_cap < *bytes) return RKV_ERR_CAPACITY;
  unsigned char *h = host, *d = device;
  memcpy(h, streams, (size_t)n_streams * sizeof *streams);
  if (n_old) memcpy(h + o_old, old_blocks, (size_t)n_old * sizeof(int32_t));
  if (n_new) memcpy(h + o_new, new_blocks, (size_t)n_new * sizeof(int32_t));
  if (n_freed) memcpy(h + o_fr, freed, (size_t)n_freed * sizeof(int32_t));
  batch->num_streams = n_streams;
  batch->streams = (const rkv_evict_cuda_stream *)(void *)d;
  batch->old_blocks = (const int32_t *)(void *)(d + o_old);
  batch->new_blocks = (const int32_t *)(void *)(d + o_new);
  batch->clear_blocks = n_freed ? (const int32_t *)(void *)(d + o_fr) : NULL;
  batch->n_clear = n_freed;
  return RKV_OK;
}
