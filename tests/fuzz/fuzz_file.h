/* Helpers for fuzz targets whose code under test reads files: one temporary file per process,
 * rewritten for every input and removed at exit, and stdout sent to /dev/null (the commands
 * print JSON or tables the fuzzer does not read). */
#ifndef RKV_FUZZ_FILE_H
#define RKV_FUZZ_FILE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static char fuzz_path_[64];

static void fuzz_file_remove_(void) {
  if (fuzz_path_[0]) unlink(fuzz_path_);
}

/* Writes the input to the process's file; NULL when that fails (the input is then skipped). */
static inline const char *fuzz_file_write(const uint8_t *data, size_t size) {
  if (!fuzz_path_[0]) {
    snprintf(fuzz_path_, sizeof fuzz_path_, "/tmp/rkv_fuzz_XXXXXX");
    const int fd = mkstemp(fuzz_path_);
    if (fd < 0) {
      fuzz_path_[0] = '\0';
      return NULL;
    }
    close(fd);
    atexit(fuzz_file_remove_);
  }
  FILE *f = fopen(fuzz_path_, "wb");
  if (!f) return NULL;
  const size_t put = size ? fwrite(data, 1, size, f) : 0;
  fclose(f);
  return put == size ? fuzz_path_ : NULL;
}

static inline void fuzz_quiet_stdout(void) {
  static int done;
  if (!done && freopen("/dev/null", "w", stdout)) done = 1;
}

#endif /* RKV_FUZZ_FILE_H */
