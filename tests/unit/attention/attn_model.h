/* Test-side model of a paged KV cache for the attention tests: streams whose blocks are taken
 * from a shuffled free list (deliberately scattered over the pool), K/V rows written through
 * rkv_attn_write_kv while a dense copy of the values AS STORED (rounded to the pool dtype) is
 * kept, the CSR table export, and a naive dense attention in double over that copy.
 *
 * Tolerance rule of every attention test: the reference reads the same rounded K/V values
 * the pool holds, so the only differences left are the kernel's f32 accumulation and expf,
 * for every dtype alike: |out - ref| <= ATTN_TOL * (1 + |ref|). */
#ifndef ATTN_MODEL_H
#define ATTN_MODEL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/attention.h>
#include <rkv/runtime.h>

#include "rkv_test.h"

#define ATTN_TOL 1e-5

typedef struct attn_model {
  rkv_backend *be;
  rkv_kv_pool *pool;
  rkv_kv_layout lay;
  uint32_t num_blocks;
  int32_t *free_ids; /* shuffled, popped from the end */
  uint32_t nfree;
  uint32_t B, H, Hq, G, d;
  int32_t S;        /* streams = B * H */
  int64_t cap;      /* max tokens per stream */
  int32_t **blk;    /* [S][cap / bs + 1] */
  int32_t *nblk;    /* [S] */
  int64_t *len;     /* [S] */
  float **kd, **vd; /* [S][cap][d], rounded values */
  int32_t *indptr, *indices, *last_len;
} attn_model;

static inline float attn_round(rkv_dtype dt, float x) {
  if (dt == RKV_DTYPE_F16) return rkv_f16_to_f32(rkv_f32_to_f16(x));
  if (dt == RKV_DTYPE_BF16) return rkv_bf16_to_f32(rkv_f32_to_bf16(x));
  return x;
}

static inline float attn_uniform(uint64_t *rng, float lo, float hi) {
  return lo + (hi - lo) * (float)rkv_test_uniform(rng);
}

/* Returns 0 on success. threads = backend num_threads. */
static inline int attn_model_init(attn_model *m, rkv_dtype dt, uint32_t bs, uint32_t d, uint32_t B,
                                  uint32_t H, uint32_t G, int64_t cap, int32_t threads,
                                  uint64_t *rng) {
  memset(m, 0, sizeof *m);
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  bc.num_threads = threads;
  if (rkv_backend_create(&bc, &m->be) != RKV_OK) return 1;
  m->lay.dtype = dt;
  m->lay.block_size = bs;
  m->lay.head_dim = d;
  m->B = B, m->H = H, m->G = G, m->Hq = H * G, m->d = d;
  m->S = (int32_t)(B * H);
  m->cap = cap;
  uint32_t per = (uint32_t)(cap / bs + 1);
  /* Spare blocks so ids are spread over a pool larger than needed. */
  m->num_blocks = per * (uint32_t)m->S * 2 + 3;
  if (rkv_kv_pool_create(m->be, &m->lay, m->num_blocks, &m->pool) != RKV_OK) return 1;
  m->free_ids = malloc(sizeof(int32_t) * m->num_blocks);
  for (uint32_t i = 0; i < m->num_blocks; i++) m->free_ids[i] = (int32_t)i;
  for (uint32_t i = m->num_blocks; i > 1; i--) {
    uint32_t j = (uint32_t)(rkv_test_rand(rng) % i);
    int32_t t = m->free_ids[i - 1];
    m->free_ids[i - 1] = m->free_ids[j];
    m->free_ids[j] = t;
  }
  m->nfree = m->num_blocks;
  m->blk = calloc((size_t)m->S, sizeof(int32_t *));
  m->kd = calloc((size_t)m->S, sizeof(float *));
  m->vd = calloc((size_t)m->S, sizeof(float *));
  m->nblk = calloc((size_t)m->S, sizeof(int32_t));
  m->len = calloc((size_t)m->S, sizeof(int64_t));
  for (int32_t s = 0; s < m->S; s++) {
    m->blk[s] = calloc(per, sizeof(int32_t));
    m->kd[s] = calloc((size_t)cap * d, sizeof(float));
    m->vd[s] = calloc((size_t)cap * d, sizeof(float));
  }
  m->indptr = calloc((size_t)m->S + 1, sizeof(int32_t));
  m->indices = calloc((size_t)per * m->S, sizeof(int32_t));
  m->last_len = calloc((size_t)m->S, sizeof(int32_t));
  return 0;
}

static inline void attn_model_free(attn_model *m) {
  for (int32_t s = 0; s < m->S; s++) {
    free(m->blk[s]);
    free(m->kd[s]);
    free(m->vd[s]);
  }
  free(m->blk), free(m->kd), free(m->vd), free(m->nblk), free(m->len), free(m->free_ids);
  free(m->indptr), free(m->indices), free(m->last_len);
  rkv_kv_pool_destroy(m->pool);
  rkv_backend_destroy(m->be);
}

/* Appends n random tokens to stream s through rkv_attn_write_kv. Returns the status. */
static inline rkv_status attn_model_append(attn_model *m, int32_t s, int64_t n, uint64_t *rng) {
  const uint32_t d = m->d, bs = m->lay.block_size;
  if (n <= 0) return RKV_OK;
  if (m->len[s] + n > m->cap) return RKV_ERR_CAPACITY;
  float *k = malloc(sizeof(float) * (size_t)n * d), *v = malloc(sizeof(float) * (size_t)n * d);
  int64_t *slots = malloc(sizeof(int64_t) * (size_t)n);
  for (int64_t i = 0; i < n; i++) {
    int64_t pos = m->len[s] + i;
    if (pos / bs >= m->nblk[s]) m->blk[s][m->nblk[s]++] = m->free_ids[--m->nfree];
    slots[i] = (int64_t)m->blk[s][pos / bs] * bs + pos % bs;
    for (uint32_t j = 0; j < d; j++) {
      float kv = attn_uniform(rng, -1.0f, 1.0f), vv = attn_uniform(rng, -1.0f, 1.0f);
      k[i * d + j] = kv;
      v[i * d + j] = vv;
      m->kd[s][pos * d + j] = attn_round(m->lay.dtype, kv);
      m->vd[s][pos * d + j] = attn_round(m->lay.dtype, vv);
    }
  }
  rkv_status st = rkv_attn_write_kv(m->pool, k, v, slots, (uint32_t)n);
  if (st == RKV_OK) m->len[s] += n;
  free(k), free(v), free(slots);
  return st;
}

/* Exports the CSR table of all streams. */
static inline rkv_block_table attn_model_table(attn_model *m) {
  const uint32_t bs = m->lay.block_size;
  int32_t at = 0;
  for (int32_t s = 0; s < m->S; s++) {
    m->indptr[s] = at;
    int32_t used = (int32_t)((m->len[s] + bs - 1) / bs);
    for (int32_t k = 0; k < used; k++) m->indices[at++] = m->blk[s][k];
    m->last_len[s] = m->len[s] ? (int32_t)(m->len[s] - (int64_t)(used - 1) * bs) : 0;
  }
  m->indptr[m->S] = at;
  rkv_block_table t = {m->S, (int32_t)bs, m->indptr, m->indices, m->last_len};
  return t;
}

/* Dense attention of one query vector over positions [0, vis) of stream s, in double. out [d];
 * probs [vis] optional. */
static inline void attn_ref(const attn_model *m, int32_t s, const float *q, int64_t vis,
                            double scale, double *out, double *probs) {
  const uint32_t d = m->d;
  double *l = malloc(sizeof(double) * (size_t)(vis > 0 ? vis : 1));
  double mx = -INFINITY, sum = 0.0;
  for (int64_t j = 0; j < vis; j++) {
    double acc = 0.0;
    for (uint32_t k = 0; k < d; k++) acc += (double)q[k] * m->kd[s][j * d + k];
    l[j] = acc * scale;
    if (l[j] > mx) mx = l[j];
  }
  for (int64_t j = 0; j < vis; j++) {
    l[j] = exp(l[j] - mx);
    sum += l[j];
  }
  for (uint32_t k = 0; k < d; k++) out[k] = 0.0;
  for (int64_t j = 0; j < vis; j++) {
    double pj = l[j] / sum;
    if (probs) probs[j] = pj;
    for (uint32_t k = 0; k < d; k++) out[k] += pj * m->vd[s][j * d + k];
  }
  free(l);
}

/* Largest scaled error max |a - ref| / (1 + |ref|) over n values. */
static inline double attn_err(const float *a, const double *ref, size_t n) {
  double e = 0.0;
  for (size_t i = 0; i < n; i++) {
    double x = fabs((double)a[i] - ref[i]) / (1.0 + fabs(ref[i]));
    if (!(x <= e)) e = x; /* NaN counts as the worst error */
  }
  return e;
}

#endif /* ATTN_MODEL_H */
