/* rkv_blockmgr_free_blocks (O(1)) and rkv_blockmgr_sync_rows: a caller's padded mirror kept current
 * by deltas equals the manager's rows after every random op (append, fork + CoW, compact,
 * compact_uniform, free), and steps between block boundaries write no row entry. */
#include <rkv/blockmgr.h>

#include "bm_test_util.h"

#define L 2
#define H 2
#define S (L * H)
#define STRIDE 64
#define MAXSEQ 8

typedef struct mirror {
  bool live;
  int32_t rows[S * STRIDE];
  int32_t lens[S];
} mirror;

static int mirror_matches(const rkv_blockmgr *m, int64_t seq, const mirror *mr) {
  for (uint32_t s = 0; s < S; s++) {
    const int32_t *row = NULL;
    int32_t nb = 0, len = 0;
    if (rkv_blockmgr_stream_blocks(m, seq, s / H, s % H, &row, &nb) != RKV_OK) return 0;
    rkv_blockmgr_stream_len(m, seq, s / H, s % H, &len);
    if (mr->lens[s] != len) return 0;
    for (int32_t j = 0; j < nb; j++)
      if (mr->rows[s * STRIDE + j] != row[j]) return 0;
  }
  return 1;
}

/* Without check_every_op nothing reads the lengths between appends, so a step's tokens stay
 * pending on the sequence: the lengths sync_rows reports count them, and reading them changes
 * nothing the next sync reports. */
static void test_pending_lengths(void) {
  rkv_blockmgr *m = bmt_make_opt(200, 8, L, H, MAXSEQ, false);
  static mirror mr;
  int64_t slots[S];
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 2, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 1, NULL, NULL, NULL));  /* pending */
  EXPECT_OK(rkv_blockmgr_append(m, 1, 1, slots, NULL, NULL)); /* pending, with slots */
  EXPECT_OK(rkv_blockmgr_sync_rows(m, 1, true, mr.rows, STRIDE, mr.lens, NULL));
  for (uint32_t s = 0; s < S; s++) EXPECT_EQ_INT(mr.lens[s], 4);
  EXPECT(mirror_matches(m, 1, &mr));
  for (int t = 0; t < 5; t++) /* across a block boundary (8), still without a read */
    EXPECT_OK(rkv_blockmgr_append(m, 1, 1, t % 2 ? slots : NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_sync_rows(m, 1, false, mr.rows, STRIDE, mr.lens, NULL));
  for (uint32_t s = 0; s < S; s++) EXPECT_EQ_INT(mr.lens[s], 9);
  EXPECT(mirror_matches(m, 1, &mr));
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
}

static void test_quiet_steps(void) {
  rkv_blockmgr *m = bmt_make(200, 4, L, H, MAXSEQ);
  static mirror mr;
  uint32_t w = 99;
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 5, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_sync_rows(m, 1, true, mr.rows, STRIDE, mr.lens, &w));
  EXPECT_EQ_INT(w, 2 * S);
  EXPECT_OK(rkv_blockmgr_append(m, 1, 1, NULL, NULL, NULL)); /* 6 tokens: same blocks */
  EXPECT_OK(rkv_blockmgr_sync_rows(m, 1, false, mr.rows, STRIDE, mr.lens, &w));
  EXPECT_EQ_INT(w, 0);
  EXPECT_EQ_INT(mr.lens[3], 6);
  EXPECT_OK(rkv_blockmgr_append(m, 1, 3, NULL, NULL, NULL)); /* 9 tokens: a new block each */
  EXPECT_OK(rkv_blockmgr_sync_rows(m, 1, false, mr.rows, STRIDE, mr.lens, &w));
  EXPECT_EQ_INT(w, S);
  EXPECT(mirror_matches(m, 1, &mr));
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(m, &st);
  EXPECT_EQ_INT(rkv_blockmgr_free_blocks(m), st.free_blocks);
  EXPECT_EQ_INT(rkv_blockmgr_free_blocks(m), 200 - 3 * S);
  EXPECT_EQ_INT(rkv_blockmgr_free_blocks(NULL), 0);
  EXPECT_STATUS(rkv_blockmgr_sync_rows(m, 1, false, mr.rows, 2, mr.lens, &w), RKV_ERR_CAPACITY);
  EXPECT_STATUS(rkv_blockmgr_sync_rows(m, 7, false, mr.rows, STRIDE, mr.lens, &w),
                RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_sync_rows(m, 1, false, NULL, STRIDE, mr.lens, &w),
                RKV_ERR_INVALID_ARG);
  rkv_blockmgr_destroy(m);
}

static void test_random_ops(void) {
  rkv_blockmgr *m = bmt_make(400, 4, L, H, MAXSEQ);
  static mirror mr[MAXSEQ];
  uint64_t rng = 42;
  rkv_block_copy copies[S];
  static rkv_slot_move moves[S * STRIDE * 4];
  int32_t pos[S][STRIDE * 4];
  int mismatches = 0, compared = 0, appended = 0;
  for (int op = 0; op < 20000; op++) {
    int64_t id = (int64_t)(rkv_test_rand(&rng) % MAXSEQ);
    uint32_t kind = (uint32_t)(rkv_test_rand(&rng) % 10);
    if (!mr[id].live) {
      if (kind < 5 && rkv_blockmgr_seq_create(m, id) == RKV_OK) {
        mr[id].live = true;
        rkv_blockmgr_sync_rows(m, id, true, mr[id].rows, STRIDE, mr[id].lens, NULL);
      }
      continue;
    }
    if (kind < 5) {
      uint32_t nc = 0;
      appended += rkv_blockmgr_append(m, id, 1 + (uint32_t)(rkv_test_rand(&rng) % 6), NULL, copies,
                                      &nc) == RKV_OK;
    } else if (kind == 5) {
      int64_t child = (int64_t)(rkv_test_rand(&rng) % MAXSEQ);
      if (!mr[child].live && rkv_blockmgr_seq_fork(m, id, child) == RKV_OK) {
        mr[child].live = true;
        rkv_blockmgr_sync_rows(m, child, true, mr[child].rows, STRIDE, mr[child].lens, NULL);
      }
    } else if (kind == 6) {
      rkv_keep_list lists[S];
      uint32_t nl = 0;
      for (uint32_t s = 0; s < S; s++) {
        int32_t len = 0;
        rkv_blockmgr_stream_len(m, id, s / H, s % H, &len);
        if (rkv_test_rand(&rng) % 2) continue;
        uint32_t k = 0;
        for (int32_t p = 0; p < len; p++)
          if (rkv_test_rand(&rng) % 3) pos[s][k++] = p;
        lists[nl++] = (rkv_keep_list){s / H, s % H, pos[s], k};
      }
      uint32_t nm = 0;
      if (rkv_blockmgr_compact(m, id, lists, nl, moves, S * STRIDE * 4, &nm) != RKV_OK) continue;
    } else if (kind == 7) {
      static rkv_compact_map maps[S];
      static int32_t old[S * STRIDE];
      uint32_t nm = 0, no = 0;
      rkv_blockmgr_compact_uniform(m, id, -1, 1 + (int32_t)(rkv_test_rand(&rng) % 20), maps, S, &nm,
                                   old, S * STRIDE, &no);
    } else if (kind == 8) {
      EXPECT_OK(rkv_blockmgr_seq_free(m, id));
      mr[id].live = false;
      continue;
    }
    /* Sync a random subset (others accumulate changes across several ops). */
    for (int64_t q = 0; q < MAXSEQ; q++) {
      if (!mr[q].live || rkv_test_rand(&rng) % 2) continue;
      if (rkv_blockmgr_sync_rows(m, q, false, mr[q].rows, STRIDE, mr[q].lens, NULL) != RKV_OK) {
        mismatches++;
        continue;
      }
      mismatches += !mirror_matches(m, q, &mr[q]);
      compared++;
    }
  }
  EXPECT_EQ_INT(mismatches, 0);
  EXPECT(compared > 20000);
  EXPECT(appended > 5000);
  fprintf(stderr, "compared %d mirrors, %d appends\n", compared, appended);
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
}

int main(void) {
  test_pending_lengths();
  test_quiet_steps();
  test_random_ops();
  return rkv_test_finish();
}
