/* A trivially correct shadow model of the block manager, shared (one copy) by the property test
 * tests/unit/blockmgr/test_property.c, the fuzz target tests/fuzz/fuzz_blockmgr.c and the
 * `rkv stress` tool. Header-only (static inline) so each user stays one plain source file.
 *
 * The shadow keeps, per sequence and stream, the list of logical token ids (every appended
 * token gets a unique id), a mirror of the stream's block row, its own ref counts, and a map
 * slot -> token id that it updates from the slot mappings, copy ops and move plans the
 * manager returns (applied in order, exactly as a KV pool would). Each bms_* driver predicts
 * the status of one call from the shadow alone (block arithmetic, sharing via the shadow's ref
 * counts), performs the call, and verifies the result: statuses, new rows (unchanged prefixes,
 * fresh blocks really free, tails released), plan contents, and that every position of every
 * touched stream still reads its expected token. A failed call must change nothing.
 *
 * Shared-block rules the shadow encodes (from rkv/blockmgr.h): an append into a partial last
 * block with ref > 1 copies it first (one copy op, one extra block); compact keeps a shared
 * leading block by reference iff every position it holds in the new stream keeps its token in
 * place (pos[q] == q), else takes a fresh block; compact_uniform replaces every shared leading
 * block of a cut stream. Both also copy every cached leading block held alone after the whole
 * protected blocks when the pool (parked blocks included) holds all the call's fresh blocks,
 * reclaiming the oldest parked groups first (a block whose group that reclaim drops is rewritten
 * in place). Fresh blocks are taken before tails are freed, so an operation fails with
 * RKV_ERR_NO_BLOCKS exactly when its shared blocks' copies exceed the free blocks before it.
 *
 * Every driver returns 0 when the manager agreed with the model and -1 (text in s->err) on a
 * mismatch. Users decide what a mismatch means (count, abort, exit status). */
#ifndef RKV_BM_SHADOW_H
#define RKV_BM_SHADOW_H

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/blockmgr.h>

typedef struct bms_stream {
  uint64_t *tok; /* [len] logical token ids in cache order */
  int32_t len;
  int32_t tok_cap;
  int32_t *row; /* [nrow] mirror of the manager's row, validated on every change */
  int32_t nrow;
  int32_t row_cap;
} bms_stream;

typedef struct bms_seq {
  int64_t id;
  bool live;
  bms_stream *st;  /* [streams per seq] */
  int32_t protect; /* protected prefix (rkv_blockmgr_seq_protect) */
  int32_t tmpl;    /* prompt template its leading blocks still hold, or -1 (prefix ops) */
} bms_seq;

/* A cached group as the model sees it: the hash the caller registered, the block of every
 * stream, and the tokens those blocks held when registered (a lookup must map exactly them). */
typedef struct bms_group {
  bool live;
  uint64_t hash;
  int32_t *blk;  /* [S] */
  uint64_t *tok; /* [S * bs] */
} bms_group;

/* Prompt templates for the prefix ops: a shared system prefix followed by per-template blocks,
 * so templates hit each other's groups as well as their own. */
enum { BMS_TMPL = 4, BMS_TMPL_MAX_BLOCKS = 6 };

enum {
  BMS_OP_CREATE,
  BMS_OP_APPEND,
  BMS_OP_FORK,
  BMS_OP_COMPACT,
  BMS_OP_UNIFORM,
  BMS_OP_FREE,
  BMS_OP_RESTORE,
  BMS_OP_BAD,
  /* prefix-cache kinds: only with config.prefix_cache */
  BMS_OP_CACHED,
  BMS_OP_INSERT,
  BMS_OP_PROTECT,
  BMS_OP_MATCH,
  BMS_OP_PCLEAR,
  BMS_OP_PREPARE,
  BMS_OP_KINDS
};
#define BMS_OP_STD_KINDS BMS_OP_CACHED

static inline const char *bms_op_name(int k) {
  switch (k) {
    case BMS_OP_CREATE:
      return "create";
    case BMS_OP_APPEND:
      return "append";
    case BMS_OP_FORK:
      return "fork";
    case BMS_OP_COMPACT:
      return "compact";
    case BMS_OP_UNIFORM:
      return "compact_uniform";
    case BMS_OP_FREE:
      return "free";
    case BMS_OP_RESTORE:
      return "restore";
    case BMS_OP_BAD:
      return "bad_input";
    case BMS_OP_CACHED:
      return "create_cached";
    case BMS_OP_INSERT:
      return "prefix_insert";
    case BMS_OP_PROTECT:
      return "protect";
    case BMS_OP_MATCH:
      return "prefix_match";
    case BMS_OP_PCLEAR:
      return "prefix_clear";
    case BMS_OP_PREPARE:
      return "compact_prepare";
    default:
      return "?";
  }
}

/* Tallies kept by bms_random_op (and by the fuzz driver). */
typedef struct bms_counts {
  uint64_t ops;
  uint64_t kind[BMS_OP_KINDS]; /* attempted */
  uint64_t ok[BMS_OP_KINDS];   /* returned RKV_OK */
  uint64_t no_blocks;          /* RKV_ERR_NO_BLOCKS (predicted and returned) */
  uint64_t full_checks;        /* bms_verify_all runs */
} bms_counts;

typedef struct bm_shadow {
  rkv_blockmgr *m;
  uint32_t layers, heads, S, bs, nblocks, max_seqs;
  bms_seq *seq; /* [max_seqs] slots */
  uint32_t nlive;
  uint32_t *ref;  /* [nblocks] the model's ref counts */
  uint32_t *mark; /* [nblocks] stamps for "distinct within one op" checks */
  uint32_t stamp;
  uint32_t nfree;
  uint32_t peak_used;
  uint64_t *slot_tok; /* [nblocks * bs] token id held by each slot (0 = never written) */
  uint64_t next_tok;
  uint64_t rng; /* drives the simulated device selection of compact_uniform */
  /* scratch, grown on demand */
  int64_t *slots;
  size_t slots_cap;
  rkv_block_copy *copies; /* [S] */
  rkv_slot_move *moves;
  size_t moves_cap;
  rkv_compact_map *maps; /* [S] */
  int32_t *old_blocks;
  size_t old_cap;
  int32_t *keep_pos; /* keep positions of every stream, S segments of keep_seg each */
  size_t keep_seg;
  rkv_keep_list *lists; /* [S + 1] */
  uint64_t *tmp_tok;
  size_t tmp_cap;
  int32_t *lens; /* [S] */
  /* Prefix cache (config.prefix_cache): groups by the model's own bookkeeping, the parked
   * blocks (cached, ref 0, still free) with the op that parked them, and the counters of
   * rkv_prefix_stats as the model predicts them. */
  bool pc;
  uint32_t gcap;    /* groups that can exist at once: nblocks / S */
  bms_group *grp;   /* [gcap] */
  int32_t *bgrp;    /* [nblocks] group of each block, -1 if none */
  uint64_t *park;   /* [nblocks] op number that parked the block */
  uint32_t nparked; /* cached blocks with model ref 0 */
  uint64_t opno;
  rkv_prefix_stats pst;
  /* per-op snapshot (bms_pc_begin_) and marks for bms_pc_end_ */
  uint32_t pre_plain;   /* free-list blocks before the op: free minus parked */
  uint32_t *pre_parked; /* [gcap] parked blocks of each group before the op */
  uint64_t *pre_key;    /* [gcap] oldest park among them (LRU position) */
  uint8_t *inval;       /* [gcap] content changes in this op by the documented rules */
  uint8_t *taken;       /* [gcap] one of its blocks was handed out fresh in this op */
  uint32_t tmpl_blocks[BMS_TMPL];
  uint64_t tmpl_hash[BMS_TMPL][BMS_TMPL_MAX_BLOCKS];
  char err[1024];
} bm_shadow;

__attribute__((format(printf, 2, 3))) static inline int bms_fail_(bm_shadow *s, const char *fmt,
                                                                  ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->err, sizeof s->err, fmt, ap);
  va_end(ap);
  return -1;
}
#define BMS_FAIL(s, ...) bms_fail_((s), __VA_ARGS__)

static inline uint64_t bms_rand(uint64_t *st) {
  uint64_t z = (*st += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
/* Uniform in [0, n) (n > 0); the modulo bias is irrelevant here. */
static inline uint32_t bms_below(uint64_t *st, uint32_t n) {
  return (uint32_t)(bms_rand(st) % n);
}

/* memcpy that accepts NULL pointers with a zero size (empty rows have no storage). */
static inline void bms_copy_(void *dst, const void *src, size_t bytes) {
  if (bytes) memcpy(dst, src, bytes);
}

static inline int32_t bms_ceil_div(int32_t a, int32_t b) {
  return (a + b - 1) / b;
}

static inline bool bms_grow_(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return true;
  size_t n = *cap ? *cap : 16;
  while (n < need) n *= 2;
  void *q = realloc(*p, n * elem);
  if (!q) return false;
  *p = q;
  *cap = n;
  return true;
}

static inline bool bms_stream_reserve_(bms_stream *t, int32_t len, int32_t nrow) {
  if (len > t->tok_cap) {
    int32_t n = t->tok_cap ? t->tok_cap : 16;
    while (n < len) n *= 2;
    uint64_t *q = realloc(t->tok, (size_t)n * sizeof *q);
    if (!q) return false;
    t->tok = q;
    t->tok_cap = n;
  }
  if (nrow > t->row_cap) {
    int32_t n = t->row_cap ? t->row_cap : 8;
    while (n < nrow) n *= 2;
    int32_t *q = realloc(t->row, (size_t)n * sizeof *q);
    if (!q) return false;
    t->row = q;
    t->row_cap = n;
  }
  return true;
}

static inline void bms_fini(bm_shadow *s) {
  if (s->seq)
    for (uint32_t i = 0; i < s->max_seqs; i++) {
      if (!s->seq[i].st) continue;
      for (uint32_t k = 0; k < s->S; k++) {
        free(s->seq[i].st[k].tok);
        free(s->seq[i].st[k].row);
      }
      free(s->seq[i].st);
    }
  free(s->seq);
  free(s->ref);
  free(s->mark);
  free(s->slot_tok);
  free(s->slots);
  free(s->copies);
  free(s->moves);
  free(s->maps);
  free(s->old_blocks);
  free(s->keep_pos);
  free(s->lists);
  free(s->tmp_tok);
  free(s->lens);
  for (uint32_t g = 0; s->grp && g < s->gcap; g++) {
    free(s->grp[g].blk);
    free(s->grp[g].tok);
  }
  free(s->grp);
  free(s->bgrp);
  free(s->park);
  free(s->pre_parked);
  free(s->pre_key);
  free(s->inval);
  free(s->taken);
  memset(s, 0, sizeof *s);
}

/* Prefix-cache state and the prompt templates: BMS_TMPL token strings sharing a system
 * prefix of 1..2 blocks, each 1..BMS_TMPL_MAX_BLOCKS blocks long. Returns -1 when out of
 * memory or when rkv_prefix_hash_blocks breaks its contract (equal prefixes, equal hashes). */
static inline int bms_pc_init_(bm_shadow *s, uint64_t seed) {
  s->pc = true;
  s->gcap = s->nblocks / s->S ? s->nblocks / s->S : 1;
  s->grp = calloc(s->gcap, sizeof *s->grp);
  s->bgrp = malloc(s->nblocks * sizeof *s->bgrp);
  s->park = calloc(s->nblocks, sizeof *s->park);
  s->pre_parked = calloc(s->gcap, sizeof *s->pre_parked);
  s->pre_key = calloc(s->gcap, sizeof *s->pre_key);
  s->inval = calloc(s->gcap, 1);
  s->taken = calloc(s->gcap, 1);
  size_t ntok = (size_t)BMS_TMPL_MAX_BLOCKS * s->bs;
  int32_t *tok = calloc(BMS_TMPL * ntok, sizeof *tok);
  if (!s->grp || !s->bgrp || !s->park || !s->pre_parked || !s->pre_key || !s->inval || !s->taken ||
      !tok) {
    free(tok);
    return -1;
  }
  for (uint32_t b = 0; b < s->nblocks; b++) s->bgrp[b] = -1;
  for (uint32_t g = 0; g < s->gcap; g++) {
    s->grp[g].blk = calloc(s->S, sizeof *s->grp[g].blk);
    s->grp[g].tok = calloc((size_t)s->S * s->bs, sizeof *s->grp[g].tok);
    if (!s->grp[g].blk || !s->grp[g].tok) {
      free(tok);
      return -1;
    }
  }
  uint64_t rng = seed ^ 0x7072656669787ull;
  uint32_t sys = 1 + bms_below(&rng, 2);
  int bad = 0;
  for (uint32_t t = 0; t < BMS_TMPL; t++) {
    int32_t *x = tok + t * ntok;
    s->tmpl_blocks[t] = sys + bms_below(&rng, BMS_TMPL_MAX_BLOCKS - sys + 1);
    for (size_t i = 0; i < ntok; i++)
      x[i] = i < (size_t)sys * s->bs ? (int32_t)i : (int32_t)(1000 * (t + 1) + i);
    uint32_t full =
        rkv_prefix_hash_blocks(x, s->tmpl_blocks[t] * s->bs, s->bs, 0, s->tmpl_hash[t], 64);
    bad |= full != s->tmpl_blocks[t];
  }
  for (uint32_t t = 1; t < BMS_TMPL; t++)
    for (uint32_t i = 0; i < sys; i++) bad |= s->tmpl_hash[t][i] != s->tmpl_hash[0][i];
  for (uint32_t t = 0; t < BMS_TMPL; t++)
    for (uint32_t i = sys; i < s->tmpl_blocks[t]; i++)
      for (uint32_t u = 0; u < t; u++)
        for (uint32_t j = 0; j < s->tmpl_blocks[u]; j++)
          bad |= s->tmpl_hash[t][i] == s->tmpl_hash[u][j];
  free(tok);
  return bad ? -1 : 0;
}

/* Mirrors an empty manager `m` (just created). Returns 0, or -1 when out of memory. */
static inline int bms_init(bm_shadow *s, rkv_blockmgr *m, uint64_t seed) {
  memset(s, 0, sizeof *s);
  const rkv_blockmgr_config *c = rkv_blockmgr_get_config(m);
  s->m = m;
  s->layers = c->num_layers;
  s->heads = c->num_kv_heads;
  s->S = c->num_layers * c->num_kv_heads;
  s->bs = c->block_size;
  s->nblocks = c->num_blocks;
  s->max_seqs = c->max_seqs ? c->max_seqs : 4096;
  s->nfree = s->nblocks;
  s->next_tok = 1;
  s->rng = seed ^ 0x5eed5eedull;
  s->seq = calloc(s->max_seqs, sizeof *s->seq);
  s->ref = calloc(s->nblocks, sizeof *s->ref);
  s->mark = calloc(s->nblocks, sizeof *s->mark);
  s->slot_tok = calloc((size_t)s->nblocks * s->bs, sizeof *s->slot_tok);
  s->copies = calloc(s->S, sizeof *s->copies);
  s->maps = calloc(s->S, sizeof *s->maps);
  s->lists = calloc(s->S + 1, sizeof *s->lists);
  s->lens = calloc(s->S, sizeof *s->lens);
  if (!s->seq || !s->ref || !s->mark || !s->slot_tok || !s->copies || !s->maps || !s->lists ||
      !s->lens) {
    bms_fini(s);
    return -1;
  }
  for (uint32_t i = 0; i < s->max_seqs; i++) {
    s->seq[i].st = calloc(s->S, sizeof *s->seq[i].st);
    if (!s->seq[i].st) {
      bms_fini(s);
      return -1;
    }
  }
  if (c->prefix_cache && bms_pc_init_(s, seed) != 0) {
    bms_fini(s);
    return -1;
  }
  return 0;
}

static inline bms_seq *bms_find(bm_shadow *s, int64_t id) {
  for (uint32_t i = 0; i < s->max_seqs; i++)
    if (s->seq[i].live && s->seq[i].id == id) return &s->seq[i];
  return NULL;
}

static inline bms_seq *bms_free_slot_(bm_shadow *s) {
  for (uint32_t i = 0; i < s->max_seqs; i++)
    if (!s->seq[i].live) return &s->seq[i];
  return NULL;
}

/* The i-th live sequence (i < nlive), in slot order. */
static inline bms_seq *bms_nth_live(bm_shadow *s, uint32_t i) {
  for (uint32_t k = 0; k < s->max_seqs; k++)
    if (s->seq[k].live && i-- == 0) return &s->seq[k];
  return NULL;
}

static inline void bms_next_stamp_(bm_shadow *s) {
  if (++s->stamp == 0) {
    memset(s->mark, 0, s->nblocks * sizeof *s->mark);
    s->stamp = 1;
  }
}

/* A block the manager just handed out must be in range, free in the model before the op, and
 * not handed out twice in the same op. */
static inline int bms_check_fresh_(bm_shadow *s, int32_t b, const char *what) {
  if (b < 0 || (uint32_t)b >= s->nblocks)
    return BMS_FAIL(s, "%s: block id %d out of range", what, b);
  if (s->ref[b] != 0)
    return BMS_FAIL(s, "%s: new block %d was not free (model ref %u)", what, b, s->ref[b]);
  if (s->mark[b] == s->stamp) return BMS_FAIL(s, "%s: block %d handed out twice", what, b);
  s->mark[b] = s->stamp;
  if (s->pc && s->bgrp[b] >= 0) s->taken[s->bgrp[b]] = 1; /* only a reclaimed group's */
  return 0;
}

/* A cached block leaving ref 0 stops being parked; one reaching it is parked now (the op
 * number orders the LRU list up to ties within one op). */
static inline void bms_ref_inc_(bm_shadow *s, int32_t b) {
  if (s->ref[b]++ == 0) {
    s->nfree--;
    if (s->pc && s->bgrp[b] >= 0) s->nparked--;
  }
}
static inline void bms_ref_dec_(bm_shadow *s, int32_t b) {
  if (--s->ref[b] == 0) {
    s->nfree++;
    if (s->pc && s->bgrp[b] >= 0) {
      s->nparked++;
      s->park[b] = s->opno;
    }
  }
}

static inline void bms_note_peak_(bm_shadow *s) {
  uint32_t used = s->nblocks - s->nfree;
  if (used > s->peak_used) s->peak_used = used;
}

static inline int64_t bms_slot_(const bm_shadow *s, const int32_t *row, int32_t pos) {
  return (int64_t)row[pos / (int32_t)s->bs] * s->bs + pos % (int32_t)s->bs;
}

/* Fetches the manager's row of stream k of q. */
static inline int bms_mgr_row_(bm_shadow *s, const bms_seq *q, uint32_t k, const int32_t **ids,
                               int32_t *n) {
  rkv_status st = rkv_blockmgr_stream_blocks(s->m, q->id, k / s->heads, k % s->heads, ids, n);
  if (st != RKV_OK)
    return BMS_FAIL(s, "stream_blocks(seq %" PRId64 ", stream %u) returned %s", q->id, k,
                    rkv_status_name(st));
  return 0;
}

/* Verifies one stream against the manager: length, row, and every position's token. */
static inline int bms_verify_stream(bm_shadow *s, const bms_seq *q, uint32_t k) {
  const bms_stream *t = &q->st[k];
  int32_t len = -1;
  rkv_status st = rkv_blockmgr_stream_len(s->m, q->id, k / s->heads, k % s->heads, &len);
  if (st != RKV_OK || len != t->len)
    return BMS_FAIL(s, "seq %" PRId64 " stream %u: stream_len %s %d, model %d", q->id, k,
                    rkv_status_name(st), len, t->len);
  const int32_t *ids;
  int32_t n;
  if (bms_mgr_row_(s, q, k, &ids, &n)) return -1;
  if (n != t->nrow || n != bms_ceil_div(t->len, (int32_t)s->bs))
    return BMS_FAIL(s, "seq %" PRId64 " stream %u: %d blocks, model %d (len %d, block %u)", q->id,
                    k, n, t->nrow, t->len, s->bs);
  for (int32_t j = 0; j < n; j++)
    if (ids[j] != t->row[j])
      return BMS_FAIL(s, "seq %" PRId64 " stream %u: row[%d] = %d, model %d", q->id, k, j, ids[j],
                      t->row[j]);
  for (int32_t p = 0; p < t->len; p++) {
    int64_t slot = bms_slot_(s, t->row, p);
    if (s->slot_tok[slot] != t->tok[p])
      return BMS_FAIL(s,
                      "seq %" PRId64 " stream %u pos %d: slot %" PRId64 " holds token %" PRIu64
                      ", expected %" PRIu64,
                      q->id, k, p, slot, s->slot_tok[slot], t->tok[p]);
  }
  if (t->len > 0) {
    int64_t slot = -1;
    st = rkv_blockmgr_stream_slot(s->m, q->id, k / s->heads, k % s->heads, t->len - 1, &slot);
    if (st != RKV_OK || slot != bms_slot_(s, t->row, t->len - 1))
      return BMS_FAIL(s, "seq %" PRId64 " stream %u: stream_slot(%d) %s %" PRId64, q->id, k,
                      t->len - 1, rkv_status_name(st), slot);
  }
  int64_t slot = -1;
  st = rkv_blockmgr_stream_slot(s->m, q->id, k / s->heads, k % s->heads, t->len, &slot);
  if (st != RKV_ERR_INVALID_ARG)
    return BMS_FAIL(s, "seq %" PRId64 " stream %u: stream_slot(len) returned %s", q->id, k,
                    rkv_status_name(st));
  return 0;
}

static inline int bms_verify_seq(bm_shadow *s, const bms_seq *q) {
  if (!rkv_blockmgr_seq_exists(s->m, q->id)) return BMS_FAIL(s, "seq %" PRId64 " vanished", q->id);
  if (rkv_blockmgr_seq_protected(s->m, q->id) != q->protect)
    return BMS_FAIL(s, "seq %" PRId64 ": seq_protected %d, model %d", q->id,
                    rkv_blockmgr_seq_protected(s->m, q->id), q->protect);
  for (uint32_t k = 0; k < s->S; k++)
    if (bms_verify_stream(s, q, k)) return -1;
  return 0;
}

/* Cheap global agreement: free count and live sequence count. */
static inline int bms_verify_counts(bm_shadow *s) {
  rkv_blockmgr_stats stt;
  rkv_blockmgr_get_stats(s->m, &stt);
  if (stt.free_blocks != s->nfree || stt.used_blocks != s->nblocks - s->nfree ||
      stt.num_seqs != s->nlive || rkv_blockmgr_num_seqs(s->m) != s->nlive)
    return BMS_FAIL(s, "stats: free %u used %u seqs %u; model free %u used %u seqs %u",
                    stt.free_blocks, stt.used_blocks, stt.num_seqs, s->nfree, s->nblocks - s->nfree,
                    s->nlive);
  return 0;
}

/* ---- Prefix cache: the model's groups and what the header lets it predict ----------------
 *
 * The model keeps its own table of groups (hash, block per stream, tokens at registration)
 * and applies the documented rules: parked blocks count as free; a compaction copies the
 * cached blocks it keeps (held alone, past the protected prefix) when the pool holds all its
 * fresh blocks, and they stay cached (unless the reclaim that makes the room drops their
 * group: then they are rewritten in place); without that room, one that reuses an unshared block
 * and moves tokens into it or leaves it partly filled drops its group, and so does a uniform
 * compaction of an unshared block past the protected prefix; shared blocks are copied and
 * stay cached (one left partly filled in place keeps its group until an append).
 *
 * Reclaim is checked at the level the header documents rather than by copying the library's
 * list: a call needing `need` blocks from a free list holding fewer reclaims parked groups,
 * oldest parked block first (ties within one op are unordered), and stops as soon as the free
 * list holds `need`. After each op the model asks the manager which of its groups are still
 * cached, accepts a reclaim set only if it obeys that rule, and then compares every counter
 * of rkv_prefix_stats. */

static inline int bms_pc_find_(const bm_shadow *s, uint64_t h) {
  for (uint32_t g = 0; g < s->gcap; g++)
    if (s->grp[g].live && s->grp[g].hash == h) return (int)g;
  return -1;
}

static inline void bms_pc_drop_(bm_shadow *s, uint32_t g) {
  bms_group *G = &s->grp[g];
  for (uint32_t k = 0; k < s->S; k++) {
    if (s->ref[G->blk[k]] == 0) s->nparked--;
    s->bgrp[G->blk[k]] = -1;
  }
  G->live = false;
}

/* The group (if any) of block b changes content in this op. */
static inline void bms_pc_touch_(bm_shadow *s, int32_t b) {
  if (s->pc && s->bgrp[b] >= 0) s->inval[s->bgrp[b]] = 1;
}

/* Snapshot before a call: LRU positions and the free list as the manager splits it. */
static inline void bms_pc_begin_(bm_shadow *s) {
  if (!s->pc) return;
  s->opno++;
  s->pre_plain = s->nfree - s->nparked;
  for (uint32_t g = 0; g < s->gcap; g++) {
    s->inval[g] = s->taken[g] = 0;
    s->pre_parked[g] = 0;
    s->pre_key[g] = UINT64_MAX;
    if (!s->grp[g].live) continue;
    for (uint32_t k = 0; k < s->S; k++) {
      int32_t b = s->grp[g].blk[k];
      if (s->ref[b] != 0) continue;
      s->pre_parked[g]++;
      if (s->park[b] < s->pre_key[g]) s->pre_key[g] = s->park[b];
    }
  }
}

static inline bool bms_pc_cached_(bm_shadow *s, uint64_t h) {
  uint32_t hit = 99;
  return rkv_blockmgr_prefix_match(s->m, &h, 1, &hit) == RKV_OK && hit == 1;
}

/* A block a compaction was to copy but kept in place: allowed only when the reclaim that made
 * room for the copies dropped its group (it had parked blocks and is gone now; bms_pc_end_
 * then checks that reclaim's order and size like any other). */
static inline int bms_pc_reclaimed_(bm_shadow *s, int32_t b, const char *what) {
  const int32_t g = s->bgrp[b];
  if (s->pre_parked[g] == 0 || bms_pc_cached_(s, s->grp[g].hash))
    return BMS_FAIL(s, "%s: cached block %d (group %d) neither copied nor reclaimed", what, b, g);
  return 0;
}

/* Every counter of rkv_prefix_stats against the model. */
static inline int bms_pc_stats_(bm_shadow *s) {
  rkv_prefix_stats st;
  memset(&st, 0xAB, sizeof st);
  st.struct_size = sizeof st;
  rkv_status rc = rkv_blockmgr_prefix_stats(s->m, &st);
  uint32_t entries = 0;
  for (uint32_t g = 0; s->pc && g < s->gcap; g++) entries += s->grp[g].live;
  const rkv_prefix_stats *w = &s->pst;
  if (rc != RKV_OK || st.entries != entries || st.cached_blocks != entries * s->S ||
      st.reclaimable_blocks != s->nparked || st.lookups != w->lookups ||
      st.hit_groups != w->hit_groups || st.inserted != w->inserted ||
      st.invalidated != w->invalidated || st.reclaimed != w->reclaimed)
    return BMS_FAIL(
        s,
        "prefix_stats %s: entries %u cached %u reclaimable %u lookups %" PRIu64 " hits %" PRIu64
        " inserted %" PRIu64 " invalidated %" PRIu64 " reclaimed %" PRIu64
        "; model %u %u %u %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64,
        rkv_status_name(rc), st.entries, st.cached_blocks, st.reclaimable_blocks, st.lookups,
        st.hit_groups, st.inserted, st.invalidated, st.reclaimed, entries, entries * s->S,
        s->nparked, w->lookups, w->hit_groups, w->inserted, w->invalidated, w->reclaimed);
  return 0;
}

/* Reclaim rule for the groups the manager dropped that no content change explains: each had
 * parked blocks, none is younger than a parked group that stayed, and the last one was needed
 * (without it the free list would have held fewer than `need`). `amb` = groups the rules
 * invalidate that were also parked: the manager may have reclaimed them first, which only
 * loosens the count checks. */
static inline int bms_pc_reclaim_ok_(bm_shadow *s, uint32_t need, const uint8_t *gone,
                                     uint32_t amb_parked) {
  uint64_t sum = s->pre_plain, maxkey = 0;
  uint32_t n = 0;
  for (uint32_t g = 0; g < s->gcap; g++) {
    if (!gone[g]) continue;
    if (s->pre_parked[g] == 0)
      return BMS_FAIL(s,
                      "prefix cache: group %u (hash %016" PRIx64
                      ") vanished with no block "
                      "parked and no content change",
                      g, s->grp[g].hash);
    n++;
    sum += s->pre_parked[g];
    if (s->pre_key[g] > maxkey) maxkey = s->pre_key[g];
    for (uint32_t h = 0; h < s->gcap; h++)
      if (s->grp[h].live && !gone[h] && !s->inval[h] && s->pre_parked[h] &&
          s->pre_key[h] < s->pre_key[g])
        return BMS_FAIL(s,
                        "prefix cache: reclaimed group %u (parked at op %" PRIu64
                        ") before older group %u (op %" PRIu64 ")",
                        g, s->pre_key[g], h, s->pre_key[h]);
  }
  if (n == 0) {
    if (need > s->pre_plain + amb_parked)
      return BMS_FAIL(s,
                      "prefix cache: an op needing %u blocks with %u on the free list "
                      "reclaimed nothing",
                      need, s->pre_plain);
    return 0;
  }
  if (need <= s->pre_plain)
    return BMS_FAIL(s,
                    "prefix cache: %u groups reclaimed though the free list held %u of %u "
                    "blocks needed",
                    n, s->pre_plain, need);
  if (amb_parked) return 0;
  if (sum < need)
    return BMS_FAIL(s, "prefix cache: reclaim left %" PRIu64 " of %u blocks needed", sum, need);
  for (uint32_t g = 0; g < s->gcap; g++)
    if (gone[g] && s->pre_key[g] == maxkey && sum - s->pre_parked[g] < need) return 0;
  return BMS_FAIL(s, "prefix cache: reclaimed more groups than the %u blocks needed", need);
}

/* After a call (or a failed one, need 0): reconciles the model's groups with the manager's. */
static inline int bms_pc_end_(bm_shadow *s, uint32_t need) {
  if (!s->pc) return 0;
  uint8_t *gone = calloc(s->gcap, 1);
  if (!gone) return BMS_FAIL(s, "out of memory");
  uint32_t n_inval = 0, n_gone = 0, amb = 0, amb_parked = 0;
  int ret = 0;
  for (uint32_t g = 0; !ret && g < s->gcap; g++) {
    if (!s->grp[g].live) continue;
    bool present = bms_pc_cached_(s, s->grp[g].hash);
    if (s->inval[g]) {
      if (present)
        ret = BMS_FAIL(s,
                       "prefix cache: group %u (hash %016" PRIx64
                       ") still cached after its "
                       "content changed",
                       g, s->grp[g].hash);
      n_inval++;
      if (s->pre_parked[g]) {
        amb++;
        amb_parked += s->pre_parked[g];
      }
    } else if (!present) {
      gone[g] = 1;
      n_gone++;
    } else if (s->taken[g]) {
      ret = BMS_FAIL(s, "prefix cache: a block of cached group %u was handed out", g);
    }
  }
  if (!ret) ret = bms_pc_reclaim_ok_(s, need, gone, amb_parked);
  if (!ret) {
    rkv_prefix_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    rkv_blockmgr_prefix_stats(s->m, &st);
    uint64_t inv = s->pst.invalidated + n_inval, rec = s->pst.reclaimed + n_gone;
    /* a parked group due for invalidation may have been reclaimed first instead */
    if (amb && st.invalidated + st.reclaimed == inv + rec && st.reclaimed >= rec &&
        st.reclaimed <= rec + amb) {
      inv = st.invalidated;
      rec = st.reclaimed;
    }
    s->pst.invalidated = inv;
    s->pst.reclaimed = rec;
    for (uint32_t g = 0; g < s->gcap; g++)
      if (s->grp[g].live && (gone[g] || s->inval[g])) bms_pc_drop_(s, g);
    ret = bms_pc_stats_(s);
  }
  free(gone);
  return ret;
}

/* Full walk of the cache: membership and cost of every group, its blocks still hold the
 * tokens they held when registered (no lookup can map stale K/V), parked count. */
static inline int bms_pc_verify_all_(bm_shadow *s) {
  if (!s->pc) return bms_pc_stats_(s);
  uint32_t parked = 0;
  for (uint32_t b = 0; b < s->nblocks; b++) parked += s->bgrp[b] >= 0 && s->ref[b] == 0;
  if (parked != s->nparked)
    return BMS_FAIL(s, "model: %u parked blocks counted, %u found", s->nparked, parked);
  for (uint32_t g = 0; g < s->gcap; g++) {
    const bms_group *G = &s->grp[g];
    if (!G->live) continue;
    uint32_t cost = 99, want = 0;
    for (uint32_t k = 0; k < s->S; k++) {
      want += s->ref[G->blk[k]] == 0;
      for (uint32_t i = 0; i < s->bs; i++)
        if (s->slot_tok[(size_t)G->blk[k] * s->bs + i] != G->tok[(size_t)k * s->bs + i])
          return BMS_FAIL(s, "cached group %u stream %u: block %d slot %u changed content", g, k,
                          G->blk[k], i);
    }
    rkv_status st = rkv_blockmgr_prefix_cost(s->m, &G->hash, 1, &cost);
    if (!bms_pc_cached_(s, G->hash) || st != RKV_OK || cost != want)
      return BMS_FAIL(s, "cached group %u: match/cost %s %u, model cost %u", g, rkv_status_name(st),
                      cost, want);
  }
  return bms_pc_stats_(s);
}

/* Everything: rkv_blockmgr_check, every stream of every sequence, every block's ref count
 * (which proves free = total - |union of referenced blocks|), stats, footprints, the live
 * id list, and one layer's CSR export over all live sequences. O(everything). */
static inline int bms_verify_all(bm_shadow *s) {
  rkv_status st = rkv_blockmgr_check(s->m);
  if (st != RKV_OK)
    return BMS_FAIL(s, "rkv_blockmgr_check: %s: %s", rkv_status_name(st),
                    rkv_blockmgr_last_error(s->m));
  if (bms_verify_counts(s) || bms_pc_verify_all_(s)) return -1;
  uint32_t shared = 0, nfree = 0;
  for (uint32_t b = 0; b < s->nblocks; b++) {
    uint32_t r = 99;
    st = rkv_blockmgr_block_ref(s->m, (int32_t)b, &r);
    if (st != RKV_OK || r != s->ref[b])
      return BMS_FAIL(s, "block %u: ref %u (%s), model %u", b, r, rkv_status_name(st), s->ref[b]);
    shared += s->ref[b] > 1;
    nfree += s->ref[b] == 0;
  }
  if (nfree != s->nfree) return BMS_FAIL(s, "model free count %u != %u zero refs", s->nfree, nfree);
  rkv_blockmgr_stats stt;
  rkv_blockmgr_get_stats(s->m, &stt);
  if (stt.total_blocks != s->nblocks || stt.shared_blocks != shared ||
      stt.allocated_slots != (uint64_t)(s->nblocks - s->nfree) * s->bs ||
      stt.fragmentation_slots != stt.allocated_slots - stt.token_slots ||
      stt.token_slots > stt.allocated_slots || stt.peak_used_blocks < s->peak_used)
    return BMS_FAIL(s,
                    "stats: total %u shared %u (model %u) allocated %" PRIu64 " tokens %" PRIu64
                    " frag %" PRIu64 " peak %u (model >= %u)",
                    stt.total_blocks, stt.shared_blocks, shared, stt.allocated_slots,
                    stt.token_slots, stt.fragmentation_slots, stt.peak_used_blocks, s->peak_used);
  /* token_slots counts a shared block once, with the most tokens any referencing stream
   * holds in it (a compacted sharer may hold fewer). */
  uint32_t *fill = calloc(s->nblocks, sizeof *fill);
  if (!fill) return BMS_FAIL(s, "out of memory");
  uint64_t tokens = 0;
  for (uint32_t i = 0; i < s->max_seqs; i++)
    for (uint32_t k = 0; s->seq[i].live && k < s->S; k++) {
      const bms_stream *t = &s->seq[i].st[k];
      for (int32_t j = 0; j < t->nrow; j++) {
        int32_t f = t->len - j * (int32_t)s->bs;
        if (f > (int32_t)s->bs) f = (int32_t)s->bs;
        if ((uint32_t)f > fill[t->row[j]]) fill[t->row[j]] = (uint32_t)f;
      }
    }
  for (uint32_t b = 0; b < s->nblocks; b++) tokens += fill[b];
  free(fill);
  if (stt.token_slots != tokens)
    return BMS_FAIL(s, "stats: token_slots %" PRIu64 ", model %" PRIu64, stt.token_slots, tokens);
  for (uint32_t i = 0; i < s->max_seqs; i++) {
    const bms_seq *q = &s->seq[i];
    if (!q->live) continue;
    if (bms_verify_seq(s, q)) return -1;
    uint32_t tot = 0, excl = 0, mt = 0, me = 0;
    for (uint32_t k = 0; k < s->S; k++)
      for (int32_t j = 0; j < q->st[k].nrow; j++) {
        tot++;
        excl += s->ref[q->st[k].row[j]] == 1;
      }
    st = rkv_blockmgr_seq_footprint(s->m, q->id, &mt, &me);
    if (st != RKV_OK || mt != tot || me != excl)
      return BMS_FAIL(s, "seq %" PRId64 " footprint %s total %u excl %u, model %u %u", q->id,
                      rkv_status_name(st), mt, me, tot, excl);
  }
  /* The live id list and a CSR export of one layer over all of them. */
  int64_t *ids = calloc(s->nlive + 1, sizeof *ids);
  if (!ids) return BMS_FAIL(s, "out of memory");
  uint32_t got = rkv_blockmgr_list_seqs(s->m, ids, s->nlive + 1);
  int ret = 0;
  if (got != s->nlive) ret = BMS_FAIL(s, "list_seqs: %u live, model %u", got, s->nlive);
  for (uint32_t i = 0; !ret && i < got; i++)
    if (!bms_find(s, ids[i])) ret = BMS_FAIL(s, "list_seqs: unknown id %" PRId64, ids[i]);
  uint32_t layer = s->layers > 1 ? (uint32_t)(s->stamp % s->layers) : 0, nnz = 0;
  int32_t *indptr = NULL, *indices = NULL, *last = NULL;
  if (!ret && got > 0) {
    st = rkv_blockmgr_export_size(s->m, layer, ids, got, &nnz);
    indptr = calloc((size_t)got * s->heads + 1, sizeof *indptr);
    indices = calloc(nnz + 1, sizeof *indices);
    last = calloc((size_t)got * s->heads, sizeof *last);
    if (st != RKV_OK) ret = BMS_FAIL(s, "export_size: %s", rkv_status_name(st));
    if (!ret && (!indptr || !indices || !last)) ret = BMS_FAIL(s, "out of memory");
    uint32_t nnz2 = 0;
    rkv_block_table tab;
    if (!ret)
      st = rkv_blockmgr_export_csr(s->m, layer, ids, got, indptr, indices, nnz, last, &nnz2, &tab);
    if (!ret && (st != RKV_OK || nnz2 != nnz || tab.num_streams != (int32_t)(got * s->heads)))
      ret = BMS_FAIL(s, "export_csr: %s nnz %u vs %u", rkv_status_name(st), nnz2, nnz);
    for (uint32_t i = 0; !ret && i < got; i++) {
      const bms_seq *q = bms_find(s, ids[i]);
      for (uint32_t h = 0; !ret && h < s->heads; h++) {
        const bms_stream *t = &q->st[layer * s->heads + h];
        uint32_t r = i * s->heads + h;
        int32_t want_last = t->len == 0 ? 0 : t->len - (t->nrow - 1) * (int32_t)s->bs;
        if (indptr[r + 1] - indptr[r] != t->nrow || last[r] != want_last ||
            rkv_block_table_stream_len(&tab, (int32_t)r) != t->len)
          ret = BMS_FAIL(s, "export_csr: row %u has %d blocks last_len %d, model %d %d", r,
                         indptr[r + 1] - indptr[r], last[r], t->nrow, want_last);
        for (int32_t j = 0; !ret && j < t->nrow; j++)
          if (indices[indptr[r] + j] != t->row[j])
            ret = BMS_FAIL(s, "export_csr: row %u entry %d = %d, model %d", r, j,
                           indices[indptr[r] + j], t->row[j]);
      }
    }
  }
  free(indptr);
  free(indices);
  free(last);
  free(ids);
  return ret;
}

/* After a call that should have failed: the status matched; now prove nothing changed. */
static inline int bms_verify_unchanged_(bm_shadow *s, int64_t id) {
  if (bms_verify_counts(s) || bms_pc_end_(s, 0)) return -1;
  bms_seq *q = bms_find(s, id);
  return q ? bms_verify_seq(s, q) : 0;
}

static inline int bms_expect_(bm_shadow *s, const char *op, rkv_status got, rkv_status want) {
  if (got == want) return 0;
  return BMS_FAIL(s, "%s returned %s (%s), model expected %s", op, rkv_status_name(got),
                  rkv_blockmgr_last_error(s->m), rkv_status_name(want));
}

/* ---- Drivers: predict, call, verify, update the model ------------------------------------ */

static inline int bms_create(bm_shadow *s, int64_t id, rkv_status *out) {
  rkv_status want = RKV_OK;
  if (id < 0)
    want = RKV_ERR_INVALID_ARG;
  else if (bms_find(s, id))
    want = RKV_ERR_EXISTS;
  else if (s->nlive >= s->max_seqs)
    want = RKV_ERR_CAPACITY;
  bms_pc_begin_(s);
  rkv_status st = rkv_blockmgr_seq_create(s->m, id);
  *out = st;
  if (bms_expect_(s, "seq_create", st, want)) return -1;
  if (want != RKV_OK) return bms_verify_unchanged_(s, id);
  bms_seq *q = bms_free_slot_(s);
  q->live = true;
  q->id = id;
  q->protect = 0;
  q->tmpl = -1;
  for (uint32_t k = 0; k < s->S; k++) q->st[k].len = q->st[k].nrow = 0;
  s->nlive++;
  if (bms_pc_end_(s, 0)) return -1;
  return bms_verify_seq(s, q);
}

static inline int bms_free(bm_shadow *s, int64_t id, rkv_status *out) {
  bms_seq *q = bms_find(s, id);
  bms_pc_begin_(s);
  rkv_status st = rkv_blockmgr_seq_free(s->m, id);
  *out = st;
  if (bms_expect_(s, "seq_free", st, q ? RKV_OK : RKV_ERR_NOT_FOUND)) return -1;
  if (!q) return bms_verify_unchanged_(s, id);
  for (uint32_t k = 0; k < s->S; k++) {
    for (int32_t j = 0; j < q->st[k].nrow; j++) bms_ref_dec_(s, q->st[k].row[j]);
    q->st[k].len = q->st[k].nrow = 0;
  }
  q->live = false;
  s->nlive--;
  if (rkv_blockmgr_seq_exists(s->m, id)) return BMS_FAIL(s, "seq %" PRId64 " still exists", id);
  if (bms_pc_end_(s, 0)) return -1;
  return bms_verify_counts(s);
}

static inline int bms_fork(bm_shadow *s, int64_t parent, int64_t child, rkv_status *out) {
  bms_seq *p = bms_find(s, parent);
  rkv_status want = RKV_OK;
  if (!p)
    want = RKV_ERR_NOT_FOUND;
  else if (child < 0)
    want = RKV_ERR_INVALID_ARG;
  else if (bms_find(s, child))
    want = RKV_ERR_EXISTS;
  else if (s->nlive >= s->max_seqs)
    want = RKV_ERR_CAPACITY;
  bms_pc_begin_(s);
  rkv_status st = rkv_blockmgr_seq_fork(s->m, parent, child);
  *out = st;
  if (bms_expect_(s, "seq_fork", st, want)) return -1;
  if (want != RKV_OK)
    return (bms_verify_unchanged_(s, child) || bms_verify_unchanged_(s, parent)) ? -1 : 0;
  bms_seq *c = bms_free_slot_(s);
  for (uint32_t k = 0; k < s->S; k++) {
    bms_stream *tp = &p->st[k], *tc = &c->st[k];
    if (!bms_stream_reserve_(tc, tp->len, tp->nrow)) return BMS_FAIL(s, "out of memory");
    bms_copy_(tc->tok, tp->tok, (size_t)tp->len * sizeof *tc->tok);
    bms_copy_(tc->row, tp->row, (size_t)tp->nrow * sizeof *tc->row);
    tc->len = tp->len;
    tc->nrow = tp->nrow;
    for (int32_t j = 0; j < tp->nrow; j++) bms_ref_inc_(s, tp->row[j]);
  }
  c->live = true;
  c->id = child;
  c->protect = p->protect; /* the child holds the same immutable prefix */
  c->tmpl = p->tmpl;
  s->nlive++;
  if (bms_verify_counts(s) || bms_pc_end_(s, 0)) return -1;
  return bms_verify_seq(s, c);
}

/* Blocks an append of n tokens takes in the model: new blocks + copies of shared partial
 * tails. *cows = streams that copy. */
static inline uint32_t bms_append_need_(const bm_shadow *s, const bms_seq *q, uint32_t n,
                                        uint32_t *cows) {
  uint32_t need = 0, c = 0;
  for (uint32_t k = 0; k < s->S; k++) {
    const bms_stream *t = &q->st[k];
    int32_t nb = t->nrow;
    need += (uint32_t)(bms_ceil_div(t->len + (int32_t)n, (int32_t)s->bs) - nb);
    if (t->len % (int32_t)s->bs != 0 && s->ref[t->row[nb - 1]] > 1) c++;
  }
  if (cows) *cows = c;
  return need + c;
}

/* Appends n tokens to every stream of `id`; with_slots = false passes slots = NULL and reads
 * the placement back through stream_blocks instead; with_copies = false passes copies = NULL,
 * which must fail with RKV_ERR_INVALID_ARG (before any block check) exactly when some stream
 * would copy a shared partial tail. */
static inline int bms_append_ex(bm_shadow *s, int64_t id, uint32_t n, bool with_slots,
                                bool with_copies, rkv_status *out) {
  bms_seq *q = bms_find(s, id);
  rkv_status want = RKV_OK;
  uint32_t need = 0, cows = 0;
  if (!q)
    want = RKV_ERR_NOT_FOUND;
  else if (n == 0)
    want = RKV_ERR_INVALID_ARG;
  else {
    need = bms_append_need_(s, q, n, &cows);
    if (!with_copies && cows > 0)
      want = RKV_ERR_INVALID_ARG;
    else if (need > s->nfree)
      want = RKV_ERR_NO_BLOCKS;
    uint32_t got = 0;
    rkv_status st = rkv_blockmgr_blocks_needed(s->m, id, n, &got);
    if (st != RKV_OK || got != need)
      return BMS_FAIL(s, "blocks_needed(%" PRId64 ", %u) %s %u, model %u", id, n,
                      rkv_status_name(st), got, need);
    if (rkv_blockmgr_can_append(s->m, id, n) != (need <= s->nfree))
      return BMS_FAIL(s, "can_append(%" PRId64 ", %u) disagrees (need %u free %u)", id, n, need,
                      s->nfree);
  }
  if (with_slots &&
      !bms_grow_((void **)&s->slots, &s->slots_cap, (size_t)s->S * (n ? n : 1), sizeof *s->slots))
    return BMS_FAIL(s, "out of memory");
  uint32_t n_copies = 12345;
  bms_pc_begin_(s);
  rkv_status st =
      rkv_blockmgr_append(s->m, id, n, with_slots ? s->slots : NULL, with_copies ? s->copies : NULL,
                          with_copies ? &n_copies : NULL);
  if (!with_copies) n_copies = 0;
  *out = st;
  if (bms_expect_(s, "append", st, want)) return -1;
  if (want != RKV_OK) return bms_verify_unchanged_(s, id);
  if (n_copies != cows) return BMS_FAIL(s, "append: %u copy ops, model %u", n_copies, cows);
  /* Pass 1: validate every new row against the old one using pre-op ref counts. */
  bms_next_stamp_(s);
  uint32_t seen_cows = 0;
  for (uint32_t k = 0; k < s->S; k++) {
    const bms_stream *t = &q->st[k];
    const int32_t *ids;
    int32_t nr;
    if (bms_mgr_row_(s, q, k, &ids, &nr)) return -1;
    int32_t want_nr = bms_ceil_div(t->len + (int32_t)n, (int32_t)s->bs);
    if (nr != want_nr)
      return BMS_FAIL(s, "append: stream %u has %d blocks, model %d", k, nr, want_nr);
    bool cow = t->len % (int32_t)s->bs != 0 && s->ref[t->row[t->nrow - 1]] > 1;
    for (int32_t j = 0; j < t->nrow - (cow ? 1 : 0); j++)
      if (ids[j] != t->row[j])
        return BMS_FAIL(s, "append: stream %u row[%d] changed %d -> %d", k, j, t->row[j], ids[j]);
    if (cow) {
      int32_t src = t->row[t->nrow - 1], dst = ids[t->nrow - 1];
      if (bms_check_fresh_(s, dst, "append copy-on-write")) return -1;
      uint32_t c;
      for (c = 0; c < n_copies; c++)
        if (s->copies[c].src == src) break;
      if (c == n_copies || s->copies[c].dst != dst)
        return BMS_FAIL(s, "append: stream %u copied tail %d -> %d has no matching copy op", k, src,
                        dst);
      seen_cows++;
    }
    for (int32_t j = t->nrow; j < nr; j++)
      if (bms_check_fresh_(s, ids[j], "append")) return -1;
  }
  if (seen_cows != n_copies) return BMS_FAIL(s, "append: stray copy ops");
  /* A partial tail written in place changes content: its group (a sharer registered the
   * block full) must go. */
  for (uint32_t k = 0; s->pc && k < s->S; k++) {
    const bms_stream *t = &q->st[k];
    if (t->len % (int32_t)s->bs != 0 && s->ref[t->row[t->nrow - 1]] == 1)
      bms_pc_touch_(s, t->row[t->nrow - 1]);
  }
  /* Apply the copies to the slot map (as the pool would), then write the new tokens. */
  for (uint32_t c = 0; c < n_copies; c++)
    memcpy(&s->slot_tok[(size_t)s->copies[c].dst * s->bs],
           &s->slot_tok[(size_t)s->copies[c].src * s->bs], s->bs * sizeof *s->slot_tok);
  for (uint32_t k = 0; k < s->S; k++) {
    bms_stream *t = &q->st[k];
    const int32_t *ids;
    int32_t nr;
    if (bms_mgr_row_(s, q, k, &ids, &nr)) return -1;
    if (!bms_stream_reserve_(t, t->len + (int32_t)n, nr)) return BMS_FAIL(s, "out of memory");
    for (int32_t j = 0; j < t->nrow; j++) bms_ref_dec_(s, t->row[j]);
    for (int32_t j = 0; j < nr; j++) bms_ref_inc_(s, ids[j]);
    bms_copy_(t->row, ids, (size_t)nr * sizeof *ids);
    t->nrow = nr;
    for (uint32_t i = 0; i < n; i++) {
      int32_t p = t->len + (int32_t)i;
      int64_t slot = bms_slot_(s, t->row, p);
      if (with_slots && s->slots[(size_t)k * n + i] != slot)
        return BMS_FAIL(s, "append: slots[%u][%u] = %" PRId64 ", expected %" PRId64, k, i,
                        s->slots[(size_t)k * n + i], slot);
      /* cached blocks are full: a write into one means a group was left partly filled */
      if (s->pc && s->bgrp[slot / s->bs] >= 0 && !s->taken[s->bgrp[slot / s->bs]] &&
          !s->inval[s->bgrp[slot / s->bs]])
        return BMS_FAIL(s, "append: stream %u writes into block %" PRId64 " of cached group %d", k,
                        slot / s->bs, s->bgrp[slot / s->bs]);
      s->slot_tok[slot] = t->tok[p] = s->next_tok++;
    }
    t->len += (int32_t)n;
  }
  bms_note_peak_(s);
  if (bms_verify_counts(s) || bms_pc_end_(s, need)) return -1;
  return bms_verify_seq(s, q);
}

static inline int bms_append(bm_shadow *s, int64_t id, uint32_t n, bool with_slots,
                             rkv_status *out) {
  return bms_append_ex(s, id, n, with_slots, true, out);
}

/* Leading block j of stream t is cached, held by this sequence alone and past the whole
 * protected blocks: the manager copies it (in place or not), when the pool holds every
 * fresh block of the call. */
static inline bool bms_cached_kept_(const bm_shadow *s, const bms_stream *t, int32_t j,
                                    int32_t protect) {
  return s->pc && j >= protect / (int32_t)s->bs && s->bgrp[t->row[j]] >= 0 &&
         s->ref[t->row[j]] == 1;
}

/* Fresh blocks a compaction of stream t keeping pos[0..n) needs for its shared blocks, and the
 * moves that implies (tokens whose slot changes); *cached / *cached_moves: the copies of cached
 * blocks it makes when the pool holds them all, and the moves those add. */
static inline uint32_t bms_compact_need_(const bm_shadow *s, const bms_stream *t, int32_t protect,
                                         const int32_t *pos, uint32_t n, uint32_t *moves,
                                         uint32_t *cached, uint32_t *cached_moves) {
  int32_t bs = (int32_t)s->bs, nb = bms_ceil_div((int32_t)n, bs);
  uint32_t fresh = 0, mv = 0;
  for (int32_t j = 0; j < nb; j++) {
    int32_t lo = j * bs, hi = (j + 1) * bs < (int32_t)n ? (j + 1) * bs : (int32_t)n;
    bool inplace = true;
    uint32_t out_of_place = 0;
    for (int32_t q = lo; q < hi; q++)
      if (pos[q] != q) {
        inplace = false;
        out_of_place++;
      }
    if (s->ref[t->row[j]] > 1 && !inplace) {
      fresh++;
      mv += (uint32_t)(hi - lo);
    } else {
      mv += out_of_place;
      if (bms_cached_kept_(s, t, j, protect)) {
        (*cached)++;
        *cached_moves += (uint32_t)(hi - lo) - out_of_place;
      }
    }
  }
  if (moves) *moves = mv;
  return fresh;
}

/* Validates a keep list against the model: 0 = well formed for stream length len. */
static inline bool bms_keep_valid_(const int32_t *pos, uint32_t n, int32_t len) {
  for (uint32_t i = 0; i < n; i++)
    if (pos[i] < 0 || pos[i] >= len || (i > 0 && pos[i] <= pos[i - 1])) return false;
  return true;
}

/* rkv_blockmgr_compact with the given lists; moves_cap_override >= 0 passes that capacity
 * (and NULL moves when 0) instead of a large enough buffer. */
static inline int bms_compact_ex(bm_shadow *s, int64_t id, const rkv_keep_list *lists,
                                 uint32_t n_lists, int64_t moves_cap_override, rkv_status *out) {
  bms_seq *q = bms_find(s, id);
  rkv_status want = RKV_OK;
  uint32_t fresh = 0, need_moves = 0, total_n = 0, cached = 0, cached_moves = 0;
  bool keep_cached = false;
  if (!q) {
    want = RKV_ERR_NOT_FOUND;
  } else {
    for (uint32_t i = 0; i < n_lists && want == RKV_OK; i++) {
      const rkv_keep_list *L = &lists[i];
      if (L->layer >= s->layers || L->head >= s->heads) {
        want = RKV_ERR_INVALID_ARG;
        break;
      }
      uint32_t k = L->layer * s->heads + L->head;
      for (uint32_t i2 = 0; i2 < i; i2++)
        if (lists[i2].layer == L->layer && lists[i2].head == L->head) want = RKV_ERR_INVALID_ARG;
      if (want != RKV_OK) break;
      if (L->n > 0 && !L->pos)
        want = RKV_ERR_INVALID_ARG;
      else if (!bms_keep_valid_(L->pos, L->n, q->st[k].len))
        want = RKV_ERR_INVALID_ARG;
      else if (q->protect &&
               ((int32_t)L->n < q->protect || L->pos[q->protect - 1] != q->protect - 1))
        want = RKV_ERR_INVALID_ARG; /* protected positions must stay in place */
      if (want != RKV_OK) break;
      uint32_t mv = 0;
      fresh +=
          bms_compact_need_(s, &q->st[k], q->protect, L->pos, L->n, &mv, &cached, &cached_moves);
      need_moves += mv;
      total_n += L->n;
    }
    if (want == RKV_OK && fresh > s->nfree) want = RKV_ERR_NO_BLOCKS;
    /* copies of cached blocks: all or none, parked blocks counted, never a failure */
    keep_cached = want == RKV_OK && cached && fresh + cached <= s->nfree;
    if (keep_cached) {
      fresh += cached;
      need_moves += cached_moves;
    }
    if (want == RKV_OK && moves_cap_override >= 0 && (uint64_t)moves_cap_override < need_moves)
      want = RKV_ERR_CAPACITY;
  }
  size_t cap = total_n;
  if (!bms_grow_((void **)&s->moves, &s->moves_cap, cap + 1, sizeof *s->moves))
    return BMS_FAIL(s, "out of memory");
  uint32_t n_moves = 0;
  rkv_slot_move *mv_buf = s->moves;
  uint32_t mv_cap = (uint32_t)cap;
  if (moves_cap_override >= 0) {
    mv_cap = (uint32_t)moves_cap_override;
    if (mv_cap == 0) mv_buf = NULL;
  }
  bms_pc_begin_(s);
  rkv_status st = rkv_blockmgr_compact(s->m, id, lists, n_lists, mv_buf, mv_cap, &n_moves);
  *out = st;
  if (bms_expect_(s, "compact", st, want)) return -1;
  if (want == RKV_ERR_CAPACITY && n_moves != need_moves)
    return BMS_FAIL(s, "compact: CAPACITY reported %u moves needed, model %u", n_moves, need_moves);
  if (want != RKV_OK) return bms_verify_unchanged_(s, id);
  /* Pass 1: validate new rows with pre-op refs. */
  bms_next_stamp_(s);
  int32_t bs = (int32_t)s->bs;
  for (uint32_t i = 0; i < n_lists; i++) {
    const rkv_keep_list *L = &lists[i];
    uint32_t k = L->layer * s->heads + L->head;
    const bms_stream *t = &q->st[k];
    const int32_t *ids;
    int32_t nr;
    if (bms_mgr_row_(s, q, k, &ids, &nr)) return -1;
    int32_t want_nr = bms_ceil_div((int32_t)L->n, bs);
    if (nr != want_nr)
      return BMS_FAIL(s, "compact: stream %u has %d blocks, model %d", k, nr, want_nr);
    for (int32_t j = 0; j < nr; j++) {
      int32_t lo = j * bs, hi = (j + 1) * bs < (int32_t)L->n ? (j + 1) * bs : (int32_t)L->n;
      bool inplace = true;
      for (int32_t p = lo; p < hi; p++) inplace = inplace && L->pos[p] == p;
      const bool copy = keep_cached && bms_cached_kept_(s, t, j, q->protect);
      if ((s->ref[t->row[j]] > 1 && !inplace) || (copy && ids[j] != t->row[j])) {
        if (bms_check_fresh_(s, ids[j], "compact (shared or cached leading block)")) return -1;
      } else if (ids[j] != t->row[j]) {
        return BMS_FAIL(s, "compact: stream %u row[%d] changed %d -> %d (ref %u, in place %d)", k,
                        j, t->row[j], ids[j], s->ref[t->row[j]], (int)inplace);
      } else if (copy) {
        if (bms_pc_reclaimed_(s, t->row[j], "compact")) return -1;
        for (int32_t p = lo; p < hi; p++) need_moves -= L->pos[p] == p; /* stay in place */
      } else if (s->ref[t->row[j]] == 1 && (!inplace || hi - lo < bs)) {
        /* tokens move in, or appends will overwrite the rest (a shared block left partly
         * filled keeps its group: the next append copies it or invalidates it) */
        bms_pc_touch_(s, t->row[j]);
      }
    }
  }
  if (n_moves != need_moves)
    return BMS_FAIL(s, "compact: %u moves, model %u (minimal plan)", n_moves, need_moves);
  /* Pass 2: update refs and rows; remember new kept tokens. */
  for (uint32_t i = 0; i < n_lists; i++) {
    const rkv_keep_list *L = &lists[i];
    uint32_t k = L->layer * s->heads + L->head;
    bms_stream *t = &q->st[k];
    const int32_t *ids;
    int32_t nr;
    if (bms_mgr_row_(s, q, k, &ids, &nr)) return -1;
    for (int32_t j = 0; j < t->nrow; j++) bms_ref_dec_(s, t->row[j]);
    for (int32_t j = 0; j < nr; j++) bms_ref_inc_(s, ids[j]);
    /* Moves still read old rows, but only through the global slot numbers in the plan. */
    bms_copy_(t->row, ids, (size_t)nr * sizeof *ids);
    t->nrow = nr;
    for (uint32_t p = 0; p < L->n; p++) t->tok[p] = t->tok[L->pos[p]];
    t->len = (int32_t)L->n;
  }
  /* Pass 3: apply the plan in order. Every destination must be a block of a listed stream's
   * new row that nobody else references (else the plan would write into shared KV). */
  bms_next_stamp_(s);
  for (uint32_t i = 0; i < n_lists; i++) {
    const bms_stream *t = &q->st[lists[i].layer * s->heads + lists[i].head];
    for (int32_t j = 0; j < t->nrow; j++) s->mark[t->row[j]] = s->stamp;
  }
  int64_t nslots = (int64_t)s->nblocks * s->bs;
  for (uint32_t i = 0; i < n_moves; i++) {
    int64_t src = s->moves[i].src, dst = s->moves[i].dst;
    if (src < 0 || src >= nslots || dst < 0 || dst >= nslots)
      return BMS_FAIL(s, "compact: move %u %" PRId64 " -> %" PRId64 " out of range", i, src, dst);
    int32_t db = (int32_t)(dst / s->bs);
    if (s->mark[db] != s->stamp || s->ref[db] != 1)
      return BMS_FAIL(s, "compact: move %u writes block %d (ref %u) outside the compacted rows", i,
                      db, s->ref[db]);
    s->slot_tok[dst] = s->slot_tok[src];
  }
  bms_note_peak_(s);
  q->tmpl = -1;
  if (bms_verify_counts(s) || bms_pc_end_(s, fresh)) return -1;
  return bms_verify_seq(s, q);
}

static inline int bms_compact(bm_shadow *s, int64_t id, const rkv_keep_list *lists,
                              uint32_t n_lists, rkv_status *out) {
  return bms_compact_ex(s, id, lists, n_lists, -1, out);
}

/* Over the streams a cut of `layer` (all when < 0) to keep cuts, the leading blocks after the
 * whole protected ones: *shared counts those with ref > 1, *cached the cached ones held alone;
 * with `touch`, every one held alone changes content (its group goes). With `kept` (after a
 * call that may have reclaimed), *kept counts the cached ones whose group the manager still
 * has, and every other one's group must have gone to that call's reclaim: -1 if not. */
static inline int bms_cut_leads_(bm_shadow *s, const bms_seq *q, int32_t layer, int32_t keep,
                                 bool touch, uint32_t *shared, uint32_t *cached, uint32_t *kept) {
  const int32_t bs = (int32_t)s->bs, fixed = q->protect / bs, nbn = bms_ceil_div(keep, bs);
  *shared = *cached = 0;
  if (kept) *kept = 0;
  for (uint32_t k = 0; k < s->S; k++) {
    const bms_stream *t = &q->st[k];
    if ((layer >= 0 && k / s->heads != (uint32_t)layer) || t->len <= keep) continue;
    for (int32_t j = fixed; j < nbn; j++) {
      const int32_t b = t->row[j];
      const bool alone_cached = s->ref[b] == 1 && s->pc && s->bgrp[b] >= 0;
      *shared += s->ref[b] > 1;
      *cached += alone_cached;
      if (touch && s->ref[b] == 1) bms_pc_touch_(s, b);
      if (!kept || !alone_cached) continue;
      if (bms_pc_cached_(s, s->grp[s->bgrp[b]].hash))
        ++*kept;
      else if (bms_pc_reclaimed_(s, b, "compact_prepare"))
        return -1;
    }
  }
  return 0;
}

/* rkv_blockmgr_compact_fresh_bound and _compact_copy_bound before a uniform cut, against the
 * model: the first counts the shared kept blocks after the protected prefix (exactly what the
 * cut copies, `fresh`); the second also the cached ones and the first `registering` of each
 * cut stream, each once (registering 0, 1 and 3). */
static inline int bms_check_bounds_(bm_shadow *s, const bms_seq *q, int64_t id, int32_t layer,
                                    int32_t keep, uint32_t fresh) {
  const int32_t bs = (int32_t)s->bs, fixed = q->protect / bs, nbn = bms_ceil_div(keep, bs);
  uint32_t got = 0;
  if (rkv_blockmgr_compact_fresh_bound(s->m, id, layer, keep, &got) != RKV_OK || got != fresh)
    return BMS_FAIL(s, "compact_fresh_bound: %u, model %u (%s)", got, fresh,
                    rkv_blockmgr_last_error(s->m));
  const uint32_t regs[3] = {0, 1, 3};
  for (int i = 0; i < 3; i++) {
    const int32_t named = (int32_t)regs[i] < nbn ? (int32_t)regs[i] : nbn;
    uint32_t want = 0;
    for (uint32_t k = 0; k < s->S; k++) {
      const bms_stream *t = &q->st[k];
      if ((layer >= 0 && k / s->heads != (uint32_t)layer) || t->len <= keep) continue;
      for (int32_t j = fixed; j < nbn; j++)
        want += j < named || s->ref[t->row[j]] > 1 || (s->pc && s->bgrp[t->row[j]] >= 0);
    }
    if (rkv_blockmgr_compact_copy_bound(s->m, id, layer, keep, 0, regs[i], &got) != RKV_OK ||
        got != want)
      return BMS_FAIL(s, "compact_copy_bound (registering %u): %u, model %u (%s)", regs[i], got,
                      want, rkv_blockmgr_last_error(s->m));
  }
  return 0;
}

/* rkv_blockmgr_compact_uniform; the model then plays the device: it picks a random sorted
 * subset of `keep` old positions per cut stream and gathers those tokens into the new row
 * (reading the old rows the call reported). short_cap 1 / 2 passes one map / one old-block
 * entry too few, which must fail with RKV_ERR_CAPACITY and report the need. */
static inline int bms_compact_uniform_ex(bm_shadow *s, int64_t id, int32_t layer, int32_t keep,
                                         int short_cap, rkv_status *out) {
  bms_seq *q = bms_find(s, id);
  rkv_status want = RKV_OK;
  uint32_t fresh = 0, cached = 0, touched = 0, old_total = 0, old_touched = 0;
  bool keep_cached = false;
  int32_t bs = (int32_t)s->bs;
  /* blocks wholly inside the protected prefix are never rewritten */
  const int32_t fixed = q ? q->protect / bs : 0;
  if (!q) {
    want = RKV_ERR_NOT_FOUND;
  } else if (layer >= (int32_t)s->layers || keep < 0 || keep < q->protect) {
    want = RKV_ERR_INVALID_ARG;
  } else {
    for (uint32_t k = 0; k < s->S; k++) {
      const bms_stream *t = &q->st[k];
      old_total += (uint32_t)t->nrow;
      if (layer >= 0 && k / s->heads != (uint32_t)layer) continue;
      if (t->len <= keep) continue;
      touched++;
      old_touched += (uint32_t)t->nrow;
    }
    bms_cut_leads_(s, q, layer, keep, false, &fresh, &cached, NULL);
    if (fresh > s->nfree) want = RKV_ERR_NO_BLOCKS;
    if (bms_check_bounds_(s, q, id, layer, keep, fresh)) return -1;
    /* the device may rewrite every leading block: cached ones are copied (all or none,
     * parked blocks counted) */
    keep_cached = cached && fresh + cached <= s->nfree;
  }
  if (want != RKV_OK || (short_cap == 1 && touched == 0) || (short_cap == 2 && old_touched == 0))
    short_cap = 0; /* only the capacity is wrong, or the call is not made short */
  if (short_cap) want = RKV_ERR_CAPACITY;
  if (want != RKV_OK) keep_cached = false;
  if (keep_cached) fresh += cached;
  if (!bms_grow_((void **)&s->old_blocks, &s->old_cap, old_total + 1, sizeof *s->old_blocks))
    return BMS_FAIL(s, "out of memory");
  uint32_t n_maps = 0, n_old = 0;
  uint32_t maps_cap = short_cap == 1 ? touched - 1 : s->S;
  uint32_t old_cap = short_cap == 2 ? old_touched - 1 : (uint32_t)s->old_cap;
  bms_pc_begin_(s);
  rkv_status st = rkv_blockmgr_compact_uniform(s->m, id, layer, keep, s->maps, maps_cap, &n_maps,
                                               s->old_blocks, old_cap, &n_old);
  *out = st;
  if (bms_expect_(s, "compact_uniform", st, want)) return -1;
  if (short_cap == 1 && n_maps != touched)
    return BMS_FAIL(s, "compact_uniform: CAPACITY reported %u maps needed, model %u", n_maps,
                    touched);
  if (short_cap == 2 && n_old != old_touched)
    return BMS_FAIL(s, "compact_uniform: CAPACITY reported %u old blocks needed, model %u", n_old,
                    old_touched);
  if (want != RKV_OK) return bms_verify_unchanged_(s, id);
  if (n_old != old_touched)
    return BMS_FAIL(s, "compact_uniform: %u old blocks, model %u", n_old, old_touched);
  if (n_maps != touched) return BMS_FAIL(s, "compact_uniform: %u maps, model %u", n_maps, touched);
  /* Pass 1: maps describe the old rows; new rows keep unshared leading blocks. */
  bms_next_stamp_(s);
  for (uint32_t i = 0; i < n_maps; i++) {
    const rkv_compact_map *mp = &s->maps[i];
    if (mp->layer >= s->layers || mp->head >= s->heads)
      return BMS_FAIL(s, "compact_uniform: map %u bad stream", i);
    uint32_t k = mp->layer * s->heads + mp->head;
    const bms_stream *t = &q->st[k];
    if ((layer >= 0 && mp->layer != (uint32_t)layer) || t->len <= keep || mp->old_len != t->len ||
        mp->new_len != keep || mp->old_n_blocks != t->nrow || mp->old_offset < 0 ||
        (uint32_t)(mp->old_offset + mp->old_n_blocks) > n_old)
      return BMS_FAIL(s, "compact_uniform: map %u (stream %u) old_len %d new_len %d old %d+%d", i,
                      k, mp->old_len, mp->new_len, mp->old_offset, mp->old_n_blocks);
    for (int32_t j = 0; j < t->nrow; j++)
      if (s->old_blocks[mp->old_offset + j] != t->row[j])
        return BMS_FAIL(s, "compact_uniform: map %u old row[%d] = %d, model %d", i, j,
                        s->old_blocks[mp->old_offset + j], t->row[j]);
    for (uint32_t i2 = 0; i2 < i; i2++)
      if (s->maps[i2].layer == mp->layer && s->maps[i2].head == mp->head)
        return BMS_FAIL(s, "compact_uniform: stream %u mapped twice", k);
    const int32_t *ids;
    int32_t nr;
    if (bms_mgr_row_(s, q, k, &ids, &nr)) return -1;
    if (nr != bms_ceil_div(keep, bs))
      return BMS_FAIL(s, "compact_uniform: stream %u has %d blocks", k, nr);
    for (int32_t j = 0; j < nr; j++) {
      const bool copy = j >= fixed && keep_cached && s->bgrp[t->row[j]] >= 0 &&
                        s->ref[t->row[j]] == 1 && ids[j] == t->row[j];
      const bool copied = !copy && j >= fixed &&
                          (s->ref[t->row[j]] > 1 || (keep_cached && s->bgrp[t->row[j]] >= 0));
      if (copied) {
        if (bms_check_fresh_(s, ids[j], "compact_uniform (shared or cached leading block)"))
          return -1;
      } else if (copy) {
        if (bms_pc_reclaimed_(s, t->row[j], "compact_uniform")) return -1;
      } else if (j >= fixed) {
        bms_pc_touch_(s, t->row[j]); /* the device may move kept tokens into it */
      }
      if (!copied && ids[j] != t->row[j]) {
        return BMS_FAIL(s, "compact_uniform: stream %u row[%d] changed %d -> %d", k, j, t->row[j],
                        ids[j]);
      }
    }
  }
  /* Pass 2: gather (device simulation) and update refs and rows. */
  if (!bms_grow_((void **)&s->tmp_tok, &s->tmp_cap, (size_t)keep + 1, sizeof *s->tmp_tok))
    return BMS_FAIL(s, "out of memory");
  for (uint32_t i = 0; i < n_maps; i++) {
    const rkv_compact_map *mp = &s->maps[i];
    bms_stream *t = &q->st[mp->layer * s->heads + mp->head];
    const int32_t *ids;
    int32_t nr;
    if (bms_mgr_row_(s, q, mp->layer * s->heads + mp->head, &ids, &nr)) return -1;
    /* Selection sampling: a uniformly random sorted subset of `keep` old positions that
     * holds the protected ones (eviction selects among the tokens after them). */
    int32_t chosen = 0;
    for (int32_t p = 0; p < t->len && chosen < keep; p++) {
      if (p < q->protect ||
          bms_below(&s->rng, (uint32_t)(t->len - p)) < (uint32_t)(keep - chosen)) {
        int64_t src = (int64_t)s->old_blocks[mp->old_offset + p / bs] * bs + p % bs;
        s->tmp_tok[chosen] = s->slot_tok[src];
        if (s->tmp_tok[chosen] != t->tok[p])
          return BMS_FAIL(s, "compact_uniform: old slot of pos %d lost its token", p);
        chosen++;
      }
    }
    for (int32_t j = 0; j < t->nrow; j++) bms_ref_dec_(s, t->row[j]);
    for (int32_t j = 0; j < nr; j++) bms_ref_inc_(s, ids[j]);
    bms_copy_(t->row, ids, (size_t)nr * sizeof *ids);
    t->nrow = nr;
    t->len = keep;
    for (int32_t p = 0; p < keep; p++) {
      t->tok[p] = s->tmp_tok[p];
      s->slot_tok[bms_slot_(s, t->row, p)] = s->tmp_tok[p];
    }
  }
  /* Every written block must be private now (the protected ones are not written). */
  for (uint32_t i = 0; i < n_maps; i++) {
    const bms_stream *t = &q->st[s->maps[i].layer * s->heads + s->maps[i].head];
    for (int32_t j = fixed; j < t->nrow; j++)
      if (s->ref[t->row[j]] != 1)
        return BMS_FAIL(s, "compact_uniform: cut stream keeps shared block %d", t->row[j]);
  }
  bms_note_peak_(s);
  q->tmpl = -1;
  if (bms_verify_counts(s) || bms_pc_end_(s, fresh)) return -1;
  return bms_verify_seq(s, q);
}

static inline int bms_compact_uniform(bm_shadow *s, int64_t id, int32_t layer, int32_t keep,
                                      rkv_status *out) {
  return bms_compact_uniform_ex(s, id, layer, keep, 0, out);
}

/* rkv_blockmgr_seq_restore with lens [S]; the model then writes fresh tokens into the new
 * blocks (the caller's swap-in). */
static inline int bms_restore(bm_shadow *s, int64_t id, const int32_t *lens, rkv_status *out) {
  rkv_status want = RKV_OK;
  uint32_t need = 0;
  for (uint32_t k = 0; k < s->S; k++) {
    if (lens[k] < 0)
      want = RKV_ERR_INVALID_ARG;
    else
      need += (uint32_t)bms_ceil_div(lens[k], (int32_t)s->bs);
  }
  if (id < 0) want = RKV_ERR_INVALID_ARG;
  if (want == RKV_OK) {
    if (bms_find(s, id))
      want = RKV_ERR_EXISTS;
    else if (s->nlive >= s->max_seqs)
      want = RKV_ERR_CAPACITY;
    else if (need > s->nfree)
      want = RKV_ERR_NO_BLOCKS;
  }
  bms_pc_begin_(s);
  rkv_status st = rkv_blockmgr_seq_restore(s->m, id, lens);
  *out = st;
  if (bms_expect_(s, "seq_restore", st, want)) return -1;
  if (want != RKV_OK) return bms_verify_unchanged_(s, id);
  bms_seq *q = bms_free_slot_(s);
  q->live = true;
  q->id = id;
  q->protect = 0;
  q->tmpl = -1;
  s->nlive++;
  bms_next_stamp_(s);
  for (uint32_t k = 0; k < s->S; k++) {
    bms_stream *t = &q->st[k];
    const int32_t *ids;
    int32_t nr;
    if (bms_mgr_row_(s, q, k, &ids, &nr)) return -1;
    if (nr != bms_ceil_div(lens[k], (int32_t)s->bs))
      return BMS_FAIL(s, "restore: stream %u has %d blocks for len %d", k, nr, lens[k]);
    for (int32_t j = 0; j < nr; j++)
      if (bms_check_fresh_(s, ids[j], "restore")) return -1;
    if (!bms_stream_reserve_(t, lens[k], nr)) return BMS_FAIL(s, "out of memory");
    bms_copy_(t->row, ids, (size_t)nr * sizeof *ids);
    t->nrow = nr;
    t->len = lens[k];
  }
  for (uint32_t k = 0; k < s->S; k++) {
    bms_stream *t = &q->st[k];
    for (int32_t j = 0; j < t->nrow; j++) bms_ref_inc_(s, t->row[j]);
    for (int32_t p = 0; p < t->len; p++)
      s->slot_tok[bms_slot_(s, t->row, p)] = t->tok[p] = s->next_tok++;
  }
  bms_note_peak_(s);
  if (bms_verify_counts(s) || bms_pc_end_(s, need)) return -1;
  return bms_verify_seq(s, q);
}

/* ---- Random operation mixes (property test, stress) -------------------------------------- */

/* Writes a random strictly increasing keep list over [0, len) into pos; returns its size.
 * Shapes: empty, full, prefix, suffix, or each position kept with a random probability. */
static inline uint32_t bms_random_keep(uint64_t *rng, int32_t len, int32_t *pos) {
  uint32_t n = 0, mode = bms_below(rng, 10);
  if (len == 0 || mode == 0) return 0;
  if (mode == 1) {
    for (int32_t p = 0; p < len; p++) pos[n++] = p;
  } else if (mode == 2 || mode == 3) {
    int32_t cut = (int32_t)bms_below(rng, (uint32_t)len + 1);
    for (int32_t p = mode == 2 ? 0 : cut; p < (mode == 2 ? cut : len); p++) pos[n++] = p;
  } else {
    uint32_t thr = bms_below(rng, 1025);
    for (int32_t p = 0; p < len; p++)
      if (bms_below(rng, 1024) < thr) pos[n++] = p;
  }
  return n;
}

/* Prepares s->lists over a random non-empty subset of streams of q (random order), with keep
 * lists in s->keep_pos. Returns the number of lists, or -1 when out of memory. */
static inline int bms_random_lists(bm_shadow *s, uint64_t *rng, const bms_seq *q) {
  int32_t maxlen = 1;
  for (uint32_t k = 0; k < s->S; k++)
    if (q->st[k].len > maxlen) maxlen = q->st[k].len;
  size_t cap = s->keep_seg * s->S;
  /* +2: bms_random_bad_op may append up to two positions past a full list. */
  if ((size_t)maxlen + 2 > s->keep_seg) {
    size_t seg = (size_t)maxlen * 2 + 2;
    int32_t *p = realloc(s->keep_pos, seg * s->S * sizeof *p);
    if (!p) return -1;
    s->keep_pos = p;
    s->keep_seg = seg;
    cap = seg * s->S;
  }
  (void)cap;
  uint32_t n = 0;
  uint32_t start = bms_below(rng, s->S);
  bool all = bms_below(rng, 4) == 0;
  for (uint32_t i = 0; i < s->S; i++) {
    uint32_t k = (start + i * 7919u) % s->S; /* 7919 is prime: a permutation unless S % 7919 */
    if (!all && bms_below(rng, 2) && !(i == s->S - 1 && n == 0)) continue;
    int32_t *pos = s->keep_pos + (size_t)k * s->keep_seg;
    rkv_keep_list *L = &s->lists[n++];
    L->layer = k / s->heads;
    L->head = k % s->heads;
    L->pos = pos;
    L->n = bms_random_keep(rng, q->st[k].len, pos);
  }
  /* A duplicate stream (the permutation above can repeat when S is a multiple of 7919). */
  for (uint32_t i = 0; i < n; i++)
    for (uint32_t j = 0; j < i; j++)
      if (s->lists[i].layer == s->lists[j].layer && s->lists[i].head == s->lists[j].head) {
        s->lists[i] = s->lists[--n];
        i--;
        break;
      }
  return (int)n;
}

/* Picks an id: usually a live sequence, sometimes a fresh or unknown one. */
static inline int64_t bms_pick_live_(bm_shadow *s, uint64_t *rng) {
  if (s->nlive == 0) return (int64_t)bms_below(rng, 2 * s->max_seqs);
  return bms_nth_live(s, bms_below(rng, s->nlive))->id;
}
static inline int64_t bms_pick_unused_(bm_shadow *s, uint64_t *rng) {
  for (;;) {
    int64_t id = (int64_t)bms_below(rng, 4 * s->max_seqs + 4);
    if (!bms_find(s, id)) return id;
  }
}

/* ---- Prefix-cache drivers ------------------------------------------------------------ */

/* Leading hashes the model holds: the hit rkv_blockmgr_prefix_match must return. */
static inline uint32_t bms_pc_hit_(const bm_shadow *s, const uint64_t *hashes, uint32_t n) {
  uint32_t i = 0;
  while (s->pc && i < n && bms_pc_find_(s, hashes[i]) >= 0) i++;
  return i;
}

/* prefix_match over hashes[0, n), then prefix_cost of the first `cost_n` (a cost_n past the
 * hit must be RKV_ERR_NOT_FOUND). Neither call changes anything. */
static inline int bms_prefix_match(bm_shadow *s, const uint64_t *hashes, uint32_t n,
                                   uint32_t cost_n, uint32_t *hit_out) {
  uint32_t want = bms_pc_hit_(s, hashes, n), hit = 99, cost = 99, want_cost = 0;
  bms_pc_begin_(s);
  rkv_status st = rkv_blockmgr_prefix_match(s->m, hashes, n, &hit);
  if (st != RKV_OK || hit != want)
    return BMS_FAIL(s, "prefix_match: %s hit %u, model %u", rkv_status_name(st), hit, want);
  if (hit_out) *hit_out = hit;
  rkv_status want_st = bms_pc_hit_(s, hashes, cost_n) < cost_n ? RKV_ERR_NOT_FOUND : RKV_OK;
  for (uint32_t i = 0; want_st == RKV_OK && i < cost_n; i++) {
    const bms_group *G = &s->grp[bms_pc_find_(s, hashes[i])];
    for (uint32_t k = 0; k < s->S; k++) want_cost += s->ref[G->blk[k]] == 0;
  }
  st = rkv_blockmgr_prefix_cost(s->m, hashes, cost_n, &cost);
  if (bms_expect_(s, "prefix_cost", st, want_st)) return -1;
  if (st == RKV_OK && cost != want_cost)
    return BMS_FAIL(s, "prefix_cost(%u): %u blocks, model %u", cost_n, cost, want_cost);
  return bms_verify_counts(s) || bms_pc_end_(s, 0) ? -1 : 0;
}

/* rkv_blockmgr_seq_create_cached: the new sequence maps exactly the registered tokens. */
static inline int bms_create_cached(bm_shadow *s, int64_t id, const uint64_t *hashes, uint32_t hit,
                                    rkv_status *out) {
  rkv_status want = RKV_OK;
  if ((uint64_t)hit * s->bs >= (1ull << 31))
    want = RKV_ERR_INVALID_ARG;
  else if (bms_pc_hit_(s, hashes, hit) < hit)
    want = RKV_ERR_NOT_FOUND;
  else if (id < 0)
    want = RKV_ERR_INVALID_ARG;
  else if (bms_find(s, id))
    want = RKV_ERR_EXISTS;
  else if (s->nlive >= s->max_seqs)
    want = RKV_ERR_CAPACITY;
  bms_pc_begin_(s);
  rkv_status st = rkv_blockmgr_seq_create_cached(s->m, id, hashes, hit);
  *out = st;
  if (bms_expect_(s, "seq_create_cached", st, want)) return -1;
  if (want != RKV_OK) return bms_verify_unchanged_(s, id);
  bms_seq *q = bms_free_slot_(s);
  int32_t len = (int32_t)(hit * s->bs);
  for (uint32_t k = 0; k < s->S; k++) {
    bms_stream *t = &q->st[k];
    if (!bms_stream_reserve_(t, len, (int32_t)hit)) return BMS_FAIL(s, "out of memory");
    for (uint32_t i = 0; i < hit; i++) {
      const bms_group *G = &s->grp[bms_pc_find_(s, hashes[i])];
      t->row[i] = G->blk[k];
      bms_copy_(t->tok + (size_t)i * s->bs, G->tok + (size_t)k * s->bs, s->bs * sizeof *t->tok);
      bms_ref_inc_(s, G->blk[k]);
    }
    t->nrow = (int32_t)hit;
    t->len = len;
  }
  q->live = true;
  q->id = id;
  q->protect = 0;
  q->tmpl = -1;
  s->nlive++;
  if (s->pc) {
    s->pst.lookups++;
    s->pst.hit_groups += hit;
  }
  bms_note_peak_(s);
  if (bms_verify_counts(s) || bms_pc_end_(s, 0)) return -1;
  return bms_verify_seq(s, q);
}

/* rkv_blockmgr_prefix_insert: registers group i of id under hashes[i] unless the hash is
 * cached, some stream lacks a full block i, or one of its blocks is in a group already. */
static inline int bms_prefix_insert(bm_shadow *s, int64_t id, const uint64_t *hashes, uint32_t n,
                                    rkv_status *out) {
  bms_seq *q = bms_find(s, id);
  rkv_status want = !s->pc ? RKV_ERR_STATE : !q ? RKV_ERR_NOT_FOUND : RKV_OK;
  uint32_t got = 99, added = 0;
  bms_pc_begin_(s);
  rkv_status st = rkv_blockmgr_prefix_insert(s->m, id, hashes, n, &got);
  *out = st;
  if (bms_expect_(s, "prefix_insert", st, want)) return -1;
  if (want != RKV_OK)
    return got == 0 ? bms_verify_unchanged_(s, id) : BMS_FAIL(s, "insert: %u", got);
  for (uint32_t i = 0; i < n; i++) {
    bool ok = bms_pc_find_(s, hashes[i]) < 0;
    for (uint32_t k = 0; ok && k < s->S; k++)
      ok = q->st[k].nrow > (int32_t)i && q->st[k].len >= (int32_t)((i + 1) * s->bs) &&
           s->bgrp[q->st[k].row[i]] < 0;
    if (!ok) continue;
    uint32_t g = 0;
    while (g < s->gcap && s->grp[g].live) g++;
    if (g == s->gcap) return BMS_FAIL(s, "model: more groups than nblocks / streams");
    bms_group *G = &s->grp[g];
    G->live = true;
    G->hash = hashes[i];
    for (uint32_t k = 0; k < s->S; k++) {
      G->blk[k] = q->st[k].row[i];
      s->bgrp[G->blk[k]] = (int32_t)g;
      bms_copy_(G->tok + (size_t)k * s->bs, s->slot_tok + (size_t)G->blk[k] * s->bs,
                s->bs * sizeof *G->tok);
    }
    added++;
  }
  s->pst.inserted += added;
  if (got != added) return BMS_FAIL(s, "prefix_insert: %u inserted, model %u", got, added);
  return bms_pc_end_(s, 0);
}

/* rkv_blockmgr_prefix_clear: every group goes, no counter moves. */
static inline int bms_prefix_clear(bm_shadow *s) {
  bms_pc_begin_(s);
  rkv_blockmgr_prefix_clear(s->m);
  for (uint32_t g = 0; s->pc && g < s->gcap; g++)
    if (s->grp[g].live) bms_pc_drop_(s, g);
  return bms_verify_counts(s) || bms_pc_end_(s, 0) ? -1 : 0;
}

/* rkv_blockmgr_seq_protect: n in [0, shortest stream]. */
static inline int bms_protect(bm_shadow *s, int64_t id, int32_t n, rkv_status *out) {
  bms_seq *q = bms_find(s, id);
  rkv_status want = q ? RKV_OK : RKV_ERR_NOT_FOUND;
  for (uint32_t k = 0; q && k < s->S; k++)
    if (n > q->st[k].len) want = RKV_ERR_INVALID_ARG;
  if (q && n < 0) want = RKV_ERR_INVALID_ARG;
  bms_pc_begin_(s);
  rkv_status st = rkv_blockmgr_seq_protect(s->m, id, n);
  *out = st;
  if (bms_expect_(s, "seq_protect", st, want)) return -1;
  if (want != RKV_OK) return bms_verify_unchanged_(s, id);
  q->protect = n;
  if (bms_pc_end_(s, 0)) return -1;
  return bms_verify_seq(s, q);
}

/* rkv_blockmgr_compact_prepare: the model counts, over the streams a cut of `layer` to `keep`
 * would cut, the shared and the cached (held alone) leading blocks after the whole protected
 * ones. With room in the pool (parked blocks included) for all their copies, the oldest parked
 * groups are reclaimed until the free list holds them and the cached blocks still cached come
 * back; else the cached ones' groups go and 0 comes back. */
static inline int bms_compact_prepare(bm_shadow *s, int64_t id, int32_t layer, int32_t keep,
                                      rkv_status *out) {
  bms_seq *q = bms_find(s, id);
  rkv_status want = RKV_OK;
  uint32_t shared = 0, cached = 0;
  if (layer >= (int32_t)s->layers || keep < 0) { /* arguments first, then the sequence */
    want = RKV_ERR_INVALID_ARG;
  } else if (!q) {
    want = RKV_ERR_NOT_FOUND;
  } else {
    bms_cut_leads_(s, q, layer, keep, false, &shared, &cached, NULL);
  }
  bms_pc_begin_(s);
  uint32_t copies = 99;
  rkv_status st = rkv_blockmgr_compact_prepare(s->m, id, layer, keep, &copies);
  *out = st;
  if (bms_expect_(s, "compact_prepare", st, want)) return -1;
  if (want != RKV_OK) return bms_verify_unchanged_(s, id);
  const bool room = cached && shared + cached <= s->nfree;
  uint32_t kept = 0, n_shared = 0, n_cached = 0;
  if (room && bms_cut_leads_(s, q, layer, keep, false, &n_shared, &n_cached, &kept)) return -1;
  if (copies != kept)
    return BMS_FAIL(s, "compact_prepare: %u copies, model %u (%u shared, %u cached, room %d)",
                    copies, kept, shared, cached, (int)room);
  if (cached && !room) bms_cut_leads_(s, q, layer, keep, true, &n_shared, &n_cached, NULL);
  if (bms_verify_counts(s) || bms_pc_end_(s, room ? shared + cached : 0)) return -1;
  return bms_verify_seq(s, q);
}

/* Forces every list to keep the protected prefix of q in place (what an eviction policy that
 * honours protection produces): positions [0, p) followed by the list's positions >= p. */
static inline void bms_keep_protected_(bm_shadow *s, const bms_seq *q, uint32_t n_lists) {
  int32_t p = q->protect;
  for (uint32_t l = 0; p > 0 && l < n_lists; l++) {
    rkv_keep_list *L = &s->lists[l];
    int32_t *pos = (int32_t *)L->pos;
    uint32_t j = 0;
    while (j < L->n && pos[j] < p) j++;
    memmove(pos + p, pos + j, (L->n - j) * sizeof *pos);
    for (int32_t i = 0; i < p; i++) pos[i] = i;
    L->n = (uint32_t)p + (L->n - j);
  }
}

/* A request for template t as a scheduler admits it: match, share the hit, compute the rest
 * of the prompt (plus a partial block now and then), register the prompt's full blocks,
 * and often protect the shared prefix. `skew` (0 most of the time) asks for one group more
 * than the hit (RKV_ERR_NOT_FOUND when the hit is short of the template) or fewer. */
static inline int bms_prompt(bm_shadow *s, uint64_t *rng, int64_t id, uint32_t t, int skew,
                             rkv_status *st) {
  const uint64_t *h = s->tmpl_hash[t];
  uint32_t nb = s->tmpl_blocks[t], hit = 0;
  if (bms_prefix_match(s, h, nb, bms_below(rng, nb + 1), &hit)) return -1;
  uint32_t ask = hit;
  if (skew > 0 && ask < nb) ask++;
  if (skew < 0 && ask > 0) ask = bms_below(rng, ask);
  if (bms_create_cached(s, id, h, ask, st)) return -1;
  if (*st != RKV_OK) return 0;
  uint32_t rest = (nb - ask) * s->bs + (bms_below(rng, 4) == 0 ? bms_below(rng, s->bs) : 0);
  rkv_status a = RKV_OK;
  if (rest && bms_append(s, id, rest, bms_below(rng, 2) != 0, &a)) return -1;
  if (a != RKV_OK) return 0; /* out of blocks: the request waits with what it shares */
  bms_seq *q = bms_find(s, id);
  q->tmpl = (int32_t)t;
  if (bms_prefix_insert(s, id, h, nb, &a)) return -1;
  if (bms_below(rng, 2)) return bms_protect(s, id, (int32_t)(ask * s->bs), &a);
  return 0;
}

/* One random prefix-cache operation (only with config.prefix_cache); returns its kind. */
static inline int bms_random_prefix_op(bm_shadow *s, uint64_t *rng, int *kind, rkv_status *st) {
  uint32_t r = bms_below(rng, 100);
  *st = RKV_OK;
  bms_seq *q = s->nlive ? bms_find(s, bms_pick_live_(s, rng)) : NULL;
  if (r < 45 || !q) {
    *kind = BMS_OP_CACHED;
    int64_t id = bms_below(rng, 16) == 0 && q ? q->id : bms_pick_unused_(s, rng);
    int skew = bms_below(rng, 8) == 0 ? (bms_below(rng, 2) ? 1 : -1) : 0;
    return bms_prompt(s, rng, id, bms_below(rng, BMS_TMPL), skew, st);
  }
  if (r < 60) {
    *kind = BMS_OP_INSERT;
    /* a sequence still holding its template re-registers it (groups dropped since come
     * back); others register nothing, or an unknown id fails */
    uint32_t n = q->tmpl >= 0 ? s->tmpl_blocks[q->tmpl] : 0;
    const uint64_t *h = q->tmpl >= 0 ? s->tmpl_hash[q->tmpl] : NULL;
    int64_t id = bms_below(rng, 8) == 0 ? bms_pick_unused_(s, rng) : q->id;
    return bms_prefix_insert(s, id, h, n, st);
  }
  if (r < 72) {
    *kind = BMS_OP_PROTECT;
    int32_t shortest = INT32_MAX;
    for (uint32_t k = 0; k < s->S; k++)
      if (q->st[k].len < shortest) shortest = q->st[k].len;
    uint32_t mode = bms_below(rng, 8);
    int32_t n = mode == 0   ? shortest + 1 + (int32_t)bms_below(rng, 3)
                : mode == 1 ? -1
                : mode == 2 ? 0
                            : (int32_t)bms_below(rng, (uint32_t)shortest + 1);
    if (mode > 3) n -= n % (int32_t)s->bs; /* block-aligned, as a cached prefix is */
    int64_t id = bms_below(rng, 16) == 0 ? bms_pick_unused_(s, rng) : q->id;
    return bms_protect(s, id, n, st);
  }
  if (r < 80) {
    *kind = BMS_OP_PREPARE; /* any layer or all, any keep up to the longest stream + 2 */
    int32_t maxlen = 0;
    for (uint32_t k = 0; k < s->S; k++)
      if (q->st[k].len > maxlen) maxlen = q->st[k].len;
    int32_t layer = bms_below(rng, 2) ? -1 : (int32_t)bms_below(rng, s->layers + 1);
    int32_t keep = (int32_t)bms_below(rng, (uint32_t)maxlen + 3) - (bms_below(rng, 32) == 0);
    int64_t id = bms_below(rng, 16) == 0 ? bms_pick_unused_(s, rng) : q->id;
    return bms_compact_prepare(s, id, layer, keep, st);
  }
  if (r < 96) {
    *kind = BMS_OP_MATCH;
    uint32_t t = bms_below(rng, BMS_TMPL);
    return bms_prefix_match(s, s->tmpl_hash[t], s->tmpl_blocks[t],
                            bms_below(rng, s->tmpl_blocks[t] + 1), NULL);
  }
  *kind = BMS_OP_PCLEAR;
  return bms_prefix_clear(s);
}

/* One malformed or impossible call that must fail with the predicted status and change
 * nothing (the drivers check both). */
static inline int bms_random_bad_op(bm_shadow *s, uint64_t *rng, rkv_status *st) {
  int64_t unknown = bms_pick_unused_(s, rng);
  bms_seq *q = s->nlive ? bms_find(s, bms_pick_live_(s, rng)) : NULL;
  uint32_t kind = bms_below(rng, q ? 14 : 4);
  switch (kind) {
    case 0:
      return bms_append(s, unknown, 1 + bms_below(rng, 8), true, st);
    case 1:
      return bms_free(s, unknown, st);
    case 2:
      return bms_fork(s, unknown, bms_pick_unused_(s, rng), st);
    case 3: {
      rkv_keep_list L = {0, 0, NULL, 0};
      return bms_compact(s, unknown, &L, 1, st);
    }
    case 4:
      return bms_create(s, q->id, st);
    case 5:
      return bms_fork(s, q->id, q->id, st);
    case 6:
      return bms_append(s, q->id, 0, true, st);
    case 7:
      return bms_compact_uniform(s, q->id, (int32_t)s->layers, 0, st);
    case 8:
      return bms_compact_uniform(s, q->id, -1, -1 - (int32_t)bms_below(rng, 3), st);
    case 12: /* maps or old-block buffer one entry short (when the cut touches anything) */
    case 13: {
      int32_t maxlen = 0;
      for (uint32_t k = 0; k < s->S; k++)
        if (q->st[k].len > maxlen) maxlen = q->st[k].len;
      int32_t layer = bms_below(rng, 2) ? -1 : (int32_t)bms_below(rng, s->layers);
      return bms_compact_uniform_ex(s, q->id, layer, (int32_t)bms_below(rng, (uint32_t)maxlen + 1),
                                    kind == 12 ? 1 : 2, st);
    }
    default: {
      int nl = bms_random_lists(s, rng, q);
      if (nl < 0) return BMS_FAIL(s, "out of memory");
      rkv_keep_list *L = &s->lists[0];
      int32_t len = q->st[L->layer * s->heads + L->head].len;
      int32_t *pos = (int32_t *)L->pos;
      if (kind == 9) { /* unsorted or duplicate positions */
        if (L->n >= 2) {
          int32_t t = pos[0];
          pos[0] = pos[L->n - 1];
          pos[L->n - 1] = t;
        } else if (L->n == 1) {
          pos[1] = pos[0];
          L->n = 2;
        } else {
          pos[0] = 0;
          L->n = 1;
          if (len > 0) return bms_compact(s, q->id, s->lists, (uint32_t)nl, st); /* valid */
        }
      } else if (kind == 10) { /* out of range: past the end, or negative */
        pos[L->n] = bms_below(rng, 2) ? len + (int32_t)bms_below(rng, 3) : -1;
        if (pos[L->n] < 0) {
          pos[0] = -1;
          if (L->n == 0) L->n = 1;
        } else {
          L->n++;
        }
      } else { /* a stream listed twice, or a bad layer */
        if (bms_below(rng, 2)) {
          s->lists[nl] = s->lists[0];
          nl++;
        } else {
          L->layer = s->layers + bms_below(rng, 3);
        }
      }
      return bms_compact(s, q->id, s->lists, (uint32_t)nl, st);
    }
  }
}

/* One random operation from the standard mix; updates c. Free probability rises with pool
 * pressure so sequences churn and NO_BLOCKS is frequent but not permanent. */
static inline int bms_random_op(bm_shadow *s, uint64_t *rng, uint32_t max_append, bms_counts *c) {
  rkv_status st = RKV_OK;
  int kind, ret;
  uint32_t r = bms_below(rng, 1000);
  uint32_t pressure = (s->nblocks - s->nfree) * 100u / s->nblocks;  /* percent used */
  uint32_t p_free = 40 + (pressure > 60 ? (pressure - 60) * 8 : 0); /* per mille */
  if (s->pc && r % 5 == 0) { /* a fifth of the ops with a prefix cache */
    ret = bms_random_prefix_op(s, rng, &kind, &st);
  } else if (s->nlive == 0 || r < 60) {
    kind = BMS_OP_CREATE;
    int64_t id = bms_below(rng, 8) == 0 ? bms_pick_live_(s, rng) : bms_pick_unused_(s, rng);
    ret = bms_create(s, id, &st);
  } else if (r < 60 + p_free) {
    kind = BMS_OP_FREE;
    ret = bms_free(s, bms_pick_live_(s, rng), &st);
  } else if (r < 220 + p_free) {
    kind = BMS_OP_FORK;
    ret = bms_fork(s, bms_pick_live_(s, rng), bms_pick_unused_(s, rng), &st);
  } else if (r < 340 + p_free) {
    kind = BMS_OP_COMPACT;
    bms_seq *q = bms_find(s, bms_pick_live_(s, rng));
    int nl = bms_random_lists(s, rng, q);
    if (nl < 0) return BMS_FAIL(s, "out of memory");
    /* mostly honour the protected prefix; the rest must fail with INVALID_ARG */
    if (q->protect && bms_below(rng, 8) != 0) bms_keep_protected_(s, q, (uint32_t)nl);
    if (bms_below(rng, 16) == 0) { /* a too-small move buffer (CAPACITY when anything moves) */
      ret = bms_compact_ex(s, q->id, s->lists, (uint32_t)nl, 0, &st);
    } else {
      ret = bms_compact(s, q->id, s->lists, (uint32_t)nl, &st);
    }
  } else if (r < 400 + p_free) {
    kind = BMS_OP_UNIFORM;
    bms_seq *q = bms_find(s, bms_pick_live_(s, rng));
    int32_t maxlen = 0;
    for (uint32_t k = 0; k < s->S; k++)
      if (q->st[k].len > maxlen) maxlen = q->st[k].len;
    int32_t layer = bms_below(rng, 3) == 0 ? -1 : (int32_t)bms_below(rng, s->layers);
    int32_t keep = (int32_t)bms_below(rng, (uint32_t)maxlen + 2);
    if (q->protect && bms_below(rng, 8) != 0)
      keep = q->protect + (int32_t)bms_below(rng, (uint32_t)(maxlen - q->protect) + 2);
    ret = bms_compact_uniform(s, q->id, layer, keep, &st);
  } else if (r < 420 + p_free) {
    kind = BMS_OP_RESTORE;
    uint32_t maxlen = 1 + bms_below(rng, 3 * max_append);
    for (uint32_t k = 0; k < s->S; k++) s->lens[k] = (int32_t)bms_below(rng, maxlen + 1);
    int64_t id = bms_below(rng, 8) == 0 ? bms_pick_live_(s, rng) : bms_pick_unused_(s, rng);
    ret = bms_restore(s, id, s->lens, &st);
  } else if (r < 500 + p_free) {
    kind = BMS_OP_BAD;
    ret = bms_random_bad_op(s, rng, &st);
  } else {
    kind = BMS_OP_APPEND;
    /* copies = NULL now and then: valid unless a shared partial tail must be copied. */
    ret = bms_append_ex(s, bms_pick_live_(s, rng), 1 + bms_below(rng, max_append),
                        bms_below(rng, 8) != 0, bms_below(rng, 8) != 0, &st);
  }
  c->ops++;
  c->kind[kind]++;
  if (st == RKV_OK) c->ok[kind]++;
  if (st == RKV_ERR_NO_BLOCKS) c->no_blocks++;
  return ret;
}

/* Frees every live sequence and proves the pool is whole again. Returns -1 on a mismatch or
 * when blocks leaked (*leaked = used blocks left over). */
static inline int bms_free_all(bm_shadow *s, uint32_t *leaked) {
  rkv_status st;
  while (s->nlive > 0)
    if (bms_free(s, bms_nth_live(s, 0)->id, &st)) return -1;
  rkv_blockmgr_stats stt;
  rkv_blockmgr_get_stats(s->m, &stt);
  *leaked = stt.used_blocks;
  if (stt.used_blocks != 0 || stt.free_blocks != s->nblocks)
    return BMS_FAIL(s, "after freeing everything: %u blocks still used", stt.used_blocks);
  return bms_verify_all(s);
}

#endif /* RKV_BM_SHADOW_H */
