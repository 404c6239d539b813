/* Compaction: hand-computed move plans, shared leading blocks kept by reference vs replaced by
 * fresh blocks, freed block counts against budget arithmetic, list validation (unsorted,
 * duplicate, out of range, stream listed twice), CAPACITY and NO_BLOCKS reporting with
 * nothing changed, empty streams, compact_uniform maps, and a randomized content model: every
 * slot of a fake pool holds a token id, appends write ids, copies and moves are applied, and
 * each stream's positions 0..len-1 must hold exactly the ids it kept, in order. */
#include "bm_test_util.h"

static void test_plan_by_hand(void) {
  /* One stream, block 4, length 10: row {0, 1, 2}. Keep {1, 2, 5, 9}. */
  rkv_blockmgr *m = bmt_make(8, 4, 1, 1, 4);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 10, NULL, NULL, NULL));
  int32_t pos[] = {1, 2, 5, 9};
  rkv_keep_list kl = {0, 0, pos, 4};
  rkv_slot_move mv[8];
  uint32_t nm = 0;
  EXPECT_OK(rkv_blockmgr_compact(m, 1, &kl, 1, mv, 8, &nm));
  EXPECT_EQ_INT(nm, 4);
  const int64_t want[4][2] = {{1, 0}, {2, 1}, {5, 2}, {9, 3}};
  for (int i = 0; i < 4; i++) {
    EXPECT_EQ_INT(mv[i].src, want[i][0]);
    EXPECT_EQ_INT(mv[i].dst, want[i][1]);
  }
  EXPECT_EQ_INT(bmt_len(m, 1, 0, 0), 4);
  EXPECT_EQ_INT(bmt_free_blocks(m), 7); /* blocks 1 and 2 freed */
  EXPECT_EQ_INT(bmt_ref(m, 1), 0);
  EXPECT_EQ_INT(bmt_ref(m, 2), 0);

  /* Prefix in place: keep {0,1,2,3,6} of length 10 -> one move, one block freed. */
  EXPECT_OK(rkv_blockmgr_seq_create(m, 2));
  EXPECT_OK(rkv_blockmgr_append(m, 2, 10, NULL, NULL, NULL));
  int32_t nb;
  const int32_t *row = bmt_row(m, 2, 0, 0, &nb);
  int32_t r0 = row[0], r1 = row[1];
  int32_t pos2[] = {0, 1, 2, 3, 6};
  rkv_keep_list kl2 = {0, 0, pos2, 5};
  EXPECT_OK(rkv_blockmgr_compact(m, 2, &kl2, 1, mv, 8, &nm));
  EXPECT_EQ_INT(nm, 1);
  EXPECT_EQ_INT(mv[0].src, (int64_t)r1 * 4 + 2);
  EXPECT_EQ_INT(mv[0].dst, (int64_t)r1 * 4 + 0);
  row = bmt_row(m, 2, 0, 0, &nb);
  EXPECT_EQ_INT(nb, 2);
  EXPECT_EQ_INT(row[0], r0);
  EXPECT_EQ_INT(row[1], r1);
  /* Nothing moves: keep everything -> zero moves, NULL moves allowed. */
  int32_t all[] = {0, 1, 2, 3, 4};
  rkv_keep_list kl3 = {0, 0, all, 5};
  EXPECT_OK(rkv_blockmgr_compact(m, 2, &kl3, 1, NULL, 0, &nm));
  EXPECT_EQ_INT(nm, 0);
  /* No lists: a no-op. */
  EXPECT_OK(rkv_blockmgr_compact(m, 2, NULL, 0, NULL, 0, &nm));
  EXPECT_EQ_INT(nm, 0);
  /* Keep nothing: the stream empties and can grow again. */
  rkv_keep_list kl4 = {0, 0, NULL, 0};
  uint32_t fb = bmt_free_blocks(m);
  EXPECT_OK(rkv_blockmgr_compact(m, 2, &kl4, 1, NULL, 0, &nm));
  EXPECT_EQ_INT(bmt_len(m, 2, 0, 0), 0);
  EXPECT_EQ_INT(bmt_free_blocks(m), fb + 2);
  EXPECT_OK(rkv_blockmgr_append(m, 2, 1, NULL, NULL, NULL));
  EXPECT_EQ_INT(bmt_len(m, 2, 0, 0), 1);
  rkv_blockmgr_destroy(m);
}

static void test_validation(void) {
  rkv_blockmgr *m = bmt_make(32, 4, 2, 2, 4);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 10, NULL, NULL, NULL));
  rkv_slot_move mv[64];
  uint32_t nm;
  int32_t good[] = {0, 4, 9}, unsorted[] = {0, 5, 4}, dup[] = {1, 1, 2}, high[] = {0, 10},
          neg[] = {-1, 3};
  /* The first list is valid, so validation must not have touched its stream either. */
  struct {
    rkv_keep_list second;
    rkv_status want;
  } cases[] = {
      {{0, 1, unsorted, 3}, RKV_ERR_INVALID_ARG}, {{0, 1, dup, 3}, RKV_ERR_INVALID_ARG},
      {{0, 1, high, 2}, RKV_ERR_INVALID_ARG},     {{0, 1, neg, 2}, RKV_ERR_INVALID_ARG},
      {{2, 0, good, 3}, RKV_ERR_INVALID_ARG},     {{0, 2, good, 3}, RKV_ERR_INVALID_ARG},
      {{0, 0, good, 3}, RKV_ERR_INVALID_ARG}, /* listed twice */
      {{0, 1, NULL, 3}, RKV_ERR_INVALID_ARG},     {{0, 1, good, 11}, RKV_ERR_INVALID_ARG},
  };
  uint64_t d = bmt_digest(m);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    rkv_keep_list kl[2] = {{0, 0, good, 3}, cases[i].second};
    EXPECT_STATUS(rkv_blockmgr_compact(m, 1, kl, 2, mv, 64, &nm), cases[i].want);
    EXPECT(bmt_digest(m) == d);
    EXPECT(strlen(rkv_blockmgr_last_error(m)) > 0);
  }
  rkv_keep_list kl = {0, 0, good, 3};
  EXPECT_STATUS(rkv_blockmgr_compact(m, 7, &kl, 1, mv, 64, &nm), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_compact(m, 1, NULL, 1, mv, 64, &nm), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_compact(m, 1, &kl, 1, NULL, 5, &nm), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_compact(NULL, 1, &kl, 1, mv, 64, &nm), RKV_ERR_INVALID_ARG);
  /* CAPACITY: report the need, change nothing; then succeed with exactly that room. */
  nm = 0;
  EXPECT_STATUS(rkv_blockmgr_compact(m, 1, &kl, 1, mv, 1, &nm), RKV_ERR_CAPACITY);
  EXPECT_EQ_INT(nm, 2); /* 4 -> 1, 9 -> 2 */
  EXPECT(bmt_digest(m) == d);
  EXPECT_STATUS(rkv_blockmgr_compact(m, 1, &kl, 1, NULL, 0, &nm), RKV_ERR_CAPACITY);
  EXPECT_OK(rkv_blockmgr_compact(m, 1, &kl, 1, mv, 2, &nm));
  EXPECT_EQ_INT(nm, 2);
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
}

/* Shared leading blocks after a fork: kept by reference when wholly in place, else fresh. */
static void test_shared(void) {
  rkv_blockmgr *m = bmt_make(16, 4, 1, 1, 4);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 10, NULL, NULL, NULL)); /* row {0,1,2} */
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 1, 2));
  int32_t pos[] = {0, 1, 2, 3, 5, 7};
  rkv_keep_list kl = {0, 0, pos, 6};
  rkv_slot_move mv[8];
  uint32_t nm;
  uint32_t fb = bmt_free_blocks(m);
  EXPECT_OK(rkv_blockmgr_compact(m, 1, &kl, 1, mv, 8, &nm));
  int32_t nb;
  const int32_t *row = bmt_row(m, 1, 0, 0, &nb);
  EXPECT_EQ_INT(nb, 2);
  EXPECT_EQ_INT(row[0], 0); /* in place: kept by reference */
  int32_t f = row[1];       /* block 1 was shared and its content changes: fresh */
  EXPECT(f != 1 && f != 0 && f != 2);
  EXPECT_EQ_INT(nm, 2);
  EXPECT_EQ_INT(mv[0].src, 1 * 4 + 1);
  EXPECT_EQ_INT(mv[0].dst, (int64_t)f * 4 + 0);
  EXPECT_EQ_INT(mv[1].src, 1 * 4 + 3);
  EXPECT_EQ_INT(mv[1].dst, (int64_t)f * 4 + 1);
  EXPECT_EQ_INT(bmt_ref(m, 0), 2);
  EXPECT_EQ_INT(bmt_ref(m, 1), 1);
  EXPECT_EQ_INT(bmt_ref(m, 2), 1); /* the parent's shared tail is released, not freed */
  EXPECT_EQ_INT(bmt_ref(m, f), 1);
  EXPECT_EQ_INT(bmt_free_blocks(m), fb - 1);
  /* The child is untouched. */
  row = bmt_row(m, 2, 0, 0, &nb);
  EXPECT(nb == 3 && row[0] == 0 && row[1] == 1 && row[2] == 2);
  EXPECT_EQ_INT(bmt_len(m, 2, 0, 0), 10);

  /* A shared block kept in place as a partial tail: the next append must copy it. */
  EXPECT_OK(rkv_blockmgr_seq_create(m, 3));
  EXPECT_OK(rkv_blockmgr_append(m, 3, 8, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 3, 4));
  rkv_block_copy cp[1];
  uint32_t nc = 0;
  EXPECT_OK(rkv_blockmgr_append(m, 4, 1, NULL, cp, &nc)); /* full tail: no copy */
  EXPECT_EQ_INT(nc, 0);
  int32_t keep6[] = {0, 1, 2, 3, 4, 5};
  rkv_keep_list k6 = {0, 0, keep6, 6};
  const int32_t *r3 = bmt_row(m, 3, 0, 0, &nb);
  int32_t b1 = r3[1];
  EXPECT_OK(rkv_blockmgr_compact(m, 3, &k6, 1, NULL, 0, &nm));
  EXPECT_EQ_INT(nm, 0);
  EXPECT_EQ_INT(bmt_row(m, 3, 0, 0, &nb)[1], b1);
  EXPECT_EQ_INT(bmt_ref(m, b1), 2);
  uint32_t need = 0;
  EXPECT_OK(rkv_blockmgr_blocks_needed(m, 3, 1, &need));
  EXPECT_EQ_INT(need, 1);
  EXPECT_STATUS(rkv_blockmgr_append(m, 3, 1, NULL, NULL, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_OK(rkv_blockmgr_append(m, 3, 1, NULL, cp, &nc));
  EXPECT_EQ_INT(nc, 1);
  EXPECT_EQ_INT(cp[0].src, b1);
  EXPECT_EQ_INT(bmt_ref(m, b1), 1);

  /* NO_BLOCKS when fresh blocks are unavailable: nothing changes. */
  rkv_blockmgr *m2 = bmt_make(6, 4, 1, 1, 4);
  EXPECT_OK(rkv_blockmgr_seq_create(m2, 1));
  EXPECT_OK(rkv_blockmgr_append(m2, 1, 12, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_seq_fork(m2, 1, 2));
  EXPECT_OK(rkv_blockmgr_seq_create(m2, 3));
  EXPECT_OK(rkv_blockmgr_append(m2, 3, 12, NULL, NULL, NULL)); /* pool full */
  int32_t shift[] = {1, 2, 3, 4, 5};                           /* rewrites 2 shared blocks */
  rkv_keep_list ks = {0, 0, shift, 5};
  uint64_t d = bmt_digest(m2);
  nm = 0;
  EXPECT_STATUS(rkv_blockmgr_compact(m2, 1, &ks, 1, mv, 8, &nm), RKV_ERR_NO_BLOCKS);
  EXPECT_EQ_INT(nm, 5);
  EXPECT(bmt_digest(m2) == d);
  EXPECT_OK(rkv_blockmgr_seq_free(m2, 3));
  EXPECT_OK(rkv_blockmgr_compact(m2, 1, &ks, 1, mv, 8, &nm));
  EXPECT_EQ_INT(nm, 5);
  rkv_blockmgr_destroy(m2);
  rkv_blockmgr_destroy(m);
}

/* Freed blocks = what the budget implies: sum over streams of ceil(len/bs) - ceil(B/bs). */
static void test_budget_arithmetic(void) {
  enum { L = 3, H = 4, BS = 16, B = 37 };
  rkv_blockmgr *m = bmt_make(4096, BS, L, H, 4);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  uint64_t rng = 5;
  int32_t lens[L * H];
  for (int s = 0; s < L * H; s++) lens[s] = 40 + (int32_t)(rkv_test_rand(&rng) % 300);
  EXPECT_OK(rkv_blockmgr_seq_restore(m, 2, lens));
  EXPECT_OK(rkv_blockmgr_seq_free(m, 1));
  rkv_keep_list kl[L * H];
  int32_t *pos[L * H];
  int64_t expect_freed = 0;
  uint64_t maxmoves = 0;
  for (int s = 0; s < L * H; s++) {
    pos[s] = malloc(B * sizeof(int32_t));
    /* B distinct sorted positions: a random subset by selection sampling. */
    int need = B, n = 0;
    for (int p = 0; p < lens[s] && n < B; p++) {
      if (rkv_test_rand(&rng) % (uint64_t)(lens[s] - p) < (uint64_t)(need)) {
        pos[s][n++] = p;
        need--;
      }
    }
    kl[s].layer = (uint32_t)s / H;
    kl[s].head = (uint32_t)s % H;
    kl[s].pos = pos[s];
    kl[s].n = B;
    expect_freed += (lens[s] + BS - 1) / BS - (B + BS - 1) / BS;
    maxmoves += B;
  }
  uint32_t fb = bmt_free_blocks(m);
  rkv_slot_move *mv = malloc(maxmoves * sizeof *mv);
  uint32_t nm;
  EXPECT_OK(rkv_blockmgr_compact(m, 2, kl, L * H, mv, (uint32_t)maxmoves, &nm));
  EXPECT_EQ_INT(bmt_free_blocks(m), fb + expect_freed);
  EXPECT(nm <= maxmoves);
  for (uint32_t i = 0; i < nm; i++) EXPECT(mv[i].src != mv[i].dst);
  for (int s = 0; s < L * H; s++) EXPECT_EQ_INT(bmt_len(m, 2, (uint32_t)s / H, (uint32_t)s % H), B);
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(m, &st);
  EXPECT_EQ_INT(st.token_slots, (uint64_t)B * L * H);
  EXPECT_EQ_INT(st.used_blocks, L * H * ((B + BS - 1) / BS));
  for (int s = 0; s < L * H; s++) free(pos[s]);
  free(mv);
  rkv_blockmgr_destroy(m);
}

static void test_uniform(void) {
  /* 2 layers x 2 heads, block 4. Lengths per stream differ after a restore. */
  rkv_blockmgr *m = bmt_make(64, 4, 2, 2, 4);
  int32_t lens[4] = {10, 3, 13, 6};
  EXPECT_OK(rkv_blockmgr_seq_restore(m, 1, lens));
  rkv_compact_map maps[4];
  int32_t old[32];
  uint32_t nmap = 0, nold = 0;
  /* Layer 1 only, keep 5: streams 2 (13) and 3 (6) are cut. */
  int32_t nb;
  int32_t row2[4], row3[2];
  memcpy(row2, bmt_row(m, 1, 1, 0, &nb), 4 * sizeof(int32_t));
  memcpy(row3, bmt_row(m, 1, 1, 1, &nb), 2 * sizeof(int32_t));
  uint64_t d = bmt_digest(m);
  EXPECT_STATUS(rkv_blockmgr_compact_uniform(m, 1, 1, 5, maps, 1, &nmap, old, 32, &nold),
                RKV_ERR_CAPACITY);
  EXPECT_EQ_INT(nmap, 2);
  EXPECT_EQ_INT(nold, 6);
  EXPECT_STATUS(rkv_blockmgr_compact_uniform(m, 1, 1, 5, maps, 4, &nmap, old, 5, &nold),
                RKV_ERR_CAPACITY);
  EXPECT(bmt_digest(m) == d);
  EXPECT_STATUS(rkv_blockmgr_compact_uniform(m, 1, 2, 5, maps, 4, &nmap, old, 32, &nold),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_compact_uniform(m, 1, 1, -1, maps, 4, &nmap, old, 32, &nold),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_compact_uniform(m, 9, 1, 5, maps, 4, &nmap, old, 32, &nold),
                RKV_ERR_NOT_FOUND);
  uint32_t fb = bmt_free_blocks(m);
  EXPECT_OK(rkv_blockmgr_compact_uniform(m, 1, 1, 5, maps, 4, &nmap, old, 32, &nold));
  EXPECT_EQ_INT(nmap, 2);
  EXPECT_EQ_INT(nold, 6);
  EXPECT(maps[0].layer == 1 && maps[0].head == 0 && maps[0].old_len == 13 && maps[0].new_len == 5 &&
         maps[0].old_offset == 0 && maps[0].old_n_blocks == 4);
  EXPECT(maps[1].layer == 1 && maps[1].head == 1 && maps[1].old_len == 6 && maps[1].new_len == 5 &&
         maps[1].old_offset == 4 && maps[1].old_n_blocks == 2);
  for (int j = 0; j < 4; j++) EXPECT_EQ_INT(old[j], row2[j]);
  for (int j = 0; j < 2; j++) EXPECT_EQ_INT(old[4 + j], row3[j]);
  EXPECT_EQ_INT(bmt_free_blocks(m), fb + 2); /* stream 2: 4 -> 2 blocks; stream 3: 2 -> 2 */
  const int32_t *r = bmt_row(m, 1, 1, 0, &nb);
  EXPECT(nb == 2 && r[0] == row2[0] && r[1] == row2[1]); /* private: reused in place */
  EXPECT_EQ_INT(bmt_len(m, 1, 0, 0), 10);                /* layer 0 untouched */
  EXPECT_EQ_INT(bmt_len(m, 1, 1, 0), 5);

  /* All layers, shared leading blocks get fresh ones; the old ids are reported. */
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 1, 2));
  int32_t c0[3];
  memcpy(c0, bmt_row(m, 2, 0, 0, &nb), 3 * sizeof(int32_t));
  fb = bmt_free_blocks(m);
  EXPECT_OK(rkv_blockmgr_compact_uniform(m, 2, -1, 4, maps, 4, &nmap, old, 32, &nold));
  /* stream lens 10,3,5,5 -> cut 0,2,3 (3 untouched) */
  EXPECT_EQ_INT(nmap, 3);
  EXPECT_EQ_INT(nold, 3 + 2 + 2);
  EXPECT(maps[0].layer == 0 && maps[0].head == 0 && maps[1].layer == 1 && maps[1].head == 0 &&
         maps[2].layer == 1 && maps[2].head == 1);
  for (int j = 0; j < 3; j++) EXPECT_EQ_INT(old[j], c0[j]);
  r = bmt_row(m, 2, 0, 0, &nb);
  EXPECT(nb == 1 && r[0] != c0[0]);
  EXPECT_EQ_INT(bmt_ref(m, r[0]), 1);
  EXPECT_EQ_INT(bmt_ref(m, c0[0]), 1);       /* back to the parent alone */
  EXPECT_EQ_INT(bmt_free_blocks(m), fb - 3); /* 3 fresh, shared tails only lose a ref */
  EXPECT_EQ_INT(bmt_len(m, 2, 0, 1), 3);

  /* keep 0 frees everything of the cut streams; nothing to report is fine with NULL arrays. */
  EXPECT_OK(rkv_blockmgr_compact_uniform(m, 1, -1, 0, maps, 4, &nmap, old, 32, &nold));
  EXPECT_EQ_INT(nmap, 4);
  EXPECT_OK(rkv_blockmgr_compact_uniform(m, 1, -1, 0, NULL, 0, &nmap, NULL, 0, &nold));
  EXPECT_EQ_INT(nmap, 0);
  EXPECT_OK(rkv_blockmgr_seq_free(m, 1));
  EXPECT_OK(rkv_blockmgr_seq_free(m, 2));
  EXPECT_EQ_INT(bmt_free_blocks(m), 64);
  rkv_blockmgr_destroy(m);
}

/* ---- randomized content model ---------------------------------------------------------- */

enum { RL = 2, RH = 2, RS = RL * RH, RMAXBS = 4, RNB = 160, RMAXSEQ = 6, RMAXLEN = 200 };
static int32_t rbs; /* block size of the current run (power of two and not) */

typedef struct model_seq {
  int64_t id;
  int32_t len[RS];
  int64_t tok[RS][RMAXLEN]; /* expected token id at each position */
} model_seq;

static int64_t pool[RNB * RMAXBS]; /* fake KV pool: one token id per slot */
static model_seq mseqs[RMAXSEQ];

static int verify_seq(const rkv_blockmgr *m, const model_seq *q) {
  int bad = 0;
  for (int s = 0; s < RS; s++) {
    if (bmt_len(m, q->id, (uint32_t)s / RH, (uint32_t)s % RH) != q->len[s]) bad++;
    for (int32_t p = 0; p < q->len[s]; p++) {
      int64_t slot;
      rkv_blockmgr_stream_slot(m, q->id, (uint32_t)s / RH, (uint32_t)s % RH, p, &slot);
      if (pool[slot] != q->tok[s][p]) bad++;
    }
  }
  return bad;
}

static void test_random_content(int32_t block_size) {
  rbs = block_size;
  rkv_blockmgr *m = bmt_make(RNB, rbs, RL, RH, RMAXSEQ);
  uint64_t rng = 2024 + (uint64_t)block_size;
  int nlive = 0, bad = 0, compactions = 0, uniform = 0, cows = 0;
  int64_t next_id = 0, next_tok = 1;
  rkv_slot_move mv[RS * RMAXLEN];
  rkv_block_copy cp[RS];
  int64_t slots[RS * 16];
  for (int it = 0; it < 4000; it++) {
    uint64_t op = rkv_test_rand(&rng) % 20;
    if (nlive == 0 || (op == 0 && nlive < RMAXSEQ)) {
      model_seq *q = &mseqs[nlive];
      memset(q, 0, sizeof *q);
      q->id = next_id++;
      EXPECT_OK(rkv_blockmgr_seq_create(m, q->id));
      nlive++;
    } else if (op == 1 && nlive < RMAXSEQ) {
      model_seq *p = &mseqs[rkv_test_rand(&rng) % (uint64_t)nlive];
      model_seq *c = &mseqs[nlive];
      *c = *p;
      c->id = next_id++;
      EXPECT_OK(rkv_blockmgr_seq_fork(m, p->id, c->id));
      nlive++;
    } else if (op == 2 || (op == 3 && bmt_free_blocks(m) < 20)) {
      int k = (int)(rkv_test_rand(&rng) % (uint64_t)nlive);
      EXPECT_OK(rkv_blockmgr_seq_free(m, mseqs[k].id));
      mseqs[k] = mseqs[--nlive];
    } else if (op <= 12) {
      model_seq *q = &mseqs[rkv_test_rand(&rng) % (uint64_t)nlive];
      uint32_t n = 1 + (uint32_t)(rkv_test_rand(&rng) % 16);
      int32_t mx = 0;
      for (int s = 0; s < RS; s++) mx = q->len[s] > mx ? q->len[s] : mx;
      if (mx + (int32_t)n > RMAXLEN) continue;
      uint32_t nc = 0;
      rkv_status st = rkv_blockmgr_append(m, q->id, n, slots, cp, &nc);
      if (st == RKV_ERR_NO_BLOCKS) continue;
      EXPECT_OK(st);
      for (uint32_t i = 0; i < nc; i++)
        memcpy(&pool[(size_t)cp[i].dst * rbs], &pool[(size_t)cp[i].src * rbs],
               rbs * sizeof(int64_t));
      cows += (int)nc;
      for (int s = 0; s < RS; s++) {
        for (uint32_t t = 0; t < n; t++) {
          int64_t tok = next_tok++;
          pool[slots[s * (int)n + (int)t]] = tok;
          q->tok[s][q->len[s]++] = tok;
        }
      }
    } else if (op <= 17) {
      /* Random keep lists over a random subset of streams. */
      model_seq *q = &mseqs[rkv_test_rand(&rng) % (uint64_t)nlive];
      rkv_keep_list kl[RS];
      int32_t pos[RS][RMAXLEN];
      uint32_t nl = 0;
      for (int s = 0; s < RS; s++) {
        if (rkv_test_rand(&rng) % 3 == 0) continue;
        int32_t n = 0;
        uint64_t keep_pct = rkv_test_rand(&rng) % 101;
        for (int32_t p = 0; p < q->len[s]; p++)
          if (rkv_test_rand(&rng) % 100 < keep_pct) pos[s][n++] = p;
        kl[nl].layer = (uint32_t)s / RH;
        kl[nl].head = (uint32_t)s % RH;
        kl[nl].pos = pos[s];
        kl[nl].n = (uint32_t)n;
        nl++;
      }
      uint32_t nm = 0;
      rkv_status st = rkv_blockmgr_compact(m, q->id, kl, nl, mv, RS * RMAXLEN, &nm);
      if (st == RKV_ERR_NO_BLOCKS) continue;
      EXPECT_OK(st);
      for (uint32_t i = 0; i < nm; i++) pool[mv[i].dst] = pool[mv[i].src];
      for (uint32_t l = 0; l < nl; l++) {
        int s = (int)(kl[l].layer * RH + kl[l].head);
        for (uint32_t i = 0; i < kl[l].n; i++) q->tok[s][i] = q->tok[s][kl[l].pos[i]];
        q->len[s] = (int32_t)kl[l].n;
      }
      compactions++;
    } else {
      /* Uniform cut; the "device" keeps the most recent tokens, moved in position order
       * from the old rows into the new rows. */
      model_seq *q = &mseqs[rkv_test_rand(&rng) % (uint64_t)nlive];
      int32_t keep = (int32_t)(rkv_test_rand(&rng) % 40);
      int32_t layer = (int32_t)(rkv_test_rand(&rng) % (RL + 1)) - 1;
      rkv_compact_map maps[RS];
      int32_t old[RS * (RMAXLEN + 1)];
      uint32_t nmap, nold;
      rkv_status st = rkv_blockmgr_compact_uniform(m, q->id, layer, keep, maps, RS, &nmap, old,
                                                   RS * (RMAXLEN + 1), &nold);
      if (st == RKV_ERR_NO_BLOCKS) continue;
      EXPECT_OK(st);
      for (uint32_t i = 0; i < nmap; i++) {
        int s = (int)(maps[i].layer * RH + maps[i].head);
        int32_t nb;
        const int32_t *row = bmt_row(m, q->id, maps[i].layer, maps[i].head, &nb);
        int32_t drop = maps[i].old_len - maps[i].new_len;
        for (int32_t j = 0; j < maps[i].new_len; j++) {
          int32_t p = drop + j;
          int64_t src = (int64_t)old[maps[i].old_offset + p / rbs] * rbs + p % rbs;
          int64_t dst = (int64_t)row[j / rbs] * rbs + j % rbs;
          pool[dst] = pool[src];
          q->tok[s][j] = q->tok[s][p];
        }
        q->len[s] = maps[i].new_len;
        if (!(layer < 0 || (int32_t)maps[i].layer == layer)) bad++;
      }
      uniform++;
    }
    if (it % 7 == 0)
      for (int k = 0; k < nlive; k++) bad += verify_seq(m, &mseqs[k]);
  }
  for (int k = 0; k < nlive; k++) bad += verify_seq(m, &mseqs[k]);
  EXPECT_EQ_INT(bad, 0);
  EXPECT(compactions > 100 && uniform > 50 && cows > 50);
  printf("random content (block %d): %d compactions, %d uniform, %d copies\n", rbs, compactions,
         uniform, cows);
  while (nlive) EXPECT_OK(rkv_blockmgr_seq_free(m, mseqs[--nlive].id));
  EXPECT_EQ_INT(bmt_free_blocks(m), RNB);
  rkv_blockmgr_destroy(m);
}

/* rkv_blockmgr_truncate is compact_uniform without the report: on twin managers driven
 * alike (appends, a fork for shared leading blocks), every cut leaves the same state, it
 * counts the tokens cut, and its errors change nothing. */
static void test_truncate(void) {
  rkv_blockmgr *a = bmt_make(256, 4, 2, 2, 8), *b = bmt_make(256, 4, 2, 2, 8);
  rkv_blockmgr *ms[2] = {a, b};
  for (int k = 0; k < 2; k++) {
    EXPECT_OK(rkv_blockmgr_seq_create(ms[k], 1));
    EXPECT_OK(rkv_blockmgr_append(ms[k], 1, 23, NULL, NULL, NULL));
    EXPECT_OK(rkv_blockmgr_seq_fork(ms[k], 1, 2));
    EXPECT_OK(rkv_blockmgr_seq_create(ms[k], 3));
    EXPECT_OK(rkv_blockmgr_append(ms[k], 3, 9, NULL, NULL, NULL));
  }
  rkv_compact_map maps[4];
  int32_t old[64];
  uint32_t nm, no;
  const int32_t keeps[4] = {17, 10, 6, 3};
  for (int i = 0; i < 4; i++) {
    const int64_t seq = i % 2 ? 2 : 1;
    const int32_t layer = i == 1 ? 1 : -1;
    uint64_t want = 0;
    for (uint32_t l = 0; l < 2; l++)
      for (uint32_t h = 0; h < 2; h++) {
        const int32_t len = bmt_len(a, seq, l, h);
        if ((layer < 0 || (uint32_t)layer == l) && len > keeps[i])
          want += (uint64_t)(len - keeps[i]);
      }
    EXPECT_OK(rkv_blockmgr_compact_uniform(a, seq, layer, keeps[i], maps, 4, &nm, old, 64, &no));
    uint64_t removed = 99;
    EXPECT_OK(rkv_blockmgr_truncate(b, seq, layer, keeps[i], &removed));
    EXPECT_EQ_INT(removed, want);
    EXPECT(bmt_digest(a) == bmt_digest(b));
    EXPECT_OK(rkv_blockmgr_check(b));
  }
  uint64_t d = bmt_digest(b), removed = 7;
  EXPECT_STATUS(rkv_blockmgr_truncate(b, 9, -1, 4, &removed), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_truncate(b, 3, 2, 4, &removed), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_truncate(b, 3, -1, -1, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_OK(rkv_blockmgr_seq_protect(b, 3, 8));
  EXPECT_STATUS(rkv_blockmgr_truncate(b, 3, -1, 7, &removed), RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(removed, 0);
  EXPECT(bmt_digest(b) == d);
  EXPECT_OK(rkv_blockmgr_truncate(b, 3, -1, 8, NULL));
  EXPECT_EQ_INT(bmt_len(b, 3, 1, 1), 8);
  rkv_blockmgr_destroy(a);
  rkv_blockmgr_destroy(b);
}

/* The fresh-block bound for a compaction planned with the append before it: a shared stream
 * at the budget now is skipped by compact_fresh_bound, counted by _after once the append
 * takes it over (the scheduler's reservation; fuzz_sched found the gap). */
static void test_fresh_bound_after(void) {
  rkv_blockmgr *m = bmt_make(64, 4, 1, 2, 4);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 8, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 1, 2));
  uint32_t now = 9, after = 9;
  EXPECT_OK(rkv_blockmgr_compact_fresh_bound(m, 2, -1, 8, &now));
  EXPECT_EQ_INT(now, 0);
  EXPECT_OK(rkv_blockmgr_compact_fresh_bound_after(m, 2, -1, 8, 1, &after));
  EXPECT_EQ_INT(after, 4); /* two shared leading blocks in each of two streams */
  EXPECT_OK(rkv_blockmgr_compact_fresh_bound_after(m, 2, -1, 8, 0, &after));
  EXPECT_EQ_INT(after, 0);
  EXPECT_STATUS(rkv_blockmgr_compact_fresh_bound_after(m, 2, -1, 8, 1, NULL), RKV_ERR_INVALID_ARG);
  /* the compaction after the append does take that many fresh blocks */
  rkv_block_copy cp[2];
  uint32_t nc = 0;
  EXPECT_OK(rkv_blockmgr_append(m, 2, 1, NULL, cp, &nc));
  const uint32_t free0 = bmt_free_blocks(m);
  rkv_compact_map maps[2];
  int32_t old[16];
  uint32_t nm, no;
  EXPECT_OK(rkv_blockmgr_compact_uniform(m, 2, -1, 8, maps, 2, &nm, old, 16, &no));
  EXPECT_EQ_INT((int64_t)free0 - (int64_t)bmt_free_blocks(m) + 2, 4); /* 4 fresh, 2 tails back */
  rkv_blockmgr_destroy(m);
}

int main(void) {
  test_fresh_bound_after();
  test_truncate();
  test_plan_by_hand();
  test_validation();
  test_shared();
  test_budget_arithmetic();
  test_uniform();
  test_random_content(4);
  test_random_content(3);
  return rkv_test_finish();
}
