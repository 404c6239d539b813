/* `rkv bench attention`: placeholder until the benchmark lands (reports unsupported, exit 2). */
#include <stdio.h>

#include "rkv_tool.h"

#include "bench.h"

int rkv_bench_attention(int argc, char **argv) {
  (void)argc, (void)argv;
  fprintf(stderr, "rkv bench attention: not implemented yet\n");
  return 2;
}
