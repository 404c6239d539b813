/* Fuzz target for `rkv replay` scripts (tools/rkv/cmd_replay.c and replay_parse.c, compiled
 * in here): the input is written to a file and run as a script, so the line reader, the
 * parser and every block-manager operation a script can name are reached. The command must
 * return 0 (ran), 1 (a check failed: a block-manager bug, so abort) or 2 (a usage, file or
 * pool error), never crash; its JSON goes to /dev/null. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzz_file.h"
#include "rt_commands.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_file_write(data, size);
  if (!path) return 0;
  fuzz_quiet_stdout();
  char a0[] = "replay", *argv[] = {a0, (char *)path, NULL};
  const int rc = rt_cmd_replay(2, argv);
  if (rc == 1 || (rc != 0 && rc != 2)) abort();
  return 0;
}
