/* Status strings, dtype helpers and conversions, layout arithmetic. */
#include "rkv_test.h"

static void test_status_strings(void) {
  for (int s = 0; s < RKV_STATUS_COUNT_; s++) {
    EXPECT(rkv_status_str((rkv_status)s) != NULL);
    EXPECT(strncmp(rkv_status_name((rkv_status)s), "RKV_", 4) == 0);
  }
  EXPECT_STREQ(rkv_status_name(RKV_ERR_NO_BLOCKS), "RKV_ERR_NO_BLOCKS");
  EXPECT_STREQ(rkv_status_str((rkv_status)999), "unknown status");
  EXPECT_STREQ(rkv_status_name((rkv_status)-1), "RKV_ERR_UNKNOWN");
}

static void test_dtypes(void) {
  EXPECT_EQ_INT(rkv_dtype_size(RKV_DTYPE_F32), 4);
  EXPECT_EQ_INT(rkv_dtype_size(RKV_DTYPE_F16), 2);
  EXPECT_EQ_INT(rkv_dtype_size(RKV_DTYPE_BF16), 2);
  EXPECT_EQ_INT(rkv_dtype_size((rkv_dtype)7), 0);
  rkv_dtype dt;
  EXPECT_OK(rkv_dtype_parse("bfloat16", &dt));
  EXPECT_EQ_INT(dt, RKV_DTYPE_BF16);
  EXPECT_STATUS(rkv_dtype_parse("int8", &dt), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_dtype_parse(NULL, &dt), RKV_ERR_INVALID_ARG);
  EXPECT_STREQ(rkv_dtype_name(RKV_DTYPE_F16), "f16");
  /* Exact values round-trip; halfway cases round to even. */
  const float exact[] = {0.0f, 1.0f, -2.0f, 0.5f, 65504.0f, 6.103515625e-05f, 5.9604645e-08f};
  for (size_t i = 0; i < sizeof exact / sizeof exact[0]; i++)
    EXPECT_EQ_INT(rkv_f16_to_f32(rkv_f32_to_f16(exact[i])) == exact[i], 1);
  EXPECT_EQ_INT(rkv_f32_to_f16(1.0f + 1.0f / 2048), 0x3c00); /* tie -> even (down) */
  EXPECT_EQ_INT(rkv_f32_to_f16(1.0f + 3.0f / 2048), 0x3c02); /* tie -> even (up) */
  EXPECT_EQ_INT(rkv_f32_to_f16(1e6f), 0x7c00);
  EXPECT_EQ_INT(rkv_f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ_INT(rkv_bf16_to_f32(0x3f80) == 1.0f, 1);
  uint64_t seed = 1;
  double worst16 = 0, worstbf = 0;
  for (int i = 0; i < 100000; i++) {
    float v = (float)((rkv_test_uniform(&seed) - 0.5) * 200.0);
    double e16 = fabs(rkv_f16_to_f32(rkv_f32_to_f16(v)) - v) / (fabs(v) + 1e-3);
    double ebf = fabs(rkv_bf16_to_f32(rkv_f32_to_bf16(v)) - v) / (fabs(v) + 1e-3);
    if (e16 > worst16) worst16 = e16;
    if (ebf > worstbf) worstbf = ebf;
  }
  EXPECT(worst16 <= 1.0 / 2048 + 1e-9);
  EXPECT(worstbf <= 1.0 / 256 + 1e-9);
  float buf[2];
  rkv_dtype_store(RKV_DTYPE_F32, buf, 1, 3.5f);
  EXPECT_NEAR(rkv_dtype_load(RKV_DTYPE_F32, buf, 1), 3.5, 0);
}

static void test_layout(void) {
  rkv_kv_layout l = {RKV_DTYPE_BF16, 16, 128};
  EXPECT_EQ_INT(rkv_kv_block_bytes(&l), 2 * 16 * 128 * 2);
  EXPECT_EQ_INT(rkv_kv_k_offset(&l, 3), 3 * 128 * 2);
  EXPECT_EQ_INT(rkv_kv_v_offset(&l, 3), (16 + 3) * 128 * 2);
  int32_t indptr[] = {0, 2, 2, 5}, indices[] = {4, 9, 1, 2, 3}, last[] = {5, 0, 16};
  rkv_block_table t = {3, 16, indptr, indices, last};
  EXPECT_EQ_INT(rkv_block_table_stream_len(&t, 0), 21);
  EXPECT_EQ_INT(rkv_block_table_stream_len(&t, 1), 0);
  EXPECT_EQ_INT(rkv_block_table_stream_len(&t, 2), 48);
  EXPECT_EQ_INT(rkv_block_table_stream_len(&t, 3), -1);
}

int main(void) {
  test_status_strings();
  test_dtypes();
  test_layout();
  return rkv_test_finish();
}
