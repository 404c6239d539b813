/* tools/rkv/model_forward.c as built into test_model_eval_emu: the same source; through the
 * shim (emu_shim.h) a pool on an emulated CUDA backend takes the runner's CUDA path
 * (model_cuda.c). */
#include "emu_shim.h" /* first: its renames apply to everything below */

#include "model_forward.c"
