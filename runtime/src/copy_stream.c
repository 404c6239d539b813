/* Host block copies for transfers larger than the caches (copy_stream.h). */
#include "copy_stream.h"

#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>

/* Non-temporal 16-byte stores from the first 16-byte boundary of dst on, 64 bytes a round;
 * the unaligned head and the tail go through memcpy. */
static void copy_nt(uint8_t *d, const uint8_t *s, size_t n) {
  size_t head = (16 - ((uintptr_t)d & 15)) & 15;
  if (head > n) head = n;
  memcpy(d, s, head);
  d += head, s += head, n -= head;
  for (; n >= 64; n -= 64, d += 64, s += 64) {
    const __m128i a = _mm_loadu_si128((const __m128i *)s);
    const __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
    const __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
    const __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
    _mm_stream_si128((__m128i *)d, a);
    _mm_stream_si128((__m128i *)(d + 16), b);
    _mm_stream_si128((__m128i *)(d + 32), c);
    _mm_stream_si128((__m128i *)(d + 48), e);
  }
  memcpy(d, s, n);
}
#endif

void rkvi_copy_block(void *dst, const void *src, size_t bytes, bool streaming) {
#if defined(__SSE2__)
  if (streaming) {
    copy_nt(dst, src, bytes);
    return;
  }
#endif
  (void)streaming;
  memcpy(dst, src, bytes);
}

void rkvi_copy_fence(bool streaming) {
#if defined(__SSE2__)
  if (streaming) _mm_sfence();
#endif
  (void)streaming;
}
