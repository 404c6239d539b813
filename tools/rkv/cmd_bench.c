/* `rkv bench <what>`: dispatch to the benchmarks (tools, not tests). */
#include <stdio.h>
#include <string.h>

#include "rkv_tool.h"

#include "bench.h"

const char rt_cmd_bench_summary[] =
    "benchmarks: blockmgr, evict, granularity, attention, step, swap (rkv bench --help)";

static const struct {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *what;
} kBenches[] = {
    {"blockmgr", rt_bench_blockmgr, "host time per decode step and per compaction"},
    {"evict", rt_bench_evict, "one-layer compression time vs a same-size sgemm"},
    {"granularity", rt_bench_granularity, "dense step of all layers per selection unit vs stream"},
    {"attention", rt_bench_attention, "paged attention bandwidth vs a memory copy"},
    {"step", rt_bench_step, "host cost of a decode step: scheduler + executor bookkeeping"},
    {"swap", rt_bench_swap, "KV pool host transfers (swap out / in) vs one contiguous copy"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: rkv bench <what> [options]   (rkv bench <what> --help)\n\n");
  for (size_t i = 0; i < sizeof kBenches / sizeof kBenches[0]; i++)
    fprintf(f, "  %-12s %s\n", kBenches[i].name, kBenches[i].what);
}

int rt_cmd_bench(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (size_t i = 0; i < sizeof kBenches / sizeof kBenches[0]; i++)
    if (strcmp(argv[1], kBenches[i].name) == 0) return kBenches[i].run(argc - 1, argv + 1);
  fprintf(stderr, "rkv bench: unknown benchmark '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
