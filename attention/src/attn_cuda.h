/* Private contract between the attention dispatcher (attention/src/attention.c, C) and the
 * CUDA kernels (the .cu files in attention/src). The public entry points validate every argument on
 * the host before calling these launchers, so a launcher may assume a well-formed batch: pool
 * backend is CUDA, p->head_dim equals the pool layout's head_dim, num_q_heads %
 * num_kv_heads == 0, num_streams == num_seqs * num_kv_heads, table.block_size equals the
 * layout's, scale is already resolved (never 0), and (head_dim, block_size, dtype) passed
 * rkv_attn_cuda_supported. The workspace only enables split-KV decode: the launcher picks
 * the most splits (up to 16) whose partials fit in ws_bytes, down to no split (ws may be NULL);
 * a small workspace costs speed, never correctness. Table arrays,
 * q, q_indptr, out, k, v and slots are device pointers (never read on the host here), so
 * table contents (indptr, indices, last_len) are NOT validated for CUDA pools.
 *
 * Semantics shared with the CPU reference (attn_cpu.c): an empty stream in decode gives zero
 * output for its query heads; write_kv also sets rkv_kv_pool_scores(pool)[slot] = 0 for every
 * written slot (a new token starts with no attention mass); accumulate_scores adds, per slot,
 * the softmax probabilities summed over the group's query heads (and over all new rows in
 * prefill). qwindow != NULL is refused for CUDA pools before reaching these launchers.
 *
 * err is an RKV_ERRBUF-sized buffer (the pool backend's last-error text): on failure write a
 * one-line reason there and return a non-OK status. When CUDA is not built,
 * attention/src/attn_cuda_stub.c provides versions that return RKV_ERR_UNSUPPORTED. */
#ifndef RKV_ATTN_CUDA_H
#define RKV_ATTN_CUDA_H

#include <rkv/attention.h>

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

rkv_status rkvi_attn_cuda_decode(rkv_kv_pool *pool, const rkv_attn_params *p, void *ws,
                                 size_t ws_bytes, char *err);
rkv_status rkvi_attn_cuda_prefill(rkv_kv_pool *pool, const rkv_attn_params *p, void *ws,
                                  size_t ws_bytes, char *err);
rkv_status rkvi_attn_cuda_write_kv(rkv_kv_pool *pool, const float *k, const float *v,
                                   const int64_t *slots, uint32_t n_rows, char *err);
rkv_status rkvi_attn_cuda_write_kv_rows(rkv_kv_pool *pool, const float *k, const float *v,
                                        uint32_t num_seqs, uint32_t num_kv_heads,
                                        const int32_t *q_indptr, const rkv_block_rows *rows,
                                        char *err);
/* Whether decode and prefill kernels launch for this GQA group on the pool's device (threads
 * and shared memory); the layout already passed rkv_attn_cuda_supported and num_q_heads is a
 * positive multiple of num_kv_heads. */
rkv_status rkvi_attn_cuda_check_heads(rkv_kv_pool *pool, uint32_t num_q_heads,
                                      uint32_t num_kv_heads, char *err);
rkv_status rkvi_attn_cuda_workspace_bound(const rkv_kv_pool *pool, uint32_t max_seqs,
                                          uint32_t num_q_heads, uint32_t head_dim, int64_t max_len,
                                          size_t *bytes);

#ifdef __cplusplus
}
#endif
#endif /* RKV_ATTN_CUDA_H */
