/* The `rkv` command: one executable, subcommands picked from a table that CMake generates
 * from tools/rkv/cmd_*.c (see tools/CMakeLists.txt). */
#include <stdio.h>
#include <string.h>

#include <rkv/runtime.h>

#include "rt_commands.h"

typedef struct command {
  const char *name;
  int (*run)(int argc, char **argv);
  const char *summary;
} command;

static const command kCommands[] = {RT_COMMAND_ROWS};

static void usage(FILE *f) {
  fprintf(f,
          "usage: rkv <command> [options]   (rkv <command> --help for its options)\n\n"
          "librkv %s — paged KV cache with per-head tables and R-KV eviction.\n"
          "build: cuda=%s nccl=%s hwloc=%s mpi=%s blas=%s\n\ncommands:\n",
          rkv_version_string(), rkv_build_has_cuda() ? "yes" : "no",
          rkv_build_has_nccl() ? "yes" : "no", rkv_build_has_hwloc() ? "yes" : "no",
          rkv_build_has_mpi() ? "yes" : "no", rkv_build_has_blas() ? "yes" : "no");
  for (size_t i = 0; i < sizeof kCommands / sizeof kCommands[0]; i++)
    fprintf(f, "  %-10s %s\n", kCommands[i].name, kCommands[i].summary);
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("rkv %s\n", rkv_version_string());
    return 0;
  }
  for (size_t i = 0; i < sizeof kCommands / sizeof kCommands[0]; i++)
    if (strcmp(argv[1], kCommands[i].name) == 0) return kCommands[i].run(argc - 1, argv + 1);
  fprintf(stderr, "rkv: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
