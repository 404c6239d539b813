/* Backends and KV pools: CPU pool creation, copy-on-write block copies, compaction moves,
 * host transfers, argument validation, the caller allocator, and CUDA availability rules.
 * Review regressions: write_blocks clears the per-slot scores of the blocks it fills; a short
 * (older) backend config is not read past its struct_size; an allocator with only one of its
 * two functions is not mixed with libc. */
#include "rkv_test.h"

typedef struct counting_alloc {
  size_t live;
  size_t calls;
} counting_alloc;

static void *count_alloc(void *ctx, size_t size, size_t align) {
  counting_alloc *c = ctx;
  void *p = NULL;
  if (posix_memalign(&p, align, size) != 0) return NULL;
  c->live += size;
  c->calls++;
  return p;
}
static void count_free(void *ctx, void *p, size_t size) {
  counting_alloc *c = ctx;
  c->live -= size;
  free(p);
}

static void fill_block(rkv_kv_pool *pool, int32_t id, float base) {
  const rkv_kv_layout *l = rkv_kv_pool_layout(pool);
  uint8_t *blk = (uint8_t *)rkv_kv_pool_base(pool) + (size_t)id * rkv_kv_block_bytes(l);
  for (uint32_t s = 0; s < l->block_size; s++)
    for (uint32_t d = 0; d < l->head_dim; d++) {
      rkv_dtype_store(l->dtype, blk + rkv_kv_k_offset(l, s), d, base + (float)s + 0.5f * (float)d);
      rkv_dtype_store(l->dtype, blk + rkv_kv_v_offset(l, s), d, -(base + (float)s));
    }
  float *sc = rkv_kv_pool_scores(pool);
  for (uint32_t s = 0; s < l->block_size; s++) sc[(size_t)id * l->block_size + s] = base + (float)s;
}

static float k_at(rkv_kv_pool *pool, int64_t slot, uint32_t d) {
  const rkv_kv_layout *l = rkv_kv_pool_layout(pool);
  uint8_t *blk =
      (uint8_t *)rkv_kv_pool_base(pool) + (size_t)(slot / l->block_size) * rkv_kv_block_bytes(l);
  return rkv_dtype_load(l->dtype, blk + rkv_kv_k_offset(l, (uint32_t)(slot % l->block_size)), d);
}

static void test_cpu_pool(rkv_dtype dt) {
  counting_alloc ca = {0, 0};
  rkv_allocator al = {count_alloc, count_free, &ca};
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CPU;
  cfg.allocator = &al;
  rkv_backend *b = NULL;
  EXPECT_OK(rkv_backend_create(&cfg, &b));
  EXPECT_EQ_INT(rkv_backend_get_kind(b), RKV_BACKEND_CPU);
  EXPECT_STREQ(rkv_backend_name(b), "cpu");
  EXPECT(rkv_backend_stream(b) == NULL);
  EXPECT_OK(rkv_backend_sync(b));
  rkv_kv_layout l = {dt, 4, 8};
  rkv_kv_pool *p = NULL;
  EXPECT_OK(rkv_kv_pool_create(b, &l, 6, &p));
  EXPECT(ca.calls >= 3);
  EXPECT_EQ_INT(rkv_kv_pool_num_blocks(p), 6);
  EXPECT(rkv_kv_pool_backend(p) == b);
  EXPECT_NEAR(k_at(p, 5, 3), 0.0, 0); /* zeroed */
  for (int i = 0; i < 6; i++) fill_block(p, i, 8.0f * (float)i);

  rkv_block_copy ops[1] = {{1, 4}};
  EXPECT_OK(rkv_kv_pool_copy_blocks(p, ops, 1));
  EXPECT_NEAR(k_at(p, 4 * 4 + 2, 1), 10.5, 0);
  EXPECT_NEAR(rkv_kv_pool_scores(p)[4 * 4 + 3], 11.0, 0);
  rkv_block_copy bad[1] = {{1, 6}};
  EXPECT_STATUS(rkv_kv_pool_copy_blocks(p, bad, 1), RKV_ERR_INVALID_ARG);
  EXPECT(strstr(rkv_backend_last_error(b), "out of range") != NULL);

  /* A compaction plan: positions 1 and 3 of block 2 move down to 0 and 1. */
  rkv_slot_move mv[2] = {{2 * 4 + 1, 2 * 4 + 0}, {2 * 4 + 3, 2 * 4 + 1}};
  EXPECT_OK(rkv_kv_pool_apply_moves(p, mv, 2));
  EXPECT_NEAR(k_at(p, 8, 0), 17.0, 0);
  EXPECT_NEAR(k_at(p, 9, 0), 19.0, 0);
  EXPECT_NEAR(rkv_kv_pool_scores(p)[9], 19.0, 0);
  rkv_slot_move badm[1] = {{0, 24}};
  EXPECT_STATUS(rkv_kv_pool_apply_moves(p, badm, 1), RKV_ERR_INVALID_ARG);

  size_t bb = rkv_kv_block_bytes(&l);
  uint8_t *host = malloc(2 * bb);
  int32_t ids[2] = {3, 0};
  EXPECT_OK(rkv_kv_pool_read_blocks(p, ids, 2, host));
  int32_t ids2[2] = {5, 1};
  EXPECT_OK(rkv_kv_pool_write_blocks(p, ids2, 2, host));
  EXPECT_NEAR(k_at(p, 5 * 4 + 1, 0), 25.0, 0);
  EXPECT_NEAR(k_at(p, 1 * 4 + 1, 0), 1.0, 0);
  int32_t badids[1] = {-1};
  EXPECT_STATUS(rkv_kv_pool_read_blocks(p, badids, 1, host), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_kv_pool_write_blocks(p, NULL, 1, host), RKV_ERR_INVALID_ARG);
  free(host);

  rkv_kv_pool *q = (rkv_kv_pool *)0x1;
  rkv_kv_layout badl = {dt, 0, 8};
  EXPECT_STATUS(rkv_kv_pool_create(b, &badl, 6, &q), RKV_ERR_INVALID_ARG);
  EXPECT(q == NULL);
  EXPECT_STATUS(rkv_kv_pool_create(b, &l, 0, &q), RKV_ERR_INVALID_ARG);
  rkv_kv_pool_destroy(p);
  rkv_backend_destroy(b);
  EXPECT_EQ_INT(ca.live, 0);
}

static void test_backend_kinds(void) {
  rkv_backend *b = (rkv_backend *)0x1;
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CUDA;
  rkv_status s = rkv_backend_create(&cfg, &b);
  if (!rkv_build_has_cuda()) {
    EXPECT_EQ_INT(s, RKV_ERR_UNSUPPORTED);
  } else {
    EXPECT(s == RKV_OK || s == RKV_ERR_CUDA);
  }
  if (s == RKV_OK) {
    rkv_backend_destroy(b);
  } else {
    EXPECT(b == NULL);
  }
  cfg.kind = RKV_BACKEND_AUTO; /* never fails for lack of a GPU */
  EXPECT_OK(rkv_backend_create(&cfg, &b));
  rkv_backend_destroy(b);
  EXPECT_OK(rkv_backend_create(NULL, &b));
  rkv_backend_destroy(b);
  cfg.kind = (rkv_backend_kind)9;
  EXPECT_STATUS(rkv_backend_create(&cfg, &b), RKV_ERR_INVALID_ARG);
  cfg = (rkv_backend_config)RKV_BACKEND_CONFIG_INIT;
  cfg.struct_size = 3;
  EXPECT_STATUS(rkv_backend_create(&cfg, &b), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_backend_create(NULL, NULL), RKV_ERR_INVALID_ARG);
  rkv_backend_destroy(NULL);
  rkv_kv_pool_destroy(NULL);
  EXPECT_STATUS(rkv_backend_sync(NULL), RKV_ERR_INVALID_ARG);
  /* the sync count: every successful sync, none for NULL */
  EXPECT_EQ_INT(rkv_backend_sync_count(NULL), 0);
  EXPECT_OK(rkv_backend_create(NULL, &b));
  EXPECT_EQ_INT(rkv_backend_sync_count(b), 0);
  EXPECT_OK(rkv_backend_sync(b));
  EXPECT_OK(rkv_backend_sync(b));
  EXPECT_EQ_INT(rkv_backend_sync_count(b), 2);
  rkv_backend_destroy(b);
}

/* write_blocks puts other tokens into the blocks: the previous owner's H2O mass must go. */
static void test_write_blocks_clears_scores(void) {
  rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
  cfg.kind = RKV_BACKEND_CPU;
  rkv_backend *b = NULL;
  EXPECT_OK(rkv_backend_create(&cfg, &b));
  rkv_kv_layout l = {RKV_DTYPE_F32, 4, 8};
  rkv_kv_pool *p = NULL;
  EXPECT_OK(rkv_kv_pool_create(b, &l, 4, &p));
  fill_block(p, 1, 10.0f);
  fill_block(p, 2, 20.0f);
  fill_block(p, 3, 30.0f);
  static uint8_t host[2 * 2 * 4 * 8 * sizeof(float)];
  for (size_t i = 0; i < sizeof host; i++) host[i] = (uint8_t)i;
  const int32_t ids[2] = {3, 1};
  EXPECT_OK(rkv_kv_pool_write_blocks(p, ids, 2, host));
  const float *sc = rkv_kv_pool_scores(p);
  int stale = 0;
  for (uint32_t s = 0; s < 4; s++) stale += sc[4 + s] != 0.0f || sc[12 + s] != 0.0f;
  EXPECT_EQ_INT(stale, 0);
  EXPECT(sc[8] == 20.0f && sc[11] == 23.0f); /* block 2 not written: kept */
  EXPECT(memcmp((uint8_t *)rkv_kv_pool_base(p) + 3 * rkv_kv_block_bytes(&l), host,
                rkv_kv_block_bytes(&l)) == 0);
  /* a swap keeps the mass: read_scores saves it, write_scores puts it back after the write */
  float saved[2 * 4];
  const int32_t from[2] = {2, 0}, to[2] = {3, 1};
  EXPECT_OK(rkv_kv_pool_read_scores(p, from, 2, saved));
  EXPECT(saved[0] == 20.0f && saved[3] == 23.0f && saved[4] == 0.0f);
  EXPECT_OK(rkv_kv_pool_write_scores(p, to, 2, saved));
  EXPECT(sc[12] == 20.0f && sc[15] == 23.0f && sc[4] == 0.0f);
  const int32_t bad[1] = {4};
  EXPECT_STATUS(rkv_kv_pool_read_scores(p, bad, 1, saved), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_kv_pool_write_scores(p, to, 1, NULL), RKV_ERR_INVALID_ARG);
  rkv_kv_pool_destroy(p);
  rkv_backend_destroy(b);
}

/* A caller compiled against an older, shorter rkv_backend_config: fields past its
 * struct_size take defaults (here they hold garbage that would be rejected if read). */
static void test_short_config(void) {
  rkv_backend_config cfg;
  memset(&cfg, 0xff, sizeof cfg); /* num_threads = device = -1 */
  cfg.struct_size = (uint32_t)offsetof(rkv_backend_config, device);
  cfg.kind = RKV_BACKEND_CPU;
  rkv_backend *b = NULL;
  EXPECT_OK(rkv_backend_create(&cfg, &b));
  EXPECT_EQ_INT(rkv_backend_get_kind(b), RKV_BACKEND_CPU);
  rkv_backend_destroy(b);
}

/* An allocator with only alloc (or only free) set: libc does both, never half each. */
static void *offset_alloc(void *ctx, size_t size, size_t align) {
  counting_alloc *c = ctx;
  c->calls++;
  uint8_t *p = malloc(size + 2 * align);
  return p ? (void *)(((uintptr_t)p + 2 * align - 1) & ~(uintptr_t)(align - 1)) : NULL;
}
static void test_half_allocator(void) {
  counting_alloc ca = {0, 0};
  rkv_allocator only_alloc = {offset_alloc, NULL, &ca}, only_free = {NULL, count_free, &ca};
  const rkv_allocator *als[2] = {&only_alloc, &only_free};
  for (int i = 0; i < 2; i++) {
    rkv_backend_config cfg = RKV_BACKEND_CONFIG_INIT;
    cfg.kind = RKV_BACKEND_CPU;
    cfg.allocator = als[i];
    rkv_backend *b = NULL;
    EXPECT_OK(rkv_backend_create(&cfg, &b));
    rkv_kv_layout l = {RKV_DTYPE_F16, 4, 8};
    rkv_kv_pool *p = NULL;
    EXPECT_OK(rkv_kv_pool_create(b, &l, 3, &p));
    rkv_kv_pool_destroy(p);
    rkv_backend_destroy(b);
  }
  EXPECT_EQ_INT(ca.calls, 0);
  EXPECT_EQ_INT(ca.live, 0);
}

static void test_build_flags(void) {
  /* The flags are consistent with each other: NCCL needs CUDA. */
  if (rkv_build_has_nccl()) EXPECT(rkv_build_has_cuda());
  EXPECT(strlen(rkv_version_string()) > 0);
}

int main(void) {
  test_cpu_pool(RKV_DTYPE_F32);
  test_cpu_pool(RKV_DTYPE_F16);
  test_cpu_pool(RKV_DTYPE_BF16);
  test_backend_kinds();
  test_write_blocks_clears_scores();
  test_short_config();
  test_half_allocator();
  test_build_flags();
  return rkv_test_finish();
}
