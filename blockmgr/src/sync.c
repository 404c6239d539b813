/* O(1) accounting and incremental table export: keeps a caller's padded per-sequence mirror of the
 * block tables current by writing only what changed since the last sync (docs/ARCHITECTURE.md,
 * "Hot paths and budgets": per-step host work must not touch every table entry). Change tracking is
 * the per-stream `dirty` watermark maintained by append, fork, restore and the compactions. */
#include <string.h>

#include "blockmgr_impl.h"

RKV_API rkv_status rkv_blockmgr_sync_rows(rkv_blockmgr *m, int64_t seq, bool full, int32_t *rows,
                                          uint32_t stride, int32_t *lens, uint32_t *n_written) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!rows) return bm_fail(m, RKV_ERR_INVALID_ARG, "sync_rows: rows is NULL");
  bm_seq *q = NULL;
  /* without settling: a step's tokens stay pending, and lens reports them */
  RKV_TRY(bm_get_seq_raw(m, seq, &q));
  const uint32_t S = m->streams;
  /* a row never holds more blocks than the sequence's row capacity: skip the walk when that
   * already fits */
  for (uint32_t s = 0; (uint32_t)q->cap > stride && s < S; s++)
    if ((uint32_t)q->nblk[s] > stride)
      return bm_fail(m, RKV_ERR_CAPACITY, "sync_rows: stream %u has %d blocks > stride %u", s,
                     q->nblk[s], stride);
  uint32_t written = 0;
  /* Each stream's changed entries sit on their own cache line in the table and in the mirror
   * (rows are [stream][block]): fetch them a few streams ahead so the misses overlap. */
  enum { AHEAD = 8 };
  for (uint32_t s = 0; s < S; s++) {
    if (s + AHEAD < S) {
      const uint32_t a = s + AHEAD;
      const int32_t f = full ? 0 : q->dirty[a];
      if (f < q->nblk[a]) {
        __builtin_prefetch(q->tab + (size_t)a * (size_t)q->cap + f, 0);
        __builtin_prefetch(rows + (size_t)a * stride + f, 1);
      }
    }
    if (lens) lens[s] = q->len[s] + q->pend;
    const int32_t from = full ? 0 : q->dirty[s], nb = q->nblk[s];
    int32_t *dst = rows + (size_t)s * stride;
    const int32_t *src = q->tab + (size_t)s * (size_t)q->cap;
    if (from == nb - 1) { /* the common delta: the one block a boundary step added */
      dst[from] = src[from];
      written++;
    } else if (from < nb) {
      memcpy(dst + from, src + from, (size_t)(nb - from) * sizeof(int32_t));
      written += (uint32_t)(nb - from);
    }
    q->dirty[s] = INT32_MAX;
  }
  if (n_written) *n_written = written;
  return RKV_OK;
}

RKV_API uint32_t rkv_blockmgr_free_blocks(const rkv_blockmgr *m) {
  return m ? (uint32_t)bm_avail(m) : 0;
}
