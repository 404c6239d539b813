/* The slot mappings the appends write, stream-major (rkv_blockmgr_append) and in a batch's
 * layer-major layout (rkv_blockmgr_append_batch), against the block manager's own answer for
 * every new token (rkv_blockmgr_stream_slot); and blocks_needed against the blocks each
 * append then takes. Random one- and several-token appends, appends without slots in between
 * (their lengths settle later), forks (shared tails, copy-on-write) and truncations of one
 * layer or all (streams out of lockstep), at the kv head counts the decode path unrolls
 * (1, 2, 4, 8, 16) and at others. */
#include <stdlib.h>
#include <string.h>

#include "bm_test_util.h"

enum { L = 3, ROWS = 5, MAXN = 6, SEQS = 4 };

typedef struct slot_case {
  uint32_t heads, block_size;
  uint64_t seed;
  bool check_every_op; /* off: nothing reads the lengths between appends, so they stay pending */
} slot_case;

/* Every slot an append reported for tokens [from, from + n) of seq equals the stream's slot. */
static int check_slots(const rkv_blockmgr *m, int64_t seq, uint32_t H, const int64_t *slots,
                       bool batch, size_t layer_stride, uint32_t n) {
  int bad = 0;
  for (uint32_t l = 0; l < L; l++)
    for (uint32_t h = 0; h < H; h++) {
      int32_t len = 0;
      EXPECT_OK(rkv_blockmgr_stream_len(m, seq, l, h, &len));
      for (uint32_t t = 0; t < n; t++) {
        const uint32_t s = l * H + h;
        const int64_t got =
            batch ? slots[l * layer_stride + (size_t)t * H + h] : slots[(size_t)s * n + t];
        int64_t want = -1;
        EXPECT_OK(rkv_blockmgr_stream_slot(m, seq, l, h, len - (int32_t)n + (int32_t)t, &want));
        if (got != want && bad++ < 3)
          fprintf(stderr,
                  "H %u seq %lld layer %u head %u token %u/%u: slot %lld, stream says %lld\n", H,
                  (long long)seq, l, h, t, n, (long long)got, (long long)want);
      }
    }
  return bad;
}

static void run_case(slot_case c) {
  const uint32_t H = c.heads, S = L * H;
  rkv_blockmgr *m = bmt_make_opt(64 * S, c.block_size, L, H, 2 * SEQS, c.check_every_op);
  uint64_t rng = c.seed;
  const size_t layer_stride = (size_t)ROWS * MAXN * H + 3; /* not a multiple of anything */
  int64_t *slots = malloc(sizeof(int64_t) * (L * layer_stride + (size_t)S * MAXN));
  rkv_block_copy *copies = malloc(sizeof(rkv_block_copy) * S);
  bool live[2 * SEQS] = {false};
  bool unread[2 * SEQS] = {false}; /* appended without slots since its lengths were last read */
  int bad = 0, checked = 0, needed_wrong = 0, settled_late = 0;
  for (int64_t q = 0; q < SEQS; q++) {
    EXPECT_OK(rkv_blockmgr_seq_create(m, q));
    live[q] = true;
  }
  for (int op = 0; op < 3000; op++) {
    const int64_t q = (int64_t)(rkv_test_rand(&rng) % (2 * SEQS));
    const uint32_t kind = (uint32_t)(rkv_test_rand(&rng) % 16);
    if (!live[q]) {
      /* a fork of a live sequence (its tails shared), or a fresh one */
      const int64_t p = (int64_t)(rkv_test_rand(&rng) % (2 * SEQS));
      if (live[p] && kind < 8)
        EXPECT_OK(rkv_blockmgr_seq_fork(m, p, q));
      else
        EXPECT_OK(rkv_blockmgr_seq_create(m, q));
      live[q] = true;
      continue;
    }
    if (kind == 0) {
      EXPECT_OK(rkv_blockmgr_seq_free(m, q));
      live[q] = false;
      continue;
    }
    if (kind == 1) {
      const int32_t layer = (int32_t)(rkv_test_rand(&rng) % (L + 1)) - 1;
      /* shared leading blocks are replaced by fresh ones: a full pool refuses */
      const rkv_status st =
          rkv_blockmgr_truncate(m, q, layer, (int32_t)(rkv_test_rand(&rng) % 20), NULL);
      EXPECT(st == RKV_OK || st == RKV_ERR_NO_BLOCKS);
      continue;
    }
    const uint32_t n = kind < 11 ? 1 : 1 + (uint32_t)(rkv_test_rand(&rng) % MAXN);
    uint32_t need = 0, nc = 0;
    EXPECT_OK(rkv_blockmgr_blocks_needed(m, q, n, &need));
    rkv_blockmgr_stats before, after; /* the stats read no stream lengths */
    rkv_blockmgr_get_stats(m, &before);
    rkv_status st;
    if (kind < 4) { /* no slots: the lengths may settle only at the next read */
      st = rkv_blockmgr_append(m, q, n, NULL, copies, &nc);
      unread[q] = true;
    } else if (kind < 8) {
      st = rkv_blockmgr_append(m, q, n, slots, copies, &nc);
    } else {
      const uint32_t row = (uint32_t)(rkv_test_rand(&rng) % (ROWS * MAXN - n + 1));
      st = rkv_blockmgr_append_batch(m, q, n, slots + (size_t)row * H, layer_stride, copies, &nc);
      if (st == RKV_OK) bad += check_slots(m, q, H, slots + (size_t)row * H, true, layer_stride, n);
    }
    if (st == RKV_ERR_NO_BLOCKS) {
      EXPECT((uint32_t)(before.free_blocks) < need);
      EXPECT_OK(rkv_blockmgr_seq_free(m, q)); /* make room */
      live[q] = false;
      continue;
    }
    EXPECT_OK(st);
    if (kind >= 8 && n == 1) settled_late += unread[q];
    if (kind >= 4) unread[q] = false;
    if (kind >= 4 && kind < 8) bad += check_slots(m, q, H, slots, false, 0, n);
    checked += kind >= 4;
    rkv_blockmgr_get_stats(m, &after);
    /* blocks_needed counts the fresh blocks and the copy-on-write copies the append takes */
    needed_wrong += before.free_blocks - after.free_blocks != (int64_t)need;
  }
  EXPECT_EQ_INT(bad, 0);
  EXPECT_EQ_INT(needed_wrong, 0);
  EXPECT(checked > 1000);
  EXPECT_OK(rkv_blockmgr_check(m));
  if (!c.check_every_op) EXPECT(settled_late > 50);
  free(slots);
  free(copies);
  rkv_blockmgr_destroy(m);
}

int main(void) {
  const slot_case cases[] = {{1, 4, 11, true},  {2, 4, 12, false}, {3, 2, 13, true},
                             {4, 8, 14, false}, {5, 3, 15, true},  {8, 4, 16, false},
                             {16, 2, 17, true}, {8, 16, 18, true}, {16, 4, 19, false}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(cases[i]);
  return rkv_test_finish();
}
