"""Prefix caching through the binding: requests share a cached system prompt, and cache-aware
admission (cache_lookahead) admits the requests whose prompt is cached ahead of the others,
counting them in prefix_stats()["admissions_ahead"] and in the Prometheus scrape."""
import pytest

import librkv
from librkv.blockmgr import prefix_hash_blocks

BS, SYS, GEN = 4, 16, 3


def hashes(sys_id):
    return prefix_hash_blocks([1000 * sys_id + p for p in range(SYS)], BS)


def drain(s, x):
    """Steps to the end; the ids in the order they were admitted."""
    order = []
    for _ in range(500):
        p = s.step()
        order += [int(i) for i in p.started]
        x.begin(p)
        s.report(x.finish())
        m = s.metrics()
        if not p.n_seqs and not m["num_running"] and not m["num_waiting"]:
            return order
    pytest.fail("the requests did not finish")


def admission_order(lookahead, scrape=False):
    bm = librkv.BlockManager(64, block_size=BS, num_layers=1, num_kv_heads=1, head_dim=4,
                             dtype="f32", watermark=0.0, prefix_cache=True)
    s = librkv.Scheduler(bm, max_batched_tokens=64, max_seqs=1, admission="optimistic",
                         evict="full", prefix_cache=True, check_every_step=True,
                         cache_lookahead=lookahead)
    x = librkv.Executor.for_scheduler(s, None, 1)
    # request 0 computes system prompt 1, whose blocks stay cached after it ends
    s.add_request(0, SYS + 4, GEN, arrival=0.0)
    s.set_prefix(0, hashes(1))
    assert drain(s, x) == [0]
    # 1, 2: system prompt 2 (not cached); 3, 4: system prompt 1 (cached)
    for i, sys_id in ((1, 2), (2, 2), (3, 1), (4, 1)):
        s.add_request(i, SYS + 4, GEN, arrival=float(i))
        s.set_prefix(i, hashes(sys_id))
    order = drain(s, x)
    s.check()
    if scrape:
        return order, s.prefix_stats(), s.metrics_prometheus()
    return order, s.prefix_stats()


def test_arrival_order_by_default():
    order, st = admission_order(0)
    assert order == [1, 2, 3, 4]
    assert st["admissions_ahead"] == 0
    assert st["admissions_hit"] == 3  # 2 shares 1's prompt, 3 and 4 request 0's


def test_cached_prompts_first():
    order, st = admission_order(4)
    assert order == [3, 4, 1, 2]
    assert st["admissions_ahead"] == 2
    assert st["admissions_hit"] == 3
    assert st["hit_tokens"] == 3 * SYS


def test_prometheus_prefix_counters():
    _, st, text = admission_order(4, scrape=True)
    lines = dict(l.split(" ", 1) for l in text.splitlines() if not l.startswith("#"))
    assert int(float(lines["rkv_prefix_cache_hits_total"])) == st["hit_tokens"] == 3 * SYS
    assert int(float(lines["rkv_prefix_cache_queries_total"])) == st["hashed_tokens"]
    assert int(float(lines["rkv_prefix_cache_admissions_ahead_total"])) == 2
    assert int(float(lines["rkv_request_success_total"])) == 5


def test_lookahead_limit():
    bm = librkv.BlockManager(16, block_size=BS, num_layers=1, num_kv_heads=1, head_dim=4,
                             prefix_cache=True)
    with pytest.raises(librkv.RkvError, match="cache_lookahead"):
        librkv.Scheduler(bm, prefix_cache=True, cache_lookahead=65537)
