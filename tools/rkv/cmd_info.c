/* `rkv info`: what this build of librkv contains (JSON with --json). */
#include <stdio.h>
#include <string.h>

#include "rkv_tool.h"

const char rt_cmd_info_summary[] = "print the build's version and optional components";

int rt_cmd_info(int argc, char **argv) {
  int json = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--json") == 0) {
      json = 1;
    } else if (strcmp(argv[i], "--help") == 0) {
      printf(
          "usage: rkv info [--json]\n  Prints the version and which optional components "
          "(CUDA, NCCL, hwloc, MPI, BLAS) this build has.\n");
      return 0;
    } else {
      fprintf(stderr, "rkv info: unknown option '%s'\n", argv[i]);
      return 2;
    }
  }
  const char *yn[2] = {"no", "yes"};
  if (json)
    printf(
        "{\"version\": \"%s\", \"cuda\": %s, \"nccl\": %s, \"hwloc\": %s, \"mpi\": %s, "
        "\"blas\": %s}\n",
        rkv_version_string(), rkv_build_has_cuda() ? "true" : "false",
        rkv_build_has_nccl() ? "true" : "false", rkv_build_has_hwloc() ? "true" : "false",
        rkv_build_has_mpi() ? "true" : "false", rkv_build_has_blas() ? "true" : "false");
  else
    printf("librkv %s\ncuda %s\nnccl %s\nhwloc %s\nmpi %s\nblas %s\n", rkv_version_string(),
           yn[rkv_build_has_cuda()], yn[rkv_build_has_nccl()], yn[rkv_build_has_hwloc()],
           yn[rkv_build_has_mpi()], yn[rkv_build_has_blas()]);
  return 0;
}
