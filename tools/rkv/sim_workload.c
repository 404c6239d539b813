/* `rkv sim` workloads: arrivals and prompt lengths from the Azure LLM inference traces
 * (tools/data/azure-llm-inference-2023, CC-BY 4.0, Patel et al., Splitwise, ISCA 2024),
 * synthetic Poisson arrivals, or a fixed batch at t = 0; generation lengths from the trace,
 * fixed, or a clipped lognormal "reasoning" distribution; and the synthetic token stream
 * whose repeated segments give the K/V model its near-duplicate keys. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

#ifndef RKV_SOURCE_DIR
#define RKV_SOURCE_DIR "."
#endif

static void add_system_prompts(const sim_workload_opts *o, sim_req *r, uint32_t n);

static uint64_t sm64(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
static double unif(uint64_t *s) {
  return ((double)(sm64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}
static double normal(uint64_t *s) {
  double u1 = unif(s), u2 = unif(s);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* "2023-11-16 18:17:03.9799600" -> seconds (day of month included, enough for a trace). */
static bool parse_ts(const char *s, double *out) {
  int y, mo, d, h, mi;
  double sec;
  if (sscanf(s, "%d-%d-%d %d:%d:%lf", &y, &mo, &d, &h, &mi, &sec) != 6) return false;
  *out = (((double)d * 24.0 + h) * 60.0 + mi) * 60.0 + sec;
  return true;
}

/* Largest prompt or generation a trace line may ask for: the --prompt-len / --gen-cap limit;
 * the engines allocate prompt + gen tokens per request. */
#define TRACE_MAX_TOKENS (INT64_C(1) << 30)

/* A token count column: decimal digits with optional blanks around them (the published
 * traces end lines with CR LF). */
static bool parse_count(const char *s, int64_t *out) {
  while (*s == ' ' || *s == '\t') s++;
  if (*s < '0' || *s > '9') return false;
  int64_t v = 0;
  for (; *s >= '0' && *s <= '9'; s++) {
    v = v * 10 + (*s - '0');
    if (v > TRACE_MAX_TOKENS) return false;
  }
  while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') s++;
  *out = v;
  return *s == '\0';
}

static bool load_trace(const char *path, uint32_t n, sim_req *reqs, uint32_t *got) {
  FILE *f = fopen(path, "r");
  if (!f) {
    fprintf(stderr, "rkv sim: cannot open trace '%s'\n", path);
    return false;
  }
  char line[512];
  uint32_t k = 0;
  double t0 = 0.0;
  long lineno = 0;
  bool ok = true;
  while (k < n && fgets(line, sizeof line, f)) {
    lineno++;
    size_t len = strlen(line);
    if (len + 1 == sizeof line && line[len - 1] != '\n') {
      fprintf(stderr, "rkv sim: %s:%ld: line longer than %zu bytes\n", path, lineno,
              sizeof line - 2);
      ok = false;
      break;
    }
    if (lineno == 1 && strncmp(line, "TIMESTAMP", 9) == 0) continue;
    char *c1 = strchr(line, ',');
    char *c2 = c1 ? strchr(c1 + 1, ',') : NULL;
    double ts;
    if (!c1 || !c2 || !(*c1 = '\0', *c2 = '\0', parse_ts(line, &ts))) {
      fprintf(stderr, "rkv sim: %s:%ld: malformed line\n", path, lineno);
      ok = false;
      break;
    }
    /* sscanf takes "nan" and "inf" for the seconds: a NaN arrival never compares <= the clock
     * and the simulation would wait for it forever. */
    if (!isfinite(ts) || (k > 0 && !isfinite(ts - t0))) {
      fprintf(stderr, "rkv sim: %s:%ld: timestamp '%s' is not a finite time\n", path, lineno, line);
      ok = false;
      break;
    }
    int64_t ctx, gen;
    if (!parse_count(c1 + 1, &ctx) || !parse_count(c2 + 1, &gen)) {
      fprintf(stderr,
              "rkv sim: %s:%ld: ContextTokens and GeneratedTokens must be integers in "
              "[0, %lld]\n",
              path, lineno, (long long)TRACE_MAX_TOKENS);
      ok = false;
      break;
    }
    if (k == 0) t0 = ts;
    reqs[k].id = k;
    reqs[k].arrival = ts - t0;
    reqs[k].prompt = ctx > 0 ? ctx : 1;
    reqs[k].gen = gen > 0 ? gen : 1;
    k++;
  }
  fclose(f);
  *got = k;
  if (ok && k == 0) {
    fprintf(stderr, "rkv sim: trace '%s' has no requests\n", path);
    ok = false;
  }
  return ok;
}

static int cmp_arrival(const void *a, const void *b) {
  const sim_req *x = a, *y = b;
  if (x->arrival != y->arrival) return x->arrival < y->arrival ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

bool sim_workload_build(const sim_workload_opts *o, sim_req **out, uint32_t *n_out) {
  *out = NULL;
  *n_out = 0;
  sim_req *r = calloc(o->n ? o->n : 1, sizeof *r);
  if (!r) return false;
  uint64_t rng = o->seed * 0x2545F4914F6CDD1Dull + 17;
  uint32_t n = o->n;
  bool trace = strncmp(o->kind, "azure", 5) == 0 || o->trace;
  if (trace) {
    char path[1024];
    if (o->trace) {
      snprintf(path, sizeof path, "%s", o->trace);
    } else if (strcmp(o->kind, "azure-conv") == 0 || strcmp(o->kind, "azure-code") == 0) {
      snprintf(path, sizeof path,
               "%s/tools/data/azure-llm-inference-2023/AzureLLMInferenceTrace_%s.csv",
               RKV_SOURCE_DIR, o->kind + 6);
    } else {
      fprintf(stderr,
              "rkv sim: bad value for --workload: '%s' (azure-conv, azure-code, poisson, fixed)\n",
              o->kind);
      free(r);
      return false;
    }
    if (!load_trace(path, o->n, r, &n)) {
      free(r);
      return false;
    }
    if (n < o->n) fprintf(stderr, "rkv sim: trace has only %u requests (asked for %u)\n", n, o->n);
    double last = n ? r[n - 1].arrival : 0.0;
    if (o->span > 0.0 && last > 0.0) {
      double scale = o->span / last;
      for (uint32_t i = 0; i < n; i++) {
        r[i].arrival *= scale;
        if (!isfinite(r[i].arrival)) { /* a tiny last offset overflows the scale */
          fprintf(stderr, "rkv sim: trace '%s': arrivals cannot be rescaled to --span %g\n", path,
                  o->span);
          free(r);
          return false;
        }
      }
    }
    for (uint32_t i = 0; i < n; i++)
      if (o->prompt_cap > 0 && r[i].prompt > o->prompt_cap) r[i].prompt = o->prompt_cap;
  } else if (strcmp(o->kind, "poisson") == 0) {
    double t = 0.0;
    for (uint32_t i = 0; i < n; i++) {
      r[i].id = i;
      r[i].arrival = t;
      t += -log(unif(&rng)) / o->rate;
      r[i].prompt = o->prompt_len;
      r[i].gen = 1;
    }
  } else if (strcmp(o->kind, "fixed") == 0) {
    for (uint32_t i = 0; i < n; i++) {
      r[i].id = i;
      r[i].arrival = 0.0;
      r[i].prompt = o->prompt_len;
      r[i].gen = 1;
    }
  } else {
    fprintf(stderr,
            "rkv sim: bad value for --workload: '%s' (azure-conv, azure-code, poisson, fixed)\n",
            o->kind);
    free(r);
    return false;
  }
  /* generation lengths */
  if (strcmp(o->gen, "trace") == 0) {
    if (!trace) {
      fprintf(stderr, "rkv sim: --gen trace needs a trace workload\n");
      free(r);
      return false;
    }
  } else if (strcmp(o->gen, "fixed") == 0) {
    for (uint32_t i = 0; i < n; i++) r[i].gen = o->gen_fixed;
  } else if (strcmp(o->gen, "reasoning") == 0) {
    double mu = log(o->gen_mean) - 0.5 * o->gen_sigma * o->gen_sigma;
    for (uint32_t i = 0; i < n; i++) {
      double g = exp(mu + o->gen_sigma * normal(&rng));
      int64_t gi = (int64_t)llround(g);
      r[i].gen = gi < 1 ? 1 : gi > o->gen_cap ? o->gen_cap : gi;
    }
  } else {
    fprintf(stderr, "rkv sim: unknown --gen '%s' (reasoning, trace, fixed)\n", o->gen);
    free(r);
    return false;
  }
  for (uint32_t i = 0; i < n; i++)
    if (o->gen_cap > 0 && r[i].gen > o->gen_cap) r[i].gen = o->gen_cap;
  add_system_prompts(o, r, n);
  qsort(r, n, sizeof *r, cmp_arrival);
  *out = r;
  *n_out = n;
  return true;
}

int64_t sim_system_prompt_len(const sim_workload_opts *o, uint32_t k) {
  uint64_t st = o->seed ^ 0x5157E3ull ^ ((uint64_t)k * 0x9E3779B97F4A7C15ull);
  const uint64_t span = (uint64_t)(o->prefix_hi - o->prefix_lo) + 1;
  return o->prefix_lo + (int64_t)(sm64(&st) % span);
}

/* Shared-prefix workloads: each request's prompt gets one of the system prompts in front
 * (chosen from the seed and its id, so every policy run sees the same assignment). */
static void add_system_prompts(const sim_workload_opts *o, sim_req *r, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    r[i].sys = -1;
    r[i].sys_len = 0;
    if (!o->n_prefixes) continue;
    uint64_t st = o->seed ^ 0xA11CEull ^ ((uint64_t)r[i].id * 0xBF58476D1CE4E5B9ull);
    r[i].sys = (int32_t)(sm64(&st) % o->n_prefixes);
    r[i].sys_len = sim_system_prompt_len(o, (uint32_t)r[i].sys);
    r[i].prompt += r[i].sys_len;
  }
}

void sim_req_tokens(uint64_t seed, const sim_req *r, int32_t *out, int64_t len) {
  const int64_t k = r->sys >= 0 ? (r->sys_len < len ? r->sys_len : len) : 0;
  if (k) sim_tokens(seed, -1 - (int64_t)r->sys, out, k);
  if (len > k) sim_tokens(seed, r->id, out + k, len - k);
}

uint32_t sim_prefix_hashes(uint64_t seed, int32_t sys, int64_t sys_len, uint32_t block_size,
                           uint64_t *out, uint32_t cap) {
  int32_t *t = malloc(sizeof(int32_t) * (size_t)(sys_len > 0 ? sys_len : 1));
  if (!t) return 0;
  sim_tokens(seed, -1 - (int64_t)sys, t, sys_len);
  const uint32_t nb = rkv_prefix_hash_blocks(t, (uint32_t)sys_len, block_size, 0, out, cap);
  free(t);
  return nb;
}

/* The synthetic "reasoning text": segments of 8..32 tokens; after the first, a segment repeats
 * an earlier span (each token re-drawn with probability 0.1) with probability 0.35, else it
 * is fresh tokens drawn with a skewed frequency (id = floor(V * u^2)). */
void sim_tokens(uint64_t seed, int64_t id, int32_t *out, int64_t len) {
  uint64_t s = seed ^ ((uint64_t)id * 0x9E3779B97F4A7C15ull) ^ 0xC0FFEEull;
  int64_t k = 0;
  while (k < len) {
    int64_t seg = 8 + (int64_t)(sm64(&s) % 25);
    bool rep = k >= 32 && unif(&s) < 0.35;
    int64_t src = rep ? (int64_t)(sm64(&s) % (uint64_t)(k - seg > 0 ? k - seg : 1)) : 0;
    for (int64_t j = 0; j < seg && k < len; j++, k++) {
      if (rep && unif(&s) >= 0.1) {
        out[k] = out[src + j < k ? src + j : 0];
      } else {
        double u = unif(&s);
        out[k] = (int32_t)(SIM_VOCAB * u * u);
      }
    }
  }
}
