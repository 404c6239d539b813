/* rkv_evict_layer over real paged blocks: keys written into a CPU KV pool through the block
 * manager's slot mapping with deliberately scattered block ids, scored block by block,
 * compacted and moved. For every policy, dtype (f32 / f16 / bf16) and GQA ratio (1 / 4 / 8):
 *  - the kept positions read back from the compacted streams (each token's position is
 *    encoded in its V row) equal rkv_evict_select_dense on the same (dtype-rounded) inputs;
 *  - K rows, V rows and per-slot scores moved with their tokens; freed slots' scores zero;
 *  - stream lengths = B, blocks freed = what the budget implies, rkv_blockmgr_check clean
 *    after every compaction; other layers untouched; n <= B changes nothing;
 *  - steady state (compress, decode `buffer` tokens, compress) and a forked sequence;
 *  - errors change nothing; rkv_evict_h2o_accumulate against a hand computation. */
#include <stdlib.h>

#include <rkv/evict.h>

#include "rkv_test.h"

typedef struct fixture {
  uint32_t layers, kv, qh, d, bs;
  rkv_dtype dt;
  rkv_backend *be;
  rkv_blockmgr *m;
  rkv_kv_pool *pool;
  rkv_qwindow *qw;
  /* Model of sequence 1, per stream [layers*kv]: the original K (dtype-rounded, f32) and
   * H2O mass of every position ever appended. */
  float *k[64];
  float *acc[64];
  int32_t cap;
  uint64_t rng;
} fixture;

static void fx_init(fixture *f, uint32_t layers, uint32_t kv, uint32_t qh, uint32_t d, uint32_t bs,
                    rkv_dtype dt, uint32_t num_blocks, int32_t cap) {
  memset(f, 0, sizeof *f);
  f->layers = layers, f->kv = kv, f->qh = qh, f->d = d, f->bs = bs, f->dt = dt, f->cap = cap;
  f->rng = 1000 + kv * 7 + qh + dt;
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  EXPECT_OK(rkv_backend_create(&bc, &f->be));
  rkv_blockmgr_config mc = RKV_BLOCKMGR_CONFIG_INIT;
  mc.num_blocks = num_blocks, mc.block_size = bs, mc.num_layers = layers, mc.num_kv_heads = kv;
  mc.head_dim = d, mc.dtype = dt, mc.check_every_op = true, mc.watermark = 0;
  EXPECT_OK(rkv_blockmgr_create(&mc, &f->m));
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(f->m);
  EXPECT_OK(rkv_kv_pool_create(f->be, &lay, num_blocks, &f->pool));
  rkv_qwindow_config qc = RKV_QWINDOW_CONFIG_INIT;
  qc.num_layers = layers, qc.num_q_heads = qh, qc.head_dim = d, qc.window = 8;
  EXPECT_OK(rkv_qwindow_create(&qc, &f->qw));
  for (uint32_t s = 0; s < layers * kv; s++) {
    f->k[s] = calloc((size_t)cap * d, sizeof(float));
    f->acc[s] = calloc((size_t)cap, sizeof(float));
  }
}

static void fx_fini(fixture *f) {
  for (uint32_t s = 0; s < f->layers * f->kv; s++) free(f->k[s]), free(f->acc[s]);
  rkv_qwindow_destroy(f->qw);
  rkv_kv_pool_destroy(f->pool);
  rkv_blockmgr_destroy(f->m);
  rkv_backend_destroy(f->be);
}

static char *slot_k(fixture *f, int64_t slot) {
  const rkv_kv_layout *l = rkv_kv_pool_layout(f->pool);
  return (char *)rkv_kv_pool_base(f->pool) + (size_t)(slot / f->bs) * rkv_kv_block_bytes(l) +
         rkv_kv_k_offset(l, (uint32_t)(slot % f->bs));
}
static char *slot_v(fixture *f, int64_t slot) {
  const rkv_kv_layout *l = rkv_kv_pool_layout(f->pool);
  return (char *)rkv_kv_pool_base(f->pool) + (size_t)(slot / f->bs) * rkv_kv_block_bytes(l) +
         rkv_kv_v_offset(l, (uint32_t)(slot % f->bs));
}

/* Original position encoded in base-256 digits (exact in bf16 too). */
static void put_pos(fixture *f, int64_t slot, int32_t pos) {
  char *v = slot_v(f, slot);
  for (uint32_t i = 0; i < f->d; i++)
    rkv_dtype_store(f->dt, v, i, i < 3 ? (float)((pos >> (8 * i)) & 255) : 0.0f);
}
static int32_t get_pos(fixture *f, int64_t slot) {
  const char *v = slot_v(f, slot);
  int32_t p = 0;
  for (uint32_t i = 0; i < 3; i++) p |= (int32_t)rkv_dtype_load(f->dt, v, i) << (8 * i);
  return p;
}

/* Appends n tokens to sequence `seq` (stream positions start at `at`), one token per call
 * with a dummy sequence (id 1000) growing in between so block ids interleave; the dummy is
 * freed at the end, leaving holes. Clustered keys: every 5th token repeats an earlier one
 * with noise. model: whether to record into the fixture's model (sequence 1 only). */
static void fx_append(fixture *f, int64_t seq, int32_t at, int32_t n, bool model) {
  uint32_t sps = f->layers * f->kv;
  int64_t slots[64];
  rkv_block_copy copies[64];
  uint32_t nc = 0;
  if (!rkv_blockmgr_seq_exists(f->m, 1000)) EXPECT_OK(rkv_blockmgr_seq_create(f->m, 1000));
  for (int32_t t = 0; t < n; t++) {
    rkv_status s = rkv_blockmgr_append(f->m, seq, 1, slots, copies, &nc);
    if (s != RKV_OK) {
      EXPECT_OK(s);
      return;
    }
    if (nc) EXPECT_OK(rkv_kv_pool_copy_blocks(f->pool, copies, nc));
    if (t % 3 == 0) EXPECT_OK(rkv_blockmgr_append(f->m, 1000, 1, NULL, copies, &nc));
    int32_t pos = at + t;
    for (uint32_t s2 = 0; s2 < sps; s2++) {
      float row[256];
      for (uint32_t i = 0; i < f->d; i++) {
        float x = (float)rkv_test_uniform(&f->rng) * 2 - 1;
        if (model && pos % 5 == 4 && pos >= 20)
          x = f->k[s2][(size_t)(pos - 17) * f->d + i] + 0.05f * x;
        rkv_dtype_store(f->dt, slot_k(f, slots[s2]), i, x);
        row[i] = rkv_dtype_load(f->dt, slot_k(f, slots[s2]), i);
      }
      put_pos(f, slots[s2], pos);
      float a = (float)rkv_test_uniform(&f->rng);
      rkv_kv_pool_scores(f->pool)[slots[s2]] = a;
      if (model && pos < f->cap) {
        memcpy(f->k[s2] + (size_t)pos * f->d, row, f->d * sizeof(float));
        f->acc[s2][pos] = a;
      }
    }
  }
  EXPECT_OK(rkv_blockmgr_seq_free(f->m, 1000));
}

static void fx_push_queries(fixture *f, int64_t seq, uint32_t layer, uint32_t rows) {
  static float q[16 * 64 * 128];
  for (size_t i = 0; i < (size_t)rows * f->qh * f->d; i++)
    q[i] = (float)rkv_test_uniform(&f->rng) * 2 - 1;
  EXPECT_OK(rkv_qwindow_push(f->qw, seq, layer, q, rows));
}

static unsigned char g_ws[32 << 20];
static float g_dense_k[8 * 4096 * 64], g_dense_acc[8 * 4096], g_q[64 * 8 * 128];
static int32_t g_keep[8 * 4096];

/* Current positions (original ids) of every token of stream (layer, head) of seq. */
static int32_t read_stream(fixture *f, int64_t seq, uint32_t layer, uint32_t h, int32_t *pos) {
  int32_t len = -1;
  EXPECT_OK(rkv_blockmgr_stream_len(f->m, seq, layer, h, &len));
  for (int32_t p = 0; p < len; p++) {
    int64_t slot;
    rkv_blockmgr_stream_slot(f->m, seq, layer, h, p, &slot);
    pos[p] = get_pos(f, slot);
  }
  return len;
}

/* Compresses `layer` of sequence 1 and checks everything against the dense entry. The model
 * maps current positions to original ids: ids[s][p]. */
static void compress_and_check(fixture *f, const rkv_evict_params *p, uint32_t layer,
                               int32_t (*ids)[4096], bool shared, const char *what) {
  const uint32_t kv = f->kv, d = f->d;
  int32_t n = 0;
  EXPECT_OK(rkv_blockmgr_stream_len(f->m, 1, layer, 0, &n));
  /* Dense inputs: current cache order, through the model. */
  for (uint32_t h = 0; h < kv; h++) {
    uint32_t s = layer * kv + h;
    for (int32_t j = 0; j < n; j++) {
      memcpy(g_dense_k + ((size_t)h * n + j) * d, f->k[s] + (size_t)ids[s][j] * d,
             d * sizeof(float));
      int64_t slot;
      rkv_blockmgr_stream_slot(f->m, 1, layer, h, j, &slot);
      g_dense_acc[(size_t)h * n + j] = rkv_kv_pool_scores(f->pool)[slot];
    }
  }
  uint32_t cnt = 0;
  EXPECT_OK(rkv_qwindow_get(f->qw, 1, layer, g_q, &cnt));
  char err[256];
  EXPECT_OK(rkv_evict_select_dense(p, g_dense_k, g_q, g_dense_acc, kv, f->qh, n, d, g_keep, NULL,
                                   g_ws, sizeof g_ws, err, sizeof err));
  rkv_blockmgr_stats before;
  rkv_blockmgr_get_stats(f->m, &before);
  rkv_evict_result res;
  size_t need = 0;
  EXPECT_OK(rkv_evict_workspace_size(p, kv, f->qh, d, n, &need));
  EXPECT(need <= sizeof g_ws);
  rkv_status st = rkv_evict_layer_ex(p, f->m, f->pool, f->qw, f->qh, 1, layer, g_ws, need, &res,
                                     err, sizeof err);
  if (st != RKV_OK) RKV_TEST_FAIL_("%s: evict_layer: %s: %s", what, rkv_status_name(st), err);
  EXPECT_OK(rkv_blockmgr_check(f->m));
  const int32_t B = rkv_evict_kept_count(p, n);
  const uint32_t bs = f->bs;
  if (B < n) {
    EXPECT_EQ_INT(res.streams_compressed, kv);
    EXPECT_EQ_INT(res.tokens_evicted, (uint64_t)kv * (n - B));
    /* Shared blocks stay with the other sequence: nothing returns to the free list, and the
     * kept tokens move into fresh blocks. */
    uint32_t freed = shared ? 0 : kv * ((n + bs - 1) / bs - (B + bs - 1) / bs);
    EXPECT_EQ_INT(res.blocks_freed, freed);
    rkv_blockmgr_stats after;
    rkv_blockmgr_get_stats(f->m, &after);
    EXPECT_EQ_INT((int64_t)after.free_blocks - before.free_blocks,
                  shared ? -(int64_t)kv * ((B + bs - 1) / bs) : (int64_t)freed);
    EXPECT(res.slot_moves <= kv * (uint32_t)B);
  } else {
    EXPECT_EQ_INT(res.streams_compressed, 0);
    EXPECT_EQ_INT(res.blocks_freed, 0);
  }
  int bad_pos = 0, bad_k = 0, bad_acc = 0, bad_tail = 0;
  static int32_t pos[4096];
  for (uint32_t h = 0; h < kv; h++) {
    uint32_t s = layer * kv + h;
    int32_t len = read_stream(f, 1, layer, h, pos);
    EXPECT_EQ_INT(len, B);
    int32_t newids[4096];
    for (int32_t j = 0; j < len && j < B; j++) {
      int32_t want_id = ids[s][g_keep[(size_t)h * B + j]];
      bad_pos += pos[j] != want_id;
      newids[j] = want_id;
      int64_t slot;
      rkv_blockmgr_stream_slot(f->m, 1, layer, h, j, &slot);
      for (uint32_t i = 0; i < d; i++)
        bad_k += rkv_dtype_load(f->dt, slot_k(f, slot), i) != f->k[s][(size_t)want_id * d + i];
      bad_acc += rkv_kv_pool_scores(f->pool)[slot] !=
                 g_dense_acc[(size_t)h * n + g_keep[(size_t)h * B + j]];
    }
    const int32_t *blocks;
    int32_t nb;
    EXPECT_OK(rkv_blockmgr_stream_blocks(f->m, 1, layer, h, &blocks, &nb));
    if (B < n && nb > 0)
      for (uint32_t o = (uint32_t)(B - (nb - 1) * (int32_t)bs); o < bs; o++)
        bad_tail += rkv_kv_pool_scores(f->pool)[(size_t)blocks[nb - 1] * bs + o] != 0.0f;
    memcpy(ids[s], newids, (size_t)B * sizeof(int32_t));
  }
  if (bad_pos || bad_k || bad_acc || bad_tail)
    RKV_TEST_FAIL_("%s: %d positions, %d K values, %d scores, %d tail scores differ", what, bad_pos,
                   bad_k, bad_acc, bad_tail);
  else
    rkv_test_passed_++;
}

static void test_policies(void) {
  const rkv_evict_policy pols[5] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_STREAMING,
                                    RKV_EVICT_H2O, RKV_EVICT_FULL};
  const rkv_dtype dts[3] = {RKV_DTYPE_F32, RKV_DTYPE_F16, RKV_DTYPE_BF16};
  const uint32_t gqa[3] = {1, 4, 8};
  static int32_t ids[64][4096];
  for (int pi = 0; pi < 5; pi++) {
    for (int di = 0; di < 3; di++) {
      for (int gi = 0; gi < 3; gi++) {
        fixture f;
        const uint32_t kv = 2, layers = 2;
        fx_init(&f, layers, kv, kv * gqa[gi], 32, 16, dts[di], 400, 1024);
        rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
        p.policy = pols[pi], p.budget = 100, p.buffer = 40;
        EXPECT_OK(rkv_blockmgr_seq_create(f.m, 1));
        EXPECT_OK(rkv_qwindow_seq_add(f.qw, 1));
        /* Prefill of 90 (< B: nothing happens), then to 150 (> B). */
        fx_append(&f, 1, 0, 90, true);
        for (uint32_t s = 0; s < layers * kv; s++)
          for (int32_t j = 0; j < 4096; j++) ids[s][j] = j;
        fx_push_queries(&f, 1, 0, 8);
        fx_push_queries(&f, 1, 1, 8);
        char what[96];
        snprintf(what, sizeof what, "%s %s gqa %u prefill<B", rkv_evict_policy_name(p.policy),
                 rkv_dtype_name(f.dt), gqa[gi]);
        compress_and_check(&f, &p, 0, ids, false, what);
        fx_append(&f, 1, 90, 60, true);
        fx_push_queries(&f, 1, 0, 3);
        snprintf(what, sizeof what, "%s %s gqa %u n=150", rkv_evict_policy_name(p.policy),
                 rkv_dtype_name(f.dt), gqa[gi]);
        compress_and_check(&f, &p, 0, ids, false, what);
        /* Layer 1 untouched. */
        int32_t len1 = 0;
        EXPECT_OK(rkv_blockmgr_stream_len(f.m, 1, 1, 0, &len1));
        EXPECT_EQ_INT(len1, 150);
        /* Steady state: decode `buffer` tokens one by one, compress at B + buffer. */
        int32_t total = 150;
        for (int round = 0; round < 2 && pols[pi] != RKV_EVICT_FULL; round++) {
          int32_t len = 0;
          EXPECT_OK(rkv_blockmgr_stream_len(f.m, 1, 0, 0, &len));
          while (!rkv_evict_should_compress(&p, len, false)) {
            fx_append(&f, 1, total, 1, true);
            for (uint32_t s = 0; s < layers * kv; s++) ids[s][len] = total;
            total++, len++;
            fx_push_queries(&f, 1, 0, 1);
            fx_push_queries(&f, 1, 1, 1);
          }
          EXPECT_EQ_INT(len, p.budget + p.buffer);
          snprintf(what, sizeof what, "%s %s gqa %u round %d", rkv_evict_policy_name(p.policy),
                   rkv_dtype_name(f.dt), gqa[gi], round);
          compress_and_check(&f, &p, 0, ids, false, what);
        }
        fx_fini(&f);
      }
    }
  }
}

/* Compressing a fork must leave the parent's tokens intact (shared leading blocks). */
static void test_fork(void) {
  fixture f;
  fx_init(&f, 1, 4, 8, 16, 16, RKV_DTYPE_F16, 300, 512);
  static int32_t ids[64][4096];
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 48;
  EXPECT_OK(rkv_blockmgr_seq_create(f.m, 1));
  EXPECT_OK(rkv_qwindow_seq_add(f.qw, 1));
  fx_append(&f, 1, 0, 100, true);
  fx_push_queries(&f, 1, 0, 8);
  /* Sequence 1 forks into 2; compress the PARENT (1) so the check machinery applies, then
   * verify the child 2 still reads the original 100 tokens. */
  EXPECT_OK(rkv_blockmgr_seq_fork(f.m, 1, 2));
  for (uint32_t s = 0; s < 4; s++)
    for (int32_t j = 0; j < 4096; j++) ids[s][j] = j;
  compress_and_check(&f, &p, 0, ids, true, "fork parent");
  static int32_t pos[4096];
  for (uint32_t h = 0; h < 4; h++) {
    int32_t len = read_stream(&f, 2, 0, h, pos);
    EXPECT_EQ_INT(len, 100);
    int bad = 0;
    for (int32_t j = 0; j < len; j++) bad += pos[j] != j;
    EXPECT_EQ_INT(bad, 0);
  }
  EXPECT_OK(rkv_blockmgr_seq_free(f.m, 2));
  EXPECT_OK(rkv_blockmgr_check(f.m));
  fx_fini(&f);
}

/* A fork whose compaction needs fresh blocks the pool cannot give: RKV_ERR_NO_BLOCKS and
 * nothing changes (tables, pool contents, free count); after the fork goes, it works. */
static void test_no_blocks(void) {
  fixture f;
  fx_init(&f, 1, 1, 2, 8, 16, RKV_DTYPE_BF16, 6, 128);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 40;
  EXPECT_OK(rkv_blockmgr_seq_create(f.m, 1));
  EXPECT_OK(rkv_qwindow_seq_add(f.qw, 1));
  fx_append(&f, 1, 0, 64, true); /* 4 blocks; the dummy took 2 and gave them back */
  fx_push_queries(&f, 1, 0, 8);
  EXPECT_OK(rkv_blockmgr_seq_fork(f.m, 1, 2));
  rkv_blockmgr_stats s0, s1;
  rkv_blockmgr_get_stats(f.m, &s0);
  EXPECT_EQ_INT(s0.free_blocks, 2);
  rkv_evict_result res;
  char err[256];
  EXPECT_STATUS(
      rkv_evict_layer_ex(&p, f.m, f.pool, f.qw, 2, 1, 0, g_ws, sizeof g_ws, &res, err, sizeof err),
      RKV_ERR_NO_BLOCKS);
  EXPECT(err[0] != '\0');
  rkv_blockmgr_get_stats(f.m, &s1);
  EXPECT_EQ_INT(s1.free_blocks, s0.free_blocks);
  static int32_t pos[4096];
  int32_t len = read_stream(&f, 1, 0, 0, pos);
  EXPECT_EQ_INT(len, 64);
  int bad = 0;
  for (int32_t j = 0; j < len; j++) bad += pos[j] != j;
  EXPECT_EQ_INT(bad, 0);
  EXPECT_OK(rkv_blockmgr_check(f.m));
  EXPECT_OK(rkv_blockmgr_seq_free(f.m, 2));
  static int32_t ids[64][4096];
  for (int32_t j = 0; j < 4096; j++) ids[0][j] = j;
  compress_and_check(&f, &p, 0, ids, false, "after the fork went");
  fx_fini(&f);
}

/* A fork that then grows privately: compaction replaces the shared leading blocks with fresh
 * ones and frees the private tail blocks; blocks_freed is the net change of the free list,
 * and the child still reads its original tokens. */
static void test_fork_mixed(void) {
  fixture f;
  fx_init(&f, 1, 2, 4, 8, 16, RKV_DTYPE_F32, 200, 512);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = RKV_EVICT_H2O, p.budget = 40;
  EXPECT_OK(rkv_blockmgr_seq_create(f.m, 1));
  fx_append(&f, 1, 0, 48, true); /* 3 full blocks per stream, then shared */
  EXPECT_OK(rkv_blockmgr_seq_fork(f.m, 1, 2));
  fx_append(&f, 1, 48, 90, true); /* 138 tokens: 6 more private blocks per stream */
  const rkv_evict_policy pols[2] = {RKV_EVICT_H2O, RKV_EVICT_STREAMING};
  for (int pi = 0; pi < 2; pi++) {
    p.policy = pols[pi];
    rkv_blockmgr_stats s0, s1;
    rkv_blockmgr_get_stats(f.m, &s0);
    rkv_evict_result res;
    char err[256];
    EXPECT_OK(rkv_evict_layer_ex(&p, f.m, f.pool, NULL, 4, 1, 0, g_ws, sizeof g_ws, &res, err,
                                 sizeof err));
    rkv_blockmgr_get_stats(f.m, &s1);
    EXPECT_OK(rkv_blockmgr_check(f.m));
    int64_t delta = (int64_t)s1.free_blocks - (int64_t)s0.free_blocks;
    EXPECT_EQ_INT(res.blocks_freed, delta > 0 ? delta : 0);
    if (pi == 0) EXPECT_EQ_INT(res.blocks_freed, 2 * (9 - 3 - 3)); /* 6 private, 3 fresh */
    static int32_t pos[4096];
    for (uint32_t h = 0; h < 2; h++) {
      int32_t len = read_stream(&f, 2, 0, h, pos);
      EXPECT_EQ_INT(len, 48);
      int bad = 0;
      for (int32_t j = 0; j < len; j++) bad += pos[j] != j;
      EXPECT_EQ_INT(bad, 0);
    }
    fx_append(&f, 1, 200 + 100 * pi, 60, false); /* grow again for the next policy */
  }
  fx_fini(&f);
}

static void test_errors(void) {
  fixture f;
  fx_init(&f, 1, 2, 4, 16, 16, RKV_DTYPE_F32, 100, 256);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 32;
  EXPECT_OK(rkv_blockmgr_seq_create(f.m, 1));
  fx_append(&f, 1, 0, 50, true);
  char err[256];
  rkv_evict_result res;
  size_t need = 0;
  EXPECT_OK(rkv_evict_workspace_size(&p, 2, 4, 16, 50, &need));
  rkv_blockmgr_stats s0, s1;
  rkv_blockmgr_get_stats(f.m, &s0);
  /* No query window registered for the sequence. */
  EXPECT_STATUS(
      rkv_evict_layer_ex(&p, f.m, f.pool, f.qw, 4, 1, 0, g_ws, need, &res, err, sizeof err),
      RKV_ERR_NOT_FOUND);
  EXPECT_OK(rkv_qwindow_seq_add(f.qw, 1));
  fx_push_queries(&f, 1, 0, 3);
  EXPECT_STATUS(
      rkv_evict_layer_ex(&p, f.m, f.pool, f.qw, 4, 1, 0, g_ws, need, &res, err, sizeof err),
      RKV_ERR_STATE);
  EXPECT(strstr(err, "3 of 8") != NULL);
  fx_push_queries(&f, 1, 0, 5);
  EXPECT_STATUS(
      rkv_evict_layer_ex(&p, f.m, f.pool, NULL, 4, 1, 0, g_ws, need, &res, err, sizeof err),
      RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(
      rkv_evict_layer_ex(&p, f.m, f.pool, f.qw, 4, 1, 0, g_ws, need - 1, &res, err, sizeof err),
      RKV_ERR_CAPACITY);
  EXPECT_STATUS(
      rkv_evict_layer_ex(&p, f.m, f.pool, f.qw, 5, 1, 0, g_ws, need, &res, err, sizeof err),
      RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(
      rkv_evict_layer_ex(&p, f.m, f.pool, f.qw, 4, 1, 1, g_ws, need, &res, err, sizeof err),
      RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(
      rkv_evict_layer_ex(&p, f.m, f.pool, f.qw, 4, 5, 0, g_ws, need, &res, err, sizeof err),
      RKV_ERR_NOT_FOUND);
  p.kernel = 4;
  EXPECT_STATUS(rkv_evict_layer(&p, f.m, f.pool, f.qw, 4, 1, 0, g_ws, need, &res),
                RKV_ERR_INVALID_ARG);
  p.kernel = 7;
  rkv_blockmgr_get_stats(f.m, &s1);
  EXPECT_EQ_INT(s1.free_blocks, s0.free_blocks);
  int32_t len = 0;
  EXPECT_OK(rkv_blockmgr_stream_len(f.m, 1, 0, 1, &len));
  EXPECT_EQ_INT(len, 50);
  /* Streaming needs no window; full does nothing. */
  p.policy = RKV_EVICT_FULL;
  EXPECT_OK(rkv_evict_layer(&p, f.m, f.pool, NULL, 4, 1, 0, NULL, 0, &res));
  EXPECT_EQ_INT(res.streams_compressed, 0);
  p.policy = RKV_EVICT_STREAMING;
  EXPECT_OK(rkv_evict_layer(&p, f.m, f.pool, NULL, 4, 1, 0, g_ws, need, &res));
  EXPECT_EQ_INT(res.streams_compressed, 2);
  EXPECT_OK(rkv_blockmgr_check(f.m));
  fx_fini(&f);
}

/* Two kv heads, four query heads (G = 2), d = 2, three tokens; probabilities by hand. */
static void test_h2o_accumulate(void) {
  fixture f;
  fx_init(&f, 1, 2, 4, 2, 2, RKV_DTYPE_F32, 16, 8);
  EXPECT_OK(rkv_blockmgr_seq_create(f.m, 1));
  int64_t slots[2 * 3];
  uint32_t nc = 0;
  EXPECT_OK(rkv_blockmgr_append(f.m, 1, 3, slots, NULL, &nc));
  const float keys[2][3][2] = {{{1, 0}, {0, 1}, {1, 1}}, {{2, 0}, {0, 0}, {-1, 0}}};
  for (int h = 0; h < 2; h++)
    for (int t = 0; t < 3; t++) {
      for (int i = 0; i < 2; i++)
        rkv_dtype_store(f.dt, slot_k(&f, slots[h * 3 + t]), (size_t)i, keys[h][t][i]);
      rkv_kv_pool_scores(f.pool)[slots[h * 3 + t]] = 0.25f;
    }
  const float q[4][2] = {{1, 0}, {0, 2}, {1, 1}, {0, 0}};
  EXPECT_OK(rkv_evict_h2o_accumulate(f.m, f.pool, 1, 0, &q[0][0], 4));
  EXPECT_OK(rkv_evict_h2o_accumulate(f.m, f.pool, 1, 0, &q[0][0], 4));
  for (int h = 0; h < 2; h++) {
    double want[3] = {0.25, 0.25, 0.25};
    for (int g = 0; g < 2; g++) {
      const float *qq = q[h * 2 + g];
      double e[3], sum = 0;
      for (int t = 0; t < 3; t++)
        sum += e[t] = exp((qq[0] * keys[h][t][0] + qq[1] * keys[h][t][1]) / sqrt(2.0));
      for (int t = 0; t < 3; t++) want[t] += 2 * e[t] / sum; /* two steps */
    }
    for (int t = 0; t < 3; t++)
      EXPECT_NEAR(rkv_kv_pool_scores(f.pool)[slots[h * 3 + t]], want[t], 1e-6);
  }
  /* Head 1, query head 3 is all zeros: uniform 1/3 each; sum of all adds = 2 steps * 4 q. */
  double total = 0;
  for (int i = 0; i < 6; i++) total += rkv_kv_pool_scores(f.pool)[slots[i]] - 0.25;
  EXPECT_NEAR(total, 8.0, 1e-5);
  EXPECT_STATUS(rkv_evict_h2o_accumulate(f.m, f.pool, 1, 0, &q[0][0], 3), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_h2o_accumulate(f.m, f.pool, 9, 0, &q[0][0], 4), RKV_ERR_NOT_FOUND);
  fx_fini(&f);
}

/* A protected prefix (rkv_blockmgr_seq_protect) stays in place, and the rest is selected as
 * the dense entry selects over the tokens after it alone, keeping P + B. */
static void test_protected(void) {
  const rkv_evict_policy pols[4] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_STREAMING,
                                    RKV_EVICT_H2O};
  for (int pi = 0; pi < 4; pi++) {
    fixture f;
    const uint32_t kv = 2, d = 32, bs = 16;
    fx_init(&f, 1, kv, 4, d, bs, RKV_DTYPE_F32, 200, 512);
    rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
    p.policy = pols[pi], p.budget = 60, p.buffer = 20;
    const int32_t P = 37, n = 150, B = p.budget, m = n - P;
    EXPECT_OK(rkv_blockmgr_seq_create(f.m, 1));
    EXPECT_OK(rkv_qwindow_seq_add(f.qw, 1));
    fx_append(&f, 1, 0, n, true);
    fx_push_queries(&f, 1, 0, 8);
    EXPECT_OK(rkv_blockmgr_seq_protect(f.m, 1, P));
    int64_t before[2][64];
    for (uint32_t h = 0; h < kv; h++)
      for (int32_t j = 0; j < P; j++) rkv_blockmgr_stream_slot(f.m, 1, 0, h, j, &before[h][j]);
    /* dense reference over positions [P, n) */
    for (uint32_t h = 0; h < kv; h++)
      for (int32_t j = 0; j < m; j++) {
        memcpy(g_dense_k + ((size_t)h * m + j) * d, f.k[h] + (size_t)(P + j) * d,
               d * sizeof(float));
        g_dense_acc[(size_t)h * m + j] = f.acc[h][P + j];
      }
    uint32_t cnt = 0;
    EXPECT_OK(rkv_qwindow_get(f.qw, 1, 0, g_q, &cnt));
    char err[256];
    EXPECT_OK(rkv_evict_select_dense(&p, g_dense_k, g_q, g_dense_acc, kv, f.qh, m, d, g_keep, NULL,
                                     g_ws, sizeof g_ws, err, sizeof err));
    size_t need = 0;
    EXPECT_OK(rkv_evict_workspace_size(&p, kv, f.qh, d, n, &need));
    rkv_evict_result res;
    rkv_status st =
        rkv_evict_layer_ex(&p, f.m, f.pool, f.qw, f.qh, 1, 0, g_ws, need, &res, err, sizeof err);
    if (st != RKV_OK) RKV_TEST_FAIL_("protected %d: %s", pi, err);
    EXPECT_EQ_INT(res.tokens_evicted, (uint64_t)kv * (m - B));
    int bad = 0;
    static int32_t pos[4096];
    for (uint32_t h = 0; h < kv; h++) {
      EXPECT_EQ_INT(read_stream(&f, 1, 0, h, pos), P + B);
      for (int32_t j = 0; j < P; j++) {
        int64_t slot;
        rkv_blockmgr_stream_slot(f.m, 1, 0, h, j, &slot);
        bad += pos[j] != j || slot != before[h][j];
      }
      for (int32_t j = 0; j < B; j++) bad += pos[P + j] != P + g_keep[(size_t)h * B + j];
    }
    if (bad)
      RKV_TEST_FAIL_("%s: %d protected or selected positions differ",
                     rkv_evict_policy_name(p.policy), bad);
    else
      rkv_test_passed_++;
    /* at P + B nothing more happens */
    EXPECT_OK(
        rkv_evict_layer_ex(&p, f.m, f.pool, f.qw, f.qh, 1, 0, g_ws, need, &res, err, sizeof err));
    EXPECT_EQ_INT(res.streams_compressed, 0);
    fx_fini(&f);
  }
}

int main(void) {
  test_h2o_accumulate();
  test_protected();
  test_errors();
  test_no_blocks();
  test_fork();
  test_fork_mixed();
  test_policies();
  return rkv_test_finish();
}
