/* Eviction parameters: policy names round-trip, every validation rule with its message, the
 * compression trigger (steady state at B + buffer, after prefill at >= B, never for full),
 * kept counts and workspace size queries. */
#include <stddef.h>
#include <string.h>

#include <rkv/evict.h>

#include "rkv_test.h"

static void expect_invalid(const rkv_evict_params *p, const char *needle) {
  char err[256];
  EXPECT_STATUS(rkv_evict_params_validate(p, err, sizeof err), RKV_ERR_INVALID_ARG);
  if (!strstr(err, needle)) RKV_TEST_FAIL_("message '%s' lacks '%s'", err, needle);
}

static void test_names(void) {
  for (int i = 0; i < RKV_EVICT_POLICY_COUNT_; i++) {
    rkv_evict_policy p;
    EXPECT_OK(rkv_evict_policy_parse(rkv_evict_policy_name((rkv_evict_policy)i), &p));
    EXPECT_EQ_INT(p, i);
  }
  EXPECT_STREQ(rkv_evict_policy_name(RKV_EVICT_RKV), "rkv");
  EXPECT_STREQ(rkv_evict_policy_name(RKV_EVICT_SNAPKV), "snapkv");
  EXPECT_STREQ(rkv_evict_policy_name(RKV_EVICT_STREAMING), "streaming");
  EXPECT_STREQ(rkv_evict_policy_name(RKV_EVICT_H2O), "h2o");
  EXPECT_STREQ(rkv_evict_policy_name(RKV_EVICT_FULL), "full");
  EXPECT_STREQ(rkv_evict_policy_name((rkv_evict_policy)99), "invalid");
  rkv_evict_policy p;
  EXPECT_STATUS(rkv_evict_policy_parse("lru", &p), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_policy_parse(NULL, &p), RKV_ERR_INVALID_ARG);
}

static void test_validate(void) {
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  char err[256] = "x";
  EXPECT_OK(rkv_evict_params_validate(&p, err, sizeof err));
  EXPECT_STREQ(err, "");
  EXPECT_EQ_INT(p.window, 8);
  EXPECT_EQ_INT(p.buffer, 128);
  EXPECT_EQ_INT(p.kernel, 7);
  EXPECT_EQ_INT(p.sinks, 4);
  EXPECT_NEAR(p.lambda, 0.1, 1e-7);
  EXPECT_NEAR(p.threshold, 0.5, 0);
  EXPECT_STATUS(rkv_evict_params_validate(NULL, err, sizeof err), RKV_ERR_INVALID_ARG);
  rkv_evict_params q = p;
  q.struct_size = 8;
  expect_invalid(&q, "struct_size");
  q = p, q.policy = (rkv_evict_policy)17;
  expect_invalid(&q, "policy");
  q = p, q.budget = 8;
  expect_invalid(&q, "B must be > window");
  q = p, q.window = 0;
  expect_invalid(&q, "window");
  q = p, q.buffer = 0;
  expect_invalid(&q, "buffer");
  q = p, q.kernel = 4;
  expect_invalid(&q, "odd");
  q = p, q.kernel = 0;
  expect_invalid(&q, "odd");
  q = p, q.lambda = -0.01f;
  expect_invalid(&q, "lambda");
  q = p, q.lambda = 1.5f;
  expect_invalid(&q, "lambda");
  q = p, q.lambda = NAN;
  expect_invalid(&q, "lambda");
  q = p, q.threshold = 1.01f;
  expect_invalid(&q, "threshold");
  q = p, q.threshold = -2.0f;
  expect_invalid(&q, "threshold");
  q = p, q.sinks = 1024;
  expect_invalid(&q, "sinks");
  q = p, q.sinks = -1;
  expect_invalid(&q, "sinks");
  q = p, q.budget = INT32_MAX - 10;
  expect_invalid(&q, "overflows");
  /* Edges that are valid. */
  q = p, q.kernel = 1, q.lambda = 0.0f, q.threshold = -1.0f, q.sinks = 0, q.budget = 9;
  EXPECT_OK(rkv_evict_params_validate(&q, NULL, 0));
  q.lambda = 1.0f, q.threshold = 1.0f, q.sinks = 8, q.buffer = 1;
  EXPECT_OK(rkv_evict_params_validate(&q, err, 1)); /* tiny buffers are fine */
}

static void test_trigger(void) {
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 100, p.buffer = 20;
  EXPECT(!rkv_evict_should_compress(&p, 99, true));
  EXPECT(rkv_evict_should_compress(&p, 100, true));
  EXPECT(rkv_evict_should_compress(&p, 5000, true));
  EXPECT(!rkv_evict_should_compress(&p, 100, false));
  EXPECT(!rkv_evict_should_compress(&p, 119, false));
  EXPECT(rkv_evict_should_compress(&p, 120, false));
  EXPECT(rkv_evict_should_compress(&p, 121, false));
  for (int pol = 1; pol < RKV_EVICT_POLICY_COUNT_; pol++) {
    p.policy = (rkv_evict_policy)pol;
    EXPECT(rkv_evict_should_compress(&p, 120, false));
  }
  p.policy = RKV_EVICT_FULL;
  EXPECT(!rkv_evict_should_compress(&p, 100000, false));
  EXPECT(!rkv_evict_should_compress(&p, 100000, true));
  p.policy = RKV_EVICT_RKV, p.kernel = 2;
  EXPECT(!rkv_evict_should_compress(&p, 100000, false)); /* invalid params never trigger */
  EXPECT(!rkv_evict_should_compress(NULL, 100000, false));
}

static void test_counts_and_sizes(void) {
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 64;
  EXPECT_EQ_INT(rkv_evict_kept_count(&p, 0), 0);
  EXPECT_EQ_INT(rkv_evict_kept_count(&p, 64), 64);
  EXPECT_EQ_INT(rkv_evict_kept_count(&p, 65), 64);
  EXPECT_EQ_INT(rkv_evict_kept_count(&p, 1000), 64);
  p.policy = RKV_EVICT_FULL;
  EXPECT_EQ_INT(rkv_evict_kept_count(&p, 1000), 1000);
  p.policy = RKV_EVICT_RKV;
  size_t a = 0, b = 0;
  EXPECT_OK(rkv_evict_workspace_size(&p, 8, 32, 128, 192, &a));
  EXPECT_OK(rkv_evict_workspace_size(&p, 8, 32, 128, 1152, &b));
  EXPECT(a > 0 && b > a);
  /* The dominant terms are there: keys [n][d] and a similarity tile [256][n]. */
  EXPECT(b >= 1152 * 128 * 4 + 256 * 1152 * 4);
  EXPECT_STATUS(rkv_evict_workspace_size(&p, 8, 12, 128, 192, &a), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_workspace_size(&p, 8, 32, 0, 192, &a), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_workspace_size(&p, 8, 32, 128, -1, &a), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_workspace_size(&p, 8, 32, 128, 10, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_OK(rkv_evict_dense_workspace_size(&p, 64, 300, &a));
  EXPECT(a >= 300 * 64 * 4);
  /* Absurd sizes are refused, never wrapped around. */
  p.window = 1 << 30, p.budget = (1 << 30) + 1, p.buffer = 1, p.sinks = 0;
  EXPECT_STATUS(rkv_evict_dense_workspace_size(&p, 4096, INT32_MAX - 1, &a), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_workspace_size(&p, 8, 32, 4096, INT32_MAX - 1, &a), RKV_ERR_INVALID_ARG);
  p = (rkv_evict_params)RKV_EVICT_PARAMS_INIT;
  p.kernel = 2;
  EXPECT_STATUS(rkv_evict_dense_workspace_size(&p, 64, 300, &a), RKV_ERR_INVALID_ARG);
}

/* The policy table as engines see it: each row's flags, names round-trip, errors. */
static void test_policy_info(void) {
  /* evicts, query window, attention mass, positional, device */
  const bool want[RKV_EVICT_POLICY_COUNT_][5] = {
      [RKV_EVICT_FULL] = {false, false, false, false, true},
      [RKV_EVICT_RKV] = {true, true, false, false, true},
      [RKV_EVICT_SNAPKV] = {true, true, false, false, true},
      [RKV_EVICT_STREAMING] = {true, false, false, true, true},
      [RKV_EVICT_H2O] = {true, false, true, false, true},
  };
  for (int i = 0; i < RKV_EVICT_POLICY_COUNT_; i++) {
    rkv_evict_policy_info info;
    memset(&info, 0xAB, sizeof info);
    info.struct_size = sizeof info;
    EXPECT_OK(rkv_evict_policy_get_info((rkv_evict_policy)i, &info));
    EXPECT(strcmp(info.name, rkv_evict_policy_name((rkv_evict_policy)i)) == 0);
    const bool got[5] = {info.evicts, info.needs_query_window, info.needs_attention_mass,
                         info.positional, info.device_variant};
    for (int f = 0; f < 5; f++) EXPECT_EQ_INT(got[f], want[i][f]);
    rkv_evict_policy back;
    EXPECT_OK(rkv_evict_policy_parse(info.name, &back));
    EXPECT_EQ_INT(back, i);
    /* the trigger follows the table: a policy that never evicts never compresses */
    rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
    p.policy = (rkv_evict_policy)i;
    EXPECT_EQ_INT(rkv_evict_should_compress(&p, 1 << 20, false), info.evicts);
  }
  rkv_evict_policy_info info;
  info.struct_size = sizeof info;
  EXPECT_STATUS(rkv_evict_policy_get_info(RKV_EVICT_POLICY_COUNT_, &info), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_policy_get_info((rkv_evict_policy)-1, &info), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_evict_policy_get_info(RKV_EVICT_RKV, NULL), RKV_ERR_INVALID_ARG);
  info.struct_size = sizeof info + 8;
  EXPECT_STATUS(rkv_evict_policy_get_info(RKV_EVICT_RKV, &info), RKV_ERR_INVALID_ARG);
  /* an older, shorter struct gets its prefix only */
  union {
    rkv_evict_policy_info info;
    unsigned char b[sizeof(rkv_evict_policy_info)];
  } u;
  memset(&u, 0xCD, sizeof u);
  u.info.struct_size = (uint32_t)offsetof(rkv_evict_policy_info, evicts);
  EXPECT_OK(rkv_evict_policy_get_info(RKV_EVICT_RKV, &u.info));
  EXPECT_EQ_INT(u.b[offsetof(rkv_evict_policy_info, evicts)], 0xCD);
  EXPECT(strcmp(u.info.name, "rkv") == 0);
}

int main(void) {
  test_names();
  test_validate();
  test_trigger();
  test_counts_and_sizes();
  test_policy_info();
  return rkv_test_finish();
}
