/* Backends and KV pools: the CPU backend (host memory) and the dispatch to the CUDA backend
 * when it is built. Without CUDA the same API returns RKV_ERR_UNSUPPORTED for CUDA requests. */
#include <string.h>

#include "backend_impl.h"
#include "copy_stream.h"

const rkv_allocator *rkvi_backend_allocator(const rkv_backend *b) {
  return b && b->has_alloc ? &b->alloc : NULL;
}

#ifndef RKV_HAVE_CUDA
/* Stubs so the CPU-only build links; rkv_backend_create never reaches them. */
rkv_status rkvi_cuda_backend_init(rkv_backend *b) {
  return rkvi_fail(b->err, RKV_ERR_UNSUPPORTED, "librkv was built without CUDA");
}
void rkvi_cuda_backend_fini(rkv_backend *b) {
  (void)b;
}
rkv_status rkvi_cuda_sync(rkv_backend *b) {
  return rkvi_cuda_backend_init(b);
}
rkv_status rkvi_cuda_pool_alloc(rkv_kv_pool *p) {
  return rkvi_cuda_backend_init(p->backend);
}
void rkvi_cuda_pool_free(rkv_kv_pool *p) {
  (void)p;
}
rkv_status rkvi_cuda_copy_blocks(rkv_kv_pool *p, const rkv_block_copy *o, size_t n) {
  (void)o, (void)n;
  return rkvi_cuda_backend_init(p->backend);
}
rkv_status rkvi_cuda_apply_moves(rkv_kv_pool *p, const rkv_slot_move *m, size_t n) {
  (void)m, (void)n;
  return rkvi_cuda_backend_init(p->backend);
}
rkv_status rkvi_cuda_read_blocks(rkv_kv_pool *p, const int32_t *i, size_t n, void *h) {
  (void)i, (void)n, (void)h;
  return rkvi_cuda_backend_init(p->backend);
}
rkv_status rkvi_cuda_write_blocks(rkv_kv_pool *p, const int32_t *i, size_t n, const void *h) {
  (void)i, (void)n, (void)h;
  return rkvi_cuda_backend_init(p->backend);
}
rkv_status rkvi_cuda_scores_copy(rkv_kv_pool *p, const int32_t *i, size_t n, float *h, bool t) {
  (void)i, (void)n, (void)h, (void)t;
  return rkvi_cuda_backend_init(p->backend);
}
rkv_status rkvi_cuda_event_pair_create(rkv_backend *b, void **start, void **stop) {
  *start = *stop = NULL;
  return rkvi_cuda_backend_init(b);
}
void rkvi_cuda_event_pair_destroy(void *start, void *stop) {
  (void)start, (void)stop;
}
rkv_status rkvi_cuda_event_record(rkv_backend *b, void *event) {
  (void)event;
  return rkvi_cuda_backend_init(b);
}
rkv_status rkvi_cuda_event_elapsed(rkv_backend *b, void *start, void *stop, float *ms) {
  (void)start, (void)stop, (void)ms;
  return rkvi_cuda_backend_init(b);
}
int rkvi_cuda_device_count(void) {
  return 0;
}
#endif

rkv_status rkvi_backend_config_load(const rkv_backend_config *cfg, rkv_backend_config *out) {
  /* Fields past the caller's struct_size (an older, shorter struct) take their defaults and
   * are never read from the caller's memory. */
  const rkv_backend_config def = RKV_BACKEND_CONFIG_INIT;
  *out = def;
  if (!cfg) return RKV_OK;
  if (cfg->struct_size < sizeof(uint32_t) * 2 || cfg->struct_size > sizeof(rkv_backend_config))
    return RKV_ERR_INVALID_ARG;
  memcpy(out, cfg, cfg->struct_size);
  return RKV_OK;
}

rkv_status rkv_backend_create(const rkv_backend_config *cfg, rkv_backend **out) {
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  rkv_backend_config c;
  RKV_TRY(rkvi_backend_config_load(cfg, &c));
  cfg = &c;
  if (cfg->kind != RKV_BACKEND_AUTO && cfg->kind != RKV_BACKEND_CPU &&
      cfg->kind != RKV_BACKEND_CUDA)
    return RKV_ERR_INVALID_ARG;
  if (cfg->num_threads < 0 || cfg->device < 0) return RKV_ERR_INVALID_ARG;
  rkv_backend *b = rkvi_calloc(cfg->allocator, sizeof *b, 0);
  if (!b) return RKV_ERR_NO_MEMORY;
  if (cfg->allocator) {
    b->alloc = *cfg->allocator;
    b->has_alloc = true;
  }
  if (cfg->logger) {
    b->logger = *cfg->logger;
    b->has_logger = true;
  }
  b->device = cfg->device;
  b->num_threads = cfg->num_threads;
  b->kind = RKV_BACKEND_CPU;
  rkv_backend_kind want = cfg->kind;
  if (want == RKV_BACKEND_AUTO)
    want = rkvi_cuda_device_count() > 0 ? RKV_BACKEND_CUDA : RKV_BACKEND_CPU;
  if (want == RKV_BACKEND_CUDA) {
    if (!rkv_build_has_cuda()) {
      rkvi_free(cfg->allocator, b, sizeof *b);
      return RKV_ERR_UNSUPPORTED;
    }
    b->kind = RKV_BACKEND_CUDA;
    rkv_status s = rkvi_cuda_backend_init(b);
    if (s != RKV_OK) {
      rkvi_log(cfg->logger, RKV_LOG_ERROR, "CUDA backend: %s", b->err);
      rkvi_free(cfg->allocator, b, sizeof *b);
      return s;
    }
  }
  rkvi_log(cfg->logger, RKV_LOG_INFO, "librkv backend: %s", rkv_backend_name(b));
  *out = b;
  return RKV_OK;
}

void rkv_backend_destroy(rkv_backend *b) {
  if (!b) return;
  if (b->emu) rkvi_emu_fini(b);
  if (b->kind == RKV_BACKEND_CUDA) rkvi_cuda_backend_fini(b);
  rkv_allocator a = b->alloc;
  bool has = b->has_alloc;
  rkvi_free(has ? &a : NULL, b, sizeof *b);
}

rkv_backend_kind rkv_backend_get_kind(const rkv_backend *b) {
  return b ? b->kind : RKV_BACKEND_CPU;
}

const char *rkv_backend_name(const rkv_backend *b) {
  if (!b) return "none";
  if (b->emu) return "emu";
  return b->kind == RKV_BACKEND_CUDA ? "cuda" : "cpu";
}

const char *rkv_backend_last_error(const rkv_backend *b) {
  return b ? b->err : "";
}

rkv_status rkv_backend_sync(rkv_backend *b) {
  if (!b) return RKV_ERR_INVALID_ARG;
  rkv_status st = RKV_OK;
  if (b->emu)
    st = rkvi_emu_sync(b);
  else if (b->kind == RKV_BACKEND_CUDA)
    st = rkvi_cuda_sync(b);
  if (st == RKV_OK) b->syncs++;
  return st;
}

uint64_t rkv_backend_sync_count(const rkv_backend *b) {
  return b ? b->syncs : 0;
}

void *rkv_backend_stream(const rkv_backend *b) {
  return b ? b->stream : NULL;
}

rkv_status rkv_kv_pool_create(rkv_backend *b, const rkv_kv_layout *layout, uint32_t num_blocks,
                              rkv_kv_pool **out) {
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  if (!b || !layout || num_blocks == 0) return RKV_ERR_INVALID_ARG;
  if (rkv_dtype_size(layout->dtype) == 0 || layout->block_size == 0 || layout->head_dim == 0 ||
      layout->block_size > 1024 || layout->head_dim > 4096)
    return rkvi_fail(b->err, RKV_ERR_INVALID_ARG, "bad KV layout (dtype %d, block %u, dim %u)",
                     (int)layout->dtype, layout->block_size, layout->head_dim);
  size_t block_bytes = rkv_kv_block_bytes(layout), bytes, slots;
  if (rkvi_mul_size(block_bytes, num_blocks, &bytes) ||
      rkvi_mul_size((size_t)layout->block_size, num_blocks, &slots) ||
      (uint64_t)slots > (uint64_t)INT32_MAX * 64)
    return rkvi_fail(b->err, RKV_ERR_INVALID_ARG, "pool size overflows");
  const rkv_allocator *a = rkvi_backend_allocator(b);
  rkv_kv_pool *p = rkvi_calloc(a, sizeof *p, 0);
  if (!p) return RKV_ERR_NO_MEMORY;
  p->backend = b;
  p->layout = *layout;
  p->num_blocks = num_blocks;
  p->block_bytes = block_bytes;
  p->bytes = bytes;
  if (b->kind == RKV_BACKEND_CUDA) {
    rkv_status s = rkvi_cuda_pool_alloc(p);
    if (s != RKV_OK) {
      rkvi_free(a, p, sizeof *p);
      return s;
    }
  } else {
    p->base = rkvi_calloc(a, bytes, 64);
    p->scores = rkvi_calloc(a, slots * sizeof(float), 64);
    if (!p->base || !p->scores) {
      rkvi_free(a, p->base, bytes);
      rkvi_free(a, p->scores, slots * sizeof(float));
      rkvi_free(a, p, sizeof *p);
      return rkvi_fail(b->err, RKV_ERR_NO_MEMORY, "KV pool of %zu bytes", bytes);
    }
  }
  *out = p;
  return RKV_OK;
}

void rkv_kv_pool_destroy(rkv_kv_pool *p) {
  if (!p) return;
  const rkv_allocator *a = rkvi_backend_allocator(p->backend);
  if (p->backend->kind == RKV_BACKEND_CUDA) {
    rkvi_cuda_pool_free(p);
  } else {
    rkvi_free(a, p->base, p->bytes);
    rkvi_free(a, p->scores, (size_t)p->num_blocks * p->layout.block_size * sizeof(float));
  }
  rkvi_free(a, p, sizeof *p);
}

void *rkv_kv_pool_base(const rkv_kv_pool *p) {
  return p ? p->base : NULL;
}
float *rkv_kv_pool_scores(const rkv_kv_pool *p) {
  return p ? p->scores : NULL;
}
const rkv_kv_layout *rkv_kv_pool_layout(const rkv_kv_pool *p) {
  return p ? &p->layout : NULL;
}
uint32_t rkv_kv_pool_num_blocks(const rkv_kv_pool *p) {
  return p ? p->num_blocks : 0;
}
rkv_backend *rkv_kv_pool_backend(const rkv_kv_pool *p) {
  return p ? p->backend : NULL;
}

static rkv_status check_block_ids(rkv_kv_pool *p, const int32_t *ids, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 0 || (uint32_t)ids[i] >= p->num_blocks)
      return rkvi_fail(p->backend->err, RKV_ERR_INVALID_ARG, "block id %d out of range [0, %u)",
                       ids[i], p->num_blocks);
  return RKV_OK;
}

rkv_status rkv_kv_pool_copy_blocks(rkv_kv_pool *p, const rkv_block_copy *ops, size_t n) {
  if (!p || (n && !ops)) return RKV_ERR_INVALID_ARG;
  for (size_t i = 0; i < n; i++) {
    RKV_TRY(check_block_ids(p, &ops[i].src, 1));
    RKV_TRY(check_block_ids(p, &ops[i].dst, 1));
  }
  if (n == 0) return RKV_OK;
  if (p->backend->kind == RKV_BACKEND_CUDA) return rkvi_cuda_copy_blocks(p, ops, n);
  uint8_t *base = p->base;
  uint32_t bs = p->layout.block_size;
  for (size_t i = 0; i < n; i++) {
    memmove(base + (size_t)ops[i].dst * p->block_bytes, base + (size_t)ops[i].src * p->block_bytes,
            p->block_bytes);
    memmove(p->scores + (size_t)ops[i].dst * bs, p->scores + (size_t)ops[i].src * bs,
            bs * sizeof(float));
  }
  return RKV_OK;
}

rkv_status rkv_kv_pool_apply_moves(rkv_kv_pool *p, const rkv_slot_move *moves, size_t n) {
  if (!p || (n && !moves)) return RKV_ERR_INVALID_ARG;
  int64_t nslots = (int64_t)p->num_blocks * p->layout.block_size;
  for (size_t i = 0; i < n; i++)
    if (moves[i].src < 0 || moves[i].src >= nslots || moves[i].dst < 0 || moves[i].dst >= nslots)
      return rkvi_fail(p->backend->err, RKV_ERR_INVALID_ARG, "move %zu: slot out of range", i);
  if (n == 0) return RKV_OK;
  if (p->backend->kind == RKV_BACKEND_CUDA) return rkvi_cuda_apply_moves(p, moves, n);
  uint8_t *base = p->base;
  uint32_t bs = p->layout.block_size;
  size_t row = (size_t)p->layout.head_dim * rkv_dtype_size(p->layout.dtype);
  for (size_t i = 0; i < n; i++) {
    int64_t s = moves[i].src, d = moves[i].dst;
    if (s == d) continue;
    uint8_t *sb = base + (size_t)(s / bs) * p->block_bytes;
    uint8_t *db = base + (size_t)(d / bs) * p->block_bytes;
    uint32_t so = (uint32_t)(s % bs), dof = (uint32_t)(d % bs);
    memcpy(db + rkv_kv_k_offset(&p->layout, dof), sb + rkv_kv_k_offset(&p->layout, so), row);
    memcpy(db + rkv_kv_v_offset(&p->layout, dof), sb + rkv_kv_v_offset(&p->layout, so), row);
    p->scores[d] = p->scores[s];
  }
  return RKV_OK;
}

rkv_status rkv_kv_pool_read_blocks(rkv_kv_pool *p, const int32_t *ids, size_t n, void *host) {
  if (!p || (n && (!ids || !host))) return RKV_ERR_INVALID_ARG;
  RKV_TRY(check_block_ids(p, ids, n));
  if (p->backend->kind == RKV_BACKEND_CUDA) return rkvi_cuda_read_blocks(p, ids, n, host);
  const bool stream = n * p->block_bytes >= RKVI_COPY_STREAM_MIN;
  for (size_t i = 0; i < n; i++)
    rkvi_copy_block((uint8_t *)host + i * p->block_bytes,
                    (uint8_t *)p->base + (size_t)ids[i] * p->block_bytes, p->block_bytes, stream);
  rkvi_copy_fence(stream);
  return RKV_OK;
}

static rkv_status scores_copy(rkv_kv_pool *p, const int32_t *ids, size_t n, float *host,
                              bool to_host) {
  if (!p || (n && (!ids || !host))) return RKV_ERR_INVALID_ARG;
  RKV_TRY(check_block_ids(p, ids, n));
  if (p->backend->kind == RKV_BACKEND_CUDA) return rkvi_cuda_scores_copy(p, ids, n, host, to_host);
  const size_t bs = p->layout.block_size;
  for (size_t i = 0; i < n; i++) {
    float *pool = p->scores + (size_t)ids[i] * bs, *h = host + i * bs;
    memcpy(to_host ? h : pool, to_host ? pool : h, bs * sizeof(float));
  }
  return RKV_OK;
}

rkv_status rkv_kv_pool_read_scores(rkv_kv_pool *p, const int32_t *ids, size_t n, float *host) {
  return scores_copy(p, ids, n, host, true);
}

rkv_status rkv_kv_pool_write_scores(rkv_kv_pool *p, const int32_t *ids, size_t n,
                                    const float *host) {
  return scores_copy(p, ids, n, (float *)host, false); /* only read from */
}

rkv_status rkv_kv_pool_write_blocks(rkv_kv_pool *p, const int32_t *ids, size_t n,
                                    const void *host) {
  if (!p || (n && (!ids || !host))) return RKV_ERR_INVALID_ARG;
  RKV_TRY(check_block_ids(p, ids, n));
  if (p->backend->kind == RKV_BACKEND_CUDA) return rkvi_cuda_write_blocks(p, ids, n, host);
  const uint32_t bs = p->layout.block_size;
  const bool stream = n * p->block_bytes >= RKVI_COPY_STREAM_MIN;
  for (size_t i = 0; i < n; i++) {
    rkvi_copy_block((uint8_t *)p->base + (size_t)ids[i] * p->block_bytes,
                    (const uint8_t *)host + i * p->block_bytes, p->block_bytes, stream);
    /* The blocks hold other tokens now: drop the previous owner's attention mass (as
     * rkv_attn_write_kv does per slot), or H2O would rank the new tokens by it. */
    memset(p->scores + (size_t)ids[i] * bs, 0, bs * sizeof(float));
  }
  rkvi_copy_fence(stream);
  return RKV_OK;
}
