/* rkv_comm without peers: the single-rank transport, configuration checks, the step-sync
 * contract at world size 1, and the statuses of transports this build lacks. The multi-rank
 * behaviour (agreement, MIN, divergence, dead peers) runs under mpirun: see tp_comm_mpi.c. */
#include <rkv/comm.h>

#include "rkv_test.h"

static void test_config_checks(void) {
  rkv_comm *c = (rkv_comm *)1;
  char err[256];
  rkv_comm_config cfg = RKV_COMM_CONFIG_INIT;
  cfg.struct_size = 4;
  EXPECT_STATUS(rkv_comm_create(&cfg, &c, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT(c == NULL);
  EXPECT(strstr(err, "struct_size") != NULL);
  cfg = (rkv_comm_config)RKV_COMM_CONFIG_INIT;
  cfg.kind = RKV_COMM_KIND_COUNT_;
  EXPECT_STATUS(rkv_comm_create(&cfg, &c, err, sizeof err), RKV_ERR_INVALID_ARG);
  cfg.kind = RKV_COMM_SINGLE;
  cfg.timeout_s = -1.0;
  EXPECT_STATUS(rkv_comm_create(&cfg, &c, err, sizeof err), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_comm_create(NULL, NULL, err, sizeof err), RKV_ERR_INVALID_ARG);
  /* err_out may be NULL. */
  EXPECT_STATUS(rkv_comm_create(&cfg, &c, NULL, 0), RKV_ERR_INVALID_ARG);

  if (!rkv_build_has_nccl()) {
    cfg = (rkv_comm_config)RKV_COMM_CONFIG_INIT;
    cfg.kind = RKV_COMM_NCCL;
    EXPECT_STATUS(rkv_comm_create(&cfg, &c, err, sizeof err), RKV_ERR_UNSUPPORTED);
    EXPECT(strstr(err, "NCCL") != NULL);
  }
  if (!rkv_build_has_mpi()) {
    cfg = (rkv_comm_config)RKV_COMM_CONFIG_INIT;
    cfg.kind = RKV_COMM_MPI;
    EXPECT_STATUS(rkv_comm_create(&cfg, &c, err, sizeof err), RKV_ERR_UNSUPPORTED);
  }
}

static void test_names(void) {
  rkv_comm_kind k = RKV_COMM_SINGLE;
  EXPECT_OK(rkv_comm_kind_parse("nccl", &k));
  EXPECT_EQ_INT(k, RKV_COMM_NCCL);
  EXPECT_OK(rkv_comm_kind_parse("mpi", &k));
  EXPECT_EQ_INT(k, RKV_COMM_MPI);
  EXPECT_STATUS(rkv_comm_kind_parse("gloo", &k), RKV_ERR_INVALID_ARG);
  EXPECT_STREQ(rkv_comm_kind_name(RKV_COMM_SINGLE), "single");
  EXPECT_STREQ(rkv_comm_kind_name((rkv_comm_kind)42), "invalid");
}

static void test_single(void) {
  rkv_comm *c = NULL;
  EXPECT_OK(rkv_comm_create(NULL, &c, NULL, 0));
  if (!c) return;
  EXPECT_EQ_INT(rkv_comm_rank(c), 0);
  EXPECT_EQ_INT(rkv_comm_size(c), 1);
  EXPECT_EQ_INT(rkv_comm_get_kind(c), RKV_COMM_SINGLE);
  EXPECT(!rkv_comm_is_failed(c));

  uint64_t seed = 7, in[RKV_COMM_MAX_COUNT], out[RKV_COMM_MAX_COUNT + 1];
  for (int i = 0; i < RKV_COMM_MAX_COUNT; i++) in[i] = rkv_test_rand(&seed);
  for (int op = 0; op < RKV_COMM_OP_COUNT_; op++) {
    memset(out, 0, sizeof out);
    EXPECT_OK(rkv_comm_allreduce_u64(c, (rkv_comm_op)op, in, out, RKV_COMM_MAX_COUNT));
    EXPECT(memcmp(in, out, sizeof in) == 0);
  }
  /* In place. */
  uint64_t x[3] = {5, 6, 7};
  EXPECT_OK(rkv_comm_allreduce_u64(c, RKV_COMM_OP_SUM, x, x, 3));
  EXPECT_EQ_INT(x[2], 7);
  EXPECT_OK(rkv_comm_allgather_u64(c, in, out, 4));
  EXPECT(memcmp(in, out, 4 * sizeof(uint64_t)) == 0);
  EXPECT_OK(rkv_comm_barrier(c));

  /* Argument errors leave the handle usable and recv untouched. */
  out[0] = 99;
  EXPECT_STATUS(rkv_comm_allreduce_u64(c, RKV_COMM_OP_MIN, in, out, 0), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_comm_allreduce_u64(c, RKV_COMM_OP_MIN, in, out, RKV_COMM_MAX_COUNT + 1),
                RKV_ERR_CAPACITY);
  EXPECT_STATUS(rkv_comm_allreduce_u64(c, (rkv_comm_op)9, in, out, 1), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_comm_allreduce_u64(c, RKV_COMM_OP_MIN, NULL, out, 1), RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(out[0], 99);
  EXPECT(strlen(rkv_comm_last_error(c)) > 0);
  EXPECT(!rkv_comm_is_failed(c));

  /* Step sync at world size 1: the global MIN is the local count, every hash agrees. */
  uint64_t hseed = 1234;
  for (uint64_t step = 0; step < 1000; step++) {
    uint64_t free_blocks = 1000 - step, global = 0;
    EXPECT_OK(rkv_comm_step_sync(c, step, rkv_test_rand(&hseed), free_blocks, &global));
    if (global != free_blocks) {
      EXPECT_EQ_INT(global, free_blocks);
      break;
    }
  }
  EXPECT_OK(rkv_comm_step_sync(c, 1, 2, 3, NULL));

  /* Abort marks the handle failed; collectives then refuse with RKV_ERR_STATE. */
  rkv_comm_abort(c, 3);
  EXPECT(rkv_comm_is_failed(c));
  EXPECT_STATUS(rkv_comm_barrier(c), RKV_ERR_STATE);
  EXPECT(strstr(rkv_comm_last_error(c), "failed") != NULL);
  rkv_comm_destroy(c);
  rkv_comm_destroy(NULL);
}

/* Counts allocations to prove the handle goes through the caller's allocator. */
typedef struct counting {
  int live;
  int total;
} counting;
static void *count_alloc(void *ctx, size_t size, size_t align) {
  counting *k = ctx;
  void *p = NULL;
  if (posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, size) != 0) return NULL;
  k->live++;
  k->total++;
  return p;
}
static void count_free(void *ctx, void *p, size_t size) {
  (void)size;
  ((counting *)ctx)->live--;
  free(p);
}

static void test_allocator(void) {
  counting k = {0, 0};
  rkv_allocator a = {count_alloc, count_free, &k};
  rkv_comm_config cfg = RKV_COMM_CONFIG_INIT;
  cfg.allocator = &a;
  rkv_comm *c = NULL;
  EXPECT_OK(rkv_comm_create(&cfg, &c, NULL, 0));
  EXPECT(k.total >= 1);
  uint64_t g = 0;
  int before = k.total;
  EXPECT_OK(rkv_comm_step_sync(c, 0, 0, 5, &g));
  EXPECT_EQ_INT(k.total, before); /* the step path allocates nothing */
  rkv_comm_destroy(c);
  EXPECT_EQ_INT(k.live, 0);
}

int main(void) {
  test_config_checks();
  test_names();
  test_single();
  test_allocator();
  return rkv_test_finish();
}
