/* Compaction: rkv_blockmgr_compact packs the tokens eviction keeps into a stream's leading
 * blocks and returns the tail blocks whole (the point of per-stream tables); the uniform
 * variant cuts every stream of a layer to one budget before scores exist (the GPU path, where
 * the device picks the tokens and moves them itself).
 *
 * Both validate and count everything first, so a failing call changes nothing, and both pop
 * every fresh block of the call before releasing any tail block. */
#include <string.h>

#include "blockmgr_impl.h"

static int32_t bm_min32(int32_t a, int32_t b) {
  return a < b ? a : b;
}

/* Row position r of a stream keeping k tokens at pos[] needs a fresh block iff its block is
 * shared and some kept token of r's destination range is not already in place. Positions are
 * strictly increasing and >= 0, so pos[i] >= i, and pos[i] == i for the last index of the range
 * implies it for every earlier one: one comparison decides. */
static bool bm_needs_fresh(const rkv_blockmgr *m, const int32_t *row, const int32_t *pos, int32_t k,
                           int32_t r) {
  if (m->ref[row[r]] <= 1) return false;
  int32_t last = bm_min32(k, (r + 1) * m->bs) - 1;
  return pos[last] != last;
}

/* Row position r's block is cached (prefix table), held by this sequence alone and past the
 * whole protected blocks: the compaction copies it (when the pool holds every copy of the
 * call) so the group stays cached; the old block parks, still counted free, and later prompts
 * hit it. A block kept wholly in place is copied too: the uniform cut, whose device picks the
 * tokens later, can only copy them all, and both compactions leave the same blocks parked. */
static bool bm_cached_kept(const rkv_blockmgr *m, const bm_seq *q, const int32_t *row, int32_t r) {
  return m->pc_group && r >= q->protect / m->bs && m->pc_group[row[r]] >= 0 && m->ref[row[r]] == 1;
}

/* Whether a compaction whose shared blocks take `fresh` blocks also copies its `cached` ones:
 * when the pool holds them all, parked blocks included. The copies then come off the free list
 * after the oldest parked groups are reclaimed to make room (bm_reserve_free, before any block
 * of the call moves): least recently used first, as any allocation takes them, while the
 * sequence's own prompt was used last. Deciding on the free list alone would drop the newest
 * groups to keep older ones, and the CPU's per-layer calls, which free one layer's tails
 * before the next layer's copies, would then decide differently from the device's one cut.
 * A reclaimed group that held one of these blocks leaves it uncached: that block is rewritten
 * in place (bm_cached_kept reads the group after the reclaim). */
static bool bm_copies_fit(const rkv_blockmgr *m, int64_t fresh, int64_t cached) {
  return cached && fresh + cached <= bm_avail(m);
}

/* Move plan correctness. For a destination position i of a reused block (ref 1, or shared and
 * wholly in place), the source is position pos[i] >= i of the same stream; moves are emitted in
 * increasing i, so a slot is overwritten (as destination i) only after every move reading it
 * (sources pos[j] for j <= i, since pos[j] > pos[i] >= i for j > i) has been emitted. Fresh
 * blocks come off the free list: no source lives in them, and tail blocks are only released
 * after every fresh pop of the call, so a fresh block is never a tail block of this plan; a
 * copied cached block parks instead of going to the free list, and bm_reserve_free made every
 * pop a free-list pop, so it is not handed out again by this call either. */
RKV_API rkv_status rkv_blockmgr_compact(rkv_blockmgr *m, int64_t seq, const rkv_keep_list *lists,
                                        uint32_t n_lists, rkv_slot_move *moves, uint32_t moves_cap,
                                        uint32_t *n_moves) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (n_moves) *n_moves = 0;
  if (n_lists && !lists) return bm_fail(m, RKV_ERR_INVALID_ARG, "compact: lists is NULL");
  if (moves_cap && !moves)
    return bm_fail(m, RKV_ERR_INVALID_ARG, "compact: moves is NULL with moves_cap %u", moves_cap);
  bm_seq *q = NULL;
  RKV_TRY(bm_get_seq(m, seq, &q));
  const uint32_t H = m->cfg.num_kv_heads;
  const int32_t bs = m->bs;
  if (++m->mark_epoch == 0) {
    memset(m->mark, 0, m->streams * sizeof(uint32_t));
    m->mark_epoch = 1;
  }

  /* Pass 1: validate every list, count fresh blocks and moves: those shared blocks need, and
   * those copies of cached blocks take (bm_copies_fit). Deciding it, and reclaiming for it,
   * before pass 2 keeps the choice independent of the order the lists are processed in. The
   * move count is then an upper bound: a block whose group the reclaim dropped moves less. */
  int64_t fresh = 0, cached = 0;
  uint64_t nmov = 0, cached_mov = 0;
  for (uint32_t l = 0; l < n_lists; l++) {
    const rkv_keep_list *kl = &lists[l];
    if (kl->layer >= m->cfg.num_layers || kl->head >= H)
      return bm_fail(m, RKV_ERR_INVALID_ARG, "compact: list %u layer %u / head %u out of range", l,
                     kl->layer, kl->head);
    uint32_t s = kl->layer * H + kl->head;
    if (m->mark[s] == m->mark_epoch)
      return bm_fail(m, RKV_ERR_INVALID_ARG, "compact: stream (layer %u, head %u) listed twice",
                     kl->layer, kl->head);
    m->mark[s] = m->mark_epoch;
    int32_t len = q->len[s];
    if (kl->n > (uint32_t)len)
      return bm_fail(m, RKV_ERR_INVALID_ARG, "compact: list %u keeps %u of %d tokens", l, kl->n,
                     len);
    int32_t k = (int32_t)kl->n;
    const int32_t *pos = kl->pos;
    if (k && !pos) return bm_fail(m, RKV_ERR_INVALID_ARG, "compact: list %u pos is NULL", l);
    if (q->protect && (k < q->protect || pos[q->protect - 1] != q->protect - 1))
      return bm_fail(m, RKV_ERR_INVALID_ARG,
                     "compact: list %u moves or drops protected positions [0, %d) of sequence %lld",
                     l, q->protect, (long long)seq);
    const int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
    int32_t prev = -1;
    for (int32_t r = 0, lo = 0; lo < k; r++, lo += bs) {
      int32_t hi = bm_min32(k, lo + bs), same = 0;
      for (int32_t i = lo; i < hi; i++) {
        int32_t p = pos[i];
        if (p <= prev || p >= len)
          return bm_fail(m, RKV_ERR_INVALID_ARG,
                         "compact: list %u pos[%d] = %d not increasing or outside [0, %d)", l, i, p,
                         len);
        prev = p;
        same += p == i;
      }
      if (bm_needs_fresh(m, row, pos, k, r)) {
        fresh++;
        nmov += (uint64_t)(hi - lo);
      } else {
        nmov += (uint64_t)(hi - lo - same);
        if (bm_cached_kept(m, q, row, r)) {
          cached++;
          cached_mov += (uint64_t)same;
        }
      }
    }
  }
  const bool keep_cached = bm_copies_fit(m, fresh, cached);
  if (keep_cached) {
    fresh += cached;
    nmov += cached_mov;
  }
  if (n_moves) *n_moves = nmov > UINT32_MAX ? UINT32_MAX : (uint32_t)nmov;
  if (fresh > bm_avail(m))
    return bm_fail(m, RKV_ERR_NO_BLOCKS, "compact: needs %lld fresh blocks, %d free",
                   (long long)fresh, bm_avail(m));
  if (nmov > moves_cap)
    return bm_fail(m, RKV_ERR_CAPACITY, "compact: %llu moves, capacity %u",
                   (unsigned long long)nmov, moves_cap);
  bm_reserve_free(m, (int32_t)fresh);

  /* Pass 2: pop fresh blocks, emit moves, set lengths. Row positions above r still hold the
   * old blocks while r is processed; only r's own old block is replaced, after its moves. */
  uint32_t w = 0;
  bool shared_tail = false;
  for (uint32_t l = 0; l < n_lists; l++) {
    const rkv_keep_list *kl = &lists[l];
    uint32_t s = kl->layer * H + kl->head;
    int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
    int32_t k = (int32_t)kl->n;
    const int32_t *pos = kl->pos;
    int32_t nbn = bm_div_up(k, bs);
    for (int32_t r = 0; r < nbn; r++) {
      int32_t lo = r * bs, hi = bm_min32(k, lo + bs);
      int32_t old = row[r];
      bool fr = bm_needs_fresh(m, row, pos, k, r) || (keep_cached && bm_cached_kept(m, q, row, r));
      /* A block rewritten in place, or left partly filled (appends would overwrite it),
       * stops being findable by content. A shared one is only ever left partly filled in
       * place: the next append copies it, or invalidates it if it is no longer shared. */
      if (!fr && m->ref[old] == 1 && (hi - lo < bs || pos[hi - 1] != hi - 1))
        bm_content_changes(m, old);
      int32_t dstb = fr ? bm_pop(m) : old;
      int64_t dbase = (int64_t)dstb * bs - lo; /* dst slot of position i = dbase + i */
      if (m->bs_shift >= 0) { /* the usual power-of-two block: no division per token */
        const int sh = m->bs_shift, mask = bs - 1;
        for (int32_t i = lo; i < hi; i++) {
          int32_t p = pos[i];
          int64_t src = (int64_t)row[p >> sh] * bs + (p & mask), dst = dbase + i;
          if (src != dst) moves[w++] = (rkv_slot_move){src, dst};
        }
      } else {
        for (int32_t i = lo; i < hi; i++) {
          int32_t p = pos[i];
          int64_t src = (int64_t)row[p / bs] * bs + p % bs, dst = dbase + i;
          if (src != dst) moves[w++] = (rkv_slot_move){src, dst};
        }
      }
      if (fr) {
        row[r] = dstb;
        bm_unref(m, old); /* stays referenced by its sharer, or parks with its group */
        bm_mark_dirty(q, s, r);
      }
    }
    if (k % bs != 0 && m->ref[row[nbn - 1]] > 1) shared_tail = true;
    m->tokens -= (uint64_t)(q->len[s] - k);
    q->len[s] = k;
  }
  /* Pass 3: release tails (old row positions >= the new block count). */
  for (uint32_t l = 0; l < n_lists; l++) {
    uint32_t s = lists[l].layer * H + lists[l].head;
    int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
    int32_t nbn = bm_div_up(q->len[s], bs);
    for (int32_t j = nbn; j < q->nblk[s]; j++) bm_unref(m, row[j]);
    q->nblk[s] = nbn;
    bm_set_tbase(m, q, s);
    /* the leading blocks keep their ids (only fresh copies, marked above, replace one): a
     * mirror needs the new lengths, not the rows again */
  }
  /* A shared block kept in place as a partial tail must be copied before the next write. */
  if (shared_tail) q->maybe_shared_tail = true;
  bm_update_room(m, q);
  if (n_moves) *n_moves = w;
  return bm_after_op(m);
}

/* The checks every call over one layer's streams (all with layer < 0) down to `keep` makes,
 * in this order, and the sequence and stream range [*s0, *s1) they name. */
static rkv_status bm_layer_args(const rkv_blockmgr *m, const char *what, int64_t seq, int32_t layer,
                                int32_t keep, bm_seq **q, uint32_t *s0, uint32_t *s1) {
  if (layer >= (int32_t)m->cfg.num_layers)
    return bm_fail(m, RKV_ERR_INVALID_ARG, "%s: layer %d >= %u", what, layer, m->cfg.num_layers);
  if (keep < 0) return bm_fail(m, RKV_ERR_INVALID_ARG, "%s: keep %d < 0", what, keep);
  RKV_TRY(bm_get_seq(m, seq, q));
  const uint32_t H = m->cfg.num_kv_heads;
  *s0 = layer < 0 ? 0 : (uint32_t)layer * H;
  *s1 = layer < 0 ? m->streams : *s0 + H;
  return RKV_OK;
}

/* The leading blocks a compaction to keep copies, over the streams of [s0, s1) that exceed
 * keep once `pending` more tokens are appended, after the whole protected blocks: *shared
 * (ref > 1: always copied) and, with `cached`, *cached (held alone and in a cached group, or
 * among the first `named` of the stream, which a prefix_insert may register before the
 * compaction: copied when the pool holds them). The one definition the cut, the bounds
 * and compact_prepare read. */
static void bm_lead_copies(const rkv_blockmgr *m, const bm_seq *q, uint32_t s0, uint32_t s1,
                           int32_t keep, uint32_t pending, bool cached, uint32_t named,
                           int64_t *n_shared, int64_t *n_cached) {
  *n_shared = *n_cached = 0;
  const int32_t *group = cached ? m->pc_group : NULL;
  /* ref lookups are cache misses over a large pool: only needed once something is shared or
   * cached */
  if (!m->shared_count && !group && !named) return;
  const int32_t fixed = q->protect / m->bs, nbn = bm_div_up(keep, m->bs);
  const int32_t first = named < (uint32_t)nbn ? (int32_t)named : nbn;
  for (uint32_t s = s0; s < s1; s++) {
    if ((int64_t)q->len[s] + pending <= keep) continue;
    const int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
    /* blocks the pending tokens add are the stream's own: only named ones can be cached */
    const int32_t lead = bm_min32(nbn, q->nblk[s]);
    if (first > fixed) *n_cached += first - fixed;
    for (int32_t r = first > fixed ? first : fixed; r < lead; r++) {
      if (m->ref[row[r]] > 1)
        ++*n_shared;
      else if (group && group[row[r]] >= 0)
        ++*n_cached;
    }
  }
}

/* The uniform cut of compact_uniform and truncate: every stream of the layer (all with -1)
 * longer than keep is cut to keep. With report, the map of every cut stream and its old row go
 * to maps / old_blocks (the device moves the kept tokens itself); without, nothing is written
 * and *removed counts the tokens cut. */
static rkv_status bm_cut(rkv_blockmgr *m, const char *what, int64_t seq, int32_t layer,
                         int32_t keep, bool report, rkv_compact_map *maps, uint32_t maps_cap,
                         uint32_t *n_maps, int32_t *old_blocks, uint32_t old_cap, uint32_t *n_old,
                         uint64_t *removed) {
  if (n_maps) *n_maps = 0;
  if (n_old) *n_old = 0;
  if (removed) *removed = 0;
  if ((maps_cap && !maps) || (old_cap && !old_blocks))
    return bm_fail(m, RKV_ERR_INVALID_ARG, "%s: NULL array with nonzero capacity", what);
  bm_seq *q = NULL;
  uint32_t s0 = 0, s1 = 0;
  RKV_TRY(bm_layer_args(m, what, seq, layer, keep, &q, &s0, &s1));
  if (keep < q->protect)
    return bm_fail(m, RKV_ERR_INVALID_ARG,
                   "%s: keep %d would cut protected positions [0, %d) of sequence %lld", what, keep,
                   q->protect, (long long)seq);
  const uint32_t H = m->cfg.num_kv_heads;
  const int32_t nbn = bm_div_up(keep, m->bs);
  /* Blocks wholly inside the protected prefix are never rewritten: no copy, no invalidation. */
  const int32_t fixed = q->protect / m->bs;

  uint64_t nm = 0, no = 0;
  for (uint32_t s = s0; s < s1; s++) {
    if (q->len[s] <= keep) continue;
    nm++;
    no += (uint64_t)q->nblk[s];
  }
  int64_t fresh = 0, cached = 0;
  bm_lead_copies(m, q, s0, s1, keep, 0, true, 0, &fresh, &cached);
  if (n_maps) *n_maps = (uint32_t)nm;
  if (n_old) *n_old = no > UINT32_MAX ? UINT32_MAX : (uint32_t)no;
  if (fresh > bm_avail(m))
    return bm_fail(m, RKV_ERR_NO_BLOCKS, "%s: needs %lld fresh blocks, %d free", what,
                   (long long)fresh, bm_avail(m));
  if (report && (nm > maps_cap || no > old_cap))
    return bm_fail(m, RKV_ERR_CAPACITY, "%s: needs %llu maps (cap %u) and %llu old ids (cap %u)",
                   what, (unsigned long long)nm, maps_cap, (unsigned long long)no, old_cap);
  /* The device may rewrite every leading block after the protected prefix: a cached one is
   * copied (its group stays cached) when the pool holds all the call's fresh blocks, else
   * invalidated (bm_copies_fit). */
  const bool keep_cached = bm_copies_fit(m, fresh, cached);
  if (keep_cached) fresh += cached;
  bm_reserve_free(m, (int32_t)fresh);
  const int32_t *group = m->pc_group;

  uint32_t mi = 0, oi = 0;
  uint64_t cut = 0;
  for (uint32_t s = s0; s < s1; s++) {
    if (q->len[s] <= keep) continue;
    int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
    if (report) {
      rkv_compact_map *mp = &maps[mi++];
      mp->layer = s / H;
      mp->head = s % H;
      mp->old_len = q->len[s];
      mp->new_len = keep;
      mp->old_offset = (int32_t)oi;
      mp->old_n_blocks = q->nblk[s];
      memcpy(old_blocks + oi, row, (size_t)q->nblk[s] * sizeof(int32_t));
      oi += (uint32_t)q->nblk[s];
    }
    for (int32_t r = fixed; (m->shared_count || group) && r < nbn; r++) {
      const int32_t old = row[r];
      if (m->ref[old] > 1 || (keep_cached && group[old] >= 0)) {
        row[r] = bm_pop(m);
        bm_unref(m, old); /* stays referenced by its sharer, or parks with its group */
        bm_mark_dirty(q, s, r);
      } else {
        bm_content_changes(m, old); /* the device may move kept tokens into it */
      }
    }
    cut += (uint64_t)(q->len[s] - keep);
    q->len[s] = keep;
    if (q->nblk[s] <= nbn) bm_set_tbase(m, q, s); /* a fresh copy may be its last block */
  }
  /* Tails return whole only after every fresh pop (a fresh block is never an old block of this
   * call, whose tokens a device may still be moving). A stream that was not cut holds at most
   * nbn blocks. */
  /* Rows are [stream][block] and a tail's blocks are anywhere in the pool: fetch the row a
   * few streams ahead, and the reference counts of its tail once the row is in, so the
   * misses overlap. */
  enum { AHEAD = 4 };
  for (uint32_t s = s0; s < s1; s++) {
    if (s + 2 * AHEAD < s1)
      __builtin_prefetch(q->tab + (size_t)(s + 2 * AHEAD) * (size_t)q->cap + nbn, 0);
    if (s + AHEAD < s1 && q->nblk[s + AHEAD] > nbn) {
      const int32_t *ahead = q->tab + (size_t)(s + AHEAD) * (size_t)q->cap;
      for (int32_t j = nbn; j < q->nblk[s + AHEAD]; j++) __builtin_prefetch(&m->ref[ahead[j]], 1);
    }
    if (q->nblk[s] <= nbn) continue;
    const int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
    for (int32_t j = nbn; j < q->nblk[s]; j++) bm_unref(m, row[j]);
    q->nblk[s] = nbn;
    bm_set_tbase(m, q, s);
  }
  m->tokens -= cut;
  if (removed) *removed = cut;
  bm_update_room(m, q);
  return bm_after_op(m);
}

RKV_API rkv_status rkv_blockmgr_compact_uniform(rkv_blockmgr *m, int64_t seq, int32_t layer,
                                                int32_t keep, rkv_compact_map *maps,
                                                uint32_t maps_cap, uint32_t *n_maps,
                                                int32_t *old_blocks, uint32_t old_cap,
                                                uint32_t *n_old) {
  if (!m) return RKV_ERR_INVALID_ARG;
  return bm_cut(m, "compact_uniform", seq, layer, keep, true, maps, maps_cap, n_maps, old_blocks,
                old_cap, n_old, NULL);
}

RKV_API rkv_status rkv_blockmgr_truncate(rkv_blockmgr *m, int64_t seq, int32_t layer, int32_t keep,
                                         uint64_t *removed) {
  if (!m) return RKV_ERR_INVALID_ARG;
  return bm_cut(m, "truncate", seq, layer, keep, false, NULL, 0, NULL, NULL, 0, NULL, removed);
}

RKV_API rkv_status rkv_blockmgr_compact_fresh_bound(const rkv_blockmgr *m, int64_t seq,
                                                    int32_t layer, int32_t keep, uint32_t *out) {
  return rkv_blockmgr_compact_fresh_bound_after(m, seq, layer, keep, 0, out);
}

/* Fresh blocks a compaction to keep may take after `pending` more tokens per stream (see
 * bm_lead_copies): the shared leading blocks, and with `cached` the cached and named ones. */
static rkv_status bm_copy_bound(const rkv_blockmgr *m, const char *what, int64_t seq, int32_t layer,
                                int32_t keep, uint32_t pending, bool cached, uint32_t registering,
                                uint32_t *out) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!out) return bm_fail(m, RKV_ERR_INVALID_ARG, "%s: out is NULL", what);
  *out = 0;
  bm_seq *q = NULL;
  uint32_t s0 = 0, s1 = 0;
  RKV_TRY(bm_layer_args(m, what, seq, layer, keep, &q, &s0, &s1));
  int64_t shared = 0, copies = 0;
  bm_lead_copies(m, q, s0, s1, keep, pending, cached, registering, &shared, &copies);
  const uint64_t fresh = (uint64_t)(shared + copies);
  *out = fresh > UINT32_MAX ? UINT32_MAX : (uint32_t)fresh;
  return RKV_OK;
}

RKV_API rkv_status rkv_blockmgr_compact_fresh_bound_after(const rkv_blockmgr *m, int64_t seq,
                                                          int32_t layer, int32_t keep,
                                                          uint32_t pending, uint32_t *out) {
  return bm_copy_bound(m, "compact_fresh_bound", seq, layer, keep, pending, false, 0, out);
}

RKV_API rkv_status rkv_blockmgr_compact_copy_bound(const rkv_blockmgr *m, int64_t seq,
                                                   int32_t layer, int32_t keep, uint32_t pending,
                                                   uint32_t registering, uint32_t *out) {
  return bm_copy_bound(m, "compact_copy_bound", seq, layer, keep, pending, true, registering, out);
}

/* One decision for a compaction a caller makes in several calls (one per layer), so that it
 * leaves the cache as one call would: when the pool holds the whole compaction's copies, the
 * reclaim the one call would make happens now (each later call then finds its copies on the
 * free list, whatever tails the calls before it freed), else the groups go now. */
RKV_API rkv_status rkv_blockmgr_compact_prepare(rkv_blockmgr *m, int64_t seq, int32_t layer,
                                                int32_t keep, uint32_t *copies) {
  if (!m) return RKV_ERR_INVALID_ARG;
  if (!copies) return bm_fail(m, RKV_ERR_INVALID_ARG, "compact_prepare: copies is NULL");
  *copies = 0;
  bm_seq *q = NULL;
  uint32_t s0 = 0, s1 = 0;
  RKV_TRY(bm_layer_args(m, "compact_prepare", seq, layer, keep, &q, &s0, &s1));
  int64_t shared = 0, cached = 0;
  bm_lead_copies(m, q, s0, s1, keep, 0, true, 0, &shared, &cached);
  if (!cached) return RKV_OK;
  if (bm_copies_fit(m, shared, cached)) {
    const bool reclaims = shared + cached > m->free_top;
    bm_reserve_free(m, (int32_t)(shared + cached));
    /* a reclaimed group may have held some of them: those are rewritten in place */
    if (reclaims) bm_lead_copies(m, q, s0, s1, keep, 0, true, 0, &shared, &cached);
    *copies = (uint32_t)cached;
    return bm_after_op(m);
  }
  const int32_t fixed = q->protect / m->bs, nbn = bm_div_up(keep, m->bs);
  for (uint32_t s = s0; s < s1; s++) {
    if (q->len[s] <= keep) continue;
    const int32_t *row = q->tab + (size_t)s * (size_t)q->cap;
    for (int32_t r = fixed; r < nbn; r++)
      if (m->ref[row[r]] == 1) bm_content_changes(m, row[r]);
  }
  return bm_after_op(m);
}
