/* `rkv eval`: does reasoning still come out right with a fraction of the KV cache? Serves the
 * project's trained test model (tools/model, docs/MODEL.md) through librkv on the CPU backend
 * (or, with --backend cuda, with its KV cache on a GPU: the library executor's device path),
 * decoding many held-out addition problems at once with continuous batching (new problems
 * are admitted, prefilled and decoded in the same step as running ones), under every
 * eviction policy and budget, and reports exact-match accuracy, mean generated length, peak
 * KV blocks and tokens/s as a table, JSON and an SVG plot.
 *
 * Batching is the librkv scheduler's (its plan says which sequences prefill or decode and
 * which compress; the model runner reads the slots it appended), or with --simple-loop the
 * tool's own loop (one step = every live sequence feeds its next token, newly admitted ones
 * their whole prompt). Either way compression runs right after the step whose attention saw
 * the full cache, as docs/EVICTION.md ("The algorithm, exactly") prescribes. */
#include "rkv_tool.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/buffer_emu.h>
#include <rkv/evict.h>
#include <rkv/scheduler.h>

#include "eval_oracle.h"
#include "model.h"

const char rt_cmd_eval_summary[] =
    "accuracy of the test model under each eviction policy and budget";

#define EVAL_MAX_LIST 16
#define EVAL_SEED_DEFAULT 777
/* `--policies oracle`: not a library policy; the tool drives H2O's selection with its own
 * scores (eval_oracle.h). */
#define EVAL_ORACLE ((rkv_evict_policy)RKV_EVICT_POLICY_COUNT_)

typedef struct eval_opts {
  const char *model_path;
  rkv_evict_policy policies[EVAL_MAX_LIST];
  int n_policies;
  int32_t budgets[EVAL_MAX_LIST];
  double budget_pct[EVAL_MAX_LIST]; /* > 0: this budget is a share of each problem's length */
  int n_budgets;
  int32_t buffer;
  int32_t window;
  float lambda; /* R-KV joint score weight (importance vs redundancy) */
  uint32_t problems;
  int32_t min_digits, max_digits;
  bool digits_given;    /* --digits; else the trained range of the weights' task version */
  bool budgets_given;   /* --budgets; else absolute ones (version 1) or shares (version 2) */
  int32_t task_version; /* the generator the weights were trained on (1 when unknown) */
  uint64_t seed;
  uint32_t batch;
  uint32_t block_size;
  rkv_dtype kv_dtype;
  int32_t threads;
  bool json;
  const char *plot;
  int show;
  const char *generations_path; /* --generations */
  FILE *generations;            /* open while the runs go: one JSON line per finished problem */
  bool check;
  bool require_bounds;
  double min_full_accuracy; /* < 0: no requirement */
  bool simple_loop;         /* the tool's own batching loop instead of the scheduler */
  rkv_backend_kind backend; /* where the KV pool lives: CPU or CUDA */
  bool compare_cpu;         /* CUDA runs repeated on the CPU backend, accuracies compared */
  bool emulate;             /* --backend emu: the CUDA path on the emulated device */
  uint32_t repeat;          /* requests per problem (shared prompts) */
  bool prefix_cache;        /* share cached prompt blocks */
  bool overlap;             /* plan step N+1 while step N runs (rkv_sched_config.overlap) */
  int prefix_rule;          /* -1: prompts carry no hashes; else an rkv_sched_prefix_rule */
  rkv_evict_granularity granularity; /* which streams share a kept set (the executor's) */
} eval_opts;

typedef struct eval_result {
  rkv_evict_policy policy;
  int32_t budget;         /* 0 for full; the largest request budget of a --budgets N% run */
  double budget_pct;      /* > 0: each request's budget is this share of its problem's length */
  double budget_sum;      /* request budgets summed (their mean is reported) */
  int32_t max_over;       /* worst (stream length - what the request's budget allows), per-request
                           * budgets (N%): > 0 breaks the bounds */
  int32_t max_over_after; /* worst (length right after a compression - protected - budget) */
  uint32_t problems;
  uint32_t correct;
  uint64_t generated_tokens;
  uint64_t prompt_tokens;
  uint32_t peak_blocks;
  int32_t max_stream_len;     /* longest stream seen (before the step's compression) */
  int32_t max_after_compress; /* longest stream right after any compression */
  int32_t max_protect;        /* longest protected prompt prefix (protect rule): kept on top
                               * of the budget */
  int32_t max_prompt_len;
  uint64_t compressions;
  uint64_t tokens_evicted;
  uint64_t blocks_freed;
  uint64_t steps;
  uint64_t preemptions;
  uint32_t max_running;
  double seconds;
  bool budget_ok;
  uint64_t prefill_tokens; /* prompt tokens computed (the scheduler's count) */
  uint64_t hit_tokens;     /* prompt tokens taken from the prefix cache */
  uint32_t by_digits_total[RT_TASK_MAX_DIGITS + 1];
  uint32_t by_digits_correct[RT_TASK_MAX_DIGITS + 1];
  /* Sum over problems of a hash of (id, generated text): equal digests mean the same text for
   * every problem, whatever order they finished in (--compare-cpu compares them). */
  uint64_t gen_digest;
} eval_result;

typedef struct eval_seq {
  int64_t id;
  rt_task_problem prob;
  int32_t prompt[RT_TASK_MAX_TEXT];
  int32_t prompt_len;
  char gen[RT_TASK_MAX_TEXT + 64];
  int32_t gen_len;
  int32_t pos;      /* tokens fed so far = logical position of the next one */
  int32_t next_tok; /* token to feed next (decode) */
  int32_t prev_tok; /* token fed before next_tok */
  bool prefill;     /* feeds its prompt this step */
  bool done;
} eval_seq;

static void eval_usage(void) {
  const rkv_evict_params defaults = RKV_EVICT_PARAMS_INIT;
  printf(
      "usage: rkv eval [--model FILE] [--policies LIST] [--budgets LIST] [--buffer N]\n"
      "                [--window N] [--lambda X] [--problems N] [--digits LO-HI] [--seed N] "
      "[--batch N]\n"
      "                [--block-size N] [--kv-dtype f32|f16|bf16] [--threads N] [--json]\n"
      "                [--plot FILE.svg] [--show N] [--check] [--simple-loop]\n"
      "                [--backend cpu|cuda] [--compare-cpu] [--generations FILE]\n"
      "                [--repeat K] [--prefix-cache on|off] [--prefix-rule protect|copy]\n"
      "                [--overlap on|off] [--granularity stream|layer|kvhead|sequence]\n"
      "  Decodes held-out problems of the labelled-addition task (docs/MODEL.md) with the\n"
      "  trained test model through librkv (CPU or CUDA backend, paged KV, continuous\n"
      "  batching) and reports, per policy and budget: exact-match accuracy, mean generated\n"
      "  tokens, peak KV blocks in use, and generated tokens per second.\n"
      "  --model FILE      weights (default tools/model/weights/adder.safetensors; the v2\n"
      "                    model is adder2.safetensors). The task version comes from the\n"
      "                    weights' metadata (docs/MODEL.md)\n"
      "  --policies LIST   comma list of full,rkv,snapkv,streaming,h2o (default those five)\n"
      "                    and oracle: keeps what the rest of the trace reads, known from the\n"
      "                    task's structure (an upper-bound proxy; version-2 models, cpu)\n"
      "  --budgets LIST    comma list of per-stream budgets B (default 32,48,64,96,128); N%%\n"
      "                    sets each request's B to N%% of its problem's length (prompt +\n"
      "                    reference trace); default for a version-2 model:\n"
      "                    10%%,15%%,20%%,30%%,45%%,60%%\n"
      "  --buffer N        tokens decoded between compressions (default 16)\n"
      "  --window N        alpha: newest tokens kept / query-window rows (default 8)\n"
      "  --lambda X        R-KV joint score weight in [0, 1]: lambda * importance - (1 -\n"
      "                    lambda) * redundancy (default %.2f, the paper's)\n"
      "  --problems N      problems per (policy, budget) (default 500)\n"
      "  --digits LO-HI    operand digit range (default the trained range: 6-20 for a\n"
      "                    version-1 model, 6-10 for version 2)\n"
      "  --seed N          problem-set seed (default %d; training never uses it)\n"
      "  --batch N         sequences decoded at once (default 32)\n"
      "  --show N          print the first N generations of each run on stderr\n"
      "  --generations FILE  write every generation as a JSON line {policy, budget, id,\n"
      "                    digits, correct, text}, in the order problems finish (what a\n"
      "                    client of the library must reproduce token for token)\n"
      "  --check           run the block manager / scheduler checks after every step (slow)\n",
      (double)defaults.lambda, EVAL_SEED_DEFAULT);
  fputs(
      "  --repeat K        submit every problem K times (shared prompts; default 1)\n"
      "  --prefix-cache on|off  share the cached blocks of identical prompt prefixes (default\n"
      "                    off; needs the scheduler loop). Greedy decoding: the tokens must\n"
      "                    equal a run with the cache off and the same --prefix-rule\n"
      "  --prefix-rule R   what compression may do to a prompt's full blocks: protect (kept,\n"
      "                    the budget counts the rest) or copy (evictable; shared blocks are\n"
      "                    copied first). Default: protect with --prefix-cache on, else\n"
      "                    none (prompts evictable, no hashes)\n"
      "  --overlap on|off  overlap scheduling: plan step N+1 before step N's compressions and\n"
      "                    report (default off). Greedy decoding: the tokens must equal sync\n"
      "                    mode's; a sequence ended in step N may run once more, discarded\n"
      "  --simple-loop     batch with the tool's own loop instead of the librkv scheduler\n"
      "  --granularity G   which streams share one kept set: stream (default: each (layer, kv\n"
      "                    head) its own), layer, kvhead or sequence (docs/EVICTION.md,\n"
      "                    \"Selection granularity\"); the executor runs rkv_evict_seq for the\n"
      "                    coarser units (the batched launch aggregates on a device).\n"
      "                    Scheduler loop only\n"
      "  --backend B       where the KV cache lives: cpu (default) or cuda. cuda: the KV pool,\n"
      "                    the attention (rkv_attn_*), the query window and eviction\n"
      "                    (rkv/evict_cuda.h) run on the GPU; the model's dense math stays on\n"
      "                    the host, and each layer copies its q/k/v rows to the device and\n"
      "                    the attention output back (the scheduler loop only; emu: the same\n"
      "                    path on an emulated device, for tests). Needs --block-size 16 or\n"
      "                    32 and --window <= 256 (rkv, snapkv); a head_dim under 64 is\n"
      "                    zero-padded on the device (32 -> 128). h2o runs on cuda too: the\n"
      "                    CUDA attention accumulates the attention mass it ranks by (float\n"
      "                    atomics, so its scores may differ from the CPU's in the last bits).\n"
      "                    Exit 77 (skipped) when this build has no CUDA or no GPU is usable.\n"
      "  --compare-cpu     with --backend cuda: run every policy and budget on the CPU backend\n"
      "                    too and exit 3 unless both give the same accuracy (with --backend\n"
      "                    emu: the same text for every problem); each line says whether the\n"
      "                    generations were identical\n"
      "  --require-bounds  exit 3 unless every run kept its streams within max(prompt, B +\n"
      "                    buffer) tokens and at most B right after each compression\n"
      "  --min-full-accuracy X  exit 3 when the full-cache accuracy is below X (CI floor)\n"
      "  --json            one JSON object instead of the table\n"
      "  --plot FILE       write an SVG plot of accuracy against budget\n"
      "  Exit status: 0, 1 on a runtime failure, 2 on bad usage, 3 when a --require-bounds /\n"
      "  --min-full-accuracy / --compare-cpu check fails, 77 when --backend cuda cannot run\n"
      "  here (no CUDA in this build, or no usable GPU).\n",
      stdout);
}

static const char *eval_policy_name(rkv_evict_policy p) {
  return p == EVAL_ORACLE ? "oracle" : rkv_evict_policy_name(p);
}

/* The library policy a run uses: the oracle drives H2O's selection. */
static rkv_evict_policy eval_lib_policy(rkv_evict_policy p) {
  return p == EVAL_ORACLE ? RKV_EVICT_H2O : p;
}

static bool parse_policies(const char *s, eval_opts *o) {
  char buf[256];
  if (!rt_check_list("eval", "--policies", s, EVAL_MAX_LIST, sizeof buf - 1)) return false;
  snprintf(buf, sizeof buf, "%s", s);
  o->n_policies = 0;
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    rkv_evict_policy p = EVAL_ORACLE;
    if (strcmp(t, "oracle") != 0 && rkv_evict_policy_parse(t, &p) != RKV_OK) {
      fprintf(stderr,
              "rkv eval: bad value for --policies: unknown policy '%s' (full, rkv, snapkv, "
              "streaming, h2o, oracle)\n",
              t);
      return false;
    }
    o->policies[o->n_policies++] = p;
  }
  return true;
}

static bool parse_budgets(const char *s, eval_opts *o) {
  char buf[256];
  if (!rt_check_list("eval", "--budgets", s, EVAL_MAX_LIST, sizeof buf - 1)) return false;
  snprintf(buf, sizeof buf, "%s", s);
  o->n_budgets = 0;
  for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    const size_t tl = strlen(t);
    if (tl > 1 && t[tl - 1] == '%') { /* a share of each problem's reference length */
      t[tl - 1] = '\0';
      double pct;
      if (!rt_parse_f64("eval", "--budgets", t, 0.1, 100.0, &pct)) return false;
      o->budget_pct[o->n_budgets] = pct;
      o->budgets[o->n_budgets++] = 0;
      continue;
    }
    uint64_t v;
    if (!rt_parse_u64("eval", "--budgets", t, 2, 1 << 20, &v)) return false;
    o->budget_pct[o->n_budgets] = 0.0;
    o->budgets[o->n_budgets++] = (int32_t)v;
  }
  return true;
}

static int32_t argmax(const float *x, int32_t n) {
  int32_t best = 0;
  for (int32_t i = 1; i < n; i++)
    if (x[i] > x[best]) best = i;
  return best;
}

/* Longest stream of a sequence (all layers and heads). */
static int32_t seq_max_len(rkv_blockmgr *bm, const rt_model_config *mc, int64_t id) {
  int32_t best = 0;
  for (uint32_t l = 0; l < (uint32_t)mc->n_layers; l++)
    for (uint32_t h = 0; h < (uint32_t)mc->n_kv_heads; h++) {
      int32_t ln = 0;
      if (rkv_blockmgr_stream_len(bm, id, l, h, &ln) == RKV_OK && ln > best) best = ln;
    }
  return best;
}

/* Compresses the layers of sequence `id` (every layer when `all_layers`, else those whose
 * streams reached the trigger) and accumulates the outcome. Returns RKV_OK or the failure. */
static rkv_status eval_compress(const rkv_evict_params *ep, rt_model_runner *r,
                                const rt_model_config *mc, int64_t id, bool all_layers,
                                bool after_prefill, void *ework, size_t ews, eval_result *res,
                                uint64_t *evicted, uint32_t *freed, bool *did) {
  rkv_blockmgr *bm = rt_model_runner_blockmgr(r);
  *did = false;
  for (uint32_t l = 0; l < (uint32_t)mc->n_layers; l++) {
    int32_t len = 0;
    rkv_blockmgr_stream_len(bm, id, l, 0, &len);
    if (!all_layers && !rkv_evict_should_compress(ep, len, after_prefill)) continue;
    rkv_evict_result er = {0};
    /* rkv_evict_layer on a CPU pool, the rkv/evict_cuda.h flow on a CUDA one */
    rkv_status es = rt_model_runner_evict(r, ep, id, l, ework, ews, &er);
    if (es != RKV_OK) {
      fprintf(stderr, "rkv eval: eviction (%s, layer %u) failed: %s (%s)\n",
              rkv_evict_policy_name(ep->policy), l, rkv_status_str(es),
              rt_model_runner_last_error(r));
      return es;
    }
    *did = true;
    res->tokens_evicted += er.tokens_evicted;
    res->blocks_freed += er.blocks_freed;
    *evicted += er.tokens_evicted;
    *freed += er.blocks_freed;
    for (uint32_t h = 0; h < (uint32_t)mc->n_kv_heads; h++) {
      int32_t ln = 0;
      rkv_blockmgr_stream_len(bm, id, l, h, &ln);
      if (ln > res->max_after_compress) res->max_after_compress = ln;
    }
  }
  if (*did) res->compressions++;
  return RKV_OK;
}

/* Longest prompt and reference target of the run's digit range (model.h's bounds). */
static int32_t eval_max_prompt(const eval_opts *o) {
  return RT_TASK_PROMPT_MAX(o->max_digits, o->task_version);
}
static int32_t eval_max_target(const eval_opts *o) {
  return RT_TASK_TARGET_MAX(o->max_digits, o->task_version);
}

/* A request's budget under --budgets N%: that share of its problem's reference length (prompt
 * + target), above the window. */
static int32_t eval_pct_budget(const eval_opts *o, double pct, int32_t len) {
  const int32_t b = (int32_t)(pct / 100.0 * (double)len + 0.5);
  return b > o->window ? b : o->window + 1;
}

/* What one (policy, budget) run needs, whichever loop drives it. */
typedef struct eval_ctx {
  const rt_model_config *mc;
  rkv_evict_params ep;
  rt_model_runner *r;
  rkv_blockmgr *bm;
  void *ework;
  size_t ews;
  int32_t max_prompt, max_new, max_len;
  uint32_t max_rows;
  /* one step's inputs and outputs, sized for the batch (rt_model_runner_step) */
  int64_t *ids;
  int32_t *qind, *toks, *prev, *pos0;
  float *logits;
} eval_ctx;

static void eval_ctx_fini(eval_ctx *c) {
  free(c->ids);
  free(c->qind);
  free(c->toks);
  free(c->prev);
  free(c->pos0);
  free(c->logits);
  free(c->ework);
  rt_model_runner_destroy(c->r);
  memset(c, 0, sizeof *c);
}

/* Parameters, runner (pool, block manager, query window) and eviction workspace for a run.
 * Returns 0 or 1 (error printed). */
static int eval_ctx_init(eval_ctx *c, const eval_opts *o, const rt_model *model,
                         rkv_backend *backend, rkv_evict_policy policy, int32_t budget,
                         bool external_append) {
  memset(c, 0, sizeof *c);
  c->mc = rt_model_get_config(model);
  const rt_model_config *mc = c->mc;
  rkv_evict_params ep = RKV_EVICT_PARAMS_INIT;
  ep.policy = eval_lib_policy(policy);
  ep.budget = policy == RKV_EVICT_FULL ? 1 << 20 : budget;
  ep.window = o->window;
  ep.buffer = o->buffer;
  ep.lambda = o->lambda;
  c->ep = ep;
  char err[512] = "";
  if (policy != RKV_EVICT_FULL && rkv_evict_params_validate(&ep, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv eval: %s budget %d: %s\n", eval_policy_name(policy), budget, err);
    return 1;
  }
  c->max_prompt = eval_max_prompt(o);
  /* room past the reference target for a wrong trace (version 1 keeps its published 22) */
  c->max_new = eval_max_target(o) + (o->task_version == 2 ? 64 : 22);
  c->max_len = c->max_prompt + c->max_new + 1;
  const uint32_t streams = (uint32_t)(mc->n_layers * mc->n_kv_heads);
  const uint32_t blocks_per_stream =
      (uint32_t)((c->max_len + (int32_t)o->block_size - 1) / (int32_t)o->block_size) + 1;
  c->max_rows = o->batch * (uint32_t)c->max_prompt;

  rt_model_runner_config rc = {0};
  rc.max_seqs = o->batch;
  rc.max_rows = c->max_rows;
  /* Sized for every live sequence at full length, so nothing ever has to be preempted; the
   * peak actually used is what the report measures. */
  rc.num_blocks = o->batch * streams * blocks_per_stream;
  rc.block_size = o->block_size;
  rc.kv_dtype = o->kv_dtype;
  rc.max_stream_len = c->max_len;
  rc.qwindow = (uint32_t)o->window;
  rc.accumulate_scores = ep.policy == RKV_EVICT_H2O;
  rc.external_append = external_append;
  rc.prefix_cache = o->prefix_cache;
  if (rt_model_runner_create(model, backend, &rc, &c->r, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv eval: %s\n", err);
    return 1;
  }
  c->bm = rt_model_runner_blockmgr(c->r);
  c->ids = malloc(o->batch * sizeof *c->ids);
  c->qind = malloc((o->batch + 1) * sizeof *c->qind);
  c->toks = malloc(c->max_rows * sizeof *c->toks);
  c->prev = malloc(o->batch * sizeof *c->prev);
  c->pos0 = malloc(o->batch * sizeof *c->pos0);
  c->logits = malloc((size_t)o->batch * (size_t)mc->vocab_size * sizeof *c->logits);
  if (!c->ids || !c->qind || !c->toks || !c->prev || !c->pos0 || !c->logits) {
    fprintf(stderr, "rkv eval: out of memory\n");
    eval_ctx_fini(c);
    return 1;
  }
  if (policy != RKV_EVICT_FULL) {
    if (rkv_evict_workspace_size(&ep, (uint32_t)mc->n_kv_heads, (uint32_t)mc->n_heads,
                                 (uint32_t)mc->head_dim, c->max_len, &c->ews) != RKV_OK ||
        !(c->ework = malloc(c->ews ? c->ews : 1))) {
      fprintf(stderr, "rkv eval: eviction workspace unavailable\n");
      eval_ctx_fini(c);
      return 1;
    }
  }
  return 0;
}

/* Budget respected: no stream ever held more than max(prompt, B + buffer) tokens, and each
 * compression left at most B. */
static void eval_finish(const eval_opts *o, eval_ctx *c, eval_result *res, double t0) {
  res->seconds = rt_now() - t0;
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(c->bm, &st);
  res->peak_blocks = st.peak_used_blocks;
  if (res->policy == RKV_EVICT_FULL) {
    res->budget_ok = true;
  } else {
    int32_t bound = res->max_protect + res->budget + o->buffer;
    if (res->max_prompt_len > bound) bound = res->max_prompt_len;
    res->budget_ok =
        res->max_stream_len <= bound && res->max_after_compress <= res->max_protect + res->budget;
    /* per-request budgets: each request against its own (the lines above hold for the
     * largest, which every request's is at most) */
    if (res->budget_pct > 0) res->budget_ok = res->max_over <= 0 && res->max_over_after <= 0;
  }
}

/* The budget as the table and progress lines show it: "-", "B" or "N%". */
static const char *eval_budget_label(const eval_result *e, char *buf, size_t n) {
  if (e->policy == RKV_EVICT_FULL)
    snprintf(buf, n, "-");
  else if (e->budget_pct > 0)
    snprintf(buf, n, "%g%%", e->budget_pct);
  else
    snprintf(buf, n, "%d", e->budget);
  return buf;
}

static void eval_result_init(eval_result *res, const eval_opts *o, rkv_evict_policy policy,
                             int32_t budget, double pct) {
  memset(res, 0, sizeof *res);
  res->policy = policy;
  res->budget = policy == RKV_EVICT_FULL ? 0 : budget;
  res->budget_pct = policy == RKV_EVICT_FULL ? 0.0 : pct;
  res->max_over = res->max_over_after = INT32_MIN;
  res->problems = o->problems * o->repeat;
}

/* Problem `index` of the run's set with its prompt encoded into `tokens` (room for
 * RT_TASK_MAX_TEXT) and counted in res. Returns 0 or 1 (error printed). */
static int eval_problem(const eval_opts *o, const rt_model *model, uint32_t index,
                        rt_task_problem *prob, int32_t *tokens, int32_t *len, eval_result *res) {
  if (rt_task_problem_make(o->seed, index, o->min_digits, o->max_digits, o->task_version, prob) !=
      RKV_OK) {
    fprintf(stderr, "rkv eval: bad digit range\n");
    return 1;
  }
  size_t n = 0;
  if (rt_model_encode(model, prob->prompt, tokens, RT_TASK_MAX_TEXT, &n) != RKV_OK) {
    fprintf(stderr, "rkv eval: the model's vocabulary cannot encode the prompt\n");
    return 1;
  }
  *len = (int32_t)n;
  res->prompt_tokens += n;
  if (*len > res->max_prompt_len) res->max_prompt_len = *len;
  return 0;
}

/* Greedy token from one row of logits, appended to the generated text; *eos when it is the
 * answer's end. */
static int32_t eval_sample(const rt_model_config *mc, const float *row, char *gen, int32_t *gen_len,
                           eval_result *res, bool *eos) {
  const int32_t t = argmax(row, mc->vocab_size);
  const char ch = mc->vocab[t];
  gen[(*gen_len)++] = ch ? ch : '?';
  gen[*gen_len] = '\0';
  res->generated_tokens++;
  *eos = ch == '.';
  return t;
}

/* One --generations line; the text JSON-escaped (the vocabulary has newlines). */
static void write_generation(FILE *f, const eval_result *res, int64_t id,
                             const rt_task_problem *prob, bool ok, const char *gen) {
  fprintf(f,
          "{\"policy\": \"%s\", \"budget\": %d, \"id\": %lld, \"digits\": %d, \"correct\": %s, "
          "\"text\": \"",
          eval_policy_name(res->policy), res->budget, (long long)id, prob->digits,
          ok ? "true" : "false");
  for (const char *c = gen; *c; c++) {
    if (*c == '"' || *c == '\\')
      fprintf(f, "\\%c", *c);
    else if (*c == '\n')
      fputs("\\n", f);
    else if ((unsigned char)*c < 0x20)
      fprintf(f, "\\u%04x", (unsigned)(unsigned char)*c);
    else
      fputc(*c, f);
  }
  fputs("\"}\n", f);
}

/* One problem's term of eval_result.gen_digest: FNV-1a over the id and the text, then mixed
 * (a sum of unmixed FNV values would let two swapped texts cancel). */
static uint64_t gen_hash(int64_t id, const char *gen) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (int i = 0; i < 8; i++) h = (h ^ (uint8_t)((uint64_t)id >> (8 * i))) * 0x100000001B3ull;
  for (const char *c = gen; *c; c++) h = (h ^ (uint8_t)*c) * 0x100000001B3ull;
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}

/* Grades a finished generation (exact match of the answer), by digit count too, and prints
 * the first --show of them. */
static void eval_score(const eval_opts *o, eval_result *res, int64_t id,
                       const rt_task_problem *prob, const char *gen, uint32_t *shown) {
  const bool ok = rt_task_check(prob, gen);
  res->correct += ok;
  res->gen_digest += gen_hash(id, gen);
  res->by_digits_total[prob->digits]++;
  res->by_digits_correct[prob->digits] += ok;
  if (o->generations) write_generation(o->generations, res, id, prob, ok, gen);
  if ((int)*shown >= o->show) return;
  char bl[24];
  fprintf(stderr, "[%s B=%s #%lld %s] %s%s\n", eval_policy_name(res->policy),
          eval_budget_label(res, bl, sizeof bl), (long long)id, ok ? "ok" : "WRONG", prob->prompt,
          gen);
  (*shown)++;
}

/* The tool's own batching loop (--simple-loop): one (policy, budget) over all problems.
 * Returns 0 or 1 (error printed). */
static int eval_run_simple(const eval_opts *o, const rt_model *model, rkv_backend *backend,
                           rkv_evict_policy policy, int32_t budget, double pct, eval_result *res) {
  (void)pct; /* rt_cmd_eval refuses --budgets N% with --simple-loop */
  eval_result_init(res, o, policy, budget, 0.0);
  eval_ctx c;
  if (eval_ctx_init(&c, o, model, backend, policy, budget, false)) return 1;
  const rt_model_config *mc = c.mc;
  rt_model_runner *r = c.r;
  rkv_blockmgr *bm = c.bm;
  const rkv_evict_params ep = c.ep;
  void *ework = c.ework;
  const size_t ews = c.ews;
  const int32_t max_prompt = c.max_prompt, max_new = c.max_new;

  int64_t *ids = c.ids;
  int32_t *qind = c.qind, *toks = c.toks, *prev = c.prev, *pos0 = c.pos0;
  float *logits = c.logits;

  int rc_ret = 1;
  eval_seq *seqs = calloc(o->batch, sizeof *seqs);
  uint32_t *slot_of = malloc(o->batch * sizeof *slot_of);
  if (!seqs || !slot_of) {
    fprintf(stderr, "rkv eval: out of memory\n");
    goto done;
  }
  for (uint32_t i = 0; i < o->batch; i++) seqs[i].id = -1;

  uint32_t next_problem = 0, finished = 0, shown = 0;
  const double t0 = rt_now();
  while (finished < o->problems) {
    /* Admit new problems into free batch slots while the pool has room for their prompt. */
    rkv_blockmgr_stats st;
    rkv_blockmgr_get_stats(bm, &st);
    uint64_t free_blocks = st.free_blocks;
    uint32_t live = 0;
    for (uint32_t i = 0; i < o->batch; i++) {
      eval_seq *s = &seqs[i];
      if (s->id < 0 && next_problem < o->problems) {
        uint64_t need = rkv_blockmgr_blocks_for_tokens(bm, (uint64_t)max_prompt + 1);
        if (need > free_blocks) continue;
        memset(s, 0, sizeof *s);
        s->id = next_problem;
        if (eval_problem(o, model, next_problem, &s->prob, s->prompt, &s->prompt_len, res))
          goto done;
        s->prefill = true;
        if (rt_model_runner_seq_add(r, s->id) != RKV_OK) {
          fprintf(stderr, "rkv eval: %s\n", rt_model_runner_last_error(r));
          goto done;
        }
        free_blocks -= need;
        next_problem++;
      }
      if (s->id >= 0) {
        slot_of[live] = i;
        ids[live] = s->id;
        live++;
      }
    }
    if (live == 0) {
      fprintf(stderr, "rkv eval: the KV pool cannot hold even one prompt\n");
      goto done;
    }
    /* One step: prefilling sequences feed their prompt, the others their last token. */
    qind[0] = 0;
    for (uint32_t b = 0; b < live; b++) {
      eval_seq *s = &seqs[slot_of[b]];
      if (s->prefill) {
        memcpy(toks + qind[b], s->prompt, (size_t)s->prompt_len * sizeof *toks);
        qind[b + 1] = qind[b] + s->prompt_len;
        prev[b] = 0;
        pos0[b] = 0;
      } else {
        toks[qind[b]] = s->next_tok;
        qind[b + 1] = qind[b] + 1;
        prev[b] = s->prev_tok;
        pos0[b] = s->pos;
      }
    }
    res->steps++;
    if (live > res->max_running) res->max_running = live;
    rkv_status stt = rt_model_runner_step(r, live, ids, qind, toks, prev, pos0, logits, false);
    if (stt != RKV_OK) {
      fprintf(stderr, "rkv eval: step failed: %s\n", rt_model_runner_last_error(r));
      goto done;
    }
    for (uint32_t b = 0; b < live; b++) {
      eval_seq *s = &seqs[slot_of[b]];
      const int32_t fed = qind[b + 1] - qind[b];
      const int32_t last_fed = toks[qind[b + 1] - 1];
      const bool was_prefill = s->prefill;
      s->prefill = false;
      s->pos += fed;
      bool eos = false;
      s->prev_tok = last_fed;
      s->next_tok = eval_sample(mc, logits + (size_t)b * (size_t)mc->vocab_size, s->gen,
                                &s->gen_len, res, &eos);
      if (eos || s->gen_len >= max_new) s->done = true;

      const int32_t longest = seq_max_len(bm, mc, s->id);
      if (longest > res->max_stream_len) res->max_stream_len = longest;
      if (s->done || policy == RKV_EVICT_FULL) continue;
      /* Compress every layer whose streams reached the trigger, right after the attention
       * that saw them whole. */
      uint64_t ev = 0;
      uint32_t fr = 0;
      bool did = false;
      if (eval_compress(&ep, r, mc, s->id, false, was_prefill, ework, ews, res, &ev, &fr, &did) !=
          RKV_OK)
        goto done;
    }
    if (o->check && rkv_blockmgr_check(bm) != RKV_OK) {
      fprintf(stderr, "rkv eval: block manager check failed: %s\n", rkv_blockmgr_last_error(bm));
      goto done;
    }
    /* Retire finished sequences: score them and free their blocks. */
    for (uint32_t b = 0; b < live; b++) {
      eval_seq *s = &seqs[slot_of[b]];
      if (!s->done) continue;
      eval_score(o, res, s->id, &s->prob, s->gen, &shown);
      rt_model_runner_seq_remove(r, s->id);
      s->id = -1;
      finished++;
    }
  }
  eval_finish(o, &c, res, t0);
  rc_ret = 0;
done:
  free(seqs);
  free(slot_of);
  eval_ctx_fini(&c);
  return rc_ret;
}

/* Per-request state of a scheduler-driven run (indexed by request id = problem index). */
typedef struct eval_req {
  rt_task_problem prob;
  int32_t hist[RT_TASK_MAX_TEXT * 2]; /* prompt + generated tokens: token at each position */
  int32_t hist_len;
  int32_t prompt_len;
  char gen[RT_TASK_MAX_TEXT + 64];
  int32_t gen_len;
  int32_t budget;  /* its eviction budget (per request under --budgets N%) */
  int32_t protect; /* its protected prompt prefix (prefix rule protect) */
  bool ended;      /* scored: a plan made ahead (--overlap) may still run it once, discarded */
} eval_req;

/* Closes an executor step (its compressions) and counts them as eval_compress does, each
 * compressed request against its own protected prefix + budget. */
static rkv_status eval_exec_finish(rkv_exec *x, const eval_ctx *c, const rkv_sched_plan *plan,
                                   const eval_req *reqs, rkv_sched_output *outs, eval_result *res) {
  rkv_status st = rkv_exec_finish(x, outs, plan->n_seqs);
  if (st != RKV_OK) {
    fprintf(stderr, "rkv eval: executor finish: %s\n", rkv_exec_last_error(x));
    return st;
  }
  for (uint32_t b = 0; b < plan->n_seqs; b++) {
    if (!outs[b].compressed) continue;
    res->compressions++;
    res->tokens_evicted += outs[b].tokens_evicted;
    res->blocks_freed += outs[b].blocks_freed;
    const int32_t len = seq_max_len(c->bm, c->mc, outs[b].id);
    if (len > res->max_after_compress) res->max_after_compress = len;
    const eval_req *q = &reqs[outs[b].id];
    if (len - q->protect - q->budget > res->max_over_after)
      res->max_over_after = len - q->protect - q->budget;
  }
  return RKV_OK;
}

/* Oracle hooks around a step (eval_oracle.h): the mirror follows every append; before the
 * compressions the oracle's values replace the flagged sequences' scores. */
static int eval_oracle_before(rt_oracle *orc, const eval_ctx *c, const rkv_sched_plan *plan) {
  float *scores = rkv_kv_pool_scores(rt_model_runner_pool(c->r));
  for (uint32_t b = 0; b < plan->n_seqs; b++) {
    const rkv_sched_seq *ss = &plan->seqs[b];
    const int32_t now = (int32_t)ss->pos + (int32_t)ss->n_tokens;
    rkv_status st = rt_oracle_append(orc, (uint32_t)ss->id, ss);
    if (st == RKV_OK && ss->compress)
      st = rt_oracle_score(orc, (uint32_t)ss->id, ss->id, c->bm, scores, now);
    if (st != RKV_OK) {
      fprintf(stderr, "rkv eval: oracle: request %lld: %s\n", (long long)ss->id,
              rkv_status_str(st));
      return 1;
    }
  }
  return 0;
}

static int eval_oracle_after(rt_oracle *orc, const eval_ctx *c, const rkv_sched_plan *plan,
                             const rkv_sched_output *outs) {
  const float *scores = rkv_kv_pool_scores(rt_model_runner_pool(c->r));
  for (uint32_t b = 0; b < plan->n_seqs; b++) {
    const rkv_sched_seq *ss = &plan->seqs[b];
    if (!outs[b].compressed) continue;
    char err[256] = "";
    const int32_t now = (int32_t)ss->pos + (int32_t)ss->n_tokens;
    if (rt_oracle_after(orc, (uint32_t)ss->id, ss->id, c->bm, scores, ss->evict, now, err,
                        sizeof err) != RKV_OK) {
      fprintf(stderr, "rkv eval: %s\n", err[0] ? err : "oracle: stream lookup failed");
      return 1;
    }
  }
  return 0;
}

/* One (policy, budget) over all problems, batched by the librkv scheduler (reserve
 * admission: a request is admitted only when its whole-life KV bound fits, so nothing is
 * preempted; compression flagged by the plan runs right after the step's attention).
 * Returns 0 or 1 (error printed). */
static int eval_run_sched(const eval_opts *o, const rt_model *model, rkv_backend *backend,
                          rkv_evict_policy policy, int32_t budget, double pct, eval_result *res) {
  if (pct > 0) /* the largest request budget: sizes the defaults and workspaces */
    budget = eval_pct_budget(o, pct, eval_max_prompt(o) + eval_max_target(o));
  eval_result_init(res, o, policy, budget, pct);
  eval_ctx c;
  if (eval_ctx_init(&c, o, model, backend, policy, budget, true)) return 1;
  const rt_model_config *mc = c.mc;
  rt_model_runner *r = c.r;
  int64_t *ids = c.ids;
  int32_t *qind = c.qind, *toks = c.toks, *prev = c.prev, *pos0 = c.pos0;
  float *logits = c.logits;

  int rc_ret = 1;
  rkv_sched *sch = NULL;
  rkv_exec *x = NULL; /* the library executes the plans, on every backend */
  const uint32_t n_req = o->problems * o->repeat;
  eval_req *reqs = calloc(n_req, sizeof *reqs);
  rkv_sched_output *outs = malloc(o->batch * sizeof *outs);
  rt_oracle *orc = policy == EVAL_ORACLE ? rt_oracle_create(n_req, (uint32_t)mc->n_layers,
                                                            (uint32_t)mc->n_kv_heads, c.max_len)
                                         : NULL;
  if (!reqs || !outs || (policy == EVAL_ORACLE && !orc)) {
    fprintf(stderr, "rkv eval: out of memory\n");
    goto done;
  }
  rkv_sched_config sc = RKV_SCHED_CONFIG_INIT;
  sc.max_batched_tokens = c.max_rows;
  sc.max_seqs = o->batch;
  sc.admission = RKV_SCHED_RESERVE;
  sc.preempt = RKV_SCHED_PREEMPT_RECOMPUTE;
  sc.evict = c.ep;
  sc.check_every_step = o->check;
  sc.prefix_cache = o->prefix_cache;
  sc.overlap = o->overlap;
  sc.prefix_rule =
      o->prefix_rule == RKV_SCHED_PREFIX_COPY ? RKV_SCHED_PREFIX_COPY : RKV_SCHED_PREFIX_PROTECT;
  char err[512] = "";
  if (rkv_sched_create(&sc, c.bm, &sch, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv eval: scheduler: %s\n", err);
    goto done;
  }
  {
    rkv_exec_config xc = RKV_EXEC_CONFIG_INIT;
    xc.num_q_heads = (uint32_t)mc->n_heads;
    xc.scale = rt_model_runner_attn_scale(r);
    xc.max_seqs = o->batch;
    xc.max_stream_tokens = (uint32_t)c.max_len;
    xc.evict = c.ep;
    xc.granularity = o->granularity;
    if (rkv_exec_create(&xc, c.bm, rt_model_runner_pool(r), &x, err, sizeof err) != RKV_OK) {
      fprintf(stderr, "rkv eval: executor: %s\n", err);
      goto done;
    }
    rt_model_runner_use_executor(r, x);
  }
  for (uint32_t i = 0; i < n_req; i++) {
    eval_req *q = &reqs[i];
    if (eval_problem(o, model, i / o->repeat, &q->prob, q->hist, &q->prompt_len, res)) goto done;
    q->hist_len = q->prompt_len;
    rkv_evict_params rep = c.ep; /* copied by the scheduler */
    q->budget = budget;
    if (pct > 0 && policy != RKV_EVICT_FULL)
      rep.budget = q->budget =
          eval_pct_budget(o, pct, q->prompt_len + (int32_t)strlen(q->prob.target));
    res->budget_sum += q->budget;
    rkv_sched_request rq = {i,         (int64_t)q->prompt_len, c.max_new, 0,
                            (double)i, pct > 0 ? &rep : NULL};
    if (orc && rt_oracle_set_problem(orc, i, &q->prob, q->prompt_len) != RKV_OK) {
      fprintf(stderr,
              "rkv eval: oracle: the task's generator version %d has no oracle (needs "
              "2)\n",
              q->prob.version);
      goto done;
    }
    if (rkv_sched_add_request(sch, &rq) != RKV_OK) {
      fprintf(stderr, "rkv eval: add_request %u: %s\n", i, rkv_sched_last_error(sch));
      goto done;
    }
    if (o->prefix_rule >= 0) {
      /* the prompt's full blocks: shared through the cache, protected under that rule */
      uint64_t h[RT_TASK_MAX_TEXT];
      const uint32_t nh = rkv_prefix_hash_blocks(q->hist, (uint32_t)q->prompt_len, o->block_size, 0,
                                                 h, RT_TASK_MAX_TEXT);
      const int32_t prot = (int32_t)(nh * o->block_size);
      if (o->prefix_rule == RKV_SCHED_PREFIX_PROTECT) q->protect = prot;
      if (o->prefix_rule == RKV_SCHED_PREFIX_PROTECT && prot > res->max_protect)
        res->max_protect = prot;
      if (rkv_sched_set_prefix(sch, i, h, nh) != RKV_OK) {
        fprintf(stderr, "rkv eval: set_prefix %u: %s\n", i, rkv_sched_last_error(sch));
        goto done;
      }
    }
  }

  uint32_t finished = 0, shown = 0;
  const double t0 = rt_now();
  const rkv_sched_plan *plan = NULL; /* made ahead (--overlap) or at the top */
  bool made_ahead = false;
  while (finished < n_req) {
    if (!plan) {
      made_ahead = false;
      if (rkv_sched_step(sch, &plan) != RKV_OK) {
        fprintf(stderr, "rkv eval: scheduler step: %s\n", rkv_sched_last_error(sch));
        goto done;
      }
    }
    if (plan->n_seqs == 0 && !made_ahead) {
      fprintf(stderr, "rkv eval: the scheduler planned nothing with %u requests left\n",
              n_req - finished);
      goto done;
    }
    res->steps += plan->n_seqs > 0;
    if (plan->n_seqs > res->max_running) res->max_running = plan->n_seqs;
    res->preemptions += plan->n_preempted;
    /* the executor keeps the query windows, preemptions included */
    if (rkv_exec_begin(x, plan) != RKV_OK) {
      fprintf(stderr, "rkv eval: executor: %s\n", rkv_exec_last_error(x));
      goto done;
    }
    qind[0] = 0;
    for (uint32_t b = 0; b < plan->n_seqs; b++) {
      const rkv_sched_seq *ss = &plan->seqs[b];
      eval_req *q = &reqs[ss->id];
      const int32_t p0 = (int32_t)ss->pos, n = (int32_t)ss->n_tokens;
      if (p0 + n > q->hist_len) {
        fprintf(stderr, "rkv eval: plan feeds positions %d..%d of request %lld, known %d\n", p0,
                p0 + n, (long long)ss->id, q->hist_len);
        goto done;
      }
      memcpy(toks + qind[b], q->hist + p0, (size_t)n * sizeof *toks);
      qind[b + 1] = qind[b] + n;
      ids[b] = ss->id;
      prev[b] = p0 ? q->hist[p0 - 1] : 0;
      pos0[b] = p0;
    }
    if (plan->n_seqs && rt_model_runner_step(r, plan->n_seqs, ids, qind, toks, prev, pos0, logits,
                                             false) != RKV_OK) {
      fprintf(stderr, "rkv eval: step failed: %s\n", rt_model_runner_last_error(r));
      goto done;
    }
    for (uint32_t b = 0; b < plan->n_seqs; b++) {
      const rkv_sched_seq *ss = &plan->seqs[b];
      eval_req *q = &reqs[ss->id];
      rkv_sched_output *out = &outs[b];
      memset(out, 0, sizeof *out);
      out->id = ss->id;
      if (q->ended) { /* the token after its end, in a plan made before the end was known */
        out->eos = true;
        continue;
      }
      const int32_t longest = seq_max_len(c.bm, mc, ss->id);
      if (longest > res->max_stream_len) res->max_stream_len = longest;
      int32_t allowed = q->protect + q->budget + o->buffer;
      if (q->prompt_len > allowed) allowed = q->prompt_len;
      if (longest - allowed > res->max_over) res->max_over = longest - allowed;
      bool done_now = false;
      if (ss->samples) {
        const int32_t t = eval_sample(mc, logits + (size_t)b * (size_t)mc->vocab_size, q->gen,
                                      &q->gen_len, res, &out->eos);
        if (q->hist_len < (int32_t)(sizeof q->hist / sizeof q->hist[0])) q->hist[q->hist_len++] = t;
        done_now = out->eos || q->gen_len >= c.max_new;
      }
      out->eos = done_now; /* the same end for the scheduler; spares its compression */
      if (done_now) {
        eval_score(o, res, ss->id, &q->prob, q->gen, &shown);
        q->ended = true;
        finished++;
      }
    }
    /* --overlap: the next step is planned while this one's compressions are still to run
     * (on a GPU, while its kernels run); it assumes no sequence of this step ended */
    const rkv_sched_plan *ahead = NULL;
    if (o->overlap && finished < n_req && rkv_sched_step(sch, &ahead) != RKV_OK) {
      fprintf(stderr, "rkv eval: scheduler step (overlap): %s\n", rkv_sched_last_error(sch));
      goto done;
    }
    if (orc && eval_oracle_before(orc, &c, plan)) goto done;
    if (eval_exec_finish(x, &c, plan, reqs, outs, res) != RKV_OK) goto done;
    if (orc && eval_oracle_after(orc, &c, plan, outs)) goto done;
    if (rkv_sched_report(sch, outs, plan->n_seqs) != RKV_OK) {
      fprintf(stderr, "rkv eval: scheduler report: %s\n", rkv_sched_last_error(sch));
      goto done;
    }
    if (o->check && rkv_sched_check(sch) != RKV_OK) {
      fprintf(stderr, "rkv eval: scheduler check failed: %s\n", rkv_sched_last_error(sch));
      goto done;
    }
    plan = ahead;
    made_ahead = ahead != NULL;
  }
  eval_finish(o, &c, res, t0);
  rkv_sched_metrics sm;
  rkv_sched_get_metrics(sch, &sm);
  res->prefill_tokens = sm.prompt_tokens;
  rkv_sched_prefix_stats ps;
  ps.struct_size = sizeof ps;
  if (rkv_sched_get_prefix_stats(sch, &ps) == RKV_OK) res->hit_tokens = ps.hit_tokens;
  rc_ret = 0;
done:
  rt_model_runner_use_executor(r, NULL);
  rt_oracle_destroy(orc);
  rkv_exec_destroy(x);
  rkv_sched_destroy(sch);
  free(reqs);
  free(outs);
  eval_ctx_fini(&c);
  return rc_ret;
}

static void write_plot(const char *path, const eval_opts *o, const eval_result *res, int n) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "rkv eval: cannot write %s\n", path);
    return;
  }
  const double W = 640, H = 420, L = 60, R = 130, T = 30, B = 50;
  /* x: the budget, or its share of the sequence for N% runs */
#define OX(i) (o->budget_pct[i] > 0 ? o->budget_pct[i] : (double)o->budgets[i])
#define RX(e) ((e).budget_pct > 0 ? (e).budget_pct : (double)(e).budget)
  double bmin = OX(0), bmax = OX(0);
  bool share = false;
  for (int i = 0; i < o->n_budgets; i++) {
    if (OX(i) < bmin) bmin = OX(i);
    if (OX(i) > bmax) bmax = OX(i);
    share |= o->budget_pct[i] > 0;
  }
  if (bmax == bmin) bmax = bmin + 1;
#define PX(b) (L + ((double)(b)-bmin) / (double)(bmax - bmin) * (W - L - R))
#define PY(a) (T + (1.0 - (a)) * (H - T - B))
  fprintf(f,
          "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" "
          "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" "
          "fill=\"white\"/>\n",
          W, H);
  fprintf(
      f,
      "<text x=\"%g\" y=\"18\">rkv eval: exact match vs budget (buffer %d, %u problems)</text>\n",
      L, o->buffer, o->problems);
  for (int k = 0; k <= 10; k += 2) {
    double y = PY(k / 10.0);
    fprintf(f, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#ddd\"/>\n", L, y, W - R, y);
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.1f</text>\n", L - 6, y + 4, k / 10.0);
  }
  for (int i = 0; i < o->n_budgets; i++)
    fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%g%s</text>\n", PX(OX(i)),
            H - B + 18, OX(i), o->budget_pct[i] > 0 ? "%" : "");
  fprintf(f, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%s</text>\n", (L + W - R) / 2, H - 12,
          share ? "budget (share of each sequence)" : "budget B (tokens per stream)");
  static const char *const colors[] = {"#000000", "#d62728", "#1f77b4", "#2ca02c", "#9467bd"};
  int legend = 0;
  for (int p = 0; p < o->n_policies; p++) {
    rkv_evict_policy pol = o->policies[p];
    const char *col = pol == EVAL_ORACLE ? "#ff7f0e" : colors[(int)pol % 5];
    if (pol == RKV_EVICT_FULL) {
      for (int i = 0; i < n; i++)
        if (res[i].policy == pol) {
          double y = PY((double)res[i].correct / res[i].problems);
          fprintf(f,
                  "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"%s\" "
                  "stroke-dasharray=\"6,4\"/>\n",
                  L, y, W - R, y, col);
        }
    } else {
      fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
      for (int i = 0; i < n; i++)
        if (res[i].policy == pol)
          fprintf(f, "%g,%g ", PX(RX(res[i])), PY((double)res[i].correct / res[i].problems));
      fprintf(f, "\"/>\n");
      for (int i = 0; i < n; i++)
        if (res[i].policy == pol)
          fprintf(f, "<circle cx=\"%g\" cy=\"%g\" r=\"3\" fill=\"%s\"/>\n", PX(RX(res[i])),
                  PY((double)res[i].correct / res[i].problems), col);
    }
    fprintf(f, "<text x=\"%g\" y=\"%g\" fill=\"%s\">%s</text>\n", W - R + 12, T + 16.0 * legend + 4,
            col, eval_policy_name(pol));
    legend++;
  }
#undef PX
#undef PY
#undef OX
#undef RX
  fprintf(f, "</svg>\n");
  fclose(f);
}

static bool eval_takes_value(const char *opt) {
  static const char *const names[] = {
      "--model",       "--policies", "--budgets",     "--buffer", "--window",
      "--problems",    "--digits",   "--seed",        "--batch",  "--block-size",
      "--kv-dtype",    "--threads",  "--plot",        "--show",   "--min-full-accuracy",
      "--backend",     "--lambda",   "--generations", "--repeat", "--prefix-cache",
      "--prefix-rule", "--overlap",  "--granularity"};
  for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
    if (strcmp(opt, names[k]) == 0) return true;
  return false;
}

int rt_cmd_eval(int argc, char **argv) {
  eval_opts o;
  memset(&o, 0, sizeof o);
  static char default_model[1024];
  snprintf(default_model, sizeof default_model, "%s/tools/model/weights/adder.safetensors",
           RKV_SOURCE_DIR);
  o.model_path = default_model;
  parse_policies("full,rkv,snapkv,streaming,h2o", &o);
  parse_budgets("32,48,64,96,128", &o);
  o.buffer = 16;
  o.window = 8;
  const rkv_evict_params defaults = RKV_EVICT_PARAMS_INIT;
  o.lambda = defaults.lambda;
  o.problems = 500;
  o.min_digits = 6;
  o.max_digits = 20;
  o.seed = EVAL_SEED_DEFAULT;
  o.batch = 32;
  o.block_size = 16;
  o.kv_dtype = RKV_DTYPE_F32;
  o.threads = 0;
  o.min_full_accuracy = -1.0;
  o.repeat = 1;
  o.prefix_rule = -1;
  o.backend = RKV_BACKEND_CPU;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v;
    uint64_t u;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      eval_usage();
      return 0;
    } else if (strcmp(a, "--json") == 0) {
      o.json = true;
    } else if (strcmp(a, "--check") == 0) {
      o.check = true;
    } else if (strcmp(a, "--simple-loop") == 0) {
      o.simple_loop = true;
    } else if (strcmp(a, "--compare-cpu") == 0) {
      o.compare_cpu = true;
    } else if (strcmp(a, "--require-bounds") == 0) {
      o.require_bounds = true;
    } else if (!eval_takes_value(a)) {
      fprintf(stderr, "rkv eval: unknown option '%s' (see rkv eval --help)\n", a);
      return 2;
    } else if (!(v = rt_optval("eval", argc, argv, &i))) {
      return 2;
    } else if (strcmp(a, "--model") == 0) {
      o.model_path = v;
    } else if (strcmp(a, "--policies") == 0) {
      if (!parse_policies(v, &o)) return 2;
    } else if (strcmp(a, "--budgets") == 0) {
      if (!parse_budgets(v, &o)) return 2;
      o.budgets_given = true;
    } else if (strcmp(a, "--buffer") == 0) {
      if (!rt_parse_u64("eval", a, v, 1, 1 << 20, &u)) return 2;
      o.buffer = (int32_t)u;
    } else if (strcmp(a, "--window") == 0) {
      if (!rt_parse_u64("eval", a, v, 1, 1024, &u)) return 2;
      o.window = (int32_t)u;
    } else if (strcmp(a, "--lambda") == 0) {
      double x;
      if (!rt_parse_f64("eval", a, v, 0.0, 1.0, &x)) return 2;
      o.lambda = (float)x;
    } else if (strcmp(a, "--problems") == 0) {
      if (!rt_parse_u64("eval", a, v, 1, 1000000, &u)) return 2;
      o.problems = (uint32_t)u;
    } else if (strcmp(a, "--digits") == 0) {
      int lo, hi;
      char extra;
      if (sscanf(v, "%d-%d%c", &lo, &hi, &extra) != 2 || lo < RT_TASK_MIN_DIGITS ||
          hi > RT_TASK_MAX_DIGITS || lo > hi) {
        fprintf(stderr, "rkv eval: bad value for --digits: '%s' (LO-HI within %d-%d)\n", v,
                RT_TASK_MIN_DIGITS, RT_TASK_MAX_DIGITS);
        return 2;
      }
      o.min_digits = lo;
      o.max_digits = hi;
      o.digits_given = true;
    } else if (strcmp(a, "--seed") == 0) {
      if (!rt_parse_u64("eval", a, v, 0, UINT64_MAX, &o.seed)) return 2;
    } else if (strcmp(a, "--batch") == 0) {
      if (!rt_parse_u64("eval", a, v, 1, 4096, &u)) return 2;
      o.batch = (uint32_t)u;
    } else if (strcmp(a, "--block-size") == 0) {
      if (!rt_parse_u64("eval", a, v, 1, 1024, &u)) return 2;
      o.block_size = (uint32_t)u;
    } else if (strcmp(a, "--kv-dtype") == 0) {
      if (rkv_dtype_parse(v, &o.kv_dtype) != RKV_OK) {
        fprintf(stderr, "rkv eval: bad value for --kv-dtype: '%s'\n", v);
        return 2;
      }
    } else if (strcmp(a, "--threads") == 0) {
      if (!rt_parse_u64("eval", a, v, 0, 1024, &u)) return 2;
      o.threads = (int32_t)u;
    } else if (strcmp(a, "--min-full-accuracy") == 0) {
      if (!rt_parse_f64("eval", a, v, 0.0, 1.0, &o.min_full_accuracy)) return 2;
    } else if (strcmp(a, "--backend") == 0) {
      if (strcmp(v, "cpu") == 0) {
        o.backend = RKV_BACKEND_CPU;
      } else if (strcmp(v, "cuda") == 0 || strcmp(v, "emu") == 0) {
        o.backend = RKV_BACKEND_CUDA;
        o.emulate = v[0] == 'e';
      } else {
        fprintf(stderr, "rkv eval: bad value for --backend: '%s' (cpu, cuda or emu)\n", v);
        return 2;
      }
    } else if (strcmp(a, "--plot") == 0) {
      o.plot = v;
    } else if (strcmp(a, "--generations") == 0) {
      o.generations_path = v;
    } else if (strcmp(a, "--repeat") == 0) {
      if (!rt_parse_u64("eval", a, v, 1, 64, &u)) return 2;
      o.repeat = (uint32_t)u;
    } else if (strcmp(a, "--prefix-cache") == 0) {
      if (strcmp(v, "on") && strcmp(v, "off")) {
        fprintf(stderr, "rkv eval: bad value for --prefix-cache: '%s' (on or off)\n", v);
        return 2;
      }
      o.prefix_cache = strcmp(v, "on") == 0;
    } else if (strcmp(a, "--overlap") == 0) {
      if (strcmp(v, "on") && strcmp(v, "off")) {
        fprintf(stderr, "rkv eval: bad value for --overlap: '%s' (on or off)\n", v);
        return 2;
      }
      o.overlap = strcmp(v, "on") == 0;
    } else if (strcmp(a, "--prefix-rule") == 0) {
      if (strcmp(v, "protect") == 0) {
        o.prefix_rule = RKV_SCHED_PREFIX_PROTECT;
      } else if (strcmp(v, "copy") == 0) {
        o.prefix_rule = RKV_SCHED_PREFIX_COPY;
      } else {
        fprintf(stderr, "rkv eval: bad value for --prefix-rule: '%s' (protect or copy)\n", v);
        return 2;
      }
    } else if (strcmp(a, "--granularity") == 0) {
      if (rkv_evict_granularity_parse(v, &o.granularity) != RKV_OK) {
        fprintf(stderr,
                "rkv eval: bad value for --granularity: '%s' (stream, layer, kvhead or "
                "sequence)\n",
                v);
        return 2;
      }
    } else if (strcmp(a, "--show") == 0) {
      if (!rt_parse_u64("eval", a, v, 0, 1000000, &u)) return 2;
      o.show = (int)u;
    } else {
      fprintf(stderr, "rkv eval: unknown option '%s' (see rkv eval --help)\n", a);
      return 2;
    }
  }
  bool any_pct = false, any_oracle = false;
  for (int i = 0; i < o.n_budgets; i++) any_pct |= o.budget_pct[i] > 0;
  for (int p = 0; p < o.n_policies; p++) any_oracle |= o.policies[p] == EVAL_ORACLE;
  if (any_pct && o.simple_loop) {
    fprintf(stderr,
            "rkv eval: --budgets N%% sets a budget per request: the scheduler loop only "
            "(drop --simple-loop)\n");
    return 2;
  }
  if (any_oracle && (o.simple_loop || o.overlap || o.prefix_cache || o.prefix_rule >= 0 ||
                     o.backend != RKV_BACKEND_CPU || o.granularity != RKV_EVICT_GRAN_STREAM)) {
    fprintf(stderr,
            "rkv eval: --policies oracle runs the scheduler loop on the cpu backend, "
            "stream granularity, without --overlap or a prefix rule\n");
    return 2;
  }
  for (int i = 0; i < o.n_budgets; i++)
    if (o.budget_pct[i] == 0 && o.budgets[i] <= o.window) {
      fprintf(stderr, "rkv eval: --budgets: budget %d must exceed --window %d\n", o.budgets[i],
              o.window);
      return 2;
    }
  const bool on_cuda = o.backend == RKV_BACKEND_CUDA;
  if (o.prefix_cache && o.prefix_rule < 0) o.prefix_rule = RKV_SCHED_PREFIX_PROTECT;
  if (o.simple_loop && (o.repeat > 1 || o.prefix_rule >= 0 || o.overlap)) {
    fprintf(stderr,
            "rkv eval: --repeat, --prefix-cache, --prefix-rule and --overlap need the scheduler "
            "loop (drop --simple-loop)\n");
    return 2;
  }
  if (o.granularity != RKV_EVICT_GRAN_STREAM && o.simple_loop) {
    fprintf(stderr,
            "rkv eval: --granularity %s needs the scheduler loop (the tool's own loop compresses "
            "layer by layer, per stream; drop --simple-loop)\n",
            rkv_evict_granularity_name(o.granularity));
    return 2;
  }
  if (o.compare_cpu && !on_cuda) {
    fprintf(stderr, "rkv eval: --compare-cpu needs --backend cuda\n");
    return 2;
  }
  if (on_cuda && o.simple_loop) { /* the device path is the executor's, which runs plans */
    fprintf(stderr, "rkv eval: --backend cuda runs the scheduler loop only (no --simple-loop)\n");
    return 2;
  }
  if (on_cuda && o.block_size != 16 && o.block_size != 32) {
    fprintf(stderr, "rkv eval: --backend cuda takes --block-size 16 or 32, not %u\n", o.block_size);
    return 2;
  }
  for (int p = 0; on_cuda && p < o.n_policies; p++)
    if ((o.policies[p] == RKV_EVICT_RKV || o.policies[p] == RKV_EVICT_SNAPKV) && o.window > 256) {
      fprintf(stderr, "rkv eval: --backend cuda: --window %d > 256 (the GPU eviction's limit)\n",
              o.window);
      return 2;
    }

  /* Backends first: without CUDA or a GPU, --backend cuda is skipped (77) before any work. */
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = o.emulate ? RKV_BACKEND_CPU : o.backend;
  bc.num_threads = o.threads;
  rkv_backend *backend = NULL, *cpu_backend = NULL;
  rkv_status bst =
      o.emulate ? rkv_backend_create_emulated(&bc, &backend) : rkv_backend_create(&bc, &backend);
  if (bst != RKV_OK) {
    if (!on_cuda) {
      fprintf(stderr, "rkv eval: cannot create the CPU backend\n");
      return 1;
    }
    if (!rkv_build_has_cuda())
      fprintf(stderr,
              "rkv eval: skipped: --backend cuda: this build of rkv has no CUDA (configure with "
              "nvcc available and RKV_ENABLE_CUDA=ON)\n");
    else
      fprintf(stderr, "rkv eval: skipped: --backend cuda: no usable CUDA device (%s)\n",
              rkv_status_str(bst));
    return 77;
  }
  if (o.compare_cpu) {
    rkv_backend_config cc = RKV_BACKEND_CONFIG_INIT;
    cc.kind = RKV_BACKEND_CPU;
    cc.num_threads = o.threads;
    if (rkv_backend_create(&cc, &cpu_backend) != RKV_OK) {
      fprintf(stderr, "rkv eval: cannot create the CPU backend\n");
      rkv_backend_destroy(backend);
      return 1;
    }
  }

  char err[512] = "";
  rt_model *model = NULL;
  if (rt_model_load(o.model_path, &model, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv eval: --model: %s\n", err);
    rkv_backend_destroy(cpu_backend);
    rkv_backend_destroy(backend);
    return 1;
  }
  const rt_model_config *mc = rt_model_get_config(model);
  if (mc->generator_version > RT_TASK_GENERATOR_VERSION) {
    fprintf(stderr, "rkv eval: --model: trained on task version %d; this rkv knows 1..%d\n",
            mc->generator_version, RT_TASK_GENERATOR_VERSION);
    rt_model_destroy(model);
    rkv_backend_destroy(cpu_backend);
    rkv_backend_destroy(backend);
    return 1;
  }
  o.task_version = mc->generator_version ? mc->generator_version : 1;
  if (!o.digits_given && o.task_version == 2) o.max_digits = 10; /* its trained range, 6-10 */
  if (!o.budgets_given && o.task_version == 2) {
    parse_budgets("10%,15%,20%,30%,45%,60%", &o);
    if (o.simple_loop) {
      fprintf(stderr,
              "rkv eval: a version-2 model's default budgets are shares (N%%): give "
              "--budgets in tokens with --simple-loop\n");
      rt_model_destroy(model);
      rkv_backend_destroy(cpu_backend);
      rkv_backend_destroy(backend);
      return 2;
    }
  }
  for (int p = 0; p < o.n_policies; p++)
    if (o.policies[p] == EVAL_ORACLE && o.task_version != 2) {
      fprintf(stderr,
              "rkv eval: --policies oracle needs a model of task version 2 (this one "
              "knows version %d)\n",
              o.task_version);
      rt_model_destroy(model);
      rkv_backend_destroy(cpu_backend);
      rkv_backend_destroy(backend);
      return 2;
    }

  if (o.generations_path && !(o.generations = fopen(o.generations_path, "w"))) {
    fprintf(stderr, "rkv eval: --generations: cannot write '%s'\n", o.generations_path);
    rt_model_destroy(model);
    rkv_backend_destroy(cpu_backend);
    rkv_backend_destroy(backend);
    return 1;
  }
  eval_result results[EVAL_MAX_LIST * EVAL_MAX_LIST];
  uint32_t cpu_correct[EVAL_MAX_LIST * EVAL_MAX_LIST]; /* --compare-cpu */
  int n_res = 0, ret = 0, n_differ = 0;
  for (int p = 0; p < o.n_policies && !ret; p++) {
    const int nb = o.policies[p] == RKV_EVICT_FULL ? 1 : o.n_budgets;
    for (int bi = 0; bi < nb && !ret; bi++) {
      eval_result *er = &results[n_res];
      ret = (o.simple_loop ? eval_run_simple : eval_run_sched)(&o, model, backend, o.policies[p],
                                                               o.budgets[bi], o.budget_pct[bi], er);
      if (ret) break;
      n_res++;
      /* progress on stderr in both output modes: a 500-problem sweep takes minutes */
      char bl[24];
      fprintf(stderr, "%s B=%s: %u/%u correct (%.1fs)\n", eval_policy_name(er->policy),
              eval_budget_label(er, bl, sizeof bl), er->correct, er->problems, er->seconds);
      if (cpu_backend) {
        eval_result cr;
        ret = (o.simple_loop ? eval_run_simple : eval_run_sched)(
            &o, model, cpu_backend, o.policies[p], o.budgets[bi], o.budget_pct[bi], &cr);
        if (ret) break;
        cpu_correct[n_res - 1] = cr.correct;
        /* The emulated device runs the CPU kernels behind device memory: every token must
         * match. A GPU's float sums may flip a near-tie, so there only accuracy must. */
        const bool same_text = cr.gen_digest == er->gen_digest;
        const bool differs = cr.correct != er->correct || (o.emulate && !same_text);
        n_differ += differs;
        fprintf(stderr, "%s B=%d on cpu: %u/%u correct (%.1fs)%s; generations %s\n",
                eval_policy_name(cr.policy), cr.budget, cr.correct, cr.problems, cr.seconds,
                differs ? "  DIFFERS from cuda" : ", same as cuda",
                same_text ? "identical" : "not identical");
      }
    }
  }
  if (!ret) {
    if (o.json) {
      printf(
          "{\"model\": \"%s\", \"params\": %zu, \"problems\": %u, \"digits\": [%d, %d], "
          "\"seed\": %llu, \"batch\": %u, \"buffer\": %d, \"window\": %d, \"lambda\": %g, "
          "\"block_size\": %u, "
          "\"kv_dtype\": \"%s\", \"batching\": \"%s\", \"backend\": \"%s\", \"repeat\": %u, "
          "\"prefix_cache\": %s, \"prefix_rule\": \"%s\", \"granularity\": \"%s\", \"runs\": [",
          o.model_path, rt_model_num_params(model), o.problems, o.min_digits, o.max_digits,
          (unsigned long long)o.seed, o.batch, o.buffer, o.window, (double)o.lambda, o.block_size,
          rkv_dtype_name(o.kv_dtype), o.simple_loop ? "simple" : "scheduler",
          o.emulate ? "emu"
          : on_cuda ? "cuda"
                    : "cpu",
          o.repeat, o.prefix_cache ? "true" : "false",
          o.prefix_rule < 0                        ? "none"
          : o.prefix_rule == RKV_SCHED_PREFIX_COPY ? "copy"
                                                   : "protect",
          rkv_evict_granularity_name(o.granularity));
      for (int i = 0; i < n_res; i++) {
        const eval_result *e = &results[i];
        printf(
            "%s\n  {\"policy\": \"%s\", \"budget\": %d, \"budget_pct\": %g, "
            "\"mean_budget\": %.1f, \"granularity\": \"%s\", "
            "\"accuracy\": %.4f, \"correct\": %u, "
            "\"problems\": %u, \"mean_generated\": %.1f, \"peak_kv_blocks\": %u, "
            "\"max_stream_len\": %d, \"max_after_compress\": %d, \"max_prompt_len\": %d, "
            "\"budget_respected\": %s, \"compressions\": %llu, \"tokens_evicted\": %llu, "
            "\"blocks_freed\": %llu, \"steps\": %llu, \"max_running\": %u, "
            "\"preemptions\": %llu, \"seconds\": %.3f, \"tokens_per_s\": %.1f, "
            "\"prompt_tokens_computed\": %llu, \"prefix_hit_tokens\": %llu, "
            "\"accuracy_by_digits\": {",
            i ? "," : "", eval_policy_name(e->policy), e->budget, e->budget_pct,
            e->problems ? e->budget_sum / e->problems : 0.0,
            rkv_evict_granularity_name(o.granularity), (double)e->correct / e->problems, e->correct,
            e->problems, (double)e->generated_tokens / e->problems, e->peak_blocks,
            e->max_stream_len, e->max_after_compress, e->max_prompt_len,
            e->budget_ok ? "true" : "false", (unsigned long long)e->compressions,
            (unsigned long long)e->tokens_evicted, (unsigned long long)e->blocks_freed,
            (unsigned long long)e->steps, e->max_running, (unsigned long long)e->preemptions,
            e->seconds, e->seconds > 0 ? (double)e->generated_tokens / e->seconds : 0.0,
            (unsigned long long)e->prefill_tokens, (unsigned long long)e->hit_tokens);
        bool first = true;
        for (int dgt = 0; dgt <= RT_TASK_MAX_DIGITS; dgt++) {
          if (!e->by_digits_total[dgt]) continue;
          printf("%s\"%d\": %.4f", first ? "" : ", ", dgt,
                 (double)e->by_digits_correct[dgt] / e->by_digits_total[dgt]);
          first = false;
        }
        printf("}");
        if (cpu_backend)
          printf(", \"cpu_accuracy\": %.4f, \"cpu_correct\": %u",
                 (double)cpu_correct[i] / e->problems, cpu_correct[i]);
        printf("}");
      }
      printf("\n]}\n");
    } else {
      printf(
          "model %s (%zu params), %u problems, %d-%d digits, seed %llu, batch %u, buffer %d, "
          "window %d, lambda %g, kv %s, granularity %s, batching by %s%s\n",
          o.model_path, rt_model_num_params(model), o.problems, o.min_digits, o.max_digits,
          (unsigned long long)o.seed, o.batch, o.buffer, o.window, (double)o.lambda,
          rkv_dtype_name(o.kv_dtype), rkv_evict_granularity_name(o.granularity),
          o.simple_loop ? "the tool's loop" : "the librkv scheduler",
          on_cuda ? ", KV cache on the cuda backend" : "");
      printf("%-10s %6s %9s %9s %11s %10s %8s %6s\n", "policy", "budget", "accuracy", "mean_gen",
             "peak_blocks", "max_stream", "tok/s", "bounds");
      for (int i = 0; i < n_res; i++) {
        const eval_result *e = &results[i];
        char bud[24];
        eval_budget_label(e, bud, sizeof bud);
        printf("%-10s %6s %9.3f %9.1f %11u %10d %8.0f %6s\n", eval_policy_name(e->policy), bud,
               (double)e->correct / e->problems, (double)e->generated_tokens / e->problems,
               e->peak_blocks, e->max_stream_len,
               e->seconds > 0 ? (double)e->generated_tokens / e->seconds : 0.0,
               e->budget_ok ? "ok" : "BROKEN");
      }
    }
    if (o.plot) write_plot(o.plot, &o, results, n_res);
    for (int i = 0; i < n_res; i++) {
      const eval_result *e = &results[i];
      if (o.require_bounds && !e->budget_ok) {
        fprintf(stderr,
                "rkv eval: %s B=%d broke its bounds: longest stream %d (allowed max(prompt %d, "
                "B + buffer %d)), %d after a compression\n",
                eval_policy_name(e->policy), e->budget, e->max_stream_len, e->max_prompt_len,
                e->budget + o.buffer, e->max_after_compress);
        ret = 3;
      }
      if (e->policy == RKV_EVICT_FULL && o.min_full_accuracy >= 0 &&
          (double)e->correct / e->problems < o.min_full_accuracy) {
        fprintf(stderr, "rkv eval: full-cache accuracy %.3f is below the floor %.3f\n",
                (double)e->correct / e->problems, o.min_full_accuracy);
        ret = 3;
      }
    }
    if (n_differ) {
      fprintf(stderr,
              "rkv eval: --compare-cpu: %d of %d runs differ between cuda and cpu (accuracy; "
              "with --backend emu, also any generated token)\n",
              n_differ, n_res);
      ret = 3;
    }
  }
  if (o.generations && fclose(o.generations) != 0) {
    fprintf(stderr, "rkv eval: --generations: write error on '%s'\n", o.generations_path);
    if (!ret) ret = 1;
  }
  rt_model_destroy(model);
  rkv_backend_destroy(cpu_backend);
  rkv_backend_destroy(backend);
  return ret;
}
