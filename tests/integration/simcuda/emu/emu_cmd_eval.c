/* tools/rkv/cmd_eval.c as built into test_model_eval_emu: the same source, with backend creation
 * going through the shim (emu_shim.h), so `--backend cuda` gets an emulated CUDA backend. */
#include "emu_shim.h" /* first: its renames apply to everything below */

#include "cmd_eval.c"
