/* Helpers shared by the block manager unit tests: a manager factory (check_every_op on, or off),
 * and a digest of every observable piece of state (stats, every sequence's lengths and rows,
 * every block's ref count) so "a failed call changed nothing" is one comparison. */
#ifndef BM_TEST_UTIL_H
#define BM_TEST_UTIL_H

#include <rkv/blockmgr.h>

#include "rkv_test.h"

/* A manager with the invariant walk after every operation, or without it: then nothing reads
 * a sequence's lengths between calls, so appended tokens stay pending (what engines see
 * between steps). Exits on failure. */
static inline rkv_blockmgr *bmt_make_opt(uint32_t num_blocks, uint32_t block_size, uint32_t layers,
                                         uint32_t heads, uint32_t max_seqs, bool check_every_op) {
  rkv_blockmgr_config c = RKV_BLOCKMGR_CONFIG_INIT;
  c.num_blocks = num_blocks;
  c.block_size = block_size;
  c.num_layers = layers;
  c.num_kv_heads = heads;
  c.max_seqs = max_seqs;
  c.check_every_op = check_every_op;
  rkv_blockmgr *m = NULL;
  rkv_status st = rkv_blockmgr_create(&c, &m);
  if (st != RKV_OK) {
    fprintf(stderr, "bmt_make: %s\n", rkv_status_name(st));
    exit(1);
  }
  return m;
}

static inline rkv_blockmgr *bmt_make(uint32_t num_blocks, uint32_t block_size, uint32_t layers,
                                     uint32_t heads, uint32_t max_seqs) {
  return bmt_make_opt(num_blocks, block_size, layers, heads, max_seqs, true);
}

static inline uint64_t bmt_mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
  return h * 0xBF58476D1CE4E5B9ull;
}

/* Digest of all state visible through the public API. */
static inline uint64_t bmt_digest(const rkv_blockmgr *m) {
  uint64_t h = 1469598103934665603ull;
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(m, &st);
  h = bmt_mix(h, st.free_blocks);
  h = bmt_mix(h, st.used_blocks);
  h = bmt_mix(h, st.shared_blocks);
  h = bmt_mix(h, st.num_seqs);
  h = bmt_mix(h, st.token_slots);
  h = bmt_mix(h, st.peak_used_blocks);
  const rkv_blockmgr_config *c = rkv_blockmgr_get_config(m);
  for (uint32_t b = 0; b < c->num_blocks; b++) {
    uint32_t r = 0;
    rkv_blockmgr_block_ref(m, (int32_t)b, &r);
    h = bmt_mix(h, r);
  }
  uint32_t n = rkv_blockmgr_num_seqs(m);
  int64_t *ids = malloc((n + 1) * sizeof(int64_t));
  rkv_blockmgr_list_seqs(m, ids, n);
  for (uint32_t i = 0; i < n; i++) {
    h = bmt_mix(h, (uint64_t)ids[i]);
    for (uint32_t l = 0; l < c->num_layers; l++) {
      for (uint32_t hd = 0; hd < c->num_kv_heads; hd++) {
        int32_t len = -1, nb = -1;
        const int32_t *row = NULL;
        rkv_blockmgr_stream_len(m, ids[i], l, hd, &len);
        rkv_blockmgr_stream_blocks(m, ids[i], l, hd, &row, &nb);
        h = bmt_mix(h, (uint64_t)len);
        h = bmt_mix(h, (uint64_t)nb);
        for (int32_t j = 0; j < nb; j++) h = bmt_mix(h, (uint64_t)row[j]);
      }
    }
  }
  free(ids);
  return h;
}

static inline uint32_t bmt_free_blocks(const rkv_blockmgr *m) {
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(m, &st);
  return st.free_blocks;
}

static inline uint32_t bmt_ref(const rkv_blockmgr *m, int32_t b) {
  uint32_t r = 999;
  rkv_blockmgr_block_ref(m, b, &r);
  return r;
}

static inline int32_t bmt_len(const rkv_blockmgr *m, int64_t seq, uint32_t layer, uint32_t head) {
  int32_t len = -1;
  rkv_blockmgr_stream_len(m, seq, layer, head, &len);
  return len;
}

static inline const int32_t *bmt_row(const rkv_blockmgr *m, int64_t seq, uint32_t layer,
                                     uint32_t head, int32_t *n) {
  const int32_t *row = NULL;
  *n = -1;
  rkv_blockmgr_stream_blocks(m, seq, layer, head, &row, n);
  return row;
}

#endif /* BM_TEST_UTIL_H */
