/* The attention API around the kernels: every validation error (with its status, a last-error
 * text, and output / pool scores left untouched), workspace size vs bound, the KV write's
 * conversions and score reset, exhaustive f16/bf16 loads through length-1 streams (out must
 * equal V exactly), the query-window guard rails, and the closed CUDA dispatch check. */
#include <rkv/qwindow.h>

#include "attn_model.h"

/* A small valid decode batch on a model: 2 sequences, 2 kv heads, G = 2, d = 16. */
typedef struct fixture {
  attn_model m;
  float q[4 * 4 * 16], out[4 * 4 * 16]; /* up to 4 rows (prefill) */
  rkv_attn_params p;
  int32_t q_indptr[3];
  void *ws;
  size_t wsb;
} fixture;

static void fixture_init(fixture *f) {
  uint64_t rng = 3;
  memset(f, 0, sizeof *f);
  attn_model_init(&f->m, RKV_DTYPE_F32, 4, 16, 2, 2, 2, 20, 1, &rng);
  for (int32_t s = 0; s < f->m.S; s++) attn_model_append(&f->m, s, 5 + s, &rng);
  for (size_t i = 0; i < sizeof f->q / sizeof f->q[0]; i++) f->q[i] = attn_uniform(&rng, -1, 1);
  rkv_attn_params p = RKV_ATTN_PARAMS_INIT;
  p.num_seqs = 2, p.num_q_heads = 4, p.num_kv_heads = 2, p.head_dim = 16;
  p.q = f->q, p.out = f->out, p.table = attn_model_table(&f->m);
  p.accumulate_scores = true;
  f->p = p;
  f->q_indptr[0] = 0, f->q_indptr[1] = 2, f->q_indptr[2] = 4;
  f->wsb = 1 << 20;
  f->ws = malloc(f->wsb);
}

static void fixture_fini(fixture *f) {
  free(f->ws);
  attn_model_free(&f->m);
}

/* Expects decode (or prefill) with f->p to fail with `want`, leaving out and scores as they
 * were, with a last-error text. */
static void expect_refused(fixture *f, bool prefill, rkv_status want, const char *what) {
  for (size_t i = 0; i < sizeof f->out / sizeof f->out[0]; i++) f->out[i] = 42.0f;
  float *sc = rkv_kv_pool_scores(f->m.pool);
  const size_t ns = (size_t)f->m.num_blocks * f->m.lay.block_size;
  for (size_t i = 0; i < ns; i++) sc[i] = 0.5f;
  rkv_backend *be = rkv_kv_pool_backend(f->m.pool);
  rkv_status s = prefill ? rkv_attn_prefill(f->m.pool, &f->p, f->ws, f->wsb)
                         : rkv_attn_decode(f->m.pool, &f->p, f->ws, f->wsb);
  if (s != want)
    RKV_TEST_FAIL_("%s: got %s, want %s (%s)", what, rkv_status_name(s), rkv_status_name(want),
                   rkv_backend_last_error(be));
  else
    rkv_test_passed_++;
  int touched = 0;
  for (size_t i = 0; i < sizeof f->out / sizeof f->out[0]; i++) touched += f->out[i] != 42.0f;
  for (size_t i = 0; i < ns; i++) touched += sc[i] != 0.5f;
  if (touched) RKV_TEST_FAIL_("%s: %d values written by a failed call", what, touched);
  EXPECT(rkv_backend_last_error(be)[0] != '\0');
  printf("  %-28s -> %s: %s\n", what, rkv_status_name(s), rkv_backend_last_error(be));
}

static void test_errors(void) {
  fixture f;
  fixture_init(&f);
  rkv_kv_pool *pool = f.m.pool;
  EXPECT_OK(rkv_attn_decode(pool, &f.p, f.ws, f.wsb)); /* the fixture itself is valid */
  rkv_attn_params zero;
  memset(&zero, 0, sizeof zero);
  EXPECT_STATUS(rkv_attn_prefill(pool, &zero, f.ws, f.wsb), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_attn_decode(NULL, &f.p, f.ws, f.wsb), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_attn_decode(pool, NULL, f.ws, f.wsb), RKV_ERR_INVALID_ARG);
  /* The up-front head check: a CPU pool runs any group; a bad ratio is refused with a reason. */
  EXPECT_OK(rkv_attn_check_heads(pool, 32, 8));
  EXPECT_OK(rkv_attn_check_heads(pool, 4096, 1));
  EXPECT_STATUS(rkv_attn_check_heads(pool, 12, 8), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(rkv_backend_last_error(rkv_kv_pool_backend(pool)), "12") != NULL);
  EXPECT_STATUS(rkv_attn_check_heads(pool, 0, 1), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_attn_check_heads(pool, 8, 0), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_attn_check_heads(NULL, 8, 8), RKV_ERR_INVALID_ARG);
  size_t sz = 0;
  EXPECT_STATUS(rkv_attn_workspace_size(pool, &f.p, NULL), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_attn_workspace_size(NULL, &f.p, &sz), RKV_ERR_INVALID_ARG);

  rkv_attn_params good = f.p;
  int32_t indptr[5], indices[64], last_len[4];
  memcpy(indptr, good.table.indptr, sizeof indptr);
  memcpy(indices, good.table.indices, sizeof(int32_t) * (size_t)indptr[4]);
  memcpy(last_len, good.table.last_len, sizeof last_len);
#define REFUSE(prefill, want, what, ...)     \
  do {                                       \
    f.p = good;                              \
    f.p.table.indptr = indptr;               \
    f.p.table.indices = indices;             \
    f.p.table.last_len = last_len;           \
    f.p.q_indptr = f.q_indptr;               \
    __VA_ARGS__;                             \
    expect_refused(&f, prefill, want, what); \
  } while (0)
  REFUSE(false, RKV_ERR_INVALID_ARG, "struct_size 0", f.p.struct_size = 0);
  REFUSE(false, RKV_ERR_INVALID_ARG, "q heads % kv heads", f.p.num_q_heads = 3);
  REFUSE(false, RKV_ERR_INVALID_ARG, "zero kv heads", f.p.num_kv_heads = 0);
  REFUSE(false, RKV_ERR_INVALID_ARG, "head_dim != layout", f.p.head_dim = 8);
  REFUSE(false, RKV_ERR_INVALID_ARG, "scale NaN", f.p.scale = NAN);
  REFUSE(false, RKV_ERR_INVALID_ARG, "stream count", f.p.num_seqs = 1);
  REFUSE(false, RKV_ERR_INVALID_ARG, "table block_size", f.p.table.block_size = 8);
  REFUSE(false, RKV_ERR_INVALID_ARG, "NULL indices", f.p.table.indices = NULL);
  REFUSE(false, RKV_ERR_INVALID_ARG, "NULL q", f.p.q = NULL);
  REFUSE(false, RKV_ERR_INVALID_ARG, "NULL out", f.p.out = NULL);
  REFUSE(false, RKV_ERR_INVALID_ARG, "indptr decreasing", indptr[2] = indptr[1] - 1);
  memcpy(indptr, good.table.indptr, sizeof indptr);
  REFUSE(false, RKV_ERR_INVALID_ARG, "indptr[0] negative", indptr[0] = -1);
  memcpy(indptr, good.table.indptr, sizeof indptr);
  const int32_t keep = indices[3];
  REFUSE(false, RKV_ERR_INVALID_ARG, "block id >= num_blocks",
         indices[3] = (int32_t)f.m.num_blocks);
  REFUSE(false, RKV_ERR_INVALID_ARG, "block id negative", indices[3] = -2);
  indices[3] = keep;
  REFUSE(false, RKV_ERR_INVALID_ARG, "last_len 0", last_len[1] = 0);
  REFUSE(false, RKV_ERR_INVALID_ARG, "last_len > block_size", last_len[1] = 5);
  memcpy(last_len, good.table.last_len, sizeof last_len);
  /* Stream 2 empty but claiming a last_len. */
  REFUSE(false, RKV_ERR_INVALID_ARG, "empty stream last_len",
         for (int i = 3; i <= 4; i++) indptr[i] =
             indptr[i] - (good.table.indptr[3] - good.table.indptr[2]);
         memmove(indices + indptr[2], indices + good.table.indptr[3],
                 sizeof(int32_t) * (size_t)(good.table.indptr[4] - good.table.indptr[3])));
  memcpy(indptr, good.table.indptr, sizeof indptr);
  memcpy(indices, good.table.indices, sizeof(int32_t) * (size_t)indptr[4]);
  REFUSE(false, RKV_ERR_CAPACITY, "workspace too small", f.wsb = 64);
  f.wsb = 1 << 20;
  void *saved_ws = f.ws;
  f.ws = NULL;
  REFUSE(false, RKV_ERR_CAPACITY, "NULL workspace", (void)0);
  f.ws = saved_ws;
  REFUSE(true, RKV_ERR_INVALID_ARG, "prefill NULL q_indptr", f.p.q_indptr = NULL);
  REFUSE(true, RKV_ERR_INVALID_ARG, "prefill q_indptr[0] != 0", f.q_indptr[0] = 1);
  f.q_indptr[0] = 0;
  REFUSE(true, RKV_ERR_INVALID_ARG, "prefill q_indptr decreasing", f.q_indptr[1] = 5);
  f.q_indptr[1] = 2;
  /* Sequence 0's streams hold 5 and 6 tokens: 6 new rows do not fit in the first. */
  REFUSE(true, RKV_ERR_INVALID_ARG, "prefill rows > stream len", f.q_indptr[1] = 6;
         f.q_indptr[2] = 8);
  f.q_indptr[1] = 2, f.q_indptr[2] = 4;

  /* Query window guard rails. */
  rkv_qwindow_config qc = RKV_QWINDOW_CONFIG_INIT;
  qc.num_layers = 2, qc.num_q_heads = 4, qc.head_dim = 16, qc.window = 2;
  rkv_qwindow *qw = NULL, *qw_bad = NULL;
  EXPECT_OK(rkv_qwindow_create(&qc, &qw));
  qc.num_q_heads = 8;
  EXPECT_OK(rkv_qwindow_create(&qc, &qw_bad));
  int64_t ids[2] = {11, 12};
  EXPECT_OK(rkv_qwindow_seq_add(qw, 11));
  REFUSE(false, RKV_ERR_INVALID_ARG, "qwindow without seq_ids", f.p.qwindow = qw);
  REFUSE(false, RKV_ERR_INVALID_ARG, "qwindow shape", f.p.qwindow = qw_bad; f.p.seq_ids = ids);
  REFUSE(false, RKV_ERR_INVALID_ARG, "qwindow layer", f.p.qwindow = qw; f.p.seq_ids = ids;
         f.p.layer = 2);
  /* Sequence 12 is not registered: NOT_FOUND before anything is computed. */
  REFUSE(false, RKV_ERR_NOT_FOUND, "qwindow unknown sequence", f.p.qwindow = qw; f.p.seq_ids = ids);
  EXPECT_OK(rkv_qwindow_seq_add(qw, 12));
  f.p = good;
  f.p.qwindow = qw, f.p.seq_ids = ids;
  EXPECT_OK(rkv_attn_decode(pool, &f.p, f.ws, f.wsb));
  float win[4 * 2 * 16];
  uint32_t count = 0;
  EXPECT_OK(rkv_qwindow_get(qw, 12, 0, win, &count));
  EXPECT_EQ_INT(count, 1);
  int bad = 0;
  for (uint32_t h = 0; h < 4; h++)
    bad += memcmp(win + (size_t)h * 2 * 16, f.q + (size_t)(4 + h) * 16, 16 * sizeof(float)) != 0;
  EXPECT_EQ_INT(bad, 0);
  rkv_qwindow_destroy(qw);
  rkv_qwindow_destroy(qw_bad);
#undef REFUSE

  /* An empty batch is a no-op, even without arrays or workspace. */
  rkv_attn_params empty = RKV_ATTN_PARAMS_INIT;
  empty.num_q_heads = 4, empty.num_kv_heads = 2, empty.head_dim = 16;
  empty.table.block_size = 4;
  EXPECT_OK(rkv_attn_decode(pool, &empty, NULL, 0));
  EXPECT_OK(rkv_attn_workspace_size(pool, &empty, &sz));
  fixture_fini(&f);
}

static void test_workspace(void) {
  fixture f;
  fixture_init(&f);
  size_t sz = 0, bound = 0;
  f.p.q_indptr = NULL;
  EXPECT_OK(rkv_attn_workspace_size(f.m.pool, &f.p, &sz));
  EXPECT(sz > 0);
  EXPECT_OK(rkv_attn_workspace_bound(f.m.pool, 2, 4, 16, 20, &bound));
  EXPECT(bound >= sz);
  f.p.q_indptr = f.q_indptr;
  EXPECT_OK(rkv_attn_workspace_size(f.m.pool, &f.p, &sz));
  EXPECT(bound >= sz);
  /* Exactly the reported size works; one byte less than the single-worker minimum fails. */
  void *ws = malloc(sz);
  EXPECT_OK(rkv_attn_prefill(f.m.pool, &f.p, ws, sz));
  free(ws);
  /* Sizing needs no q / out yet. */
  rkv_attn_params shape_only = f.p;
  shape_only.q = NULL, shape_only.out = NULL;
  EXPECT_OK(rkv_attn_workspace_size(f.m.pool, &shape_only, &sz));
  EXPECT_STATUS(rkv_attn_workspace_bound(f.m.pool, 2, 4, 32, 20, &bound), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_attn_workspace_bound(f.m.pool, 2, 0, 16, 20, &bound), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_attn_workspace_bound(f.m.pool, 2, 4, 16, -1, &bound), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_attn_workspace_bound(f.m.pool, 2, 4, 16, 20, NULL), RKV_ERR_INVALID_ARG);
  fixture_fini(&f);
}

/* Two sequences sharing a block (a fork): the shared slots receive both sequences' mass, the
 * same as running the sequences one at a time; a sub-table (indptr[0] != 0) works. */
static void test_shared_block_scores(void) {
  fixture f;
  fixture_init(&f);
  int32_t indptr[5], indices[64], last_len[4];
  memcpy(indptr, f.p.table.indptr, sizeof indptr);
  memcpy(indices, f.p.table.indices, sizeof(int32_t) * (size_t)indptr[4]);
  memcpy(last_len, f.p.table.last_len, sizeof last_len);
  indices[indptr[2]] = indices[indptr[0]]; /* stream 2's first block = stream 0's */
  f.p.table.indptr = indptr, f.p.table.indices = indices, f.p.table.last_len = last_len;
  const size_t ns = (size_t)f.m.num_blocks * f.m.lay.block_size;
  float *sc = rkv_kv_pool_scores(f.m.pool), *joint = malloc(ns * sizeof(float));
  memset(sc, 0, ns * sizeof(float));
  EXPECT_OK(rkv_attn_decode(f.m.pool, &f.p, f.ws, f.wsb));
  memcpy(joint, sc, ns * sizeof(float));
  memset(sc, 0, ns * sizeof(float));
  rkv_attn_params one = f.p;
  one.num_seqs = 1, one.table.num_streams = 2;
  EXPECT_OK(rkv_attn_decode(f.m.pool, &one, f.ws, f.wsb)); /* sequence 0 */
  one.table.indptr = indptr + 2, one.table.last_len = last_len + 2;
  one.q = f.q + 4 * 16, one.out = f.out + 4 * 16;
  EXPECT_OK(rkv_attn_decode(f.m.pool, &one, f.ws, f.wsb)); /* sequence 1, indptr[0] != 0 */
  double e = 0.0, shared = 0.0;
  for (size_t i = 0; i < ns; i++) {
    double x = fabs((double)joint[i] - sc[i]);
    if (x > e) e = x;
  }
  for (uint32_t o = 0; o < 4; o++) shared += joint[(size_t)indices[indptr[0]] * 4 + o];
  EXPECT_NEAR(e, 0.0, 1e-6);
  EXPECT(shared > 0.0);
  free(joint);
  fixture_fini(&f);
}

/* A NaN in one query head's vector makes that head's output NaN (never a silent finite
 * value) and leaves the other heads finite. */
static void test_nan_propagates(void) {
  fixture f;
  fixture_init(&f);
  f.q[(size_t)(4 + 1) * 16 + 3] = NAN; /* sequence 1, query head 1 */
  f.p.accumulate_scores = false;
  EXPECT_OK(rkv_attn_decode(f.m.pool, &f.p, f.ws, f.wsb));
  int nan_in = 0, nan_out = 0;
  for (uint32_t r = 0; r < 2; r++)
    for (uint32_t h = 0; h < 4; h++)
      for (uint32_t k = 0; k < 16; k++) {
        const bool is_nan = isnan(f.out[((size_t)r * 4 + h) * 16 + k]);
        if (r == 1 && h == 1)
          nan_in += is_nan;
        else
          nan_out += is_nan;
      }
  EXPECT_EQ_INT(nan_in, 16);
  EXPECT_EQ_INT(nan_out, 0);
  fixture_fini(&f);
}

/* Writes rows with special values and reads the pool back. */
static void test_write_kv(void) {
  static const rkv_dtype dts[] = {RKV_DTYPE_F32, RKV_DTYPE_F16, RKV_DTYPE_BF16};
  static const float special[8] = {0.0f,      -0.0f,    1e-7f,  70000.0f,
                                   -3.14159f, INFINITY, 1e-30f, 65504.0f};
  for (size_t di = 0; di < 3; di++) {
    rkv_backend *be = NULL;
    rkv_kv_pool *pool = NULL;
    rkv_kv_layout lay = {dts[di], 4, 8};
    EXPECT_OK(rkv_backend_create(NULL, &be));
    EXPECT_OK(rkv_kv_pool_create(be, &lay, 3, &pool));
    float k[3 * 8], v[3 * 8];
    uint64_t rng = 17;
    for (int i = 0; i < 24; i++) {
      k[i] = i < 8 ? special[i] : attn_uniform(&rng, -5, 5);
      v[i] = i < 8 ? -special[i] : attn_uniform(&rng, -5, 5);
    }
    const int64_t slots[3] = {9, 2, 11}; /* blocks 2, 0, 2 */
    float *sc = rkv_kv_pool_scores(pool);
    for (int i = 0; i < 12; i++) sc[i] = 1.0f;
    EXPECT_OK(rkv_attn_write_kv(pool, k, v, slots, 3));
    /* Written slots start with no mass; the others keep theirs. */
    EXPECT(sc[9] == 0.0f && sc[2] == 0.0f && sc[11] == 0.0f && sc[3] == 1.0f && sc[10] == 1.0f);
    const size_t bb = rkv_kv_block_bytes(&lay);
    unsigned char *host = malloc(bb * 3);
    const int32_t ids[3] = {0, 1, 2};
    EXPECT_OK(rkv_kv_pool_read_blocks(pool, ids, 3, host));
    int bad = 0;
    for (int r = 0; r < 3; r++) {
      const unsigned char *blk = host + (size_t)(slots[r] / 4) * bb;
      const uint32_t o = (uint32_t)(slots[r] % 4);
      for (uint32_t j = 0; j < 8; j++) {
        float kk = rkv_dtype_load(lay.dtype, blk + rkv_kv_k_offset(&lay, o), j);
        float vv = rkv_dtype_load(lay.dtype, blk + rkv_kv_v_offset(&lay, o), j);
        float ek = attn_round(lay.dtype, k[r * 8 + j]), ev = attn_round(lay.dtype, v[r * 8 + j]);
        if (memcmp(&kk, &ek, 4) != 0 || memcmp(&vv, &ev, 4) != 0) bad++;
      }
    }
    EXPECT_EQ_INT(bad, 0);
    /* Refusals change nothing. */
    memcpy(host, rkv_kv_pool_base(pool), bb * 3);
    const int64_t dup[2] = {5, 5}, oob[2] = {1, 12}, neg[1] = {-1};
    EXPECT_STATUS(rkv_attn_write_kv(pool, k, v, dup, 2), RKV_ERR_INVALID_ARG);
    EXPECT_STATUS(rkv_attn_write_kv(pool, k, v, oob, 2), RKV_ERR_INVALID_ARG);
    EXPECT_STATUS(rkv_attn_write_kv(pool, k, v, neg, 1), RKV_ERR_INVALID_ARG);
    EXPECT_STATUS(rkv_attn_write_kv(pool, NULL, v, slots, 1), RKV_ERR_INVALID_ARG);
    EXPECT_STATUS(rkv_attn_write_kv(NULL, k, v, slots, 1), RKV_ERR_INVALID_ARG);
    EXPECT_OK(rkv_attn_write_kv(pool, NULL, NULL, NULL, 0));
    EXPECT(memcmp(host, rkv_kv_pool_base(pool), bb * 3) == 0);
    EXPECT(strstr(rkv_backend_last_error(be), "write_kv") != NULL);
    free(host);
    rkv_kv_pool_destroy(pool);
    rkv_backend_destroy(be);
  }
}

/* Every 16-bit pattern as V of a one-token stream: softmax weight exactly 1, so out = V as
 * the library's scalar conversion reads it (NaN payloads aside). */
static void test_exhaustive_loads(rkv_dtype dt) {
  const uint32_t d = 128, n = 65536 / d, bs = 16;
  rkv_backend *be = NULL;
  rkv_kv_pool *pool = NULL;
  rkv_kv_layout lay = {dt, bs, d};
  EXPECT_OK(rkv_backend_create(NULL, &be));
  EXPECT_OK(rkv_kv_pool_create(be, &lay, n, &pool));
  const size_t bb = rkv_kv_block_bytes(&lay);
  uint16_t *host = calloc(bb * n, 1);
  int32_t *ids = malloc(sizeof(int32_t) * n), *indptr = malloc(sizeof(int32_t) * (n + 1));
  int32_t *last = malloc(sizeof(int32_t) * n);
  for (uint32_t s = 0; s < n; s++) {
    ids[s] = (int32_t)(n - 1 - s); /* reversed: stream s reads block n-1-s */
    indptr[s] = (int32_t)s, last[s] = 1;
    uint16_t *vrow = (uint16_t *)((unsigned char *)host + (size_t)ids[s] * bb) + (size_t)bs * d;
    for (uint32_t j = 0; j < d; j++) vrow[j] = (uint16_t)(s * d + j);
  }
  indptr[n] = (int32_t)n;
  int32_t *all = malloc(sizeof(int32_t) * n);
  for (uint32_t i = 0; i < n; i++) all[i] = (int32_t)i;
  EXPECT_OK(rkv_kv_pool_write_blocks(pool, all, n, host));
  float *q = calloc((size_t)n * d, sizeof(float)), *out = malloc(sizeof(float) * n * d);
  rkv_attn_params p = RKV_ATTN_PARAMS_INIT;
  p.num_seqs = n, p.num_q_heads = 1, p.num_kv_heads = 1, p.head_dim = d;
  p.q = q, p.out = out;
  rkv_block_table t = {(int32_t)n, (int32_t)bs, indptr, ids, last};
  p.table = t;
  size_t wsb = 0;
  EXPECT_OK(rkv_attn_workspace_size(pool, &p, &wsb));
  void *ws = malloc(wsb);
  EXPECT_OK(rkv_attn_decode(pool, &p, ws, wsb));
  int bad = 0;
  for (uint32_t i = 0; i < 65536; i++) {
    float want = dt == RKV_DTYPE_F16 ? rkv_f16_to_f32((uint16_t)i) : rkv_bf16_to_f32((uint16_t)i);
    float got = out[i];
    if (isnan(want) ? !isnan(got) : got != want) {
      if (bad < 5) fprintf(stderr, "%s 0x%04x: got %g want %g\n", rkv_dtype_name(dt), i, got, want);
      bad++;
    }
  }
  EXPECT_EQ_INT(bad, 0);
  free(ws), free(q), free(out), free(all), free(ids), free(indptr), free(last), free(host);
  rkv_kv_pool_destroy(pool);
  rkv_backend_destroy(be);
}

static void test_cuda_supported(void) {
  char err[128];
  static const uint32_t dims[] = {64, 128, 256}, blocks[] = {16, 32};
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 2; j++)
      for (int k = 0; k < RKV_DTYPE_COUNT_; k++)
        EXPECT_OK(rkv_attn_cuda_supported(dims[i], blocks[j], (rkv_dtype)k, err, sizeof err));
  err[0] = '\0';
  EXPECT_STATUS(rkv_attn_cuda_supported(96, 16, RKV_DTYPE_F16, err, sizeof err),
                RKV_ERR_UNSUPPORTED);
  EXPECT(strstr(err, "96") != NULL);
  EXPECT_STATUS(rkv_attn_cuda_supported(128, 8, RKV_DTYPE_F16, err, sizeof err),
                RKV_ERR_UNSUPPORTED);
  EXPECT(strstr(err, "block") != NULL && strstr(err, "8") != NULL);
  EXPECT_STATUS(rkv_attn_cuda_supported(128, 16, RKV_DTYPE_COUNT_, err, sizeof err),
                RKV_ERR_UNSUPPORTED);
  EXPECT(strstr(err, "dtype") != NULL);
  EXPECT_STATUS(rkv_attn_cuda_supported(0, 16, RKV_DTYPE_F32, NULL, 0), RKV_ERR_UNSUPPORTED);
  /* Without a CUDA build a CUDA pool cannot exist (the dispatcher's stubs stay unreachable). */
  if (!rkv_build_has_cuda()) {
    rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
    bc.kind = RKV_BACKEND_CUDA;
    rkv_backend *be = NULL;
    EXPECT_STATUS(rkv_backend_create(&bc, &be), RKV_ERR_UNSUPPORTED);
  }
}

int main(void) {
  test_errors();
  test_workspace();
  test_shared_block_scores();
  test_nan_propagates();
  test_write_kv();
  test_exhaustive_loads(RKV_DTYPE_F16);
  test_exhaustive_loads(RKV_DTYPE_BF16);
  test_cuda_supported();
  return rkv_test_finish();
}
