/* `rkv bench step`: host cost of one decode step of a serving loop, without the attention and
 * eviction math: the scheduler's step and report (admission, appends with the slot mapping)
 * plus the executor's bookkeeping (table mirror by deltas, slot layout, the host cut of the
 * flagged compressions), measured on a bookkeeping executor (no KV pool) at a serving shape.
 * The reference, timed in the same run, is one pass that increments every stream length of
 * the batch: the least any per-step table maintenance could touch. */
#include <stdlib.h>
#include <string.h>

#include <rkv/executor.h>
#include <rkv/scheduler.h>

#include "bench.h"
#include "rkv_tool.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: rkv bench step [--layers 32] [--kv-heads 8] [--batch 256] [--block-size 16]\n"
          "                      [--budget 1024] [--buffer 128] [--steps 512] [--plan-slots]\n"
          "                      [--json]\n\n"
          "Steady-state decode of `batch` sequences under R-KV (prompts spread over\n"
          "[budget - buffer, budget) so compressions are spread over the steps), timed per\n"
          "step and reported per sequence:\n"
          "  sched_ns  rkv_sched_step + rkv_sched_report\n"
          "  exec_ns   rkv_exec_begin + rkv_exec_finish (bookkeeping executor: table-mirror\n"
          "            deltas, host cut of the flagged compressions)\n"
          "  total_ns  both; the budget is 500 ns per sequence per step\n"
          "  ref_ns    one pass incrementing every stream length of the batch, same run\n"
          "--plan-slots: the scheduler also writes the plan's slot mapping (256 int64 per\n"
          "sequence per step), what engines with their own K/V write ask for.\n");
}

typedef struct step_cfg {
  uint64_t layers, kv_heads, batch, bs, budget, buffer, steps;
  bool json, plan_slots;
} step_cfg;

static int parse(int argc, char **argv, step_cfg *c) {
  const rt_u64_opt opts[] = {
      {"--layers", &c->layers, 1, 256},      {"--kv-heads", &c->kv_heads, 1, 64},
      {"--batch", &c->batch, 1, 4096},       {"--block-size", &c->bs, 1, 256},
      {"--budget", &c->budget, 16, 1 << 20}, {"--buffer", &c->buffer, 1, 1 << 16},
      {"--steps", &c->steps, 1, 1 << 20},
  };
  for (int i = 1; i < argc; i++) {
    int r = rt_parse_u64_opt("bench step", argc, argv, &i, opts, sizeof opts / sizeof *opts);
    if (r < 0) return 2;
    if (r > 0) continue;
    if (!strcmp(argv[i], "--json")) {
      c->json = true;
    } else if (!strcmp(argv[i], "--plan-slots")) {
      c->plan_slots = true;
    } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "rkv bench step: unknown option '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }
  return -1;
}

/* The reference: +1 on every stream length of the batch (volatile sink keeps it). */
static double ref_pass(int32_t *lens, size_t n) {
  double t0 = rt_now();
  for (size_t i = 0; i < n; i++) lens[i]++;
  __asm__ volatile("" : : "r"(lens) : "memory");
  return rt_now() - t0;
}

int rt_bench_step(int argc, char **argv) {
  step_cfg c = {32, 8, 256, 16, 1024, 128, 512, false, false};
  int rc = parse(argc, argv, &c);
  if (rc >= 0) return rc;
  const uint64_t streams = c.layers * c.kv_heads;
  const uint64_t per_seq = streams * ((c.budget + c.buffer + c.bs - 1) / c.bs + 1);
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = (uint32_t)(per_seq * c.batch + 64);
  bc.block_size = (uint32_t)c.bs;
  bc.num_layers = (uint32_t)c.layers;
  bc.num_kv_heads = (uint32_t)c.kv_heads;
  bc.max_seqs = (uint32_t)c.batch;
  bc.watermark = 0.0f;
  rkv_evict_params ev = RKV_EVICT_PARAMS_INIT;
  ev.budget = (int32_t)c.budget;
  ev.buffer = (int32_t)c.buffer;
  rkv_sched_config sc = RKV_SCHED_CONFIG_INIT;
  sc.max_seqs = (uint32_t)c.batch;
  sc.max_batched_tokens = 8192;
  sc.evict = ev;
  sc.plan_slots = c.plan_slots;
  rkv_exec_config xc = RKV_EXEC_CONFIG_INIT;
  xc.num_q_heads = (uint32_t)(c.kv_heads * 4);
  xc.max_seqs = (uint32_t)c.batch;
  xc.evict = ev;
  rkv_blockmgr *bm = NULL;
  rkv_sched *s = NULL;
  rkv_exec *x = NULL;
  char err[256] = "";
  int ret = 1;
  rkv_sched_output *outs = calloc(c.batch, sizeof *outs);
  double *ts = malloc(c.steps * sizeof *ts), *tx = malloc(c.steps * sizeof *tx);
  double *tr = malloc(c.steps * sizeof *tr);
  int32_t *lens = calloc(c.batch * streams, sizeof *lens);
  if (!outs || !ts || !tx || !tr || !lens) goto done;
  if (rkv_blockmgr_create(&bc, &bm) != RKV_OK) {
    fprintf(stderr, "rkv bench step: block manager of %u blocks failed\n", bc.num_blocks);
    goto done;
  }
  if (rkv_sched_create(&sc, bm, &s, err, sizeof err) != RKV_OK ||
      rkv_exec_create(&xc, bm, NULL, &x, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv bench step: %s\n", err);
    goto done;
  }
  for (uint64_t i = 0; i < c.batch; i++) {
    /* prompts spread over [B - buffer, B): the first compressions (at B + buffer) fall on
     * different steps, and so do all later ones */
    rkv_sched_request rq = {(int64_t)i, (int64_t)(c.budget - c.buffer + i * c.buffer / c.batch),
                            1 << 29,    0,
                            (double)i,  NULL};
    if (rkv_sched_add_request(s, &rq) != RKV_OK) {
      fprintf(stderr, "rkv bench step: %s\n", rkv_sched_last_error(s));
      goto done;
    }
  }
  /* prefill and warm-up (every sequence decoding, one compression cycle), then the timed steps */
  const uint64_t warm = c.buffer + 64;
  uint64_t timed = 0, decode_steps = 0, compressions = 0;
  rt_progress pr = {0};
  rt_progress_init(&pr, 1.0);
  while (timed < c.steps) {
    const rkv_sched_plan *p = NULL;
    double t0 = rt_now();
    if (rkv_sched_step(s, &p) != RKV_OK) {
      fprintf(stderr, "rkv bench step: %s\n", rkv_sched_last_error(s));
      goto done;
    }
    double t1 = rt_now();
    for (uint32_t i = 0; i < p->n_seqs; i++) outs[i].eos = false;
    if (rkv_exec_begin(x, p) != RKV_OK || rkv_exec_finish(x, outs, p->n_seqs) != RKV_OK) {
      fprintf(stderr, "rkv bench step: %s\n", rkv_exec_last_error(x));
      goto done;
    }
    double t2 = rt_now();
    if (rkv_sched_report(s, outs, p->n_seqs) != RKV_OK) {
      fprintf(stderr, "rkv bench step: %s\n", rkv_sched_last_error(s));
      goto done;
    }
    double t3 = rt_now();
    const bool all_decode = p->n_seqs == c.batch && p->n_decode == c.batch;
    decode_steps += all_decode;
    if (!all_decode || decode_steps <= warm) continue;
    for (uint32_t i = 0; i < p->n_seqs; i++) compressions += outs[i].compressed;
    ts[timed] = (t1 - t0) + (t3 - t2);
    tx[timed] = t2 - t1;
    tr[timed] = ref_pass(lens, c.batch * streams);
    timed++;
    if (!c.json) rt_progress_update(&pr, "bench step", timed, c.steps, timed == c.steps);
  }
  if (rkv_sched_check(s) != RKV_OK || rkv_exec_check(x) != RKV_OK) {
    fprintf(stderr, "rkv bench step: check failed: %s / %s\n", rkv_sched_last_error(s),
            rkv_exec_last_error(x));
    goto done;
  }
  const double per = 1e9 / (double)c.batch;
  double *tt = malloc(c.steps * sizeof *tt);
  if (!tt) goto done;
  for (uint64_t i = 0; i < c.steps; i++) tt[i] = ts[i] + tx[i];
  const double sched_ns = rt_median(ts, c.steps) * per, exec_ns = rt_median(tx, c.steps) * per;
  const double total_ns = rt_median(tt, c.steps) * per, ref_ns = rt_median(tr, c.steps) * per;
  free(tt);
  if (c.json) {
    printf(
        "{\"bench\": \"step\", \"layers\": %llu, \"kv_heads\": %llu, \"batch\": %llu, "
        "\"block_size\": %llu, \"budget\": %llu, \"buffer\": %llu, \"steps\": %llu, "
        "\"plan_slots\": %s, \"compressions\": %llu, \"sched_ns\": %.1f, \"exec_ns\": %.1f, "
        "\"total_ns\": %.1f, "
        "\"ref_ns\": %.1f, \"total_vs_ref\": %.2f}\n",
        (unsigned long long)c.layers, (unsigned long long)c.kv_heads, (unsigned long long)c.batch,
        (unsigned long long)c.bs, (unsigned long long)c.budget, (unsigned long long)c.buffer,
        (unsigned long long)c.steps, c.plan_slots ? "true" : "false",
        (unsigned long long)compressions, sched_ns, exec_ns, total_ns, ref_ns, total_ns / ref_ns);
  } else {
    printf(
        "decode step, %llu layers x %llu kv heads, batch %llu, block %llu, B = %llu + %llu "
        "(%llu compressions in %llu steps); ns per sequence per step, medians:\n",
        (unsigned long long)c.layers, (unsigned long long)c.kv_heads, (unsigned long long)c.batch,
        (unsigned long long)c.bs, (unsigned long long)c.budget, (unsigned long long)c.buffer,
        (unsigned long long)compressions, (unsigned long long)c.steps);
    printf("  sched %.1f  exec %.1f  total %.1f  (budget 500)  ref %.1f  total/ref %.2fx\n",
           sched_ns, exec_ns, total_ns, ref_ns, total_ns / ref_ns);
  }
  ret = 0;
done:
  rkv_exec_destroy(x);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(bm);
  free(outs);
  free(ts);
  free(tx);
  free(tr);
  free(lens);
  return ret;
}
