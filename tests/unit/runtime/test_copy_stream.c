/* The CPU pool's streaming block copy (runtime/internal/copy_stream.h) against memcpy, at every
 * alignment of the destination's 16-byte boundary, sizes around the 64-byte rounds, and
 * through the pool: a transfer past the streaming threshold (2,304 blocks of 8 KB, 18 MiB)
 * written in a shuffled order with repeated ids and read back in another order. */
#include <stdlib.h>
#include <string.h>

#include <rkv/runtime.h>

#include "rkv_test.h"

/* Private (runtime/internal/copy_stream.h); declared here because tests see public headers. */
void rkvi_copy_block(void *dst, const void *src, size_t bytes, bool streaming);
void rkvi_copy_fence(bool streaming);

static void test_alignments(void) {
  enum { CAP = 8192 + 256 };
  unsigned char *src = malloc(CAP), *got = malloc(CAP), *want = malloc(CAP);
  uint64_t rng = 5;
  for (size_t i = 0; i < CAP; i++) src[i] = (unsigned char)(rkv_test_rand(&rng) >> 56);
  static const size_t sizes[] = {0, 1, 15, 16, 17, 63, 64, 65, 127, 128, 200, 8192, 8197};
  int bad = 0;
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
    for (size_t d = 0; d < 16; d++)
      for (size_t s = 0; s < 4; s += 3)
        for (int streaming = 0; streaming < 2; streaming++) {
          memset(got, 0x5a, CAP);
          memset(want, 0x5a, CAP);
          rkvi_copy_block(got + d, src + s, sizes[k], streaming);
          rkvi_copy_fence(streaming);
          memcpy(want + d, src + s, sizes[k]);
          bad += memcmp(got, want, CAP) != 0; /* the bytes around untouched too */
        }
  EXPECT_EQ_INT(bad, 0);
  free(src), free(got), free(want);
}

static void test_pool_round_trip(void) {
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CPU;
  rkv_backend *b = NULL;
  EXPECT_OK(rkv_backend_create(&cfg, &b));
  const rkv_kv_layout lay = {RKV_DTYPE_BF16, 16, 128};
  enum { BLOCKS = 2304, N = BLOCKS + 100 };
  rkv_kv_pool *p = NULL;
  EXPECT_OK(rkv_kv_pool_create(b, &lay, BLOCKS, &p));
  if (!p) {
    rkv_backend_destroy(b);
    return;
  }
  const size_t bb = rkv_kv_block_bytes(&lay);
  EXPECT((size_t)BLOCKS * bb >= ((size_t)16 << 20)); /* past the streaming threshold */
  unsigned char *host = malloc(N * bb), *back = malloc(N * bb), *want = malloc(N * bb);
  int32_t *w = malloc(N * sizeof *w), *r = malloc(N * sizeof *r);
  uint64_t rng = 9;
  for (size_t i = 0; i < N * bb; i++) host[i] = (unsigned char)(rkv_test_rand(&rng) >> 56);
  for (int32_t i = 0; i < BLOCKS; i++) w[i] = r[i] = i;
  rkv_test_shuffle_i32(w, BLOCKS, &rng);
  rkv_test_shuffle_i32(r, BLOCKS, &rng);
  for (int i = BLOCKS; i < N; i++) { /* repeats: the later row wins */
    w[i] = w[rkv_test_rand(&rng) % BLOCKS];
    r[i] = r[rkv_test_rand(&rng) % BLOCKS];
  }
  EXPECT_OK(rkv_kv_pool_write_blocks(p, w, N, host));
  /* what block id holds: the host row of its last occurrence in w */
  size_t *last = malloc(BLOCKS * sizeof *last);
  for (size_t i = 0; i < N; i++) last[w[i]] = i;
  for (size_t i = 0; i < N; i++) memcpy(want + i * bb, host + last[r[i]] * bb, bb);
  EXPECT_OK(rkv_kv_pool_read_blocks(p, r, N, back));
  EXPECT(memcmp(back, want, N * bb) == 0);
  free(host), free(back), free(want), free(w), free(r), free(last);
  rkv_kv_pool_destroy(p);
  rkv_backend_destroy(b);
}

int main(void) {
  test_alignments();
  test_pool_round_trip();
  return rkv_test_finish();
}
