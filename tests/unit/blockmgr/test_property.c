/* Property test of the block manager against the shadow model in shadow.h: >= 10^6 random
 * operations (create, append of 1..40 tokens with and without slot output, fork, compact with
 * random sorted keep lists including empty and full ones, compact_uniform, restore, free,
 * and interleaved bad-input calls that must fail with the predicted status and change
 * nothing) on a small pool that runs out of blocks often. Every call's result is verified
 * against the model (rows, copy ops, move plans applied to a slot -> token map, ref counts,
 * free count). rkv_blockmgr_check runs after EVERY op for the first 10^5 ops, then with the
 * full model walk (bms_verify_all: every block's ref, every stream's tokens, stats,
 * footprints, a CSR export) every CHECK_EVERY = 1000 ops, which keeps the run well under a
 * minute in RelWithDebInfo. A second, smaller configuration (block size 1, odd shapes)
 * runs too. Ends by freeing everything: no block may leak.
 *
 * usage: blockmgr_test_property [seed] [ops]   (defaults 20260522 and 1000000) */
#include <inttypes.h>

#include "rkv_test.h"

#include <rkv/blockmgr.h>

#include "shadow.h"

enum { CHECK_EVERY = 1000, CHECK_ALL_FIRST = 100000, FULL_WALK_FIRST_EVERY = 64 };

typedef struct run_cfg {
  const char *name;
  uint32_t blocks, block_size, layers, heads, max_seqs, max_append;
  bool prefix_cache; /* config.prefix_cache: the mix adds the prefix-cache ops */
} run_cfg;

/* Runs `ops` random operations on a fresh manager; returns after the first mismatch. */
static void run(const run_cfg *rc, uint64_t seed, uint64_t ops) {
  rkv_blockmgr_config cfg = RKV_BLOCKMGR_CONFIG_INIT;
  cfg.num_blocks = rc->blocks;
  cfg.block_size = rc->block_size;
  cfg.num_layers = rc->layers;
  cfg.num_kv_heads = rc->heads;
  cfg.head_dim = 8;
  cfg.max_seqs = rc->max_seqs;
  cfg.watermark = 0.0f;
  cfg.prefix_cache = rc->prefix_cache;
  rkv_blockmgr *m = NULL;
  EXPECT_OK(rkv_blockmgr_create(&cfg, &m));
  if (!m) return;
  bm_shadow s;
  EXPECT_EQ_INT(bms_init(&s, m, seed), 0);
  uint64_t rng = seed;
  bms_counts c;
  memset(&c, 0, sizeof c);
  uint64_t i;
  int bad = 0;
  for (i = 0; i < ops && !bad; i++) {
    if (bms_random_op(&s, &rng, rc->max_append, &c) != 0) {
      bad = 1;
      break;
    }
    if (i < CHECK_ALL_FIRST) {
      rkv_status st = rkv_blockmgr_check(m);
      if (st != RKV_OK) {
        snprintf(s.err, sizeof s.err, "rkv_blockmgr_check: %s: %s", rkv_status_name(st),
                 rkv_blockmgr_last_error(m));
        bad = 1;
        break;
      }
    }
    uint64_t every = i < CHECK_ALL_FIRST ? FULL_WALK_FIRST_EVERY : CHECK_EVERY;
    if ((i + 1) % every == 0) {
      c.full_checks++;
      if (bms_verify_all(&s) != 0) bad = 1;
    }
  }
  if (bad)
    RKV_TEST_FAIL_("%s: seed %" PRIu64 " op %" PRIu64 ": %s", rc->name, seed, i, s.err);
  else
    rkv_test_passed_++;
  if (!bad) EXPECT_EQ_INT(bms_verify_all(&s), 0);
  uint32_t leaked = 99;
  if (!bad) {
    int r = bms_free_all(&s, &leaked);
    if (r) RKV_TEST_FAIL_("%s: free all: %s", rc->name, s.err);
    EXPECT_EQ_INT(leaked, 0);
  }
  /* The mix must actually exercise every path, or the test could pass vacuously. */
  if (!bad && ops >= 100000) {
    for (int k = 0; k < (rc->prefix_cache ? BMS_OP_KINDS : BMS_OP_STD_KINDS); k++) {
      if (k == BMS_OP_BAD) continue;
      if (c.ok[k] == 0)
        RKV_TEST_FAIL_("%s: no successful %s in %" PRIu64 " ops", rc->name, bms_op_name(k), ops);
    }
    EXPECT(c.no_blocks > ops / 100);
    /* groups must come and go every way the header names, or the reclaim and invalidation
     * checks never ran */
    if (rc->prefix_cache)
      EXPECT(s.pst.hit_groups > 0 && s.pst.invalidated > 0 && s.pst.reclaimed > 0);
    EXPECT(c.kind[BMS_OP_BAD] > ops / 100);
    EXPECT(s.peak_used == s.nblocks || s.peak_used + rc->max_append > s.nblocks);
  }
  printf("%s: %" PRIu64 " ops, %" PRIu64 " NO_BLOCKS, %" PRIu64 " bad-input, %" PRIu64
         " full walks, peak %u/%u blocks;",
         rc->name, c.ops, c.no_blocks, c.kind[BMS_OP_BAD], c.full_checks, s.peak_used, s.nblocks);
  for (int k = 0; k < BMS_OP_KINDS; k++)
    printf(" %s %" PRIu64 "/%" PRIu64, bms_op_name(k), c.ok[k], c.kind[k]);
  printf("\n");
  bms_fini(&s);
  rkv_blockmgr_destroy(m);
}

/* Directed cases the random mix reaches only by chance: CoW exactly once per stream per fork,
 * a shared block kept by reference when compaction leaves it in place, and NO_BLOCKS leaving
 * the state untouched. */
static void directed(void) {
  rkv_blockmgr_config cfg = RKV_BLOCKMGR_CONFIG_INIT;
  cfg.num_blocks = 16;
  cfg.block_size = 4;
  cfg.num_layers = 1;
  cfg.num_kv_heads = 2;
  cfg.max_seqs = 4;
  cfg.watermark = 0.0f;
  rkv_blockmgr *m = NULL;
  EXPECT_OK(rkv_blockmgr_create(&cfg, &m));
  if (!m) return;
  bm_shadow s;
  EXPECT_EQ_INT(bms_init(&s, m, 1), 0);
  rkv_status st;
  EXPECT_EQ_INT(bms_create(&s, 1, &st), 0);
  EXPECT_EQ_INT(bms_append(&s, 1, 6, true, &st), 0); /* 2 blocks per stream, tail partial */
  EXPECT_EQ_INT(bms_fork(&s, 1, 2, &st), 0);
  uint32_t need = 0;
  EXPECT_OK(rkv_blockmgr_blocks_needed(m, 2, 1, &need));
  EXPECT_EQ_INT(need, 2); /* one copy per stream, no new block */
  EXPECT_EQ_INT(bms_append(&s, 2, 1, true, &st), 0);
  EXPECT_EQ_INT(bms_append(&s, 2, 1, true, &st), 0); /* tail private now: no second copy */
  EXPECT_OK(rkv_blockmgr_blocks_needed(m, 1, 1, &need));
  EXPECT_EQ_INT(need, 0); /* parent's tail is private again (child copied) */
  /* Keep positions 0..3 in place (shared block 0 kept by reference) and drop the rest. */
  int32_t keep[4] = {0, 1, 2, 3};
  rkv_keep_list L = {0, 1, keep, 4};
  EXPECT_EQ_INT(bms_compact(&s, 2, &L, 1, &st), 0);
  EXPECT_EQ_INT(st, RKV_OK);
  const int32_t *r1, *r2;
  int32_t n1, n2;
  EXPECT_OK(rkv_blockmgr_stream_blocks(m, 1, 0, 1, &r1, &n1));
  EXPECT_OK(rkv_blockmgr_stream_blocks(m, 2, 0, 1, &r2, &n2));
  EXPECT(n1 == 2 && n2 == 1 && r1[0] == r2[0]);
  /* Exhaust the pool: the failing append changes nothing. */
  EXPECT_EQ_INT(bms_append(&s, 1, 40, true, &st), 0);
  EXPECT_EQ_INT(st, RKV_ERR_NO_BLOCKS);
  EXPECT_EQ_INT(bms_verify_all(&s), 0);
  uint32_t leaked = 1;
  EXPECT_EQ_INT(bms_free_all(&s, &leaked), 0);
  EXPECT_EQ_INT(leaked, 0);
  if (rkv_test_failed_) fprintf(stderr, "directed: %s\n", s.err);
  bms_fini(&s);
  rkv_blockmgr_destroy(m);
}

int main(int argc, char **argv) {
  uint64_t seed = 20260522, ops = 1000000;
  if (argc > 1) seed = strtoull(argv[1], NULL, 0);
  if (argc > 2) ops = strtoull(argv[2], NULL, 0);
  directed();
  const run_cfg main_cfg = {"2x2 heads, block 4, 300 blocks", 300, 4, 2, 2, 24, 40, false};
  run(&main_cfg, seed, ops);
  const run_cfg odd_cfg = {"1x3 heads, block 1, 64 blocks", 64, 1, 1, 3, 6, 12, false};
  run(&odd_cfg, seed + 1, ops / 10);
  const run_cfg big_cfg = {"3x1 heads, block 16, 40 blocks", 40, 16, 3, 1, 8, 40, false};
  run(&big_cfg, seed + 2, ops / 10);
  const run_cfg pc_cfg = {
      "prefix cache, 2x2 heads, block 4, 200 blocks", 200, 4, 2, 2, 16, 24, true};
  run(&pc_cfg, seed + 3, ops / 5);
  return rkv_test_finish();
}
