/* Fixture of the evictor tests (test_evictor.c, test_evictor_emu.c, fuzz_evictor.c): a block
 * manager and a KV pool on the CPU backend or on the emulated device, sequences written through
 * scattered blocks with each token's original position in its V row, their query windows (an
 * rkv_qwindow on the host; on the emulated device also the same rows in an rkv_qwindow on the
 * device, pushed by the batched push, and a caller's ring of DEVICE memory holding them
 * rotated, for the deprecated adds that name a window), and state comparisons. Two fixtures built
 * with the same seed hold the same bytes. */
#ifndef RKV_TEST_EVICTOR_FIXTURE_H
#define RKV_TEST_EVICTOR_FIXTURE_H

#include <stdlib.h>

#include <rkv/buffer.h>
#include <rkv/buffer_emu.h>
#include <rkv/evictor.h>

#include "rkv_test.h"

/* head_dim and block size: a test of the CUDA kernels' closed set overrides them */
#ifndef EVF_HEAD_DIM
#define EVF_HEAD_DIM 16
#endif
#ifndef EVF_BLOCK
#define EVF_BLOCK 8
#endif
enum { L = 3, KV = 2, QH = 4, D = EVF_HEAD_DIM, BS = EVF_BLOCK, W = 8, MAXSEQ = 4 };

typedef struct fixture {
  rkv_dtype dt;
  bool emu;
  rkv_backend *be;
  rkv_blockmgr *m;
  rkv_kv_pool *pool;
  rkv_qwindow *qw;
  rkv_qwindow *dqw; /* emulated device: the same windows in DEVICE memory */
  rkv_buffer *qdev; /* emulated device: the query rows the batched push reads */
  rkv_buffer *ring; /* emulated device: [MAXSEQ][L][QH][W][D] f32 */
  float host_ring[MAXSEQ * L * QH * W * D]; /* its source, unchanged while uploads are queued */
  uint64_t rng;
} fixture;

/* checks: the block manager's walk after every operation (check_every_op); a caller that
 * checks between its own operations (the evictor fuzzer) saves a walk per appended token.
 * prefix_cache: the block manager's (the evictor fuzzer registers and hits groups). */
static inline void fx_init_pc(fixture *f, rkv_dtype dt, uint32_t num_blocks, uint64_t seed,
                              bool emu, bool checks, bool prefix_cache) {
  memset(f, 0, sizeof *f);
  f->dt = dt, f->rng = seed, f->emu = emu;
  rkv_backend_config bc = RKV_BACKEND_CONFIG_INIT;
  bc.kind = RKV_BACKEND_CPU;
  EXPECT_OK(emu ? rkv_backend_create_emulated(&bc, &f->be) : rkv_backend_create(&bc, &f->be));
  rkv_blockmgr_config mc = RKV_BLOCKMGR_CONFIG_INIT;
  mc.num_blocks = num_blocks, mc.block_size = BS, mc.num_layers = L, mc.num_kv_heads = KV;
  mc.head_dim = D, mc.dtype = dt, mc.check_every_op = checks, mc.watermark = 0;
  mc.prefix_cache = prefix_cache;
  EXPECT_OK(rkv_blockmgr_create(&mc, &f->m));
  rkv_kv_layout lay = rkv_blockmgr_kv_layout(f->m);
  EXPECT_OK(rkv_kv_pool_create(f->be, &lay, num_blocks, &f->pool));
  /* zeroed bytes everywhere, so two fixtures built alike compare byte for byte */
  memset(rkv_kv_pool_base(f->pool), 0, (size_t)num_blocks * rkv_kv_block_bytes(&lay));
  memset(rkv_kv_pool_scores(f->pool), 0, (size_t)num_blocks * BS * sizeof(float));
  rkv_qwindow_config qc = RKV_QWINDOW_CONFIG_INIT;
  qc.num_layers = L, qc.num_q_heads = QH, qc.head_dim = D, qc.window = W;
  EXPECT_OK(rkv_qwindow_create(&qc, &f->qw));
  if (!emu) return;
  EXPECT_OK(rkv_buffer_create(f->be, RKV_BUFFER_DEVICE, sizeof f->host_ring, &f->ring));
  EXPECT_OK(rkv_buffer_create(f->be, RKV_BUFFER_DEVICE, 0, &f->qdev));
  qc.backend = f->be;
  EXPECT_OK(rkv_qwindow_create(&qc, &f->dqw));
}

static inline void fx_init_ex(fixture *f, rkv_dtype dt, uint32_t num_blocks, uint64_t seed,
                              bool emu, bool checks) {
  fx_init_pc(f, dt, num_blocks, seed, emu, checks, false);
}

static inline void fx_init(fixture *f, rkv_dtype dt, uint32_t num_blocks, uint64_t seed, bool emu) {
  fx_init_ex(f, dt, num_blocks, seed, emu, true);
}

static inline void fx_fini(fixture *f) {
  if (f->ring) {
    EXPECT_OK(rkv_backend_sync(f->be));
    rkv_buffer_destroy(f->ring);
    rkv_buffer_destroy(f->qdev);
  }
  rkv_qwindow_destroy(f->dqw);
  rkv_qwindow_destroy(f->qw);
  rkv_kv_pool_destroy(f->pool);
  rkv_blockmgr_destroy(f->m);
  rkv_backend_destroy(f->be);
}

static inline char *slot_row(fixture *f, int64_t slot, bool v) {
  const rkv_kv_layout *l = rkv_kv_pool_layout(f->pool);
  uint32_t o = (uint32_t)(slot % BS);
  return (char *)rkv_kv_pool_base(f->pool) + (size_t)(slot / BS) * rkv_kv_block_bytes(l) +
         (v ? rkv_kv_v_offset(l, o) : rkv_kv_k_offset(l, o));
}

/* Original position in base-256 digits of the V row (exact in f16 too). */
static inline void put_pos(fixture *f, int64_t slot, int32_t pos) {
  for (uint32_t i = 0; i < D; i++)
    rkv_dtype_store(f->dt, slot_row(f, slot, true), i, i < 2 ? (float)((pos >> (8 * i)) & 255) : 0);
}
static inline int32_t get_pos(fixture *f, int64_t slot) {
  int32_t p = 0;
  for (uint32_t i = 0; i < 2; i++)
    p |= (int32_t)rkv_dtype_load(f->dt, slot_row(f, slot, true), i) << (8 * i);
  return p;
}

/* Appends n tokens to every stream of seq, one at a time, a dummy sequence (1000) growing in
 * between so block ids interleave. Clustered keys: every 5th token repeats the one 7 back
 * with noise (R-KV's redundancy has something to find); random H2O mass. */
static inline void fx_append(fixture *f, int64_t seq, int32_t at, int32_t n) {
  int64_t slots[L * KV];
  rkv_block_copy copies[L * KV];
  uint32_t nc = 0;
  EXPECT_OK(rkv_blockmgr_seq_create(f->m, 1000));
  for (int32_t t = 0; t < n; t++) {
    rkv_status s = rkv_blockmgr_append(f->m, seq, 1, slots, copies, &nc);
    if (s != RKV_OK) {
      EXPECT_OK(s);
      return;
    }
    /* on the emulated device the copy is queued: it must land before the rows written here */
    if (nc) EXPECT_OK(rkv_kv_pool_copy_blocks(f->pool, copies, nc));
    if (nc && f->emu) EXPECT_OK(rkv_backend_sync(f->be));
    if (t % 3 == 0) EXPECT_OK(rkv_blockmgr_append(f->m, 1000, 1, NULL, NULL, &nc));
    for (uint32_t s2 = 0; s2 < L * KV; s2++) {
      int64_t back = -1;
      if ((at + t) % 5 == 4 && at + t >= 7)
        rkv_blockmgr_stream_slot(f->m, seq, s2 / KV, s2 % KV, at + t - 7, &back);
      for (uint32_t i = 0; i < D; i++) {
        float x = (float)rkv_test_uniform(&f->rng) * 2 - 1;
        if (back >= 0) x = rkv_dtype_load(f->dt, slot_row(f, back, false), i) + 0.05f * x;
        rkv_dtype_store(f->dt, slot_row(f, slots[s2], false), i, x);
      }
      put_pos(f, slots[s2], at + t);
      rkv_kv_pool_scores(f->pool)[slots[s2]] = (float)rkv_test_uniform(&f->rng);
    }
  }
  EXPECT_OK(rkv_blockmgr_seq_free(f->m, 1000));
}

/* `rows` more query rows of sequence id in every layer, random, pushed into the host window
 * and, on the emulated device, into the device window by one batched push per layer. */
static inline void fx_push_rows(fixture *f, int64_t id, uint32_t rows) {
  const size_t row = QH * D;
  float *q = malloc((size_t)L * rows * row * sizeof(float)); /* [L][rows][QH][D] */
  for (uint32_t l = 0; l < L; l++)
    for (uint32_t r = 0; r < rows; r++) {
      float *qr = q + ((size_t)l * rows + r) * row;
      for (size_t i = 0; i < row; i++) qr[i] = (float)rkv_test_uniform(&f->rng) * 2 - 1;
      EXPECT_OK(rkv_qwindow_push(f->qw, id, l, qr, 1));
    }
  if (f->dqw) { /* the device window: every layer's rows in one batched push per layer */
    const int64_t ids[1] = {id};
    const int32_t ip[2] = {0, (int32_t)rows};
    EXPECT_OK(rkv_buffer_reserve(f->qdev, (size_t)L * rows * row * sizeof(float)));
    EXPECT_OK(rkv_buffer_upload(f->qdev, 0, q, (size_t)L * rows * row * sizeof(float)));
    EXPECT_OK(rkv_qwindow_plan(f->dqw, ids, ip, 1));
    for (uint32_t l = 0; l < L; l++)
      EXPECT_OK(rkv_qwindow_push_planned(
          f->dqw, l, (const float *)rkv_buffer_ptr(f->qdev) + (size_t)l * rows * row));
    EXPECT_OK(rkv_backend_sync(f->be)); /* the upload reads q */
  }
  free(q);
}

/* Sequence id (1..MAXSEQ) of n tokens with `rows` query rows pushed in every layer (more than
 * W wraps the ring, so the device window's oldest row is not row 0). */
static inline void fx_seq(fixture *f, int64_t id, int32_t n, uint32_t rows) {
  EXPECT_OK(rkv_blockmgr_seq_create(f->m, id));
  EXPECT_OK(rkv_qwindow_seq_add(f->qw, id));
  if (f->dqw) EXPECT_OK(rkv_qwindow_seq_add(f->dqw, id));
  fx_append(f, id, 0, n);
  fx_push_rows(f, id, rows);
}

/* Two fixtures built alike (a on the emulated device when emu_a, b when emu_b): sequences
 * 1..nseq of lens[i] tokens with rows[i] query rows pushed per layer. Same seed, same bytes. */
static inline void fx_twins(fixture *a, fixture *b, bool emu_a, bool emu_b, rkv_dtype dt,
                            uint32_t num_blocks, uint64_t seed, const int32_t *lens,
                            const uint32_t *rows, int nseq) {
  for (int k = 0; k < 2; k++) {
    fixture *f = k ? b : a;
    fx_init(f, dt, num_blocks, seed, k ? emu_b : emu_a);
    for (int i = 0; i < nseq; i++) fx_seq(f, i + 1, lens[i], rows[i]);
  }
}

/* The host image of sequence id's device window: the host window's rows, oldest first,
 * stored as a ring whose oldest row is `oldest` (what rkv_attn_cuda_qwindow_push leaves). */
static inline float *fx_ring_image(fixture *f, int64_t id, int32_t oldest) {
  const size_t slot = (size_t)L * QH * W * D;
  float *dst = f->host_ring + (size_t)(id - 1) * slot;
  float tmp[QH * W * D];
  for (uint32_t l = 0; l < L; l++) {
    uint32_t cnt = 0;
    EXPECT_OK(rkv_qwindow_get(f->qw, id, l, tmp, &cnt));
    for (uint32_t h = 0; h < QH; h++)
      for (uint32_t k = 0; k < W; k++)
        memcpy(dst + (((size_t)l * QH + h) * W + (oldest + k) % W) * D,
               tmp + ((size_t)h * W + k) * D, D * sizeof(float));
  }
  return dst;
}

/* The device window of sequence id on the emulated device: its ring image, uploaded. */
static inline rkv_evictor_window fx_window(fixture *f, int64_t id, int32_t oldest) {
  rkv_evictor_window win = {NULL, 0};
  const size_t slot = (size_t)L * QH * W * D;
  float *dst = fx_ring_image(f, id, oldest);
  EXPECT_OK(rkv_buffer_upload(f->ring, (size_t)(id - 1) * slot * sizeof(float), dst,
                              slot * sizeof(float)));
  EXPECT_OK(rkv_backend_sync(f->be));
  win.rows = (const float *)rkv_buffer_ptr(f->ring) + (size_t)(id - 1) * slot;
  win.oldest = oldest;
  return win;
}

/* An evictor reading the host window (on the emulated device: ignored, adds name their
 * windows), or with `own` the device window (adds name none). */
static inline rkv_evictor *fx_evictor_win(fixture *f, const rkv_evict_params *p,
                                          rkv_evict_granularity g, bool own) {
  rkv_evictor_config c = RKV_EVICTOR_CONFIG_INIT;
  c.num_q_heads = QH, c.params = *p, c.granularity = g, c.max_seqs = MAXSEQ;
  c.qwindow = own ? f->dqw : f->qw;
  rkv_evictor *ev = NULL;
  char err[256] = "";
  const rkv_status st = rkv_evictor_create(&c, f->m, f->pool, &ev, err, sizeof err);
  if (st != RKV_OK) RKV_TEST_FAIL_("rkv_evictor_create: %s", err);
  return ev;
}

static inline rkv_evictor *fx_evictor(fixture *f, const rkv_evict_params *p,
                                      rkv_evict_granularity g) {
  return fx_evictor_win(f, p, g, false);
}

/* Differences between two fixtures' sequences: every live sequence's lengths and contents
 * (K and V rows and mass of every position); with `ids` also the block tables and every
 * slot's mass; with `bytes` the whole pool. */
static inline int diff_seqs(fixture *a, fixture *b, bool ids, bool bytes) {
  int bad = 0;
  const rkv_kv_layout *l = rkv_kv_pool_layout(a->pool);
  const size_t nb = rkv_kv_pool_num_blocks(a->pool);
  if (bytes)
    bad += memcmp(rkv_kv_pool_base(a->pool), rkv_kv_pool_base(b->pool),
                  nb * rkv_kv_block_bytes(l)) != 0;
  if (ids || bytes)
    bad += memcmp(rkv_kv_pool_scores(a->pool), rkv_kv_pool_scores(b->pool),
                  nb * BS * sizeof(float)) != 0;
  for (int64_t seq = 1; seq <= MAXSEQ; seq++) {
    bad += rkv_blockmgr_seq_exists(a->m, seq) != rkv_blockmgr_seq_exists(b->m, seq);
    if (!rkv_blockmgr_seq_exists(a->m, seq)) continue;
    for (uint32_t s = 0; s < L * KV; s++) {
      const int32_t *ia = NULL, *ib = NULL;
      int32_t na = 0, nbk = 0, la = 0, lb = 0;
      rkv_blockmgr_stream_blocks(a->m, seq, s / KV, s % KV, &ia, &na);
      rkv_blockmgr_stream_blocks(b->m, seq, s / KV, s % KV, &ib, &nbk);
      rkv_blockmgr_stream_len(a->m, seq, s / KV, s % KV, &la);
      rkv_blockmgr_stream_len(b->m, seq, s / KV, s % KV, &lb);
      bad += la != lb;
      if (ids) bad += na != nbk || (na && memcmp(ia, ib, (size_t)na * sizeof(int32_t)) != 0);
      for (int32_t j = 0; la == lb && j < la; j++) {
        int64_t sa, sb;
        rkv_blockmgr_stream_slot(a->m, seq, s / KV, s % KV, j, &sa);
        rkv_blockmgr_stream_slot(b->m, seq, s / KV, s % KV, j, &sb);
        const size_t row = D * rkv_dtype_size(a->dt);
        bad += memcmp(slot_row(a, sa, false), slot_row(b, sb, false), row) != 0;
        bad += memcmp(slot_row(a, sa, true), slot_row(b, sb, true), row) != 0;
        bad += rkv_kv_pool_scores(a->pool)[sa] != rkv_kv_pool_scores(b->pool)[sb];
      }
    }
  }
  return bad;
}

/* diff_seqs and the free blocks. */
static inline int diff_state(fixture *a, fixture *b, bool ids, bool bytes) {
  return diff_seqs(a, b, ids, bytes) +
         (rkv_blockmgr_free_blocks(a->m) != rkv_blockmgr_free_blocks(b->m));
}

static inline void expect_same(fixture *a, fixture *b, bool ids, bool bytes, const char *what) {
  const int bad = diff_state(a, b, ids, bytes);
  if (bad)
    RKV_TEST_FAIL_("%s: states differ (%d)", what, bad);
  else
    rkv_test_passed_++;
}

/* Every stream of seq holds `len` tokens at ascending original positions. */
static inline int fx_check_seq(fixture *f, int64_t seq, int32_t len) {
  int bad = 0;
  for (uint32_t s = 0; s < L * KV; s++) {
    int32_t n = 0;
    rkv_blockmgr_stream_len(f->m, seq, s / KV, s % KV, &n);
    bad += n != len;
    int32_t prev = -1;
    for (int32_t j = 0; j < n; j++) {
      int64_t slot;
      rkv_blockmgr_stream_slot(f->m, seq, s / KV, s % KV, j, &slot);
      const int32_t pos = get_pos(f, slot);
      bad += pos <= prev;
      prev = pos;
    }
  }
  return bad;
}

/* An allocator that fails its fail_at-th allocation (0: never). */
typedef struct fx_fault {
  uint64_t count, fail_at;
  bool failed;
} fx_fault;

static inline void *fx_fault_alloc(void *ctx, size_t size, size_t align) {
  fx_fault *f = ctx;
  if (f->fail_at && ++f->count == f->fail_at) {
    f->failed = true;
    return NULL;
  }
  void *p = NULL;
  return posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, size) ? NULL : p;
}

static inline void fx_fault_free(void *ctx, void *p, size_t size) {
  (void)ctx, (void)size;
  free(p);
}

/* Queues sequences 1 and 2 (with their device windows on the emulated device). */
static inline void fx_queue_two(fixture *f, rkv_evictor *ev) {
  for (int64_t s = 1; s <= 2; s++) {
    rkv_evictor_window win = {NULL, 0};
    if (f->emu) win = fx_window(f, s, (int32_t)s);
    EXPECT_OK(rkv_evictor_add(ev, s, RKV_EVICTOR_ALL_LAYERS, NULL, f->emu ? &win : NULL));
  }
}

/* Every allocation a first run makes fails in turn: the run returns RKV_ERR_NO_MEMORY,
 * changes nothing and keeps its queue; the retry then equals a fault-free run. */
static inline void fx_nomem_sweep(bool emu) {
  int failures = 0;
  for (uint64_t k = 1; k < 64; k++) {
    fixture f, t;
    fx_twins(&f, &t, emu, emu, RKV_DTYPE_F32, 300, 21, (const int32_t[]){90, 75},
             (const uint32_t[]){W + 1, W + 2}, 2);
    rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
    p.budget = 40, p.window = W;
    fx_fault fl = {0, 0, false};
    const rkv_allocator al = {fx_fault_alloc, fx_fault_free, &fl};
    rkv_evictor_config c = RKV_EVICTOR_CONFIG_INIT;
    c.num_q_heads = QH, c.params = p, c.max_seqs = MAXSEQ, c.qwindow = f.qw, c.allocator = &al;
    rkv_evictor *ev = NULL, *tw = fx_evictor(&t, &p, RKV_EVICT_GRAN_STREAM);
    EXPECT_OK(rkv_evictor_create(&c, f.m, f.pool, &ev, NULL, 0));
    fx_queue_two(&f, ev);
    fx_queue_two(&t, tw);
    fl.fail_at = k;
    rkv_evictor_result res[MAXSEQ];
    uint32_t nr = 0;
    const rkv_status st = rkv_evictor_run(ev, res, MAXSEQ, &nr);
    const bool failed = fl.failed;
    fl.fail_at = 0;
    if (failed) {
      failures++;
      EXPECT_STATUS(st, RKV_ERR_NO_MEMORY);
      EXPECT_EQ_INT(rkv_evictor_queued(ev), 2);
      EXPECT_OK(rkv_evictor_check(ev));
      expect_same(&f, &t, true, true, "run out of memory");
      EXPECT_OK(rkv_evictor_run(ev, res, MAXSEQ, &nr));
    } else {
      EXPECT_OK(st);
    }
    EXPECT(nr == 2 && res[0].compressed && res[1].compressed);
    EXPECT_OK(rkv_evictor_run(tw, res, MAXSEQ, &nr));
    EXPECT_OK(rkv_backend_sync(f.be));
    EXPECT_OK(rkv_backend_sync(t.be));
    expect_same(&f, &t, true, true, "retry after out of memory");
    rkv_evictor_destroy(ev);
    rkv_evictor_destroy(tw);
    fx_fini(&f);
    fx_fini(&t);
    if (!failed) break;
  }
  fprintf(stderr, "out of memory (%s): %d allocations of a first run failed in turn\n",
          emu ? "emulated device" : "cpu", failures);
  EXPECT(failures >= 2); /* the sweep reached the run's allocations */
}

#endif /* RKV_TEST_EVICTOR_FIXTURE_H */
