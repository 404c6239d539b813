/* rkv_blockmgr_check can fail: each test corrupts one piece of the manager's private state
 * (through the private header; tests.cmake adds blockmgr/src and runtime/internal to this test's
 * include path), expects RKV_ERR_CORRUPT with a message naming the violation, restores the
 * state and expects RKV_OK again. */
#include "blockmgr_impl.h"

#include "bm_test_util.h"

static rkv_blockmgr *make_state(void) {
  /* Two sequences sharing blocks (fork, partial tails), one private, a compacted stream. */
  rkv_blockmgr *m = bmt_make(64, 4, 2, 2, 8);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 10, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 1, 2));
  EXPECT_OK(rkv_blockmgr_seq_create(m, 3));
  EXPECT_OK(rkv_blockmgr_append(m, 3, 7, NULL, NULL, NULL));
  int32_t pos[] = {1, 4, 6};
  rkv_keep_list kl = {1, 0, pos, 3};
  rkv_slot_move mv[3];
  uint32_t nm;
  EXPECT_OK(rkv_blockmgr_compact(m, 3, &kl, 1, mv, 3, &nm));
  EXPECT_OK(rkv_blockmgr_check(m));
  return m;
}

static void expect_corrupt(rkv_blockmgr *m, const char *what) {
  rkv_status st = rkv_blockmgr_check(m);
  EXPECT_STATUS(st, RKV_ERR_CORRUPT);
  if (st == RKV_ERR_CORRUPT && !strstr(rkv_blockmgr_last_error(m), what)) {
    fprintf(stderr, "FAIL: \"%s\" does not mention \"%s\"\n", rkv_blockmgr_last_error(m), what);
    rkv_test_failed_++;
  }
}

static bm_seq *seq_of(rkv_blockmgr *m, int64_t id) {
  return &m->seqs[bm_find(m, id)];
}

int main(void) {
  rkv_blockmgr *m = make_state();
  bm_seq *q1 = seq_of(m, 1), *q3 = seq_of(m, 3);
  int32_t b = q1->tab[0]; /* shared by seqs 1 and 2 */

  m->ref[b]++;
  expect_corrupt(m, "table references");
  m->ref[b]--;
  EXPECT_OK(rkv_blockmgr_check(m));

  int32_t fb = m->free_ids[m->free_top - 1];
  m->ref[fb] = 1;
  expect_corrupt(m, "free block");
  m->ref[fb] = 0;

  int32_t f0 = m->free_ids[0];
  m->free_ids[0] = m->free_ids[1];
  expect_corrupt(m, "twice in the free list");
  m->free_ids[0] = f0;

  m->free_top--; /* a block falls off the free list: leaked */
  expect_corrupt(m, "neither free nor referenced");
  m->free_top++;
  EXPECT_OK(rkv_blockmgr_check(m));

  /* Seq 3 stream 1 points at a block of seq 1 stream 0. */
  int32_t *row31 = q3->tab + (size_t)1 * (size_t)q3->cap;
  int32_t old = row31[0];
  row31[0] = q1->tab[0];
  expect_corrupt(m, "different layer/head");
  row31[0] = old;

  /* The same block twice in one stream. */
  int32_t *row1 = q1->tab;
  old = row1[1];
  row1[1] = row1[0];
  expect_corrupt(m, "twice in seq");
  row1[1] = old;
  EXPECT_OK(rkv_blockmgr_check(m));

  q3->len[0] += 4;
  expect_corrupt(m, "blocks for");
  q3->len[0] -= 4;

  q3->room++;
  expect_corrupt(m, "room");
  q3->room--;

  q3->tbase[2] += 1;
  expect_corrupt(m, "tail base");
  q3->tbase[2] -= 1;

  q1->maybe_shared_tail = false; /* its tails are shared partial blocks */
  expect_corrupt(m, "not flagged");
  q1->maybe_shared_tail = true;

  m->num_seqs++;
  expect_corrupt(m, "num_seqs");
  m->num_seqs--;

  m->tokens++;
  expect_corrupt(m, "token total");
  m->tokens--;

  m->shared_count++;
  expect_corrupt(m, "shared_count");
  m->shared_count--;
  EXPECT_OK(rkv_blockmgr_check(m));

  /* Id map: hide seq 3's entry. */
  uint32_t hi = 0;
  while (m->hmap[hi] != bm_find(m, 3)) hi++;
  int32_t hs = m->hmap[hi];
  m->hmap[hi] = -1;
  expect_corrupt(m, "not reachable");
  m->hmap[hi] = hs;

  uint32_t top = m->free_slot_top;
  m->free_slots[top] = m->free_slots[top - 1];
  m->free_slot_top++;
  expect_corrupt(m, "free slots");
  m->free_slot_top--;
  EXPECT_OK(rkv_blockmgr_check(m));

  /* With check_every_op, a mutation on corrupt state reports CORRUPT. */
  m->tokens += 5;
  EXPECT_STATUS(rkv_blockmgr_seq_create(m, 9), RKV_ERR_CORRUPT);
  m->tokens -= 5;
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
  return rkv_test_finish();
}
