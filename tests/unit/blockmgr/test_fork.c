/* Fork and copy-on-write: the child shares every block (refs +1, nothing allocated), the first
 * append into a shared partial tail emits exactly one copy per stream, later appends emit
 * none, the other sequence then writes in place, and freeing both returns every block.
 * Also fork errors, blocks_needed counting CoW blocks, footprints, and NO_BLOCKS on CoW. */
#include "bm_test_util.h"

static void test_fork_shares(void) {
  /* 1 layer x 2 heads, block 4, parent length 6: rows {0,2} and {1,3}. */
  rkv_blockmgr *m = bmt_make(16, 4, 1, 2, 8);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 6, NULL, NULL, NULL));
  uint32_t free0 = bmt_free_blocks(m);
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 1, 2));
  EXPECT_EQ_INT(bmt_free_blocks(m), free0); /* nothing allocated */
  for (uint32_t h = 0; h < 2; h++) {
    int32_t np, nc;
    const int32_t *rp = bmt_row(m, 1, 0, h, &np);
    const int32_t *rc = bmt_row(m, 2, 0, h, &nc);
    EXPECT_EQ_INT(np, 2);
    EXPECT_EQ_INT(nc, 2);
    for (int j = 0; j < 2; j++) {
      EXPECT_EQ_INT(rc[j], rp[j]);
      EXPECT_EQ_INT(bmt_ref(m, rp[j]), 2);
    }
    EXPECT_EQ_INT(bmt_len(m, 2, 0, h), 6);
  }
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(m, &st);
  EXPECT_EQ_INT(st.shared_blocks, 4);
  EXPECT_EQ_INT(st.used_blocks, 4);
  EXPECT_EQ_INT(st.token_slots, 12); /* shared blocks counted once */
  EXPECT_EQ_INT(st.fragmentation_slots, 4);
  uint32_t tot, ex;
  EXPECT_OK(rkv_blockmgr_seq_footprint(m, 2, &tot, &ex));
  EXPECT_EQ_INT(tot, 4);
  EXPECT_EQ_INT(ex, 0);

  /* CoW: blocks_needed counts one copy per stream; NULL copies is refused. */
  uint32_t need;
  EXPECT_OK(rkv_blockmgr_blocks_needed(m, 2, 1, &need));
  EXPECT_EQ_INT(need, 2);
  EXPECT_OK(rkv_blockmgr_blocks_needed(m, 2, 3, &need));
  EXPECT_EQ_INT(need, 4); /* 2 copies + 2 boundary blocks */
  uint64_t d = bmt_digest(m);
  EXPECT_STATUS(rkv_blockmgr_append(m, 2, 1, NULL, NULL, NULL), RKV_ERR_INVALID_ARG);
  EXPECT(bmt_digest(m) == d);

  rkv_block_copy cp[2];
  uint32_t nc = 0;
  int64_t slots[2];
  int32_t tail_h0, tail_h1, np;
  tail_h0 = bmt_row(m, 2, 0, 0, &np)[1];
  tail_h1 = bmt_row(m, 2, 0, 1, &np)[1];
  EXPECT_OK(rkv_blockmgr_append(m, 2, 1, slots, cp, &nc));
  EXPECT_EQ_INT(nc, 2);
  EXPECT_EQ_INT(cp[0].src, tail_h0);
  EXPECT_EQ_INT(cp[1].src, tail_h1);
  EXPECT(cp[0].dst != cp[0].src && cp[1].dst != cp[1].src && cp[0].dst != cp[1].dst);
  EXPECT_EQ_INT(bmt_row(m, 2, 0, 0, &np)[1], cp[0].dst);
  EXPECT_EQ_INT(bmt_row(m, 2, 0, 1, &np)[1], cp[1].dst);
  EXPECT_EQ_INT(slots[0], (int64_t)cp[0].dst * 4 + 2); /* position 6 in the copy */
  EXPECT_EQ_INT(slots[1], (int64_t)cp[1].dst * 4 + 2);
  EXPECT_EQ_INT(bmt_ref(m, tail_h0), 1);
  EXPECT_EQ_INT(bmt_ref(m, cp[0].dst), 1);
  EXPECT_EQ_INT(bmt_free_blocks(m), free0 - 2);
  /* Leading full blocks stay shared. */
  EXPECT_EQ_INT(bmt_ref(m, bmt_row(m, 2, 0, 0, &np)[0]), 2);

  /* Second append of the child: no copies. */
  EXPECT_OK(rkv_blockmgr_append(m, 2, 1, slots, cp, &nc));
  EXPECT_EQ_INT(nc, 0);
  EXPECT_EQ_INT(slots[0], (int64_t)bmt_row(m, 2, 0, 0, &np)[1] * 4 + 3);

  /* The parent's tails dropped to ref 1: it writes in place, no copy, no new block. */
  EXPECT_OK(rkv_blockmgr_blocks_needed(m, 1, 1, &need));
  EXPECT_EQ_INT(need, 0);
  uint32_t fb = bmt_free_blocks(m);
  EXPECT_OK(rkv_blockmgr_append(m, 1, 1, slots, cp, &nc));
  EXPECT_EQ_INT(nc, 0);
  EXPECT_EQ_INT(slots[0], (int64_t)tail_h0 * 4 + 2);
  EXPECT_EQ_INT(slots[1], (int64_t)tail_h1 * 4 + 2);
  EXPECT_EQ_INT(bmt_free_blocks(m), fb);
  /* ... and NULL copies is fine now. */
  EXPECT_OK(rkv_blockmgr_append(m, 1, 1, NULL, NULL, NULL));

  EXPECT_OK(rkv_blockmgr_seq_footprint(m, 1, &tot, &ex));
  EXPECT_EQ_INT(tot, 4);
  EXPECT_EQ_INT(ex, 2);
  EXPECT_OK(rkv_blockmgr_seq_free(m, 1));
  rkv_blockmgr_get_stats(m, &st);
  EXPECT_EQ_INT(st.shared_blocks, 0);
  EXPECT_EQ_INT(st.used_blocks, 4);
  EXPECT_OK(rkv_blockmgr_seq_free(m, 2));
  EXPECT_EQ_INT(bmt_free_blocks(m), 16);
  for (int32_t b = 0; b < 16; b++) EXPECT_EQ_INT(bmt_ref(m, b), 0);
  rkv_blockmgr_destroy(m);
}

static void test_fork_boundary_and_chain(void) {
  rkv_blockmgr *m = bmt_make(40, 4, 2, 1, 8);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 8, NULL, NULL, NULL)); /* full tails: no CoW needed */
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 1, 2));
  rkv_block_copy cp[2];
  uint32_t nc = 9;
  EXPECT_OK(rkv_blockmgr_append(m, 2, 1, NULL, NULL, &nc)); /* no shared partial tail */
  EXPECT_EQ_INT(nc, 0);
  EXPECT_OK(rkv_blockmgr_append(m, 1, 2, NULL, cp, &nc));
  EXPECT_EQ_INT(nc, 0);
  /* A chain: 1 -> 3 -> 4 shares the parent's partial tail three ways. */
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 1, 3));
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 3, 4));
  int32_t np;
  int32_t tail = bmt_row(m, 4, 1, 0, &np)[2];
  EXPECT_EQ_INT(bmt_ref(m, tail), 3);
  EXPECT_EQ_INT(bmt_ref(m, bmt_row(m, 4, 1, 0, &np)[0]), 4); /* 1, 2, 3, 4 */
  EXPECT_OK(rkv_blockmgr_append(m, 3, 1, NULL, cp, &nc));
  EXPECT_EQ_INT(nc, 2);
  EXPECT_EQ_INT(bmt_ref(m, tail), 2);
  EXPECT_OK(rkv_blockmgr_append(m, 4, 1, NULL, cp, &nc));
  EXPECT_EQ_INT(nc, 2);
  EXPECT_EQ_INT(bmt_ref(m, tail), 1);
  EXPECT_OK(rkv_blockmgr_append(m, 1, 1, NULL, cp, &nc));
  EXPECT_EQ_INT(nc, 0);

  /* Errors. */
  uint64_t d = bmt_digest(m);
  EXPECT_STATUS(rkv_blockmgr_seq_fork(m, 99, 5), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_seq_fork(m, 1, 2), RKV_ERR_EXISTS);
  EXPECT_STATUS(rkv_blockmgr_seq_fork(m, 1, -2), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_seq_fork(NULL, 1, 5), RKV_ERR_INVALID_ARG);
  EXPECT(bmt_digest(m) == d);
  for (int64_t i = 5; i < 9; i++) EXPECT_OK(rkv_blockmgr_seq_fork(m, 1, i));
  EXPECT_STATUS(rkv_blockmgr_seq_fork(m, 1, 9), RKV_ERR_CAPACITY);
  for (int64_t i = 1; i < 9; i++) EXPECT_OK(rkv_blockmgr_seq_free(m, i));
  EXPECT_EQ_INT(bmt_free_blocks(m), 40);
  rkv_blockmgr_destroy(m);
}

/* CoW copies need blocks too: with too few free, append fails whole. */
static void test_cow_no_blocks(void) {
  rkv_blockmgr *m = bmt_make(7, 4, 1, 3, 4);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 5, NULL, NULL, NULL)); /* 6 blocks */
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 1, 2));
  EXPECT(!rkv_blockmgr_can_append(m, 2, 1)); /* 3 copies, 1 free */
  rkv_block_copy cp[3];
  uint32_t nc = 5;
  uint64_t d = bmt_digest(m);
  EXPECT_STATUS(rkv_blockmgr_append(m, 2, 1, NULL, cp, &nc), RKV_ERR_NO_BLOCKS);
  EXPECT_EQ_INT(nc, 0);
  EXPECT(bmt_digest(m) == d);
  EXPECT_OK(rkv_blockmgr_seq_free(m, 1)); /* child's blocks now private: append in place */
  EXPECT(rkv_blockmgr_can_append(m, 2, 3));
  EXPECT_OK(rkv_blockmgr_append(m, 2, 3, NULL, cp, &nc));
  EXPECT_EQ_INT(nc, 0);
  EXPECT_EQ_INT(bmt_free_blocks(m), 1);
  rkv_blockmgr_destroy(m);
}

/* Random forks / appends / frees with exact free-block accounting against a recount. */
static void test_fork_random(void) {
  rkv_blockmgr *m = bmt_make(300, 4, 2, 2, 16);
  uint64_t rng = 99;
  int64_t live[16];
  int nlive = 0;
  int64_t next = 0;
  for (int it = 0; it < 1500; it++) {
    uint64_t op = rkv_test_rand(&rng) % 10;
    if (nlive == 0 || (op == 0 && nlive < 16)) {
      EXPECT_OK(rkv_blockmgr_seq_create(m, next));
      live[nlive++] = next++;
    } else if (op <= 2 && nlive < 16) {
      int64_t p = live[rkv_test_rand(&rng) % (uint64_t)nlive];
      EXPECT_OK(rkv_blockmgr_seq_fork(m, p, next));
      live[nlive++] = next++;
    } else if (op == 3) {
      int k = (int)(rkv_test_rand(&rng) % (uint64_t)nlive);
      EXPECT_OK(rkv_blockmgr_seq_free(m, live[k]));
      live[k] = live[--nlive];
    } else {
      int64_t s = live[rkv_test_rand(&rng) % (uint64_t)nlive];
      uint32_t n = 1 + (uint32_t)(rkv_test_rand(&rng) % 6);
      uint32_t need = 0, fb = bmt_free_blocks(m);
      EXPECT_OK(rkv_blockmgr_blocks_needed(m, s, n, &need));
      rkv_block_copy cp[4];
      uint32_t nc = 0;
      rkv_status st = rkv_blockmgr_append(m, s, n, NULL, cp, &nc);
      if (need <= fb) {
        EXPECT_OK(st);
        EXPECT_EQ_INT(bmt_free_blocks(m), fb - need);
        EXPECT(nc <= 4);
      } else {
        EXPECT_STATUS(st, RKV_ERR_NO_BLOCKS);
        int k = (int)(rkv_test_rand(&rng) % (uint64_t)nlive);
        EXPECT_OK(rkv_blockmgr_seq_free(m, live[k]));
        live[k] = live[--nlive];
      }
    }
  }
  EXPECT_OK(rkv_blockmgr_check(m));
  while (nlive) EXPECT_OK(rkv_blockmgr_seq_free(m, live[--nlive]));
  EXPECT_EQ_INT(bmt_free_blocks(m), 300);
  rkv_blockmgr_destroy(m);
}

int main(void) {
  test_fork_shares();
  test_fork_boundary_and_chain();
  test_cow_no_blocks();
  test_fork_random();
  return rkv_test_finish();
}
