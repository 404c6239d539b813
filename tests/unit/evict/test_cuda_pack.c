/* rkv_evict_cuda_pack (host code, every build): the size query, the four sections copied to
 * 256-byte aligned offsets, the batch's pointers at the same offsets from the device base,
 * clear_blocks NULL without freed blocks, and the error cases changing nothing. */
/* Tests the deprecated calls themselves: they must keep working this release. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <stdint.h>
#include <string.h>

#include <rkv/evict_cuda.h>

#include "rkv_test.h"

static void test_layout(void) {
  rkv_evict_cuda_stream st[3];
  memset(st, 0, sizeof st);
  for (int i = 0; i < 3; i++) st[i].old_len = 100 + i;
  const int32_t old[5] = {1, 2, 3, 4, 5}, nb[2] = {7, 8}, fr[1] = {9};
  size_t bytes = 0;
  EXPECT_OK(rkv_evict_cuda_pack(st, 3, old, 5, nb, 2, fr, 1, NULL, 0, NULL, NULL, &bytes));
  const size_t o_old = 256, o_new = 512, o_fr = 768; /* each section 256-aligned */
  EXPECT_EQ_INT(bytes, o_fr + sizeof(int32_t));
  unsigned char host[1024], dev[1024];
  memset(host, 0xAB, sizeof host);
  rkv_evict_cuda_batch b = RKV_EVICT_CUDA_BATCH_INIT;
  b.group = 4;
  size_t got = 0;
  EXPECT_OK(rkv_evict_cuda_pack(st, 3, old, 5, nb, 2, fr, 1, host, sizeof host, dev, &b, &got));
  EXPECT_EQ_INT(got, bytes);
  EXPECT(memcmp(host, st, sizeof st) == 0);
  EXPECT(memcmp(host + o_old, old, sizeof old) == 0);
  EXPECT(memcmp(host + o_new, nb, sizeof nb) == 0);
  EXPECT(memcmp(host + o_fr, fr, sizeof fr) == 0);
  EXPECT_EQ_INT(b.num_streams, 3);
  EXPECT_EQ_INT(b.n_clear, 1);
  EXPECT_EQ_INT(b.group, 4); /* the caller's fields are left alone */
  EXPECT((const void *)b.streams == (void *)dev);
  EXPECT((const void *)b.old_blocks == (void *)(dev + o_old));
  EXPECT((const void *)b.new_blocks == (void *)(dev + o_new));
  EXPECT((const void *)b.clear_blocks == (void *)(dev + o_fr));

  /* no freed blocks: no clear list */
  EXPECT_OK(rkv_evict_cuda_pack(st, 3, old, 5, nb, 2, NULL, 0, host, sizeof host, dev, &b, &got));
  EXPECT_EQ_INT(got, o_fr);
  EXPECT(b.clear_blocks == NULL);
  EXPECT_EQ_INT(b.n_clear, 0);
}

static void test_errors(void) {
  rkv_evict_cuda_stream st[1];
  memset(st, 0, sizeof st);
  const int32_t old[1] = {1};
  unsigned char host[64], dev[64];
  size_t bytes = 0;
  rkv_evict_cuda_batch b = RKV_EVICT_CUDA_BATCH_INIT;
  const rkv_evict_cuda_batch before = b;
  EXPECT_STATUS(
      rkv_evict_cuda_pack(st, 1, old, 1, NULL, 0, NULL, 0, host, sizeof host, dev, &b, &bytes),
      RKV_ERR_CAPACITY); /* needs 256 + 4 bytes */
  EXPECT(memcmp(&b, &before, sizeof b) == 0);
  EXPECT_STATUS(rkv_evict_cuda_pack(st, 0, old, 1, NULL, 0, NULL, 0, NULL, 0, NULL, NULL, &bytes),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_cuda_pack(st, 1, NULL, 1, NULL, 0, NULL, 0, NULL, 0, NULL, NULL, &bytes),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_cuda_pack(st, 1, old, 1, NULL, 2, NULL, 0, NULL, 0, NULL, NULL, &bytes),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(
      rkv_evict_cuda_pack(st, 1, old, 1, NULL, 0, NULL, 0, host, sizeof host, NULL, &b, &bytes),
      RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_cuda_pack(st, 1, old, 1, NULL, 0, NULL, 0, NULL, 0, NULL, NULL, NULL),
                RKV_ERR_INVALID_ARG);
}

int main(void) {
  test_layout();
  test_errors();
  return rkv_test_finish();
}
