/* tools/rkv/sim_engine_cuda.c as built into test_sim_cuda_emu: its CUDA branch, compiled
 * against the stand-in cuda_runtime.h of this directory and the host emulations of
 * emu_shim.h, so the engine's host logic runs without a GPU. */
#include "emu_shim.h"
#ifndef RKV_HAVE_CUDA
#define RKV_HAVE_CUDA 1
#endif
/* a small pinned arena, so the reset-after-sync path runs many times per step */
#define SIM_CUDA_STAGE_MIN ((size_t)1 << 10)
#include "sim_engine_cuda.c"
