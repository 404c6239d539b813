/* Replays a libFuzzer corpus without libFuzzer: calls LLVMFuzzerTestOneInput on every file of
 * the directories / files given, so the committed corpus runs in every build (gcc too). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    return -1;
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc(n > 0 ? (size_t)n : 1);
  size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
  fclose(f);
  if (!buf || got != (size_t)n) {
    free(buf);
    return -1;
  }
  LLVMFuzzerTestOneInput(buf, got);
  free(buf);
  return 0;
}

int main(int argc, char **argv) {
  int files = 0, errors = 0;
  for (int a = 1; a < argc; a++) {
    struct stat st;
    if (stat(argv[a], &st) != 0) {
      fprintf(stderr, "no such corpus: %s\n", argv[a]);
      errors++;
      continue;
    }
    if (!S_ISDIR(st.st_mode)) {
      errors += replay_file(argv[a]) != 0;
      files++;
      continue;
    }
    DIR *d = opendir(argv[a]);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
      if (e->d_name[0] == '.') continue;
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", argv[a], e->d_name);
      errors += replay_file(path) != 0;
      files++;
    }
    if (d) closedir(d);
  }
  /* A crash or a failed check inside the target aborts before this line. */
  printf("%d passed, %d failed\n", files - errors, errors + (files == 0));
  return (errors || files == 0) ? 1 : 0;
}
