/* Block manager basics: config validation, sequence lifecycle and its errors, append slot
 * mapping, NO_BLOCKS exactness (blocks_needed / can_append agree with append), free returning
 * everything, seq_restore, list_seqs, stats, caller allocator accounting and allocation
 * failures, and id-map churn over 100k ids. check() runs after every mutation
 * (check_every_op) and explicitly here and there. */
#include "bm_test_util.h"

/* ---- config ---------------------------------------------------------------------------- */

typedef struct log_capture {
  int n;
  char last[512];
} log_capture;

static void capture_log(void *ctx, rkv_log_level level, const char *msg) {
  log_capture *c = ctx;
  (void)level;
  c->n++;
  snprintf(c->last, sizeof c->last, "%s", msg);
}

static void expect_bad_config(rkv_blockmgr_config c, const char *what) {
  log_capture cap = {0, ""};
  rkv_logger lg = {capture_log, &cap, RKV_LOG_DEBUG};
  c.logger = &lg;
  rkv_blockmgr *m = (rkv_blockmgr *)&cap; /* poison: must become NULL */
  EXPECT_STATUS(rkv_blockmgr_create(&c, &m), RKV_ERR_INVALID_ARG);
  EXPECT(m == NULL);
  char err[256];
  EXPECT_STATUS(rkv_blockmgr_validate_config(&c, err, sizeof err), RKV_ERR_INVALID_ARG);
  if (strstr(err, what) == NULL) {
    fprintf(stderr, "FAIL: error \"%s\" does not mention \"%s\"\n", err, what);
    rkv_test_failed_++;
  }
  /* The logger is only readable when the struct is big enough to hold it. */
  if (c.struct_size >= sizeof(rkv_blockmgr_config))
    EXPECT(cap.n >= 1 && strstr(cap.last, what) != NULL);
}

static void test_config(void) {
  rkv_blockmgr_config good = RKV_BLOCKMGR_CONFIG_INIT;
  good.num_blocks = 64;
  rkv_blockmgr_config c = good;
  c.num_blocks = 0;
  expect_bad_config(c, "num_blocks");
  c = good, c.block_size = 0;
  expect_bad_config(c, "block_size");
  c = good, c.block_size = 1025;
  expect_bad_config(c, "block_size");
  c = good, c.num_layers = 0;
  expect_bad_config(c, "num_layers");
  c = good, c.num_kv_heads = 0;
  expect_bad_config(c, "num_kv_heads");
  c = good, c.num_layers = 257, c.num_kv_heads = 256;
  expect_bad_config(c, "streams");
  c = good, c.head_dim = 0;
  expect_bad_config(c, "head_dim");
  c = good, c.head_dim = 4097;
  expect_bad_config(c, "head_dim");
  c = good, c.dtype = (rkv_dtype)7;
  expect_bad_config(c, "dtype");
  c = good, c.struct_size = 4;
  expect_bad_config(c, "struct_size");
  c = good, c.struct_size = sizeof(rkv_blockmgr_config) + 8;
  expect_bad_config(c, "struct_size");
  c = good, c.watermark = -0.1f;
  expect_bad_config(c, "watermark");
  c = good, c.watermark = 1.5f;
  expect_bad_config(c, "watermark");
  c = good, c.watermark = NAN;
  expect_bad_config(c, "watermark");
  c = good, c.num_blocks = 1u << 21, c.block_size = 1024;
  expect_bad_config(c, "2^31");

  rkv_blockmgr *m = NULL;
  EXPECT_STATUS(rkv_blockmgr_create(NULL, &m), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_create(&good, NULL), RKV_ERR_INVALID_ARG);
  char err[64] = "x";
  EXPECT_OK(rkv_blockmgr_validate_config(&good, err, sizeof err));
  EXPECT_STREQ(err, "");

  /* Largest legal values and defaults filled in. */
  c = good, c.num_layers = 256, c.num_kv_heads = 256, c.num_blocks = 4, c.max_seqs = 2;
  EXPECT_OK(rkv_blockmgr_create(&c, &m));
  EXPECT_EQ_INT(rkv_blockmgr_streams_per_seq(m), 65536);
  rkv_blockmgr_destroy(m);
  EXPECT_OK(rkv_blockmgr_create(&good, &m));
  const rkv_blockmgr_config *in = rkv_blockmgr_get_config(m);
  EXPECT_EQ_INT(in->max_seqs, 4096);
  EXPECT_EQ_INT(in->struct_size, sizeof(rkv_blockmgr_config));
  EXPECT_STREQ(rkv_blockmgr_last_error(m), "");
  rkv_kv_layout l = rkv_blockmgr_kv_layout(m);
  EXPECT_EQ_INT(l.block_size, 16);
  EXPECT_EQ_INT(l.head_dim, 128);
  EXPECT_EQ_INT(l.dtype, RKV_DTYPE_BF16);
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);

  /* An old, shorter struct: fields past struct_size take their defaults. */
  c = good;
  c.struct_size = 8;
  EXPECT_OK(rkv_blockmgr_create(&c, &m));
  EXPECT_EQ_INT(rkv_blockmgr_get_config(m)->block_size, 16);
  EXPECT_EQ_INT(rkv_blockmgr_get_config(m)->num_blocks, 64);
  rkv_blockmgr_destroy(m);
  rkv_blockmgr_destroy(NULL);
  EXPECT_STATUS(rkv_blockmgr_check(NULL), RKV_ERR_INVALID_ARG);
}

/* ---- sequences and append ------------------------------------------------------------- */

static void test_seq_lifecycle(void) {
  rkv_blockmgr *m = bmt_make(32, 4, 1, 2, 3);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 10));
  EXPECT_STATUS(rkv_blockmgr_seq_create(m, 10), RKV_ERR_EXISTS);
  EXPECT(strstr(rkv_blockmgr_last_error(m), "10") != NULL);
  EXPECT_STATUS(rkv_blockmgr_seq_create(m, -1), RKV_ERR_INVALID_ARG);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 0));
  EXPECT_OK(rkv_blockmgr_seq_create(m, INT64_MAX));
  uint64_t d = bmt_digest(m);
  EXPECT_STATUS(rkv_blockmgr_seq_create(m, 11), RKV_ERR_CAPACITY);
  EXPECT(bmt_digest(m) == d);
  EXPECT_EQ_INT(rkv_blockmgr_num_seqs(m), 3);
  EXPECT(rkv_blockmgr_seq_exists(m, INT64_MAX));
  EXPECT(!rkv_blockmgr_seq_exists(m, 11));
  EXPECT(!rkv_blockmgr_seq_exists(m, -5));
  int64_t ids[4] = {-1, -1, -1, -1};
  EXPECT_EQ_INT(rkv_blockmgr_list_seqs(m, ids, 2), 3);
  EXPECT(ids[2] == -1); /* cap respected */
  EXPECT_EQ_INT(rkv_blockmgr_list_seqs(m, ids, 4), 3);
  int seen10 = 0, seen0 = 0, seenmax = 0;
  for (int i = 0; i < 3; i++) {
    seen10 += ids[i] == 10;
    seen0 += ids[i] == 0;
    seenmax += ids[i] == INT64_MAX;
  }
  EXPECT(seen10 == 1 && seen0 == 1 && seenmax == 1);
  EXPECT_EQ_INT(rkv_blockmgr_list_seqs(m, NULL, 0), 3);
  EXPECT_OK(rkv_blockmgr_seq_free(m, 0));
  EXPECT_STATUS(rkv_blockmgr_seq_free(m, 0), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_seq_free(m, -3), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_append(m, 12345, 1, NULL, NULL, NULL), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_append(m, 10, 0, NULL, NULL, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 11)); /* the freed slot is reused */
  EXPECT_EQ_INT(rkv_blockmgr_num_seqs(m), 3);
  /* NULL handle */
  EXPECT_STATUS(rkv_blockmgr_seq_create(NULL, 1), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_append(NULL, 1, 1, NULL, NULL, NULL), RKV_ERR_INVALID_ARG);
  EXPECT(!rkv_blockmgr_seq_exists(NULL, 1));
  EXPECT_EQ_INT(rkv_blockmgr_num_seqs(NULL), 0);
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
}

static void test_append_slots(void) {
  /* 2 layers x 2 heads = 4 streams, block 4: the first append pops 0..3 in stream order. */
  rkv_blockmgr *m = bmt_make(64, 4, 2, 2, 8);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 7));
  int64_t slots[4 * 6];
  uint32_t nc = 99;
  EXPECT_OK(rkv_blockmgr_append(m, 7, 3, slots, NULL, &nc));
  EXPECT_EQ_INT(nc, 0);
  for (int s = 0; s < 4; s++)
    for (int t = 0; t < 3; t++) EXPECT_EQ_INT(slots[s * 3 + t], s * 4 + t);
  /* Position 3 fills each first block, position 4 opens blocks 4..7. */
  EXPECT_OK(rkv_blockmgr_append(m, 7, 2, slots, NULL, &nc));
  for (int s = 0; s < 4; s++) {
    EXPECT_EQ_INT(slots[s * 2 + 0], s * 4 + 3);
    EXPECT_EQ_INT(slots[s * 2 + 1], (4 + s) * 4 + 0);
  }
  /* Fast path (room 3): slots still exact. */
  EXPECT_OK(rkv_blockmgr_append(m, 7, 3, slots, NULL, NULL));
  for (int s = 0; s < 4; s++)
    for (int t = 0; t < 3; t++) EXPECT_EQ_INT(slots[s * 3 + t], (4 + s) * 4 + 1 + t);
  int32_t nb;
  const int32_t *row = bmt_row(m, 7, 1, 0, &nb);
  EXPECT_EQ_INT(nb, 2);
  EXPECT_EQ_INT(row[0], 2);
  EXPECT_EQ_INT(row[1], 6);
  EXPECT_EQ_INT(bmt_len(m, 7, 1, 1), 8);
  int64_t slot;
  EXPECT_OK(rkv_blockmgr_stream_slot(m, 7, 1, 1, 5, &slot));
  EXPECT_EQ_INT(slot, 7 * 4 + 1);
  EXPECT_STATUS(rkv_blockmgr_stream_slot(m, 7, 1, 1, 8, &slot), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_stream_slot(m, 7, 1, 1, -1, &slot), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_stream_len(m, 7, 2, 0, &nb), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_stream_len(m, 7, 0, 2, &nb), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_stream_len(m, 8, 0, 0, &nb), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_stream_len(m, 7, 0, 0, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_stream_blocks(m, 7, 0, 0, NULL, &nb), RKV_ERR_INVALID_ARG);
  /* A long append in one call spanning several blocks. */
  int64_t big[4 * 13];
  EXPECT_OK(rkv_blockmgr_append(m, 7, 13, big, NULL, NULL));
  for (int s = 0; s < 4; s++) {
    for (int t = 0; t < 13; t++) {
      int64_t want;
      EXPECT_OK(rkv_blockmgr_stream_slot(m, 7, (uint32_t)s / 2, (uint32_t)s % 2, 8 + t, &want));
      EXPECT_EQ_INT(big[s * 13 + t], want);
    }
  }
  EXPECT_EQ_INT(bmt_len(m, 7, 0, 0), 21);
  uint32_t r;
  EXPECT_OK(rkv_blockmgr_block_ref(m, 0, &r));
  EXPECT_EQ_INT(r, 1);
  EXPECT_STATUS(rkv_blockmgr_block_ref(m, 64, &r), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_block_ref(m, -1, &r), RKV_ERR_INVALID_ARG);
  EXPECT_OK(rkv_blockmgr_seq_free(m, 7));
  EXPECT_EQ_INT(bmt_free_blocks(m), 64);
  rkv_blockmgr_destroy(m);
}

/* blocks_needed / can_append predict append exactly; a refused append changes nothing. */
static void test_no_blocks_exact(void) {
  rkv_blockmgr *m = bmt_make(23, 4, 1, 3, 4);
  uint64_t rng = 42;
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_seq_create(m, 2));
  int refused = 0, accepted = 0;
  for (int it = 0; it < 400; it++) {
    int64_t seq = 1 + (int64_t)(rkv_test_rand(&rng) % 2);
    uint32_t n = 1 + (uint32_t)(rkv_test_rand(&rng) % 9);
    uint32_t need = 0;
    EXPECT_OK(rkv_blockmgr_blocks_needed(m, seq, n, &need));
    /* Independent arithmetic: every stream of this test has the same length. */
    int32_t len = bmt_len(m, seq, 0, 0);
    int32_t want = 3 * ((len + (int32_t)n + 3) / 4 - (len + 3) / 4);
    EXPECT_EQ_INT(need, want);
    uint32_t before = bmt_free_blocks(m);
    bool can = rkv_blockmgr_can_append(m, seq, n);
    EXPECT(can == (need <= before));
    uint64_t d = bmt_digest(m);
    rkv_status st = rkv_blockmgr_append(m, seq, n, NULL, NULL, NULL);
    if (can) {
      EXPECT_OK(st);
      EXPECT_EQ_INT(bmt_free_blocks(m), before - need);
      accepted++;
    } else {
      EXPECT_STATUS(st, RKV_ERR_NO_BLOCKS);
      EXPECT(bmt_digest(m) == d);
      refused++;
    }
    if (bmt_free_blocks(m) < 3 || rkv_test_rand(&rng) % 17 == 0) {
      EXPECT_OK(rkv_blockmgr_seq_free(m, seq));
      EXPECT_OK(rkv_blockmgr_seq_create(m, seq));
    }
  }
  EXPECT(refused > 10 && accepted > 100);
  EXPECT(!rkv_blockmgr_can_append(m, 99, 1));
  EXPECT(rkv_blockmgr_can_append(m, 1, 0));
  uint32_t need;
  EXPECT_STATUS(rkv_blockmgr_blocks_needed(m, 99, 1, &need), RKV_ERR_NOT_FOUND);
  EXPECT_STATUS(rkv_blockmgr_blocks_needed(m, 1, 1, NULL), RKV_ERR_INVALID_ARG);
  rkv_blockmgr_destroy(m);
}

static void test_length_overflow(void) {
  /* A stream may not pass 2^31 - 1 tokens: INVALID_ARG, checked before block arithmetic. */
  rkv_blockmgr *m = bmt_make(4, 1, 1, 1, 2);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_STATUS(rkv_blockmgr_append(m, 1, UINT32_MAX, NULL, NULL, NULL), RKV_ERR_INVALID_ARG);
  EXPECT(!rkv_blockmgr_can_append(m, 1, UINT32_MAX));
  uint32_t need;
  EXPECT_STATUS(rkv_blockmgr_blocks_needed(m, 1, UINT32_MAX, &need), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_append(m, 1, 5, NULL, NULL, NULL), RKV_ERR_NO_BLOCKS);
  EXPECT_OK(rkv_blockmgr_append(m, 1, 4, NULL, NULL, NULL));
  EXPECT_EQ_INT(bmt_free_blocks(m), 0);
  rkv_blockmgr_destroy(m);
}

static void test_stats(void) {
  rkv_blockmgr_config c = RKV_BLOCKMGR_CONFIG_INIT;
  c.num_blocks = 250;
  c.block_size = 4;
  c.num_layers = 2;
  c.num_kv_heads = 2;
  c.watermark = 0.01f;
  c.check_every_op = true;
  rkv_blockmgr *m = NULL;
  EXPECT_OK(rkv_blockmgr_create(&c, &m));
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(m, &st);
  EXPECT_EQ_INT(st.total_blocks, 250);
  EXPECT_EQ_INT(st.free_blocks, 250);
  EXPECT_EQ_INT(st.watermark_blocks, 3); /* ceil(2.5) */
  {
    /* 0.1f * 10 must give 1 block, not 2 (float rounding); 0.02 * 250 = 5. */
    rkv_blockmgr_config c2 = c;
    c2.num_blocks = 10;
    c2.watermark = 0.1f;
    rkv_blockmgr *m2 = NULL;
    rkv_blockmgr_stats st2;
    EXPECT_OK(rkv_blockmgr_create(&c2, &m2));
    rkv_blockmgr_get_stats(m2, &st2);
    EXPECT_EQ_INT(st2.watermark_blocks, 1);
    rkv_blockmgr_destroy(m2);
    c2.num_blocks = 250;
    c2.watermark = 0.02f;
    EXPECT_OK(rkv_blockmgr_create(&c2, &m2));
    rkv_blockmgr_get_stats(m2, &st2);
    EXPECT_EQ_INT(st2.watermark_blocks, 5);
    rkv_blockmgr_destroy(m2);
  }
  EXPECT_EQ_INT(rkv_blockmgr_blocks_for_tokens(m, 0), 0);
  EXPECT_EQ_INT(rkv_blockmgr_blocks_for_tokens(m, 5), 8);
  EXPECT_EQ_INT(rkv_blockmgr_blocks_for_tokens(m, 8), 8);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 5, NULL, NULL, NULL));
  rkv_blockmgr_get_stats(m, &st);
  EXPECT_EQ_INT(st.used_blocks, 8);
  EXPECT_EQ_INT(st.free_blocks, 242);
  EXPECT_EQ_INT(st.allocated_slots, 32);
  EXPECT_EQ_INT(st.token_slots, 20);
  EXPECT_EQ_INT(st.fragmentation_slots, 12);
  EXPECT_EQ_INT(st.shared_blocks, 0);
  EXPECT_EQ_INT(st.num_seqs, 1);
  EXPECT_EQ_INT(st.peak_used_blocks, 8);
  uint32_t tot, ex;
  EXPECT_OK(rkv_blockmgr_seq_footprint(m, 1, &tot, &ex));
  EXPECT_EQ_INT(tot, 8);
  EXPECT_EQ_INT(ex, 8);
  EXPECT_STATUS(rkv_blockmgr_seq_footprint(m, 2, &tot, &ex), RKV_ERR_NOT_FOUND);
  EXPECT_OK(rkv_blockmgr_seq_create(m, 2));
  EXPECT_OK(rkv_blockmgr_append(m, 2, 12, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_seq_free(m, 1));
  rkv_blockmgr_get_stats(m, &st);
  EXPECT_EQ_INT(st.used_blocks, 12);
  EXPECT_EQ_INT(st.peak_used_blocks, 20);
  EXPECT_EQ_INT(st.token_slots, 48);
  EXPECT_EQ_INT(st.fragmentation_slots, 0);
  rkv_blockmgr_destroy(m);
}

static void test_restore(void) {
  rkv_blockmgr *m = bmt_make(20, 4, 1, 3, 4);
  int32_t lens[3] = {5, 0, 12}; /* 2 + 0 + 3 blocks */
  EXPECT_OK(rkv_blockmgr_seq_restore(m, 3, lens));
  EXPECT_EQ_INT(bmt_free_blocks(m), 15);
  EXPECT_EQ_INT(bmt_len(m, 3, 0, 0), 5);
  EXPECT_EQ_INT(bmt_len(m, 3, 0, 1), 0);
  EXPECT_EQ_INT(bmt_len(m, 3, 0, 2), 12);
  int32_t nb;
  const int32_t *row = bmt_row(m, 3, 0, 2, &nb);
  EXPECT_EQ_INT(nb, 3);
  for (int j = 0; j < 3; j++) EXPECT_EQ_INT(bmt_ref(m, row[j]), 1);
  uint64_t d = bmt_digest(m);
  EXPECT_STATUS(rkv_blockmgr_seq_restore(m, 3, lens), RKV_ERR_EXISTS);
  int32_t huge[3] = {40, 40, 1};
  EXPECT_STATUS(rkv_blockmgr_seq_restore(m, 4, huge), RKV_ERR_NO_BLOCKS);
  int32_t neg[3] = {1, -1, 1};
  EXPECT_STATUS(rkv_blockmgr_seq_restore(m, 4, neg), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_seq_restore(m, 4, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_blockmgr_seq_restore(m, -4, lens), RKV_ERR_INVALID_ARG);
  EXPECT(bmt_digest(m) == d);
  EXPECT(!rkv_blockmgr_seq_exists(m, 4));
  /* Appends after a restore: streams of different lengths, room = min. */
  int64_t slots[3 * 4];
  EXPECT_OK(rkv_blockmgr_append(m, 3, 4, slots, NULL, NULL));
  EXPECT_EQ_INT(bmt_len(m, 3, 0, 1), 4);
  EXPECT_EQ_INT(bmt_free_blocks(m), 15 - 1 - 1 - 1);
  EXPECT_OK(rkv_blockmgr_seq_free(m, 3));
  EXPECT_EQ_INT(bmt_free_blocks(m), 20);
  /* max_seqs limit */
  rkv_blockmgr *m2 = bmt_make(20, 4, 1, 3, 1);
  EXPECT_OK(rkv_blockmgr_seq_restore(m2, 1, lens));
  EXPECT_STATUS(rkv_blockmgr_seq_restore(m2, 2, lens), RKV_ERR_CAPACITY);
  rkv_blockmgr_destroy(m2);
  rkv_blockmgr_destroy(m);
}

/* ---- caller allocator ------------------------------------------------------------------ */

typedef struct counting_alloc {
  long live_allocs;
  long long live_bytes;
  long calls;
  long fail_after; /* < 0: never fail */
} counting_alloc;

static void *ca_alloc(void *ctx, size_t size, size_t align) {
  counting_alloc *c = ctx;
  if (c->fail_after >= 0 && c->calls >= c->fail_after) return NULL;
  c->calls++;
  void *p = NULL;
  if (posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, size) != 0) return NULL;
  c->live_allocs++;
  c->live_bytes += (long long)size;
  return p;
}

static void ca_free(void *ctx, void *p, size_t size) {
  counting_alloc *c = ctx;
  c->live_allocs--;
  c->live_bytes -= (long long)size;
  free(p);
}

static void test_allocator(void) {
  counting_alloc ca = {0, 0, 0, -1};
  rkv_allocator al = {ca_alloc, ca_free, &ca};
  rkv_blockmgr_config c = RKV_BLOCKMGR_CONFIG_INIT;
  c.num_blocks = 64;
  c.block_size = 2;
  c.num_layers = 2;
  c.num_kv_heads = 2;
  c.max_seqs = 8;
  c.allocator = &al;
  c.check_every_op = true;
  rkv_blockmgr *m = NULL;
  EXPECT_OK(rkv_blockmgr_create(&c, &m));
  EXPECT(rkv_blockmgr_get_config(m)->allocator != &al); /* copied into the handle */
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  for (int i = 0; i < 10; i++) EXPECT_OK(rkv_blockmgr_append(m, 1, 1, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 1, 2));
  EXPECT(ca.live_allocs > 0);
  /* Allocation failures: the call fails with NO_MEMORY and changes nothing. A never-used slot
   * needs its metadata allocated. */
  uint64_t d = bmt_digest(m);
  ca.fail_after = ca.calls;
  EXPECT_STATUS(rkv_blockmgr_seq_create(m, 3), RKV_ERR_NO_MEMORY);
  EXPECT(bmt_digest(m) == d);
  EXPECT(!rkv_blockmgr_seq_exists(m, 3));
  ca.fail_after = -1;
  EXPECT_OK(rkv_blockmgr_seq_free(m, 1));
  EXPECT_OK(rkv_blockmgr_seq_create(m, 3)); /* reuses seq 1's slot and its table */
  ca.fail_after = ca.calls;
  d = bmt_digest(m);
  EXPECT_STATUS(rkv_blockmgr_append(m, 3, 20, NULL, NULL, NULL), RKV_ERR_NO_MEMORY); /* grow */
  EXPECT(bmt_digest(m) == d);
  EXPECT_STATUS(rkv_blockmgr_seq_fork(m, 2, 4), RKV_ERR_NO_MEMORY);
  EXPECT(bmt_digest(m) == d);
  EXPECT(!rkv_blockmgr_seq_exists(m, 4));
  ca.fail_after = -1;
  EXPECT_OK(rkv_blockmgr_append(m, 3, 20, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_seq_fork(m, 2, 4));
  /* check_every_op's walk cannot get scratch: the successful mutation still reports OK. */
  ca.fail_after = ca.calls;
  EXPECT_OK(rkv_blockmgr_append(m, 3, 1, NULL, NULL, NULL));
  EXPECT_EQ_INT(bmt_len(m, 3, 1, 1), 21);
  EXPECT_STATUS(rkv_blockmgr_check(m), RKV_ERR_NO_MEMORY);
  ca.fail_after = -1;
  EXPECT_OK(rkv_blockmgr_check(m));
  rkv_blockmgr_destroy(m);
  EXPECT_EQ_INT(ca.live_allocs, 0);
  EXPECT_EQ_INT(ca.live_bytes, 0);
  /* Create itself failing at every allocation in turn leaks nothing. */
  for (long k = 0; k < 12; k++) {
    counting_alloc cb = {0, 0, 0, k};
    rkv_allocator al2 = {ca_alloc, ca_free, &cb};
    c.allocator = &al2;
    rkv_blockmgr *m2 = NULL;
    rkv_status st = rkv_blockmgr_create(&c, &m2);
    EXPECT(st == RKV_OK || st == RKV_ERR_NO_MEMORY);
    EXPECT((st == RKV_OK) == (m2 != NULL));
    rkv_blockmgr_destroy(m2);
    EXPECT_EQ_INT(cb.live_allocs, 0);
  }
}

/* Decode-step appends allocate nothing once a row has capacity (compact/export neither). With
 * RKV_DEBUG >= 3 every mutation runs the invariant walk, which allocates its scratch, so the
 * count is only meaningful below that level. */
static void test_hot_path_no_alloc(void) {
  counting_alloc ca = {0, 0, 0, -1};
  rkv_allocator al = {ca_alloc, ca_free, &ca};
  rkv_blockmgr_config c = RKV_BLOCKMGR_CONFIG_INIT;
  c.num_blocks = 4096;
  c.block_size = 16;
  c.num_layers = 4;
  c.num_kv_heads = 2;
  c.max_seqs = 4;
  c.allocator = &al;
  rkv_blockmgr *m = NULL;
  EXPECT_OK(rkv_blockmgr_create(&c, &m));
  EXPECT_OK(rkv_blockmgr_seq_create(m, 1));
  /* A prefill sizes the rows exactly; the next boundary doubles them (the amortised growth). */
  EXPECT_OK(rkv_blockmgr_append(m, 1, 16 * 100, NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_append(m, 1, 16, NULL, NULL, NULL));
  int32_t keep[16 * 50];
  for (int i = 0; i < 16 * 50; i++) keep[i] = 2 * i;
  rkv_keep_list kl = {0, 0, keep, 16 * 50};
  static rkv_slot_move mv[16 * 50];
  int64_t slots[8];
  int32_t indptr[3], ind[512], last[2];
  int64_t ids[1] = {1};
  uint32_t nm, nnz;
  long before = ca.calls;
  for (int step = 0; step < 200; step++)
    EXPECT_OK(rkv_blockmgr_append(m, 1, 1, step % 2 ? slots : NULL, NULL, NULL));
  EXPECT_OK(rkv_blockmgr_compact(m, 1, &kl, 1, mv, 16 * 50, &nm));
  EXPECT_OK(rkv_blockmgr_export_csr(m, 0, ids, 1, indptr, ind, 512, last, &nnz, NULL));
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(m, &st);
  if (RKV_DEBUG < 3) EXPECT_EQ_INT(ca.calls - before, 0);
  rkv_blockmgr_destroy(m);
  EXPECT_EQ_INT(ca.live_allocs, 0);
}

/* ---- id map churn ---------------------------------------------------------------------- */

static void test_hash_churn(void) {
  enum { N = 100000, LIVE = 200 };
  rkv_blockmgr_config c = RKV_BLOCKMGR_CONFIG_INIT;
  c.num_blocks = 8;
  c.block_size = 16;
  c.max_seqs = 256;
  rkv_blockmgr *m = NULL;
  EXPECT_OK(rkv_blockmgr_create(&c, &m));
  uint64_t rng = 7;
  int64_t *ids = malloc(N * sizeof(int64_t));
  for (int i = 0; i < N; i++) ids[i] = (int64_t)i * 1000003 + (i & 1 ? (int64_t)1 << 40 : 0);
  for (int i = N - 1; i > 0; i--) { /* random order */
    int j = (int)(rkv_test_rand(&rng) % (uint64_t)(i + 1));
    int64_t t = ids[i];
    ids[i] = ids[j];
    ids[j] = t;
  }
  int64_t live[LIVE];
  int nlive = 0, bad = 0;
  for (int i = 0; i < N; i++) {
    if (rkv_blockmgr_seq_create(m, ids[i]) != RKV_OK) bad++;
    live[nlive++] = ids[i];
    if (nlive == LIVE || (nlive > 1 && rkv_test_rand(&rng) % 3 == 0)) {
      int k = (int)(rkv_test_rand(&rng) % (uint64_t)nlive);
      if (rkv_blockmgr_seq_free(m, live[k]) != RKV_OK) bad++;
      if (rkv_blockmgr_seq_exists(m, live[k])) bad++;
      live[k] = live[--nlive];
    }
    if (i % 997 == 0) {
      for (int k = 0; k < nlive; k++) bad += !rkv_blockmgr_seq_exists(m, live[k]);
      bad += rkv_blockmgr_num_seqs(m) != (uint32_t)nlive;
      bad += rkv_blockmgr_check(m) != RKV_OK;
    }
  }
  EXPECT_EQ_INT(bad, 0);
  EXPECT_OK(rkv_blockmgr_check(m));
  while (nlive) EXPECT_OK(rkv_blockmgr_seq_free(m, live[--nlive]));
  EXPECT_EQ_INT(rkv_blockmgr_num_seqs(m), 0);
  EXPECT_OK(rkv_blockmgr_check(m));
  free(ids);
  rkv_blockmgr_destroy(m);
}

int main(void) {
  test_config();
  test_seq_lifecycle();
  test_append_slots();
  test_no_blocks_exact();
  test_length_overflow();
  test_stats();
  test_restore();
  test_allocator();
  test_hot_path_no_alloc();
  test_hash_churn();
  return rkv_test_finish();
}
