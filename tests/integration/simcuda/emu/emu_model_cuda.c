/* tools/rkv/model_cuda.c as built into test_model_eval_emu: its CUDA branch, compiled against
 * the stand-in cuda_runtime.h of this directory and the host emulations of emu_shim.h, so the
 * runner's device-side host logic (padding, query pre-scale, staging, uploads, ring slots,
 * eviction descriptors) runs without a GPU. */
#include "emu_shim.h"
#ifndef RKV_HAVE_CUDA
#define RKV_HAVE_CUDA 1
#endif
#include "model_cuda.c"
