/* A miniature engine for the scheduler tests: executes plans against a real CPU KV pool
 * (swap ops through a host buffer, K/V rows whose values encode (request, stream, logical
 * position), compaction with a keep-sinks-and-newest rule applied with the block manager's
 * move plan), snapshots every running sequence's KV after each step, and verifies that a
 * swapped-in sequence's KV equals its snapshot bit for bit. Header-only, test use only. */
#ifndef SCHED_TEST_ENGINE_H
#define SCHED_TEST_ENGINE_H

#include <stdlib.h>
#include <string.h>

#include <rkv/blockmgr.h>
#include <rkv/scheduler.h>

#include "rkv_test.h"

#define TE_MAX_IDS 512
#define TE_CODE 1000000 /* slot code = writer id * TE_CODE + logical position */

typedef struct te_snap {
  int64_t id;       /* -1 = unused */
  int32_t *lens;    /* [streams] */
  float *kv;        /* [streams][cap_tokens][2][head_dim] */
  int64_t *logical; /* [streams][cap_tokens] logical position of each cached token */
} te_snap;

typedef struct test_engine {
  rkv_blockmgr *bm;
  rkv_backend *be;
  rkv_kv_pool *pool;
  unsigned char *host; /* host swap pool [host_blocks][block_bytes] */
  size_t block_bytes;
  uint32_t streams, block_size, head_dim, layers, kv_heads;
  int32_t cap_tokens;
  /* writer and logical position of each slot's token (a code), for the value rule */
  int64_t *slot_logical; /* [num_blocks * block_size] */
  te_snap snaps[TE_MAX_IDS];
  uint64_t rng;
  double eos_prob;
  uint64_t swap_checks; /* sequences verified after swap-in */
  uint64_t swap_failures;
  uint64_t compressions;
  uint64_t value_failures; /* cached rows whose content is not what was written there */
  uint64_t copies;
  rkv_sched_output outs[1024];
} test_engine;

/* The scheduler tests' block manager: F32 K/V of head_dim 4 (values only matter to the
 * engine above), everything else given. */
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

static inline float te_value(int64_t id, uint32_t stream, int64_t logical, uint32_t e, int kv) {
  return (float)(id * 4096 + logical) + (float)stream * 0.25f + (float)e * 0.001f +
         (kv ? 0.5f : 0.0f);
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

static inline int te_init(test_engine *t, rkv_blockmgr *bm, uint32_t host_blocks,
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
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  bc.num_threads = 1;
  if (rkv_backend_create(&bc, &t->be) != RKV_OK) return 1;
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(bm);
  if (rkv_kv_pool_create(t->be, &lay, c->num_blocks, &t->pool) != RKV_OK) return 1;
  t->block_bytes = rkv_kv_block_bytes(&lay);
  t->host = calloc((size_t)host_blocks + 1, t->block_bytes);
  t->slot_logical = calloc((size_t)c->num_blocks * c->block_size, sizeof(int64_t));
  for (int i = 0; i < TE_MAX_IDS; i++) {
    t->snaps[i].id = -1;
    t->snaps[i].lens = calloc(t->streams, sizeof(int32_t));
    t->snaps[i].kv = calloc((size_t)t->streams * cap_tokens * 2 * t->head_dim, sizeof(float));
    t->snaps[i].logical = calloc((size_t)t->streams * cap_tokens, sizeof(int64_t));
  }
  return 0;
}

static inline void te_fini(test_engine *t) {
  for (int i = 0; i < TE_MAX_IDS; i++) {
    free(t->snaps[i].lens);
    free(t->snaps[i].kv);
    free(t->snaps[i].logical);
  }
  free(t->host);
  free(t->slot_logical);
  rkv_kv_pool_destroy(t->pool);
  rkv_backend_destroy(t->be);
}

/* Reads stream st of seq into (kv, logical) rows. */
static inline void te_read_stream(test_engine *t, int64_t id, uint32_t st, int32_t len, float *kv,
                                  int64_t *logical) {
  const float *base = rkv_kv_pool_base(t->pool);
  const rkv_kv_layout *lay = rkv_kv_pool_layout(t->pool);
  uint32_t l = st / t->kv_heads, h = st % t->kv_heads;
  for (int32_t p = 0; p < len; p++) {
    int64_t slot = -1;
    (void)rkv_blockmgr_stream_slot(t->bm, id, l, h, p, &slot);
    int64_t blk = slot / t->block_size;
    uint32_t off = (uint32_t)(slot % t->block_size);
    const char *b = (const char *)base + (size_t)blk * t->block_bytes;
    memcpy(kv + (size_t)p * 2 * t->head_dim, b + rkv_kv_k_offset(lay, off),
           sizeof(float) * t->head_dim);
    memcpy(kv + ((size_t)p * 2 + 1) * t->head_dim, b + rkv_kv_v_offset(lay, off),
           sizeof(float) * t->head_dim);
    logical[p] = t->slot_logical[slot];
  }
}

/* Executes a plan and reports it. Returns the report status. */
static inline rkv_status te_run(test_engine *t, rkv_sched *s, const rkv_sched_plan *p) {
  /* 0: a fork's child starts as its parent was at the last report */
  size_t row_f = (size_t)2 * t->head_dim;
  for (uint32_t i = 0; i < p->n_forks; i++) {
    te_snap *ps = te_snap_of(t, p->forks[i].parent, false);
    te_snap *cs = ps ? te_snap_of(t, p->forks[i].child, true) : NULL;
    if (!cs) continue;
    memcpy(cs->lens, ps->lens, sizeof(int32_t) * t->streams);
    memcpy(cs->kv, ps->kv, sizeof(float) * t->streams * (size_t)t->cap_tokens * row_f);
    memcpy(cs->logical, ps->logical, sizeof(int64_t) * t->streams * (size_t)t->cap_tokens);
  }
  /* 1-2: swaps through the host buffer */
  for (uint32_t i = 0; i < p->n_swap_out; i++) {
    int32_t dev = p->swap_out[i].device;
    if (rkv_kv_pool_read_blocks(t->pool, &dev, 1,
                                t->host + (size_t)p->swap_out[i].host * t->block_bytes) != RKV_OK)
      return RKV_ERR_INTERNAL;
  }
  /* the logical map of swapped tokens lives on in the snapshot taken after the last step */
  for (uint32_t i = 0; i < p->n_swap_in; i++) {
    int32_t dev = p->swap_in[i].device;
    if (rkv_kv_pool_write_blocks(t->pool, &dev, 1,
                                 t->host + (size_t)p->swap_in[i].host * t->block_bytes) != RKV_OK)
      return RKV_ERR_INTERNAL;
  }
  if (p->n_copies && rkv_kv_pool_copy_blocks(t->pool, p->copies, p->n_copies) != RKV_OK)
    return RKV_ERR_INTERNAL;
  for (uint32_t i = 0; i < p->n_copies; i++)
    for (uint32_t o = 0; o < t->block_size; o++)
      t->slot_logical[(int64_t)p->copies[i].dst * t->block_size + o] =
          t->slot_logical[(int64_t)p->copies[i].src * t->block_size + o];
  t->copies += p->n_copies;
  /* verify swapped-in sequences against their snapshot, and restore the logical map */
  size_t row = (size_t)2 * t->head_dim;
  float *tmp = malloc(sizeof(float) * (size_t)t->cap_tokens * row);
  int64_t *lg = malloc(sizeof(int64_t) * (size_t)t->cap_tokens);
  for (uint32_t i = 0; i < p->n_swapped_in; i++) {
    te_snap *sn = te_snap_of(t, p->swapped_in[i], false);
    t->swap_checks++;
    if (!sn) {
      t->swap_failures++;
      continue;
    }
    for (uint32_t st = 0; st < t->streams; st++) {
      /* the restored stream already holds this step's new tokens after the saved ones */
      int32_t len = -1;
      (void)rkv_blockmgr_stream_len(t->bm, sn->id, st / t->kv_heads, st % t->kv_heads, &len);
      if (len < sn->lens[st]) {
        fprintf(stderr, "swap-in of %lld: stream %u holds %d, saved %d\n", (long long)sn->id, st,
                len, sn->lens[st]);
        t->swap_failures++;
        break;
      }
      len = sn->lens[st];
      for (int32_t q = 0; q < len; q++) {
        int64_t slot;
        (void)rkv_blockmgr_stream_slot(t->bm, sn->id, st / t->kv_heads, st % t->kv_heads, q, &slot);
        t->slot_logical[slot] = sn->logical[(size_t)st * t->cap_tokens + q];
      }
      te_read_stream(t, sn->id, st, len, tmp, lg);
      if (memcmp(tmp, sn->kv + (size_t)st * t->cap_tokens * row, sizeof(float) * len * row)) {
        fprintf(stderr, "swap-in of %lld: stream %u content differs\n", (long long)sn->id, st);
        t->swap_failures++;
        break;
      }
    }
  }
  /* 4: write the new tokens' K/V */
  const rkv_kv_layout *lay = rkv_kv_pool_layout(t->pool);
  char *base = rkv_kv_pool_base(t->pool);
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    for (uint32_t st = 0; st < t->streams; st++)
      for (uint32_t k = 0; k < q->n_tokens; k++) {
        int64_t slot;
        int32_t pos = q->kv_len - (int32_t)q->n_tokens + (int32_t)k;
        if (rkv_blockmgr_stream_slot(t->bm, q->id, st / t->kv_heads, st % t->kv_heads, pos,
                                     &slot) != RKV_OK)
          return RKV_ERR_INTERNAL;
        char *b = base + (size_t)(slot / t->block_size) * t->block_bytes;
        uint32_t off = (uint32_t)(slot % t->block_size);
        float *kr = (float *)(b + rkv_kv_k_offset(lay, off));
        float *vr = (float *)(b + rkv_kv_v_offset(lay, off));
        for (uint32_t e = 0; e < t->head_dim; e++) {
          kr[e] = te_value(q->id, st, q->pos + k, e, 0);
          vr[e] = te_value(q->id, st, q->pos + k, e, 1);
        }
        t->slot_logical[slot] = q->id * TE_CODE + q->pos + (int64_t)k;
      }
  }
  /* 5: compression: keep 4 sinks + the newest (budget - 4), compact, apply moves */
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *q = &p->seqs[i];
    rkv_sched_output *o = &t->outs[i];
    memset(o, 0, sizeof *o);
    o->id = q->id;
    o->eos = rkv_test_uniform(&t->rng) < t->eos_prob;
    if (!q->compress) continue;
    int32_t B = q->evict->budget, n = q->kv_len;
    if (n <= B) {
      o->compressed = true;
      continue;
    }
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)B);
    for (int32_t k = 0; k < B; k++) pos[k] = k < 4 ? k : n - (B - k);
    rkv_keep_list *lists = malloc(sizeof(rkv_keep_list) * t->streams);
    for (uint32_t st = 0; st < t->streams; st++) {
      lists[st].layer = st / t->kv_heads;
      lists[st].head = st % t->kv_heads;
      lists[st].pos = pos;
      lists[st].n = (uint32_t)B;
    }
    uint32_t cap = (uint32_t)B * t->streams, nm = 0;
    rkv_slot_move *mv = malloc(sizeof(rkv_slot_move) * cap);
    rkv_blockmgr_stats a, b2;
    rkv_blockmgr_get_stats(t->bm, &a);
    rkv_status st = rkv_blockmgr_compact(t->bm, q->id, lists, t->streams, mv, cap, &nm);
    if (st == RKV_OK) {
      for (uint32_t k = 0; k < nm; k++) t->slot_logical[mv[k].dst] = t->slot_logical[mv[k].src];
      st = rkv_kv_pool_apply_moves(t->pool, mv, nm);
    }
    rkv_blockmgr_get_stats(t->bm, &b2);
    free(mv);
    free(lists);
    free(pos);
    if (st == RKV_ERR_NO_BLOCKS) continue; /* shared blocks need fresh ones: retried later */
    if (st != RKV_OK) {
      free(tmp);
      free(lg);
      return st;
    }
    o->compressed = true;
    o->tokens_evicted = (uint64_t)(n - B) * t->streams;
    o->blocks_freed = b2.free_blocks - a.free_blocks;
    t->compressions++;
  }
  rkv_status rs = rkv_sched_report(s, t->outs, p->n_seqs);
  /* snapshot every running sequence (the source of truth for later swap-ins) */
  for (int i = 0; i < TE_MAX_IDS; i++) {
    rkv_sched_request_info info;
    if (t->snaps[i].id >= 0 && (rkv_sched_get_request(s, t->snaps[i].id, &info) != RKV_OK ||
                                info.state != RKV_SCHED_SWAPPED))
      t->snaps[i].id = -1;
  }
  int64_t ids[TE_MAX_IDS];
  uint32_t nseq = rkv_blockmgr_list_seqs(t->bm, ids, TE_MAX_IDS);
  for (uint32_t i = 0; i < nseq && i < TE_MAX_IDS; i++) {
    te_snap *sn = te_snap_of(t, ids[i], true);
    for (uint32_t st = 0; st < t->streams; st++) {
      int32_t len = 0;
      (void)rkv_blockmgr_stream_len(t->bm, ids[i], st / t->kv_heads, st % t->kv_heads, &len);
      if (len > t->cap_tokens) len = t->cap_tokens;
      sn->lens[st] = len;
      float *kv = sn->kv + (size_t)st * t->cap_tokens * row;
      int64_t *lgc = sn->logical + (size_t)st * t->cap_tokens;
      te_read_stream(t, ids[i], st, len, kv, lgc);
      for (int32_t q = 0; q < len; q++)
        /* forked children hold their parent's rows: the code names the writer */
        if (kv[(size_t)q * row] != te_value(lgc[q] / TE_CODE, st, lgc[q] % TE_CODE, 0, 0) ||
            kv[(size_t)q * row + t->head_dim] !=
                te_value(lgc[q] / TE_CODE, st, lgc[q] % TE_CODE, 0, 1))
          t->value_failures++;
    }
  }
  free(tmp);
  free(lg);
  return rs;
}

#endif /* SCHED_TEST_ENGINE_H */
