/* tools/rkv/sim_engine.c as built into test_sim_cuda_emu: the same source, with the pool
 * creations recorded by the shim (emu_shim.h) so the test can compare the engines' pools. */
#include "emu_shim.h"
#include "sim_engine.c"
