/* `rkv bench granularity`: host cost of one compression step of every layer of a sequence
 * (rkv_evict_select_dense_multi) at each selection granularity, as a ratio to per-stream
 * selection timed in the same run. The granularities are timed in turn within every
 * repetition, so drift of a shared machine spreads over all of them alike. */
#include "rkv_tool.h"

#include <stdlib.h>
#include <string.h>

#include <rkv/evict.h>

#include "bench.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: rkv bench granularity [--layers 32] [--kv-heads 8] [--gqa 4] [--n 1152]\n"
          "                             [--budget 1024] [--head-dim 128]\n"
          "                             [--policies rkv,snapkv,h2o] [--reps 3]\n\n"
          "Times rkv_evict_select_dense_multi (dense f32 inputs, every layer of one sequence,\n"
          "random keys) at each granularity and reports per policy:\n"
          "  ms        median wall time of the whole step (all layers)\n"
          "  vs_stream median ms / stream mode's median ms, same run\n");
}

static float frand(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)((double)(z >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

typedef struct gran_cfg {
  uint32_t L, kv, gqa, d;
  int32_t n, budget;
  int reps;
} gran_cfg;

#define REPS_MAX 64

static int bench_policy(const gran_cfg *c, rkv_evict_policy pol, const float *k, const float *q,
                        const float *acc, int32_t *keep, void *ws, size_t ws_bytes) {
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = pol, p.budget = c->budget;
  double t[RKV_EVICT_GRAN_COUNT_][REPS_MAX];
  char err[256];
  for (int r = 0; r < c->reps; r++) {
    for (int g = 0; g < RKV_EVICT_GRAN_COUNT_; g++) {
      double t0 = rt_now();
      rkv_status s = rkv_evict_select_dense_multi(&p, (rkv_evict_granularity)g, k, q, acc, c->L,
                                                  c->kv, c->kv * c->gqa, c->n, c->d, keep, NULL, ws,
                                                  ws_bytes, err, sizeof err);
      t[g][r] = rt_now() - t0;
      if (s != RKV_OK) {
        fprintf(stderr, "rkv bench granularity: %s\n", err);
        return 1;
      }
    }
  }
  double base = rt_median(t[0], c->reps);
  for (int g = 0; g < RKV_EVICT_GRAN_COUNT_; g++) {
    double m = g ? rt_median(t[g], c->reps) : base;
    printf("%-8s %-9s %10.3f %9.3f\n", rkv_evict_policy_name(pol),
           rkv_evict_granularity_name((rkv_evict_granularity)g), m * 1e3, m / base);
  }
  fflush(stdout);
  return 0;
}

int rt_bench_granularity(int argc, char **argv) {
  const char *cmd = "bench granularity";
  gran_cfg c = {32, 8, 4, 128, 1152, 1024, 3};
  const char *pols = "rkv,snapkv,h2o";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v;
    uint64_t u;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    }
    if (!(v = rt_optval(cmd, argc, argv, &i))) return 2;
    if (strcmp(a, "--policies") == 0) {
      pols = v;
      continue;
    }
    static const struct {
      const char *name;
      uint64_t lo, hi;
    } kOpts[] = {{"--layers", 1, 1024},  {"--kv-heads", 1, 256},   {"--gqa", 1, 64},
                 {"--n", 2, 1 << 20},    {"--budget", 9, 1 << 20}, {"--head-dim", 1, 4096},
                 {"--reps", 1, REPS_MAX}};
    size_t o = 0;
    while (o < sizeof kOpts / sizeof kOpts[0] && strcmp(a, kOpts[o].name) != 0) o++;
    if (o == sizeof kOpts / sizeof kOpts[0]) {
      fprintf(stderr, "rkv bench granularity: unknown option '%s'\n", a);
      usage(stderr);
      return 2;
    }
    if (!rt_parse_u64(cmd, a, v, kOpts[o].lo, kOpts[o].hi, &u)) return 2;
    uint32_t *u32[] = {&c.L, &c.kv, &c.gqa, NULL, NULL, &c.d, NULL};
    if (u32[o]) *u32[o] = (uint32_t)u;
    if (o == 3) c.n = (int32_t)u;
    if (o == 4) c.budget = (int32_t)u;
    if (o == 6) c.reps = (int)u;
  }
  rkv_evict_policy list[RKV_EVICT_POLICY_COUNT_];
  int np = 0;
  char buf[128];
  snprintf(buf, sizeof buf, "%s", pols);
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    if (np == RKV_EVICT_POLICY_COUNT_ || rkv_evict_policy_parse(tok, &list[np]) != RKV_OK) {
      fprintf(stderr, "rkv bench granularity: bad policy '%s' in --policies\n", tok);
      return 2;
    }
    np++;
  }
  const uint32_t QH = c.kv * c.gqa, W = 8;
  const size_t streams = (size_t)c.L * c.kv;
  float *k = malloc(streams * (size_t)c.n * c.d * sizeof(float));
  float *q = malloc((size_t)c.L * QH * W * c.d * sizeof(float));
  float *acc = malloc(streams * (size_t)c.n * sizeof(float));
  int32_t *keep = malloc(streams * (size_t)c.n * sizeof(int32_t));
  size_t wsb = 0;
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = c.budget;
  int rc = 1;
  void *ws = NULL;
  if (rkv_evict_dense_multi_workspace_size(&p, RKV_EVICT_GRAN_SEQUENCE, c.d, c.n, &wsb) != RKV_OK) {
    fprintf(stderr, "rkv bench granularity: bad sizes (budget must exceed the window 8)\n");
    rc = 2;
    goto out;
  }
  ws = malloc(wsb);
  if (!k || !q || !acc || !keep || !ws) {
    fprintf(stderr, "rkv bench granularity: out of memory\n");
    goto out;
  }
  uint64_t rng = 15;
  for (size_t i = 0; i < streams * (size_t)c.n * c.d; i++) k[i] = frand(&rng);
  for (size_t i = 0; i < (size_t)c.L * QH * W * c.d; i++) q[i] = frand(&rng);
  for (size_t i = 0; i < streams * (size_t)c.n; i++) acc[i] = frand(&rng) + 1.0f;
  printf(
      "# rkv bench granularity: %u layers x %u kv heads, gqa %u, n %d, B %d, d %u, blas %s, "
      "median of %d\n",
      c.L, c.kv, c.gqa, c.n, c.budget, c.d, rkv_build_has_blas() ? "yes" : "no", c.reps);
  printf("%-8s %-9s %10s %9s\n", "policy", "unit", "ms", "vs_stream");
  for (int i = 0; i < np; i++)
    if (bench_policy(&c, list[i], k, q, acc, keep, ws, wsb)) goto out;
  rc = 0;
out:
  free(k), free(q), free(acc), free(keep), free(ws);
  return rc;
}
