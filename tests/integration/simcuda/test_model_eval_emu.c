/* The host logic of `rkv eval --backend cuda` (tools/rkv/model_cuda.c, model_forward.c,
 * cmd_eval.c), checked without a GPU. The three sources are compiled against the stand-in
 * cuda_runtime.h of emu/ (device memory is host memory, copies queued on one in-order stream)
 * with the GPU-only library entries emulated on a CPU pool (emu/emu_shim.c: a CUDA backend
 * request gets a CPU backend that reports itself as CUDA, the query-window push writes the
 * documented ring layout, the device eviction follows evict_cuda.h and selects with the CPU
 * path's code). Everything else is the real library and the real tool: the padded pool
 * (head_dim 32 -> 128), the query pre-scale and halved attention scale, the staged uploads of
 * K/V rows, slots, CSR tables and queries, ring slots and positions, compact_uniform and the
 * eviction descriptors; the CUDA kernels themselves are not (tests/cuda covers them).
 *
 * rkv_cmd_eval runs the same evaluation twice, once on the CPU backend and once with
 * `--backend cuda`, and the two --json outputs must be identical apart from "backend" and the
 * timings ("seconds", "tokens_per_s"): accuracies (overall and by digit count), generated
 * tokens, peak blocks, stream lengths, compressions, tokens evicted, blocks freed, steps. The
 * CPU run must not touch the emulation, the CUDA run must push query rows and compress through
 * it, and no queued copy may have had its source changed before it ran (emu_fake_hazards).
 *
 * Usage: test_model_eval_emu [SMOKE_PROBLEMS [TRAINED_PROBLEMS]] (defaults 30 and 10; 0 skips
 * that model). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rkv_test.h"
#define EMU_SHIM_IMPL
#include "emu_shim.h"
#include "rkv_tool.h" /* rkv_cmd_eval, rkv_tool_now */

#define MAX_ARGS 48

/* Runs `rkv eval --model MODEL --problems N OPTS [--backend cuda]` (OPTS: options separated by
 * single spaces) with stdout captured; returns the text (malloc'd) or NULL, and the exit status
 * in *rc. */
static char *run_eval(const char *model, long problems, const char *opts, bool cuda, int *rc) {
  char *argv[MAX_ARGS + 8], n[32], words[512];
  int argc = 0;
  snprintf(n, sizeof n, "%ld", problems);
  snprintf(words, sizeof words, "%s", opts);
  argv[argc++] = (char *)"eval";
  argv[argc++] = (char *)"--model";
  argv[argc++] = (char *)model;
  argv[argc++] = (char *)"--problems";
  argv[argc++] = n;
  for (char *w = strtok(words, " "); w && argc < MAX_ARGS; w = strtok(NULL, " ")) argv[argc++] = w;
  if (cuda) {
    argv[argc++] = (char *)"--backend";
    argv[argc++] = (char *)"cuda";
  }
  argv[argc] = NULL;
  *rc = -1;
  FILE *tmp = tmpfile();
  if (!tmp) return NULL;
  fflush(stdout);
  const int saved = dup(STDOUT_FILENO);
  if (saved < 0 || dup2(fileno(tmp), STDOUT_FILENO) < 0) {
    if (saved >= 0) close(saved);
    fclose(tmp);
    return NULL;
  }
  *rc = rkv_cmd_eval(argc, argv);
  fflush(stdout);
  dup2(saved, STDOUT_FILENO);
  close(saved);
  char *text = NULL;
  long len = -1;
  if (fseek(tmp, 0, SEEK_END) == 0 && (len = ftell(tmp)) >= 0 && fseek(tmp, 0, SEEK_SET) == 0 &&
      (text = malloc((size_t)len + 1)) != NULL) {
    if (fread(text, 1, (size_t)len, tmp) != (size_t)len) {
      free(text);
      text = NULL;
    } else {
      text[len] = '\0';
    }
  }
  fclose(tmp);
  return text;
}

/* Replaces the value of every `"key": value` in s (up to the next ',' or '}') by '_'. */
static void mask_value(char *s, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\": ", key);
  const size_t pl = strlen(pat);
  for (char *p = strstr(s, pat); p; p = strstr(p, pat)) {
    char *v = p + pl, *e = v;
    while (*e && *e != ',' && *e != '}') e++;
    if (e == v) {
      p = v;
      continue;
    }
    *v = '_';
    memmove(v + 1, e, strlen(e) + 1);
    p = v + 1;
  }
}

static void mask(char *s) {
  mask_value(s, "backend");
  mask_value(s, "seconds");
  mask_value(s, "tokens_per_s");
}

static size_t count(const char *s, const char *needle) {
  size_t n = 0;
  for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle)) n++;
  return n;
}

/* Prints the first line where the masked outputs differ. */
static void show_difference(const char *a, const char *b) {
  int line = 1;
  const char *la = a, *lb = b;
  while (*a && *a == *b) {
    if (*a == '\n') {
      line++;
      la = a + 1;
      lb = b + 1;
    }
    a++, b++;
  }
  const int na = (int)strcspn(la, "\n"), nb = (int)strcspn(lb, "\n");
  fprintf(stderr, "first difference on line %d:\n  cpu:  %.*s\n  cuda: %.*s\n", line, na, la, nb,
          lb);
}

/* One configuration: the CPU run, then the emulated CUDA run, compared. */
static void compare(const char *name, const char *model, long problems, const char *opts,
                    size_t runs) {
  emu_reset();
  double t0 = rkv_tool_now();
  int rc_cpu = -1, rc_cuda = -1;
  char *cpu = run_eval(model, problems, opts, false, &rc_cpu);
  const double t_cpu = rkv_tool_now() - t0;
  /* the CPU run must not go through the emulation */
  EXPECT_EQ_INT(emu_push_calls(), 0);
  EXPECT_EQ_INT(emu_compress_calls(), 0);
  emu_reset();
  t0 = rkv_tool_now();
  char *cuda = run_eval(model, problems, opts, true, &rc_cuda);
  const double t_cuda = rkv_tool_now() - t0;
  const unsigned long pushes = emu_push_calls(), compresses = emu_compress_calls();
  const unsigned long hazards = emu_fake_hazards();
  printf(
      "%s: cpu %.1fs (exit %d), emulated cuda %.1fs (exit %d): %lu ring pushes, %lu emulated "
      "compress calls, %lu copy hazards\n",
      name, t_cpu, rc_cpu, t_cuda, rc_cuda, pushes, compresses, hazards);
  EXPECT_EQ_INT(rc_cpu, 0);
  EXPECT_EQ_INT(rc_cuda, 0);
  EXPECT(cpu && cuda);
  if (cpu && cuda) {
    EXPECT(strstr(cpu, "\"backend\": \"cpu\"") != NULL);
    EXPECT(strstr(cuda, "\"backend\": \"cuda\"") != NULL);
    EXPECT_EQ_INT(count(cpu, "\"policy\": "), runs);
    mask(cpu);
    mask(cuda);
    const bool same = strcmp(cpu, cuda) == 0;
    if (!same) show_difference(cpu, cuda);
    EXPECT(same);
    /* what the comparison claims to cover actually ran */
    EXPECT_EQ_INT(count(cpu, "\"budget_respected\": true"), runs);
  }
  EXPECT(pushes > 0);
  EXPECT(compresses > 0);
  EXPECT_EQ_INT(hazards, 0);
  free(cpu);
  free(cuda);
  emu_reset();
}

int main(int argc, char **argv) {
  const long smoke = argc > 1 ? strtol(argv[1], NULL, 10) : 30;
  const long trained = argc > 2 ? strtol(argv[2], NULL, 10) : 10;
  char smoke_model[1024], trained_model[1024];
  snprintf(smoke_model, sizeof smoke_model, "%s/tests/unit/model/data/smoke.safetensors",
           RKV_SOURCE_DIR);
  snprintf(trained_model, sizeof trained_model, "%s/tools/model/weights/adder.safetensors",
           RKV_SOURCE_DIR);
  if (smoke > 0) {
    /* every policy, scheduler batching (prompts prefilled beside decode steps) */
    compare("smoke weights, scheduler, f32, block 16", smoke_model, smoke,
            "--digits 1-3 --policies full,rkv,snapkv,streaming,h2o --budgets 32,48 --buffer 8 "
            "--batch 16 --check --require-bounds --json",
            9);
    /* the tool's own loop, a bf16 pool and 32-token blocks */
    compare("smoke weights, simple loop, bf16, block 32", smoke_model, smoke,
            "--digits 1-3 --policies rkv,snapkv,h2o --budgets 32 --buffer 8 --batch 8 "
            "--kv-dtype bf16 --block-size 32 --simple-loop --check --require-bounds --json",
            3);
  }
  if (trained > 0)
    compare("trained weights, scheduler, f32, block 16", trained_model, trained,
            "--digits 6-20 --policies full,rkv,streaming --budgets 128,256 --buffer 16 "
            "--require-bounds --json",
            5);
  return rkv_test_finish();
}
