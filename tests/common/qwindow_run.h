/* The query window's batched push against its per-sequence push, on any backend (the runtime
 * unit test runs it in host memory, on the CPU backend and on the emulated device; the GPU
 * test on CUDA): a randomised run of starts, forks, drops and steps mixing decodes and prefill
 * chunks (more rows than the window, so rings wrap), after every step the same rows as a host
 * window fed one sequence at a time for every live sequence and layer, storage growth moving
 * live rings, rkv_qwindow_check after every operation, and no sync of the window's own while
 * the caller syncs each step. Include after rkv_test.h. */
#ifndef RKV_TEST_QWINDOW_RUN_H
#define RKV_TEST_QWINDOW_RUN_H

#include <rkv/buffer.h>
#include <rkv/qwindow.h>

#include "rkv_test.h"

enum { L = 3, H = 2, D = 4, W = 5, MS = 24, IDS = 40, ROW = H * D };

static inline rkv_qwindow *qwr_make(rkv_backend *be, uint32_t max_seqs) {
  rkv_qwindow_config c = RKV_QWINDOW_CONFIG_INIT;
  c.num_layers = L, c.num_q_heads = H, c.head_dim = D, c.window = W, c.max_seqs = max_seqs;
  c.backend = be;
  rkv_qwindow *w = NULL;
  EXPECT_OK(rkv_qwindow_create(&c, &w));
  return w;
}

/* Every live sequence's every layer reads the same from both windows. */
static inline int qwr_same(rkv_qwindow *a, rkv_qwindow *ref, const int *live) {
  int bad = 0;
  float x[H * W * D], y[H * W * D];
  for (int id = 0; id < IDS; id++) {
    if (!live[id]) continue;
    for (uint32_t l = 0; l < L; l++) {
      uint32_t ca = 99, cr = 98;
      bad += rkv_qwindow_get(a, id, l, x, &ca) != RKV_OK;
      bad += rkv_qwindow_get(ref, id, l, y, &cr) != RKV_OK;
      bad += ca != cr;
      for (uint32_t h = 0; h < H && ca == cr; h++)
        bad += memcmp(x + (size_t)h * W * D, y + (size_t)h * W * D, cr * D * sizeof(float)) != 0;
    }
  }
  return bad;
}

/* One step: the live sequences in a random order, each with 1 (decode) or up to 2W+1 rows. */
static inline int qwr_step(rkv_qwindow *w, rkv_qwindow *ref, rkv_backend *be, rkv_buffer *qdev,
                           const int *live, uint64_t *rng, uint32_t *uploads_syncs) {
  int64_t ids[IDS];
  int32_t indptr[IDS + 1];
  uint32_t n = 0;
  for (int id = 0; id < IDS; id++)
    if (live[id] && rkv_test_rand(rng) % 4) ids[n++] = id;
  for (uint32_t i = n; i > 1; i--) { /* shuffle: plan order is not id order */
    const uint32_t j = (uint32_t)(rkv_test_rand(rng) % i);
    const int64_t t = ids[i - 1];
    ids[i - 1] = ids[j], ids[j] = t;
  }
  indptr[0] = 0;
  for (uint32_t b = 0; b < n; b++)
    indptr[b + 1] =
        indptr[b] + (rkv_test_rand(rng) % 3 ? 1 : 1 + (int32_t)(rkv_test_rand(rng) % (2 * W + 1)));
  const size_t rows = (size_t)indptr[n];
  float *q = malloc((rows ? rows : 1) * L * ROW * sizeof(float));
  for (size_t i = 0; i < rows * L * ROW; i++) q[i] = (float)rkv_test_uniform(rng);
  const uint64_t syncs = be ? rkv_backend_sync_count(be) : 0;
  int bad = rkv_qwindow_plan(w, ids, indptr, n) != RKV_OK;
  for (uint32_t l = 0; l < L; l++) {
    const float *ql = q + (size_t)l * rows * ROW, *arg = ql;
    if (qdev && rows) {
      EXPECT_OK(rkv_buffer_reserve(qdev, (size_t)L * rows * ROW * sizeof(float)));
      EXPECT_OK(rkv_buffer_upload(qdev, (size_t)l * rows * ROW * sizeof(float), ql,
                                  rows * ROW * sizeof(float)));
      arg = (const float *)rkv_buffer_ptr(qdev) + (size_t)l * rows * ROW;
    }
    bad += rkv_qwindow_push_planned(w, l, arg) != RKV_OK;
    for (uint32_t b = 0; b < n; b++)
      bad += rkv_qwindow_push(ref, ids[b], l, ql + (size_t)indptr[b] * ROW,
                              (uint32_t)(indptr[b + 1] - indptr[b])) != RKV_OK;
  }
  if (be) {
    /* the plan and the pushes never wait: the step's one sync is the engine's */
    *uploads_syncs += rkv_backend_sync_count(be) != syncs;
    EXPECT_OK(rkv_backend_sync(be));
  }
  free(q);
  return bad;
}

/* The run on backend be (NULL: host memory); `what` names it in failures. */
static inline void qwr_random_run(rkv_backend *be, uint64_t seed, const char *what) {
  rkv_qwindow *w = qwr_make(be, MS), *ref = qwr_make(NULL, MS);
  if (!w || !ref) return;
  rkv_buffer *qdev = NULL; /* the query rows where the window's kernels read them */
  if (be && !rkv_backend_device_is_host(be))
    EXPECT_OK(rkv_buffer_create(be, RKV_BUFFER_DEVICE, 0, &qdev));
  int live[IDS] = {0}, nlive = 0, bad = 0, check_bad = 0;
  uint32_t waits = 0;
  uint64_t rng = seed;
  for (int op = 0; op < 700; op++) {
    const int id = (int)(rkv_test_rand(&rng) % IDS), kind = (int)(rkv_test_rand(&rng) % 10);
    if (kind < 2 && !live[id] && nlive < MS) {
      bad += rkv_qwindow_seq_add(w, id) != RKV_OK;
      bad += rkv_qwindow_seq_add(ref, id) != RKV_OK;
      live[id] = 1, nlive++;
    } else if (kind < 3 && live[id]) {
      bad += rkv_qwindow_seq_remove(w, id) != RKV_OK;
      bad += rkv_qwindow_seq_remove(ref, id) != RKV_OK;
      live[id] = 0, nlive--;
    } else if (kind < 4 && live[id] && nlive < MS) {
      const int child = (int)(rkv_test_rand(&rng) % IDS);
      if (live[child]) continue;
      bad += rkv_qwindow_seq_fork(w, id, child) != RKV_OK;
      bad += rkv_qwindow_seq_fork(ref, id, child) != RKV_OK;
      live[child] = 1, nlive++;
    } else {
      bad += qwr_step(w, ref, be, qdev, live, &rng, &waits);
      bad += qwr_same(w, ref, live);
    }
    check_bad += rkv_qwindow_check(w) != RKV_OK;
  }
  if (bad || check_bad || waits)
    RKV_TEST_FAIL_("%s: %d mismatches, %d failed checks, %u steps waited (%s)", what, bad,
                   check_bad, waits, rkv_qwindow_last_error(w));
  rkv_buffer_destroy(qdev);
  rkv_qwindow_destroy(w);
  rkv_qwindow_destroy(ref);
}

/* A plan whose sequences bring no rows pushes nothing and needs no q (NULL), on every backend
 * alike: no launch on a device. */
static inline void qwr_zero_rows(rkv_backend *be, const char *what) {
  rkv_qwindow *w = qwr_make(be, 4);
  if (!w) return;
  const int64_t ids[2] = {1, 2};
  const int32_t ip[3] = {0, 0, 0};
  int bad = rkv_qwindow_seq_add(w, 1) != RKV_OK;
  bad += rkv_qwindow_seq_add(w, 2) != RKV_OK;
  bad += rkv_qwindow_plan(w, ids, ip, 2) != RKV_OK;
  for (uint32_t l = 0; l < L; l++) bad += rkv_qwindow_push_planned(w, l, NULL) != RKV_OK;
  float out[H * W * D];
  for (uint32_t l = 0; l < L; l++) {
    uint32_t c = 9;
    bad += rkv_qwindow_get(w, 1, l, out, &c) != RKV_OK || c != 0;
  }
  bad += rkv_qwindow_check(w) != RKV_OK;
  if (bad)
    RKV_TEST_FAIL_("%s: a zero-row plan: %d failures (%s)", what, bad, rkv_qwindow_last_error(w));
  rkv_qwindow_destroy(w);
}

#endif /* RKV_TEST_QWINDOW_RUN_H */
