/* The fuzz drivers' input: a cursor over the bytes; past the end every byte reads as 0, so a
 * short input is a valid one. */
#ifndef RKV_FUZZ_CURSOR_H
#define RKV_FUZZ_CURSOR_H

#include <stddef.h>
#include <stdint.h>

typedef struct fz_cursor {
  const uint8_t *p;
  size_t n, i;
} fz_cursor;

static inline uint8_t fz_byte(fz_cursor *c) {
  return c->i < c->n ? c->p[c->i++] : 0;
}

#endif /* RKV_FUZZ_CURSOR_H */
