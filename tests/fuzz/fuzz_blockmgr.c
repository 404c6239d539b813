/* libFuzzer target for the block manager: the input bytes pick a tiny configuration (1-2
 * layers, 1-2 kv heads, block size 1-4, 1-32 blocks, 2-9 sequences, prefix cache on when bit 4
 * of the first byte is set) and then an operation
 * sequence (create, append, fork, compact with byte-seeded keep lists, compact_uniform, free,
 * restore, malformed calls; with a prefix cache also template requests through
 * seq_create_cached, prefix_insert, protect, prefix_match / prefix_cost, prefix_clear and
 * compactions keeping the protected prefix), each mirrored by the shadow model of
 * tools/rkv/shadow.h, with rkv_blockmgr_check after every operation and a final
 * free-everything leak check. Any disagreement prints the reason and aborts.
 * Under gcc, tests/fuzz/replay_main.c replays the committed corpus in corpus/fuzz_blockmgr/.
 *
 * The corpus (28 inputs, 9 KB, every edge the fuzzer reached) came from about 10 minutes of
 * fuzzing (~2.5 M executions, clang ASan+UBSan):
 *   build/fuzz/tests/fuzz_blockmgr -max_total_time=600 -max_len=512 work/
 *   mkdir all && build/fuzz/tests/fuzz_blockmgr -merge=1 all work/
 *   mkdir edges && build/fuzz/tests/fuzz_blockmgr -merge=1 -use_counters=0 edges all/
 * then the 20 largest inputs of all/ plus the inputs of edges/ that add an edge:
 *   build/fuzz/tests/fuzz_blockmgr -merge=1 -use_counters=0 corpus/fuzz_blockmgr edges/ */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <rkv/blockmgr.h>

#include "fuzz_cursor.h"
#include "shadow.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void die(const bm_shadow *s, size_t at, const char *what) {
  fprintf(stderr, "fuzz_blockmgr: mismatch at input byte %zu (%s): %s\n", at, what, s->err);
  abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  fz_cursor c = {data, size, 0};
  uint8_t b0 = fz_byte(&c), b1 = fz_byte(&c);
  rkv_blockmgr_config cfg = RKV_BLOCKMGR_CONFIG_INIT;
  cfg.block_size = 1u + (b0 & 3u);
  cfg.num_layers = 1u + ((b0 >> 2) & 1u);
  cfg.num_kv_heads = 1u + ((b0 >> 3) & 1u);
  cfg.num_blocks = 1u + (b1 & 31u);
  cfg.max_seqs = 2u + (b1 >> 5);
  cfg.head_dim = 4;
  cfg.watermark = 0.0f;
  cfg.prefix_cache = (b0 & 0x10u) != 0;
  rkv_blockmgr *m = NULL;
  if (rkv_blockmgr_create(&cfg, &m) != RKV_OK) {
    fprintf(stderr, "fuzz_blockmgr: create failed: valid config rejected\n");
    abort();
  }
  bm_shadow s;
  if (bms_init(&s, m, b0 * 256u + b1) != 0) abort();
  uint32_t nops = 0;
  while (c.i < c.n && nops++ < 4096) {
    size_t at = c.i;
    uint8_t op = fz_byte(&c), a = fz_byte(&c);
    int64_t id = a & 7;
    rkv_status st;
    int r = 0;
    const char *what = "?";
    /* with a prefix cache, op values 10..15 decode the prefix operations */
    switch (cfg.prefix_cache ? op % 16 : op % 10) {
      case 0:
        what = "create";
        r = bms_create(&s, id, &st);
        break;
      case 1:
      case 2:
        what = "append";
        r = bms_append(&s, id, 1u + fz_byte(&c) % 12u, (op & 0x10) == 0, &st);
        break;
      case 3:
        what = "fork";
        r = bms_fork(&s, id, fz_byte(&c) & 7, &st);
        break;
      case 4: {
        what = "compact";
        bms_seq *q = bms_find(&s, id);
        uint64_t rng = ((uint64_t)fz_byte(&c) << 8) ^ at;
        if (!q) {
          rkv_keep_list L = {0, 0, NULL, 0};
          r = bms_compact(&s, id, &L, 1, &st);
        } else {
          int nl = bms_random_lists(&s, &rng, q);
          if (nl < 0) abort();
          r = bms_compact(&s, id, s.lists, (uint32_t)nl, &st);
        }
        break;
      }
      case 5: {
        what = "compact_uniform";
        uint8_t x = fz_byte(&c);
        int32_t layer = (int32_t)(x % (cfg.num_layers + 1)) - 1;
        r = bms_compact_uniform(&s, id, layer, (int32_t)(fz_byte(&c) % 20u), &st);
        break;
      }
      case 6:
        what = "free";
        r = bms_free(&s, id, &st);
        break;
      case 7:
        what = "restore";
        for (uint32_t k = 0; k < s.S; k++) s.lens[k] = (int32_t)(fz_byte(&c) % 20u);
        r = bms_restore(&s, id, s.lens, &st);
        break;
      case 8: {
        what = "bad input";
        uint64_t rng = ((uint64_t)a << 8) ^ at;
        r = bms_random_bad_op(&s, &rng, &st);
        break;
      }
      case 9:
        what = "verify";
        r = bms_verify_all(&s);
        break;
      case 10: { /* a request for a template: match, share, compute the rest, insert */
        what = "create_cached";
        uint64_t rng = ((uint64_t)fz_byte(&c) << 8) ^ at;
        int skew = (a >> 3) % 3 == 2 ? -1 : (a >> 3) % 3 == 1 ? 1 : 0;
        r = bms_prompt(&s, &rng, id, (a >> 5) % BMS_TMPL, skew, &st);
        break;
      }
      case 11: {
        what = "prefix_insert";
        uint32_t t = (a >> 3) % BMS_TMPL;
        r = bms_prefix_insert(&s, id, s.tmpl_hash[t], fz_byte(&c) % (s.tmpl_blocks[t] + 1), &st);
        break;
      }
      case 12:
        what = "protect";
        r = bms_protect(&s, id, (int32_t)(fz_byte(&c) % 24u) - 2, &st);
        break;
      case 13: {
        what = "prefix_match";
        uint32_t t = (a >> 3) % BMS_TMPL;
        r = bms_prefix_match(&s, s.tmpl_hash[t], s.tmpl_blocks[t],
                             fz_byte(&c) % (s.tmpl_blocks[t] + 2), NULL);
        break;
      }
      case 14:
        what = "prefix_clear";
        r = bms_prefix_clear(&s);
        break;
      default: { /* compaction that keeps the protected prefix in place */
        what = "compact (protected)";
        bms_seq *q = bms_find(&s, id);
        uint64_t rng = ((uint64_t)fz_byte(&c) << 8) ^ at;
        if (!q) break;
        int nl = bms_random_lists(&s, &rng, q);
        if (nl < 0) abort();
        bms_keep_protected_(&s, q, (uint32_t)nl);
        r = bms_compact(&s, id, s.lists, (uint32_t)nl, &st);
        break;
      }
    }
    if (r != 0) die(&s, at, what);
    if (rkv_blockmgr_check(m) != RKV_OK) {
      snprintf(s.err, sizeof s.err, "rkv_blockmgr_check: %s", rkv_blockmgr_last_error(m));
      die(&s, at, what);
    }
  }
  if (bms_verify_all(&s) != 0) die(&s, c.i, "final verify");
  uint32_t leaked = 0;
  if (bms_free_all(&s, &leaked) != 0) die(&s, c.i, "free all");
  bms_fini(&s);
  rkv_blockmgr_destroy(m);
  return 0;
}
