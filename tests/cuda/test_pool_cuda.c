/* CUDA pool transfers against a CPU pool doing the same: whole blocks and per-slot scores to
 * and from the host in chunks (read_blocks / write_blocks / read_scores / write_scores), ids in
 * random order across several chunks, repeated ids in a write (the last one wins), and the
 * scores a block write clears. Also the device switch around library calls (cuda_device.h).
 * Every build first runs the same cases with the emulated device in the CUDA pool's place
 * (its pools are host memory: this checks the cases themselves); then skips (77) without a
 * CUDA build or device. */
#include <rkv/buffer_emu.h>
#include <rkv/runtime.h>

#include "cuda_test_util.h"
#include "rkv_test.h"

/* n ids: a permutation of the pool's blocks, then `dups` more drawn from it again. */
static int32_t *ids_with_dups(uint32_t blocks, size_t dups, uint64_t *rng) {
  int32_t *ids = malloc((blocks + dups) * sizeof *ids);
  for (uint32_t i = 0; i < blocks; i++) ids[i] = (int32_t)i;
  rkv_test_shuffle_i32(ids, blocks, rng);
  for (size_t i = 0; i < dups; i++) ids[blocks + i] = ids[rkv_test_rand(rng) % blocks];
  rkv_test_shuffle_i32(ids, blocks + dups, rng);
  return ids;
}

static void fill(uint8_t *p, size_t n, uint64_t *rng) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(rkv_test_rand(rng) >> 56);
}

static void run_case(rkv_backend *cb, rkv_backend *gb, rkv_dtype dt, uint32_t d, uint32_t bs,
                     uint32_t blocks, uint64_t seed) {
  rkv_kv_layout lay = {dt, bs, d};
  rkv_kv_pool *cp = NULL, *gp = NULL;
  EXPECT_OK(rkv_kv_pool_create(cb, &lay, blocks, &cp));
  EXPECT_OK(rkv_kv_pool_create(gb, &lay, blocks, &gp));
  if (!cp || !gp) goto out;
  uint64_t rng = seed;
  const size_t bb = rkv_kv_block_bytes(&lay), dups = blocks / 7 + 3, n = blocks + dups;
  uint8_t *host = malloc(n * bb), *got = malloc(n * bb), *want = malloc(n * bb);
  float *sh = malloc(n * bs * sizeof(float)), *sg = malloc(n * bs * sizeof(float)),
        *sw = malloc(n * bs * sizeof(float));
  int32_t *wids = ids_with_dups(blocks, dups, &rng), *rids = ids_with_dups(blocks, dups, &rng);

  /* Blocks: write every block (some twice, with different bytes), read them back in another
   * order with repeats. */
  fill(host, n * bb, &rng);
  EXPECT_OK(rkv_kv_pool_write_blocks(cp, wids, n, host));
  EXPECT_OK(rkv_kv_pool_write_blocks(gp, wids, n, host));
  EXPECT_OK(rkv_kv_pool_read_blocks(cp, rids, n, want));
  memset(got, 0xa5, n * bb);
  EXPECT_OK(rkv_kv_pool_read_blocks(gp, rids, n, got));
  EXPECT(memcmp(got, want, n * bb) == 0);

  /* Scores: the same, then a block write of a few blocks clears theirs. */
  fill((uint8_t *)sh, n * bs * sizeof(float), &rng);
  EXPECT_OK(rkv_kv_pool_write_scores(cp, wids, n, sh));
  EXPECT_OK(rkv_kv_pool_write_scores(gp, wids, n, sh));
  const size_t few = n < 5 ? n : 5;
  EXPECT_OK(rkv_kv_pool_write_blocks(cp, rids, few, host));
  EXPECT_OK(rkv_kv_pool_write_blocks(gp, rids, few, host));
  EXPECT_OK(rkv_kv_pool_read_scores(cp, rids, n, sw));
  memset(sg, 0xa5, n * bs * sizeof(float));
  EXPECT_OK(rkv_kv_pool_read_scores(gp, rids, n, sg));
  EXPECT(memcmp(sg, sw, n * bs * sizeof(float)) == 0);
  EXPECT(sw[0] == 0.0f && sw[few * bs - 1] == 0.0f);
  /* A single block (after the block write above), and an empty transfer. */
  EXPECT_OK(rkv_kv_pool_read_blocks(cp, rids + 1, 1, want));
  EXPECT_OK(rkv_kv_pool_read_blocks(gp, rids + 1, 1, got));
  EXPECT(memcmp(got, want, bb) == 0);
  EXPECT_OK(rkv_kv_pool_read_blocks(gp, rids, 0, got));
  free(host), free(got), free(want), free(sh), free(sg), free(sw), free(wids), free(rids);
out:
  rkv_kv_pool_destroy(cp);
  rkv_kv_pool_destroy(gp);
}

/* 8 KB blocks: 1,024 per chunk, so 2,600 blocks and their repeats span three chunks; 16 KB
 * blocks: 512 per chunk; scores rows (64 / 128 bytes) fit one chunk of 4,096 ids or span one
 * more. */
static void run_cases(rkv_backend *cb, rkv_backend *gb) {
  run_case(cb, gb, RKV_DTYPE_BF16, 128, 16, 2600, 11);
  run_case(cb, gb, RKV_DTYPE_F32, 64, 32, 1300, 12);
  run_case(cb, gb, RKV_DTYPE_F16, 64, 16, 5000, 13);
  run_case(cb, gb, RKV_DTYPE_F16, 64, 16, 1, 14);
}

/* Checks that run in every build: the cases against the emulated device. */
static void host_checks(rkv_backend *cb) {
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CPU;
  rkv_backend *eb = NULL;
  EXPECT_OK(rkv_backend_create_emulated(&cfg, &eb));
  if (eb) run_cases(cb, eb);
  rkv_backend_destroy(eb);
}

#ifndef RKV_HAVE_CUDA
int main(void) {
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CPU;
  rkv_backend *cb = NULL;
  EXPECT_OK(rkv_backend_create(&cfg, &cb));
  if (cb) host_checks(cb);
  rkv_backend_destroy(cb);
  return cuda_test_skip("librkv built without CUDA");
}
#else
/* Private (runtime/internal/cuda_device.h); declared here because tests see public headers. */
int rkvi_cuda_device_enter(int device, int *prev);
void rkvi_cuda_device_leave(int prev);

/* The backend's device is made current for a call and the caller's restored: with one device
 * the switch is a no-op; an ordinal past the last device is refused and changes nothing. */
static void test_device_switch(void) {
  int ndev = 0, cur = -1, prev = 7;
  CK(cudaGetDeviceCount(&ndev));
  CK(cudaGetDevice(&cur));
  EXPECT_EQ_INT(rkvi_cuda_device_enter(cur, &prev), 0);
  EXPECT_EQ_INT(prev, -1);
  EXPECT(rkvi_cuda_device_enter(ndev, &prev) != 0);
  EXPECT_EQ_INT(prev, -1);
  int now = -1;
  CK(cudaGetDevice(&now));
  EXPECT_EQ_INT(now, cur);
  EXPECT(cudaGetLastError() == cudaSuccess);
  if (ndev > 1) {
    const int other = (cur + 1) % ndev;
    EXPECT_EQ_INT(rkvi_cuda_device_enter(other, &prev), 0);
    CK(cudaGetDevice(&now));
    EXPECT_EQ_INT(now, other);
    EXPECT_EQ_INT(prev, cur); /* this thread used `cur`: it has a context */
    rkvi_cuda_device_leave(prev);
    CK(cudaGetDevice(&now));
    EXPECT_EQ_INT(now, cur);
  }
}

int main(void) {
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CPU;
  rkv_backend *gb = NULL, *cb = NULL;
  EXPECT_OK(rkv_backend_create(&cfg, &cb));
  if (!cb) return rkv_test_finish();
  host_checks(cb);
  cfg.kind = RKV_BACKEND_CUDA;
  if (rkv_backend_create(&cfg, &gb) != RKV_OK) {
    rkv_backend_destroy(cb);
    return cuda_test_skip("no usable CUDA device");
  }
  run_cases(cb, gb);
  test_device_switch();
  rkv_backend_destroy(cb);
  rkv_backend_destroy(gb);
  return rkv_test_finish();
}
#endif
