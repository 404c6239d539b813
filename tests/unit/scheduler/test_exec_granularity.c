/* The executor's selection granularity (rkv_exec_config.granularity, version 2):
 *  - create: a version-1 struct_size is accepted (granularity stream), an unknown unit and any
 *    other size are RKV_ERR_INVALID_ARG, a device pool (the emulated device) and bookkeeping
 *    (pool NULL) take any unit;
 *  - a scheduler run on a CPU pool and on the emulated device (the executor's device path: the
 *    evictor's batched launch) at each unit (R-KV and H2O): every V row carries its token's
 *    logical index, so after each flagged compression the positions every stream kept are
 *    read back: all streams of a group (a layer, a kv head index, the sequence) hold the same
 *    positions, every stream holds exactly the budget, the newest `window` tokens are kept; at
 *    stream granularity some compression keeps different sets in different streams (so the
 *    check above is not vacuous). rkv_exec_check and rkv_sched_check stay clean. */
#include <stddef.h>
#include <stdlib.h>

#include <rkv/buffer.h>
#include <rkv/buffer_emu.h>
#include <rkv/executor.h>
#include <rkv/scheduler.h>

#include "rkv_test.h"

enum { LAYERS = 3, KVH = 2, QH = 4, D = 8, BLOCK = 4, MAX_ROWS = 64, MAX_SEQS = 4 };

typedef struct engine {
  rkv_blockmgr *bm;
  rkv_backend *be;
  rkv_kv_pool *pool;
  rkv_sched *s;
  rkv_exec *x;
} engine;

static void engine_free(engine *e) {
  rkv_exec_destroy(e->x);
  rkv_sched_destroy(e->s);
  rkv_kv_pool_destroy(e->pool);
  rkv_backend_destroy(e->be);
  rkv_blockmgr_destroy(e->bm);
  memset(e, 0, sizeof *e);
}

static rkv_blockmgr *make_bm(void) {
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = 600, bc.block_size = BLOCK, bc.num_layers = LAYERS, bc.num_kv_heads = KVH;
  bc.head_dim = D, bc.dtype = RKV_DTYPE_F32, bc.max_seqs = 64;
  rkv_blockmgr *bm = NULL;
  EXPECT_OK(rkv_blockmgr_create(&bc, &bm));
  return bm;
}

static rkv_evict_params params(rkv_evict_policy pol) {
  rkv_evict_params ev = RKV_EVICT_PARAMS_INIT;
  ev.policy = pol, ev.budget = 24, ev.window = 4, ev.buffer = 8;
  return ev;
}

static void test_create(void) {
  rkv_blockmgr *bm = make_bm();
  rkv_backend_config bec = RKV_BACKEND_CONFIG_INIT;
  bec.kind = RKV_BACKEND_CPU;
  rkv_backend *cpu = NULL, *emu = NULL;
  EXPECT_OK(rkv_backend_create(&bec, &cpu));
  EXPECT_OK(rkv_backend_create_emulated(&bec, &emu));
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(bm);
  rkv_kv_pool *pc = NULL, *pe = NULL;
  EXPECT_OK(rkv_kv_pool_create(cpu, &lay, 600, &pc));
  EXPECT_OK(rkv_kv_pool_create(emu, &lay, 600, &pe));
  rkv_exec_config xc = RKV_EXEC_CONFIG_INIT;
  xc.num_q_heads = QH, xc.max_seqs = MAX_SEQS, xc.evict = params(RKV_EVICT_RKV);
  char err[256] = "";
  rkv_exec *x = NULL;
  /* version 1: everything up to allocator; the bytes after it are never read */
  rkv_exec_config v1 = xc;
  v1.struct_size = (uint32_t)offsetof(rkv_exec_config, granularity);
  v1.granularity = (rkv_evict_granularity)99;
  EXPECT_OK(rkv_exec_create(&v1, bm, pc, &x, err, sizeof err));
  rkv_exec_destroy(x);
  xc.struct_size = (uint32_t)sizeof(rkv_exec_config) + 8;
  EXPECT_STATUS(rkv_exec_create(&xc, bm, pc, &x, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(x == NULL);
  xc.struct_size = (uint32_t)sizeof(rkv_exec_config);
  xc.granularity = RKV_EVICT_GRAN_COUNT_;
  EXPECT_STATUS(rkv_exec_create(&xc, bm, pc, &x, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(err, "granularity") != NULL);
  for (int g = 0; g < RKV_EVICT_GRAN_COUNT_; g++) {
    xc.granularity = (rkv_evict_granularity)g;
    EXPECT_OK(rkv_exec_create(&xc, bm, pc, &x, err, sizeof err));
    rkv_exec_destroy(x);
    EXPECT_OK(rkv_exec_create(&xc, bm, NULL, &x, err, sizeof err));
    rkv_exec_destroy(x);
    x = NULL;
    EXPECT_OK(rkv_exec_create(&xc, bm, pe, &x, err, sizeof err)); /* the device path too */
    rkv_exec_destroy(x);
  }
  rkv_kv_pool_destroy(pc);
  rkv_kv_pool_destroy(pe);
  rkv_backend_destroy(cpu);
  rkv_backend_destroy(emu);
  rkv_blockmgr_destroy(bm);
}

static float noise(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t s = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull) * 0xBF58476D1CE4E5B9ull ^
               (c + 7) * 0x94D049BB133111EBull;
  return (float)rkv_test_uniform(&s) * 2 - 1;
}

/* Q, K random per (id, logical position, layer, head); V's first element = the position. */
static void make_qkv(const rkv_sched_plan *p, uint32_t l, float *q, float *k, float *v) {
  uint32_t r = 0;
  for (uint32_t i = 0; i < p->n_seqs; i++) {
    const rkv_sched_seq *s = &p->seqs[i];
    for (uint32_t t = 0; t < s->n_tokens; t++, r++) {
      const uint64_t pos = (uint64_t)(s->pos + t);
      for (uint32_t h = 0; h < QH; h++)
        for (uint32_t e = 0; e < D; e++)
          q[((size_t)r * QH + h) * D + e] = noise((uint64_t)s->id, pos, l * 1000 + h * 10 + e + 1);
      for (uint32_t h = 0; h < KVH; h++) {
        for (uint32_t e = 0; e < D; e++) {
          /* every 4th token close to the one 3 back: redundancy to find */
          uint64_t src = pos % 4 == 3 && pos >= 3 ? pos - 3 : pos;
          float x = noise((uint64_t)s->id, src, l * 500 + h * 10 + e + 2);
          if (src != pos) x += 0.05f * noise((uint64_t)s->id, pos, e + 3);
          k[((size_t)r * KVH + h) * D + e] = x;
          v[((size_t)r * KVH + h) * D + e] = e == 0 ? (float)pos : 0.0f;
        }
      }
    }
  }
}

/* Logical positions held by stream (l, h) of id (from V's first element). */
static int32_t stream_positions(engine *e, int64_t id, uint32_t l, uint32_t h, int32_t *out) {
  int32_t len = 0;
  EXPECT_OK(rkv_blockmgr_stream_len(e->bm, id, l, h, &len));
  const rkv_kv_layout *lay = rkv_kv_pool_layout(e->pool);
  for (int32_t j = 0; j < len; j++) {
    int64_t slot;
    rkv_blockmgr_stream_slot(e->bm, id, l, h, j, &slot);
    const char *row = (const char *)rkv_kv_pool_base(e->pool) +
                      (size_t)(slot / BLOCK) * rkv_kv_block_bytes(lay) +
                      rkv_kv_v_offset(lay, (uint32_t)(slot % BLOCK));
    float x;
    memcpy(&x, row, sizeof x);
    out[j] = (int32_t)x;
  }
  return len;
}

/* The group stream (l, h) belongs to, as an index. */
static uint32_t group_of(rkv_evict_granularity g, uint32_t l, uint32_t h) {
  switch (g) {
    case RKV_EVICT_GRAN_STREAM:
      return l * KVH + h;
    case RKV_EVICT_GRAN_LAYER:
      return l;
    case RKV_EVICT_GRAN_KVHEAD:
      return h;
    default:
      return 0;
  }
}

/* Checks one compressed sequence; returns whether two streams kept different sets. */
static bool check_compressed(engine *e, int64_t id, int64_t newest, rkv_evict_granularity g,
                             const rkv_evict_params *ev, int *bad) {
  static int32_t pos[LAYERS * KVH][256];
  int32_t len[LAYERS * KVH];
  bool differ = false;
  for (uint32_t s = 0; s < LAYERS * KVH; s++) {
    len[s] = stream_positions(e, id, s / KVH, s % KVH, pos[s]);
    *bad += len[s] != ev->budget;
    for (int32_t w = 0; w < ev->window && len[s] == ev->budget; w++)
      *bad += pos[s][ev->budget - 1 - w] != newest - w;
    for (uint32_t r = 0; r < s; r++) {
      const bool same =
          len[r] == len[s] && !memcmp(pos[r], pos[s], (size_t)len[s] * sizeof(int32_t));
      if (group_of(g, r / KVH, r % KVH) == group_of(g, s / KVH, s % KVH)) *bad += !same;
      differ |= !same;
    }
  }
  return differ;
}

static void run(rkv_evict_granularity g, rkv_evict_policy pol, bool emu) {
  engine e;
  memset(&e, 0, sizeof e);
  e.bm = make_bm();
  rkv_backend_config bec = RKV_BACKEND_CONFIG_INIT;
  bec.kind = RKV_BACKEND_CPU;
  EXPECT_OK(emu ? rkv_backend_create_emulated(&bec, &e.be) : rkv_backend_create(&bec, &e.be));
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(e.bm);
  EXPECT_OK(rkv_kv_pool_create(e.be, &lay, 600, &e.pool));
  const rkv_evict_params ev = params(pol);
  rkv_sched_config sc = RKV_SCHED_CONFIG_INIT;
  sc.max_batched_tokens = MAX_ROWS, sc.max_seqs = MAX_SEQS, sc.max_prefill_chunk = 16;
  sc.evict = ev;
  rkv_exec_config xc = RKV_EXEC_CONFIG_INIT;
  xc.num_q_heads = QH, xc.max_seqs = MAX_SEQS, xc.evict = ev, xc.granularity = g;
  char err[256] = "";
  EXPECT_OK(rkv_sched_create(&sc, e.bm, &e.s, err, sizeof err));
  EXPECT_OK(rkv_exec_create(&xc, e.bm, e.pool, &e.x, err, sizeof err));
  for (int64_t i = 0; i < 6; i++) {
    rkv_sched_request rq = {i, 20 + (i * 7) % 30, 30 + (i * 13) % 40, 0, (double)i, NULL};
    EXPECT_OK(rkv_sched_add_request(e.s, &rq));
  }
  static float q[MAX_ROWS * QH * D], k[MAX_ROWS * KVH * D], v[MAX_ROWS * KVH * D],
      out[MAX_ROWS * QH * D];
  rkv_buffer *dq = NULL, *dk = NULL, *dv = NULL, *dout = NULL;
  if (emu) {
    EXPECT_OK(rkv_buffer_create(e.be, RKV_BUFFER_DEVICE, sizeof q, &dq));
    EXPECT_OK(rkv_buffer_create(e.be, RKV_BUFFER_DEVICE, sizeof k, &dk));
    EXPECT_OK(rkv_buffer_create(e.be, RKV_BUFFER_DEVICE, sizeof v, &dv));
    EXPECT_OK(rkv_buffer_create(e.be, RKV_BUFFER_DEVICE, sizeof out, &dout));
  }
  rkv_sched_output outs[MAX_SEQS];
  int bad = 0, compressions = 0, differ = 0;
  for (int step = 0; step < 2000; step++) {
    const rkv_sched_plan *p = NULL;
    if (rkv_sched_step(e.s, &p) != RKV_OK) {
      RKV_TEST_FAIL_("step: %s", rkv_sched_last_error(e.s));
      break;
    }
    if (rkv_exec_begin(e.x, p) != RKV_OK) {
      RKV_TEST_FAIL_("begin: %s", rkv_exec_last_error(e.x));
      break;
    }
    for (uint32_t l = 0; l < LAYERS && p->n_seqs; l++) {
      make_qkv(p, l, q, k, v);
      if (emu) { /* a device pool takes DEVICE rows; sync: the next layer rewrites the host rows */
        EXPECT_OK(rkv_buffer_upload(dq, 0, q, sizeof q));
        EXPECT_OK(rkv_buffer_upload(dk, 0, k, sizeof k));
        EXPECT_OK(rkv_buffer_upload(dv, 0, v, sizeof v));
        EXPECT_OK(rkv_exec_layer(e.x, l, rkv_buffer_ptr(dq), rkv_buffer_ptr(dk), rkv_buffer_ptr(dv),
                                 rkv_buffer_ptr(dout)));
        EXPECT_OK(rkv_backend_sync(e.be));
      } else {
        EXPECT_OK(rkv_exec_layer(e.x, l, q, k, v, out));
      }
    }
    memset(outs, 0, sizeof outs);
    if (rkv_exec_finish(e.x, outs, p->n_seqs) != RKV_OK) {
      RKV_TEST_FAIL_("finish: %s", rkv_exec_last_error(e.x));
      break;
    }
    if (emu) EXPECT_OK(rkv_backend_sync(e.be)); /* the launch ran before the pool is read */
    for (uint32_t i = 0; i < p->n_seqs; i++) {
      if (!outs[i].compressed) continue;
      compressions++;
      const rkv_sched_seq *s = &p->seqs[i];
      differ += check_compressed(&e, s->id, s->pos + s->n_tokens - 1, g, &ev, &bad);
    }
    EXPECT_OK(rkv_sched_report(e.s, outs, p->n_seqs));
    EXPECT_OK(rkv_exec_check(e.x));
    rkv_sched_metrics m;
    rkv_sched_get_metrics(e.s, &m);
    if (!p->n_seqs && !p->n_finished && !m.num_running && !m.num_waiting && !m.num_swapped) break;
  }
  EXPECT_OK(rkv_sched_check(e.s));
  if (getenv("RKV_TEST_VERBOSE"))
    printf("%s %s %s: %d compressions, %d differ\n", emu ? "emulated device" : "cpu",
           rkv_evict_policy_name(pol), rkv_evict_granularity_name(g), compressions, differ);
  EXPECT(compressions > 10);
  if (g == RKV_EVICT_GRAN_STREAM && pol != RKV_EVICT_STREAMING) EXPECT(differ > 0);
  if (g == RKV_EVICT_GRAN_SEQUENCE) EXPECT_EQ_INT(differ, 0);
  if (bad)
    RKV_TEST_FAIL_("%s %s %s: %d budget, window or shared-set violations in %d compressions",
                   emu ? "emulated device" : "cpu", rkv_evict_policy_name(pol),
                   rkv_evict_granularity_name(g), bad, compressions);
  else
    rkv_test_passed_++;
  if (emu) EXPECT_EQ_INT(rkv_emu_hazards(e.be), 0);
  rkv_buffer_destroy(dq);
  rkv_buffer_destroy(dk);
  rkv_buffer_destroy(dv);
  rkv_buffer_destroy(dout);
  engine_free(&e);
}

int main(void) {
  test_create();
  const rkv_evict_policy pols[2] = {RKV_EVICT_RKV, RKV_EVICT_H2O};
  for (int pi = 0; pi < 2; pi++)
    for (int g = 0; g < RKV_EVICT_GRAN_COUNT_; g++)
      for (int emu = 0; emu < 2; emu++) run((rkv_evict_granularity)g, pols[pi], emu == 1);
  return rkv_test_finish();
}
