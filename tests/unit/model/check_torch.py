"""PyTorch side of the test model: the explicit-cache path (`extend`, `keep`) agrees with the
full causal forward, and the committed reference (smoke_ref.safetensors) is still what
tools/model/make_reference.py produces from the committed smoke weights (so a change to
model.py or task.py without regenerating the reference fails here, not silently in C).
Ends with the "N passed, N failed" line; exit 77 when torch or numpy is missing."""

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "tools", "model"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "common"))
from checks import Checks, skip  # noqa: E402

try:
    import numpy as np
    import torch
except ImportError as e:
    skip(str(e))

import make_reference  # noqa: E402
import task  # noqa: E402
from model import KVCache, load_model  # noqa: E402
from safetensors_io import load  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--ref", required=True)
    args = ap.parse_args()
    checks = Checks()
    expect = checks.expect

    torch.set_num_threads(1)
    m, _ = load_model(args.weights)
    L = m.cfg["n_layers"]
    _, _, _, p, t = task.problem(9, 1, 9, 9)
    ids = torch.tensor([task.encode(p + t)])
    with torch.no_grad():
        full = m(ids)
        # fed in three uneven pieces through the cache
        c = KVCache(L)
        parts = [m.extend(c, ids[:, :17], torch.zeros(1, dtype=torch.long)),
                 m.extend(c, ids[:, 17:18], ids[:, 16]),
                 m.extend(c, ids[:, 18:], ids[:, 17])]
        d = (torch.cat(parts, 1) - full).abs().max().item()
        print(f"extend vs forward: max |diff| = {d:.3g}")
        expect(d <= 1e-4, f"extend differs from forward by {d}")
        # a keep() that reorders and restores every entry changes nothing
        c = KVCache(L)
        a = m.extend(c, ids[:, :40], torch.zeros(1, dtype=torch.long))
        n = c.length()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(3))
        for li in range(L):
            c.keep(li, perm[None, None, :].expand(1, m.cfg["n_kv_heads"], n))
            c.keep(li, torch.argsort(perm)[None, None, :].expand(1, m.cfg["n_kv_heads"], n))
        b = m.extend(c, ids[:, 40:], ids[:, 39])
        d = (torch.cat([a, b], 1) - full).abs().max().item()
        expect(d <= 1e-4, f"keep() permutation round trip changed logits by {d}")
        expect(c.pos[0][0, 0].tolist() == list(range(ids.shape[1])), "positions not kept")
        # dropping entries keeps the survivors' logical positions
        c = KVCache(L)
        m.extend(c, ids[:, :40], torch.zeros(1, dtype=torch.long))
        keep = torch.tensor([0, 1, 2, 3, 30, 35, 39])
        for li in range(L):
            c.keep(li, keep[None, None, :].expand(1, m.cfg["n_kv_heads"], len(keep)))
        expect(c.length() == 7 and c.next_pos == 40, "keep() changed the next position")
        expect(c.pos[L - 1][0, 1].tolist() == keep.tolist(), "keep() lost logical positions")

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "ref.safetensors")
        make_reference.main(["--weights", args.weights, "--out", out])
        new, _ = load(out)
        old, _ = load(args.ref)
        expect(sorted(new) == sorted(old), "reference tensor names changed")
        for k in sorted(old):
            if k not in new:
                continue
            if old[k].dtype == np.float32:
                diff = float(np.max(np.abs(old[k] - new[k]))) if old[k].shape == new[k].shape else 1e9
                expect(diff <= 1e-5, f"{k}: regenerated logits differ by {diff}")
            else:
                expect(np.array_equal(old[k], new[k]), f"{k}: regenerated reference differs "
                       "(regenerate with tools/model/make_reference.py)")
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
