/* The block manager's plans applied to a real CPU KV pool: every token's K and V rows and
 * score get values unique to it, then fork + copy-on-write (rkv_kv_pool_copy_blocks) and
 * compaction (rkv_kv_pool_apply_moves) must leave exactly the kept tokens' K/V, in order, at
 * positions 0..k-1 of each stream, without disturbing the sequence that shares blocks.
 * Also a swap-out / seq_restore / swap-in round trip through read_blocks / write_blocks. */
#include "bm_test_util.h"

enum { L = 2, H = 2, S = L * H, BS = 4, D = 3, NB = 96, MAXLEN = 64 };

typedef struct ref_seq {
  int64_t id;
  int32_t len[S];
  float tok[S][MAXLEN]; /* token value at each position */
} ref_seq;

static float *kv_base(rkv_kv_pool *p) {
  return rkv_kv_pool_base(p);
}

static void write_token(rkv_kv_pool *p, int64_t slot, float v) {
  const rkv_kv_layout *l = rkv_kv_pool_layout(p);
  uint8_t *blk = (uint8_t *)kv_base(p) + (size_t)(slot / BS) * rkv_kv_block_bytes(l);
  for (int d = 0; d < D; d++) {
    rkv_dtype_store(l->dtype, blk + rkv_kv_k_offset(l, (uint32_t)(slot % BS)), (size_t)d, v + d);
    rkv_dtype_store(l->dtype, blk + rkv_kv_v_offset(l, (uint32_t)(slot % BS)), (size_t)d, -v - d);
  }
  rkv_kv_pool_scores(p)[slot] = v;
}

static int token_ok(rkv_kv_pool *p, int64_t slot, float v) {
  const rkv_kv_layout *l = rkv_kv_pool_layout(p);
  const uint8_t *blk = (const uint8_t *)kv_base(p) + (size_t)(slot / BS) * rkv_kv_block_bytes(l);
  int ok = rkv_kv_pool_scores(p)[slot] == v;
  for (int d = 0; d < D; d++) {
    ok &= rkv_dtype_load(l->dtype, blk + rkv_kv_k_offset(l, (uint32_t)(slot % BS)), (size_t)d) ==
          v + d;
    ok &= rkv_dtype_load(l->dtype, blk + rkv_kv_v_offset(l, (uint32_t)(slot % BS)), (size_t)d) ==
          -v - d;
  }
  return ok;
}

static int verify(const rkv_blockmgr *m, rkv_kv_pool *p, const ref_seq *q) {
  int bad = 0;
  for (int s = 0; s < S; s++) {
    bad += bmt_len(m, q->id, (uint32_t)s / H, (uint32_t)s % H) != q->len[s];
    for (int32_t i = 0; i < q->len[s]; i++) {
      int64_t slot = -1;
      rkv_blockmgr_stream_slot(m, q->id, (uint32_t)s / H, (uint32_t)s % H, i, &slot);
      bad += !token_ok(p, slot, q->tok[s][i]);
    }
  }
  return bad;
}

static float next_val = 1.0f;

static void append(rkv_blockmgr *m, rkv_kv_pool *p, ref_seq *q, uint32_t n) {
  int64_t slots[S * 16];
  rkv_block_copy cp[S];
  uint32_t nc = 0;
  EXPECT_OK(rkv_blockmgr_append(m, q->id, n, slots, cp, &nc));
  EXPECT_OK(rkv_kv_pool_copy_blocks(p, cp, nc)); /* before writing the new tokens */
  for (int s = 0; s < S; s++) {
    for (uint32_t t = 0; t < n; t++) {
      float v = next_val;
      next_val += 8.0f; /* exact in f32, distinct per token and per d */
      write_token(p, slots[s * (int)n + (int)t], v);
      q->tok[s][q->len[s]++] = v;
    }
  }
}

int main(void) {
  rkv_blockmgr_config c = RKV_BLOCKMGR_CONFIG_INIT;
  c.num_blocks = NB;
  c.block_size = BS;
  c.num_layers = L;
  c.num_kv_heads = H;
  c.head_dim = D;
  c.dtype = RKV_DTYPE_F32;
  c.max_seqs = 8;
  c.check_every_op = true;
  rkv_blockmgr *m = NULL;
  EXPECT_OK(rkv_blockmgr_create(&c, &m));
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  bc.num_threads = 1;
  rkv_backend *be = NULL;
  EXPECT_OK(rkv_backend_create(&bc, &be));
  rkv_kv_layout layout = rkv_blockmgr_kv_layout(m);
  rkv_kv_pool *pool = NULL;
  EXPECT_OK(rkv_kv_pool_create(be, &layout, NB, &pool));
  if (!m || !be || !pool) return rkv_test_finish();

  static ref_seq a, b;
  memset(&a, 0, sizeof a);
  a.id = 1;
  EXPECT_OK(rkv_blockmgr_seq_create(m, a.id));
  append(m, pool, &a, 7);
  append(m, pool, &a, 3); /* length 10, partial tails */
  EXPECT_EQ_INT(verify(m, pool, &a), 0);

  /* Fork: the child's first append copies each shared partial tail. */
  b = a;
  b.id = 2;
  EXPECT_OK(rkv_blockmgr_seq_fork(m, a.id, b.id));
  append(m, pool, &b, 5);
  append(m, pool, &a, 2);
  EXPECT_EQ_INT(verify(m, pool, &a), 0);
  EXPECT_EQ_INT(verify(m, pool, &b), 0);

  /* Compact the parent: keep a prefix (shared block in place), then scattered positions,
   * with a different list per stream and one stream left alone. */
  rkv_keep_list kl[3];
  int32_t p0[] = {0, 1, 2, 3, 5, 11};      /* block 0 in place (shared), block 1 fresh */
  int32_t p1[] = {2, 3, 4, 9};             /* everything moves */
  int32_t p3[] = {0, 1, 2, 3, 4, 5, 6, 7}; /* shared blocks kept by reference, no moves */
  kl[0] = (rkv_keep_list){0, 0, p0, 6};
  kl[1] = (rkv_keep_list){0, 1, p1, 4};
  kl[2] = (rkv_keep_list){1, 1, p3, 8};
  rkv_slot_move mv[64];
  uint32_t nm = 0;
  EXPECT_OK(rkv_blockmgr_compact(m, a.id, kl, 3, mv, 64, &nm));
  EXPECT_OK(rkv_kv_pool_apply_moves(pool, mv, nm));
  for (int l = 0; l < 3; l++) {
    int s = (int)(kl[l].layer * H + kl[l].head);
    float keep[MAXLEN];
    for (uint32_t i = 0; i < kl[l].n; i++) keep[i] = a.tok[s][kl[l].pos[i]];
    memcpy(a.tok[s], keep, kl[l].n * sizeof(float));
    a.len[s] = (int32_t)kl[l].n;
  }
  EXPECT_EQ_INT(verify(m, pool, &a), 0);
  EXPECT_EQ_INT(verify(m, pool, &b), 0); /* the sharer is untouched */

  /* Keep appending to both, compacting the child with random lists, several rounds. */
  uint64_t rng = 77;
  for (int round = 0; round < 20; round++) {
    append(m, pool, &a, 1 + (uint32_t)(rkv_test_rand(&rng) % 5));
    append(m, pool, &b, 1 + (uint32_t)(rkv_test_rand(&rng) % 5));
    ref_seq *q = round % 2 ? &a : &b;
    int32_t pos[S][MAXLEN];
    rkv_keep_list lists[S];
    for (int s = 0; s < S; s++) {
      uint32_t n = 0;
      for (int32_t i = 0; i < q->len[s]; i++)
        if (rkv_test_rand(&rng) % 3) pos[s][n++] = i;
      lists[s] = (rkv_keep_list){(uint32_t)s / H, (uint32_t)s % H, pos[s], n};
    }
    EXPECT_OK(rkv_blockmgr_compact(m, q->id, lists, S, mv, 64, &nm));
    EXPECT_OK(rkv_kv_pool_apply_moves(pool, mv, nm));
    for (int s = 0; s < S; s++) {
      for (uint32_t i = 0; i < lists[s].n; i++) q->tok[s][i] = q->tok[s][pos[s][i]];
      q->len[s] = (int32_t)lists[s].n;
    }
    EXPECT_EQ_INT(verify(m, pool, &a), 0);
    EXPECT_EQ_INT(verify(m, pool, &b), 0);
    if (round == 10) {
      /* Fork again from the compacted one to exercise shared-in-place + CoW together. */
      EXPECT_OK(rkv_blockmgr_seq_free(m, b.id));
      b = a;
      b.id = 3;
      EXPECT_OK(rkv_blockmgr_seq_fork(m, a.id, b.id));
    }
  }

  /* Swap-out / swap-in of b: read its blocks, free, restore, write back. */
  size_t bb = rkv_kv_block_bytes(&layout);
  int32_t lens[S], total = 0;
  for (int s = 0; s < S; s++) lens[s] = b.len[s], total += (b.len[s] + BS - 1) / BS;
  uint8_t *host = malloc((size_t)total * bb + 1);
  int32_t *ids = malloc((size_t)total * sizeof(int32_t) + 4);
  int k = 0;
  for (int s = 0; s < S; s++) {
    int32_t nb;
    const int32_t *row = bmt_row(m, b.id, (uint32_t)s / H, (uint32_t)s % H, &nb);
    for (int j = 0; j < nb; j++) ids[k++] = row[j];
  }
  EXPECT_OK(rkv_kv_pool_read_blocks(pool, ids, (size_t)total, host));
  EXPECT_OK(rkv_blockmgr_seq_free(m, b.id));
  EXPECT_OK(rkv_blockmgr_seq_restore(m, b.id, lens));
  k = 0;
  for (int s = 0; s < S; s++) {
    int32_t nb;
    const int32_t *row = bmt_row(m, b.id, (uint32_t)s / H, (uint32_t)s % H, &nb);
    for (int j = 0; j < nb; j++) ids[k++] = row[j];
  }
  EXPECT_OK(rkv_kv_pool_write_blocks(pool, ids, (size_t)total, host));
  /* Scores are not part of the block bytes: restore them from the model. */
  for (int s = 0; s < S; s++)
    for (int32_t i = 0; i < b.len[s]; i++) {
      int64_t slot;
      EXPECT_OK(rkv_blockmgr_stream_slot(m, b.id, (uint32_t)s / H, (uint32_t)s % H, i, &slot));
      rkv_kv_pool_scores(pool)[slot] = b.tok[s][i];
    }
  EXPECT_EQ_INT(verify(m, pool, &b), 0);
  EXPECT_EQ_INT(verify(m, pool, &a), 0);
  free(host);
  free(ids);

  EXPECT_OK(rkv_blockmgr_seq_free(m, a.id));
  EXPECT_OK(rkv_blockmgr_seq_free(m, b.id));
  EXPECT_EQ_INT(bmt_free_blocks(m), NB);
  rkv_kv_pool_destroy(pool);
  rkv_backend_destroy(be);
  rkv_blockmgr_destroy(m);
  return rkv_test_finish();
}
