/* CSR export: exact indptr / indices / last_len arrays for a small batch, export_size, the
 * table view (lengths agree with the manager), CAPACITY with the needed nnz, unknown
 * sequences, bad layer, empty streams and an empty batch. */
#include "bm_test_util.h"

static void test_export_exact(void) {
  /* 2 layers x 2 heads, block 4. seq 5: restore lens (layer-major) {5, 0, 9, 4};
   * seq 6: lens {1, 2, 3, 8}. Block ids are popped in order, so rows are predictable. */
  rkv_blockmgr *m = bmt_make(32, 4, 2, 2, 4);
  int32_t l5[4] = {5, 0, 9, 4}, l6[4] = {1, 2, 3, 8};
  EXPECT_OK(rkv_blockmgr_seq_restore(m, 5, l5)); /* rows: {0,1} {} {2,3,4} {5} */
  EXPECT_OK(rkv_blockmgr_seq_restore(m, 6, l6)); /* rows: {6} {7} {8} {9,10} */
  int64_t batch[2] = {6, 5};
  uint32_t nnz = 0;
  EXPECT_OK(rkv_blockmgr_export_size(m, 1, batch, 2, &nnz));
  EXPECT_EQ_INT(nnz, 1 + 2 + 3 + 1);
  int32_t indptr[5], indices[16], last[4];
  rkv_block_table t;
  memset(&t, 0, sizeof t);
  EXPECT_OK(rkv_blockmgr_export_csr(m, 1, batch, 2, indptr, indices, 16, last, &nnz, &t));
  EXPECT_EQ_INT(nnz, 7);
  const int32_t want_ptr[5] = {0, 1, 3, 6, 7};
  const int32_t want_idx[7] = {8, 9, 10, 2, 3, 4, 5};
  const int32_t want_last[4] = {3, 4, 1, 4};
  for (int i = 0; i < 5; i++) EXPECT_EQ_INT(indptr[i], want_ptr[i]);
  for (int i = 0; i < 7; i++) EXPECT_EQ_INT(indices[i], want_idx[i]);
  for (int i = 0; i < 4; i++) EXPECT_EQ_INT(last[i], want_last[i]);
  EXPECT_EQ_INT(t.num_streams, 4);
  EXPECT_EQ_INT(t.block_size, 4);
  EXPECT(t.indptr == indptr && t.indices == indices && t.last_len == last);
  for (int b = 0; b < 2; b++)
    for (uint32_t h = 0; h < 2; h++)
      EXPECT_EQ_INT(rkv_block_table_stream_len(&t, b * 2 + (int32_t)h), bmt_len(m, batch[b], 1, h));

  /* Layer 0 has an empty stream: no blocks, last_len 0. */
  EXPECT_OK(rkv_blockmgr_export_csr(m, 0, batch + 1, 1, indptr, indices, 16, last, &nnz, NULL));
  EXPECT_EQ_INT(nnz, 2);
  EXPECT(indptr[0] == 0 && indptr[1] == 2 && indptr[2] == 2);
  EXPECT(indices[0] == 0 && indices[1] == 1);
  EXPECT(last[0] == 1 && last[1] == 0);

  /* CAPACITY reports the need; errors. */
  nnz = 0;
  EXPECT_STATUS(rkv_blockmgr_export_csr(m, 1, batch, 2, indptr, indices, 6, last, &nnz, NULL),
                RKV_ERR_CAPACITY);
  EXPECT_EQ_INT(nnz, 7);
  int64_t badb[2] = {6, 7};
  EXPECT_STATUS(rkv_blockmgr_export_csr(m, 1, badb, 2, indptr, indices, 16, last, &nnz, NULL),
                RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_export_size(m, 1, badb, 2, &nnz), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_export_csr(m, 2, batch, 2, indptr, indices, 16, last, &nnz, NULL),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_export_size(m, 2, batch, 2, &nnz), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_export_csr(m, 1, NULL, 2, indptr, indices, 16, last, &nnz, NULL),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_export_csr(m, 1, batch, 2, NULL, indices, 16, last, &nnz, NULL),
                RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_export_size(m, 1, batch, 2, NULL), RKV_ERR_INVALID_ARG);
  /* Empty batch. */
  EXPECT_OK(rkv_blockmgr_export_csr(m, 0, NULL, 0, indptr, NULL, 0, last, &nnz, &t));
  EXPECT_EQ_INT(nnz, 0);
  EXPECT_EQ_INT(indptr[0], 0);
  EXPECT_EQ_INT(t.num_streams, 0);
  rkv_blockmgr_destroy(m);
}

/* Export follows mutations: after appends, a fork with CoW and a compaction, the table of
 * every layer reproduces stream_blocks / stream_len for every stream. */
static void test_export_tracks_state(void) {
  rkv_blockmgr *m = bmt_make(200, 8, 3, 2, 8);
  uint64_t rng = 11;
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 21, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 1, 2));
  rkv_block_copy cp[6];
  uint32_t nc;
  EXPECT_OK(rkv_blockmgr_append(m, 2, 5, NULL, cp, &nc));
  EXPECT_EQ_INT(nc, 6);
  int32_t pos[30];
  int n = 0;
  for (int p = 0; p < 26; p++)
    if (rkv_test_rand(&rng) % 2) pos[n++] = p;
  rkv_keep_list kl = {2, 1, pos, (uint32_t)n};
  rkv_slot_move mv[30];
  uint32_t nm;
  EXPECT_OK(rkv_blockmgr_compact(m, 2, &kl, 1, mv, 30, &nm));
  int64_t batch[2] = {1, 2};
  int bad = 0;
  for (uint32_t layer = 0; layer < 3; layer++) {
    int32_t indptr[5], indices[64], last[4];
    uint32_t nnz;
    rkv_block_table t;
    EXPECT_OK(rkv_blockmgr_export_csr(m, layer, batch, 2, indptr, indices, 64, last, &nnz, &t));
    for (int b = 0; b < 2; b++) {
      for (uint32_t h = 0; h < 2; h++) {
        int s = b * 2 + (int)h;
        int32_t nb;
        const int32_t *row = bmt_row(m, batch[b], layer, h, &nb);
        bad += indptr[s + 1] - indptr[s] != nb;
        for (int j = 0; j < nb; j++) bad += indices[indptr[s] + j] != row[j];
        bad += rkv_block_table_stream_len(&t, s) != bmt_len(m, batch[b], layer, h);
      }
    }
  }
  EXPECT_EQ_INT(bad, 0);
  EXPECT_EQ_INT(bmt_len(m, 2, 2, 1), n);
  rkv_blockmgr_destroy(m);
}

int main(void) {
  test_export_exact();
  test_export_tracks_state();
  return rkv_test_finish();
}
