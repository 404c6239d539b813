/* `rkv bench blockmgr`: host cost of the block manager on a decode batch (default a
 * Llama-8B-shaped cache: 32 layers x 8 kv heads, batch 256, block 16, budget 1024 + buffer 128):
 *  (1) one decode step = append one token to every stream of every sequence, with and without
 *      the slot mapping output, over enough steps to cross many block boundaries; the
 *      reference is a loop incrementing layers*heads*batch int32 lengths; and the same step
 *      followed by rkv_blockmgr_sync_rows into a per-sequence padded table mirror (the
 *      delta export a device-resident table needs);
 *  (2) exporting every layer's CSR table at context budget+buffer (O(entries): the reason the
 *      design keeps device tables updated by deltas), and one layer; the reference is a memcpy
 *      of the same number of table bytes;
 *  (3) compacting one sequence from budget+buffer to budget tokens in every stream, with random
 *      keep lists (rkv_blockmgr_compact, move plan) and with compact_uniform.
 * Each measurement is repeated --reps times; min and median are reported, plus ratios against
 * the references measured in the same run. Results: docs/BENCHMARKS.md "Block manager (host)". */
#include "rkv_tool.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/blockmgr.h>

#include "bench.h"

/* Keeps the compiler from folding reference loops across repetitions. */
#define BENCH_CLOBBER() __asm__ volatile("" ::: "memory")

typedef struct bench_opts {
  uint64_t layers, heads, batch, block_size, budget, buffer, steps, reps;
  bool json;
} bench_opts;

typedef struct stat2 {
  double min, median;
} stat2;

static stat2 summarize(double *v, size_t n) {
  const double med = rt_median(v, n); /* sorts v */
  stat2 s = {v[0], med};
  return s;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: rkv bench blockmgr [--layers L] [--kv-heads H] [--batch B] [--block-size N]\n"
          "                          [--budget B] [--buffer N] [--steps N] [--reps R] [--json]\n\n"
          "Host time of the block manager per decode step (append one token to every stream\n"
          "of the batch, with and without slot output), per CSR export of all layers and of\n"
          "one layer at context budget+buffer, and per compaction of one sequence from\n"
          "budget+buffer to budget tokens (random keep lists with a move plan, and\n"
          "compact_uniform). Min and median over R repetitions, with ratios against a loop\n"
          "incrementing the lengths and a memcpy of the table bytes measured in the same run.\n\n"
          "  --layers L      layers (default 32)\n"
          "  --kv-heads H    kv heads (default 8)\n"
          "  --batch B       sequences (default 256)\n"
          "  --block-size N  tokens per block (default 16)\n"
          "  --budget B      compaction target (default 1024)\n"
          "  --buffer N      tokens generated between compactions (default 128)\n"
          "  --steps N       decode steps timed per repetition (default 256)\n"
          "  --reps R        repetitions (default 7)\n"
          "  --json          one JSON object instead of the table\n");
}

static int parse(int argc, char **argv, bench_opts *o) {
  static const char *const cmd = "bench blockmgr";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage(stdout);
      return 0;
    }
    if (strcmp(a, "--json") == 0) {
      o->json = true;
      continue;
    }
    const rt_u64_opt num[] = {
        {"--layers", &o->layers, 1, 1024},     {"--kv-heads", &o->heads, 1, 1024},
        {"--batch", &o->batch, 1, 4096},       {"--block-size", &o->block_size, 1, 1024},
        {"--budget", &o->budget, 1, 1u << 20}, {"--buffer", &o->buffer, 1, 1u << 20},
        {"--steps", &o->steps, 1, 1u << 20},   {"--reps", &o->reps, 1, 1000},
    };
    int r = rt_parse_u64_opt(cmd, argc, argv, &i, num, sizeof num / sizeof num[0]);
    if (r < 0) return 2;
    if (r == 0) {
      fprintf(stderr, "rkv bench blockmgr: unknown option '%s' (--help)\n", a);
      return 2;
    }
  }
  return -1;
}

static rkv_blockmgr *make_mgr(const bench_opts *o, uint64_t blocks) {
  rkv_blockmgr_config cfg = RKV_BLOCKMGR_CONFIG_INIT;
  cfg.num_blocks = (uint32_t)blocks;
  cfg.block_size = (uint32_t)o->block_size;
  cfg.num_layers = (uint32_t)o->layers;
  cfg.num_kv_heads = (uint32_t)o->heads;
  cfg.max_seqs = (uint32_t)o->batch;
  cfg.watermark = 0.0f;
  rkv_blockmgr *m = NULL;
  rkv_status st = rkv_blockmgr_create(&cfg, &m);
  if (st != RKV_OK) fprintf(stderr, "rkv bench blockmgr: create: %s\n", rkv_status_name(st));
  return m;
}

static bool fill(rkv_blockmgr *m, const bench_opts *o, uint32_t tokens) {
  for (uint64_t b = 0; b < o->batch; b++) {
    rkv_status st = rkv_blockmgr_seq_create(m, (int64_t)b);
    if (st == RKV_OK && tokens) st = rkv_blockmgr_append(m, (int64_t)b, tokens, NULL, NULL, NULL);
    if (st != RKV_OK) {
      fprintf(stderr, "rkv bench blockmgr: setup: %s: %s\n", rkv_status_name(st),
              rkv_blockmgr_last_error(m));
      return false;
    }
  }
  return true;
}

typedef struct bench_result {
  stat2 append_slots, append_noslots, append_sync, ref_inc; /* seconds per step */
  stat2 export_all, export_layer, ref_memcpy;               /* seconds per step / per layer */
  stat2 compact, uniform;                                   /* seconds per sequence compaction */
  uint64_t export_bytes, nnz_all, moves_per_seq;
} bench_result;

/* (1) decode steps. */
static bool bench_append(const bench_opts *o, bench_result *r) {
  uint32_t S = (uint32_t)(o->layers * o->heads);
  uint64_t per_stream = (o->steps + o->block_size - 1) / o->block_size;
  uint64_t blocks = per_stream * S * o->batch + 1;
  double *t_slots = calloc(o->reps, sizeof(double)), *t_none = calloc(o->reps, sizeof(double));
  double *t_ref = calloc(o->reps, sizeof(double)), *t_sync = calloc(o->reps, sizeof(double));
  /* Delta export: every sequence keeps a padded device-table mirror [S][stride] that
   * rkv_blockmgr_sync_rows updates after each append (what a GPU engine uploads by deltas). */
  uint32_t stride = (uint32_t)per_stream + 1;
  int32_t *mirror = calloc((size_t)S * stride * o->batch, sizeof *mirror);
  int32_t *mlens = calloc((size_t)S * o->batch, sizeof *mlens);
  int64_t *slots = calloc(S, sizeof *slots);
  rkv_block_copy *copies = calloc(S, sizeof *copies);
  int32_t *lens = calloc((size_t)S * o->batch, sizeof *lens);
  bool ok = t_slots && t_none && t_ref && t_sync && mirror && mlens && slots && copies && lens;
  if (ok) memset(lens, 0, (size_t)S * o->batch * sizeof *lens); /* fault the pages in */
  for (uint64_t rep = 0; ok && rep < o->reps; rep++) {
    for (int with = 0; ok && with < 3; with++) { /* 0 no slots, 1 slots, 2 no slots + sync */
      rkv_blockmgr *m = make_mgr(o, blocks);
      ok = m && fill(m, o, 0);
      double t0 = rt_now();
      for (uint64_t step = 0; ok && step < o->steps; step++)
        for (uint64_t b = 0; b < o->batch; b++) {
          uint32_t nc;
          rkv_status st =
              rkv_blockmgr_append(m, (int64_t)b, 1, with == 1 ? slots : NULL, copies, &nc);
          if (st == RKV_OK && with == 2)
            st = rkv_blockmgr_sync_rows(m, (int64_t)b, step == 0, mirror + (size_t)b * S * stride,
                                        stride, mlens + (size_t)b * S, NULL);
          if (st != RKV_OK) {
            fprintf(stderr, "rkv bench blockmgr: append: %s\n", rkv_status_name(st));
            ok = false;
            break;
          }
        }
      double dt = (rt_now() - t0) / (double)o->steps;
      (with == 0 ? t_none : with == 1 ? t_slots : t_sync)[rep] = dt;
      rkv_blockmgr_destroy(m);
    }
    double t0 = rt_now();
    for (uint64_t step = 0; step < o->steps; step++) {
      for (size_t i = 0; i < (size_t)S * o->batch; i++) lens[i]++;
      BENCH_CLOBBER();
    }
    t_ref[rep] = (rt_now() - t0) / (double)o->steps;
  }
  if (ok) {
    r->append_slots = summarize(t_slots, o->reps);
    r->append_noslots = summarize(t_none, o->reps);
    r->append_sync = summarize(t_sync, o->reps);
    r->ref_inc = summarize(t_ref, o->reps);
  }
  free(t_slots);
  free(t_none);
  free(t_ref);
  free(t_sync);
  free(mirror);
  free(mlens);
  free(slots);
  free(copies);
  free(lens);
  return ok;
}

/* (2) exports and (3) compactions, on a batch filled to budget + buffer. */
static bool bench_export_compact(const bench_opts *o, bench_result *r) {
  uint32_t S = (uint32_t)(o->layers * o->heads), L = (uint32_t)o->layers;
  uint32_t H = (uint32_t)o->heads;
  uint32_t full = (uint32_t)(o->budget + o->buffer), keep = (uint32_t)o->budget;
  uint64_t per_stream = (full + o->block_size - 1) / o->block_size;
  uint64_t blocks = per_stream * S * o->batch + 1;
  if (blocks * o->block_size >= (UINT64_C(1) << 31)) {
    fprintf(stderr,
            "rkv bench blockmgr: %" PRIu64 " blocks of %" PRIu64
            " tokens exceed the manager's 2^31 slot limit; lower --batch or --buffer\n",
            blocks, o->block_size);
    return false;
  }
  rkv_blockmgr *m = make_mgr(o, blocks);
  if (!m || !fill(m, o, full)) {
    rkv_blockmgr_destroy(m);
    return false;
  }
  int64_t *ids = calloc(o->batch, sizeof *ids);
  for (uint64_t b = 0; ids && b < o->batch; b++) ids[b] = (int64_t)b;
  uint32_t nnz = 0;
  rkv_blockmgr_export_size(m, 0, ids, (uint32_t)o->batch, &nnz);
  size_t rows = (size_t)o->batch * H;
  /* One table per layer, as a runtime that ships all layers per step would hold them. */
  int32_t *indptr = calloc((rows + 1) * L, sizeof *indptr);
  int32_t *indices = calloc((size_t)nnz * L, sizeof *indices);
  int32_t *last = calloc(rows * L, sizeof *last);
  size_t bytes = ((rows + 1) + (size_t)nnz + rows) * L * sizeof(int32_t);
  uint8_t *src = malloc(bytes), *dst = malloc(bytes);
  double *t_all = calloc(o->reps, sizeof(double)), *t_layer = calloc(o->reps, sizeof(double));
  double *t_ref = calloc(o->reps, sizeof(double)), *t_cmp = calloc(o->reps, sizeof(double));
  double *t_uni = calloc(o->reps, sizeof(double));
  bool ok =
      ids && indptr && indices && last && src && dst && t_all && t_layer && t_ref && t_cmp && t_uni;
  if (ok) { /* touch every page first: page faults are not what the reference measures */
    memset(src, 1, bytes);
    memset(dst, 0, bytes);
  }
  r->export_bytes = bytes;
  r->nnz_all = (uint64_t)nnz * L;
  for (uint64_t rep = 0; ok && rep < o->reps; rep++) {
    double t0 = rt_now();
    for (uint32_t l = 0; ok && l < L; l++) {
      uint32_t got = 0;
      rkv_status st =
          rkv_blockmgr_export_csr(m, l, ids, (uint32_t)o->batch, indptr + l * (rows + 1),
                                  indices + (size_t)l * nnz, nnz, last + l * rows, &got, NULL);
      if (st != RKV_OK) {
        fprintf(stderr, "rkv bench blockmgr: export: %s\n", rkv_status_name(st));
        ok = false;
      }
    }
    double t1 = rt_now();
    t_all[rep] = t1 - t0;
    uint32_t got = 0;
    rkv_blockmgr_export_csr(m, (uint32_t)(rep % L), ids, (uint32_t)o->batch, indptr, indices, nnz,
                            last, &got, NULL);
    t_layer[rep] = rt_now() - t1;
    t0 = rt_now();
    memcpy(dst, src, bytes);
    BENCH_CLOBBER();
    t_ref[rep] = rt_now() - t0;
  }

  /* Keep lists: K sets of S random sorted subsets of `keep` of `full` positions, generated
   * outside the timed region (choosing tokens is the scorer's job, not the manager's). */
  enum { K = 4 };
  int32_t *pos = ok ? malloc((size_t)K * S * keep * sizeof *pos) : NULL;
  rkv_keep_list *lists = calloc((size_t)K * S, sizeof *lists);
  rkv_slot_move *moves = calloc((size_t)S * keep + 1, sizeof *moves);
  rkv_compact_map *maps = calloc(S, sizeof *maps);
  int32_t *old = calloc((size_t)S * per_stream + 1, sizeof *old);
  ok = ok && pos && lists && moves && maps && old;
  uint64_t rng = 12345;
  for (size_t li = 0; ok && li < (size_t)K * S; li++) {
    int32_t *p = pos + li * keep;
    uint32_t chosen = 0;
    for (uint32_t t = 0; t < full && chosen < keep; t++) {
      rng = rng * 6364136223846793005ull + 1442695040888963407ull;
      if ((uint32_t)((rng >> 33) % (full - t)) < keep - chosen) p[chosen++] = (int32_t)t;
    }
    rkv_keep_list kl = {(uint32_t)(li % S) / H, (uint32_t)(li % S) % H, p, keep};
    lists[li] = kl;
  }
  uint64_t total_moves = 0;
  for (uint64_t rep = 0; ok && rep < o->reps; rep++) {
    for (int uni = 0; ok && uni < 2; uni++) {
      double t0 = rt_now();
      for (uint64_t b = 0; ok && b < o->batch; b++) {
        rkv_status st;
        uint32_t n = 0, n_old = 0;
        if (uni) {
          st = rkv_blockmgr_compact_uniform(m, (int64_t)b, -1, (int32_t)keep, maps, S, &n, old,
                                            (uint32_t)(S * per_stream + 1), &n_old);
        } else {
          st = rkv_blockmgr_compact(m, (int64_t)b, lists + (b % K) * S, S, moves,
                                    (uint32_t)(S * keep), &n);
          total_moves += n;
        }
        if (st != RKV_OK) {
          fprintf(stderr, "rkv bench blockmgr: compact: %s: %s\n", rkv_status_name(st),
                  rkv_blockmgr_last_error(m));
          ok = false;
        }
      }
      (uni ? t_uni : t_cmp)[rep] = (rt_now() - t0) / (double)o->batch;
      /* Grow back to budget + buffer (untimed) for the next compaction. */
      for (uint64_t b = 0; ok && b < o->batch; b++)
        if (rkv_blockmgr_append(m, (int64_t)b, full - keep, NULL, NULL, NULL) != RKV_OK) ok = false;
    }
  }
  if (ok) {
    r->export_all = summarize(t_all, o->reps);
    r->export_layer = summarize(t_layer, o->reps);
    r->ref_memcpy = summarize(t_ref, o->reps);
    r->compact = summarize(t_cmp, o->reps);
    r->uniform = summarize(t_uni, o->reps);
    r->moves_per_seq = total_moves / (o->reps * o->batch);
  }
  free(pos);
  free(lists);
  free(moves);
  free(maps);
  free(old);
  free(ids);
  free(indptr);
  free(indices);
  free(last);
  free(src);
  free(dst);
  free(t_all);
  free(t_layer);
  free(t_ref);
  free(t_cmp);
  free(t_uni);
  rkv_blockmgr_destroy(m);
  return ok;
}

static void json_stat(const char *name, stat2 s, double scale, const char *sep) {
  printf("\"%s\": {\"min\": %.4f, \"median\": %.4f}%s", name, s.min * scale, s.median * scale, sep);
}

int rt_bench_blockmgr(int argc, char **argv) {
  bench_opts o = {32, 8, 256, 16, 1024, 128, 256, 7, false};
  int pr = parse(argc, argv, &o);
  if (pr >= 0) return pr;
  if (RKV_DEBUG >= 3)
    fprintf(stderr,
            "rkv bench blockmgr: WARNING: RKV_DEBUG=%d build: the manager walks every "
            "invariant after each mutation; use a Release / RKV_DEBUG<=1 build for numbers\n",
            RKV_DEBUG);
  bench_result r;
  memset(&r, 0, sizeof r);
  if (!bench_append(&o, &r) || !bench_export_compact(&o, &r)) return 1;
  double S = (double)(o.layers * o.heads), B = (double)o.batch;
  double budget_us = 1.0; /* per sequence per decode step, amortised */
  double per_seq_ns = r.append_slots.median / B * 1e9;
  if (o.json) {
    printf("{\"config\": {\"layers\": %" PRIu64 ", \"kv_heads\": %" PRIu64 ", \"batch\": %" PRIu64
           ", \"block_size\": %" PRIu64 ", \"budget\": %" PRIu64 ", \"buffer\": %" PRIu64
           ", \"steps\": %" PRIu64 ", \"reps\": %" PRIu64 ", \"rkv_debug\": %d}, ",
           o.layers, o.heads, o.batch, o.block_size, o.budget, o.buffer, o.steps, o.reps,
           RKV_DEBUG);
    json_stat("append_slots_us_per_step", r.append_slots, 1e6, ", ");
    json_stat("append_noslots_us_per_step", r.append_noslots, 1e6, ", ");
    json_stat("append_sync_rows_us_per_step", r.append_sync, 1e6, ", ");
    json_stat("ref_increment_us_per_step", r.ref_inc, 1e6, ", ");
    printf(
        "\"append_slots_ns_per_seq\": %.1f, \"append_noslots_ns_per_seq\": %.1f, "
        "\"append_ns_per_stream\": %.2f, \"append_within_budget\": %s, "
        "\"append_sync_rows_ns_per_seq\": %.1f, \"append_sync_rows_within_budget\": %s, ",
        per_seq_ns, r.append_noslots.median / B * 1e9, r.append_slots.median / (B * S) * 1e9,
        per_seq_ns <= budget_us * 1e3 ? "true" : "false", r.append_sync.median / B * 1e9,
        r.append_sync.median / B * 1e9 <= budget_us * 1e3 ? "true" : "false");
    json_stat("export_all_layers_us", r.export_all, 1e6, ", ");
    json_stat("export_one_layer_us", r.export_layer, 1e6, ", ");
    json_stat("ref_memcpy_us", r.ref_memcpy, 1e6, ", ");
    printf("\"export_entries\": %" PRIu64 ", \"export_bytes\": %" PRIu64 ", ", r.nnz_all,
           r.export_bytes);
    json_stat("compact_us_per_seq", r.compact, 1e6, ", ");
    json_stat("compact_uniform_us_per_seq", r.uniform, 1e6, ", ");
    printf("\"compact_moves_per_seq\": %" PRIu64
           ", \"compact_us_per_stream\": %.3f, "
           "\"compact_uniform_us_per_stream\": %.3f}\n",
           r.moves_per_seq, r.compact.median / S * 1e6, r.uniform.median / S * 1e6);
    return 0;
  }
  printf("rkv bench blockmgr: %" PRIu64 " layers x %" PRIu64 " kv heads, batch %" PRIu64
         ", block %" PRIu64 ", budget %" PRIu64 " + buffer %" PRIu64 ", %" PRIu64 " steps, %" PRIu64
         " reps (RKV_DEBUG=%d)\n",
         o.layers, o.heads, o.batch, o.block_size, o.budget, o.buffer, o.steps, o.reps, RKV_DEBUG);
  printf("%-40s %12s %12s  %s\n", "measurement", "min", "median", "per unit (median) / ratio");
  printf(
      "%-40s %9.1f us %9.1f us  %.1f ns/seq, %.2f ns/stream, %.1fx ref (budget %.0f ns/seq: "
      "%s)\n",
      "decode step: append 1, with slots", r.append_slots.min * 1e6, r.append_slots.median * 1e6,
      per_seq_ns, r.append_slots.median / (B * S) * 1e9, r.append_slots.median / r.ref_inc.median,
      budget_us * 1e3, per_seq_ns <= budget_us * 1e3 ? "ok" : "OVER");
  printf("%-40s %9.1f us %9.1f us  %.1f ns/seq, %.2f ns/stream, %.1fx ref\n",
         "decode step: append 1, no slots", r.append_noslots.min * 1e6,
         r.append_noslots.median * 1e6, r.append_noslots.median / B * 1e9,
         r.append_noslots.median / (B * S) * 1e9, r.append_noslots.median / r.ref_inc.median);
  printf("%-40s %9.1f us %9.1f us  %.1f ns/seq, %.1fx ref (budget %.0f ns/seq: %s)\n",
         "decode step: append 1 + sync_rows (delta)", r.append_sync.min * 1e6,
         r.append_sync.median * 1e6, r.append_sync.median / B * 1e9,
         r.append_sync.median / r.ref_inc.median, budget_us * 1e3,
         r.append_sync.median / B * 1e9 <= budget_us * 1e3 ? "ok" : "OVER");
  printf("%-40s %9.1f us %9.1f us  %.3f ns/length\n", "  ref: increment all stream lengths",
         r.ref_inc.min * 1e6, r.ref_inc.median * 1e6, r.ref_inc.median / (B * S) * 1e9);
  printf("%-40s %9.1f us %9.1f us  %" PRIu64 " entries, %.1f MB, %.1fx ref\n",
         "export CSR, all layers", r.export_all.min * 1e6, r.export_all.median * 1e6, r.nnz_all,
         (double)r.export_bytes / 1e6, r.export_all.median / r.ref_memcpy.median);
  printf("%-40s %9.1f us %9.1f us  %.1fx ref/layer\n", "export CSR, one layer",
         r.export_layer.min * 1e6, r.export_layer.median * 1e6,
         r.export_layer.median / (r.ref_memcpy.median / (double)o.layers));
  printf("%-40s %9.1f us %9.1f us  %.2f GB/s\n", "  ref: memcpy of all tables' bytes",
         r.ref_memcpy.min * 1e6, r.ref_memcpy.median * 1e6,
         (double)r.export_bytes / r.ref_memcpy.median / 1e9);
  printf("%-40s %9.1f us %9.1f us  %.3f us/stream, %" PRIu64 " moves/seq\n",
         "compact 1 seq (random keep, move plan)", r.compact.min * 1e6, r.compact.median * 1e6,
         r.compact.median / S * 1e6, r.moves_per_seq);
  printf("%-40s %9.1f us %9.1f us  %.3f us/stream\n", "compact_uniform 1 seq", r.uniform.min * 1e6,
         r.uniform.median * 1e6, r.uniform.median / S * 1e6);
  return 0;
}
