#!/usr/bin/env python3
"""Straightforward PyTorch implementation of one R-KV / SnapKV / StreamingLLM / H2O
compression step over a batch of dense streams (docs/EVICTION.md, "The algorithm, exactly"),
timed with CUDA events.

`rkv bench evict --backend cuda` runs it with the same shapes as the librkv kernels and reads
the line `torch_ms_median <ms>`. It is the reference a user would write without librkv: dense
[streams][n][d] keys (no paging), the similarity matrix materialised, topk + sort + gather for
the compaction (K and V). `--check` runs a small case on the CPU against a literal per-stream
loop of the algorithm and exits non-zero on a mismatch.
"""
import argparse
import math
import sys

import torch


def compress(k, v, q, acc, policy, budget, window, kernel=7, lam=0.1, thr=0.5, sinks=4,
             work=torch.float32):
    """k, v: [S][n][d] (any float dtype); q: [S][G][window][d] f32; acc: [S][n] f32 (H2O).
    `work` is the arithmetic type (f32 for timing, f64 for --check).
    Returns the kept positions [S][budget] (ascending) and the compacted K and V."""
    S, n, d = k.shape
    nc, kc = n - window, budget - window
    dev = k.device
    if policy == "streaming":
        idx = torch.cat([torch.arange(sinks, device=dev),
                         torch.arange(n - (budget - sinks), n, device=dev)])
        keep = idx.unsqueeze(0).expand(S, -1)
    else:
        if policy == "h2o":
            z = acc[:, :nc].to(work)
        else:
            kf = k.to(work)
            # Step 1: GQA max on raw logits; step 2: softmax over candidates, mean, max-pool.
            logits = torch.einsum("sgad,snd->sgan", q.to(work), kf[:, :nc]) / math.sqrt(d)
            a = logits.amax(dim=1)
            imp = torch.softmax(a, dim=-1).mean(dim=1)
            imp = torch.nn.functional.max_pool1d(imp.unsqueeze(1), kernel, 1, kernel // 2).squeeze(1)
            if policy == "snapkv":
                z = imp
            else:
                # Step 3: redundancy over all n keys.
                kn = kf / (kf.norm(dim=-1, keepdim=True) + 1e-8)
                sim = torch.bmm(kn, kn.transpose(1, 2))
                sim.diagonal(dim1=1, dim2=2).zero_()
                pos = torch.arange(n, device=dev).expand(S, n, n)
                jstar = torch.where(sim > thr, pos, torch.zeros_like(pos)).amax(dim=-1)
                sim.scatter_(2, jstar.unsqueeze(-1), 0.0)
                r = sim.sum(dim=1) / n
                red = torch.softmax(r, dim=-1)[:, :nc]
                z = lam * imp - (1.0 - lam) * red
        # Step 5: top (B - window) candidates, ties to the lower position (stable sort), + window.
        order = torch.sort(-z, dim=-1, stable=True).indices[:, :kc]
        win = torch.arange(nc, n, device=dev).expand(S, window)
        keep = torch.sort(torch.cat([order, win], dim=1), dim=1).values
    gidx = keep.unsqueeze(-1).expand(-1, -1, d)
    return keep, torch.gather(k, 1, gidx), torch.gather(v, 1, gidx)


def literal(k, q, acc, policy, budget, window, kernel=7, lam=0.1, thr=0.5, sinks=4):
    """One stream at a time, loops as written in the algorithm document (for --check)."""
    out = []
    S, n, d = k.shape
    nc = n - window
    for s in range(S):
        if policy == "streaming":
            out.append(list(range(sinks)) + list(range(n - (budget - sinks), n)))
            continue
        if policy == "h2o":
            z = [float(acc[s, j]) for j in range(nc)]
        else:
            kk = k[s].double()
            G = q.shape[1]
            imp0 = [0.0] * nc
            for a in range(window):
                row = [max(float(q[s, g, a].double() @ kk[j]) / math.sqrt(d) for g in range(G))
                       for j in range(nc)]
                m = max(row)
                e = [math.exp(x - m) for x in row]
                tot = sum(e)
                for j in range(nc):
                    imp0[j] += e[j] / tot / window
            h = kernel // 2
            imp = [max(imp0[max(0, j - h):min(nc, j + h + 1)]) for j in range(nc)]
            if policy == "snapkv":
                z = imp
            else:
                kn = kk / (kk.norm(dim=-1, keepdim=True) + 1e-8)
                sim = (kn @ kn.T).tolist()
                for i in range(n):
                    sim[i][i] = 0.0
                    js = 0
                    for j in range(n - 1, -1, -1):
                        if sim[i][j] > thr:
                            js = j
                            break
                    sim[i][js] = 0.0
                r = [sum(sim[i][j] for i in range(n)) / n for j in range(n)]
                m = max(r)
                e = [math.exp(x - m) for x in r]
                tot = sum(e)
                z = [lam * imp[j] - (1 - lam) * e[j] / tot for j in range(nc)]
        cand = sorted(range(nc), key=lambda j: (-z[j], j))[: budget - window]
        out.append(sorted(cand + list(range(nc, n))))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="rkv", choices=["rkv", "snapkv", "streaming", "h2o"])
    ap.add_argument("--streams", type=int, default=256)
    ap.add_argument("--n", type=int, default=1152)
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--dtype", default="bf16", choices=["f32", "f16", "bf16"])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--check", action="store_true", help="CPU self-check on a small case")
    a = ap.parse_args()
    dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    torch.manual_seed(0)

    if a.check:
        bad = 0
        for policy in ["rkv", "snapkv", "streaming", "h2o"]:
            S, n, d, G, B, W = 3, 70, 16, 2, 40, 8
            k = torch.rand(S, n, d) * 2 - 1
            for s in range(S):  # near-duplicate keys so the redundancy rule matters
                for j in range(5, n, 4):
                    k[s, j] = k[s, j - 3] * 1.01
            v = torch.rand(S, n, d)
            q = torch.rand(S, G, W, d) * 3 - 1.5
            acc = torch.rand(S, n)
            keep, _, _ = compress(k, v, q, acc, policy, B, W, work=torch.float64)
            ref = literal(k, q, acc, policy, B, W)
            ok = keep.tolist() == ref
            bad += not ok
            print(f"check {policy}: {'ok' if ok else 'MISMATCH'}")
        return 1 if bad else 0

    if not torch.cuda.is_available():
        print("torch: no CUDA device", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    S, n, d = a.streams, a.n, a.head_dim
    k = (torch.rand(S, n, d, device=dev) * 2 - 1).to(dt)
    v = (torch.rand(S, n, d, device=dev) * 2 - 1).to(dt)
    q = torch.rand(S, a.group, a.window, d, device=dev) * 3 - 1.5
    acc = torch.rand(S, n, device=dev)
    for _ in range(3):
        compress(k, v, q, acc, a.policy, a.budget, a.window)
    torch.cuda.synchronize()
    times = []
    for _ in range(a.iters):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        compress(k, v, q, acc, a.policy, a.budget, a.window)
        e1.record()
        e1.synchronize()
        times.append(e0.elapsed_time(e1))
    times.sort()
    print(f"torch_ms_median {times[len(times) // 2]:.4f}")
    print(f"torch_ms_min {times[0]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
