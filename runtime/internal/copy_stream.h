/* Host copies of many blocks (the CPU pool's swap transfers). A transfer much larger than the
 * caches copies with non-temporal stores where the CPU has them (x86 SSE2): the destination is
 * then written without first being read into the cache, as glibc does for one large memcpy
 * but not for the block-sized ones a transfer of scattered blocks is made of (on the
 * development machine 8 KB copies of a 256 MiB transfer ran at half the speed of one memcpy;
 * BENCHMARKS.md, "Swap transfers"). */
#ifndef RKV_COPY_STREAM_H
#define RKV_COPY_STREAM_H

#include <stdbool.h>
#include <stddef.h>

/* Transfers of at least this many bytes stream. */
#define RKVI_COPY_STREAM_MIN ((size_t)16 << 20)

/* memcpy, or with streaming the non-temporal copy; call rkvi_copy_fence(true) after the last
 * streaming copy of a transfer, before anyone reads the destination. */
void rkvi_copy_block(void *dst, const void *src, size_t bytes, bool streaming);
void rkvi_copy_fence(bool streaming);

#endif /* RKV_COPY_STREAM_H */
