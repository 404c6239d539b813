/* rkv_comm kind `local` (runtime/src/comm_local.c): ranks that are threads of one process, the
 * transport behind `rkv sim --tp N` without mpirun. Checks the same contract the MPI tests
 * check: agreement and the MIN over 2000 step syncs, MAX/SUM/all-gather, a divergence reported
 * on every rank naming the culprit (handle stays usable; also when the culprit can no longer
 * allocate), a silent peer caught by the
 * deadline, an abort and a mismatched collective failing the others at once, and the
 * configuration errors. Threads record results; the main thread checks them (EXPECT is not
 * thread-safe). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <rkv/comm.h>

#include "rkv_test.h"

#define MAXR 4

typedef enum scenario { AGREE, DIVERGE, SILENT, ABORT, MISMATCH } scenario;

typedef struct rank_ctx {
  rkv_comm_local_group *g;
  int32_t rank, size;
  scenario sc;
  double timeout_s;
  bool starve; /* its allocator refuses everything once the handle exists */
  /* results */
  rkv_status create_st, st, after_st;
  uint64_t min_errors, syncs, reduce_errors;
  double seconds;
  char err[256];
} rank_ctx;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* local free of rank r at step s: the last rank is periodically the smallest */
static uint64_t local_free(int32_t r, int32_t size, uint64_t s) {
  if (r == size - 1 && s % 7 == 3) return 3;
  return 1000 + (uint64_t)r * 10 + s % 5;
}

/* An allocator that fails once *ctx is set (the handle is created). */
static void *starve_alloc(void *ctx, size_t size, size_t align) {
  (void)align;
  return *(bool *)ctx ? NULL : malloc(size);
}
static void starve_free(void *ctx, void *p, size_t size) {
  (void)ctx, (void)size;
  free(p);
}

static void *rank_main(void *arg) {
  rank_ctx *x = arg;
  bool starved = false;
  const rkv_allocator starving = {starve_alloc, starve_free, &starved};
  rkv_comm_config cfg = RKV_COMM_CONFIG_INIT;
  cfg.kind = RKV_COMM_LOCAL;
  cfg.local_group = x->g;
  cfg.rank = x->rank;
  cfg.timeout_s = x->timeout_s;
  if (x->starve) cfg.allocator = &starving;
  rkv_comm *c = NULL;
  x->create_st = rkv_comm_create(&cfg, &c, x->err, sizeof x->err);
  if (x->create_st != RKV_OK) return NULL;
  starved = true;
  double t0 = now();
  x->st = RKV_OK;
  switch (x->sc) {
    case AGREE:
      for (uint64_t s = 0; s < 2000 && x->st == RKV_OK; s++) {
        uint64_t g = 0, want = UINT64_MAX;
        for (int32_t r = 0; r < x->size; r++) {
          uint64_t f = local_free(r, x->size, s);
          want = f < want ? f : want;
        }
        x->st = rkv_comm_step_sync(c, s, s * 0x9E3779B97F4A7C15ull, local_free(x->rank, x->size, s),
                                   &g);
        x->syncs++;
        if (g != want) x->min_errors++;
      }
      if (x->st == RKV_OK) {
        uint64_t v[3] = {(uint64_t)x->rank + 1, 7, 100 - (uint64_t)x->rank}, r[3];
        uint64_t all[MAXR * 2], mine[2] = {(uint64_t)x->rank, 42};
        x->st = rkv_comm_allreduce_u64(c, RKV_COMM_OP_SUM, v, r, 3);
        uint64_t sum = (uint64_t)x->size * (x->size + 1) / 2;
        if (r[0] != sum || r[1] != 7 * (uint64_t)x->size) x->reduce_errors++;
        if (x->st == RKV_OK) x->st = rkv_comm_allreduce_u64(c, RKV_COMM_OP_MAX, v, r, 3);
        if (r[0] != (uint64_t)x->size || r[2] != 100) x->reduce_errors++;
        if (x->st == RKV_OK) x->st = rkv_comm_allreduce_u64(c, RKV_COMM_OP_MIN, v, r, 3);
        if (r[0] != 1 || r[2] != 100 - (uint64_t)(x->size - 1)) x->reduce_errors++;
        if (x->st == RKV_OK) x->st = rkv_comm_allgather_u64(c, mine, all, 2);
        for (int32_t q = 0; q < x->size; q++)
          if (all[2 * q] != (uint64_t)q || all[2 * q + 1] != 42) x->reduce_errors++;
      }
      break;
    case DIVERGE:
      for (uint64_t s = 0; s < 200 && x->st == RKV_OK; s++) {
        uint64_t h = s * 31 + (x->rank == 2 && s == 150 ? 1 : 0);
        x->st = rkv_comm_step_sync(c, s, h, 10, NULL);
        x->syncs++;
      }
      snprintf(x->err, sizeof x->err, "%s", rkv_comm_last_error(c));
      /* the transport worked: the handle must still be usable */
      x->after_st = rkv_comm_barrier(c);
      break;
    case SILENT:
      /* the last rank never takes part: the others must fail by the deadline */
      if (x->rank != x->size - 1) {
        x->st = rkv_comm_step_sync(c, 0, 1, 5, NULL);
        snprintf(x->err, sizeof x->err, "%s", rkv_comm_last_error(c));
        x->after_st = rkv_comm_step_sync(c, 1, 1, 5, NULL);
      }
      break;
    case ABORT:
      if (x->rank == 0) {
        struct timespec ts = {0, 100000000L};
        nanosleep(&ts, NULL);
        rkv_comm_abort(c, 5);
      } else {
        x->st = rkv_comm_barrier(c);
        snprintf(x->err, sizeof x->err, "%s", rkv_comm_last_error(c));
      }
      break;
    case MISMATCH: {
      uint64_t v[3] = {1, 2, 3}, r[MAXR * 3];
      x->st = x->rank == 0 ? rkv_comm_allgather_u64(c, v, r, 3)
                           : rkv_comm_allreduce_u64(c, RKV_COMM_OP_SUM, v, r, 3);
      snprintf(x->err, sizeof x->err, "%s", rkv_comm_last_error(c));
      break;
    }
  }
  x->seconds = now() - t0;
  rkv_comm_destroy(c);
  return NULL;
}

static void run_starving(scenario sc, int32_t size, double timeout_s, int32_t starve, rank_ctx *x) {
  rkv_comm_local_group *g = NULL;
  EXPECT_OK(rkv_comm_local_group_create(size, NULL, &g));
  if (!g) return;
  pthread_t t[MAXR];
  for (int32_t r = 0; r < size; r++) {
    memset(&x[r], 0, sizeof x[r]);
    x[r].g = g;
    x[r].rank = r;
    x[r].size = size;
    x[r].sc = sc;
    x[r].timeout_s = timeout_s;
    x[r].starve = r == starve;
    EXPECT(pthread_create(&t[r], NULL, rank_main, &x[r]) == 0);
  }
  for (int32_t r = 0; r < size; r++) pthread_join(t[r], NULL);
  rkv_comm_local_group_destroy(g);
}

static void run(scenario sc, int32_t size, double timeout_s, rank_ctx *x) {
  run_starving(sc, size, timeout_s, -1, x);
}

static void test_agree(void) {
  for (int32_t size = 1; size <= MAXR; size++) {
    rank_ctx x[MAXR];
    run(AGREE, size, 30.0, x);
    for (int32_t r = 0; r < size; r++) {
      EXPECT_OK(x[r].create_st);
      EXPECT_OK(x[r].st);
      EXPECT_EQ_INT(x[r].syncs, 2000);
      EXPECT_EQ_INT(x[r].min_errors, 0);
      EXPECT_EQ_INT(x[r].reduce_errors, 0);
    }
  }
}

/* Rank 2 diverges. Every rank names it, also when rank 2 can no longer allocate: the report's
 * all-gather needs no allocation, so no rank skips it (one that did would pair its next
 * collective with the others' all-gather). */
static void test_diverge(void) {
  for (int32_t starve = -1; starve <= 2; starve += 3) {
    rank_ctx x[MAXR];
    run_starving(DIVERGE, 4, 30.0, starve, x);
    for (int32_t r = 0; r < 4; r++) {
      EXPECT_STATUS(x[r].st, RKV_ERR_CORRUPT);
      EXPECT_EQ_INT(x[r].syncs, 151); /* every rank stops in the same sync */
      EXPECT(strstr(x[r].err, "TP step-plan divergence: rank 0 at step 150") != NULL);
      EXPECT(strstr(x[r].err, "rank 2 step 150 hash") != NULL);
      EXPECT(strstr(x[r].err, "rank 1 step") == NULL);
      EXPECT_OK(x[r].after_st);
    }
  }
}

static void test_silent(void) {
  rank_ctx x[MAXR];
  run(SILENT, 3, 0.3, x);
  for (int32_t r = 0; r < 2; r++) {
    /* the first to reach its deadline times out; it breaks the group, so the other may fail
     * with the broken-group error just before its own deadline */
    EXPECT(x[r].st == RKV_ERR_TIMEOUT || x[r].st == RKV_ERR_COMM);
    EXPECT(strstr(x[r].err, "2 of 3 ranks arrived") != NULL);
    EXPECT(x[r].seconds < 5.0);
    EXPECT(x[r].seconds > 0.2);
    EXPECT_STATUS(x[r].after_st, RKV_ERR_STATE); /* sticky */
  }
  EXPECT(x[0].st == RKV_ERR_TIMEOUT || x[1].st == RKV_ERR_TIMEOUT);
}

static void test_abort(void) {
  rank_ctx x[MAXR];
  run(ABORT, 3, 30.0, x);
  for (int32_t r = 1; r < 3; r++) {
    EXPECT_STATUS(x[r].st, RKV_ERR_COMM);
    EXPECT(strstr(x[r].err, "rank 0 aborted (error code 5)") != NULL);
    EXPECT(x[r].seconds < 5.0); /* at once, not after the 30 s deadline */
  }
}

static void test_mismatch(void) {
  rank_ctx x[MAXR];
  run(MISMATCH, 2, 30.0, x);
  for (int32_t r = 0; r < 2; r++) {
    EXPECT_STATUS(x[r].st, RKV_ERR_COMM);
    EXPECT(strstr(x[r].err, "different collectives") != NULL);
    EXPECT(x[r].seconds < 5.0);
  }
}

static void test_config(void) {
  rkv_comm_local_group *g = (rkv_comm_local_group *)1;
  EXPECT_STATUS(rkv_comm_local_group_create(0, NULL, &g), RKV_ERR_INVALID_ARG);
  EXPECT(g == NULL);
  EXPECT_STATUS(rkv_comm_local_group_create(2, NULL, NULL), RKV_ERR_INVALID_ARG);
  rkv_comm_local_group_destroy(NULL);
  EXPECT_OK(rkv_comm_local_group_create(2, NULL, &g));
  rkv_comm_config cfg = RKV_COMM_CONFIG_INIT;
  cfg.kind = RKV_COMM_LOCAL;
  rkv_comm *c = NULL, *c2 = NULL;
  char err[256];
  EXPECT_STATUS(rkv_comm_create(&cfg, &c, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(err, "local_group is NULL") != NULL);
  cfg.local_group = g;
  cfg.rank = 2;
  EXPECT_STATUS(rkv_comm_create(&cfg, &c, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(err, "outside the group") != NULL);
  cfg.rank = 1;
  EXPECT_OK(rkv_comm_create(&cfg, &c, err, sizeof err));
  EXPECT_EQ_INT(rkv_comm_rank(c), 1);
  EXPECT_EQ_INT(rkv_comm_size(c), 2);
  EXPECT(rkv_comm_get_kind(c) == RKV_COMM_LOCAL);
  EXPECT_STATUS(rkv_comm_create(&cfg, &c2, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(err, "joined twice") != NULL);
  rkv_comm_destroy(c);
  rkv_comm_local_group_destroy(g);
  rkv_comm_kind k = RKV_COMM_SINGLE;
  EXPECT_OK(rkv_comm_kind_parse("local", &k));
  EXPECT(k == RKV_COMM_LOCAL);
  EXPECT_STREQ(rkv_comm_kind_name(RKV_COMM_LOCAL), "local");
}

int main(void) {
  test_config();
  test_agree();
  test_diverge();
  test_silent();
  test_abort();
  test_mismatch();
  return rkv_test_finish();
}
