/* libFuzzer target for the evictor (rkv/evictor.h), differential: every call is made on a CPU
 * pool and on a pool of the emulated device (<rkv/buffer_emu.h>: the device path's host half,
 * i.e. the uniform cut, the descriptors, the packed upload and the batched launches), two
 * worlds built alike (tests/unit/evict/evictor_fixture.h). The input picks the dtype, the
 * granularity, the pool size, the default parameters and up to three starting sequences, then
 * operations on both worlds: append tokens, push query rows, protect whole blocks, fork (the
 * windows too), free, add (a layer or all, parameters from the input, valid or not), run
 * (sometimes with a short result array), clear; with the prefix cache on (half the inputs),
 * register a sequence's leading blocks under one of two prompt templates' hashes and create
 * a sequence that hits them. Both worlds must hold the same cached groups: a compaction copies
 * the cached blocks it keeps on both paths (the CPU's per-layer calls decide it once, as the
 * device's cut does). Both must return the same status everywhere
 * and the same results; an add or run that fails as a call queues and changes nothing; a
 * sequence whose own result failed keeps its lengths and blocks; after every operation the
 * two states are equal (lengths, each position's K/V rows and mass) with no copy hazard on the
 * device, and rkv_evictor_check, rkv_blockmgr_check and rkv_qwindow_check pass.
 * One difference is by design: on the device a compression copies every shared leading block
 * (the kernels write whole kept blocks), the CPU only those it rewrites. So a sequence that
 * shares blocks may free fewer blocks on the device, or find too few there (RKV_ERR_NO_BLOCKS
 * where the CPU succeeds: the worlds then part and the input ends), and free blocks are
 * compared only while neither world shares a block. After such a compression the two worlds
 * may also park different blocks (the CPU still holds what the device copied), so their free
 * lists, and with them whether a later compaction has room to copy cached blocks, may differ:
 * from then on a hit that differs parts the worlds too.
 * Any other difference prints and aborts. Under gcc, tests/fuzz/replay_main.c replays the
 * corpus. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../unit/evict/evictor_fixture.h"
#include "fuzz_cursor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum { MAX_LEN = 160, STREAMS = L * KV };

typedef struct world {
  fixture f[2]; /* 0: CPU pool, 1: emulated device */
  rkv_evictor *ev[2];
  bool parted; /* a shared sequence compressed on the CPU only: stop comparing */
  bool loose;  /* a shared sequence compressed: the caches may differ from now on */
} world;

static uint32_t shared_blocks(const fixture *f) {
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(f->m, &st);
  return st.shared_blocks;
}

/* Whether seq holds a block another sequence holds too (in the CPU world, which shares at
 * least what the device world does). */
static bool seq_shares(world *w, int64_t seq) {
  uint32_t held = 0, exclusive = 0;
  return rkv_blockmgr_seq_footprint(w->f[0].m, seq, &held, &exclusive) == RKV_OK &&
         held != exclusive;
}

static void fz_abort(const char *what, rkv_status a, rkv_status b, const world *w) {
  fprintf(stderr, "fuzz_evictor: %s: cpu %s (%s), device %s (%s)\n", what, rkv_status_name(a),
          w->ev[0] ? rkv_evictor_last_error(w->ev[0]) : "", rkv_status_name(b),
          w->ev[1] ? rkv_evictor_last_error(w->ev[1]) : "");
  abort();
}

static void fz_same(const char *what, rkv_status a, rkv_status b, const world *w) {
  if (a != b) fz_abort(what, a, b, w);
}

/* The longest stream of seq in world 0 (the worlds are kept equal). */
static int32_t seq_len(world *w, int64_t seq) {
  int32_t most = 0;
  for (uint32_t s = 0; s < STREAMS; s++) {
    int32_t n = 0;
    (void)rkv_blockmgr_stream_len(w->f[0].m, seq, s / KV, s % KV, &n);
    if (n > most) most = n;
  }
  return most;
}

/* Lengths and block ids of every stream of seq (exists = false when it does not). */
typedef struct seq_shot {
  bool exists;
  int32_t len[STREAMS], nb[STREAMS];
  int32_t ids[STREAMS][MAX_LEN / BS + 2];
} seq_shot;

static void shoot(fixture *f, int64_t seq, seq_shot *o) {
  memset(o, 0, sizeof *o);
  o->exists = rkv_blockmgr_seq_exists(f->m, seq);
  for (uint32_t s = 0; o->exists && s < STREAMS; s++) {
    const int32_t *ids = NULL;
    (void)rkv_blockmgr_stream_len(f->m, seq, s / KV, s % KV, &o->len[s]);
    (void)rkv_blockmgr_stream_blocks(f->m, seq, s / KV, s % KV, &ids, &o->nb[s]);
    const int32_t nb = o->nb[s] < MAX_LEN / BS + 2 ? o->nb[s] : MAX_LEN / BS + 2;
    memcpy(o->ids[s], ids, (size_t)nb * sizeof(int32_t));
  }
}

/* After every operation: the checks, no device hazard, the two worlds equal. */
static void fz_verify(world *w, const char *what) {
  for (int k = 0; k < 2; k++) {
    fixture *f = &w->f[k];
    if (rkv_backend_sync(f->be) != RKV_OK) fz_abort("sync", RKV_OK, RKV_ERR_CUDA, w);
    rkv_status st = rkv_evictor_check(w->ev[k]);
    if (st == RKV_OK) st = rkv_blockmgr_check(f->m);
    if (st == RKV_OK) st = rkv_qwindow_check(f->qw);
    if (st == RKV_OK && f->dqw) st = rkv_qwindow_check(f->dqw);
    if (st != RKV_OK) {
      fprintf(stderr, "fuzz_evictor: after %s, a check failed in world %d: %s / %s\n", what, k,
              rkv_evictor_last_error(w->ev[k]), rkv_blockmgr_last_error(f->m));
      abort();
    }
  }
  if (rkv_emu_hazards(w->f[1].be) != 0) {
    fprintf(stderr, "fuzz_evictor: after %s: %s\n", what, rkv_emu_hazard_text(w->f[1].be));
    abort();
  }
  if (w->parted) return; /* each world's own checks only */
  /* by position, not by block id: the two paths return freed tails in different orders, so
   * later allocations take different ids */
  int bad = diff_seqs(&w->f[0], &w->f[1], false, false);
  if (!shared_blocks(&w->f[0]) && !shared_blocks(&w->f[1]))
    bad += rkv_blockmgr_free_blocks(w->f[0].m) != rkv_blockmgr_free_blocks(w->f[1].m);
  if (bad || rkv_test_failed_) {
    fprintf(stderr, "fuzz_evictor: after %s: the worlds differ in %d places (%d failed checks)\n",
            what, bad, rkv_test_failed_);
    abort();
  }
}

/* Parameters from three input bytes: mostly valid, sometimes not (a budget at most the
 * window, a window other than the query window's, a negative lambda). */
static rkv_evict_params fz_params(fz_cursor *c) {
  const uint8_t a = fz_byte(c), b = fz_byte(c), e = fz_byte(c);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  const rkv_evict_policy pols[5] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_STREAMING,
                                    RKV_EVICT_H2O, RKV_EVICT_FULL};
  p.policy = pols[a % 5];
  p.budget = (int32_t)(b % 64);               /* at most the window is refused */
  p.window = ((a >> 3) & 7) == 7 ? W - 1 : W; /* W - 1: not the query window's size */
  p.buffer = 1 + (int32_t)(e % 24);
  p.lambda = (e & 0x80) ? -0.5f : (float)(e % 11) / 10.0f;
  p.kernel = 1 + 2 * (int32_t)((b >> 6) & 1);
  p.sinks = (int32_t)((a >> 6) & 3);
  return p;
}

static void fz_add(world *w, fz_cursor *c) {
  const uint8_t a = fz_byte(c);
  const int64_t seq = 1 + a % MAXSEQ;
  const int32_t layer = (a >> 2) % 4 == 0 ? RKV_EVICTOR_ALL_LAYERS : (int32_t)((a >> 4) % (L + 1));
  const bool own = (a & 0x80) != 0;
  const rkv_evict_params p = fz_params(c);
  rkv_status st[2];
  for (int k = 0; k < 2; k++) {
    const uint32_t before = rkv_evictor_queued(w->ev[k]);
    st[k] = rkv_evictor_add(w->ev[k], seq, layer, own ? &p : NULL, NULL);
    if (st[k] != RKV_OK && rkv_evictor_queued(w->ev[k]) != before)
      fz_abort("a refused add queued something", st[k], st[k], w);
  }
  fz_same("add", st[0], st[1], w);
}

static void fz_run(world *w, uint8_t a) {
  const uint32_t queued = rkv_evictor_queued(w->ev[0]);
  const uint32_t cap = (a & 3) == 3 && queued ? queued - 1 : MAXSEQ;
  seq_shot before[2][MAXSEQ];
  bool shares[MAXSEQ];
  for (int64_t s = 1; s <= MAXSEQ; s++) {
    shares[s - 1] = seq_shares(w, s);
    for (int k = 0; k < 2; k++) shoot(&w->f[k], s, &before[k][s - 1]);
  }
  rkv_evictor_result res[2][MAXSEQ];
  uint32_t nr[2] = {0, 0};
  rkv_status st[2];
  for (int k = 0; k < 2; k++) st[k] = rkv_evictor_run(w->ev[k], res[k], cap, &nr[k]);
  if (nr[0] != nr[1]) fz_abort("result counts differ", st[0], st[1], w);
  for (int k = 0; k < 2; k++)
    if (st[k] == RKV_ERR_INTERNAL || st[k] == RKV_ERR_CUDA || st[k] == RKV_ERR_NO_MEMORY)
      fz_abort("run broke", st[0], st[1], w);
  if (!nr[0]) { /* refused as a call: the queue stays, nothing changes */
    fz_same("refused run", st[0], st[1], w);
    if (rkv_evictor_queued(w->ev[0]) != queued || rkv_evictor_queued(w->ev[1]) != queued)
      fz_abort("a refused run emptied its queue", st[0], st[1], w);
    return;
  }
  for (uint32_t i = 0; i < nr[0]; i++) {
    const rkv_evictor_result *x = &res[0][i], *y = &res[1][i];
    if (x->seq != y->seq || x->seq < 1 || x->seq > MAXSEQ)
      fz_abort("results name other sequences", x->status, y->status, w);
    for (int k = 0; k < 2; k++) { /* a failed compression leaves its sequence as it was */
      seq_shot now;
      shoot(&w->f[k], x->seq, &now);
      if (res[k][i].status != RKV_OK && memcmp(&now, &before[k][x->seq - 1], sizeof now) != 0)
        fz_abort("a failed compression changed its sequence", x->status, y->status, w);
    }
    const bool shared = shares[x->seq - 1];
    if (shared && x->status == RKV_OK) w->loose = true;
    if (shared && x->status == RKV_OK && y->status == RKV_ERR_NO_BLOCKS) {
      w->parted = true; /* the device's extra copies did not fit */
      continue;
    }
    fz_same("a sequence's result", x->status, y->status, w);
    if (x->compressed != y->compressed || x->streams_compressed != y->streams_compressed ||
        x->tokens_evicted != y->tokens_evicted || (!shared && x->blocks_freed != y->blocks_freed))
      fz_abort("results differ", x->status, y->status, w);
  }
  /* the run's status is its first failing sequence's: the same unless the worlds parted */
  if (!w->parted) fz_same("run", st[0], st[1], w);
}

/* Whether the pool surely holds an append of n tokens: the fixture's append grows a dummy
 * sequence by a third as much in between, may copy a shared tail, and expects to succeed. */
static bool room_for(world *w, int32_t n) {
  const uint32_t need = STREAMS * (uint32_t)(n / BS + n / (3 * BS) + 3);
  return rkv_blockmgr_free_blocks(w->f[0].m) >= need && rkv_blockmgr_free_blocks(w->f[1].m) >= need;
}

/* n tokens appended to seq in both worlds, when the pool has room. */
static void fz_append(world *w, int64_t seq, int32_t n) {
  const int32_t len = seq_len(w, seq);
  if (!rkv_blockmgr_seq_exists(w->f[0].m, seq) || len + n > MAX_LEN || !room_for(w, n)) return;
  for (int k = 0; k < 2; k++) fx_append(&w->f[k], seq, len, n);
}

static void fz_fork(world *w, int64_t parent, int64_t child) {
  rkv_status st[2];
  for (int k = 0; k < 2; k++) {
    fixture *f = &w->f[k];
    st[k] = rkv_blockmgr_seq_fork(f->m, parent, child);
    if (st[k] != RKV_OK) continue;
    if (rkv_qwindow_seq_fork(f->qw, parent, child) != RKV_OK ||
        (f->dqw && rkv_qwindow_seq_fork(f->dqw, parent, child) != RKV_OK))
      fz_abort("window fork", RKV_OK, RKV_ERR_STATE, w);
  }
  fz_same("fork", st[0], st[1], w);
}

static void fz_free(world *w, int64_t seq) {
  rkv_status st[2];
  for (int k = 0; k < 2; k++) {
    fixture *f = &w->f[k];
    st[k] = rkv_blockmgr_seq_free(f->m, seq);
    (void)rkv_qwindow_seq_remove(f->qw, seq);
    if (f->dqw) (void)rkv_qwindow_seq_remove(f->dqw, seq);
  }
  fz_same("free", st[0], st[1], w);
}

static void fz_protect(world *w, int64_t seq, uint8_t blocks) {
  rkv_status st[2];
  for (int k = 0; k < 2; k++) st[k] = rkv_blockmgr_seq_protect(w->f[k].m, seq, (blocks % 6) * BS);
  fz_same("protect", st[0], st[1], w);
}

/* The block hashes of prompt template t (two templates, four blocks each). */
static void fz_hashes(uint32_t t, uint64_t h[4]) {
  for (uint32_t i = 0; i < 4; i++) h[i] = 0x5EED0000u + 16u * t + i;
}

/* Registers seq's first 1..4 blocks under template a & 1 in both worlds. */
static void fz_register(world *w, int64_t seq, uint8_t a) {
  uint64_t h[4];
  fz_hashes(a & 1, h);
  rkv_status st[2];
  uint32_t ins[2] = {0, 0};
  for (int k = 0; k < 2; k++)
    st[k] = rkv_blockmgr_prefix_insert(w->f[k].m, seq, h, 1 + (a >> 1) % 4, &ins[k]);
  fz_same("register", st[0], st[1], w);
  if (ins[0] != ins[1]) fz_abort("registered groups differ", st[0], st[1], w);
}

/* A new sequence seq hitting template a & 1's cached groups in both worlds, with a full query
 * window. The worlds must hit the same number of groups. */
static void fz_hit(world *w, int64_t seq, uint8_t a) {
  if (rkv_blockmgr_seq_exists(w->f[0].m, seq)) return;
  uint64_t h[4];
  fz_hashes(a & 1, h);
  uint32_t hit[2] = {0, 0};
  for (int k = 0; k < 2; k++) EXPECT_OK(rkv_blockmgr_prefix_match(w->f[k].m, h, 4, &hit[k]));
  if (hit[0] != hit[1]) {
    if (!w->loose) {
      fprintf(stderr, "fuzz_evictor: the caches differ: cpu hits %u groups, device %u\n", hit[0],
              hit[1]);
      abort();
    }
    w->parted = true;
    return;
  }
  if (!hit[0]) return;
  rkv_status st[2];
  for (int k = 0; k < 2; k++) {
    fixture *f = &w->f[k];
    st[k] = rkv_blockmgr_seq_create_cached(f->m, seq, h, hit[k]);
    if (st[k] != RKV_OK) continue;
    EXPECT_OK(rkv_qwindow_seq_add(f->qw, seq));
    if (f->dqw) EXPECT_OK(rkv_qwindow_seq_add(f->dqw, seq));
    fx_push_rows(f, seq, W);
  }
  fz_same("hit", st[0], st[1], w);
}

/* A sequence id that exists in neither world gets a fresh one (windows included). */
static void fz_create(world *w, int64_t seq, int32_t n, uint32_t rows) {
  if (rkv_blockmgr_seq_exists(w->f[0].m, seq) || !room_for(w, n)) return;
  for (int k = 0; k < 2; k++) fx_seq(&w->f[k], seq, n, rows);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 4) return 0;
  fz_cursor c = {data, size, 0};
  const uint8_t b0 = fz_byte(&c), b1 = fz_byte(&c), b2 = fz_byte(&c);
  const rkv_dtype dts[3] = {RKV_DTYPE_F32, RKV_DTYPE_F16, RKV_DTYPE_BF16};
  const rkv_dtype dt = dts[b0 % 3];
  const rkv_evict_granularity g = (rkv_evict_granularity)((b0 >> 2) % RKV_EVICT_GRAN_COUNT_);
  const uint32_t blocks = 60 + 8u * (b1 % 48); /* 60 .. 436: tight pools fail fresh copies */
  const bool prefix = (b1 / 48) % 2;
  rkv_test_failed_ = 0;
  world w;
  memset(&w, 0, sizeof w);
  for (int k = 0; k < 2; k++) fx_init_pc(&w.f[k], dt, blocks, 1 + b2, k == 1, false, prefix);
  rkv_evict_params p = fz_params(&c);
  if (rkv_evict_params_validate(&p, NULL, 0) != RKV_OK) { /* the defaults must be valid */
    const rkv_evict_policy pol = p.policy;
    p = (rkv_evict_params)RKV_EVICT_PARAMS_INIT;
    p.policy = pol, p.budget = 24, p.window = W, p.buffer = 8;
  }
  for (int k = 0; k < 2; k++) {
    w.ev[k] = fx_evictor_win(&w.f[k], &p, g, k == 1);
    if (!w.ev[k]) fz_abort("create", RKV_OK, RKV_ERR_INVALID_ARG, &w);
  }
  const uint32_t nseq = 1 + (b0 >> 5) % 3;
  for (int64_t s = 1; s <= (int64_t)nseq; s++) {
    const uint8_t x = fz_byte(&c);
    fz_create(&w, s, 8 + x % 96, W + x % 5);
  }
  fz_verify(&w, "set-up");
  for (int ops = 0; c.i < c.n && ops < 64 && !w.parted; ops++) {
    const uint8_t op = fz_byte(&c), a = fz_byte(&c);
    const int64_t seq = 1 + a % MAXSEQ, other = 1 + (a >> 2) % MAXSEQ;
    const char *what = "?";
    switch (op % 12) {
      case 0:
      case 1:
        what = "add";
        c.i--; /* the add reads its own first byte */
        fz_add(&w, &c);
        break;
      case 2:
      case 3:
        what = "run";
        fz_run(&w, a);
        break;
      case 4:
        what = "append";
        fz_append(&w, seq, 1 + (a >> 2) % 40);
        break;
      case 5:
        what = "push rows";
        if (rkv_blockmgr_seq_exists(w.f[0].m, seq))
          for (int k = 0; k < 2; k++) fx_push_rows(&w.f[k], seq, 1 + (a >> 2) % W);
        break;
      case 6:
        what = "protect";
        fz_protect(&w, seq, fz_byte(&c));
        break;
      case 7:
        what = "fork";
        fz_fork(&w, seq, other);
        break;
      case 8:
        what = (a & 0x40) ? "create" : "free";
        if (a & 0x40)
          fz_create(&w, seq, 8 + (a >> 2) % 64, W);
        else
          fz_free(&w, seq);
        break;
      case 10:
        what = "register";
        fz_register(&w, seq, a >> 2);
        break;
      case 11:
        what = "hit";
        fz_hit(&w, seq, a >> 2);
        break;
      default:
        what = "clear";
        for (int k = 0; k < 2; k++) rkv_evictor_clear(w.ev[k]);
        break;
    }
    fz_verify(&w, what);
  }
  for (int k = 0; k < 2; k++) {
    EXPECT_OK(rkv_backend_sync(w.f[k].be));
    rkv_evictor_destroy(w.ev[k]);
    fx_fini(&w.f[k]);
  }
  if (rkv_test_failed_) abort();
  return 0;
}
