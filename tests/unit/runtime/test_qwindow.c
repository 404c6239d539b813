/* Query window: ring semantics (oldest -> newest, only the last `window` rows), per-layer
 * independence, fork copies, remove / re-add, capacity and error statuses, and a randomised
 * run against a trivially correct model (every pushed row kept in a flat history) with
 * rkv_qwindow_check after every operation. */
#include <rkv/qwindow.h>

#include "rkv_test.h"

enum { L = 3, H = 2, D = 4, W = 5 };

/* Value of element (token t, head h, dim i) of sequence s, layer l: unique and exact. */
static float val(int64_t s, uint32_t l, uint32_t t, uint32_t h, uint32_t i) {
  return (float)(s * 100000 + l * 10000 + t * 10 + h * 3 + i) * 0.5f;
}

static void make_rows(int64_t s, uint32_t l, uint32_t t0, uint32_t n, float *q) {
  for (uint32_t t = 0; t < n; t++)
    for (uint32_t h = 0; h < H; h++)
      for (uint32_t i = 0; i < D; i++) q[((size_t)t * H + h) * D + i] = val(s, l, t0 + t, h, i);
}

/* Expects the window of (s, l) to hold tokens [total - min(total, W), total) of the values of
 * sequence `from` (a fork holds its parent's rows). */
static void expect_window_from(rkv_qwindow *w, int64_t s, int64_t from, uint32_t l,
                               uint32_t total) {
  float out[H * W * D];
  uint32_t count = 99;
  EXPECT_OK(rkv_qwindow_get(w, s, l, out, &count));
  uint32_t want = total < W ? total : W;
  EXPECT_EQ_INT(count, want);
  int bad = 0;
  for (uint32_t r = 0; r < count; r++)
    for (uint32_t h = 0; h < H; h++)
      for (uint32_t i = 0; i < D; i++)
        bad += out[((size_t)h * W + r) * D + i] != val(from, l, total - count + r, h, i);
  EXPECT_EQ_INT(bad, 0);
}

static void expect_window(rkv_qwindow *w, int64_t s, uint32_t l, uint32_t total) {
  expect_window_from(w, s, s, l, total);
}

static void test_basic(void) {
  rkv_qwindow_config cfg = RKV_QWINDOW_CONFIG_INIT;
  cfg.num_layers = L, cfg.num_q_heads = H, cfg.head_dim = D, cfg.window = W, cfg.max_seqs = 3;
  rkv_qwindow *w = NULL;
  EXPECT_OK(rkv_qwindow_create(&cfg, &w));
  if (!w) return;
  EXPECT_OK(rkv_qwindow_seq_add(w, 7));
  EXPECT_STATUS(rkv_qwindow_seq_add(w, 7), RKV_ERR_EXISTS);
  EXPECT_STATUS(rkv_qwindow_seq_add(w, -1), RKV_ERR_INVALID_ARG);
  expect_window(w, 7, 0, 0);
  float q[16 * H * D];
  /* Prefill of 3 rows, then 1-row decode steps, then a push longer than the window. */
  make_rows(7, 0, 0, 3, q);
  EXPECT_OK(rkv_qwindow_push(w, 7, 0, q, 3));
  expect_window(w, 7, 0, 3);
  uint32_t t = 3;
  for (int step = 0; step < 4; step++, t++) {
    make_rows(7, 0, t, 1, q);
    EXPECT_OK(rkv_qwindow_push(w, 7, 0, q, 1));
    expect_window(w, 7, 0, t + 1);
  }
  make_rows(7, 0, t, 13, q);
  EXPECT_OK(rkv_qwindow_push(w, 7, 0, q, 13));
  t += 13;
  expect_window(w, 7, 0, t);
  /* Other layers untouched. */
  expect_window(w, 7, 1, 0);
  make_rows(7, 2, 0, 6, q);
  EXPECT_OK(rkv_qwindow_push(w, 7, 2, q, 6));
  expect_window(w, 7, 2, 6);
  expect_window(w, 7, 0, t);
  /* Fork copies; the child then diverges. */
  EXPECT_OK(rkv_qwindow_seq_fork(w, 7, 9));
  EXPECT_STATUS(rkv_qwindow_seq_fork(w, 7, 9), RKV_ERR_EXISTS);
  EXPECT_STATUS(rkv_qwindow_seq_fork(w, 8, 10), RKV_ERR_NOT_FOUND);
  float out[H * W * D];
  uint32_t count = 0;
  EXPECT_OK(rkv_qwindow_get(w, 9, 0, out, &count));
  EXPECT_EQ_INT(count, W);
  EXPECT(out[0] == val(7, 0, t - W, 0, 0));
  EXPECT_OK(rkv_qwindow_seq_add(w, 11));
  EXPECT_STATUS(rkv_qwindow_seq_add(w, 12), RKV_ERR_CAPACITY);
  EXPECT_OK(rkv_qwindow_check(w));
  /* Errors. */
  EXPECT_STATUS(rkv_qwindow_push(w, 7, L, q, 1), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_qwindow_push(w, 7, 0, q, 0), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_qwindow_push(w, 8, 0, q, 1), RKV_ERR_NOT_FOUND);
  EXPECT(rkv_qwindow_last_error(w)[0] != '\0');
  EXPECT_STATUS(rkv_qwindow_get(w, 8, 0, out, &count), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_qwindow_seq_remove(w, 8), RKV_ERR_NOT_FOUND);
  /* Remove and re-add starts empty. */
  EXPECT_OK(rkv_qwindow_seq_remove(w, 7));
  EXPECT_OK(rkv_qwindow_check(w));
  EXPECT_OK(rkv_qwindow_seq_add(w, 7));
  expect_window(w, 7, 0, 0);
  expect_window_from(w, 9, 7, 0, t); /* the fork survived its parent */
  EXPECT_OK(rkv_qwindow_check(w));
  rkv_qwindow_destroy(w);

  /* Bad configs. */
  rkv_qwindow_config bad = cfg;
  bad.window = 0;
  EXPECT_STATUS(rkv_qwindow_create(&bad, &w), RKV_ERR_INVALID_ARG);
  EXPECT(w == NULL);
  bad = cfg;
  bad.struct_size = 3;
  EXPECT_STATUS(rkv_qwindow_create(&bad, &w), RKV_ERR_INVALID_ARG);
  rkv_qwindow_destroy(NULL);
}

/* Random adds / removes / forks / pushes over many ids (hash collisions and backward-shift
 * deletion) against a model that remembers how many rows each (seq, layer) got. */
static void test_random(void) {
  enum { MS = 40, IDS = 120, OPS = 6000 };
  rkv_qwindow_config cfg = RKV_QWINDOW_CONFIG_INIT;
  cfg.num_layers = L, cfg.num_q_heads = H, cfg.head_dim = D, cfg.window = W, cfg.max_seqs = MS;
  rkv_qwindow *w = NULL;
  EXPECT_OK(rkv_qwindow_create(&cfg, &w));
  if (!w) return;
  int live[IDS] = {0};
  uint32_t total[IDS][L] = {{0}};
  int64_t origin[IDS][L]; /* whose values the ring holds (forks copy the parent's) */
  uint32_t nlive = 0;
  uint64_t rng = 42;
  int bad = 0, check_bad = 0;
  float q[8 * H * D];
  for (int op = 0; op < OPS; op++) {
    int id = (int)(rkv_test_rand(&rng) % IDS);
    int kind = (int)(rkv_test_rand(&rng) % 10);
    if (kind < 2) {
      rkv_status s = rkv_qwindow_seq_add(w, id);
      rkv_status want = live[id] ? RKV_ERR_EXISTS : nlive == MS ? RKV_ERR_CAPACITY : RKV_OK;
      bad += s != want;
      if (s == RKV_OK) {
        live[id] = 1, nlive++;
        for (int l = 0; l < L; l++) total[id][l] = 0, origin[id][l] = id;
      }
    } else if (kind < 4) {
      rkv_status s = rkv_qwindow_seq_remove(w, id);
      bad += s != (live[id] ? RKV_OK : RKV_ERR_NOT_FOUND);
      if (s == RKV_OK) live[id] = 0, nlive--;
    } else if (kind < 5) {
      int child = (int)(rkv_test_rand(&rng) % IDS);
      rkv_status s = rkv_qwindow_seq_fork(w, id, child);
      rkv_status want = !live[id]     ? RKV_ERR_NOT_FOUND
                        : live[child] ? RKV_ERR_EXISTS
                        : nlive == MS ? RKV_ERR_CAPACITY
                                      : RKV_OK;
      bad += s != want;
      if (s == RKV_OK) {
        live[child] = 1, nlive++;
        for (int l = 0; l < L; l++)
          total[child][l] = total[id][l], origin[child][l] = origin[id][l];
      }
    } else if (live[id]) {
      uint32_t l = (uint32_t)(rkv_test_rand(&rng) % L);
      uint32_t n = 1 + (uint32_t)(rkv_test_rand(&rng) % 8);
      if (origin[id][l] != id && total[id][l] > 0) {
        /* A forked ring holds the parent's values; push enough to replace them all. */
        n = W;
      }
      make_rows(id, l, total[id][l], n, q);
      bad += rkv_qwindow_push(w, id, l, q, n) != RKV_OK;
      total[id][l] += n;
      origin[id][l] = id;
      expect_window(w, id, l, total[id][l]);
    }
    check_bad += rkv_qwindow_check(w) != RKV_OK;
  }
  EXPECT_EQ_INT(bad, 0);
  EXPECT_EQ_INT(check_bad, 0);
  rkv_qwindow_destroy(w);
}

int main(void) {
  test_basic();
  test_random();
  return rkv_test_finish();
}
