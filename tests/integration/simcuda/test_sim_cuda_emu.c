/* The host logic of `rkv sim --compute cuda` (tools/rkv/sim_engine_cuda.c), checked without a
 * GPU. The engine is compiled against a stand-in cuda_runtime.h (emu/: device memory is host
 * memory) with the GPU-only library entries emulated on a CPU pool (emu/emu_shim.c: the query
 * window push writes the documented ring layout, the device eviction follows evict_cuda.h and
 * selects with the CPU path's code). Everything else it calls is the real library: KV write,
 * attention, CSR export, compact_uniform, rkv_evict_cuda_describe / _freed_blocks.
 *
 * Two schedulers run the same requests in lockstep, one with the cpu engine (rkv_evict_layer)
 * and one with the emulated cuda engine. Per step the plans, the engines' outputs (compressed,
 * evicted tokens, freed blocks) and, after steps that compress and every few others, the K and V
 * bytes and H2O score of every cached token of every live stream must be identical. So the
 * staging offsets, uploaded tables, slots, ring slots and positions (R-KV and SnapKV select with
 * the window queries), the compaction descriptors and the swap path are all checked; the CUDA
 * kernels themselves are not (tests/cuda covers them against the same CPU code on a GPU). */
#include <stdlib.h>
#include <string.h>

#include <rkv/blockmgr.h>
#include <rkv/scheduler.h>

#include "rkv_test.h"
#define EMU_SHIM_IMPL
#include "emu_shim.h"
#include "sim.h"

#define NREQ 12

typedef struct side {
  rkv_blockmgr *bm;
  rkv_sched *s;
  sim_engine *e;
  rkv_sched_output outs[NREQ + 1];
} side;

static void side_destroy(side *d) {
  sim_engine_destroy(d->e);
  rkv_sched_destroy(d->s);
  rkv_blockmgr_destroy(d->bm);
  memset(d, 0, sizeof *d);
}

static bool side_create(side *d, sim_compute kind, const sim_model *m, const rkv_evict_params *ev,
                        rkv_sched_preempt_mode pm, uint32_t blocks, const sim_req *reqs) {
  memset(d, 0, sizeof *d);
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = blocks;
  bc.block_size = 16;
  bc.num_layers = m->layers;
  bc.num_kv_heads = m->kv_heads;
  bc.head_dim = m->head_dim;
  bc.dtype = RKV_DTYPE_F32;
  bc.max_seqs = NREQ;
  if (rkv_blockmgr_create(&bc, &d->bm) != RKV_OK) return false;
  rkv_sched_config sc = RKV_SCHED_CONFIG_INIT;
  sc.max_batched_tokens = 256;
  sc.max_seqs = NREQ;
  sc.admission = RKV_SCHED_OPTIMISTIC;
  sc.preempt = pm;
  sc.host_blocks = pm == RKV_SCHED_PREEMPT_SWAP ? 4 * blocks : 0;
  sc.evict = *ev;
  char err[256];
  if (rkv_sched_create(&sc, d->bm, &d->s, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "scheduler: %s\n", err);
    return false;
  }
  for (uint32_t i = 0; i < NREQ; i++) {
    rkv_sched_request rq = {reqs[i].id, reqs[i].prompt, reqs[i].gen, 0, reqs[i].arrival, NULL};
    if (rkv_sched_add_request(d->s, &rq) != RKV_OK) return false;
  }
  return sim_engine_create(kind, m, d->bm, &sc.evict, sc.host_blocks, NREQ, 7, reqs, NREQ, 1,
                           &d->e);
}

/* Compares every cached token of seq in both pools; returns the rows compared or -1. */
static long compare_seq(const side *a, const side *b, const sim_model *m, int64_t seq) {
  const rkv_kv_pool *pa = emu_pool(0), *pb = emu_pool(1);
  const rkv_kv_layout *lay = rkv_kv_pool_layout(pa);
  const size_t bb = rkv_kv_block_bytes(lay), row = lay->head_dim * rkv_dtype_size(lay->dtype);
  const unsigned char *ba = rkv_kv_pool_base(pa), *bbase = rkv_kv_pool_base(pb);
  const float *sa = rkv_kv_pool_scores(pa), *sb = rkv_kv_pool_scores(pb);
  long rows = 0;
  for (uint32_t l = 0; l < m->layers; l++)
    for (uint32_t h = 0; h < m->kv_heads; h++) {
      int32_t na = -1, nb = -1;
      rkv_status ra = rkv_blockmgr_stream_len(a->bm, seq, l, h, &na);
      rkv_status rb = rkv_blockmgr_stream_len(b->bm, seq, l, h, &nb);
      if (ra != rb || na != nb) {
        fprintf(stderr, "seq %lld l %u h %u: length %d (%d) vs %d (%d)\n", (long long)seq, l, h, na,
                ra, nb, rb);
        return -1;
      }
      if (ra != RKV_OK) continue; /* finished on both sides */
      for (int32_t j = 0; j < na; j++) {
        int64_t xa = 0, xb = 0;
        if (rkv_blockmgr_stream_slot(a->bm, seq, l, h, j, &xa) != RKV_OK ||
            rkv_blockmgr_stream_slot(b->bm, seq, l, h, j, &xb) != RKV_OK)
          return -1;
        const uint32_t oa = (uint32_t)(xa % lay->block_size), ob = (uint32_t)(xb % lay->block_size);
        const unsigned char *blka = ba + (size_t)(xa / lay->block_size) * bb;
        const unsigned char *blkb = bbase + (size_t)(xb / lay->block_size) * bb;
        if (memcmp(blka + rkv_kv_k_offset(lay, oa), blkb + rkv_kv_k_offset(lay, ob), row) ||
            memcmp(blka + rkv_kv_v_offset(lay, oa), blkb + rkv_kv_v_offset(lay, ob), row) ||
            memcmp(&sa[xa], &sb[xb], sizeof(float))) {
          fprintf(stderr, "seq %lld l %u h %u pos %d: K/V/score differ (score %g vs %g)\n",
                  (long long)seq, l, h, j, (double)sa[xa], (double)sb[xb]);
          return -1;
        }
        rows++;
      }
    }
  return rows;
}

static void run_config(rkv_evict_policy pol, rkv_sched_preempt_mode pm, const sim_req *reqs) {
  const char *name = rkv_evict_policy_name(pol);
  const char *pmn = pm == RKV_SCHED_PREEMPT_SWAP ? "swap" : "recompute";
  sim_model m = {"tiny", 2, 4, 2, 64, 1e6};
  rkv_evict_params ev = RKV_EVICT_PARAMS_INIT;
  ev.policy = pol;
  ev.budget = 64;
  ev.buffer = 32;
  ev.window = 8;
  emu_reset();
  side a, b;
  bool ok = side_create(&a, SIM_COMPUTE_CPU, &m, &ev, pm, 96, reqs) &&
            side_create(&b, SIM_COMPUTE_CUDA, &m, &ev, pm, 96, reqs);
  EXPECT(ok && emu_pool(0) && emu_pool(1));
  long mismatches = 0, rows = 0;
  uint64_t steps = 0, compressions = 0;
  while (ok) {
    const rkv_sched_plan *pa = NULL, *pb = NULL;
    if (rkv_sched_step(a.s, &pa) != RKV_OK || rkv_sched_step(b.s, &pb) != RKV_OK) {
      mismatches++;
      break;
    }
    if (pa->n_seqs != pb->n_seqs || pa->n_swap_out != pb->n_swap_out ||
        pa->n_swap_in != pb->n_swap_in || pa->n_preempted != pb->n_preempted) {
      fprintf(stderr, "%s/%s step %llu: plans differ\n", name, pmn, (unsigned long long)steps);
      mismatches++;
      break;
    }
    if (!pa->n_seqs) break;
    if (!sim_engine_run(a.e, pa, a.outs) || !sim_engine_run(b.e, pb, b.outs)) {
      mismatches++;
      break;
    }
    bool any = false;
    for (uint32_t i = 0; i < pa->n_seqs; i++) {
      const rkv_sched_output *x = &a.outs[i], *y = &b.outs[i];
      if (x->id != y->id || x->compressed != y->compressed ||
          x->tokens_evicted != y->tokens_evicted || x->blocks_freed != y->blocks_freed) {
        fprintf(stderr, "%s/%s step %llu seq %lld: outputs differ\n", name, pmn,
                (unsigned long long)steps, (long long)x->id);
        mismatches++;
      }
      any |= x->compressed;
      compressions += x->compressed;
    }
    if (rkv_sched_report(a.s, a.outs, pa->n_seqs) != RKV_OK ||
        rkv_sched_report(b.s, b.outs, pb->n_seqs) != RKV_OK) {
      mismatches++;
      break;
    }
    if (any || steps % 8 == 0)
      for (uint32_t i = 0; i < pa->n_seqs; i++) {
        long r = compare_seq(&a, &b, &m, pa->seqs[i].id);
        if (r < 0) {
          fprintf(stderr, "%s/%s step %llu: caches differ\n", name, pmn, (unsigned long long)steps);
          mismatches++;
        } else {
          rows += r;
        }
      }
    steps++;
    if (mismatches) break;
  }
  rkv_sched_metrics ma, mb;
  memset(&ma, 0, sizeof ma);
  memset(&mb, 0, sizeof mb);
  if (ok) {
    rkv_sched_get_metrics(a.s, &ma);
    rkv_sched_get_metrics(b.s, &mb);
  }
  printf(
      "%s/%s: %llu steps, %llu compressions, %llu preemptions, %u finished, %ld rows "
      "compared, %lu emulated compress calls, %lu pushes, %lu copy hazards, %ld mismatches\n",
      name, pmn, (unsigned long long)steps, (unsigned long long)compressions,
      (unsigned long long)ma.num_preemptions, (unsigned)ma.num_finished, rows, emu_compress_calls(),
      emu_push_calls(), emu_fake_hazards(), mismatches);
  EXPECT_EQ_INT(mismatches, 0);
  EXPECT_EQ_INT(ma.num_finished, NREQ);
  EXPECT_EQ_INT(mb.num_finished, NREQ);
  EXPECT_EQ_INT(ma.num_preemptions, mb.num_preemptions);
  /* the workload must exercise what the comparison claims to cover */
  EXPECT(compressions > 0 && emu_compress_calls() > 0);
  EXPECT(ma.num_preemptions > 0);
  EXPECT(rows > 0);
  EXPECT_EQ_INT(emu_fake_hazards(), 0);
  if (pol == RKV_EVICT_RKV || pol == RKV_EVICT_SNAPKV) EXPECT(emu_push_calls() > 0);
  side_destroy(&a);
  side_destroy(&b);
  emu_reset();
}

int main(void) {
  sim_req reqs[NREQ];
  uint64_t s = 11;
  for (int i = 0; i < NREQ; i++) {
    reqs[i].id = i;
    reqs[i].arrival = 0.0;
    reqs[i].prompt = 24 + (int64_t)(rkv_test_rand(&s) % 100);
    reqs[i].gen = 120 + (int64_t)(rkv_test_rand(&s) % 260);
  }
  const rkv_evict_policy pols[] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_STREAMING,
                                   RKV_EVICT_H2O};
  for (size_t i = 0; i < sizeof pols / sizeof pols[0]; i++) {
    run_config(pols[i], RKV_SCHED_PREEMPT_RECOMPUTE, reqs);
    run_config(pols[i], RKV_SCHED_PREEMPT_SWAP, reqs);
  }
  return rkv_test_finish();
}
