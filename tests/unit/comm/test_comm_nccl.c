/* rkv_comm over NCCL on one GPU: world size 1 collectives and step sync, and the "never
 * hang" rule with a peer that never arrives (world size 2, only rank 0 started: initialisation
 * must time out and abort, not block, and remove the id file it published). Skips (exit 77) without
 * NCCL in the build or without a usable GPU; label gpu. */
#include <stdio.h>
#include <unistd.h>

#include <rkv/comm.h>

#include "rkv_test.h"

static rkv_status make(int32_t rank, int32_t world, const char *path, double timeout_s,
                       rkv_comm **out, char *err, size_t len) {
  rkv_comm_config cfg = RKV_COMM_CONFIG_INIT;
  cfg.kind = RKV_COMM_NCCL;
  cfg.bootstrap = RKV_COMM_BOOTSTRAP_FILE;
  cfg.rank = rank;
  cfg.world_size = world;
  cfg.nccl_id_path = path;
  cfg.timeout_s = timeout_s;
  return rkv_comm_create(&cfg, out, err, len);
}

int main(void) {
  if (!rkv_build_has_nccl()) return rkv_test_skip_no_gpu("built without NCCL");
  char err[256];
  rkv_comm *c = NULL;
  rkv_status s = make(0, 1, NULL, 30.0, &c, err, sizeof err);
  if (s == RKV_ERR_CUDA) return rkv_test_skip_no_gpu(err);
  if (s != RKV_OK) fprintf(stderr, "%s: %s\n", rkv_status_name(s), err);
  EXPECT_OK(s);
  if (c) {
    EXPECT_EQ_INT(rkv_comm_size(c), 1);
    EXPECT_EQ_INT(rkv_comm_get_kind(c), RKV_COMM_NCCL);
    uint64_t v[4] = {1, 2, 3, UINT64_MAX}, r[4] = {0};
    EXPECT_OK(rkv_comm_allreduce_u64(c, RKV_COMM_OP_MAX, v, r, 4));
    EXPECT(memcmp(v, r, sizeof v) == 0);
    EXPECT_OK(rkv_comm_allgather_u64(c, v, r, 3));
    EXPECT_EQ_INT(r[2], 3);
    uint64_t seed = 3, g = 0;
    for (uint64_t step = 0; step < 200; step++)
      EXPECT_OK(rkv_comm_step_sync(c, step, rkv_test_rand(&seed), 500 + step, &g));
    EXPECT_EQ_INT(g, 699);
    EXPECT_OK(rkv_comm_barrier(c));
    rkv_comm_destroy(c);
  }

  /* A peer that never joins: rank 0 of 2 publishes the id, then init must give up. */
  char path[64];
  snprintf(path, sizeof path, "/tmp/rkv_nccl_id_%ld", (long)getpid());
  c = NULL;
  s = make(0, 2, path, 3.0, &c, err, sizeof err);
  printf("lonely rank 0: %s: %s\n", rkv_status_name(s), err);
  EXPECT(s == RKV_ERR_TIMEOUT || s == RKV_ERR_COMM);
  EXPECT(c == NULL);
  /* rank 0 removes the id it published once init returned, failed or not */
  EXPECT(access(path, F_OK) != 0);
  unlink(path);
  /* And rank 1 of 2 with no id ever published times out in the file handshake. */
  s = make(1, 2, path, 1.0, &c, err, sizeof err);
  EXPECT_STATUS(s, RKV_ERR_TIMEOUT);
  EXPECT(strstr(err, path) != NULL);
  return rkv_test_finish();
}
