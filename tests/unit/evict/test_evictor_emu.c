/* rkv_evictor on the emulated device (<rkv/buffer_emu.h>): the device path's host logic (the
 * uniform cut, descriptors, one packed upload and one batched launch per parameter set, the
 * query windows read from DEVICE memory as rotated rings) against the same evictor on a CPU
 * pool built identically:
 *  - every device policy, f32 and f16, three sequences in one run (parameter sets A, B, A:
 *    two launches), one layer alone: the same lengths, block tables, K/V rows, per-slot
 *    masses of every slot and free blocks as the CPU run; no copy hazard, nothing left queued;
 *  - FULL and at-budget sequences change nothing;
 *  - a run's launches never wait for each other; a run reuses the descriptor arena without a
 *    sync when the backend synced since the last upload, and syncs first otherwise;
 *  - every coarser granularity (layer, kvhead, sequence; whole sequences in the launch, the
 *    groups' scores aggregated on the device side) equals the CPU evictor's rkv_evict_seq the
 *    same way, and its groups hold one set; streams out of lockstep are refused at run;
 *  - the same with the evictor's own query window on the device (an rkv_qwindow on the
 *    backend, filled by the batched push; adds name no window) as with named rings; a
 *    sequence whose window holds fewer than `window` rows is refused (RKV_ERR_STATE), alone;
 *  - a protected prefix of whole blocks (prefix caching's protect rule), shared with a fork
 *    as a cached prefix is shared: every policy at stream and sequence granularity equals the
 *    CPU evictor (selection among the tokens after the prefix, P + budget kept), and the
 *    protected blocks stay the same ids, shared, their bytes untouched;
 *  - bad input changes nothing: a missing or malformed device window, a protected prefix that
 *    ends inside a block (refused at run), a policy without a window, an R-KV stream longer
 *    than the kernels take (refused at run, before the cut);
 *  - a fork whose fresh blocks are missing stays unchanged while the other sequence compresses;
 *  - every allocation of a first run failed in turn changes nothing; the retry equals a
 *    fault-free run.
 * rkv_evictor_check and rkv_blockmgr_check after every run. */
#include "evictor_fixture.h"

static void run_ok(rkv_evictor *ev, rkv_evictor_result *res, uint32_t want) {
  uint32_t nr = 0;
  const rkv_status st = rkv_evictor_run(ev, res, MAXSEQ, &nr);
  if (st != RKV_OK) RKV_TEST_FAIL_("run: %s", rkv_evictor_last_error(ev));
  EXPECT_EQ_INT(nr, want);
}

/* Internal (evictor_internal.h), for tests: the most streams one device launch takes. */
void rkvi_evictor_set_launch_streams(rkv_evictor *ev, uint32_t n);

/* Sequences 1..3 in a CPU fixture and an emulated one; sequence 2 gets its own parameters, so
 * the device path batches 1 and 3 (A, B, A). launch_streams: 0 for the default (65535); lower
 * splits a parameter set's launch. */
static void compare_at(rkv_evict_policy pol, rkv_dtype dt, int32_t layer, rkv_evict_granularity g,
                       bool own, uint32_t launch_streams) {
  fixture c, e;
  fx_twins(&c, &e, false, true, dt, 400, 31 + (uint64_t)pol, (const int32_t[]){90, 75, 60},
           (const uint32_t[]){W + 3, W + 6, W + 9}, 3);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT, p3;
  p.policy = pol, p.budget = 40, p.window = W;
  p3 = p, p3.budget = 33, p3.lambda = 0.3f;
  rkv_evictor *ec = fx_evictor(&c, &p, g);
  rkv_evictor *ee = fx_evictor_win(&e, &p, g, own);
  rkvi_evictor_set_launch_streams(ee, launch_streams);
  for (int64_t s = 1; s <= 3; s++) {
    const rkv_evict_params *ps = s == 2 ? &p3 : NULL;
    const rkv_evictor_window win = fx_window(&e, s, (int32_t)(s * 3) % W);
    EXPECT_OK(rkv_evictor_add(ec, s, layer, ps, NULL));
    EXPECT_OK(rkv_evictor_add(ee, s, layer, ps, own ? NULL : &win));
  }
  EXPECT_OK(rkv_evictor_check(ee));
  rkv_evictor_result rc[MAXSEQ], re[MAXSEQ];
  run_ok(ec, rc, 3);
  const uint64_t syncs = rkv_backend_sync_count(e.be);
  run_ok(ee, re, 3);
  EXPECT_EQ_INT(rkv_backend_sync_count(e.be), syncs); /* the launches never wait */
  EXPECT_OK(rkv_backend_sync(e.be));
  EXPECT_EQ_INT(rkv_emu_hazards(e.be), 0);
  for (int i = 0; i < 3; i++) {
    EXPECT(rc[i].seq == re[i].seq && re[i].status == RKV_OK);
    EXPECT(rc[i].compressed == re[i].compressed);
    EXPECT_EQ_INT(re[i].tokens_evicted, rc[i].tokens_evicted);
    EXPECT_EQ_INT(re[i].streams_compressed, rc[i].streams_compressed);
    EXPECT_EQ_INT(re[i].blocks_freed, rc[i].blocks_freed);
  }
  if (pol != RKV_EVICT_FULL) EXPECT(re[0].tokens_evicted > 0 && re[2].tokens_evicted > 0);
  char what[96];
  snprintf(what, sizeof what, "emu %s %s layer %d granularity %s%s%s", rkv_evict_policy_name(pol),
           rkv_dtype_name(dt), layer, rkv_evict_granularity_name(g),
           own ? ", the evictor's window" : "", launch_streams ? ", split launches" : "");
  expect_same(&c, &e, true, false, what);
  EXPECT_OK(rkv_evictor_check(ee));
  EXPECT_OK(rkv_blockmgr_check(e.m));
  rkv_evictor_destroy(ec);
  rkv_evictor_destroy(ee);
  fx_fini(&c);
  fx_fini(&e);
}

static void compare_case(rkv_evict_policy pol, rkv_dtype dt, int32_t layer, rkv_evict_granularity g,
                         bool own) {
  compare_at(pol, dt, layer, g, own, 0);
}

static void test_equals_cpu(void) {
  const rkv_evict_policy pols[5] = {RKV_EVICT_FULL, RKV_EVICT_RKV, RKV_EVICT_SNAPKV,
                                    RKV_EVICT_STREAMING, RKV_EVICT_H2O};
  for (int pi = 0; pi < 5; pi++) {
    /* the evictor's own device query window (adds name none), then the deprecated adds that
     * name a caller's ring */
    for (int own = 1; own >= 0; own--) {
      compare_case(pols[pi], RKV_DTYPE_F32, RKV_EVICTOR_ALL_LAYERS, RKV_EVICT_GRAN_STREAM, own);
      compare_case(pols[pi], RKV_DTYPE_F32, 2, RKV_EVICT_GRAN_STREAM, own);
    }
    compare_case(pols[pi], RKV_DTYPE_F16, RKV_EVICTOR_ALL_LAYERS, RKV_EVICT_GRAN_STREAM, false);
    /* a coarser unit: every stream of a sequence in the launch, the group's scores summed */
    for (int g = RKV_EVICT_GRAN_LAYER; g < RKV_EVICT_GRAN_COUNT_; g++)
      compare_case(pols[pi], g == RKV_EVICT_GRAN_KVHEAD ? RKV_DTYPE_F16 : RKV_DTYPE_F32,
                   RKV_EVICTOR_ALL_LAYERS, (rkv_evict_granularity)g, g == RKV_EVICT_GRAN_SEQUENCE);
  }
}

/* The protect rule on a device: sequences 1..3 protect 2, 1 and 2 blocks; 4 shares exactly
 * 1's protected blocks (a fork cut back to them), as a prefix-cache hit shares its cached
 * groups. The device run must equal the CPU run (stream contents, block ids, free blocks),
 * keep P + budget per stream, and leave the protected blocks in place: the same ids in 1 and
 * 4, their bytes as before the run. */
static void protect_case(rkv_evict_policy pol, rkv_evict_granularity g) {
  fixture c, e;
  fx_twins(&c, &e, false, true, RKV_DTYPE_F32, 400, 71 + (uint64_t)pol,
           (const int32_t[]){90, 75, 60}, (const uint32_t[]){W + 3, W + 6, W + 9}, 3);
  const int32_t prot[3] = {2 * BS, BS, 2 * BS};
  for (int k = 0; k < 2; k++) {
    fixture *x = k ? &e : &c;
    for (int64_t s = 1; s <= 3; s++) EXPECT_OK(rkv_blockmgr_seq_protect(x->m, s, prot[s - 1]));
    /* the fork inherits the protection, so the cut keeps the shared protected blocks */
    EXPECT_OK(rkv_blockmgr_seq_fork(x->m, 1, 4));
    EXPECT_OK(rkv_blockmgr_truncate(x->m, 4, RKV_EVICTOR_ALL_LAYERS, prot[0], NULL));
  }
  /* the protected bytes of sequence 1 (all its protected blocks, every stream) before */
  const size_t bb = rkv_kv_block_bytes(rkv_kv_pool_layout(e.pool));
  enum { NPB = L * KV * 2 };
  int32_t pids[NPB];
  unsigned char *before = malloc(NPB * bb);
  for (uint32_t s = 0; s < L * KV; s++) {
    const int32_t *ids = NULL;
    int32_t nb = 0;
    EXPECT_OK(rkv_blockmgr_stream_blocks(e.m, 1, s / KV, s % KV, &ids, &nb));
    for (int b = 0; b < 2; b++) {
      pids[s * 2 + b] = ids[b];
      memcpy(before + (s * 2 + b) * bb,
             (const unsigned char *)rkv_kv_pool_base(e.pool) + (size_t)ids[b] * bb, bb);
    }
  }
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = pol, p.budget = 40, p.window = W;
  rkv_evictor *ec = fx_evictor(&c, &p, g);
  rkv_evictor *ee = fx_evictor_win(&e, &p, g, true);
  for (int64_t s = 1; s <= 3; s++) {
    EXPECT_OK(rkv_evictor_add(ec, s, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
    EXPECT_OK(rkv_evictor_add(ee, s, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  }
  rkv_evictor_result rc[MAXSEQ], re[MAXSEQ];
  run_ok(ec, rc, 3);
  run_ok(ee, re, 3);
  EXPECT_OK(rkv_backend_sync(e.be));
  EXPECT_EQ_INT(rkv_emu_hazards(e.be), 0);
  for (int i = 0; i < 3; i++) {
    EXPECT(re[i].status == RKV_OK && re[i].compressed);
    EXPECT_EQ_INT(re[i].tokens_evicted, rc[i].tokens_evicted);
    EXPECT_EQ_INT(re[i].blocks_freed, rc[i].blocks_freed);
    for (uint32_t s = 0; s < L * KV; s++) {
      int32_t len = 0;
      EXPECT_OK(rkv_blockmgr_stream_len(e.m, i + 1, s / KV, s % KV, &len));
      EXPECT_EQ_INT(len, prot[i] + p.budget);
    }
  }
  char what[96];
  snprintf(what, sizeof what, "emu protect %s granularity %s", rkv_evict_policy_name(pol),
           rkv_evict_granularity_name(g));
  expect_same(&c, &e, true, false, what);
  int moved = 0;
  for (uint32_t s = 0; s < L * KV; s++) {
    const int32_t *i1 = NULL, *i4 = NULL;
    int32_t n1 = 0, n4 = 0;
    EXPECT_OK(rkv_blockmgr_stream_blocks(e.m, 1, s / KV, s % KV, &i1, &n1));
    EXPECT_OK(rkv_blockmgr_stream_blocks(e.m, 4, s / KV, s % KV, &i4, &n4));
    for (int b = 0; b < 2; b++) {
      moved += i1[b] != pids[s * 2 + b] || i4[b] != pids[s * 2 + b];
      moved +=
          memcmp(before + (s * 2 + b) * bb,
                 (const unsigned char *)rkv_kv_pool_base(e.pool) + (size_t)pids[s * 2 + b] * bb,
                 bb) != 0;
    }
  }
  EXPECT_EQ_INT(moved, 0);
  EXPECT_OK(rkv_evictor_check(ee));
  EXPECT_OK(rkv_blockmgr_check(e.m));
  free(before);
  rkv_evictor_destroy(ec);
  rkv_evictor_destroy(ee);
  fx_fini(&c);
  fx_fini(&e);
}

/* Prefix caching: a sequence compressing its own registered prompt. The CPU evictor compacts
 * one layer per call, the device path cuts all layers at once; with `free_list` blocks free,
 * both keep the cached groups (copies of the 3 kept cached blocks of 6 streams: 18) or both
 * drop them. Between 14 and 17 free blocks each layer's call alone finds room (the previous
 * layers' uncached tails come back), which the CPU path took before it decided once per
 * sequence (rkv_blockmgr_compact_prepare). With another prompt parked, room counts its
 * blocks, and both reclaim the same groups of it, sized for the whole compaction (the CPU
 * path's later layers would need fewer: prepare reclaims for all of them). */
static void cached_case(uint32_t free_list, bool parked) {
  enum { LEN = 40, HELD = L * KV * (LEN / BS), OLD = 2 * L * KV };
  const uint64_t h[4] = {101, 102, 103, 104}; /* the first four of its five blocks */
  const uint64_t h_old[2] = {201, 202};
  fixture c, e;
  for (int k = 0; k < 2; k++) {
    fixture *x = k ? &e : &c;
    fx_init_pc(x, RKV_DTYPE_F32, HELD + free_list + (parked ? OLD : 0), 11, k == 1, true, true);
    uint32_t ins = 0;
    fx_seq(x, 1, LEN, W);
    if (parked) { /* another prompt's two groups, parked (the only ones on the LRU list) */
      EXPECT_OK(rkv_blockmgr_seq_create(x->m, 2));
      EXPECT_OK(rkv_blockmgr_append(x->m, 2, 2 * BS, NULL, NULL, NULL));
      EXPECT_OK(rkv_blockmgr_prefix_insert(x->m, 2, h_old, 2, &ins));
      EXPECT_OK(rkv_blockmgr_seq_free(x->m, 2));
    }
    EXPECT_OK(rkv_blockmgr_prefix_insert(x->m, 1, h, 4, &ins));
    EXPECT_EQ_INT(ins, 4);
    EXPECT_EQ_INT(rkv_blockmgr_free_blocks(x->m), free_list + (parked ? OLD : 0));
  }
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.policy = RKV_EVICT_RKV, p.budget = 3 * BS, p.window = W;
  rkv_evictor *ec = fx_evictor(&c, &p, RKV_EVICT_GRAN_STREAM);
  rkv_evictor *ee = fx_evictor_win(&e, &p, RKV_EVICT_GRAN_STREAM, true);
  EXPECT_OK(rkv_evictor_add(ec, 1, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  EXPECT_OK(rkv_evictor_add(ee, 1, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  rkv_evictor_result rc[MAXSEQ], re[MAXSEQ];
  run_ok(ec, rc, 1);
  run_ok(ee, re, 1);
  EXPECT_OK(rkv_backend_sync(e.be));
  EXPECT_EQ_INT(rkv_emu_hazards(e.be), 0);
  EXPECT(rc[0].compressed && re[0].compressed);
  uint32_t hc = 9, he = 9;
  EXPECT_OK(rkv_blockmgr_prefix_match(c.m, h, 4, &hc));
  EXPECT_OK(rkv_blockmgr_prefix_match(e.m, h, 4, &he));
  EXPECT_EQ_INT(hc, he);
  const uint32_t pool = free_list + (parked ? OLD : 0);
  EXPECT_EQ_INT(hc, pool >= 18 ? 4 : 0);
  if (parked) { /* reclaimed, oldest first, only as far as the copies need: one group per
                 * 6 missing blocks, the same in both */
    const uint32_t gone = free_list < 18 && pool >= 18 ? (18 - free_list + 5) / 6 : 0;
    for (uint32_t g = 0; g < 2; g++) { /* each group alone; the prompt's end goes first */
      EXPECT_OK(rkv_blockmgr_prefix_match(c.m, &h_old[g], 1, &hc));
      EXPECT_OK(rkv_blockmgr_prefix_match(e.m, &h_old[g], 1, &he));
      EXPECT_EQ_INT(hc, he);
      EXPECT_EQ_INT(hc, g + gone < 2);
    }
  }
  char what[64];
  snprintf(what, sizeof what, "cached copies, %u free%s", free_list, parked ? " + parked" : "");
  expect_same(&c, &e, false, false, what);
  EXPECT_OK(rkv_blockmgr_check(e.m));
  rkv_evictor_destroy(ec);
  rkv_evictor_destroy(ee);
  fx_fini(&c);
  fx_fini(&e);
}

static void test_cached_copies_equal_cpu(void) {
  const uint32_t frees[5] = {12, 14, 16, 18, 24};
  for (int i = 0; i < 5; i++) cached_case(frees[i], false);
  /* 10 free + 12 parked: one layer's call at a time would reclaim one group (the first two
   * layers' tails come back), the one cut two */
  const uint32_t parked_frees[5] = {0, 4, 6, 10, 12};
  for (int i = 0; i < 5; i++) cached_case(parked_frees[i], true);
}

static void test_protected_equals_cpu(void) {
  const rkv_evict_policy pols[4] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_STREAMING,
                                    RKV_EVICT_H2O};
  for (int pi = 0; pi < 4; pi++) {
    protect_case(pols[pi], RKV_EVICT_GRAN_STREAM);
    protect_case(pols[pi], RKV_EVICT_GRAN_SEQUENCE);
  }
}

/* A parameter set with more streams than one launch takes (65535 on CUDA: a batch of 256
 * sequences of 32 layers x 8 kv heads has 65536) continues in further launches, split between
 * sequences: with room for one sequence per launch, A, B, A makes three, and the result is
 * still the CPU's, at stream and whole-sequence granularity. Room for less than a sequence
 * is refused at run, nothing changed. */
static void test_split_launches(void) {
  const rkv_evict_policy pols[3] = {RKV_EVICT_RKV, RKV_EVICT_SNAPKV, RKV_EVICT_H2O};
  for (int pi = 0; pi < 3; pi++) {
    compare_at(pols[pi], RKV_DTYPE_F32, RKV_EVICTOR_ALL_LAYERS, RKV_EVICT_GRAN_STREAM, true,
               L * KV);
    compare_at(pols[pi], RKV_DTYPE_F32, RKV_EVICTOR_ALL_LAYERS, RKV_EVICT_GRAN_SEQUENCE, false,
               L * KV + 1);
  }
  fixture f, t;
  fx_twins(&f, &t, true, true, RKV_DTYPE_F32, 300, 43, (const int32_t[]){70, 70},
           (const uint32_t[]){W + 1, W + 2}, 2);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 40, p.window = W;
  rkv_evictor *ev = fx_evictor(&f, &p, RKV_EVICT_GRAN_STREAM);
  rkvi_evictor_set_launch_streams(ev, L * KV - 1);
  const rkv_evictor_window w1 = fx_window(&f, 1, 0);
  EXPECT_OK(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, NULL, &w1));
  rkv_evictor_result r[MAXSEQ];
  uint32_t nr = 9;
  EXPECT_EQ_INT(rkv_evictor_run(ev, r, MAXSEQ, &nr), RKV_ERR_UNSUPPORTED);
  EXPECT(strstr(rkv_evictor_last_error(ev), "exceeds one device launch") != NULL);
  EXPECT_OK(rkv_backend_sync(f.be));
  expect_same(&f, &t, false, false, "a sequence larger than a launch");
  EXPECT_OK(rkv_evictor_check(ev));
  rkv_evictor_destroy(ev);
  fx_fini(&f);
  fx_fini(&t);
}

/* At a coarser unit the groups of a compressed sequence keep one set: on a sequence whose
 * stream-granularity selection differs between streams, every stream of a group (here the
 * whole sequence) holds the same original positions afterwards. Guards the comparison above
 * against a launch that selected per stream on both sides. */
static void test_groups_share(void) {
  fixture f;
  fx_init(&f, RKV_DTYPE_F32, 300, 77, true);
  fx_seq(&f, 1, 90, W + 3);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 40, p.window = W;
  rkv_evictor *ev = fx_evictor(&f, &p, RKV_EVICT_GRAN_SEQUENCE);
  const rkv_evictor_window win = fx_window(&f, 1, 5);
  EXPECT_OK(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, NULL, &win));
  rkv_evictor_result res[MAXSEQ];
  run_ok(ev, res, 1);
  EXPECT_OK(rkv_backend_sync(f.be));
  EXPECT_EQ_INT(fx_check_seq(&f, 1, 40), 0);
  int differ = 0;
  for (uint32_t s = 1; s < L * KV; s++)
    for (int32_t j = 0; j < 40; j++) {
      int64_t a, b;
      rkv_blockmgr_stream_slot(f.m, 1, 0, 0, j, &a);
      rkv_blockmgr_stream_slot(f.m, 1, s / KV, s % KV, j, &b);
      differ += get_pos(&f, a) != get_pos(&f, b);
    }
  EXPECT_EQ_INT(differ, 0);
  rkv_evictor_destroy(ev);
  fx_fini(&f);
}

/* A coarser unit on streams out of lockstep (layer 1 compressed alone at stream granularity):
 * refused at run with RKV_ERR_STATE, nothing changed; the other sequence compresses. */
static void test_lockstep(void) {
  fixture f, t;
  fx_twins(&f, &t, true, true, RKV_DTYPE_F32, 300, 41, (const int32_t[]){70, 70},
           (const uint32_t[]){W + 1, W + 2}, 2);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 40, p.window = W;
  for (int k = 0; k < 2; k++) {
    fixture *x = k ? &t : &f;
    rkv_evictor *one = fx_evictor(x, &p, RKV_EVICT_GRAN_STREAM);
    const rkv_evictor_window w1 = fx_window(x, 1, 0);
    EXPECT_OK(rkv_evictor_add(one, 1, 1, NULL, &w1));
    rkv_evictor_result r1[MAXSEQ];
    run_ok(one, r1, 1);
    EXPECT_OK(rkv_backend_sync(x->be));
    rkv_evictor_destroy(one);
  }
  rkv_evictor *ev = fx_evictor(&f, &p, RKV_EVICT_GRAN_LAYER);
  rkv_evictor *tw = fx_evictor(&t, &p, RKV_EVICT_GRAN_LAYER);
  const rkv_evictor_window w1 = fx_window(&f, 1, 0), w2 = fx_window(&f, 2, 1);
  const rkv_evictor_window t2 = fx_window(&t, 2, 1);
  EXPECT_STATUS(rkv_evictor_add(ev, 1, 0, NULL, &w1), RKV_ERR_INVALID_ARG); /* one layer */
  EXPECT_OK(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, NULL, &w1));
  EXPECT_OK(rkv_evictor_add(ev, 2, RKV_EVICTOR_ALL_LAYERS, NULL, &w2));
  EXPECT_OK(rkv_evictor_add(tw, 2, RKV_EVICTOR_ALL_LAYERS, NULL, &t2));
  rkv_evictor_result res[MAXSEQ];
  uint32_t nr = 0;
  EXPECT_STATUS(rkv_evictor_run(ev, res, MAXSEQ, &nr), RKV_ERR_STATE);
  EXPECT(strstr(rkv_evictor_last_error(ev), "lockstep") != NULL);
  EXPECT(res[0].status == RKV_ERR_STATE && !res[0].compressed);
  EXPECT(res[1].status == RKV_OK && res[1].compressed);
  run_ok(tw, res, 1);
  EXPECT_OK(rkv_backend_sync(f.be));
  EXPECT_OK(rkv_backend_sync(t.be));
  expect_same(&f, &t, true, true, "emu coarser unit out of lockstep");
  EXPECT_OK(rkv_evictor_check(ev));
  EXPECT_OK(rkv_blockmgr_check(f.m));
  rkv_evictor_destroy(ev);
  rkv_evictor_destroy(tw);
  fx_fini(&f);
  fx_fini(&t);
}

/* FULL and a sequence at its budget: no change, no launch. */
static void test_noop(void) {
  fixture f, t;
  fx_twins(&f, &t, true, true, RKV_DTYPE_F32, 200, 5, (const int32_t[]){70, 40},
           (const uint32_t[]){W, W}, 2);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT, full;
  p.budget = 40, p.window = W;
  full = p, full.policy = RKV_EVICT_FULL;
  rkv_evictor *ev = fx_evictor(&f, &p, RKV_EVICT_GRAN_STREAM);
  const rkv_evictor_window w2 = fx_window(&f, 2, 0);
  EXPECT_OK(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, &full, NULL));
  EXPECT_OK(rkv_evictor_add(ev, 2, RKV_EVICTOR_ALL_LAYERS, NULL, &w2));
  rkv_evictor_result res[MAXSEQ];
  run_ok(ev, res, 2);
  EXPECT(!res[0].compressed && res[0].tokens_evicted == 0);
  EXPECT(res[1].tokens_evicted == 0 && res[1].blocks_freed == 0);
  EXPECT_OK(rkv_backend_sync(f.be));
  expect_same(&f, &t, true, true, "emu FULL / at budget");
  EXPECT_OK(rkv_evictor_check(ev));
  rkv_evictor_destroy(ev);
  fx_fini(&f);
  fx_fini(&t);
}

static void test_bad_input(void) {
  fixture f, t;
  for (int k = 0; k < 2; k++) {
    fixture *x = k ? &t : &f;
    fx_init(x, RKV_DTYPE_F32, 200, 9, true);
    fx_seq(x, 1, 60, W);
    fx_seq(x, 2, 60, W);
    EXPECT_OK(rkv_blockmgr_seq_protect(x->m, 2, 4));
  }
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 40, p.window = W;
  rkv_evictor *ev = fx_evictor(&f, &p, RKV_EVICT_GRAN_STREAM);
  rkv_evictor_window win = fx_window(&f, 1, 2);
  /* the host window is ignored on a device pool: no window named, none of its own */
  EXPECT_STATUS(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, NULL, NULL), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(rkv_evictor_last_error(ev), "has none") != NULL);
  rkv_evictor_window bad = win;
  bad.oldest = W;
  EXPECT_STATUS(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, NULL, &bad), RKV_ERR_INVALID_ARG);
  bad = win, bad.rows = NULL;
  EXPECT_STATUS(rkv_evictor_add(ev, 1, 0, NULL, &bad), RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(rkv_evictor_queued(ev), 0);
  /* streaming reads no window: none needed */
  rkv_evict_params st = p;
  st.policy = RKV_EVICT_STREAMING;
  EXPECT_OK(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, &st, NULL));
  EXPECT_STATUS(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, NULL, &win), RKV_ERR_EXISTS);
  const rkv_evictor_window w2 = fx_window(&f, 2, 0);
  EXPECT_OK(rkv_evictor_add(ev, 2, RKV_EVICTOR_ALL_LAYERS, NULL, &w2));
  EXPECT_OK(rkv_evictor_check(ev));
  expect_same(&f, &t, true, true, "emu refused adds");
  /* 2 protects 4 tokens, half a block, which the device selection does not take: unchanged */
  rkv_evictor_result res[MAXSEQ];
  uint32_t nr = 0;
  EXPECT_STATUS(rkv_evictor_run(ev, res, MAXSEQ, &nr), RKV_ERR_UNSUPPORTED);
  EXPECT(strstr(rkv_evictor_last_error(ev), "protected prefix") != NULL);
  EXPECT(res[0].status == RKV_OK && res[0].tokens_evicted == (uint64_t)L * KV * 20);
  EXPECT(res[1].status == RKV_ERR_UNSUPPORTED && !res[1].compressed);
  EXPECT_OK(rkv_backend_sync(f.be));
  EXPECT_EQ_INT(fx_check_seq(&f, 1, 40), 0);
  EXPECT_EQ_INT(fx_check_seq(&f, 2, 60), 0);
  EXPECT_OK(rkv_blockmgr_check(f.m));
  EXPECT_OK(rkv_evictor_check(ev));
  rkv_evictor_destroy(ev);
  fx_fini(&f);
  fx_fini(&t);
}

/* The evictor's own device window must hold `window` rows, as the host window must on a CPU
 * pool: a sequence with fewer is refused at run with RKV_ERR_STATE and stays as it is, while
 * the other sequence of the run compresses. */
static void test_short_window(void) {
  fixture f;
  fx_init(&f, RKV_DTYPE_F32, 200, 21, true);
  fx_seq(&f, 1, 60, W - 3);
  fx_seq(&f, 2, 60, W);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 40, p.window = W;
  rkv_evictor *ev = fx_evictor_win(&f, &p, RKV_EVICT_GRAN_STREAM, true);
  EXPECT_OK(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  EXPECT_OK(rkv_evictor_add(ev, 2, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  rkv_evictor_result res[MAXSEQ];
  uint32_t nr = 0;
  EXPECT_STATUS(rkv_evictor_run(ev, res, MAXSEQ, &nr), RKV_ERR_STATE);
  EXPECT(strstr(rkv_evictor_last_error(ev), "holds 5 of 8 rows") != NULL);
  EXPECT(nr == 2 && res[0].status == RKV_ERR_STATE && !res[0].compressed);
  EXPECT(res[1].status == RKV_OK && res[1].compressed);
  EXPECT_OK(rkv_backend_sync(f.be));
  EXPECT_EQ_INT(fx_check_seq(&f, 1, 60), 0);
  EXPECT_EQ_INT(fx_check_seq(&f, 2, 40), 0);
  EXPECT_OK(rkv_evictor_check(ev));
  EXPECT_OK(rkv_blockmgr_check(f.m));
  rkv_evictor_destroy(ev);
  fx_fini(&f);
}

/* Internal (evictor_internal.h), for tests: the longest R-KV stream the device path takes. */
void rkvi_evictor_set_sim_len_max(rkv_evictor *ev, int32_t n);

/* R-KV's device kernels take streams of at most 4,194,240 tokens after the protected prefix
 * (the similarity grid). A longer one is refused before the cut and stays as it is (the
 * launch used to refuse it after the host had cut its table), while a StreamingLLM sequence
 * of the same run, which has no such limit, compresses. The limit lowered to 50 tokens stands
 * in for the real one; at 60 tokens, and with no hook, both compress. */
static void test_long_stream(void) {
  for (int lowered = 1; lowered >= 0; lowered--) {
    fixture f;
    fx_init(&f, RKV_DTYPE_F32, 200, 23, true);
    fx_seq(&f, 1, 60, W);
    fx_seq(&f, 2, 60, W);
    rkv_evict_params p = RKV_EVICT_PARAMS_INIT, st = RKV_EVICT_PARAMS_INIT;
    p.budget = 40, p.window = W;
    st = p, st.policy = RKV_EVICT_STREAMING;
    rkv_evictor *ev = fx_evictor_win(&f, &p, RKV_EVICT_GRAN_STREAM, true);
    rkvi_evictor_set_sim_len_max(ev, lowered ? 50 : 0);
    EXPECT_OK(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
    EXPECT_OK(rkv_evictor_add(ev, 2, RKV_EVICTOR_ALL_LAYERS, &st, NULL));
    rkv_evictor_result res[MAXSEQ];
    uint32_t nr = 0;
    EXPECT_STATUS(rkv_evictor_run(ev, res, MAXSEQ, &nr), lowered ? RKV_ERR_UNSUPPORTED : RKV_OK);
    EXPECT_EQ_INT(nr, 2);
    if (lowered) {
      EXPECT(strstr(rkv_evictor_last_error(ev), "60 tokens after its protected prefix") != NULL);
      EXPECT(res[0].status == RKV_ERR_UNSUPPORTED && !res[0].compressed);
    } else {
      EXPECT(res[0].status == RKV_OK && res[0].compressed);
    }
    EXPECT(res[1].status == RKV_OK && res[1].compressed);
    EXPECT_OK(rkv_backend_sync(f.be));
    EXPECT_EQ_INT(fx_check_seq(&f, 1, lowered ? 60 : 40), 0);
    EXPECT_EQ_INT(fx_check_seq(&f, 2, 40), 0);
    EXPECT_OK(rkv_evictor_check(ev));
    EXPECT_OK(rkv_blockmgr_check(f.m));
    rkv_evictor_destroy(ev);
    fx_fini(&f);
  }
}

/* The arena between runs: a run reuses it without waiting once the backend synced since the
 * last upload (an engine's end-of-step sync), and syncs first otherwise; the results equal a
 * CPU evictor's either way. */
static void test_arena_reuse(void) {
  fixture c, e;
  fx_twins(&c, &e, false, true, RKV_DTYPE_F32, 400, 55, (const int32_t[]){75, 80, 85},
           (const uint32_t[]){W + 1, W + 2, W + 3}, 3);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 40, p.window = W;
  rkv_evictor *ec = fx_evictor(&c, &p, RKV_EVICT_GRAN_STREAM);
  rkv_evictor *ee = fx_evictor(&e, &p, RKV_EVICT_GRAN_STREAM);
  rkv_evictor_window win[4];
  for (int64_t s = 1; s <= 3; s++) win[s] = fx_window(&e, s, (int32_t)s);
  rkv_evictor_result res[MAXSEQ];
  for (int64_t s = 1; s <= 3; s++) {
    EXPECT_OK(rkv_evictor_add(ec, s, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
    EXPECT_OK(rkv_evictor_add(ee, s, RKV_EVICTOR_ALL_LAYERS, NULL, &win[s]));
    run_ok(ec, res, 1);
    const uint64_t before = rkv_backend_sync_count(e.be);
    run_ok(ee, res, 1);
    /* run 1: nothing in flight; run 2: the first upload may be pending, so it syncs; run 3:
     * the caller synced after run 2, so it does not */
    EXPECT_EQ_INT(rkv_backend_sync_count(e.be) - before, s == 2 ? 1 : 0);
    if (s == 2) EXPECT_OK(rkv_backend_sync(e.be));
  }
  EXPECT_OK(rkv_backend_sync(e.be));
  EXPECT_EQ_INT(rkv_emu_hazards(e.be), 0);
  expect_same(&c, &e, true, false, "emu arena reuse");
  EXPECT_OK(rkv_evictor_check(ee));
  rkv_evictor_destroy(ec);
  rkv_evictor_destroy(ee);
  fx_fini(&c);
  fx_fini(&e);
}

/* Out of fresh blocks for a fork: that sequence stays, the other compresses (twin: the other
 * alone). */
static void test_no_blocks(void) {
  fixture f, t;
  for (int k = 0; k < 2; k++) {
    fixture *x = k ? &t : &f;
    fx_init(x, RKV_DTYPE_F32, 30 + 30 + 12 + 2, 12, true);
    fx_seq(x, 1, 40, W);
    EXPECT_OK(rkv_blockmgr_seq_fork(x->m, 1, 2));
    fx_seq(x, 3, 40, W);
  }
  EXPECT_EQ_INT(rkv_blockmgr_free_blocks(f.m), 14);
  rkv_evict_params p = RKV_EVICT_PARAMS_INIT;
  p.budget = 24, p.window = W, p.policy = RKV_EVICT_H2O;
  rkv_evictor *ev = fx_evictor(&f, &p, RKV_EVICT_GRAN_STREAM);
  rkv_evictor *tw = fx_evictor(&t, &p, RKV_EVICT_GRAN_STREAM);
  EXPECT_OK(rkv_evictor_add(ev, 1, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  EXPECT_OK(rkv_evictor_add(ev, 3, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  EXPECT_OK(rkv_evictor_add(tw, 3, RKV_EVICTOR_ALL_LAYERS, NULL, NULL));
  rkv_evictor_result res[MAXSEQ];
  uint32_t nr = 0;
  EXPECT_STATUS(rkv_evictor_run(ev, res, MAXSEQ, &nr), RKV_ERR_NO_BLOCKS);
  EXPECT(res[0].status == RKV_ERR_NO_BLOCKS && !res[0].compressed);
  EXPECT(res[1].status == RKV_OK && res[1].compressed);
  run_ok(tw, res, 1);
  EXPECT_OK(rkv_backend_sync(f.be));
  EXPECT_OK(rkv_backend_sync(t.be));
  expect_same(&f, &t, true, true, "emu out of blocks");
  EXPECT_OK(rkv_blockmgr_check(f.m));
  EXPECT_OK(rkv_evictor_check(ev));
  rkv_evictor_destroy(ev);
  rkv_evictor_destroy(tw);
  fx_fini(&f);
  fx_fini(&t);
}

int main(void) {
  test_bad_input();
  test_short_window();
  test_long_stream();
  test_noop();
  test_no_blocks();
  fx_nomem_sweep(true);
  test_groups_share();
  test_lockstep();
  test_arena_reuse();
  test_equals_cpu();
  test_protected_equals_cpu();
  test_cached_copies_equal_cpu();
  test_split_launches();
  return rkv_test_finish();
}
