/* The scheduler tests' engine: the library executor (rkv/executor.h) over a real CPU KV pool,
 * fed by a toy model whose K/V rows name their writer, stream and logical position, plus the
 * harness checks after every step: the executor's own invariant walk, every cached row is a
 * row some ancestor of the sequence wrote to that stream in order, and a swapped-in sequence's
 * KV equals its snapshot from before the swap bit for bit. Header-only, test use only. */
#ifndef SCHED_TEST_ENGINE_H
#define SCHED_TEST_ENGINE_H

#include <stdlib.h>
#include <string.h>

#include <rkv/blockmgr.h>
#include <rkv/executor.h>
#include <rkv/scheduler.h>

#include "rkv_test.h"

#define TE_MAX_IDS 512

typedef struct te_snap {
  int64_t id;    /* -1 = unused */
  int32_t *lens; /* [streams] */
  float *kv;     /* [streams][cap_tokens][2][head_dim] */
} te_snap;

typedef struct test_engine {
  rkv_blockmgr *bm;
  rkv_backend *be;
  rkv_kv_pool *pool;
  rkv_exec *x;
  uint32_t streams, block_size, head_dim, layers, kv_heads;
  int32_t cap_tokens;
  float *q, *k, *v, *out; /* one layer's rows, rows_cap of them */
  uint32_t rows_cap;
  float *row_buf;                /* [cap_tokens][2][head_dim]: one stream read back */
  int64_t parent[2][TE_MAX_IDS]; /* fork edges child -> parent, n_parents of them */
  uint32_t n_parents;
  te_snap snaps[TE_MAX_IDS];
  uint64_t rng;
  double eos_prob;
  uint64_t swap_checks; /* sequences verified after swap-in */
  uint64_t swap_failures;
  uint64_t compressions;
  uint64_t value_failures; /* cached rows that are not what their stream's writers wrote */
  uint64_t copies;
  rkv_sched_output outs[1024];
} test_engine;

/* The scheduler tests' block manager: F32 K/V of head_dim 4 (the toy model's rows), everything
 * else given. */
static inline rkv_blockmgr *te_make_bm(uint32_t blocks, uint32_t bs, uint32_t layers,
                                       uint32_t heads, float watermark, uint32_t max_seqs,
                                       bool check_every_op) {
  rkv_blockmgr_config c = RKV_BLOCKMGR_CONFIG_INIT;
  c.num_blocks = blocks;
  c.block_size = bs;
  c.num_layers = layers;
  c.num_kv_heads = heads;
  c.head_dim = 4;
  c.dtype = RKV_DTYPE_F32;
  c.watermark = watermark;
  c.max_seqs = max_seqs;
  c.check_every_op = check_every_op;
  rkv_blockmgr *m = NULL;
  if (rkv_blockmgr_create(&c, &m) != RKV_OK) return NULL;
  return m;
}

/* Element e of the K (kv 0) or V (kv 1) row that sequence `id` writes at logical position
 * `logical` of `stream`: small integers, exact in f32, so a row read back says who wrote it. */
static inline float te_value(int64_t id, uint32_t stream, int64_t logical, uint32_t e, int kv) {
  const float fields[4] = {(float)id, (float)logical, (float)stream, kv ? -1.0f : 1.0f};
  return fields[e % 4];
}

static inline te_snap *te_snap_of(test_engine *t, int64_t id, bool create) {
  for (int i = 0; i < TE_MAX_IDS; i++)
    if (t->snaps[i].id == id) return &t->snaps[i];
  if (!create) return NULL;
  for (int i = 0; i < TE_MAX_IDS; i++)
    if (t->snaps[i].id < 0) {
      t->snaps[i].id = id;
      return &t->snaps[i];
    }
  return NULL;
}

/* The executor is configured from the scheduler's config: its default policy sizes the query
 * window, its host_blocks the swap pool. */
static inline int te_init(test_engine *t, rkv_blockmgr *bm, const rkv_sched_config *sc,
                          int32_t cap_tokens, double eos_prob, uint64_t seed) {
  memset(t, 0, sizeof *t);
  t->bm = bm;
  const rkv_blockmgr_config *c = rkv_blockmgr_get_config(bm);
  t->streams = rkv_blockmgr_streams_per_seq(bm);
  t->block_size = c->block_size;
  t->head_dim = c->head_dim;
  t->layers = c->num_layers;
  t->kv_heads = c->num_kv_heads;
  t->cap_tokens = cap_tokens;
  t->eos_prob = eos_prob;
  t->rng = seed;
  for (int i = 0; i < TE_MAX_IDS; i++) t->snaps[i].id = -1;
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  bc.num_threads = 1;
  if (rkv_backend_create(&bc, &t->be) != RKV_OK) return 1;
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(bm);
  if (rkv_kv_pool_create(t->be, &lay, c->num_blocks, &t->pool) != RKV_OK) return 1;
  rkv_exec_config xc = RKV_EXEC_CONFIG_INIT;
  xc.num_q_heads = t->kv_heads;
  xc.max_seqs = sc->max_seqs;
  xc.host_blocks = sc->host_blocks;
  xc.evict = sc->evict;
  char err[256];
  if (rkv_exec_create(&xc, bm, t->pool, &t->x, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv_exec_create: %s\n", err);
    return 1;
  }
  t->row_buf = calloc((size_t)cap_tokens * 2 * t->head_dim, sizeof(float));
  for (int i = 0; i < TE_MAX_IDS; i++) {
    t->snaps[i].lens = calloc(t->streams, sizeof(int32_t));
    t->snaps[i].kv = calloc((size_t)t->streams * cap_tokens * 2 * t->head_dim, sizeof(float));
  }
  return 0;
}

static inline void te_fini(test_engine *t) {
  for (int i = 0; i < TE_MAX_IDS; i++) {
    free(t->snaps[i].lens);
    free(t->snaps[i].kv);
  }
  free(t->q), free(t->k), free(t->v), free(t->out), free(t->row_buf);
  rkv_exec_destroy(t->x);
  rkv_kv_pool_destroy(t->pool);
  rkv_backend_destroy(t->be);
}

/* Reads the first len rows of stream st of seq as [len][K row, V row], through the tables. */
static inline void te_read_stream(test_engine *t, int64_t id, uint32_t st, int32_t len, float *kv) {
  const char *base = rkv_kv_pool_base(t->pool);
  const rkv_kv_layout *lay = rkv_kv_pool_layout(t->pool);
  const size_t bb = rkv_kv_block_bytes(lay), row = sizeof(float) * t->head_dim;
  for (int32_t p = 0; p < len; p++) {
    int64_t slot = -1;
    (void)rkv_blockmgr_stream_slot(t->bm, id, st / t->kv_heads, st % t->kv_heads, p, &slot);
    const char *b = base + (size_t)(slot / t->block_size) * bb;
    uint32_t off = (uint32_t)(slot % t->block_size);
    memcpy(kv + (size_t)p * 2 * t->head_dim, b + rkv_kv_k_offset(lay, off), row);
    memcpy(kv + ((size_t)p * 2 + 1) * t->head_dim, b + rkv_kv_v_offset(lay, off), row);
  }
}

static inline bool te_is_ancestor(const test_engine *t, int64_t writer, int64_t id) {
  for (uint32_t hops = 0; hops <= t->n_parents; hops++) {
    if (writer == id) return true;
    int64_t up = -1;
    for (uint32_t i = 0; i < t->n_parents && up < 0; i++)
      if (t->parent[0][i] == id) up = t->parent[1][i];
    if (up < 0) return false;
    id = up;
  }
  return false;
}

/* Forks: the child starts as its parent was at the last report (snapshot) and reads the rows
 * its parent wrote. */
static inline void te_note_forks(test_engine *t, const rkv_sched_plan *p) {
  const size_t row = (size_t)2 * t->head_dim;
  for (uint32_t i = 0; i < p->n_forks; i++) {
    if (t->n_parents < TE_MAX_IDS) {
      t->parent[0][t->n_parents] = p->forks[i].child;
      t->parent[1][t->n_parents++] = p->forks[i].parent;
    }
    te_snap *ps = te_snap_of(t, p->forks[i].parent, false);
    te_snap *cs = ps ? te_snap_of(t, p->forks[i].child, true) : NULL;
    if (!cs) continue;
    memcpy(cs->lens, ps->lens, sizeof(int32_t) * t->streams);
    memcpy(cs->kv, ps->kv, sizeof(float) * t->streams * (size_t)t->cap_tokens * row);
  }
}

/* After begin swapped them in: every saved row of a swapped-in sequence is back, bit for bit
 * (the streams already hold this step's new slots after the saved rows). */
static inline void te_check_swap_ins(test_engine *t, const rkv_sched_plan *p) {
  const size_t row = (size_t)2 * t->head_dim;
  for (uint32_t i = 0; i < p->n_swapped_in; i++) {
    te_snap *sn = te_snap_of(t, p->swapped_in[i], false);
    t->swap_checks++;
    if (!sn) {
      fprintf(stderr, "swap-in of %lld: no snapshot\n", (long long)p->swapped_in[i]);
      t->swap_failures++;
      continue;
    }
    for (uint32_t st = 0; st < t->streams; st++) {
      int32_t len = -1;
      (void)rkv_blockmgr_stream_len(t->bm, sn->id, st / t->kv_heads, st % t->kv_heads, &len);
      if (len < sn->lens[st]) {
        fprintf(stderr, "swap-in of %lld: stream %u holds %d, saved %d\n", (long long)sn->id, st,
                len, sn->lens[st]);
        t->swap_failures++;
        break;
      }
      te_read_stream(t, sn->id, st, sn->lens[st], t->row_buf);
      if (memcmp(t->row_buf, sn->kv + (size_t)st * t->cap_tokens * row,
                 sizeof(float) * (size_t)sn->lens[st] * row)) {
        fprintf(stderr, "swap-in of %lld: stream %u content differs\n", (long long)sn->id, st);
        t->swap_failures++;
        break;
      }
    }
  }
}

static inline bool te_grow_rows(test_engine *t, uint32_t rows) {
  if (rows <= t->rows_cap) return true;
  const size_t n = (size_t)rows * t->kv_heads * t->head_dim * sizeof(float);
  free(t->q), free(t->k), free(t->v), free(t->out);
  t->q = malloc(n), t->k = malloc(n), t->v = malloc(n), t->out = malloc(n);
  t->rows_cap = t->q && t->k && t->v && t->out ? rows : 0;
  return t->rows_cap != 0;
}

/* The toy model: layer l's rows in plan order; K/V name (sequence, stream, logical position),
 * queries are small and vary so that attention and the query window see distinct rows. */
static inline void te_layer_rows(test_engine *t, const rkv_sched_plan *p, uint32_t l) {
  size_t r = 0;
  const uint32_t H = t->kv_heads, d = t->head_dim;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    for (uint32_t k = 0; k < q->n_tokens; k++, r++)
      for (uint32_t h = 0; h < H; h++)
        for (uint32_t e = 0; e < d; e++) {
          const size_t at = (r * H + h) * d + e;
          t->k[at] = te_value(q->id, l * H + h, q->pos + k, e, 0);
          t->v[at] = te_value(q->id, l * H + h, q->pos + k, e, 1);
          t->q[at] = 0.01f * (float)((q->pos + k + e + h) % 7);
        }
  }
}

/* A cached stream is valid when each row is a K/V pair written to this stream by the sequence
 * or an ancestor, at strictly increasing logical positions (eviction keeps order). */
static inline bool te_stream_valid(const test_engine *t, int64_t id, uint32_t st, const float *kv,
                                   int32_t len) {
  const uint32_t d = t->head_dim;
  int64_t prev = -1;
  for (int32_t q = 0; q < len; q++) {
    const float *kr = kv + (size_t)q * 2 * d, *vr = kr + d;
    const int64_t w = (int64_t)kr[0], lg = (int64_t)kr[1];
    for (uint32_t e = 0; e < d; e++)
      if (kr[e] != te_value(w, st, lg, e, 0) || vr[e] != te_value(w, st, lg, e, 1)) return false;
    if (lg <= prev || !te_is_ancestor(t, w, id)) return false;
    prev = lg;
  }
  return true;
}

static inline bool te_in_plan(const rkv_sched_plan *p, int64_t id) {
  for (uint32_t i = 0; p && i < p->n_seqs; i++)
    if (p->seqs[i].id == id) return true;
  return false;
}

/* After the report: snapshot every live sequence (the source of truth for later swap-ins)
 * and check its rows. Sequences in `skip` (a plan made and not run yet, overlap scheduling)
 * hold slots not written yet and are left for a later report. */
static inline void te_snapshot_skip(test_engine *t, rkv_sched *s, const rkv_sched_plan *skip) {
  const size_t row = (size_t)2 * t->head_dim;
  for (int i = 0; i < TE_MAX_IDS; i++) {
    rkv_sched_request_info info;
    /* a sequence `skip` swaps in keeps its snapshot until that plan's begin checks it */
    if (t->snaps[i].id >= 0 && !te_in_plan(skip, t->snaps[i].id) &&
        (rkv_sched_get_request(s, t->snaps[i].id, &info) != RKV_OK ||
         info.state != RKV_SCHED_SWAPPED))
      t->snaps[i].id = -1;
  }
  int64_t ids[TE_MAX_IDS];
  uint32_t nseq = rkv_blockmgr_list_seqs(t->bm, ids, TE_MAX_IDS);
  for (uint32_t i = 0; i < nseq && i < TE_MAX_IDS; i++) {
    if (te_in_plan(skip, ids[i])) continue;
    te_snap *sn = te_snap_of(t, ids[i], true);
    for (uint32_t st = 0; st < t->streams; st++) {
      int32_t len = 0;
      (void)rkv_blockmgr_stream_len(t->bm, ids[i], st / t->kv_heads, st % t->kv_heads, &len);
      if (len > t->cap_tokens) len = t->cap_tokens;
      sn->lens[st] = len;
      float *kv = sn->kv + (size_t)st * t->cap_tokens * row;
      te_read_stream(t, ids[i], st, len, kv);
      if (!te_stream_valid(t, ids[i], st, kv, len)) t->value_failures++;
    }
  }
}

static inline void te_snapshot(test_engine *t, rkv_sched *s) {
  te_snapshot_skip(t, s, NULL);
}

static inline rkv_status te_fail(const test_engine *t, const char *what, rkv_status st) {
  fprintf(stderr, "test engine: %s: %s: %s\n", what, rkv_status_name(st),
          rkv_exec_last_error(t->x));
  return st;
}

/* Executes a plan through the executor and reports it. Returns the first failing status. */
static inline rkv_status te_run(test_engine *t, rkv_sched *s, const rkv_sched_plan *p) {
  te_note_forks(t, p);
  rkv_status st = rkv_exec_begin(t->x, p);
  if (st != RKV_OK) return te_fail(t, "begin", st);
  te_check_swap_ins(t, p);
  t->copies += p->n_copies;
  if (!te_grow_rows(t, p->n_batched_tokens)) return RKV_ERR_NO_MEMORY;
  for (uint32_t l = 0; l < t->layers; l++) {
    te_layer_rows(t, p, l);
    if ((st = rkv_exec_layer(t->x, l, t->q, t->k, t->v, t->out)) != RKV_OK)
      return te_fail(t, "layer", st);
  }
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    memset(&t->outs[i], 0, sizeof t->outs[i]);
    t->outs[i].eos = rkv_test_uniform(&t->rng) < t->eos_prob;
  }
  if ((st = rkv_exec_finish(t->x, t->outs, p->n_seqs)) != RKV_OK) return te_fail(t, "finish", st);
  for (uint32_t i = 0; i < p->n_seqs; i++)
    t->compressions += t->outs[i].compressed && t->outs[i].tokens_evicted > 0;
  rkv_status rs = rkv_sched_report(s, t->outs, p->n_seqs);
  if ((st = rkv_exec_check(t->x)) != RKV_OK) return te_fail(t, "check", st);
  te_snapshot(t, s);
  return rs;
}

#endif /* SCHED_TEST_ENGINE_H */
