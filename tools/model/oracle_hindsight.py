"""Hindsight-attention oracle: an upper-bound proxy for any KV selection at a budget.

For each problem, one teacher-forced full-cache forward over the reference text records, for
every cached token j and every position i, the most attention any query at a position >= i
pays to j (the maximum over the query heads of j's kv head). Decoding then runs greedily with
the same per-stream budget, trigger and window as librkv (docs/EVICTION.md): when a stream
reaches B + buffer tokens (B after the prompt) it keeps its `window` newest tokens and the
B - window others that the rest of the reference trace will attend to most, ties to the lower
position. No online policy can know those future attentions; the gap between a policy and
this oracle says how much better its selection could be at that budget, and the gap between
the oracle and the full cache what the budget itself costs this model.

Same problems as `rkv eval` (seed, index, digit range, version 2 generator), budgets as a share
of each problem's reference length (rounded as `rkv eval --budgets N%` does).

  /usr/bin/python3 tools/model/oracle_hindsight.py WEIGHTS [--budgets 10%,15%,20%,30%,45%,60%]
      [--problems 500] [--first 0] [--digits 6-10] [--seed 777] [--buffer 16] [--window 8] [--batch 16]
      [--json FILE] [--min-accuracy X]

Progress on stderr; a table on stdout (and JSON with --json). CPU, one thread.
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
try:
    import torch  # noqa: E402
except ImportError as e:
    print(f"oracle_hindsight.py: needs torch ({e})", file=sys.stderr)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import task  # noqa: E402
from model import KVCache, greedy_loop, load_model  # noqa: E402


def budget_of(share, length, window):
    """rkv eval's per-request budget for --budgets N%."""
    b = int(share / 100.0 * length + 0.5)
    return b if b > window else window + 1


@torch.no_grad()
def future_attention(model, ids):
    """[layers] tensors [B, Hkv, T, T] (float16): F[l][b, h, i, j] = max over queries at
    positions >= i of kv head h's query heads of their attention to key j. One row at a time
    (the probabilities of a row are [H, T, T] floats)."""
    B, T = ids.shape
    rows = [[] for _ in model.layers]
    tri = torch.ones(T, T, dtype=torch.bool).tril()
    cos, sin = model._rope(torch.arange(T)[None, :])
    for r in range(B):
        x = model.embed(ids[r:r + 1], torch.zeros(1, dtype=torch.long))
        for li, blk in enumerate(model.layers):
            q, k, v = blk.qkv(x, cos, sin)
            g = blk.nh // blk.nkv
            s = torch.matmul(q.view(1, blk.nkv, g, T, blk.hd), k[:, :, None].transpose(-1, -2))
            p = torch.softmax((s / math.sqrt(blk.hd)).masked_fill(~tri, float("-inf")), dim=-1)
            x = blk.finish(x, torch.matmul(p, v[:, :, None]).view(1, blk.nh, T, blk.hd))
            m = p[0].amax(dim=1)  # over the group's query heads: [Hkv, T, T]
            m = torch.flip(torch.cummax(torch.flip(m, [1]), dim=1).values, [1])  # suffix max
            rows[li].append(m.to(torch.float16))
    return [torch.stack(r) for r in rows]


@torch.no_grad()
def decode(model, prompts, budgets, fut, max_new, buffer, window):
    """Greedy decoding of a batch of equal-length prompts, each row compressed to its own budget
    by the oracle. Evicted entries stay in the tensors, masked out (rows keep different
    counts). Returns generated id lists."""
    B = prompts.shape[0]
    L = len(model.layers)
    nkv = model.layers[0].nkv
    cache = KVCache(L, masked=True)
    valid = cache.valid  # [B, Hkv, T] bool per layer, cleared by compress

    def compress(now, after_prefill):
        for b in range(B):
            cnt = int(valid[0][b, 0].sum())
            if cnt < (budgets[b] if after_prefill else budgets[b] + buffer):
                continue
            for li in range(L):
                f = fut[li][b]  # [Hkv, T_ref, T_ref]
                for h in range(nkv):
                    live = valid[li][b, h].nonzero().flatten()
                    keep = live[-window:]
                    rest = live[:-window]
                    if now < f.shape[1]:
                        cols = rest.clamp(max=f.shape[2] - 1)
                        sc = f[h, now, cols].float()
                        sc[rest >= f.shape[2]] = 0.0
                    else:
                        sc = torch.zeros(rest.numel())
                    # best B - window, ties to the lower position: stable sort on -score
                    order = torch.sort(-sc, stable=True).indices[: budgets[b] - window]
                    row = torch.zeros_like(valid[li][b, h])
                    row[keep] = True
                    row[rest[order]] = True
                    valid[li][b, h] = row

    logits = model.extend(cache, prompts, torch.zeros(B, dtype=torch.long))[:, -1]
    compress(cache.next_pos, True)

    def advance(nxt, last):
        lg = model.extend(cache, nxt[:, None], last)[:, -1]
        compress(cache.next_pos, False)
        return lg

    return greedy_loop(logits, prompts[:, -1], advance, max_new, task.STOI[task.EOS])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--budgets", default="10%,15%,20%,30%,45%,60%")
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--first", type=int, default=0,
                    help="index of the first problem (split a run across processes)")
    ap.add_argument("--digits", default="6-10")
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--buffer", type=int, default=16)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json", default=None)
    ap.add_argument("--min-accuracy", type=float, default=None,
                    help="exit 3 when the accuracy at any budget is below this (a test floor)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, meta = load_model(args.weights)
    model.eval()
    version = int(meta.get("generator_version", "1"))
    if version != 2:
        sys.exit(f"oracle_hindsight.py: {args.weights} is a version-{version} model; the oracle "
                 "is for version 2")
    lo, hi = (int(v) for v in args.digits.split("-"))
    shares = [float(s.rstrip("%")) for s in args.budgets.split(",")]
    probs = [task.problem(args.seed, i, lo, hi, version)
             for i in range(args.first, args.first + args.problems)]
    by_n = {}
    for i, pr in enumerate(probs):
        by_n.setdefault(pr[0], []).append(i)
    correct = {s: 0 for s in shares}
    t0 = time.time()
    done = 0
    for n in sorted(by_n):
        idx = by_n[n]
        for c0 in range(0, len(idx), args.batch):
            chunk = [probs[i] for i in idx[c0:c0 + args.batch]]
            texts = [task.encode(p + t) for (_, _, _, p, t) in chunk]
            T = max(len(x) for x in texts)
            ids = torch.zeros(len(chunk), T, dtype=torch.long)
            for r, x in enumerate(texts):
                ids[r, :len(x)] = torch.tensor(x)
            fut = future_attention(model, ids)
            prompts = torch.tensor([task.encode(p) for (_, _, _, p, _) in chunk])
            for s in shares:
                budgets = [budget_of(s, len(x), args.window) for x in texts]
                gens = decode(model, prompts, budgets, fut, T - prompts.shape[1] + 64, args.buffer,
                              args.window)
                correct[s] += sum(task.is_correct(a, b, task.decode(g))
                                  for (_, a, b, _, _), g in zip(chunk, gens))
            done += len(chunk)
            print(f"oracle_hindsight.py: {done}/{len(probs)} problems, {time.time() - t0:.0f}s, "
                  + " ".join(f"{s:g}%:{correct[s]}" for s in shares), file=sys.stderr, flush=True)
    res = {"weights": args.weights, "problems": len(probs), "first": args.first, "digits": [lo, hi],
           "seed": args.seed,
           "buffer": args.buffer, "window": args.window, "seconds": round(time.time() - t0, 1),
           "runs": [{"policy": "oracle_hindsight", "budget_pct": s, "correct": correct[s],
                     "problems": len(probs), "accuracy": correct[s] / len(probs)} for s in shares]}
    print("policy            share  accuracy")
    for r in res["runs"]:
        print(f"oracle_hindsight {r['budget_pct']:5g}%  {r['accuracy']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    low = [r for r in res["runs"] if args.min_accuracy is not None and r["accuracy"] < args.min_accuracy]
    for r in low:
        print(f"FAIL: accuracy {r['accuracy']:.3f} at {r['budget_pct']:g}% < {args.min_accuracy}")
    return 3 if low else 0


if __name__ == "__main__":
    sys.exit(main())
