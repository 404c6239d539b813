/* libFuzzer target for the scheduler: call sequences in any order with engine outputs from
 * the input, rkv_sched_check after every call (the driver: fuzz_serve.h). */
#include "fuzz_serve.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fz_run(data, size, false);
}
