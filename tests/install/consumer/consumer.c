/* A program outside the librkv tree, built only against an installed librkv (its headers under
 * <prefix>/include, its libraries under <prefix>/lib): by tests/install/check_consumer.sh with
 * pkg-config and a plain cc command line, and by the CMake project beside it with
 * find_package(Rkv). It serves a few requests with no model: a backend and a KV pool shaped
 * like the block manager's, the scheduler over the block manager, and every step's plan
 * "executed" by reporting each scheduled sequence back, with the invariant walks after each
 * step. Prints one line per fact it checked and exits 0 when everything held. */
#include <stdio.h>
#include <string.h>

#include <rkv/rkv.h>
#include <rkv/version.h>

#define N_REQUESTS 5

static int failures;

#define CHECK(what, cond)                                          \
  do {                                                             \
    if (!(cond)) {                                                 \
      fprintf(stderr, "consumer: FAILED: %s (%s)\n", what, #cond); \
      failures++;                                                  \
    }                                                              \
  } while (0)

#define CHECK_OK(what, call)                                                     \
  do {                                                                           \
    rkv_status st_ = (call);                                                     \
    if (st_ != RKV_OK) {                                                         \
      fprintf(stderr, "consumer: FAILED: %s: %s\n", what, rkv_status_name(st_)); \
      failures++;                                                                \
    }                                                                            \
  } while (0)

int main(void) {
  /* The library the program runs with is the one whose headers it was compiled against. */
  int major = -1, minor = -1, patch = -1;
  rkv_version(&major, &minor, &patch);
  printf("librkv %s (headers %s), cuda %s\n", rkv_version_string(), RKV_VERSION_STRING,
         rkv_build_has_cuda() ? "built in" : "not built");
  CHECK("version",
        major == RKV_VERSION_MAJOR && minor == RKV_VERSION_MINOR && patch == RKV_VERSION_PATCH);
  CHECK("version string", strcmp(rkv_version_string(), RKV_VERSION_STRING) == 0);

  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = 128;
  bc.block_size = 16;
  bc.num_layers = 2;
  bc.num_kv_heads = 2;
  bc.head_dim = 32;
  bc.dtype = RKV_DTYPE_F16;
  rkv_blockmgr *m = NULL;
  CHECK_OK("rkv_blockmgr_create", rkv_blockmgr_create(&bc, &m));
  if (!m) return 1;

  /* AUTO: the CUDA backend where one is built in and a device answers, else the CPU. Without
   * a driver this is where the CUDA runtime looks for libcuda, finds none, and AUTO falls
   * back: the program itself never needs a CUDA library. */
  rkv_backend_config kc = RKV_BACKEND_CONFIG_INIT;
  kc.num_threads = 1;
  rkv_backend *be = NULL;
  CHECK_OK("rkv_backend_create", rkv_backend_create(&kc, &be));
  rkv_kv_pool *pool = NULL;
  if (be) {
    rkv_kv_layout layout = rkv_blockmgr_kv_layout(m);
    CHECK_OK("rkv_kv_pool_create", rkv_kv_pool_create(be, &layout, bc.num_blocks, &pool));
    printf("backend %s\n", rkv_backend_name(be));
  }

  rkv_sched_config sc = RKV_SCHED_CONFIG_INIT;
  sc.max_batched_tokens = 64;
  sc.max_seqs = 4;
  sc.evict.policy = RKV_EVICT_FULL; /* no model here, so nothing to score for eviction */
  rkv_sched *s = NULL;
  char err[256] = "";
  CHECK_OK("rkv_sched_create", rkv_sched_create(&sc, m, &s, err, sizeof err));
  if (!s) {
    fprintf(stderr, "consumer: %s\n", err);
    return 1;
  }
  for (int i = 0; i < N_REQUESTS; i++) {
    rkv_sched_request r = {0};
    r.id = 100 + i;
    r.prompt_len = 20 + 9 * i;
    r.max_new_tokens = 8 + 5 * i;
    r.arrival = i;
    CHECK_OK("rkv_sched_add_request", rkv_sched_add_request(s, &r));
  }

  rkv_sched_output outs[4];
  uint64_t steps = 0;
  rkv_sched_metrics mt;
  for (;;) {
    rkv_sched_get_metrics(s, &mt);
    if (mt.num_finished == N_REQUESTS || steps > 10000 || failures) break;
    const rkv_sched_plan *plan = NULL;
    CHECK_OK("rkv_sched_step", rkv_sched_step(s, &plan));
    if (!plan || plan->n_seqs > sizeof outs / sizeof outs[0]) {
      failures++;
      break;
    }
    for (uint32_t k = 0; k < plan->n_seqs; k++) {
      memset(&outs[k], 0, sizeof outs[k]);
      outs[k].id = plan->seqs[k].id;
    }
    CHECK_OK("rkv_sched_report", rkv_sched_report(s, outs, plan->n_seqs));
    CHECK_OK("rkv_sched_check", rkv_sched_check(s));
    CHECK_OK("rkv_blockmgr_check", rkv_blockmgr_check(m));
    steps++;
  }
  printf("%llu of %d requests finished in %llu steps, %llu tokens generated, %u blocks in use\n",
         (unsigned long long)mt.num_finished, N_REQUESTS, (unsigned long long)steps,
         (unsigned long long)mt.generation_tokens, mt.used_blocks);
  CHECK("all requests finished", mt.num_finished == N_REQUESTS);
  CHECK("every block returned", mt.used_blocks == 0);
  CHECK("tokens generated", mt.generation_tokens == 8 * N_REQUESTS + 5 * 10);

  rkv_sched_destroy(s);
  rkv_kv_pool_destroy(pool);
  rkv_backend_destroy(be);
  rkv_blockmgr_destroy(m);
  printf("consumer: %s\n", failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
