/* Fuzz target for the tools' safetensors reader (tools/rkv/model_st.c, compiled in here): any
 * input must parse or fail with a message; a parsed file's tensors must fit the input (every
 * byte of every tensor is read from the reader's copy) and be found again by name. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  rt_st_file *f = NULL;
  char err[256] = "";
  if (rt_st_parse(data, size, &f, err, sizeof err) != RKV_OK) {
    if (f || err[0] == '\0') abort();
    return 0;
  }
  const uint32_t n = rt_st_num_tensors(f);
  unsigned sum = 0;
  for (uint32_t i = 0; i < n; i++) {
    const rt_st_tensor *t = rt_st_tensor_at(f, i);
    const uint8_t *p = rt_st_data(f, t);
    if (t->end < t->begin || t->end - t->begin > size) abort();
    const size_t bytes = (size_t)(t->end - t->begin);
    if (bytes && !p) abort();
    for (size_t b = 0; b < bytes; b++) sum += p[b];
    if (rt_st_find(f, t->name) != t) abort();
  }
  (void)sum;
  (void)rt_st_meta(f, "format");
  rt_st_free(f);
  return 0;
}
