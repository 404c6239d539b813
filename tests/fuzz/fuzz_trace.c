/* Fuzz target for the `rkv sim --trace` reader (tools/rkv/sim_workload.c, compiled in here):
 * the input is written to a file and loaded as an Azure-format CSV trace (TIMESTAMP,
 * ContextTokens, GeneratedTokens) with generations from the trace and a span rescale. A load
 * either fails (message on stderr: run with -close_fd_mask=2) or yields requests sorted by arrival
 * with finite arrivals and token counts in [1, 2^30]. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_file.h"
#include "sim.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_file_write(data, size);
  if (!path) return 0;
  sim_workload_opts o = {0};
  o.kind = "azure-conv";
  o.trace = path;
  o.n = 64;
  o.gen = size && (data[0] & 1) ? "reasoning" : "trace";
  o.gen_mean = 100.0;
  o.gen_sigma = 0.5;
  o.gen_cap = 4096;
  o.span = size && (data[0] & 2) ? 10.0 : 0.0;
  o.prompt_cap = 2048;
  o.seed = 1;
  sim_req *r = NULL;
  uint32_t n = 0;
  if (!sim_workload_build(&o, &r, &n)) {
    if (r || n) abort();
    return 0;
  }
  if (n == 0 || n > o.n) abort();
  for (uint32_t i = 0; i < n; i++) {
    if (!isfinite(r[i].arrival)) abort();
    if (i && r[i].arrival < r[i - 1].arrival) abort();
    if (r[i].prompt < 1 || r[i].prompt > (INT64_C(1) << 30) || r[i].gen < 1 ||
        r[i].gen > (INT64_C(1) << 30))
      abort();
  }
  free(r);
  return 0;
}
