/* rkv_sched_check sees the state issue 17's finding 1 left behind: a request counted as
 * computed in a plan that was never handed out (the step failed after scheduling it). Since
 * the fix no public call reaches that state, so this test forges it in the scheduler's private
 * state (it compiles scheduler/src/sched.c itself; tests.cmake adds the private include path),
 * expects RKV_ERR_CORRUPT naming the lost plan, restores the state and expects RKV_OK. */
#include "rkv_test.h" /* first: a local of its helpers would shadow sched.c's `req` */
#include "sched.c"

int main(void) {
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = 64;
  bc.block_size = 4;
  bc.num_layers = 2;
  bc.num_kv_heads = 2;
  rkv_blockmgr *bm = NULL;
  EXPECT_OK(rkv_blockmgr_create(&bc, &bm));
  rkv_sched_config c = RKV_SCHED_CONFIG_INIT;
  c.max_batched_tokens = 32;
  c.max_seqs = 4;
  c.evict.policy = RKV_EVICT_FULL;
  rkv_sched *s = NULL;
  EXPECT_OK(rkv_sched_create(&c, bm, &s, NULL, 0));
  for (int64_t id = 0; id < 2; id++) {
    rkv_sched_request rq = {id, 5, 3, 0, (double)id, NULL};
    EXPECT_OK(rkv_sched_add_request(s, &rq));
  }
  const rkv_sched_plan *p = NULL;
  EXPECT_OK(rkv_sched_step(s, &p));
  EXPECT_EQ_INT(p->n_seqs, 2);
  EXPECT_OK(rkv_sched_check(s));

  /* the step "failed": no plan outstanding, its requests still marked scheduled */
  s->n_out = 0;
  EXPECT_STATUS(rkv_sched_check(s), RKV_ERR_CORRUPT);
  EXPECT(strstr(rkv_sched_last_error(s), "never handed out") != NULL);
  s->n_out = 1;
  EXPECT_OK(rkv_sched_check(s));

  /* a plan of another step than the one outstanding is lost too */
  req *r0 = s->pb[0].seq_req[0];
  const uint64_t k = p->step & 1;
  r0->sched[k] += 2;
  EXPECT_STATUS(rkv_sched_check(s), RKV_ERR_CORRUPT);
  r0->sched[k] -= 2;
  EXPECT_OK(rkv_sched_check(s));

  rkv_sched_output outs[2] = {{0}, {0}};
  outs[0].id = p->seqs[0].id;
  outs[1].id = p->seqs[1].id;
  EXPECT_OK(rkv_sched_report(s, outs, 2));
  EXPECT_OK(rkv_sched_check(s));
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(bm);
  return rkv_test_finish();
}
