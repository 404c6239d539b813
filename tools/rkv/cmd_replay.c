/* `rkv replay FILE [--trace]`: runs a small text script of block-manager operations against one
 * manager and prints state as JSON (format and example in docs/REPLAY.md). Meant for bug
 * reports and for tests that pin exact behaviour: a failing op prints its status and the
 * manager's error text and the script goes on with the state unchanged. */
#include "rkv_tool.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <rkv/blockmgr.h>

#include "replay.h"

const char rt_cmd_replay_summary[] = "run a block-manager script and print its state as JSON";

static void usage(FILE *f) {
  fprintf(f,
          "usage: rkv replay FILE [--trace]\n\n"
          "Runs a block-manager script, one op per line ('#' comments, blank lines ok):\n"
          "  pool blocks=N block_size=S layers=L kv_heads=H [head_dim=D]   (first op)\n"
          "  create SEQ | append SEQ N | fork PARENT CHILD | free SEQ\n"
          "  keep SEQ LAYER HEAD i,j,k-l,...   positions one stream keeps ('-' or nothing:\n"
          "                                    none); checked now, used by the next compact\n"
          "  compact SEQ                       compacts the streams given keep lines since\n"
          "                                    the last compact of SEQ\n"
          "  compact_uniform SEQ LAYER KEEP    cut every stream of LAYER (-1: all) to KEEP\n"
          "  compact_prepare SEQ LAYER KEEP    decide once for compactions of LAYER (-1: all)\n"
          "                                    to KEEP whether cached blocks are copied;\n"
          "                                    prints the copies\n"
          "  check                             rkv_blockmgr_check\n"
          "  show                              state as one JSON line\n"
          "Prefix caching (pool ... prefix_cache=1):\n"
          "  hash NAME i,j,k-l,...             names the block hashes of a token list\n"
          "  match NAME                        prints the cached hit and its cost\n"
          "  create_cached SEQ NAME [HIT]      new sequence sharing HIT cached groups\n"
          "                                    (default: the whole hit)\n"
          "  insert SEQ NAME                   registers SEQ's full blocks under NAME\n"
          "  protect SEQ N                     protects positions [0, N) of SEQ\n"
          "  prefix_clear | prefix_stats       drop every group | print the counters\n"
          "A failing op prints {\"op\": LINE, \"error\": STATUS, \"message\": TEXT} and the\n"
          "script continues with the state unchanged. --trace echoes each op on stderr.\n"
          "Exit status: 0 ran to the end, 1 a check failed, 2 usage, file or pool error (also a\n"
          "line over 1 MiB or one holding a NUL byte). Pools are limited to 2^20 blocks,\n"
          "2^24 tokens and 4096 streams (layers x kv_heads). See docs/REPLAY.md.\n");
}

typedef struct pending_keep {
  int64_t seq;
  uint32_t layer, head;
  int32_t *pos;
  uint32_t n;
} pending_keep;

/* A named chain of block hashes (`hash NAME TOKENS`). */
typedef struct named_hash {
  char *name;
  uint64_t *h;
  uint32_t n;
} named_hash;

typedef struct replay_state {
  rkv_blockmgr *m;
  named_hash *hashes;
  size_t n_hashes;
  const rkv_blockmgr_config *cfg;
  pending_keep *keeps;
  size_t n_keeps, cap_keeps;
  bool trace;
  bool check_failed;
} replay_state;

static void json_string(const char *s) {
  putchar('"');
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      printf("\\%c", *p);
    else if (*p == '\n')
      printf("\\n");
    else if (*p < 0x20)
      printf("\\u%04x", *p);
    else
      putchar(*p);
  }
  putchar('"');
}

static void report_error(int line, rkv_status st, const char *message) {
  printf("{\"op\": %d, \"error\": \"%s\", \"message\": ", line, rkv_status_name(st));
  json_string(message);
  printf("}\n");
}

static void drop_keeps(replay_state *r, int64_t seq) {
  size_t w = 0;
  for (size_t i = 0; i < r->n_keeps; i++) {
    if (r->keeps[i].seq == seq)
      free(r->keeps[i].pos);
    else
      r->keeps[w++] = r->keeps[i];
  }
  r->n_keeps = w;
}

/* Validates a keep line against the current stream and records it (replacing an earlier keep
 * of the same stream). Takes ownership of op->pos on success. */
static rkv_status do_keep(replay_state *r, replay_op *op, char *msg, size_t size) {
  int32_t len = 0;
  if (!rkv_blockmgr_seq_exists(r->m, op->seq)) {
    snprintf(msg, size, "keep: unknown sequence %" PRId64, op->seq);
    return RKV_ERR_NOT_FOUND;
  }
  if (op->arg >= r->cfg->num_layers || op->arg2 >= r->cfg->num_kv_heads) {
    snprintf(msg, size, "keep: stream (layer %" PRId64 ", head %" PRId64 ") outside %u x %u",
             op->arg, op->arg2, r->cfg->num_layers, r->cfg->num_kv_heads);
    return RKV_ERR_INVALID_ARG;
  }
  rkv_blockmgr_stream_len(r->m, op->seq, (uint32_t)op->arg, (uint32_t)op->arg2, &len);
  for (uint32_t i = 0; i < op->npos; i++) {
    if (op->pos[i] < 0 || op->pos[i] >= len) {
      snprintf(msg, size, "keep: position %d outside [0, %d)", op->pos[i], len);
      return RKV_ERR_INVALID_ARG;
    }
    if (i > 0 && op->pos[i] <= op->pos[i - 1]) {
      snprintf(msg, size, "keep: positions not strictly increasing (%d then %d)", op->pos[i - 1],
               op->pos[i]);
      return RKV_ERR_INVALID_ARG;
    }
  }
  for (size_t i = 0; i < r->n_keeps; i++) {
    pending_keep *k = &r->keeps[i];
    if (k->seq == op->seq && k->layer == op->arg && k->head == op->arg2) {
      free(k->pos);
      k->pos = op->pos;
      k->n = op->npos;
      op->pos = NULL;
      return RKV_OK;
    }
  }
  if (r->n_keeps == r->cap_keeps) {
    size_t ncap = r->cap_keeps ? 2 * r->cap_keeps : 16;
    pending_keep *q = realloc(r->keeps, ncap * sizeof *q);
    if (!q) {
      snprintf(msg, size, "keep: out of memory");
      return RKV_ERR_NO_MEMORY;
    }
    r->keeps = q;
    r->cap_keeps = ncap;
  }
  pending_keep k = {op->seq, (uint32_t)op->arg, (uint32_t)op->arg2, op->pos, op->npos};
  r->keeps[r->n_keeps++] = k;
  op->pos = NULL;
  return RKV_OK;
}

static rkv_status do_compact(replay_state *r, int64_t seq, uint32_t *n_moves, char *msg,
                             size_t size) {
  size_t n_lists = 0, total = 0;
  for (size_t i = 0; i < r->n_keeps; i++)
    if (r->keeps[i].seq == seq) {
      n_lists++;
      total += r->keeps[i].n;
    }
  rkv_keep_list *lists = calloc(n_lists + 1, sizeof *lists);
  rkv_slot_move *moves = calloc(total + 1, sizeof *moves);
  rkv_status st = RKV_ERR_NO_MEMORY;
  if (!lists || !moves) {
    snprintf(msg, size, "compact: out of memory");
  } else {
    size_t l = 0;
    for (size_t i = 0; i < r->n_keeps; i++) {
      const pending_keep *k = &r->keeps[i];
      if (k->seq != seq) continue;
      rkv_keep_list kl = {k->layer, k->head, k->pos, k->n};
      lists[l++] = kl;
    }
    st = rkv_blockmgr_compact(r->m, seq, lists, (uint32_t)n_lists, moves, (uint32_t)total, n_moves);
    if (st != RKV_OK) snprintf(msg, size, "%s", rkv_blockmgr_last_error(r->m));
  }
  free(lists);
  free(moves);
  /* The keep lines are consumed whatever happened, so a failed compact is simply retried
   * with fresh keep lines. */
  drop_keeps(r, seq);
  return st;
}

static rkv_status do_uniform(replay_state *r, const replay_op *op, uint32_t *n_maps, char *msg,
                             size_t size) {
  uint32_t total = 0, excl = 0;
  rkv_blockmgr_seq_footprint(r->m, op->seq, &total, &excl);
  uint32_t S = rkv_blockmgr_streams_per_seq(r->m);
  rkv_compact_map *maps = calloc(S, sizeof *maps);
  int32_t *old = calloc((size_t)total + 1, sizeof *old);
  uint32_t n_old = 0;
  rkv_status st = RKV_ERR_NO_MEMORY;
  if (!maps || !old) {
    snprintf(msg, size, "compact_uniform: out of memory");
  } else {
    st = rkv_blockmgr_compact_uniform(r->m, op->seq, (int32_t)op->arg, (int32_t)op->arg2, maps, S,
                                      n_maps, old, total + 1, &n_old);
    if (st != RKV_OK) snprintf(msg, size, "%s", rkv_blockmgr_last_error(r->m));
  }
  free(maps);
  free(old);
  return st;
}

static const named_hash *find_hash(const replay_state *r, const char *name) {
  for (size_t i = 0; i < r->n_hashes; i++)
    if (strcmp(r->hashes[i].name, name) == 0) return &r->hashes[i];
  return NULL;
}

/* hash NAME TOKENS: a later line of the same name replaces the chain. */
static rkv_status do_hash(replay_state *r, const replay_op *op, uint32_t *n, char *msg,
                          size_t size) {
  uint32_t bs = r->cfg->block_size, full = op->npos / bs;
  uint64_t *h = calloc((size_t)full + 1, sizeof *h);
  named_hash *e = (named_hash *)find_hash(r, op->name);
  if (!e) {
    named_hash *q = realloc(r->hashes, (r->n_hashes + 1) * sizeof *q);
    char *name = strdup(op->name);
    if (q) r->hashes = q;
    if (!q || !name || !h) {
      free(name);
      free(h);
      snprintf(msg, size, "hash: out of memory");
      return RKV_ERR_NO_MEMORY;
    }
    e = &r->hashes[r->n_hashes++];
    e->name = name;
    e->h = NULL;
  } else if (!h) {
    snprintf(msg, size, "hash: out of memory");
    return RKV_ERR_NO_MEMORY;
  }
  rkv_prefix_hash_blocks(op->pos, op->npos, bs, 0, h, full);
  free(e->h);
  e->h = h;
  e->n = *n = full;
  return RKV_OK;
}

static rkv_status named(const replay_state *r, const replay_op *op, const named_hash **e, char *msg,
                        size_t size) {
  *e = find_hash(r, op->name);
  if (*e) return RKV_OK;
  snprintf(msg, size, "no hash named '%s' (define it with a hash line)", op->name);
  return RKV_ERR_NOT_FOUND;
}

static rkv_status do_match(replay_state *r, const replay_op *op, int line, char *msg, size_t size) {
  const named_hash *e;
  uint32_t hit = 0, cost = 0;
  rkv_status st = named(r, op, &e, msg, size);
  if (st == RKV_OK) st = rkv_blockmgr_prefix_match(r->m, e->h, e->n, &hit);
  if (st == RKV_OK) st = rkv_blockmgr_prefix_cost(r->m, e->h, hit, &cost);
  if (st == RKV_OK)
    printf("{\"op\": %d, \"match\": \"%s\", \"blocks\": %u, \"hit\": %u, \"cost\": %u}\n", line,
           e->name, e->n, hit, cost);
  return st;
}

static rkv_status do_create_cached(replay_state *r, const replay_op *op, uint32_t *hit, char *msg,
                                   size_t size) {
  const named_hash *e;
  rkv_status st = named(r, op, &e, msg, size);
  if (st != RKV_OK) return st;
  *hit = (uint32_t)op->arg;
  if (op->arg < 0) rkv_blockmgr_prefix_match(r->m, e->h, e->n, hit);
  if (*hit > e->n) {
    snprintf(msg, size, "create_cached: HIT %u, but '%s' names %u blocks", *hit, e->name, e->n);
    return RKV_ERR_INVALID_ARG;
  }
  return rkv_blockmgr_seq_create_cached(r->m, op->seq, e->h, *hit);
}

static rkv_status do_insert(replay_state *r, const replay_op *op, int line, char *msg,
                            size_t size) {
  const named_hash *e;
  uint32_t added = 0;
  rkv_status st = named(r, op, &e, msg, size);
  if (st == RKV_OK) st = rkv_blockmgr_prefix_insert(r->m, op->seq, e->h, e->n, &added);
  if (st == RKV_OK) printf("{\"op\": %d, \"inserted\": %u}\n", line, added);
  return st;
}

static rkv_status do_prepare(replay_state *r, const replay_op *op, int line) {
  uint32_t copies = 0;
  const rkv_status st =
      rkv_blockmgr_compact_prepare(r->m, op->seq, (int32_t)op->arg, (int32_t)op->arg2, &copies);
  if (st == RKV_OK) printf("{\"op\": %d, \"copies\": %u}\n", line, copies);
  return st;
}

static void do_prefix_stats(replay_state *r, int line) {
  rkv_prefix_stats ps;
  memset(&ps, 0, sizeof ps);
  ps.struct_size = sizeof ps;
  rkv_blockmgr_prefix_stats(r->m, &ps);
  printf(
      "{\"op\": %d, \"entries\": %u, \"cached_blocks\": %u, \"reclaimable_blocks\": %u, "
      "\"free_blocks\": %u, \"lookups\": %" PRIu64 ", \"hit_groups\": %" PRIu64
      ", \"inserted\": %" PRIu64 ", \"invalidated\": %" PRIu64 ", \"reclaimed\": %" PRIu64 "}\n",
      line, ps.entries, ps.cached_blocks, ps.reclaimable_blocks, rkv_blockmgr_free_blocks(r->m),
      ps.lookups, ps.hit_groups, ps.inserted, ps.invalidated, ps.reclaimed);
}

static int cmp_i64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

static void do_show(replay_state *r, int line) {
  rkv_blockmgr_stats st;
  rkv_blockmgr_get_stats(r->m, &st);
  uint32_t n = rkv_blockmgr_num_seqs(r->m);
  int64_t *ids = calloc((size_t)n + 1, sizeof *ids);
  if (!ids) {
    report_error(line, RKV_ERR_NO_MEMORY, "show: out of memory");
    return;
  }
  n = rkv_blockmgr_list_seqs(r->m, ids, n);
  qsort(ids, n, sizeof *ids, cmp_i64);
  printf(
      "{\"op\": %d, \"free_blocks\": %u, \"used_blocks\": %u, \"shared_blocks\": %u, "
      "\"seqs\": [",
      line, st.free_blocks, st.used_blocks, st.shared_blocks);
  for (uint32_t i = 0; i < n; i++) {
    printf("%s{\"id\": %" PRId64, i ? ", " : "", ids[i]);
    /* only when set, so scripts without protection print what they always printed */
    if (rkv_blockmgr_seq_protected(r->m, ids[i]))
      printf(", \"protected\": %d", rkv_blockmgr_seq_protected(r->m, ids[i]));
    printf(", \"streams\": [");
    for (uint32_t l = 0; l < r->cfg->num_layers; l++)
      for (uint32_t h = 0; h < r->cfg->num_kv_heads; h++) {
        int32_t len = 0, nb = 0;
        const int32_t *row = NULL;
        rkv_blockmgr_stream_len(r->m, ids[i], l, h, &len);
        rkv_blockmgr_stream_blocks(r->m, ids[i], l, h, &row, &nb);
        printf("%s{\"layer\": %u, \"head\": %u, \"len\": %d, \"blocks\": [", l + h ? ", " : "", l,
               h, len);
        for (int32_t j = 0; j < nb; j++) printf("%s%d", j ? ", " : "", row[j]);
        printf("], \"refs\": [");
        for (int32_t j = 0; j < nb; j++) {
          uint32_t ref = 0;
          rkv_blockmgr_block_ref(r->m, row[j], &ref);
          printf("%s%u", j ? ", " : "", ref);
        }
        printf("]}");
      }
    printf("]}");
  }
  printf("]}\n");
  free(ids);
}

static bool create_pool(replay_state *r, const replay_op *op, int line) {
  rkv_blockmgr_config cfg = RKV_BLOCKMGR_CONFIG_INIT;
  cfg.num_blocks = op->blocks;
  cfg.block_size = op->block_size;
  cfg.num_layers = op->layers;
  cfg.num_kv_heads = op->kv_heads;
  cfg.head_dim = op->head_dim;
  cfg.watermark = 0.0f;
  cfg.max_seqs = 1024;
  cfg.prefix_cache = op->prefix_cache;
  char why[256] = "";
  rkv_status st = rkv_blockmgr_validate_config(&cfg, why, sizeof why);
  if (st == RKV_OK) st = rkv_blockmgr_create(&cfg, &r->m);
  if (st != RKV_OK) {
    char msg[300];
    snprintf(msg, sizeof msg, "pool: %s", why[0] ? why : "rkv_blockmgr_create failed");
    report_error(line, st, msg);
    return false;
  }
  r->cfg = rkv_blockmgr_get_config(r->m);
  return true;
}

/* Runs one parsed op; prints errors and show output. */
static void run_op(replay_state *r, replay_op *op, int line) {
  char msg[512] = "";
  rkv_status st = RKV_OK;
  uint32_t n_copies = 0, n_moves = 0, n_maps = 0, count = 0;
  switch (op->kind) {
    case REPLAY_POOL:
      st = RKV_ERR_STATE;
      snprintf(msg, sizeof msg, "pool: only the first op may be a pool line");
      break;
    case REPLAY_CREATE:
      st = rkv_blockmgr_seq_create(r->m, op->seq);
      break;
    case REPLAY_APPEND: {
      uint32_t S = rkv_blockmgr_streams_per_seq(r->m);
      rkv_block_copy *copies = calloc(S, sizeof *copies);
      st = copies ? rkv_blockmgr_append(r->m, op->seq, (uint32_t)op->arg, NULL, copies, &n_copies)
                  : RKV_ERR_NO_MEMORY;
      free(copies);
      break;
    }
    case REPLAY_FORK:
      st = rkv_blockmgr_seq_fork(r->m, op->seq, op->arg);
      break;
    case REPLAY_FREE:
      st = rkv_blockmgr_seq_free(r->m, op->seq);
      if (st == RKV_OK) drop_keeps(r, op->seq);
      break;
    case REPLAY_KEEP:
      st = do_keep(r, op, msg, sizeof msg);
      break;
    case REPLAY_COMPACT:
      st = do_compact(r, op->seq, &n_moves, msg, sizeof msg);
      break;
    case REPLAY_UNIFORM:
      st = do_uniform(r, op, &n_maps, msg, sizeof msg);
      break;
    case REPLAY_CHECK:
      st = rkv_blockmgr_check(r->m);
      if (st != RKV_OK) r->check_failed = true;
      break;
    case REPLAY_SHOW:
      do_show(r, line);
      break;
    case REPLAY_HASH:
      st = do_hash(r, op, &count, msg, sizeof msg);
      break;
    case REPLAY_MATCH:
      st = do_match(r, op, line, msg, sizeof msg);
      break;
    case REPLAY_CREATE_CACHED:
      st = do_create_cached(r, op, &count, msg, sizeof msg);
      break;
    case REPLAY_INSERT:
      st = do_insert(r, op, line, msg, sizeof msg);
      break;
    case REPLAY_PROTECT:
      st = rkv_blockmgr_seq_protect(r->m, op->seq, (int32_t)op->arg);
      break;
    case REPLAY_PREFIX_CLEAR:
      rkv_blockmgr_prefix_clear(r->m);
      break;
    case REPLAY_PREFIX_STATS:
      do_prefix_stats(r, line);
      break;
    case REPLAY_PREPARE:
      st = do_prepare(r, op, line);
      break;
  }
  if (st != RKV_OK && !msg[0]) snprintf(msg, sizeof msg, "%s", rkv_blockmgr_last_error(r->m));
  if (r->trace) {
    fprintf(stderr, "  -> %s", rkv_status_name(st));
    if (st == RKV_OK && op->kind == REPLAY_APPEND) fprintf(stderr, " (%u copies)", n_copies);
    if (st == RKV_OK && op->kind == REPLAY_COMPACT) fprintf(stderr, " (%u moves)", n_moves);
    if (st == RKV_OK && op->kind == REPLAY_UNIFORM) fprintf(stderr, " (%u streams cut)", n_maps);
    if (st == RKV_OK && op->kind == REPLAY_HASH) fprintf(stderr, " (%u full blocks)", count);
    if (st == RKV_OK && op->kind == REPLAY_CREATE_CACHED) fprintf(stderr, " (%u groups)", count);
    fprintf(stderr, "\n");
  }
  if (st != RKV_OK) report_error(line, st, msg);
}

/* One line (newline kept) into *buf, at most REPLAY_MAX_LINE bytes: getline would keep
 * growing its buffer on a file without newlines (/dev/zero) until memory runs out. Returns the
 * length, -1 at end of file, -2 when the line is too long, -3 at a NUL byte (not text), -4
 * out of memory. */
static long read_line(FILE *f, char **buf, size_t *cap) {
  size_t n = 0;
  int c = EOF;
  while ((c = getc(f)) != EOF) {
    if (c == '\0') return -3;
    if (n == REPLAY_MAX_LINE) return -2;
    if (n + 2 > *cap) {
      size_t ncap = *cap ? 2 * *cap : 256;
      if (ncap > REPLAY_MAX_LINE + 1) ncap = REPLAY_MAX_LINE + 1;
      char *nb = realloc(*buf, ncap);
      if (!nb) return -4;
      *buf = nb;
      *cap = ncap;
    }
    (*buf)[n++] = (char)c;
    if (c == '\n') break;
  }
  if (n == 0) return -1;
  (*buf)[n] = '\0';
  return (long)n;
}

int rt_cmd_replay(int argc, char **argv) {
  const char *path = NULL;
  replay_state r;
  memset(&r, 0, sizeof r);
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--trace") == 0) {
      r.trace = true;
    } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
      fprintf(stderr, "rkv replay: unknown option '%s'\n", argv[i]);
      return 2;
    } else if (path) {
      fprintf(stderr, "rkv replay: more than one script given\n");
      return 2;
    } else {
      path = argv[i];
    }
  }
  if (!path) {
    usage(stderr);
    return 2;
  }
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
  if (!f) {
    fprintf(stderr, "rkv replay: cannot open '%s'\n", path);
    return 2;
  }
  char *line = NULL, *copy = NULL;
  size_t cap = 0;
  long got;
  int line_no = 0, ret = 0;
  while ((got = read_line(f, &line, &cap)) != -1) {
    line_no++;
    if (got < 0) {
      /* A script is text: past this point it is not one, so stop rather than guess. */
      char msg[96];
      if (got == -2)
        snprintf(msg, sizeof msg, "line longer than %u bytes (the replay limit)", REPLAY_MAX_LINE);
      else if (got == -3)
        snprintf(msg, sizeof msg, "line holds a NUL byte: not a text script");
      else
        snprintf(msg, sizeof msg, "out of memory reading the line");
      report_error(line_no, RKV_ERR_FORMAT, msg);
      ret = 2;
      break;
    }
    free(copy);
    copy = strdup(line);
    if (!copy) {
      ret = 2;
      break;
    }
    replay_op op;
    char msg[256];
    int pr = rt_replay_parse_line(line, &op, msg, sizeof msg);
    if (pr == 1) {
      free(op.pos);
      continue;
    }
    if (r.trace) {
      copy[strcspn(copy, "\r\n")] = '\0';
      fprintf(stderr, "%d: %s\n", line_no, copy);
    }
    if (pr < 0) {
      free(op.pos);
      if (r.trace) fprintf(stderr, "  -> RKV_ERR_FORMAT\n");
      report_error(line_no, RKV_ERR_FORMAT, msg);
      if (!r.m) { /* nothing can run without a pool */
        ret = 2;
        break;
      }
      continue;
    }
    if (!r.m) {
      if (op.kind != REPLAY_POOL) {
        report_error(line_no, RKV_ERR_FORMAT, "the first op must be a pool line");
        ret = 2;
      } else if (!create_pool(&r, &op, line_no)) {
        ret = 2;
      }
      free(op.pos);
      if (ret) break;
      continue;
    }
    run_op(&r, &op, line_no);
    free(op.pos);
  }
  if (ret == 0 && !r.m) {
    report_error(line_no, RKV_ERR_FORMAT, "empty script: no pool line");
    ret = 2;
  }
  free(line);
  free(copy);
  if (f != stdin) fclose(f);
  drop_keeps(&r, 0);
  for (size_t i = 0; i < r.n_keeps; i++) free(r.keeps[i].pos);
  free(r.keeps);
  for (size_t i = 0; i < r.n_hashes; i++) {
    free(r.hashes[i].name);
    free(r.hashes[i].h);
  }
  free(r.hashes);
  rkv_blockmgr_destroy(r.m);
  if (ret == 0 && r.check_failed) ret = 1;
  return ret;
}
