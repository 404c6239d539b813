/* Private to `rkv replay`: the parsed form of one script line and the line parser
 * (tools/rkv/replay_parse.c). The script format is documented in docs/REPLAY.md. */
#ifndef RT_REPLAY_H
#define RT_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Input limits (docs/REPLAY.md): replay scripts describe bugs and pin behaviour, so a few
 * dozen blocks is typical; these bound what a hostile or mistyped script can make the tool
 * allocate (a 2^31-block pool took 16 GB) before anything is allocated. */
#define REPLAY_MAX_BLOCKS (1u << 20) /* pool blocks= */
#define REPLAY_MAX_TOKENS (1u << 24) /* blocks x block_size, and positions in one keep line */
#define REPLAY_MAX_STREAMS 4096u     /* layers x kv_heads */
#define REPLAY_MAX_LINE (1u << 20)   /* bytes in one script line, newline included */

typedef enum replay_kind {
  REPLAY_POOL,
  REPLAY_CREATE,
  REPLAY_APPEND,
  REPLAY_FORK,
  REPLAY_KEEP,
  REPLAY_COMPACT,
  REPLAY_UNIFORM,
  REPLAY_FREE,
  REPLAY_CHECK,
  REPLAY_SHOW,
  /* prefix caching */
  REPLAY_HASH,
  REPLAY_MATCH,
  REPLAY_CREATE_CACHED,
  REPLAY_INSERT,
  REPLAY_PROTECT,
  REPLAY_PREFIX_CLEAR,
  REPLAY_PREFIX_STATS,
  REPLAY_PREPARE
} replay_kind;

typedef struct replay_op {
  replay_kind kind;
  int64_t seq;      /* create/append/fork(parent)/keep/compact/compact_uniform/free/
                       create_cached/insert/protect */
  int64_t arg;      /* append: n; fork: child; keep: layer; compact_uniform: layer (-1 = all);
                       protect: n; create_cached: hit (-1 = what prefix_match finds) */
  int64_t arg2;     /* keep: head; compact_uniform: keep */
  int32_t *pos;     /* keep: positions in list order; hash: the tokens (malloc'd, caller frees);
                       NULL when empty */
  const char *name; /* hash/match/create_cached/insert: hash name (points into the line) */
  uint32_t npos;
  /* pool */
  uint32_t blocks, block_size, layers, kv_heads, head_dim;
  bool prefix_cache;
} replay_op;

/* Parses one script line (modified in place: comments are cut off). Returns 1 for a blank or
 * comment-only line, 0 with *op filled, or -1 with a message in msg (syntax only: whether
 * keep positions are sorted and in range is checked when the line runs). */
int rt_replay_parse_line(char *line, replay_op *op, char *msg, size_t msg_size);

#endif /* RT_REPLAY_H */
