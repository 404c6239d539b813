/* `rkv stress`: random mixes of create / append / fork / compact / compact_uniform / restore /
 * free and malformed calls against one block manager, every call checked against the shadow
 * model of shadow.h (the same model the property test and the fuzz target
 * use), with the full invariant walk (rkv_blockmgr_check + every block, stream and token)
 * every K ops and at the end. Frees everything at the end and requires 0 leaked blocks.
 * Summary as a table, or one JSON object with --json; non-zero exit on any violation. */
#include "rkv_tool.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/blockmgr.h>

#include "shadow.h"

const char rt_cmd_stress_summary[] =
    "random block-manager operations checked against a shadow model (leaks, invariants)";

static void usage(FILE *f) {
  fprintf(f,
          "usage: rkv stress [--ops N] [--seed S] [--blocks B] [--layers L] [--kv-heads H]\n"
          "                  [--block-size N] [--max-seqs M] [--max-append N]\n"
          "                  [--check-every K] [--prefix-cache] [--json]\n\n"
          "Runs N random block-manager operations (create, append of 1..max-append tokens,\n"
          "fork, compact with random keep lists, compact_uniform, restore, free, and malformed\n"
          "calls that must fail and change nothing) on a pool small enough to run out of\n"
          "blocks often. Every call is checked against a shadow model (statuses, rows, copy\n"
          "and move plans, token placement, free count); the full walk (rkv_blockmgr_check,\n"
          "every block's ref count, every stream's tokens) runs every K ops (K = 1 checks\n"
          "after every op) and at the end. Finally frees every sequence: 0 blocks may leak.\n\n"
          "  --ops N          operations (default 1000000)\n"
          "  --seed S         random seed (default 1)\n"
          "  --blocks B       pool blocks (default 512)\n"
          "  --layers L       layers (default 2)\n"
          "  --kv-heads H     kv heads per layer (default 4)\n"
          "  --block-size N   tokens per block (default 8)\n"
          "  --max-seqs M     live sequences at once (default 64)\n"
          "  --max-append N   largest append (default 40)\n"
          "  --check-every K  full invariant walk every K ops (default 1000)\n"
          "  --prefix-cache   enable config.prefix_cache and mix in prefix operations (a fifth\n"
          "                   of the ops): requests for a few shared prompt templates\n"
          "                   (prefix_match, prefix_cost, seq_create_cached, the rest of the\n"
          "                   prompt appended, prefix_insert, often seq_protect), re-inserts,\n"
          "                   protect (also past the shortest stream), compact_prepare,\n"
          "                   prefix_clear; compactions then mostly keep the protected prefix\n"
          "                   and sometimes break it. The model predicts hits, costs, cached\n"
          "                   groups, parked blocks, the copies compactions make of cached\n"
          "                   blocks, invalidations and reclaims (oldest parked group first)\n"
          "  --json           print the summary as one JSON object\n\n"
          "Exit status: 0 clean, 1 violation, 2 usage error.\n");
}

typedef struct stress_opts {
  uint64_t ops, seed, blocks, layers, heads, block_size, max_seqs, max_append, check_every;
  bool json, prefix_cache;
} stress_opts;

static int parse(int argc, char **argv, stress_opts *o) {
  static const char *const cmd = "stress";
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
    if (strcmp(a, "--prefix-cache") == 0) {
      o->prefix_cache = true;
      continue;
    }
    const rt_u64_opt num[] = {
        {"--ops", &o->ops, 0, UINT64_C(1) << 40},
        {"--seed", &o->seed, 0, UINT64_MAX},
        {"--blocks", &o->blocks, 1, 1u << 22},
        {"--layers", &o->layers, 1, 256},
        {"--kv-heads", &o->heads, 1, 256},
        {"--block-size", &o->block_size, 1, 1024},
        {"--max-seqs", &o->max_seqs, 1, 4096},
        {"--max-append", &o->max_append, 1, 4096},
        {"--check-every", &o->check_every, 1, UINT64_C(1) << 40},
    };
    int r = rt_parse_u64_opt(cmd, argc, argv, &i, num, sizeof num / sizeof num[0]);
    if (r < 0) return 2;
    if (r == 0) {
      fprintf(stderr, "rkv stress: unknown option '%s' (rkv stress --help)\n", a);
      return 2;
    }
  }
  if (o->layers * o->heads > 4096) {
    fprintf(stderr, "rkv stress: --layers x --kv-heads must be <= 4096\n");
    return 2;
  }
  if (o->blocks * o->block_size >= (UINT64_C(1) << 31)) {
    fprintf(stderr, "rkv stress: --blocks x --block-size must be < 2^31\n");
    return 2;
  }
  return -1;
}

int rt_cmd_stress(int argc, char **argv) {
  stress_opts o = {1000000, 1, 512, 2, 4, 8, 64, 40, 1000, false, false};
  int pr = parse(argc, argv, &o);
  if (pr >= 0) return pr;

  rkv_blockmgr_config cfg = RKV_BLOCKMGR_CONFIG_INIT;
  cfg.num_blocks = (uint32_t)o.blocks;
  cfg.block_size = (uint32_t)o.block_size;
  cfg.num_layers = (uint32_t)o.layers;
  cfg.num_kv_heads = (uint32_t)o.heads;
  cfg.head_dim = 128;
  cfg.max_seqs = (uint32_t)o.max_seqs;
  cfg.watermark = 0.0f;
  cfg.prefix_cache = o.prefix_cache;
  rkv_blockmgr *m = NULL;
  char why[256] = "";
  rkv_status st = rkv_blockmgr_validate_config(&cfg, why, sizeof why);
  if (st == RKV_OK) st = rkv_blockmgr_create(&cfg, &m);
  if (st != RKV_OK) {
    fprintf(stderr, "rkv stress: rkv_blockmgr_create: %s %s\n", rkv_status_name(st), why);
    return 1;
  }
  bm_shadow s;
  if (bms_init(&s, m, o.seed) != 0) {
    fprintf(stderr, "rkv stress: out of memory\n");
    rkv_blockmgr_destroy(m);
    return 1;
  }
  bms_counts c;
  memset(&c, 0, sizeof c);
  uint64_t rng = o.seed;
  rt_progress prog;
  rt_progress_init(&prog, 1.0);
  double frag_sum = 0;
  uint64_t frag_samples = 0;
  int bad = 0;
  uint64_t i = 0;
  double t0 = rt_now();
  for (; i < o.ops; i++) {
    if (bms_random_op(&s, &rng, (uint32_t)o.max_append, &c) != 0) {
      bad = 1;
      break;
    }
    if ((i + 1) % o.check_every == 0) {
      c.full_checks++;
      if (bms_verify_all(&s) != 0) {
        bad = 1;
        break;
      }
      rkv_blockmgr_stats stt;
      rkv_blockmgr_get_stats(m, &stt);
      if (stt.allocated_slots) {
        frag_sum += (double)stt.fragmentation_slots / (double)stt.allocated_slots;
        frag_samples++;
      }
    }
    if ((i & 1023) == 0) rt_progress_update(&prog, "stress", i, o.ops, false);
  }
  double elapsed = rt_now() - t0;
  rt_progress_update(&prog, "stress", i, o.ops, true);
  if (!bad) {
    c.full_checks++;
    if (bms_verify_all(&s) != 0) bad = 1;
  }
  rkv_blockmgr_stats end;
  rkv_blockmgr_get_stats(m, &end);
  uint32_t leaked = 0;
  if (!bad && bms_free_all(&s, &leaked) != 0) bad = 1;
  if (bad) {
    rkv_blockmgr_stats now;
    rkv_blockmgr_get_stats(m, &now);
    leaked = now.used_blocks;
    fprintf(stderr, "rkv stress: VIOLATION at op %" PRIu64 " (seed %" PRIu64 "): %s\n", i, o.seed,
            s.err);
  }
  /* the prefix kinds only exist with a prefix cache: the default report stays as it was */
  const int nkinds = o.prefix_cache ? BMS_OP_KINDS : BMS_OP_STD_KINDS;
  double ops_s = elapsed > 0 ? (double)c.ops / elapsed : 0;
  double frag_mean = frag_samples ? frag_sum / (double)frag_samples : 0;
  double frag_end =
      end.allocated_slots ? (double)end.fragmentation_slots / (double)end.allocated_slots : 0;
  if (o.json) {
    printf("{\"ok\": %s, \"ops\": %" PRIu64 ", \"seed\": %" PRIu64
           ", \"seconds\": %.3f, "
           "\"ops_per_s\": %.0f, \"check_every\": %" PRIu64 ", \"full_checks\": %" PRIu64
           ", \"config\": {\"blocks\": %u, \"block_size\": %u, \"layers\": %u, \"kv_heads\": %u, "
           "\"max_seqs\": %u, \"max_append\": %" PRIu64 "}, \"kinds\": {",
           bad ? "false" : "true", c.ops, o.seed, elapsed, ops_s, o.check_every, c.full_checks,
           cfg.num_blocks, cfg.block_size, cfg.num_layers, cfg.num_kv_heads, cfg.max_seqs,
           o.max_append);
    for (int k = 0; k < nkinds; k++)
      printf("%s\"%s\": {\"attempted\": %" PRIu64 ", \"ok\": %" PRIu64 "}", k ? ", " : "",
             bms_op_name(k), c.kind[k], c.ok[k]);
    printf("}, \"no_blocks\": %" PRIu64
           ", \"peak_used_blocks\": %u, "
           "\"fragmentation_mean\": %.4f, \"fragmentation_end\": %.4f, \"leaked_blocks\": %u",
           c.no_blocks, end.peak_used_blocks, frag_mean, frag_end, leaked);
    if (o.prefix_cache)
      printf(", \"prefix_cache\": {\"inserted\": %" PRIu64 ", \"lookups\": %" PRIu64
             ", \"hit_groups\": %" PRIu64 ", \"invalidated\": %" PRIu64 ", \"reclaimed\": %" PRIu64
             "}",
             s.pst.inserted, s.pst.lookups, s.pst.hit_groups, s.pst.invalidated, s.pst.reclaimed);
    if (bad) {
      printf(", \"error\": \"");
      for (const char *p = s.err; *p; p++)
        if (*p == '"' || *p == '\\')
          printf("\\%c", *p);
        else if ((unsigned char)*p >= 0x20)
          putchar(*p);
      printf("\"");
    }
    printf("}\n");
  } else {
    printf("rkv stress: %s\n", bad ? "VIOLATION" : "clean");
    printf("  config          %u blocks x %u tokens, %u layers x %u kv heads, %u seqs max\n",
           cfg.num_blocks, cfg.block_size, cfg.num_layers, cfg.num_kv_heads, cfg.max_seqs);
    printf("  ops             %" PRIu64 " (seed %" PRIu64 ")\n", c.ops, o.seed);
    printf("  time            %.3f s, %.0f ops/s\n", elapsed, ops_s);
    printf("  checks          every op against the model; full walk every %" PRIu64
           " ops + at the end (%" PRIu64 " walks)\n",
           o.check_every, c.full_checks);
    printf("  %-16s %12s %12s\n", "op", "attempted", "ok");
    for (int k = 0; k < nkinds; k++)
      printf("  %-16s %12" PRIu64 " %12" PRIu64 "\n", bms_op_name(k), c.kind[k], c.ok[k]);
    if (o.prefix_cache)
      printf("  prefix cache    %" PRIu64 " groups inserted, %" PRIu64 " lookups sharing %" PRIu64
             " groups, %" PRIu64 " invalidated, %" PRIu64 " reclaimed\n",
             s.pst.inserted, s.pst.lookups, s.pst.hit_groups, s.pst.invalidated, s.pst.reclaimed);
    printf("  NO_BLOCKS       %" PRIu64 "\n", c.no_blocks);
    printf("  peak used       %u / %u blocks\n", end.peak_used_blocks, cfg.num_blocks);
    printf("  fragmentation   %.2f%% mean at checks, %.2f%% at end (unused slots in used blocks)\n",
           100 * frag_mean, 100 * frag_end);
    printf("  leaked blocks   %u\n", leaked);
  }
  bms_fini(&s);
  rkv_blockmgr_destroy(m);
  return bad || leaked ? 1 : 0;
}
