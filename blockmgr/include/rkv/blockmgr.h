/* librkv block manager: a paged KV allocator whose blocks each hold the tokens of ONE stream
 * (sequence x layer x kv head), so per-head eviction can free whole blocks.
 *
 * Metadata only: block ids, ref counts and per-stream tables. KV bytes live in a backend's
 * rkv_kv_pool at base + id * block_bytes; the manager hands out slots and emits copy / move
 * plans that the caller applies to the pool (rkv_kv_pool_copy_blocks / _apply_moves, or the
 * CUDA kernels). All calls are all-or-nothing: a failed call changes nothing.
 *
 * Threading: a manager is not internally synchronised; one thread at a time per handle.
 * Pointers it returns (stream rows, exported tables) are valid until the next mutating call. */
#ifndef RKV_BLOCKMGR_H
#define RKV_BLOCKMGR_H

#include <rkv/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rkv_blockmgr rkv_blockmgr;

#define RKV_BLOCKMGR_CONFIG_VERSION 2
typedef struct rkv_blockmgr_config {
  uint32_t struct_size;  /* sizeof(rkv_blockmgr_config) */
  uint32_t num_blocks;   /* blocks in the pool (>= 1, < 2^31 / block_size) */
  uint32_t block_size;   /* token slots per block (1..1024; 16 typical) */
  uint32_t num_layers;   /* >= 1 */
  uint32_t num_kv_heads; /* >= 1 */
  uint32_t head_dim;     /* for byte accounting (1..4096) */
  rkv_dtype dtype;       /* KV element type */
  uint32_t max_seqs;     /* live sequences at once (0 = 4096) */
  float watermark;       /* fraction of blocks admission keeps free (0..1; vLLM uses 0.01) */
  bool check_every_op;   /* run rkv_blockmgr_check after every mutation (slow; tests) */
  const rkv_allocator *allocator; /* NULL = libc */
  const rkv_logger *logger;       /* NULL = silent */
  /* v2: keep full prompt blocks findable by content hash after their sequences free them
   * ("Prefix caching" below). About 4 int32 more per block. */
  bool prefix_cache;
} rkv_blockmgr_config;
#define RKV_BLOCKMGR_CONFIG_INIT                                                                \
  {                                                                                             \
    sizeof(rkv_blockmgr_config), 0, 16, 1, 1, 128, RKV_DTYPE_BF16, 0, 0.01f, false, NULL, NULL, \
        false                                                                                   \
  }

/* Creates a manager. RKV_ERR_INVALID_ARG on a bad config (the reason goes to cfg->logger at
 * RKV_LOG_ERROR; rkv_blockmgr_validate_config returns it as text), RKV_ERR_NO_MEMORY.
 * *out = NULL on failure. O(num_blocks + max_seqs). */
RKV_API rkv_status rkv_blockmgr_create(const rkv_blockmgr_config *cfg, rkv_blockmgr **out);
/* Checks a config as create would: RKV_OK or RKV_ERR_INVALID_ARG with the reason written to
 * err [err_cap] (NUL-terminated; err may be NULL). */
RKV_API rkv_status rkv_blockmgr_validate_config(const rkv_blockmgr_config *cfg, char *err,
                                                size_t err_cap);
/* Accepts NULL. Frees all metadata (the KV pool is the caller's). */
RKV_API void rkv_blockmgr_destroy(rkv_blockmgr *m);
/* Text of the last failed call on this handle ("" if none); valid until the next call. */
RKV_API const char *rkv_blockmgr_last_error(const rkv_blockmgr *m);
/* The configuration in force (defaults filled in). */
RKV_API const rkv_blockmgr_config *rkv_blockmgr_get_config(const rkv_blockmgr *m);
/* num_layers * num_kv_heads: streams per sequence. Stream index = layer * kv_heads + head. */
RKV_API uint32_t rkv_blockmgr_streams_per_seq(const rkv_blockmgr *m);
/* The KV layout implied by the config (for rkv_kv_pool_create). */
RKV_API rkv_kv_layout rkv_blockmgr_kv_layout(const rkv_blockmgr *m);

/* ---- Sequences ------------------------------------------------------------------------- */

/* New empty sequence (every stream length 0). Ids are caller-chosen, >= 0.
 * RKV_ERR_EXISTS, RKV_ERR_CAPACITY (max_seqs live), RKV_ERR_INVALID_ARG. O(1) amortised. */
RKV_API rkv_status rkv_blockmgr_seq_create(rkv_blockmgr *m, int64_t seq);
/* Drops the sequence's references; blocks reaching ref 0 return to the free list.
 * RKV_ERR_NOT_FOUND. O(blocks of the sequence). */
RKV_API rkv_status rkv_blockmgr_seq_free(rkv_blockmgr *m, int64_t seq);
/* Child shares every block of the parent (ref counts +1, nothing allocated); the first write
 * into a shared partial block copies it (see append). RKV_ERR_NOT_FOUND (parent),
 * RKV_ERR_EXISTS (child), RKV_ERR_CAPACITY, RKV_ERR_NO_MEMORY. */
RKV_API rkv_status rkv_blockmgr_seq_fork(rkv_blockmgr *m, int64_t parent, int64_t child);
/* Recreates a sequence with given per-stream lengths and fresh private blocks (swap-in):
 * lens [streams_per_seq]. The caller then writes the saved KV into the new blocks.
 * RKV_ERR_EXISTS, RKV_ERR_NO_BLOCKS, RKV_ERR_INVALID_ARG, RKV_ERR_CAPACITY. */
RKV_API rkv_status rkv_blockmgr_seq_restore(rkv_blockmgr *m, int64_t seq, const int32_t *lens);
RKV_API bool rkv_blockmgr_seq_exists(const rkv_blockmgr *m, int64_t seq);
RKV_API uint32_t rkv_blockmgr_num_seqs(const rkv_blockmgr *m);
/* Dense index of a live sequence in [0, max_seqs), stable while it lives (a freed index is
 * reused by later sequences), or -1 when not live: lets callers keep per-sequence arrays
 * (table mirrors) without a map of their own. O(1). */
RKV_API int32_t rkv_blockmgr_seq_index(const rkv_blockmgr *m, int64_t seq);
/* Writes up to cap live sequence ids (in slot order) and returns how many are live. */
RKV_API uint32_t rkv_blockmgr_list_seqs(const rkv_blockmgr *m, int64_t *ids, uint32_t cap);

/* Appends n tokens to EVERY stream of the sequence.
 *  slots:    [streams_per_seq][n] global slot numbers to write the new K/V into (stream-major,
 *            stream = layer * kv_heads + head), or NULL;
 *  copies:   [streams_per_seq] room for copy-on-write ops (src block -> dst block) that the
 *            caller must apply to the pool before writing the new tokens; may be NULL only if
 *            the sequence shares no partial last block (never forked), else
 *            RKV_ERR_INVALID_ARG;
 *  n_copies: number of copy ops written (one per stream whose shared partial block was
 *            copied; exactly once per stream per fork).
 * RKV_ERR_NO_BLOCKS when the pool cannot supply the blocks (nothing changes),
 * RKV_ERR_NOT_FOUND, RKV_ERR_INVALID_ARG (n == 0 or a stream would exceed 2^31 tokens).
 * Hot path: O(streams_per_seq) simple work plus O(1) per new block; no allocation except
 * amortised doubling of the sequence's row capacity. */
RKV_API rkv_status rkv_blockmgr_append(rkv_blockmgr *m, int64_t seq, uint32_t n, int64_t *slots,
                                       rkv_block_copy *copies, uint32_t *n_copies);
/* rkv_blockmgr_append with the slot mapping laid out for a batch, the order K/V rows come
 * out of a QKV projection: the slot of token t of stream (layer l, head h) goes to
 * slots[l * layer_stride + t * num_kv_heads + h]. Pass slots already offset to the
 * sequence's first row (row * num_kv_heads) and layer_stride = rows of the batch x kv heads;
 * layer_stride >= n * num_kv_heads (else RKV_ERR_INVALID_ARG). Everything else as append. */
RKV_API rkv_status rkv_blockmgr_append_batch(rkv_blockmgr *m, int64_t seq, uint32_t n,
                                             int64_t *slots, size_t layer_stride,
                                             rkv_block_copy *copies, uint32_t *n_copies);
/* Blocks an append of n tokens would take from the free list (new blocks + CoW copies). */
RKV_API rkv_status rkv_blockmgr_blocks_needed(const rkv_blockmgr *m, int64_t seq, uint32_t n,
                                              uint32_t *out);
/* True iff rkv_blockmgr_append(seq, n) would not return RKV_ERR_NO_BLOCKS. */
RKV_API bool rkv_blockmgr_can_append(const rkv_blockmgr *m, int64_t seq, uint32_t n);

/* ---- Reservations ---------------------------------------------------------------------- */

/* For callers that change several sequences in one all-or-nothing operation (a scheduler
 * step): these take, up front, the allocations the later calls would make, so a failure comes
 * before the first change. Capacity only: nothing observable changes, whether they succeed or
 * fail (RKV_ERR_NO_MEMORY). */

/* Grows seq's tables so that appends totalling up to n tokens allocate nothing.
 * RKV_ERR_NOT_FOUND, RKV_ERR_INVALID_ARG, RKV_ERR_NO_MEMORY. O(1) while the tokens fit the
 * blocks every stream holds, else O(streams_per_seq). */
RKV_API rkv_status rkv_blockmgr_reserve_append(rkv_blockmgr *m, int64_t seq, uint32_t n);
/* Prepares the slot the (i+1)-th sequence creation from now (seq_create, seq_fork or
 * seq_restore, counting from 0) will take, provided no sequence is freed in between: its
 * per-stream arrays and a row capacity of `blocks`, so that creation, and appends that keep
 * every row within `blocks`, allocate nothing. RKV_ERR_CAPACITY (fewer than i + 1 slots free),
 * RKV_ERR_NO_MEMORY. O(1) plus the allocation. */
RKV_API rkv_status rkv_blockmgr_reserve_seq(rkv_blockmgr *m, uint32_t i, int32_t blocks);

/* ---- Streams --------------------------------------------------------------------------- */

RKV_API rkv_status rkv_blockmgr_stream_len(const rkv_blockmgr *m, int64_t seq, uint32_t layer,
                                           uint32_t head, int32_t *len);
/* Borrowed pointer to the stream's block ids in cache order (valid until the next mutation). */
RKV_API rkv_status rkv_blockmgr_stream_blocks(const rkv_blockmgr *m, int64_t seq, uint32_t layer,
                                              uint32_t head, const int32_t **ids,
                                              int32_t *n_blocks);
/* Global slot of cache position pos of a stream (RKV_ERR_INVALID_ARG if pos >= len). */
RKV_API rkv_status rkv_blockmgr_stream_slot(const rkv_blockmgr *m, int64_t seq, uint32_t layer,
                                            uint32_t head, int32_t pos, int64_t *slot);
/* Reference count of a block (0 = free). RKV_ERR_INVALID_ARG for a bad id. */
RKV_API rkv_status rkv_blockmgr_block_ref(const rkv_blockmgr *m, int32_t block, uint32_t *ref);

/* ---- Compaction ------------------------------------------------------------------------ */

/* The positions one stream keeps: strictly increasing, each < the stream's length. */
typedef struct rkv_keep_list {
  uint32_t layer;
  uint32_t head;
  const int32_t *pos; /* [n] */
  uint32_t n;
} rkv_keep_list;

/* Packs each listed stream's kept tokens, in position order, into its leading
 * ceil(n / block_size) blocks and returns the tail blocks whole to the free list. A leading
 * block shared with another sequence is never written: it is kept by reference when its whole
 * content stays in place, else replaced by a fresh block. A cached one (prefix caching) held
 * by this sequence alone is copied too, when the pool holds the copies (see
 * rkv_blockmgr_compact_prepare). Fresh blocks are taken before any tail is freed, so a plan
 * never writes a block it still reads.
 *  moves: room for the move plan (src slot -> dst slot); applied in order it is correct (every
 *         move goes to a lower-or-equal position of its stream or into a fresh block); size
 *         bound: sum of the lists' n. May be NULL only with moves_cap 0 when nothing moves.
 * Streams not listed are untouched; a stream listed twice is RKV_ERR_INVALID_ARG.
 * RKV_ERR_INVALID_ARG (unsorted, duplicate, out-of-range positions; bad layer/head),
 * RKV_ERR_CAPACITY (moves_cap too small; *n_moves = required), RKV_ERR_NO_BLOCKS (fresh
 * blocks for shared leading blocks unavailable), RKV_ERR_NOT_FOUND. Nothing changes on error.
 * O(sum of n + blocks touched). */
RKV_API rkv_status rkv_blockmgr_compact(rkv_blockmgr *m, int64_t seq, const rkv_keep_list *lists,
                                        uint32_t n_lists, rkv_slot_move *moves, uint32_t moves_cap,
                                        uint32_t *n_moves);

/* Uniform-budget compaction planned before any score is known (the GPU path): every stream
 * of `layer` (or of all layers when layer < 0) longer than `keep` tokens is cut to exactly
 * `keep` tokens; its blocks past ceil(keep / block_size) are freed now, and shared leading
 * blocks are replaced by fresh ones (the device will rewrite them), and so are cached ones
 * held alone when the pool holds the copies (rkv_blockmgr_compact_prepare). For each
 * such stream the old row is reported so a device kernel can move selected tokens (src from
 * the old row, dst from the new row read with rkv_blockmgr_stream_blocks or an exported
 * table):
 *  maps:       [streams touched] one record each;
 *  old_blocks: the old rows back to back, maps[i].old_offset .. + maps[i].old_n_blocks.
 * Sizes: at most streams_per_seq maps and the sequence's total blocks of old ids; pass
 * caps, RKV_ERR_CAPACITY reports the need in *n_maps / *n_old. */
typedef struct rkv_compact_map {
  uint32_t layer;
  uint32_t head;
  int32_t old_len;
  int32_t new_len;
  int32_t old_offset; /* into old_blocks */
  int32_t old_n_blocks;
} rkv_compact_map;

RKV_API rkv_status rkv_blockmgr_compact_uniform(rkv_blockmgr *m, int64_t seq, int32_t layer,
                                                int32_t keep, rkv_compact_map *maps,
                                                uint32_t maps_cap, uint32_t *n_maps,
                                                int32_t *old_blocks, uint32_t old_cap,
                                                uint32_t *n_old);

/* compact_uniform without its report, for engines that move no K/V (bookkeeping,
 * simulators): every stream of `layer` (all when layer < 0) longer than keep is cut to keep;
 * tails return whole, shared (and cached) leading blocks are replaced as there. *removed (may
 * be NULL) = tokens cut. Same errors as compact_uniform, nothing changed on failure; no
 * RKV_ERR_CAPACITY (nothing is reported). O(streams) plus the blocks returned. */
RKV_API rkv_status rkv_blockmgr_truncate(rkv_blockmgr *m, int64_t seq, int32_t layer, int32_t keep,
                                         uint64_t *removed);

/* Upper bound on the fresh blocks a compaction of seq's streams of `layer` (all layers when
 * layer < 0) down to `keep` tokens each needs, by either compaction: the shared blocks
 * (ref > 1, e.g. after a fork) among the leading ceil(keep / block_size) blocks of every
 * stream longer than `keep`. A scheduler reserves this before flagging a compression so the
 * compression cannot run out of blocks half-way. (Copies of cached blocks are not counted:
 * a compaction makes them only from a free list that holds them, and their originals park,
 * so the blocks counted free after it are the same.) O(1) while no block is shared, else
 * O(streams x ceil(keep / block_size)). RKV_ERR_NOT_FOUND, RKV_ERR_INVALID_ARG. */
RKV_API rkv_status rkv_blockmgr_compact_fresh_bound(const rkv_blockmgr *m, int64_t seq,
                                                    int32_t layer, int32_t keep, uint32_t *out);
/* The same bound for the compaction that follows an append of `pending` more tokens to every
 * stream: a stream counts once len + pending > keep (the appended tokens go to blocks of its
 * own). What a scheduler reserves when it plans the append and the compression together:
 * compact_fresh_bound before the append skips a stream the append takes over the budget. */
RKV_API rkv_status rkv_blockmgr_compact_fresh_bound_after(const rkv_blockmgr *m, int64_t seq,
                                                          int32_t layer, int32_t keep,
                                                          uint32_t pending, uint32_t *out);
/* The same bound when prefix-cache hits may share seq's blocks before the compaction runs
 * (rkv_blockmgr_seq_create_cached between planning a compaction and running it, where the
 * caller lets compactions select among cached blocks: a scheduler's prefix copy rule). A
 * leading block then counts when it is shared, when its group is in the prefix table (the
 * compaction copies it), or when it is among the first `registering` blocks of its stream
 * (those a prefix_insert made before the compaction registers); each at most once. With
 * this many blocks free (parked ones included) when it runs, the compaction also copies
 * every cached block, reclaiming older parked groups for them if it must. Equals
 * compact_fresh_bound_after when nothing is cached and registering is 0.
 * O(streams x ceil(keep / block_size)) once anything is shared or cached.
 * RKV_ERR_NOT_FOUND, RKV_ERR_INVALID_ARG. */
RKV_API rkv_status rkv_blockmgr_compact_copy_bound(const rkv_blockmgr *m, int64_t seq,
                                                   int32_t layer, int32_t keep, uint32_t pending,
                                                   uint32_t registering, uint32_t *out);

/* Copies of cached blocks. A compaction (either kind) does not rewrite a leading block after
 * the whole protected blocks that is in a cached group and held by seq alone: it copies it,
 * kept in place or not, and the original parks with its group (counted free), so the next
 * prompt with that prefix still hits. It does so when the pool, parked blocks included, holds
 * every fresh block of the call: the oldest parked groups are then reclaimed, before anything
 * moves, until the free list holds them (the least recently used prompts go, as for any
 * allocation; the one being compacted was used last). A block whose group that reclaim drops
 * (one the sequence half holds, its other blocks parked) is rewritten in place instead (the
 * need rkv_blockmgr_compact reports with RKV_ERR_CAPACITY counts it as copied: a bound).
 * Without that room it rewrites those blocks in place and their
 * groups leave the table. Either way it never fails for want of these copies, and the blocks
 * counted free after the call are the same.
 *
 * A caller that compacts one sequence in several calls (rkv_blockmgr_compact per layer) calls
 * this first with the whole compaction's layer (-1: all) and keep (the tokens each stream
 * keeps): when the pool holds all its copies, the reclaim one call would make happens now and
 * *copies = the copies the calls will make (every call then finds its own on the free list);
 * else the groups those blocks are in leave the table now and *copies = 0, so the calls
 * rewrite in place. The cache then ends as one compact_uniform call to keep would leave it.
 * RKV_ERR_NOT_FOUND, RKV_ERR_INVALID_ARG; O(streams x ceil(keep / block_size)) once anything
 * is shared or cached. */
RKV_API rkv_status rkv_blockmgr_compact_prepare(rkv_blockmgr *m, int64_t seq, int32_t layer,
                                                int32_t keep, uint32_t *copies);

/* ---- Export ---------------------------------------------------------------------------- */

/* Number of table entries (blocks) a CSR export of `layer` over these sequences needs. */
RKV_API rkv_status rkv_blockmgr_export_size(const rkv_blockmgr *m, uint32_t layer,
                                            const int64_t *seqs, uint32_t n_seqs, uint32_t *nnz);
/* Writes one layer's CSR block table over a batch, streams ordered batch-major, head-minor:
 *  indptr [n_seqs * kv_heads + 1], indices [nnz], last_len [n_seqs * kv_heads];
 *  slot-free ready to copy to a GPU. RKV_ERR_CAPACITY if indices_cap < nnz (*nnz = need).
 *  table (optional) is filled with a view over the caller's arrays. O(nnz). */
RKV_API rkv_status rkv_blockmgr_export_csr(const rkv_blockmgr *m, uint32_t layer,
                                           const int64_t *seqs, uint32_t n_seqs, int32_t *indptr,
                                           int32_t *indices, uint32_t indices_cap,
                                           int32_t *last_len, uint32_t *nnz,
                                           rkv_block_table *table);

/* Incremental export for device-resident tables (docs/ARCHITECTURE.md, "Hot paths"): the
 * caller keeps, per sequence, a padded mirror rows [streams_per_seq][stride] (int32 block ids,
 * stream = layer * kv_heads + head) and lens [streams_per_seq]. This writes only the row
 * entries that changed since the previous sync of this sequence (all entries when `full`, e.g.
 * for a new mirror), and every stream's length (lens may be NULL for a caller that tracks
 * lengths itself, e.g. one per sequence while its streams grow in lockstep). A decode step
 * between block boundaries writes no row entry; a boundary step writes one per stream; a
 * compaction re-sends only the blocks it replaced. *n_written (may be NULL) = row entries
 * written. RKV_ERR_CAPACITY when a row has more than
 * `stride` blocks (nothing written), RKV_ERR_NOT_FOUND, RKV_ERR_INVALID_ARG.
 * Hot path: O(streams_per_seq + entries written), no allocation. */
RKV_API rkv_status rkv_blockmgr_sync_rows(rkv_blockmgr *m, int64_t seq, bool full, int32_t *rows,
                                          uint32_t stride, int32_t *lens, uint32_t *n_written);

/* ---- Prefix caching and protected prefixes -----------------------------------------------
 *
 * With per-head tables, a cached prefix block is a group: the streams_per_seq physical blocks
 * at one logical block index of one sequence, all holding K/V of the same block_size prompt
 * tokens. A group is found by its chained content hash (rkv_prefix_hash_blocks): hash i
 * covers tokens [0, (i + 1) * block_size), so equal hashes mean equal prefixes (up to 64-bit
 * collisions, which the caller may rule out with hashes of its own). A request whose prompt
 * starts with cached groups shares them (reference counts, in every stream) and computes only
 * the rest.
 *
 * Cached groups outlive their sequences: a block whose last reference drops while it belongs to
 * a group is not free-listed but kept on an LRU list, still counted as free (free_blocks,
 * admission) and reclaimed, oldest first, when the free list runs dry (of the blocks one call
 * parks, those it reaches last count as oldest: a sequence's last blocks go first, so what stays
 * cached is still a prefix a lookup finds); taking one block of a group drops the whole group
 * from the table. Compaction copies the cached blocks it keeps (a sequence compressing its own
 * prompt leaves that prompt cached for the next request) while the pool holds the copies (older
 * parked groups are reclaimed for them). A group leaves the table the moment any of its blocks
 * changes content: compaction without room for those copies, which moves tokens into it or
 * leaves it partly filled (appends would then overwrite it), or may rewrite it (the uniform
 * cut); an append into it by a sequence that holds it partly filled (kept in place by its
 * compaction while another sequence, which registered it full, shared it).
 * No lookup can map stale K/V. Shared blocks are never edited in place (compaction copies
 * them first, as after a fork).
 *
 * A protected prefix: positions [0, n) of every stream of a sequence are immutable. Compaction
 * must keep them in place (rkv_blockmgr_compact rejects a list that does not), the uniform
 * variant never rewrites the blocks they fill, and eviction selects among the tokens after
 * them (the budget counts the rest). Protecting a cached prefix keeps it shared and cached
 * while its requests compress; not protecting it makes compaction copy the shared blocks
 * (giving up sharing for that request). Works with or without prefix_cache. */

/* Chained hashes of the full blocks of tokens[0, n): out[i] = H(out[i - 1] (salt for i = 0),
 * tokens of block i), for i < min(n / block_size, cap). Returns the number of full blocks
 * (n / block_size, even when cap is smaller). Pure: the same tokens, block size and salt give
 * the same hashes in every process. */
RKV_API uint32_t rkv_prefix_hash_blocks(const int32_t *tokens, uint32_t n, uint32_t block_size,
                                        uint64_t salt, uint64_t *out, uint32_t cap);
/* Leading hashes[0, n) present in the cache, as a count of groups (0 without prefix_cache).
 * Changes nothing (a lookup does not refresh LRU order; sharing does). O(hit). */
RKV_API rkv_status rkv_blockmgr_prefix_match(const rkv_blockmgr *m, const uint64_t *hashes,
                                             uint32_t n, uint32_t *hit);
/* Blocks the pool must supply to share the first `hit` cached groups (those held only by the
 * LRU list stop counting as free). O(hit * streams). */
RKV_API rkv_status rkv_blockmgr_prefix_cost(const rkv_blockmgr *m, const uint64_t *hashes,
                                            uint32_t hit, uint32_t *blocks);
/* Creates sequence seq sharing the cached groups of hashes[0, hit) in every stream (each
 * stream then holds hit * block_size tokens) and marks them used most recently. hit must not
 * exceed rkv_blockmgr_prefix_match. RKV_ERR_NOT_FOUND (a hash not cached), the errors of
 * seq_create, RKV_ERR_NO_MEMORY; nothing changes on failure. O(hit * streams). */
RKV_API rkv_status rkv_blockmgr_seq_create_cached(rkv_blockmgr *m, int64_t seq,
                                                  const uint64_t *hashes, uint32_t hit);
/* Registers the sequence's groups 0 .. n - 1 under hashes[0, n): the caller states that group
 * i holds the K/V of the tokens hashes[i] covers (written, or being written in the step that
 * appended them). Groups already cached, groups whose blocks belong to another hash, and groups
 * not yet full in every stream are skipped; *inserted (may be NULL) counts the new entries.
 * RKV_ERR_STATE without prefix_cache. Never allocates. O(n * streams). */
RKV_API rkv_status rkv_blockmgr_prefix_insert(rkv_blockmgr *m, int64_t seq, const uint64_t *hashes,
                                              uint32_t n, uint32_t *inserted);
/* Drops every cached group (their unreferenced blocks return to the free list). */
RKV_API void rkv_blockmgr_prefix_clear(rkv_blockmgr *m);

/* Protects positions [0, n) of every stream of seq (see above); n = 0 removes the protection.
 * n must not exceed the shortest stream. RKV_ERR_NOT_FOUND, RKV_ERR_INVALID_ARG. O(1). */
RKV_API rkv_status rkv_blockmgr_seq_protect(rkv_blockmgr *m, int64_t seq, int32_t n);
/* The protected prefix of seq (0 if none or not live). O(1). */
RKV_API int32_t rkv_blockmgr_seq_protected(const rkv_blockmgr *m, int64_t seq);

typedef struct rkv_prefix_stats {
  uint32_t struct_size;        /* sizeof(rkv_prefix_stats), set by the caller */
  uint32_t entries;            /* cached groups */
  uint32_t cached_blocks;      /* blocks in cached groups */
  uint32_t reclaimable_blocks; /* of those, held by no sequence (on the LRU list) */
  uint64_t lookups;            /* rkv_blockmgr_seq_create_cached calls */
  uint64_t hit_groups;         /* groups shared by them */
  uint64_t inserted;           /* groups registered */
  uint64_t invalidated;        /* groups dropped because their content changed */
  uint64_t reclaimed;          /* groups dropped to reuse their memory */
} rkv_prefix_stats;
/* Fills out (all zero without prefix_cache). RKV_ERR_INVALID_ARG on a bad struct_size. */
RKV_API rkv_status rkv_blockmgr_prefix_stats(const rkv_blockmgr *m, rkv_prefix_stats *out);

/* ---- Accounting ------------------------------------------------------------------------ */

typedef struct rkv_blockmgr_stats {
  uint32_t total_blocks;
  uint32_t free_blocks;      /* free list + cached blocks no sequence holds (reclaimable) */
  uint32_t used_blocks;      /* total - free */
  uint32_t watermark_blocks; /* ceil(watermark * total) */
  uint32_t shared_blocks;    /* blocks with ref > 1 */
  uint32_t num_seqs;
  uint64_t allocated_slots;     /* used_blocks * block_size */
  uint64_t token_slots;         /* slots holding tokens (shared blocks counted once) */
  uint64_t fragmentation_slots; /* allocated_slots - token_slots */
  uint32_t peak_used_blocks;    /* since create */
} rkv_blockmgr_stats;

/* O(1) while no block is shared; O(live sequences x streams) while only full blocks are
 * shared (prefix caching); a walk over every table when a partly filled block is shared (a
 * fork). Per-step callers that need only counts use rkv_blockmgr_free_blocks. */
RKV_API void rkv_blockmgr_get_stats(const rkv_blockmgr *m, rkv_blockmgr_stats *out);
/* Blocks available now: the free list plus cached blocks no sequence holds (0 for NULL).
 * O(1): for per-step admission arithmetic. */
RKV_API uint32_t rkv_blockmgr_free_blocks(const rkv_blockmgr *m);
/* Blocks the sequence references (`total`, shared counted) and those only it references
 * (`exclusive`, freed if it were freed now). */
RKV_API rkv_status rkv_blockmgr_seq_footprint(const rkv_blockmgr *m, int64_t seq, uint32_t *total,
                                              uint32_t *exclusive);
/* Blocks needed to hold `tokens` in every stream of one sequence (admission arithmetic). */
RKV_API uint64_t rkv_blockmgr_blocks_for_tokens(const rkv_blockmgr *m, uint64_t tokens);

/* Walks every invariant: each block free xor referenced; ref count == number of table
 * references; free + used == total; a block in two streams only if they are the same
 * (layer, head) of different sequences (fork sharing); rows hold ceil(len/block_size)
 * blocks; the free list holds distinct ids; the id map matches the live slots.
 * RKV_OK or RKV_ERR_CORRUPT with the first violation in the last error. O(everything). */
RKV_API rkv_status rkv_blockmgr_check(const rkv_blockmgr *m);

#ifdef __cplusplus
}
#endif
#endif /* RKV_BLOCKMGR_H */
