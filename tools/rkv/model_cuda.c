/* The CUDA half of the test model's runner (model.h; `rkv eval --backend cuda`). The runner in
 * model_forward.c keeps the dense math on the host (embeddings, projections, RoPE, MLP,
 * logits); when its pool lives on a CUDA backend it hands each layer's KV write, attention and
 * query-window push to this file, and eviction too:
 *
 *  - per layer: the new K/V rows and their slots, the layer's CSR block table (indptr, indices,
 *    last_len; q_indptr for prefill) and the post-RoPE query rows are copied (cudaMemcpyAsync on
 *    the backend's stream) into device buffers allocated once at creation; the same
 *    rkv_attn_write_kv and rkv_attn_decode / rkv_attn_prefill the CPU path calls run on the
 *    device pool; rkv_attn_cuda_qwindow_push appends the query rows to the device ring; the
 *    output is copied back and the stream synchronised (the host needs it for the next
 *    projection), so every host staging buffer is free again at the end of a layer;
 *  - eviction: rkv_blockmgr_compact_uniform cuts the streams on the host, rkv_evict_cuda_describe
 *    / _freed_blocks build the descriptors, one upload, rkv_evict_cuda_compress scores, selects
 *    and moves the kept tokens on the device, then a stream sync.
 *
 * Head sizes: the kernels take head_dim 64/128/256. The project's models have head_dim 32, so
 * the device pool, ring and buffers use a padded head size (rkv_model_cuda_head_dim: 32 ->
 * 128); rows are zero-padded (a zero column adds nothing to a dot product, to a norm or to an
 * output), the attention scale is passed explicitly, and the query rows are uploaded times
 * sqrt(padded / head_dim) = 2 with the attention scale halved (bit-identical products), so that
 * the eviction kernels' logit scale 1/sqrt(padded) applied to the ring's rows equals the
 * model's 1/sqrt(head_dim) exactly.
 *
 * Copies use the backend's stream (created non-blocking: a plain cudaMemcpy on the legacy
 * stream would not be ordered with the kernels). Host staging is pageable memory. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/attention_cuda.h>
#include <rkv/evict_cuda.h>

#include "model.h"

static void cmsg(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void cmsg(char *err, size_t err_len, const char *fmt, ...) {
  if (!err || !err_len) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, err_len, fmt, ap);
  va_end(ap);
}

rkv_status rkv_model_cuda_head_dim(uint32_t head_dim, uint32_t *padded, float *qscale) {
  static const uint32_t sizes[] = {64, 128, 256};
  const size_t n = sizeof sizes / sizeof sizes[0];
  if (!padded || !qscale || head_dim == 0) return RKV_ERR_INVALID_ARG;
  uint32_t pick = 0;
  /* First choice: padded = head_dim * 4^k, so that qscale = 2^k is exact. */
  for (size_t i = 0; i < n && !pick; i++) {
    const uint32_t s = sizes[i];
    if (s < head_dim || s % head_dim) continue;
    const uint32_t ratio = s / head_dim;
    if ((ratio & (ratio - 1)) == 0 && (ratio & 0x55555555u)) pick = s;
  }
  for (size_t i = 0; i < n && !pick; i++)
    if (sizes[i] >= head_dim) pick = sizes[i];
  if (!pick) return RKV_ERR_UNSUPPORTED;
  *padded = pick;
  *qscale = (float)sqrt((double)pick / (double)head_dim);
  return RKV_OK;
}

#ifndef RKV_HAVE_CUDA

struct rkv_model_cuda {
  int unused;
};

rkv_status rkv_model_cuda_create(rkv_kv_pool *pool, const rkv_model_cuda_config *cfg,
                                 rkv_model_cuda **out, char *err, size_t err_len) {
  if (out) *out = NULL;
  cmsg(err, err_len,
       "this build of rkv has no CUDA (configure with nvcc available and RKV_ENABLE_CUDA=ON)");
  return RKV_ERR_UNSUPPORTED;
}

void rkv_model_cuda_destroy(rkv_model_cuda *c) {
  (void)c;
}

rkv_status rkv_model_cuda_seq_add(rkv_model_cuda *c, int64_t seq, char *err, size_t err_len) {
  return RKV_ERR_UNSUPPORTED;
}

void rkv_model_cuda_seq_remove(rkv_model_cuda *c, int64_t seq) {
  (void)c, (void)seq;
}

rkv_status rkv_model_cuda_begin_step(rkv_model_cuda *c, uint32_t n_seqs, const int64_t *seqs,
                                     const int32_t *pos0, char *err, size_t err_len) {
  return RKV_ERR_UNSUPPORTED;
}

rkv_status rkv_model_cuda_write_kv(rkv_model_cuda *c, uint32_t layer, uint32_t n_seqs,
                                   const int32_t *q_indptr, const int64_t *slots, uint32_t streams,
                                   const float *k, const float *v, char *err, size_t err_len) {
  return RKV_ERR_UNSUPPORTED;
}

rkv_status rkv_model_cuda_attention(rkv_model_cuda *c, const rkv_attn_params *p, char *err,
                                    size_t err_len) {
  return RKV_ERR_UNSUPPORTED;
}

rkv_status rkv_model_cuda_evict(rkv_model_cuda *c, rkv_blockmgr *bm, const rkv_evict_params *ep,
                                int64_t seq, uint32_t layer, rkv_evict_result *res, char *err,
                                size_t err_len) {
  return RKV_ERR_UNSUPPORTED;
}

#else /* RKV_HAVE_CUDA */

#include <cuda_runtime.h>

#define ALIGN 256u

struct rkv_model_cuda {
  rkv_model_cuda_config cfg;
  rkv_kv_pool *pool;
  rkv_backend *be;
  cudaStream_t cs;
  uint32_t dpad;      /* head size on the device */
  float qscale;       /* query rows are uploaded times this (model.h) */
  uint32_t bs;        /* block size */
  size_t kv_rows;     /* max_rows * kv_heads */
  size_t streams;     /* max_seqs * kv_heads: one layer's table */
  size_t indices;     /* pool blocks: a table never holds more */
  size_t ev_old;      /* eviction: old (= new, = freed) block ids of one (seq, layer) */
  uint32_t step_seqs; /* sequences of the step begun by rkv_model_cuda_begin_step */
  /* host staging; pads stay zero (only the first head_dim columns are ever written) */
  float *h_q;       /* [max_rows][q_heads][dpad] */
  float *h_out;     /* [max_rows][q_heads][dpad] */
  float *h_k, *h_v; /* [kv_rows][dpad] */
  int64_t *h_slots; /* [kv_rows] */
  int32_t *h_slot_of;
  int64_t *h_pos; /* [max_seqs] */
  rkv_compact_map *maps;
  rkv_evict_cuda_stream *descs;
  int32_t *old, *newb, *freed; /* [ev_old] each */
  unsigned char *h_ev;         /* packed eviction upload */
  size_t ev_bytes;
  /* device */
  float *d_q, *d_out, *d_k, *d_v;
  int64_t *d_slots;
  int32_t *d_indptr, *d_indices, *d_last_len, *d_qindptr;
  int32_t *d_slot_of;
  int64_t *d_pos;
  void *d_ws; /* attention workspace (split-KV partials) */
  size_t ws_bytes;
  unsigned char *d_ev; /* descriptors, old rows, new rows, freed blocks */
  void *d_evws;        /* eviction workspace, grown on demand */
  size_t evws_bytes;
  rkv_cuda_qwindow ring; /* data NULL without a query window */
  int64_t *slot_seq;     /* [max_seqs] sequence holding each ring slot, -1 = free */
};

static size_t align_up(size_t x) {
  return (x + ALIGN - 1) & ~(size_t)(ALIGN - 1);
}

static rkv_status cu_check(cudaError_t e, const char *what, char *err, size_t err_len) {
  if (e == cudaSuccess) return RKV_OK;
  cmsg(err, err_len, "cuda: %s: %s", what, cudaGetErrorString(e));
  return RKV_ERR_CUDA;
}

static rkv_status dev_alloc(void **p, size_t bytes, const char *what, char *err, size_t err_len) {
  *p = NULL;
  cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
  if (e == cudaSuccess) return RKV_OK;
  *p = NULL;
  cmsg(err, err_len, "cudaMalloc of %zu bytes (%s): %s", bytes, what, cudaGetErrorString(e));
  return RKV_ERR_CUDA;
}

static rkv_status upload(rkv_model_cuda *c, void *dst, const void *src, size_t bytes,
                         const char *what, char *err, size_t err_len) {
  if (!bytes) return RKV_OK;
  return cu_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->cs), what, err,
                  err_len);
}

static rkv_status be_check(const rkv_model_cuda *c, rkv_status s, const char *what, char *err,
                           size_t err_len) {
  if (s == RKV_OK) return RKV_OK;
  cmsg(err, err_len, "%s: %s (%s)", what, rkv_status_str(s), rkv_backend_last_error(c->be));
  return s;
}

static int32_t slot_find(const rkv_model_cuda *c, int64_t seq) {
  for (uint32_t i = 0; i < c->ring.max_seqs; i++)
    if (c->slot_seq[i] == seq) return (int32_t)i;
  return -1;
}

static size_t ring_slot_elems(const rkv_model_cuda *c) {
  return (size_t)c->ring.num_layers * c->ring.num_q_heads * c->ring.window * c->ring.head_dim;
}

void rkv_model_cuda_destroy(rkv_model_cuda *c) {
  if (!c) return;
  if (c->cs) (void)cudaStreamSynchronize(c->cs); /* nothing enqueued may still read a buffer */
  void *dev[] = {c->d_q,      c->d_out,     c->d_k,        c->d_v,       c->d_slots,
                 c->d_indptr, c->d_indices, c->d_last_len, c->d_qindptr, c->d_slot_of,
                 c->d_pos,    c->d_ws,      c->d_ev,       c->d_evws,    c->ring.data};
  for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cudaFree(dev[i]);
  void *host[] = {c->h_q,  c->h_out, c->h_k, c->h_v,  c->h_slots, c->h_slot_of, c->h_pos,
                  c->maps, c->descs, c->old, c->newb, c->freed,   c->h_ev,      c->slot_seq};
  for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
  free(c);
}

rkv_status rkv_model_cuda_create(rkv_kv_pool *pool, const rkv_model_cuda_config *cfg,
                                 rkv_model_cuda **out, char *err, size_t err_len) {
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  if (!pool || !cfg || !cfg->num_layers || !cfg->num_q_heads || !cfg->num_kv_heads ||
      cfg->num_q_heads % cfg->num_kv_heads || !cfg->head_dim || !cfg->max_seqs || !cfg->max_rows ||
      cfg->max_stream_len <= 0) {
    cmsg(err, err_len, "model runner (cuda): missing pool or a bad size in the config");
    return RKV_ERR_INVALID_ARG;
  }
  rkv_backend *be = rkv_kv_pool_backend(pool);
  if (rkv_backend_get_kind(be) != RKV_BACKEND_CUDA) {
    cmsg(err, err_len, "model runner (cuda): the pool is not on a CUDA backend");
    return RKV_ERR_INVALID_ARG;
  }
  const rkv_kv_layout *lay = rkv_kv_pool_layout(pool);
  uint32_t dpad = 0;
  float qscale = 1.0f;
  if (rkv_model_cuda_head_dim(cfg->head_dim, &dpad, &qscale) != RKV_OK) {
    cmsg(err, err_len, "model runner (cuda): head_dim %u > 256, the CUDA kernels' largest",
         cfg->head_dim);
    return RKV_ERR_UNSUPPORTED;
  }
  if (lay->head_dim != dpad) {
    cmsg(err, err_len, "model runner (cuda): pool head_dim %u, expected %u (padded from %u)",
         lay->head_dim, dpad, cfg->head_dim);
    return RKV_ERR_INVALID_ARG;
  }
  char why[256] = "";
  if (rkv_attn_cuda_supported(lay->head_dim, lay->block_size, lay->dtype, why, sizeof why) !=
      RKV_OK) {
    cmsg(err, err_len, "model runner (cuda): %s", why);
    return RKV_ERR_UNSUPPORTED;
  }
  rkv_model_cuda *c = calloc(1, sizeof *c);
  if (!c) return RKV_ERR_NO_MEMORY;
  c->cfg = *cfg;
  c->pool = pool;
  c->be = be;
  c->cs = (cudaStream_t)rkv_backend_stream(be);
  c->dpad = dpad;
  c->qscale = qscale;
  c->bs = lay->block_size;
  const size_t R = cfg->max_rows, Hq = cfg->num_q_heads, Hkv = cfg->num_kv_heads, D = dpad;
  c->kv_rows = R * Hkv;
  c->streams = (size_t)cfg->max_seqs * Hkv;
  c->indices = rkv_kv_pool_num_blocks(pool);
  c->ev_old = Hkv * ((size_t)(cfg->max_stream_len + (int32_t)c->bs - 1) / c->bs + 1);
  rkv_status ret = RKV_ERR_NO_MEMORY;

  c->h_q = calloc(R * Hq * D, sizeof(float));
  c->h_out = calloc(R * Hq * D, sizeof(float));
  c->h_k = calloc(c->kv_rows * D, sizeof(float));
  c->h_v = calloc(c->kv_rows * D, sizeof(float));
  c->h_slots = calloc(c->kv_rows, sizeof(int64_t));
  c->h_slot_of = calloc(cfg->max_seqs, sizeof(int32_t));
  c->h_pos = calloc(cfg->max_seqs, sizeof(int64_t));
  c->maps = calloc(Hkv, sizeof *c->maps);
  c->descs = calloc(Hkv, sizeof *c->descs);
  c->old = calloc(c->ev_old, sizeof(int32_t));
  c->newb = calloc(c->ev_old, sizeof(int32_t));
  c->freed = calloc(c->ev_old, sizeof(int32_t));
  c->ev_bytes =
      align_up(Hkv * sizeof(rkv_evict_cuda_stream)) + 3 * align_up(c->ev_old * sizeof(int32_t));
  c->h_ev = calloc(c->ev_bytes, 1);
  c->slot_seq = malloc(cfg->max_seqs * sizeof(int64_t));
  if (!c->h_q || !c->h_out || !c->h_k || !c->h_v || !c->h_slots || !c->h_slot_of || !c->h_pos ||
      !c->maps || !c->descs || !c->old || !c->newb || !c->freed || !c->h_ev || !c->slot_seq) {
    cmsg(err, err_len, "model runner (cuda): out of host memory");
    goto fail;
  }
  for (uint32_t i = 0; i < cfg->max_seqs; i++) c->slot_seq[i] = -1;

  if ((ret = dev_alloc((void **)&c->d_q, R * Hq * D * sizeof(float), "query rows", err, err_len)) ||
      (ret = dev_alloc((void **)&c->d_out, R * Hq * D * sizeof(float), "attention output", err,
                       err_len)) ||
      (ret = dev_alloc((void **)&c->d_k, c->kv_rows * D * sizeof(float), "K rows", err, err_len)) ||
      (ret = dev_alloc((void **)&c->d_v, c->kv_rows * D * sizeof(float), "V rows", err, err_len)) ||
      (ret =
           dev_alloc((void **)&c->d_slots, c->kv_rows * sizeof(int64_t), "slots", err, err_len)) ||
      (ret = dev_alloc((void **)&c->d_indptr, (c->streams + 1) * sizeof(int32_t), "indptr", err,
                       err_len)) ||
      (ret = dev_alloc((void **)&c->d_indices, c->indices * sizeof(int32_t), "indices", err,
                       err_len)) ||
      (ret = dev_alloc((void **)&c->d_last_len, c->streams * sizeof(int32_t), "last_len", err,
                       err_len)) ||
      (ret = dev_alloc((void **)&c->d_qindptr, ((size_t)cfg->max_seqs + 1) * sizeof(int32_t),
                       "q_indptr", err, err_len)) ||
      (ret = dev_alloc((void **)&c->d_slot_of, cfg->max_seqs * sizeof(int32_t), "ring slots", err,
                       err_len)) ||
      (ret = dev_alloc((void **)&c->d_pos, cfg->max_seqs * sizeof(int64_t), "positions", err,
                       err_len)) ||
      (ret = dev_alloc((void **)&c->d_ev, c->ev_bytes, "eviction descriptors", err, err_len)))
    goto fail;
  /* Split-KV partials for the largest decode batch and stream (0 bytes = no split). */
  ret = rkv_attn_workspace_bound(pool, cfg->max_seqs, cfg->num_q_heads, dpad, cfg->max_stream_len,
                                 &c->ws_bytes);
  if (ret) {
    be_check(c, ret, "attention workspace bound", err, err_len);
    goto fail;
  }
  if (c->ws_bytes && (ret = dev_alloc(&c->d_ws, c->ws_bytes, "attention workspace", err, err_len)))
    goto fail;
  c->ring.max_seqs = cfg->max_seqs;
  c->ring.num_layers = cfg->num_layers;
  c->ring.num_q_heads = cfg->num_q_heads;
  c->ring.window = cfg->qwindow;
  c->ring.head_dim = dpad;
  if (cfg->qwindow) {
    size_t bytes = 0;
    if ((ret = rkv_attn_cuda_qwindow_bytes(&c->ring, &bytes))) {
      cmsg(err, err_len, "model runner (cuda): query-window ring size: %s", rkv_status_str(ret));
      goto fail;
    }
    if ((ret = dev_alloc((void **)&c->ring.data, bytes, "query-window ring", err, err_len)) ||
        (ret = cu_check(cudaMemsetAsync(c->ring.data, 0, bytes, c->cs), "ring clear", err,
                        err_len)) ||
        (ret = cu_check(cudaStreamSynchronize(c->cs), "stream sync", err, err_len)))
      goto fail;
  }
  *out = c;
  return RKV_OK;
fail:
  rkv_model_cuda_destroy(c);
  return ret ? ret : RKV_ERR_NO_MEMORY;
}

rkv_status rkv_model_cuda_seq_add(rkv_model_cuda *c, int64_t seq, char *err, size_t err_len) {
  if (!c) return RKV_ERR_INVALID_ARG;
  if (!c->ring.data) return RKV_OK;
  if (slot_find(c, seq) >= 0) {
    cmsg(err, err_len, "query-window ring: sequence %lld already has a slot", (long long)seq);
    return RKV_ERR_INVALID_ARG;
  }
  for (uint32_t i = 0; i < c->ring.max_seqs; i++)
    if (c->slot_seq[i] < 0) {
      c->slot_seq[i] = seq;
      return RKV_OK;
    }
  cmsg(err, err_len, "query-window ring: all %u slots taken", c->ring.max_seqs);
  return RKV_ERR_CAPACITY;
}

void rkv_model_cuda_seq_remove(rkv_model_cuda *c, int64_t seq) {
  if (!c || !c->ring.data) return;
  const int32_t s = slot_find(c, seq);
  if (s >= 0) c->slot_seq[s] = -1;
}

rkv_status rkv_model_cuda_begin_step(rkv_model_cuda *c, uint32_t n_seqs, const int64_t *seqs,
                                     const int32_t *pos0, char *err, size_t err_len) {
  if (!c || !seqs || !pos0) return RKV_ERR_INVALID_ARG;
  if (n_seqs > c->cfg.max_seqs) {
    cmsg(err, err_len, "cuda step: %u sequences > max_seqs %u", n_seqs, c->cfg.max_seqs);
    return RKV_ERR_CAPACITY;
  }
  c->step_seqs = n_seqs;
  if (!c->ring.data) return RKV_OK;
  for (uint32_t b = 0; b < n_seqs; b++) {
    const int32_t s = slot_find(c, seqs[b]);
    if (s < 0) {
      cmsg(err, err_len, "cuda step: sequence %lld has no query-window slot (seq_add)",
           (long long)seqs[b]);
      return RKV_ERR_NOT_FOUND;
    }
    c->h_slot_of[b] = s;
    c->h_pos[b] = pos0[b]; /* logical position: ring row (pos + r) % window */
  }
  rkv_status ret;
  if ((ret = upload(c, c->d_slot_of, c->h_slot_of, n_seqs * sizeof(int32_t), "ring slots", err,
                    err_len)) ||
      (ret = upload(c, c->d_pos, c->h_pos, n_seqs * sizeof(int64_t), "positions", err, err_len)))
    return ret;
  return RKV_OK;
}

rkv_status rkv_model_cuda_write_kv(rkv_model_cuda *c, uint32_t layer, uint32_t n_seqs,
                                   const int32_t *q_indptr, const int64_t *slots, uint32_t streams,
                                   const float *k, const float *v, char *err, size_t err_len) {
  if (!c || !q_indptr || !slots || !k || !v) return RKV_ERR_INVALID_ARG;
  const size_t Hkv = c->cfg.num_kv_heads, hd = c->cfg.head_dim, D = c->dpad;
  size_t i = 0;
  for (uint32_t b = 0; b < n_seqs; b++) {
    const int32_t r0 = q_indptr[b], n = q_indptr[b + 1] - r0;
    const int64_t *sl = slots + (size_t)r0 * streams;
    for (size_t h = 0; h < Hkv; h++)
      for (int32_t t = 0; t < n; t++, i++) {
        if (i >= c->kv_rows) {
          cmsg(err, err_len, "cuda write_kv: more than %zu K/V rows in a step", c->kv_rows);
          return RKV_ERR_CAPACITY;
        }
        c->h_slots[i] = sl[((size_t)layer * Hkv + h) * (size_t)n + (size_t)t];
        const size_t src = ((size_t)r0 + (size_t)t) * Hkv * hd + h * hd;
        memcpy(c->h_k + i * D, k + src, hd * sizeof(float));
        memcpy(c->h_v + i * D, v + src, hd * sizeof(float));
      }
  }
  rkv_status ret;
  if ((ret = upload(c, c->d_slots, c->h_slots, i * sizeof(int64_t), "slots", err, err_len)) ||
      (ret = upload(c, c->d_k, c->h_k, i * D * sizeof(float), "K rows", err, err_len)) ||
      (ret = upload(c, c->d_v, c->h_v, i * D * sizeof(float), "V rows", err, err_len)))
    return ret;
  return be_check(c, rkv_attn_write_kv(c->pool, c->d_k, c->d_v, c->d_slots, (uint32_t)i),
                  "attn_write_kv (cuda)", err, err_len);
}

rkv_status rkv_model_cuda_attention(rkv_model_cuda *c, const rkv_attn_params *p, char *err,
                                    size_t err_len) {
  if (!c || !p || !p->q || !p->out || !p->table.indptr || !p->table.last_len)
    return RKV_ERR_INVALID_ARG;
  const uint32_t ns = p->num_seqs;
  const size_t Hq = c->cfg.num_q_heads, hd = c->cfg.head_dim, D = c->dpad;
  const bool prefill = p->q_indptr != NULL;
  const size_t rows = prefill ? (size_t)p->q_indptr[ns] : ns;
  const size_t n_streams = (size_t)p->table.num_streams;
  const size_t nnz = n_streams ? (size_t)p->table.indptr[n_streams] : 0;
  if (p->head_dim != hd || p->num_q_heads != Hq || p->num_kv_heads != c->cfg.num_kv_heads ||
      p->layer >= c->cfg.num_layers) {
    cmsg(err, err_len, "cuda attention: shape differs from the runner's");
    return RKV_ERR_INVALID_ARG;
  }
  if (ns > c->cfg.max_seqs || rows > c->cfg.max_rows || n_streams > c->streams ||
      nnz > c->indices) {
    cmsg(err, err_len,
         "cuda attention: %u sequences, %zu rows, %zu streams, %zu blocks exceed the device "
         "buffers (%u, %u, %zu, %zu)",
         ns, rows, n_streams, nnz, c->cfg.max_seqs, c->cfg.max_rows, c->streams, c->indices);
    return RKV_ERR_CAPACITY;
  }
  if (c->ring.data && ns != c->step_seqs) {
    cmsg(err, err_len, "cuda attention: %u sequences, the step began with %u", ns, c->step_seqs);
    return RKV_ERR_STATE;
  }
  /* Query rows, zero-padded to D and scaled by qscale (see model.h). */
  for (size_t r = 0; r < rows * Hq; r++) {
    float *dst = c->h_q + r * D;
    const float *src = p->q + r * hd;
    for (size_t j = 0; j < hd; j++) dst[j] = src[j] * c->qscale;
  }
  rkv_status ret;
  if ((ret =
           upload(c, c->d_q, c->h_q, rows * Hq * D * sizeof(float), "query rows", err, err_len)) ||
      (ret = upload(c, c->d_indptr, p->table.indptr, (n_streams + 1) * sizeof(int32_t), "indptr",
                    err, err_len)) ||
      (ret = upload(c, c->d_indices, p->table.indices, nnz * sizeof(int32_t), "indices", err,
                    err_len)) ||
      (ret = upload(c, c->d_last_len, p->table.last_len, n_streams * sizeof(int32_t), "last_len",
                    err, err_len)) ||
      (prefill && (ret = upload(c, c->d_qindptr, p->q_indptr, ((size_t)ns + 1) * sizeof(int32_t),
                                "q_indptr", err, err_len))))
    return ret;
  rkv_attn_params dp = *p;
  dp.head_dim = c->dpad;
  /* The model's scale (what the CPU path resolves 0 to), divided by qscale. */
  const float scale = p->scale != 0.0f ? p->scale : 1.0f / sqrtf((float)hd);
  dp.scale = scale / c->qscale;
  dp.q = c->d_q;
  dp.out = c->d_out;
  dp.table.indptr = c->d_indptr;
  dp.table.indices = c->d_indices;
  dp.table.last_len = c->d_last_len;
  dp.q_indptr = prefill ? c->d_qindptr : NULL;
  dp.qwindow = NULL; /* CUDA: the device ring below */
  dp.seq_ids = NULL;
  ret = prefill ? rkv_attn_prefill(c->pool, &dp, c->d_ws, c->ws_bytes)
                : rkv_attn_decode(c->pool, &dp, c->d_ws, c->ws_bytes);
  if (ret)
    return be_check(c, ret, prefill ? "attention prefill (cuda)" : "attention decode (cuda)", err,
                    err_len);
  if (c->ring.data && (ret = be_check(c,
                                      rkv_attn_cuda_qwindow_push(c->be, &c->ring, p->layer, c->d_q,
                                                                 prefill ? c->d_qindptr : NULL,
                                                                 c->d_slot_of, c->d_pos, ns),
                                      "query-window push", err, err_len)))
    return ret;
  if ((ret = cu_check(cudaMemcpyAsync(c->h_out, c->d_out, rows * Hq * D * sizeof(float),
                                      cudaMemcpyDeviceToHost, c->cs),
                      "attention output to host", err, err_len)) ||
      (ret = cu_check(cudaStreamSynchronize(c->cs), "stream sync after attention", err, err_len)))
    return ret;
  for (size_t r = 0; r < rows * Hq; r++)
    memcpy(p->out + r * hd, c->h_out + r * D, hd * sizeof(float));
  return RKV_OK;
}

rkv_status rkv_model_cuda_evict(rkv_model_cuda *c, rkv_blockmgr *bm, const rkv_evict_params *ep,
                                int64_t seq, uint32_t layer, rkv_evict_result *res, char *err,
                                size_t err_len) {
  if (!c || !bm || !ep || !res) return RKV_ERR_INVALID_ARG;
  memset(res, 0, sizeof *res);
  if (ep->policy == RKV_EVICT_FULL) return RKV_OK;
  char why[256] = "";
  if (rkv_evict_params_validate(ep, why, sizeof why) != RKV_OK) {
    cmsg(err, err_len, "cuda eviction: %s", why);
    return RKV_ERR_INVALID_ARG;
  }
  const uint32_t Hkv = c->cfg.num_kv_heads, Hq = c->cfg.num_q_heads, group = Hq / Hkv;
  if (layer >= c->cfg.num_layers) {
    cmsg(err, err_len, "cuda eviction: layer %u >= %u", layer, c->cfg.num_layers);
    return RKV_ERR_INVALID_ARG;
  }
  /* Everything that can fail is checked before the block manager changes. */
  const bool ring = ep->policy == RKV_EVICT_RKV || ep->policy == RKV_EVICT_SNAPKV;
  int32_t slot = -1;
  if (ring) {
    if (!c->ring.data || (uint32_t)ep->window != c->ring.window) {
      cmsg(err, err_len, "cuda eviction: %s needs a query-window ring of %d rows (runner has %u)",
           rkv_evict_policy_name(ep->policy), ep->window, c->ring.data ? c->ring.window : 0);
      return RKV_ERR_INVALID_ARG;
    }
    if ((slot = slot_find(c, seq)) < 0) {
      cmsg(err, err_len, "cuda eviction: sequence %lld has no query-window slot", (long long)seq);
      return RKV_ERR_NOT_FOUND;
    }
  }
  int32_t max_len = 0;
  for (uint32_t h = 0; h < Hkv; h++) {
    int32_t n = 0;
    rkv_status s = rkv_blockmgr_stream_len(bm, seq, layer, h, &n);
    if (s) {
      cmsg(err, err_len, "cuda eviction: stream_len(%lld, %u, %u): %s", (long long)seq, layer, h,
           rkv_blockmgr_last_error(bm));
      return s;
    }
    if (n > max_len) max_len = n;
  }
  if (max_len <= ep->budget) return RKV_OK; /* no stream over budget: nothing changes */
  size_t need = 0;
  rkv_status ret = rkv_evict_cuda_workspace_size(ep, c->pool, Hkv, group, max_len, &need);
  if (ret) {
    cmsg(err, err_len,
         "cuda eviction workspace (%s, %u streams, %d tokens): %s (the GPU path takes head_dim "
         "64/128/256, block 16/32, window <= 256)",
         rkv_evict_policy_name(ep->policy), Hkv, max_len, rkv_status_str(ret));
    return ret;
  }
  if (need > c->evws_bytes) {
    /* Grown at the first compression of a run: wait for anything still using the old one. */
    if ((ret = cu_check(cudaStreamSynchronize(c->cs), "stream sync", err, err_len))) return ret;
    cudaFree(c->d_evws);
    c->d_evws = NULL;
    c->evws_bytes = 0;
    if ((ret = dev_alloc(&c->d_evws, need, "eviction workspace", err, err_len))) return ret;
    c->evws_bytes = need;
  }

  rkv_blockmgr_stats before, after;
  rkv_blockmgr_get_stats(bm, &before);
  uint32_t nm = 0, no = 0, nn = 0, nf = 0;
  ret = rkv_blockmgr_compact_uniform(bm, seq, (int32_t)layer, ep->budget, c->maps, Hkv, &nm, c->old,
                                     (uint32_t)c->ev_old, &no);
  if (ret) {
    cmsg(err, err_len, "cuda eviction: compact_uniform(%lld, layer %u): %s", (long long)seq, layer,
         rkv_blockmgr_last_error(bm));
    return ret;
  }
  if (nm == 0) return RKV_OK;
  /* From here on the tables are cut: a failure leaves the pool behind them. */
  const int64_t qoff = slot >= 0 ? (int64_t)slot * (int64_t)ring_slot_elems(c) : 0;
  ret = rkv_evict_cuda_describe(bm, seq, c->maps, nm, Hq, ep->window, qoff, 0, 0, c->descs, c->newb,
                                (uint32_t)c->ev_old, &nn);
  if (ret == RKV_OK)
    ret = rkv_evict_cuda_freed_blocks(bm, c->old, no, c->freed, (uint32_t)c->ev_old, &nf);
  if (ret) {
    cmsg(err, err_len, "cuda eviction: describe / freed blocks of %lld layer %u: %s",
         (long long)seq, layer, rkv_status_str(ret));
    return ret;
  }
  rkv_evict_cuda_batch b = RKV_EVICT_CUDA_BATCH_INIT;
  size_t bytes = 0;
  ret = rkv_evict_cuda_pack(c->descs, nm, c->old, no, c->newb, nn, c->freed, nf, c->h_ev,
                            c->ev_bytes, c->d_ev, &b, &bytes);
  if (ret) {
    cmsg(err, err_len, "cuda eviction: pack: %s", rkv_status_str(ret));
    return ret;
  }
  if ((ret = upload(c, c->d_ev, c->h_ev, bytes, "eviction descriptors", err, err_len))) return ret;
  b.group = group;
  b.max_len = max_len;
  b.qwin = ring ? c->ring.data : NULL;
  if ((ret = be_check(c, rkv_evict_cuda_compress(ep, c->pool, &b, c->d_evws, c->evws_bytes),
                      "rkv_evict_cuda_compress", err, err_len)) ||
      (ret = cu_check(cudaStreamSynchronize(c->cs), "stream sync after eviction", err, err_len)))
    return ret;
  rkv_blockmgr_get_stats(bm, &after);
  res->streams_compressed = nm;
  for (uint32_t i = 0; i < nm; i++)
    res->tokens_evicted += (uint64_t)(c->maps[i].old_len - c->maps[i].new_len);
  res->blocks_freed =
      after.free_blocks > before.free_blocks ? after.free_blocks - before.free_blocks : 0;
  res->slot_moves = 0;
  return RKV_OK;
}

#endif /* RKV_HAVE_CUDA */
