/* rkv_blockmgr_check: the full invariant walk (block conservation, ref counts equal table
 * references, fork-only sharing, row sizes, fast-path room and shared-tail flag, free list and
 * id map consistency). Not a hot path: it allocates its own scratch and touches everything.
 * Tests, fuzzers and RKV_DEBUG>=3 builds call it after every mutation. */
#include <string.h>

#include "blockmgr_impl.h"

#define BM_FREE_MARK (-2)

RKV_API rkv_status rkv_blockmgr_check(const rkv_blockmgr *m) {
  if (!m) return RKV_ERR_INVALID_ARG;
  const size_t nb = (size_t)m->nblocks;
  const int32_t bs = m->bs;
  rkv_status ret = RKV_OK;
  uint32_t *cnt = rkvi_calloc(m->al, nb * sizeof(uint32_t), 64);
  int32_t *first_stream = rkvi_alloc(m->al, nb * sizeof(int32_t), 64);
  int32_t *owner = rkvi_alloc(m->al, nb * sizeof(int32_t), 64); /* last slot, or free mark */
  uint8_t *slot_seen = rkvi_calloc(m->al, m->max_seqs, 64);
  uint8_t *free_listed = rkvi_calloc(m->al, nb, 64);
  if (!cnt || !first_stream || !owner || !slot_seen || !free_listed) {
    ret = bm_fail(m, RKV_ERR_NO_MEMORY, "check: out of memory for scratch");
    goto done;
  }
  for (size_t b = 0; b < nb; b++) owner[b] = -1;

#define BM_CORRUPT(...)                                       \
  do {                                                        \
    ret = bm_fail(m, RKV_ERR_CORRUPT, "check: " __VA_ARGS__); \
    goto done;                                                \
  } while (0)

  if (m->free_top < 0 || m->free_top > m->nblocks)
    BM_CORRUPT("free_top %d outside [0, %d]", m->free_top, m->nblocks);
  for (int32_t i = 0; i < m->free_top; i++) {
    int32_t b = m->free_ids[i];
    if (b < 0 || b >= m->nblocks) BM_CORRUPT("free list entry %d = %d out of range", i, b);
    if (owner[b] == BM_FREE_MARK) BM_CORRUPT("block %d twice in the free list", b);
    if (m->ref[b] != 0) BM_CORRUPT("free block %d has ref %u", b, m->ref[b]);
    owner[b] = BM_FREE_MARK;
    free_listed[b] = 1;
  }

  uint32_t live = 0;
  uint64_t tokens = 0;
  for (uint32_t i = 0; i < m->max_seqs; i++) {
    bm_seq *q = &m->seqs[i];
    if (q->id < 0) continue;
    bm_settle(m, q);
    live++;
    if (bm_find(m, q->id) != (int32_t)i)
      BM_CORRUPT("sequence %lld (slot %u) not reachable through the id map", (long long)q->id, i);
    int64_t room = INT32_MAX;
    for (uint32_t s = 0; s < m->streams; s++) {
      int32_t len = q->len[s], n = q->nblk[s];
      if (len < 0) BM_CORRUPT("seq %lld stream %u length %d < 0", (long long)q->id, s, len);
      if (n != bm_div_up(len, bs))
        BM_CORRUPT("seq %lld stream %u holds %d blocks for %d tokens", (long long)q->id, s, n, len);
      if (n > q->cap)
        BM_CORRUPT("seq %lld stream %u: %d blocks > capacity %d", (long long)q->id, s, n, q->cap);
      int64_t r = (int64_t)n * bs - len;
      if (r < room) room = r;
      tokens += (uint64_t)len;
      const int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
      for (int32_t j = 0; j < n; j++) {
        int32_t b = row[j];
        if (b < 0 || b >= m->nblocks)
          BM_CORRUPT("seq %lld stream %u block %d = %d out of range", (long long)q->id, s, j, b);
        if (owner[b] == BM_FREE_MARK)
          BM_CORRUPT("block %d is free but seq %lld stream %u uses it", b, (long long)q->id, s);
        if (owner[b] == (int32_t)i)
          BM_CORRUPT("block %d appears twice in seq %lld", b, (long long)q->id);
        if (cnt[b] && first_stream[b] != (int32_t)s)
          BM_CORRUPT("block %d shared by streams %d and %u (different layer/head)", b,
                     first_stream[b], s);
        first_stream[b] = (int32_t)s;
        owner[b] = (int32_t)i;
        cnt[b]++;
      }
      int32_t tb = n ? (row[n - 1] - (n - 1)) * bs : 0;
      if (q->tbase[s] != tb)
        BM_CORRUPT("seq %lld stream %u: tail base %d, recomputed %d", (long long)q->id, s,
                   q->tbase[s], tb);
      if (!q->maybe_shared_tail && len % bs != 0 && m->ref[row[n - 1]] != 1)
        BM_CORRUPT("seq %lld stream %u: partial tail block %d has ref %u but is not flagged",
                   (long long)q->id, s, row[n - 1], m->ref[row[n - 1]]);
    }
    if (room != q->room)
      BM_CORRUPT("seq %lld: room %d, recomputed %lld", (long long)q->id, q->room, (long long)room);
    for (uint32_t s = 0; s < m->streams; s++)
      if (q->protect < 0 || q->protect > q->len[s])
        BM_CORRUPT("seq %lld: protected prefix %d, stream %u holds %d", (long long)q->id,
                   q->protect, s, q->len[s]);
  }
  if (live != m->num_seqs) BM_CORRUPT("num_seqs %u but %u live slots", m->num_seqs, live);
  if (tokens != m->tokens)
    BM_CORRUPT("token total %llu, recomputed %llu", (unsigned long long)m->tokens,
               (unsigned long long)tokens);

  uint32_t used = 0, shared = 0;
  for (size_t b = 0; b < nb; b++) {
    if (owner[b] == BM_FREE_MARK) continue;
    if (cnt[b] == 0 && m->ref[b] == 0 && m->pc_group && m->pc_group[b] >= 0) continue; /* parked */
    if (cnt[b] == 0) BM_CORRUPT("block %zu neither free nor referenced (ref %u)", b, m->ref[b]);
    if (cnt[b] != m->ref[b])
      BM_CORRUPT("block %zu has ref %u but %u table references", b, m->ref[b], cnt[b]);
    used++;
    shared += cnt[b] > 1;
  }
  if ((uint64_t)used + (uint64_t)bm_avail(m) != nb)
    BM_CORRUPT("free %d + parked %d + used %u != total %zu", m->free_top, m->pc_parked, used, nb);
  if (shared != m->shared_count)
    BM_CORRUPT("shared_count %u, recomputed %u", m->shared_count, shared);
  if (m->peak_used < used) BM_CORRUPT("peak %u below used %u", m->peak_used, used);
  /* occupied slots as the stats count them: each used block's fullest row (the stats take a
   * shortcut while only full blocks are shared) */
  for (size_t b = 0; b < nb; b++) first_stream[b] = 0;
  for (uint32_t i = 0; i < m->max_seqs; i++) {
    const bm_seq *q = &m->seqs[i];
    if (q->id < 0) continue;
    for (uint32_t s = 0; s < m->streams; s++) {
      const int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
      for (int32_t j = 0; j < q->nblk[s]; j++) {
        const int32_t f = j + 1 < q->nblk[s] ? bs : q->len[s] - j * bs;
        if (f > first_stream[row[j]]) first_stream[row[j]] = f;
      }
    }
  }
  uint64_t occupied_slots = 0;
  for (size_t b = 0; b < nb; b++) occupied_slots += (uint64_t)first_stream[b];
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(m, &st);
  if (st.token_slots != occupied_slots)
    BM_CORRUPT("stats count %llu occupied slots, the tables %llu",
               (unsigned long long)st.token_slots, (unsigned long long)occupied_slots);

  if (m->free_slot_top != m->max_seqs - live)
    BM_CORRUPT("%u free slots with %u of %u live", m->free_slot_top, live, m->max_seqs);
  for (uint32_t i = 0; i < m->free_slot_top; i++) {
    int32_t s = m->free_slots[i];
    if (s < 0 || (uint32_t)s >= m->max_seqs) BM_CORRUPT("free slot entry %d out of range", s);
    if (slot_seen[s]) BM_CORRUPT("slot %d twice on the free-slot stack", s);
    if (m->seqs[s].id >= 0) BM_CORRUPT("slot %d is live and on the free-slot stack", s);
    slot_seen[s] = 1;
  }
  uint32_t occupied = 0;
  for (uint32_t i = 0; i <= m->hmask; i++) {
    int32_t s = m->hmap[i];
    if (s < 0) continue;
    if ((uint32_t)s >= m->max_seqs || m->seqs[s].id < 0)
      BM_CORRUPT("id map entry %u points at dead slot %d", i, s);
    occupied++;
  }
  if (occupied != live) BM_CORRUPT("id map holds %u entries for %u sequences", occupied, live);
#undef BM_CORRUPT
  ret = bm_pc_check(m, free_listed);

done:
  rkvi_free(m->al, cnt, nb * sizeof(uint32_t));
  rkvi_free(m->al, first_stream, nb * sizeof(int32_t));
  rkvi_free(m->al, owner, nb * sizeof(int32_t));
  rkvi_free(m->al, slot_seen, m->max_seqs);
  rkvi_free(m->al, free_listed, nb);
  return ret;
}
