/* Multi-rank rkv_comm test, run under mpirun by tests.cmake (np 2 and 4). One binary, one mode
 * per run:
 *   agree    ranks agree on a deterministic stream of step-plan hashes; the MIN of free blocks
 *            equals the smallest rank's count (a rank with fewer blocks limits every rank);
 *            MAX / SUM / all-gather give the values computed locally for all ranks.
 *   split    the caller initialises MPI and splits the world; each half gets its own handle
 *            (mpi_comm given explicitly) and its own hash stream, without cross-talk.
 *   diverge  one rank perturbs its plan hash (then another its step number): every rank gets
 *            RKV_ERR_CORRUPT naming the culprit, and the handle stays usable.
 *   hang     one rank stops calling collectives: the others get RKV_ERR_TIMEOUT within the
 *            deadline (not a hang), then abort the job (so mpirun exits non-zero).
 *   die      one rank exits without MPI_Finalize: the survivors must not hang (Open MPI may kill
 *            them first; otherwise they time out and abort).
 *   single   run WITHOUT mpirun (MPI singleton): the handle initialises MPI itself, works at
 *            world size 1, and finalises MPI on destroy.
 * Expected results are computed from the rank number alone, so every rank can check them. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <rkv/comm.h>

#include "rkv_test.h"

#define STEPS 2000

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Free blocks of `rank` at `step`: varies by rank and step; the last rank periodically has
 * far fewer, as a rank holding longer sequences would. */
static uint64_t free_blocks(int rank, int size, uint64_t step) {
  if (rank == size - 1 && step % 50 == 7) return 3;
  return 1000 + ((uint64_t)rank * 37 + step * 13) % 101;
}

static rkv_comm *make_comm(const void *mpi_comm, double timeout_s) {
  rkv_comm_config cfg = RKV_COMM_CONFIG_INIT;
  cfg.kind = RKV_COMM_MPI;
  cfg.timeout_s = timeout_s;
  cfg.mpi_comm = mpi_comm;
  rkv_comm *c = NULL;
  char err[256];
  rkv_status s = rkv_comm_create(&cfg, &c, err, sizeof err);
  if (s != RKV_OK) fprintf(stderr, "rkv_comm_create: %s: %s\n", rkv_status_name(s), err);
  EXPECT_OK(s);
  return c;
}

static int mode_agree(void) {
  rkv_comm *c = make_comm(NULL, 20.0);
  if (!c) return rkv_test_finish();
  int rank = rkv_comm_rank(c), size = rkv_comm_size(c);
  EXPECT(size >= 2);
  uint64_t seed = 42, global = 0;
  int bad = 0;
  static double lat[STEPS];
  double t0 = now_s();
  for (uint64_t step = 0; step < STEPS; step++) {
    uint64_t hash = rkv_test_rand(&seed);
    uint64_t want = UINT64_MAX;
    for (int r = 0; r < size; r++) {
      uint64_t f = free_blocks(r, size, step);
      if (f < want) want = f;
    }
    double ts = now_s();
    rkv_status s = rkv_comm_step_sync(c, step, hash, free_blocks(rank, size, step), &global);
    lat[step] = now_s() - ts;
    if (s != RKV_OK || global != want) {
      if (!bad++)
        fprintf(stderr, "rank %d step %llu: %s global %llu want %llu: %s\n", rank,
                (unsigned long long)step, rkv_status_name(s), (unsigned long long)global,
                (unsigned long long)want, rkv_comm_last_error(c));
    }
  }
  double dt = now_s() - t0;
  EXPECT_EQ_INT(bad, 0);
  /* Median and p99 say more than the mean on a shared, oversubscribed machine, where a rank
   * that loses its core stalls everyone for a scheduler time slice. */
  qsort(lat, STEPS, sizeof lat[0], cmp_double);
  if (rank == 0)
    printf("agree: %d ranks, %d step syncs, mean %.1f us, median %.1f us, p99 %.1f us\n", size,
           STEPS, 1e6 * dt / STEPS, 1e6 * lat[STEPS / 2], 1e6 * lat[STEPS * 99 / 100]);

  uint64_t v[3] = {(uint64_t)rank + 10, (uint64_t)rank * 1000, 1}, r[3];
  EXPECT_OK(rkv_comm_allreduce_u64(c, RKV_COMM_OP_MAX, v, r, 3));
  EXPECT_EQ_INT(r[0], size - 1 + 10);
  EXPECT_EQ_INT(r[1], (size - 1) * 1000);
  EXPECT_OK(rkv_comm_allreduce_u64(c, RKV_COMM_OP_SUM, v, v, 3)); /* in place */
  EXPECT_EQ_INT(v[2], size);
  EXPECT_EQ_INT(v[0], size * 10 + size * (size - 1) / 2);
  uint64_t mine[2] = {(uint64_t)rank, (uint64_t)rank * rank}, all[2 * 64];
  EXPECT_OK(rkv_comm_allgather_u64(c, mine, all, 2));
  for (int q = 0; q < size; q++) {
    EXPECT_EQ_INT(all[2 * q], q);
    EXPECT_EQ_INT(all[2 * q + 1], q * q);
  }
  EXPECT_OK(rkv_comm_barrier(c));
  EXPECT(!rkv_comm_is_failed(c));
  rkv_comm_destroy(c);
  return rkv_test_finish();
}

static int mode_split(void) {
  int provided = 0, wrank = 0, wsize = 0;
  MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &wrank);
  MPI_Comm_size(MPI_COMM_WORLD, &wsize);
  MPI_Comm half;
  MPI_Comm_split(MPI_COMM_WORLD, wrank % 2, wrank, &half);
  rkv_comm *c = make_comm(&half, 20.0);
  if (c) {
    EXPECT_EQ_INT(rkv_comm_size(c), (wsize + 1 - wrank % 2) / 2);
    EXPECT_EQ_INT(rkv_comm_rank(c), wrank / 2);
    /* Each half has its own hash stream: no cross-talk means no divergence. */
    uint64_t seed = 100 + (uint64_t)(wrank % 2), g = 0;
    for (uint64_t step = 0; step < 200; step++)
      EXPECT_OK(rkv_comm_step_sync(c, step, rkv_test_rand(&seed), (uint64_t)wrank, &g));
    EXPECT_EQ_INT(g, wrank % 2); /* smallest world rank of the half */
    rkv_comm_destroy(c);
  }
  MPI_Comm_free(&half);
  int finalized = 0;
  MPI_Finalized(&finalized);
  EXPECT(!finalized); /* the handle did not own MPI, so it must not finalise it */
  int ret = rkv_test_finish();
  MPI_Finalize();
  return ret;
}

static int mode_diverge(int at_step, int culprit) {
  rkv_comm *c = make_comm(NULL, 20.0);
  if (!c) return rkv_test_finish();
  int rank = rkv_comm_rank(c);
  uint64_t seed = 9, g = 0;
  char want[64];
  snprintf(want, sizeof want, "rank %d step", culprit);
  for (uint64_t step = 0; step <= (uint64_t)at_step; step++) {
    uint64_t hash = rkv_test_rand(&seed);
    bool perturb = step == (uint64_t)at_step && rank == culprit;
    rkv_status s = rkv_comm_step_sync(c, step, perturb ? hash ^ 1 : hash, 100, &g);
    if (step < (uint64_t)at_step) {
      if (s != RKV_OK) EXPECT_OK(s);
      continue;
    }
    EXPECT_STATUS(s, RKV_ERR_CORRUPT);
    const char *e = rkv_comm_last_error(c);
    if (rank == 0) printf("rank 0 reports: %s\n", e);
    EXPECT(strstr(e, "divergence") != NULL);
    EXPECT(strstr(e, want) != NULL || culprit == 0);
  }
  /* The transport still works; a step-number mismatch is caught too. */
  EXPECT(!rkv_comm_is_failed(c));
  EXPECT_OK(rkv_comm_barrier(c));
  uint64_t step = (uint64_t)at_step + 1 + (rank == 0 ? 100 : 0);
  EXPECT_STATUS(rkv_comm_step_sync(c, step, 77, 100, &g), RKV_ERR_CORRUPT);
  if (rank == 0) printf("rank 0 reports: %s\n", rkv_comm_last_error(c));
  EXPECT_OK(rkv_comm_step_sync(c, 5, 77, 100, &g));
  rkv_comm_destroy(c);
  return rkv_test_finish();
}

static int mode_single(void) {
  int inited = 1;
  MPI_Initialized(&inited);
  EXPECT(!inited);
  rkv_comm *c = make_comm(NULL, 20.0);
  if (!c) return rkv_test_finish();
  EXPECT_EQ_INT(rkv_comm_size(c), 1);
  EXPECT_EQ_INT(rkv_comm_get_kind(c), RKV_COMM_MPI);
  uint64_t seed = 1, g = 0, v[2] = {4, 5}, all[2];
  for (uint64_t step = 0; step < 100; step++)
    EXPECT_OK(rkv_comm_step_sync(c, step, rkv_test_rand(&seed), 1000 - step, &g));
  EXPECT_EQ_INT(g, 901);
  EXPECT_OK(rkv_comm_allgather_u64(c, v, all, 2));
  EXPECT_EQ_INT(all[1], 5);
  rkv_comm_destroy(c);
  int finalized = 0;
  MPI_Finalized(&finalized);
  EXPECT(finalized); /* the handle initialised MPI, so it finalised it */
  return rkv_test_finish();
}

/* hang: the culprit sleeps instead of calling; die: it exits without finalising. */
static int mode_fail(bool die, int culprit, double timeout_s) {
  rkv_comm *c = make_comm(NULL, timeout_s);
  if (!c) return rkv_test_finish();
  int rank = rkv_comm_rank(c);
  uint64_t seed = 5, g = 0;
  for (uint64_t step = 0; step < 100; step++) {
    uint64_t hash = rkv_test_rand(&seed);
    if (step == 10 && rank == culprit) {
      fflush(stdout);
      if (die) _exit(9);
      sleep(120); /* killed by the survivors' abort long before this ends */
      _exit(8);
    }
    double t0 = now_s();
    rkv_status s = rkv_comm_step_sync(c, step, hash, 10, &g);
    if (s != RKV_OK) {
      double waited = now_s() - t0;
      printf("rank %d step %llu: %s after %.2f s: %s\n", rank, (unsigned long long)step,
             rkv_status_name(s), waited, rkv_comm_last_error(c));
      EXPECT(s == RKV_ERR_TIMEOUT || s == RKV_ERR_COMM);
      EXPECT(waited < timeout_s + 2.0);
      EXPECT(rkv_comm_is_failed(c));
      EXPECT_STATUS(rkv_comm_barrier(c), RKV_ERR_STATE);
      rkv_test_finish();
      fflush(stdout);
      /* Give mpirun a moment to forward this report before the abort tears the job down. */
      struct timespec pause = {0, 300000000L};
      nanosleep(&pause, NULL);
      rkv_comm_abort(c, 3); /* terminates the job; does not return under Open MPI */
      return 3;
    }
  }
  printf("rank %d: no failure was observed\n", rank);
  rkv_comm_destroy(c);
  return 1;
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  if (strcmp(mode, "agree") == 0) return mode_agree();
  if (strcmp(mode, "split") == 0) return mode_split();
  if (strcmp(mode, "diverge") == 0) return mode_diverge(37, 1);
  if (strcmp(mode, "diverge0") == 0) return mode_diverge(3, 0);
  if (strcmp(mode, "single") == 0) return mode_single();
  if (strcmp(mode, "hang") == 0) return mode_fail(false, 1, 2.0);
  if (strcmp(mode, "die") == 0) return mode_fail(true, 1, 5.0);
  fprintf(stderr,
          "usage: tp_comm_mpi agree|split|diverge|diverge0|hang|die (under mpirun) | single\n");
  return 2;
}
