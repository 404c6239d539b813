/* Prefix caching and protected prefixes (blockmgr.h): chained hashes, hits sharing groups in
 * every stream, cached groups outliving their sequences on the LRU list (counted free,
 * reclaimed oldest first), groups leaving the table when their content changes, protected
 * prefixes that compaction must keep in place, failed calls changing nothing. The last test
 * is a randomized run against a content shadow: every slot's "K/V" is the token written there,
 * and every hit must map exactly the prompt tokens it claims, whatever happened before. */
#include "bm_test_util.h"

#define BS 4
#define LAYERS 2
#define HEADS 2

static rkv_blockmgr *make_cached(uint32_t num_blocks, uint32_t max_seqs) {
  rkv_blockmgr_config c = RKV_BLOCKMGR_CONFIG_INIT;
  c.num_blocks = num_blocks;
  c.block_size = BS;
  c.num_layers = LAYERS;
  c.num_kv_heads = HEADS;
  c.max_seqs = max_seqs;
  c.check_every_op = true;
  c.prefix_cache = true;
  rkv_blockmgr *m = NULL;
  if (rkv_blockmgr_create(&c, &m) != RKV_OK) {
    fprintf(stderr, "make_cached failed\n");
    exit(1);
  }
  return m;
}

static rkv_prefix_stats pstats(const rkv_blockmgr *m) {
  rkv_prefix_stats ps;
  memset(&ps, 0, sizeof ps);
  ps.struct_size = sizeof ps;
  rkv_blockmgr_prefix_stats(m, &ps);
  return ps;
}

/* bmt_digest plus what the prefix cache shows. */
static uint64_t digest(const rkv_blockmgr *m) {
  uint64_t h = bmt_digest(m);
  rkv_prefix_stats ps = pstats(m);
  h = bmt_mix(h, ps.entries);
  h = bmt_mix(h, ps.reclaimable_blocks);
  h = bmt_mix(h, ps.inserted + 7 * ps.invalidated + 13 * ps.reclaimed + 17 * ps.lookups);
  int64_t ids[64];
  uint32_t n = rkv_blockmgr_list_seqs(m, ids, 64);
  for (uint32_t i = 0; i < n && i < 64; i++)
    h = bmt_mix(h, (uint64_t)rkv_blockmgr_seq_protected(m, ids[i]));
  return h;
}

static void prompt(int32_t *t, int n, int seed, int diverge_at) {
  for (int i = 0; i < n; i++) t[i] = i < diverge_at ? 1000 + i : 5000 + seed * 100 + i;
}

static void test_hash(void) {
  int32_t a[12], b[12];
  prompt(a, 12, 0, 12);
  prompt(b, 12, 1, 4); /* same first block */
  uint64_t ha[3], hb[3], hc[3];
  EXPECT_EQ_INT(rkv_prefix_hash_blocks(a, 12, BS, 0, ha, 3), 3);
  EXPECT_EQ_INT(rkv_prefix_hash_blocks(a, 11, BS, 0, NULL, 0), 2); /* full blocks only */
  EXPECT_EQ_INT(rkv_prefix_hash_blocks(b, 12, BS, 0, hb, 3), 3);
  EXPECT(ha[0] == hb[0] && ha[1] != hb[1] && ha[2] != hb[2]);
  /* chained: block 2 equal in content but after a different block 1 hashes differently */
  b[8] = a[8], b[9] = a[9], b[10] = a[10], b[11] = a[11];
  EXPECT_EQ_INT(rkv_prefix_hash_blocks(b, 12, BS, 0, hb, 3), 3);
  EXPECT(ha[2] != hb[2]);
  EXPECT_EQ_INT(rkv_prefix_hash_blocks(a, 12, BS, 9, hc, 3), 3); /* salt */
  EXPECT(hc[0] != ha[0]);
  EXPECT_EQ_INT(rkv_prefix_hash_blocks(a, 12, 2, 0, hc, 3), 6); /* block size is part of it */
  EXPECT(hc[1] != ha[0]);
  uint64_t again[3];
  rkv_prefix_hash_blocks(a, 12, BS, 0, again, 3);
  EXPECT(memcmp(again, ha, sizeof ha) == 0);
}

/* A prompt of n tokens written into seq (fresh): appended, hashed, registered. */
static void serve_prompt(rkv_blockmgr *m, int64_t seq, const int32_t *t, uint32_t n, uint64_t *h) {
  EXPECT_OK(rkv_blockmgr_seq_create(m, seq));
  EXPECT_OK(rkv_blockmgr_append(m, seq, n, NULL, NULL, NULL));
  uint32_t nh = rkv_prefix_hash_blocks(t, n, BS, 0, h, 64);
  uint32_t ins = 99;
  EXPECT_OK(rkv_blockmgr_prefix_insert(m, seq, h, nh, &ins));
  EXPECT_EQ_INT(ins, nh);
}

static void test_hit_share_park(void) {
  rkv_blockmgr *m = make_cached(64, 8);
  int32_t a[22], b[22];
  uint64_t ha[8], hb[8];
  prompt(a, 22, 0, 22);
  prompt(b, 22, 1, 12);          /* shares 3 full blocks with a */
  serve_prompt(m, 1, a, 22, ha); /* 5 full blocks + 2 tokens: 6 blocks per stream */
  EXPECT_EQ_INT(pstats(m).entries, 5);
  EXPECT_EQ_INT(pstats(m).cached_blocks, 5 * LAYERS * HEADS);
  rkv_prefix_hash_blocks(b, 22, BS, 0, hb, 8);
  uint32_t hit = 0, cost = 9;
  EXPECT_OK(rkv_blockmgr_prefix_match(m, hb, 5, &hit));
  EXPECT_EQ_INT(hit, 3);
  EXPECT_OK(rkv_blockmgr_prefix_cost(m, hb, hit, &cost));
  EXPECT_EQ_INT(cost, 0); /* held by seq 1: sharing takes no block */
  uint32_t free0 = bmt_free_blocks(m);
  EXPECT_OK(rkv_blockmgr_seq_create_cached(m, 2, hb, hit));
  EXPECT_EQ_INT(bmt_free_blocks(m), free0);
  for (uint32_t l = 0; l < LAYERS; l++) {
    for (uint32_t h = 0; h < HEADS; h++) {
      int32_t n1, n2;
      const int32_t *r1 = bmt_row(m, 1, l, h, &n1), *r2 = bmt_row(m, 2, l, h, &n2);
      EXPECT_EQ_INT(n2, 3);
      EXPECT_EQ_INT(bmt_len(m, 2, l, h), 3 * BS);
      for (int j = 0; j < 3; j++) {
        EXPECT_EQ_INT(r2[j], r1[j]);
        EXPECT_EQ_INT(bmt_ref(m, r1[j]), 2);
      }
    }
  }
  EXPECT_EQ_INT(pstats(m).hit_groups, 3);
  /* seq 2 continues with its own tokens; nothing it writes lands in a cached block */
  EXPECT_OK(rkv_blockmgr_append(m, 2, 10, NULL, NULL, NULL));

  /* Freeing seq 1 parks its cached blocks no one else holds (groups 3, 4) and frees its
   * partial tail: all count as free, and every group stays findable. */
  uint32_t used_before = LAYERS * HEADS * (6 + 3); /* seq 1: 6 blocks, seq 2: 3 own blocks */
  EXPECT_EQ_INT(64 - bmt_free_blocks(m), used_before);
  EXPECT_OK(rkv_blockmgr_seq_free(m, 1));
  EXPECT_EQ_INT(pstats(m).reclaimable_blocks, 2 * LAYERS * HEADS);
  EXPECT_EQ_INT(64 - bmt_free_blocks(m), LAYERS * HEADS * (3 + 3));
  EXPECT_OK(rkv_blockmgr_prefix_match(m, ha, 5, &hit));
  EXPECT_EQ_INT(hit, 5);
  EXPECT_OK(rkv_blockmgr_prefix_cost(m, ha, 5, &cost));
  EXPECT_EQ_INT(cost, 2 * LAYERS * HEADS);
  /* the same prompt again: all five groups back, the parked ones taken off the LRU list */
  EXPECT_OK(rkv_blockmgr_seq_create_cached(m, 3, ha, 5));
  EXPECT_EQ_INT(pstats(m).reclaimable_blocks, 0);
  EXPECT_EQ_INT(bmt_len(m, 3, 1, 1), 5 * BS);
  EXPECT_OK(rkv_blockmgr_seq_free(m, 3));
  EXPECT_OK(rkv_blockmgr_seq_free(m, 2));
  EXPECT_EQ_INT(bmt_free_blocks(m), 64);
  EXPECT_EQ_INT(pstats(m).entries, 5);
  rkv_blockmgr_prefix_clear(m);
  EXPECT_EQ_INT(pstats(m).entries, 0);
  EXPECT_EQ_INT(pstats(m).reclaimable_blocks, 0);
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
}

static void test_reclaim_lru(void) {
  rkv_blockmgr *m = make_cached(24, 8); /* 6 blocks per stream-set of 4 streams */
  int32_t a[8], b[8];
  uint64_t ha[2], hb[2];
  prompt(a, 8, 0, 0);
  prompt(b, 8, 1, 0);
  serve_prompt(m, 1, a, 8, ha); /* 2 groups */
  EXPECT_OK(rkv_blockmgr_seq_free(m, 1));
  serve_prompt(m, 2, b, 8, hb); /* 2 more, newer */
  EXPECT_OK(rkv_blockmgr_seq_free(m, 2));
  EXPECT_EQ_INT(bmt_free_blocks(m), 24);
  EXPECT_EQ_INT(pstats(m).reclaimable_blocks, 16);
  /* 12 blocks: 8 from the free list, then the oldest prompt (a's) is reclaimed from its
   * end: its second group goes, its first still hits */
  EXPECT_OK(rkv_blockmgr_seq_create(m, 3));
  EXPECT_OK(rkv_blockmgr_append(m, 3, 3 * BS, NULL, NULL, NULL));
  uint32_t hit = 9;
  EXPECT_OK(rkv_blockmgr_prefix_match(m, ha, 2, &hit));
  EXPECT_EQ_INT(hit, 1);
  EXPECT_OK(rkv_blockmgr_prefix_match(m, hb, 2, &hit));
  EXPECT_EQ_INT(hit, 2);
  EXPECT_EQ_INT(pstats(m).reclaimed, 1);
  /* a's first group goes next, b's prompt stays whole */
  EXPECT_OK(rkv_blockmgr_append(m, 3, BS, NULL, NULL, NULL));
  EXPECT_EQ_INT(pstats(m).reclaimed, 2);
  EXPECT_OK(rkv_blockmgr_prefix_match(m, ha, 2, &hit));
  EXPECT_EQ_INT(hit, 0);
  EXPECT_OK(rkv_blockmgr_prefix_match(m, hb, 2, &hit));
  EXPECT_EQ_INT(hit, 2);
  /* b's next: its second group first */
  EXPECT_OK(rkv_blockmgr_append(m, 3, BS, NULL, NULL, NULL));
  EXPECT_EQ_INT(pstats(m).reclaimed, 3);
  EXPECT_OK(rkv_blockmgr_prefix_match(m, hb, 2, &hit));
  EXPECT_EQ_INT(hit, 1);
  /* out of blocks is still a normal status and changes nothing */
  uint64_t d = digest(m);
  EXPECT_STATUS(rkv_blockmgr_append(m, 3, 5 * BS, NULL, NULL, NULL), RKV_ERR_NO_BLOCKS);
  EXPECT(digest(m) == d);
  rkv_blockmgr_destroy(m);
}

/* Keep lists for every stream: 0..3 and 5..14 of a 16-token prompt (block 0 in place, block
 * 1 rewritten, blocks 2 and 3 partly). */
static uint32_t keep_but_4_15(int32_t *pos, rkv_keep_list *lists) {
  uint32_t k = 0;
  for (int i = 0; i < 16; i++)
    if (i != 4 && i != 15) pos[k++] = i;
  for (uint32_t s = 0; s < LAYERS * HEADS; s++)
    lists[s] = (rkv_keep_list){s / HEADS, s % HEADS, pos, k};
  return k;
}

/* Compaction copies the cached blocks it would change (when the pool holds every copy):
 * the originals park with their groups, and the next request with the prompt hits them. */
static void test_compaction_keeps_cache(void) {
  enum { S = LAYERS * HEADS };
  rkv_blockmgr *m = make_cached(64, 8);
  int32_t a[16], pos[16];
  uint64_t ha[4];
  prompt(a, 16, 0, 16);
  serve_prompt(m, 1, a, 16, ha);
  int32_t before[S][4], n = 0;
  for (uint32_t s = 0; s < S; s++)
    memcpy(before[s], bmt_row(m, 1, s / HEADS, s % HEADS, &n), sizeof before[s]);
  rkv_keep_list lists[S];
  keep_but_4_15(pos, lists);
  rkv_slot_move mv[64];
  uint32_t nm = 0;
  EXPECT_OK(rkv_blockmgr_compact(m, 1, lists, S, mv, 64, &nm));
  /* every kept token moves: all four blocks are copied, block 0 too though it stays in place
   * (a uniform cut could not know it does, and both leave the same blocks parked) */
  EXPECT_EQ_INT(nm, S * 14);
  for (uint32_t i = 0; i < nm; i++)
    for (uint32_t s = 0; s < S; s++)
      for (int j = 0; j < 4; j++) EXPECT(mv[i].dst / BS != before[s][j]); /* originals intact */
  for (uint32_t s = 0; s < S; s++) {
    const int32_t *row = bmt_row(m, 1, s / HEADS, s % HEADS, &n);
    EXPECT_EQ_INT(n, 4);
    for (int j = 0; j < 4; j++) EXPECT(row[j] != before[s][j]);
  }
  uint32_t hit = 9;
  EXPECT_OK(rkv_blockmgr_prefix_match(m, ha, 4, &hit));
  EXPECT_EQ_INT(hit, 4);
  EXPECT_EQ_INT(pstats(m).invalidated, 0);
  EXPECT_EQ_INT(pstats(m).reclaimable_blocks, 4 * S);
  EXPECT_EQ_INT(64 - bmt_free_blocks(m), 4 * S); /* the parked originals count free */
  /* a new request with the prompt maps the original blocks */
  EXPECT_OK(rkv_blockmgr_seq_create_cached(m, 2, ha, 4));
  for (uint32_t s = 0; s < S; s++) {
    const int32_t *row = bmt_row(m, 2, s / HEADS, s % HEADS, &n);
    EXPECT_EQ_INT(n, 4);
    for (int j = 0; j < 4; j++) EXPECT_EQ_INT(row[j], before[s][j]);
  }
  EXPECT_EQ_INT(pstats(m).reclaimable_blocks, 0);

  /* A shared cached block is copied, not edited, as before: the original stays cached. */
  EXPECT_OK(rkv_blockmgr_append(m, 2, 3, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 2, 4));
  int32_t p2[3] = {1, 2, 5};
  for (uint32_t s = 0; s < S; s++) lists[s] = (rkv_keep_list){s / HEADS, s % HEADS, p2, 3};
  EXPECT_OK(rkv_blockmgr_compact(m, 2, lists, S, mv, 64, &nm));
  EXPECT_OK(rkv_blockmgr_prefix_match(m, ha, 4, &hit));
  EXPECT_EQ_INT(hit, 4);
  int32_t n2, n4;
  EXPECT(bmt_row(m, 2, 0, 0, &n2)[0] != before[0][0]);
  EXPECT(bmt_row(m, 4, 0, 0, &n4)[0] == before[0][0]);
  EXPECT_OK(rkv_blockmgr_seq_free(m, 4));

  /* A uniform cut (the device may rewrite every kept block) copies the cached ones too. */
  EXPECT_OK(rkv_blockmgr_seq_free(m, 2));
  EXPECT_OK(rkv_blockmgr_seq_create_cached(m, 3, ha, 4));
  EXPECT_OK(rkv_blockmgr_append(m, 3, 2, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_seq_free(m, 1)); /* seq 3 alone holds the groups */
  rkv_compact_map maps[S];
  int32_t old[64];
  uint32_t nmaps, nold;
  EXPECT_OK(rkv_blockmgr_compact_uniform(m, 3, -1, 6, maps, S, &nmaps, old, 64, &nold));
  for (uint32_t s = 0; s < S; s++) {
    const int32_t *row = bmt_row(m, 3, s / HEADS, s % HEADS, &n);
    EXPECT_EQ_INT(n, 2);
    EXPECT(row[0] != before[s][0] && row[1] != before[s][1]);
  }
  EXPECT_OK(rkv_blockmgr_prefix_match(m, ha, 4, &hit));
  EXPECT_EQ_INT(hit, 4);
  EXPECT_EQ_INT(pstats(m).invalidated, 0);
  EXPECT_EQ_INT(pstats(m).reclaimable_blocks, 4 * S);
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
}

/* Without room on the free list for every copy, compaction rewrites cached blocks in place and
 * their groups leave the table (parked groups are not reclaimed to keep others). */
static void test_invalidation(void) {
  enum { S = LAYERS * HEADS };
  rkv_blockmgr *m = make_cached(4 * S + 2 * S, 8); /* the prompt, then room for 2 of 3 copies */
  int32_t a[16], pos[16];
  uint64_t ha[4];
  prompt(a, 16, 0, 16);
  serve_prompt(m, 1, a, 16, ha);
  rkv_keep_list lists[S];
  keep_but_4_15(pos, lists);
  rkv_slot_move mv[64];
  uint32_t nm = 0;
  uint64_t d = digest(m);
  EXPECT_STATUS(rkv_blockmgr_compact(m, 1, lists, S, mv, 20, &nm), RKV_ERR_CAPACITY);
  EXPECT_EQ_INT(nm, S * 10); /* positions 4..13 take tokens 5..14 */
  EXPECT(digest(m) == d);
  EXPECT_OK(rkv_blockmgr_compact(m, 1, lists, S, mv, 64, &nm));
  uint32_t hit = 9;
  EXPECT_OK(rkv_blockmgr_prefix_match(m, ha, 4, &hit));
  EXPECT_EQ_INT(hit, 1);
  EXPECT_EQ_INT(pstats(m).entries, 1);
  EXPECT_EQ_INT(pstats(m).invalidated, 3);

  /* a uniform cut without room for the copy of block 0 invalidates it */
  EXPECT_OK(rkv_blockmgr_seq_create(m, 2));
  EXPECT_OK(rkv_blockmgr_append(m, 2, 2 * BS, NULL, NULL, NULL)); /* the free list: empty */
  rkv_compact_map maps[S];
  int32_t old[64];
  uint32_t nmaps, nold;
  EXPECT_OK(rkv_blockmgr_compact_uniform(m, 1, -1, 3, maps, S, &nmaps, old, 64, &nold));
  EXPECT_OK(rkv_blockmgr_prefix_match(m, ha, 4, &hit));
  EXPECT_EQ_INT(hit, 0);
  EXPECT_EQ_INT(pstats(m).invalidated, 4);
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
}

/* Sequence 1 of two managers alike compacted to positions 0..9 of every stream: one call
 * per layer on per_layer (after the caller's compact_prepare), one uniform cut on one_cut. */
static void compact_both_ways(rkv_blockmgr *per_layer, rkv_blockmgr *one_cut) {
  enum { S = LAYERS * HEADS };
  int32_t pos[10];
  for (int i = 0; i < 10; i++) pos[i] = i;
  rkv_slot_move mv[64];
  uint32_t nm = 0;
  for (uint32_t l = 0; l < LAYERS; l++) {
    rkv_keep_list lists[HEADS];
    for (uint32_t h = 0; h < HEADS; h++) lists[h] = (rkv_keep_list){l, h, pos, 10};
    EXPECT_OK(rkv_blockmgr_compact(per_layer, 1, lists, HEADS, mv, 64, &nm));
  }
  rkv_compact_map maps[S];
  int32_t old[64];
  uint32_t nmaps, nold;
  EXPECT_OK(rkv_blockmgr_compact_uniform(one_cut, 1, -1, 10, maps, S, &nmaps, old, 64, &nold));
}

/* compact_prepare: a compaction in one call per layer leaves the cache as one uniform cut
 * does, with room on the free list for the copies and without. */
static void prepare_case(uint32_t num_blocks, uint32_t filler_tokens, bool room) {
  enum { S = LAYERS * HEADS };
  rkv_blockmgr *m[2] = {make_cached(num_blocks, 8), make_cached(num_blocks, 8)};
  int32_t a[16];
  uint64_t ha[4];
  prompt(a, 16, 0, 16);
  for (int i = 0; i < 2; i++) {
    serve_prompt(m[i], 1, a, 16, ha);
    if (filler_tokens) {
      EXPECT_OK(rkv_blockmgr_seq_create(m[i], 2));
      EXPECT_OK(rkv_blockmgr_append(m[i], 2, filler_tokens, NULL, NULL, NULL));
    }
  }
  /* keep 10 tokens: positions 0..9 (blocks 0 and 1 in place, block 2 partly) */
  uint32_t copies = 99;
  EXPECT_OK(rkv_blockmgr_compact_prepare(m[0], 1, -1, 10, &copies));
  EXPECT_EQ_INT(copies, room ? 3 * S : 0);
  EXPECT_EQ_INT(pstats(m[0]).entries, room ? 4 : 1); /* without room: groups 0..2 went now */
  compact_both_ways(m[0], m[1]);
  rkv_prefix_stats p0 = pstats(m[0]), p1 = pstats(m[1]);
  EXPECT_EQ_INT(p0.entries, p1.entries);
  EXPECT_EQ_INT(p0.reclaimable_blocks, p1.reclaimable_blocks);
  EXPECT_EQ_INT(p0.invalidated, p1.invalidated);
  EXPECT_EQ_INT(p0.invalidated, room ? 0 : 3);
  EXPECT_EQ_INT(bmt_free_blocks(m[0]), bmt_free_blocks(m[1]));
  uint32_t hit0 = 9, hit1 = 9;
  EXPECT_OK(rkv_blockmgr_prefix_match(m[0], ha, 4, &hit0));
  EXPECT_OK(rkv_blockmgr_prefix_match(m[1], ha, 4, &hit1));
  EXPECT_EQ_INT(hit0, hit1);
  EXPECT_EQ_INT(hit0, room ? 4 : 0);
  for (int i = 0; i < 2; i++) {
    EXPECT_OK(rkv_blockmgr_check(m[i]));
    rkv_blockmgr_destroy(m[i]);
  }
}

static void test_compact_prepare(void) {
  enum { S = LAYERS * HEADS };
  prepare_case(64, 0, true);
  prepare_case(4 * S + 3 * S, 0, true);       /* exactly room for the three copies */
  prepare_case(4 * S + 3 * S, 2 * BS, false); /* the filler took 2 blocks per stream */
  rkv_blockmgr *m = make_cached(64, 8);
  int32_t a[16];
  uint64_t ha[4];
  prompt(a, 16, 0, 16);
  serve_prompt(m, 1, a, 16, ha);
  uint32_t copies = 99;
  uint64_t d = digest(m);
  EXPECT_STATUS(rkv_blockmgr_compact_prepare(m, 1, -1, 8, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_compact_prepare(m, 1, LAYERS, 8, &copies), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_compact_prepare(m, 1, -1, -1, &copies), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_compact_prepare(m, 9, -1, 8, &copies), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_compact_prepare(NULL, 1, -1, 8, &copies), RKV_ERR_INVALID_ARG);
  EXPECT_OK(rkv_blockmgr_compact_prepare(m, 1, 1, 16, &copies)); /* nothing longer than keep */
  EXPECT_EQ_INT(copies, 0);
  EXPECT_OK(rkv_blockmgr_compact_prepare(m, 1, 1, 8, &copies)); /* one layer: its streams */
  EXPECT_EQ_INT(copies, 2 * HEADS);
  EXPECT(digest(m) == d);
  EXPECT_OK(rkv_blockmgr_seq_protect(m, 1, 4)); /* block 0 is protected: never copied */
  EXPECT_OK(rkv_blockmgr_compact_prepare(m, 1, -1, 8, &copies));
  EXPECT_EQ_INT(copies, S);
  rkv_blockmgr_destroy(m);
}

/* Copies with room only when older parked groups are reclaimed: the compaction (one call per
 * layer after compact_prepare, or one uniform cut) reclaims them oldest first and keeps the
 * prompt it compacts cached; with less room than that in the whole pool it rewrites in place
 * and the older groups stay. */
static void reclaim_case(uint32_t filler_tokens) {
  enum { S = LAYERS * HEADS };
  const bool room = filler_tokens == 0;
  rkv_blockmgr *m[2] = {make_cached(7 * S, 8), make_cached(7 * S, 8)};
  int32_t a[16], b[8];
  uint64_t ha[4], hb[2];
  prompt(a, 16, 0, 16);
  prompt(b, 8, 1, 0);
  for (int i = 0; i < 2; i++) {
    serve_prompt(m[i], 3, b, 8, hb); /* b's 2 groups, parked first */
    EXPECT_OK(rkv_blockmgr_seq_free(m[i], 3));
    serve_prompt(m[i], 1, a, 16, ha); /* a's 4 groups held: S blocks left on the free list */
    if (filler_tokens) {
      EXPECT_OK(rkv_blockmgr_seq_create(m[i], 2));
      EXPECT_OK(rkv_blockmgr_append(m[i], 2, filler_tokens, NULL, NULL, NULL));
    }
  }
  uint32_t copies = 99;
  EXPECT_OK(rkv_blockmgr_compact_prepare(m[0], 1, -1, 10, &copies));
  EXPECT_EQ_INT(copies, room ? 3 * S : 0); /* blocks 0..2 of every stream */
  compact_both_ways(m[0], m[1]);
  for (int i = 0; i < 2; i++) {
    uint32_t hit_a = 9, hit_b = 9;
    EXPECT_OK(rkv_blockmgr_prefix_match(m[i], ha, 4, &hit_a));
    EXPECT_OK(rkv_blockmgr_prefix_match(m[i], hb, 2, &hit_b));
    EXPECT_EQ_INT(hit_a, room ? 4 : 0);
    EXPECT_EQ_INT(hit_b, room ? 0 : 2);
    EXPECT_EQ_INT(pstats(m[i]).reclaimed, room ? 2 : 0);
    EXPECT_EQ_INT(pstats(m[i]).invalidated, room ? 0 : 3);
    EXPECT_EQ_INT(bmt_free_blocks(m[i]), 7 * S - 3 * S - filler_tokens / BS * S);
    EXPECT_OK(rkv_blockmgr_check(m[i]));
  }
  EXPECT_EQ_INT(pstats(m[0]).reclaimable_blocks, pstats(m[1]).reclaimable_blocks);
  for (int i = 0; i < 2; i++) rkv_blockmgr_destroy(m[i]);
}

/* A reclaim that drops a group the sequence half holds (one layer compacted before, its
 * originals parked) leaves the held blocks uncached: they are rewritten in place. */
static void test_reclaim_half_held(void) {
  enum { S = LAYERS * HEADS };
  rkv_blockmgr *m = make_cached(4 * S + 3 * HEADS, 8);
  int32_t a[16];
  uint64_t ha[4];
  prompt(a, 16, 0, 16);
  serve_prompt(m, 1, a, 16, ha);
  rkv_compact_map maps[S];
  int32_t old[64];
  uint32_t nmaps, nold;
  /* layer 0: its 3 leading blocks per head copied (the free list held all 6), the originals
   * and its tails (group 3's) park: the free list is empty, 8 blocks are parked */
  EXPECT_OK(rkv_blockmgr_compact_uniform(m, 1, 0, 10, maps, S, &nmaps, old, 64, &nold));
  EXPECT_EQ_INT(pstats(m).entries, 4);
  EXPECT_EQ_INT(pstats(m).reclaimable_blocks, 8);
  /* 4 blocks: groups 3 and 2 (the prompt's end goes first) are reclaimed; layer 1's blocks
   * of them stay with sequence 1, uncached */
  EXPECT_OK(rkv_blockmgr_seq_create(m, 2));
  EXPECT_OK(rkv_blockmgr_append(m, 2, BS, NULL, NULL, NULL));
  EXPECT_EQ_INT(pstats(m).reclaimed, 2);
  /* layer 1: its blocks of groups 0 and 1 (4 copies) fit only by reclaiming parked blocks,
   * which are those groups' own: each reclaim uncaches blocks to copy, so none is copied */
  uint32_t copies = 99;
  EXPECT_OK(rkv_blockmgr_compact_prepare(m, 1, 1, 10, &copies));
  EXPECT_EQ_INT(copies, 0);
  EXPECT_EQ_INT(pstats(m).reclaimed, 4);
  EXPECT_EQ_INT(pstats(m).invalidated, 0);
  uint32_t hit = 9;
  EXPECT_OK(rkv_blockmgr_prefix_match(m, ha, 4, &hit));
  EXPECT_EQ_INT(hit, 0);
  int32_t n = 0;
  const int32_t third = bmt_row(m, 1, 1, 0, &n)[2];
  EXPECT_OK(rkv_blockmgr_compact_uniform(m, 1, 1, 10, maps, S, &nmaps, old, 64, &nold));
  EXPECT_EQ_INT(bmt_row(m, 1, 1, 0, &n)[2], third); /* in place: no copy was made */
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
}

static void test_copies_reclaim(void) {
  reclaim_case(0);
  reclaim_case(BS); /* the filler took a block per stream: 2 S in the pool, 3 S needed */
  test_reclaim_half_held();
}

static void test_protect(void) {
  rkv_blockmgr *m = make_cached(64, 8);
  int32_t a[16];
  uint64_t ha[4];
  prompt(a, 16, 0, 16);
  serve_prompt(m, 1, a, 16, ha);
  EXPECT_OK(rkv_blockmgr_append(m, 1, 6, NULL, NULL, NULL));
  uint64_t d = digest(m);
  EXPECT_STATUS(rkv_blockmgr_seq_protect(m, 1, 23), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_seq_protect(m, 1, -1), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_seq_protect(m, 7, 1), RKV_ERR_NOT_FOUND);
  EXPECT(digest(m) == d);
  EXPECT_OK(rkv_blockmgr_seq_protect(m, 1, 8));
  EXPECT_EQ_INT(rkv_blockmgr_seq_protected(m, 1), 8);

  /* a list that moves or drops a protected position is refused, nothing changes */
  int32_t bad[10] = {0, 1, 2, 3, 4, 5, 6, 9, 10, 11}; /* drops 7 */
  rkv_keep_list lists[LAYERS * HEADS];
  for (uint32_t s = 0; s < LAYERS * HEADS; s++)
    lists[s] = (rkv_keep_list){s / HEADS, s % HEADS, bad, 10};
  rkv_slot_move mv[64];
  uint32_t nm;
  d = digest(m);
  EXPECT_STATUS(rkv_blockmgr_compact(m, 1, lists, LAYERS * HEADS, mv, 64, &nm),
                RKV_ERR_INVALID_ARG);
  rkv_compact_map maps[8];
  int32_t old[64];
  uint32_t nmaps, nold;
  EXPECT_STATUS(rkv_blockmgr_compact_uniform(m, 1, -1, 7, maps, 8, &nmaps, old, 64, &nold),
                RKV_ERR_INVALID_ARG);
  EXPECT(digest(m) == d);

  /* keeping the prefix in place and selecting after it: the protected groups stay cached,
   * and so do the two after them (block 2 is copied, block 3 parks as a tail) */
  int32_t good[10] = {0, 1, 2, 3, 4, 5, 6, 7, 12, 20};
  for (uint32_t s = 0; s < LAYERS * HEADS; s++)
    lists[s] = (rkv_keep_list){s / HEADS, s % HEADS, good, 10};
  EXPECT_OK(rkv_blockmgr_compact(m, 1, lists, LAYERS * HEADS, mv, 64, &nm));
  uint32_t hit = 0;
  EXPECT_OK(rkv_blockmgr_prefix_match(m, ha, 4, &hit));
  EXPECT_EQ_INT(hit, 4);
  EXPECT_EQ_INT(pstats(m).reclaimable_blocks, 2 * LAYERS * HEADS);
  /* a fork inherits the protection, and a uniform compaction copies nothing protected */
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 1, 2));
  EXPECT_EQ_INT(rkv_blockmgr_seq_protected(m, 2), 8);
  uint32_t fresh = 99;
  EXPECT_OK(rkv_blockmgr_compact_fresh_bound(m, 2, -1, 8, &fresh));
  EXPECT_EQ_INT(fresh, 0);
  EXPECT_OK(rkv_blockmgr_compact_fresh_bound(m, 2, -1, 9, &fresh));
  EXPECT_EQ_INT(fresh, LAYERS * HEADS); /* block 2 holds position 8: shared, copied */
  EXPECT_OK(rkv_blockmgr_compact_uniform(m, 1, -1, 9, maps, 8, &nmaps, old, 64, &nold));
  EXPECT_OK(rkv_blockmgr_prefix_match(m, ha, 4, &hit));
  EXPECT_EQ_INT(hit, 4); /* the protected groups, and the two parked ones */
  EXPECT_EQ_INT(pstats(m).invalidated, 0);
  int32_t n1, n2;
  EXPECT(bmt_row(m, 1, 0, 0, &n1)[1] == bmt_row(m, 2, 0, 0, &n2)[1]); /* still shared */
  EXPECT(bmt_row(m, 1, 0, 0, &n1)[2] != bmt_row(m, 2, 0, 0, &n2)[2]); /* copied */
  rkv_blockmgr_destroy(m);
}

static void test_errors(void) {
  rkv_blockmgr *plain = bmt_make(16, BS, LAYERS, HEADS, 4);
  uint64_t h[2] = {1, 2};
  uint32_t hit = 9;
  EXPECT_OK(rkv_blockmgr_prefix_match(plain, h, 2, &hit));
  EXPECT_EQ_INT(hit, 0);
  EXPECT_OK(rkv_blockmgr_seq_create(plain, 1));
  EXPECT_STATUS(rkv_blockmgr_prefix_insert(plain, 1, h, 2, NULL), RKV_ERR_STATE);
  EXPECT_STATUS(rkv_blockmgr_seq_create_cached(plain, 2, h, 1), RKV_ERR_NOT_FOUND);
  EXPECT_OK(rkv_blockmgr_seq_create_cached(plain, 2, h, 0)); /* a plain create */
  rkv_prefix_stats ps = pstats(plain);
  EXPECT_EQ_INT(ps.entries, 0);
  ps.struct_size = 3;
  EXPECT_STATUS(rkv_blockmgr_prefix_stats(plain, &ps), RKV_ERR_INVALID_ARG);
  rkv_blockmgr_destroy(plain);

  rkv_blockmgr *m = make_cached(16, 2);
  int32_t a[8];
  uint64_t ha[2];
  prompt(a, 8, 0, 8);
  serve_prompt(m, 1, a, 8, ha);
  uint64_t d = digest(m);
  uint64_t wrong[2] = {ha[0], ha[1] + 1};
  EXPECT_STATUS(rkv_blockmgr_seq_create_cached(m, 2, wrong, 2), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_seq_create_cached(m, 1, ha, 2), RKV_ERR_EXISTS);
  EXPECT_STATUS(rkv_blockmgr_seq_create_cached(m, 2, NULL, 2), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_prefix_match(m, ha, 2, NULL), RKV_ERR_INVALID_ARG);
  EXPECT(digest(m) == d);
  EXPECT_OK(rkv_blockmgr_seq_create_cached(m, 2, ha, 2));
  EXPECT_STATUS(rkv_blockmgr_seq_create_cached(m, 3, ha, 2), RKV_ERR_CAPACITY); /* max_seqs */
  /* registering twice, or groups not yet full, inserts nothing */
  uint32_t ins = 9;
  EXPECT_OK(rkv_blockmgr_prefix_insert(m, 2, ha, 2, &ins));
  EXPECT_EQ_INT(ins, 0);
  uint64_t more[3] = {ha[0], ha[1], 77};
  EXPECT_OK(rkv_blockmgr_prefix_insert(m, 2, more, 3, &ins));
  EXPECT_EQ_INT(ins, 0);
  rkv_blockmgr_destroy(m);
}

/* ---- randomized run against a content shadow ------------------------------------------- */

static uint64_t rng_state = 88172645463325252ull;
static uint32_t rnd(uint32_t n) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state % n);
}

#define R_BLOCKS 160
#define R_SEQS 6
#define R_STREAMS (LAYERS * HEADS)
#define R_MAXTOK 40

typedef struct {
  bool live;
  int32_t tok[R_MAXTOK + 64]; /* position -> token, per stream equal until a compaction */
  int32_t kept[R_STREAMS][R_MAXTOK + 64]; /* stream position -> token it holds */
  int32_t len;                            /* tokens appended (logical) */
} shadow_seq;

static int32_t content[R_BLOCKS * BS]; /* slot -> token written there (-1 never) */

/* Writes the stream tokens appended [from, to) into their slots. */
static void write_tokens(rkv_blockmgr *m, int64_t id, shadow_seq *q, int32_t n) {
  rkv_block_copy cp[R_STREAMS];
  uint32_t nc = 0;
  int64_t slots[R_STREAMS * 64];
  if (rkv_blockmgr_append(m, id, (uint32_t)n, slots, cp, &nc) != RKV_OK) return;
  for (uint32_t c = 0; c < nc; c++)
    memcpy(content + (size_t)cp[c].dst * BS, content + (size_t)cp[c].src * BS,
           BS * sizeof(int32_t));
  for (uint32_t s = 0; s < R_STREAMS; s++) {
    int32_t len = bmt_len(m, id, s / HEADS, s % HEADS) - n;
    for (int32_t t = 0; t < n; t++) {
      int32_t tk = 7000 + (int32_t)id * 100 + q->len + t;
      content[slots[s * n + t]] = tk;
      q->kept[s][len + t] = tk;
    }
  }
  q->len += n;
}

/* Every stream's slots hold exactly the tokens the shadow says. */
static bool streams_match(rkv_blockmgr *m, int64_t id, const shadow_seq *q) {
  for (uint32_t s = 0; s < R_STREAMS; s++) {
    int32_t n, len = bmt_len(m, id, s / HEADS, s % HEADS);
    const int32_t *row = bmt_row(m, id, s / HEADS, s % HEADS, &n);
    for (int32_t p = 0; p < len; p++)
      if (content[(size_t)row[p / BS] * BS + p % BS] != q->kept[s][p]) return false;
  }
  return true;
}

static void test_random_content(void) {
  rkv_blockmgr *m = make_cached(R_BLOCKS, R_SEQS);
  shadow_seq sh[R_SEQS];
  memset(sh, 0, sizeof sh);
  for (size_t i = 0; i < sizeof content / sizeof content[0]; i++) content[i] = -1;
  int32_t templ[3][R_MAXTOK];
  for (int t = 0; t < 3; t++) prompt(templ[t], R_MAXTOK, t, t == 2 ? 0 : 12);
  uint64_t hits = 0, mismatches = 0, ops = 0;
  for (int it = 0; it < 4000; it++) {
    int id = (int)rnd(R_SEQS);
    shadow_seq *q = &sh[id];
    uint32_t op = rnd(10);
    ops++;
    if (!q->live) {
      /* a new request: a template prompt cut at a random length, cached part shared */
      const int32_t *tp = templ[rnd(3)];
      int32_t n = 4 + (int32_t)rnd(R_MAXTOK - 4);
      uint64_t h[R_MAXTOK / BS];
      uint32_t nh = rkv_prefix_hash_blocks(tp, (uint32_t)n, BS, 0, h, R_MAXTOK / BS), hit = 0;
      rkv_blockmgr_prefix_match(m, h, nh, &hit);
      if (hit * BS == (uint32_t)n) hit--; /* compute at least one token */
      if (rkv_blockmgr_seq_create_cached(m, id, h, hit) != RKV_OK) continue;
      q->live = true;
      q->len = (int32_t)hit * BS;
      hits += hit;
      for (uint32_t s = 0; s < R_STREAMS; s++)
        for (int32_t p = 0; p < q->len; p++) q->kept[s][p] = tp[p];
      if (!streams_match(m, id, q)) mismatches++; /* a hit mapped stale K/V */
      /* prefill the rest with the template's tokens, then register the full blocks */
      rkv_block_copy cp[R_STREAMS];
      uint32_t nc = 0;
      int64_t slots[R_STREAMS * R_MAXTOK];
      int32_t rest = n - q->len;
      if (rkv_blockmgr_append(m, id, (uint32_t)rest, slots, cp, &nc) != RKV_OK) {
        rkv_blockmgr_seq_free(m, id);
        q->live = false;
        continue;
      }
      for (uint32_t c = 0; c < nc; c++)
        memcpy(content + (size_t)cp[c].dst * BS, content + (size_t)cp[c].src * BS,
               BS * sizeof(int32_t));
      for (uint32_t s = 0; s < R_STREAMS; s++)
        for (int32_t t = 0; t < rest; t++) {
          content[slots[s * rest + t]] = tp[q->len + t];
          q->kept[s][q->len + t] = tp[q->len + t];
        }
      q->len = n;
      EXPECT_OK(rkv_blockmgr_prefix_insert(m, id, h, nh, NULL));
      if (rnd(2)) rkv_blockmgr_seq_protect(m, id, (int32_t)rnd((uint32_t)n + 1));
    } else if (op < 4) {
      if (q->len + 6 < R_MAXTOK + 60) write_tokens(m, id, q, 1 + (int32_t)rnd(5));
    } else if (op < 6) {
      /* compact: keep the protected prefix and a random subset of the rest, per stream */
      rkv_keep_list lists[R_STREAMS];
      int32_t pos[R_STREAMS][R_MAXTOK + 64];
      int32_t prot = rkv_blockmgr_seq_protected(m, id);
      for (uint32_t s = 0; s < R_STREAMS; s++) {
        int32_t len = bmt_len(m, id, s / HEADS, s % HEADS), k = 0;
        for (int32_t p = 0; p < len; p++)
          if (p < prot || rnd(3)) pos[s][k++] = p;
        lists[s] = (rkv_keep_list){s / HEADS, s % HEADS, pos[s], (uint32_t)k};
      }
      rkv_slot_move mv[R_STREAMS * (R_MAXTOK + 64)];
      uint32_t nm = 0;
      if (rkv_blockmgr_compact(m, id, lists, R_STREAMS, mv, sizeof mv / sizeof mv[0], &nm) ==
          RKV_OK) {
        for (uint32_t i = 0; i < nm; i++) content[mv[i].dst] = content[mv[i].src];
        for (uint32_t s = 0; s < R_STREAMS; s++)
          for (uint32_t i = 0; i < lists[s].n; i++) q->kept[s][i] = q->kept[s][pos[s][i]];
      }
    } else if (op < 7) {
      int child = (id + 1 + (int)rnd(R_SEQS - 1)) % R_SEQS;
      if (!sh[child].live && rkv_blockmgr_seq_fork(m, id, child) == RKV_OK) {
        sh[child] = *q;
      }
    } else {
      EXPECT_OK(rkv_blockmgr_seq_free(m, id));
      q->live = false;
    }
    for (int i = 0; i < R_SEQS; i++)
      if (sh[i].live && !streams_match(m, i, &sh[i])) mismatches++;
  }
  EXPECT_EQ_INT(mismatches, 0);
  EXPECT(hits > 100); /* the cache was used */
  rkv_prefix_stats ps = pstats(m);
  EXPECT(ps.invalidated > 0 && ps.reclaimed > 0 && ps.inserted > 0);
  fprintf(stderr,
          "random: %llu ops, %llu groups hit, %llu inserted, %llu invalidated, %llu "
          "reclaimed\n",
          (unsigned long long)ops, (unsigned long long)hits, (unsigned long long)ps.inserted,
          (unsigned long long)ps.invalidated, (unsigned long long)ps.reclaimed);
  rkv_blockmgr_destroy(m);
}

/* The fresh-block bound when later hits may share a sequence's blocks before its compaction
 * (a scheduler's copy rule): cached blocks count, and so do the first `registering` blocks a
 * prefix_insert will register; a hit after the bound never makes the compaction take more. */
static void test_copy_bound(void) {
  rkv_blockmgr *m = make_cached(64, 8);
  int32_t a[22], b[22];
  uint64_t ha[8], hb[8];
  prompt(a, 22, 0, 22);
  prompt(b, 22, 1, 12);
  serve_prompt(m, 1, a, 22, ha); /* 5 cached blocks of 6 per stream */
  uint32_t fresh = 99, copy = 99;
  EXPECT_OK(rkv_blockmgr_compact_fresh_bound_after(m, 1, -1, 16, 0, &fresh));
  EXPECT_OK(rkv_blockmgr_compact_copy_bound(m, 1, -1, 16, 0, 0, &copy));
  EXPECT_EQ_INT(fresh, 0);                 /* nothing shared yet */
  EXPECT_EQ_INT(copy, 4 * LAYERS * HEADS); /* the 4 kept blocks are all cached */
  EXPECT_OK(rkv_blockmgr_compact_copy_bound(m, 1, 0, 16, 0, 0, &copy));
  EXPECT_EQ_INT(copy, 4 * HEADS); /* one layer */
  EXPECT_OK(rkv_blockmgr_compact_copy_bound(m, 1, -1, 24, 0, 0, &copy));
  EXPECT_EQ_INT(copy, 0); /* no stream is cut */
  EXPECT_OK(rkv_blockmgr_compact_copy_bound(m, 1, -1, 24, 3, 0, &copy));
  EXPECT_EQ_INT(copy, 5 * LAYERS * HEADS); /* the append takes it over: 5 cached kept */
  /* a hit after the bound shares 3 of them: the cut copies those, within the bound */
  rkv_prefix_hash_blocks(b, 22, BS, 0, hb, 8);
  EXPECT_OK(rkv_blockmgr_seq_create_cached(m, 2, hb, 3));
  EXPECT_OK(rkv_blockmgr_compact_copy_bound(m, 1, -1, 16, 0, 0, &copy));
  EXPECT_EQ_INT(copy, 4 * LAYERS * HEADS); /* each block once, shared and cached */
  uint32_t free0 = bmt_free_blocks(m);
  EXPECT_OK(rkv_blockmgr_truncate(m, 1, -1, 16, NULL));
  /* 3 copies per stream taken, 2 tail blocks per stream returned */
  EXPECT_EQ_INT((int64_t)bmt_free_blocks(m) - (int64_t)free0, (2 - 3) * LAYERS * HEADS);
  EXPECT_OK(rkv_blockmgr_compact_copy_bound(m, 1, -1, 8, 0, 0, &copy));
  EXPECT_EQ_INT(copy, 0); /* the cut left the cache and shares nothing */
  /* blocks not registered yet: the first `registering` of each stream */
  EXPECT_OK(rkv_blockmgr_seq_create(m, 3));
  EXPECT_OK(rkv_blockmgr_append(m, 3, 10, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_compact_copy_bound(m, 3, -1, 8, 0, 0, &copy));
  EXPECT_EQ_INT(copy, 0);
  EXPECT_OK(rkv_blockmgr_compact_copy_bound(m, 3, -1, 8, 0, 1, &copy));
  EXPECT_EQ_INT(copy, 1 * LAYERS * HEADS);
  EXPECT_OK(rkv_blockmgr_compact_copy_bound(m, 3, -1, 8, 0, 9, &copy));
  EXPECT_EQ_INT(copy, 2 * LAYERS * HEADS); /* at most the kept blocks */
  /* blocks wholly inside a protected prefix are never copied */
  EXPECT_OK(rkv_blockmgr_seq_protect(m, 2, 8));
  EXPECT_OK(rkv_blockmgr_append(m, 2, 6, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_compact_copy_bound(m, 2, -1, 16, 0, 0, &copy));
  EXPECT_EQ_INT(copy, 1 * LAYERS * HEADS); /* block 2: cached (its own now) */
  const uint64_t d = digest(m);
  EXPECT_STATUS(rkv_blockmgr_compact_copy_bound(m, 3, -1, 8, 0, 1, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_compact_copy_bound(m, 3, -1, -1, 0, 1, &copy), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_compact_copy_bound(m, 3, LAYERS, 8, 0, 1, &copy), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_compact_copy_bound(m, 9, -1, 8, 0, 1, &copy), RKV_ERR_NOT_FOUND);
  EXPECT(strstr(rkv_blockmgr_last_error(m), "9") != NULL);
  EXPECT(digest(m) == d);
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
}

int main(void) {
  test_hash();
  test_copy_bound();
  test_hit_share_park();
  test_reclaim_lru();
  test_compaction_keeps_cache();
  test_invalidation();
  test_compact_prepare();
  test_copies_reclaim();
  test_protect();
  test_errors();
  test_random_content();
  return rkv_test_finish();
}
