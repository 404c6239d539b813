/* libFuzzer target for the executor: the scheduler's call sequences of fuzz_sched, every plan
 * run by the executor, on a small CPU pool or in bookkeeping mode (the input's first byte),
 * with rkv_exec_check after every step (the driver: fuzz_serve.h). */
#include "fuzz_serve.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fz_run(data, size, true);
}
