/* The tests' own tiny harness: EXPECT macros that print both sides, a pass/fail tally, the
 * mandatory closing line "N passed, N failed", and the GPU skip rule (exit 77, or failure
 * under RKV_TEST_REQUIRE_GPU=1). Header-only so every test is one plain executable. */
#ifndef RKV_TEST_H
#define RKV_TEST_H

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/runtime.h>

static int rkv_test_passed_;
static int rkv_test_failed_;

#define RKV_TEST_FAIL_(...)                              \
  do {                                                   \
    fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
    fprintf(stderr, __VA_ARGS__);                        \
    fprintf(stderr, "\n");                               \
    rkv_test_failed_++;                                  \
  } while (0)

#define EXPECT(cond)                        \
  do {                                      \
    if (cond) {                             \
      rkv_test_passed_++;                   \
    } else {                                \
      RKV_TEST_FAIL_("expected %s", #cond); \
    }                                       \
  } while (0)

#define EXPECT_STATUS(expr, want)                                                      \
  do {                                                                                 \
    rkv_status got_ = (expr);                                                          \
    rkv_status want_ = (want);                                                         \
    if (got_ == want_) {                                                               \
      rkv_test_passed_++;                                                              \
    } else {                                                                           \
      RKV_TEST_FAIL_("%s returned %s (%s), expected %s", #expr, rkv_status_name(got_), \
                     rkv_status_str(got_), rkv_status_name(want_));                    \
    }                                                                                  \
  } while (0)

#define EXPECT_OK(expr) EXPECT_STATUS(expr, RKV_OK)

#define EXPECT_EQ_INT(a, b)                                     \
  do {                                                          \
    long long a_ = (long long)(a), b_ = (long long)(b);         \
    if (a_ == b_) {                                             \
      rkv_test_passed_++;                                       \
    } else {                                                    \
      RKV_TEST_FAIL_("%s == %s: %lld vs %lld", #a, #b, a_, b_); \
    }                                                           \
  } while (0)

#define EXPECT_NEAR(a, b, tol)                                                 \
  do {                                                                         \
    double a_ = (double)(a), b_ = (double)(b), t_ = (double)(tol);             \
    if (fabs(a_ - b_) <= t_) {                                                 \
      rkv_test_passed_++;                                                      \
    } else {                                                                   \
      RKV_TEST_FAIL_("%s ~= %s: %.9g vs %.9g (tol %.3g)", #a, #b, a_, b_, t_); \
    }                                                                          \
  } while (0)

#define EXPECT_STREQ(a, b)                                                     \
  do {                                                                         \
    const char *a_ = (a), *b_ = (b);                                           \
    if (a_ && b_ && strcmp(a_, b_) == 0) {                                     \
      rkv_test_passed_++;                                                      \
    } else {                                                                   \
      RKV_TEST_FAIL_("%s == %s: \"%s\" vs \"%s\"", #a, #b, a_ ? a_ : "(null)", \
                     b_ ? b_ : "(null)");                                      \
    }                                                                          \
  } while (0)

/* Ends a test binary: prints the closing line and returns the exit code. */
static inline int rkv_test_finish(void) {
  printf("%d passed, %d failed\n", rkv_test_passed_, rkv_test_failed_);
  return rkv_test_failed_ ? 1 : 0;
}

/* For tests that need a GPU: prints why, the closing line, and returns 77 (skip) — or 1 when
 * RKV_TEST_REQUIRE_GPU=1 says a skip is a failure, or when host-side checks that ran before the
 * skip already failed (a skip must never hide a failure). */
static inline int rkv_test_skip_no_gpu(const char *why) {
  const char *req = getenv("RKV_TEST_REQUIRE_GPU");
  int required = req && strcmp(req, "0") != 0 && req[0] != '\0';
  fprintf(stderr, "%s: %s\n", required ? "FAIL (GPU required)" : "SKIP", why);
  if (required) rkv_test_failed_++;
  printf("%d passed, %d failed%s\n", rkv_test_passed_, rkv_test_failed_,
         required ? "" : ", 1 skipped");
  return rkv_test_failed_ ? 1 : 77;
}

/* Deterministic PRNG for tests (splitmix64). */
static inline uint64_t rkv_test_rand(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static inline double rkv_test_uniform(uint64_t *s) {
  return (double)(rkv_test_rand(s) >> 11) * (1.0 / 9007199254740992.0);
}
/* Fisher-Yates shuffle of v[0..n) with the PRNG above. */
static inline void rkv_test_shuffle_i32(int32_t *v, size_t n, uint64_t *s) {
  for (size_t i = n; i > 1; i--) {
    const size_t j = rkv_test_rand(s) % i;
    const int32_t t = v[i - 1];
    v[i - 1] = v[j];
    v[j] = t;
  }
}

#endif /* RKV_TEST_H */
