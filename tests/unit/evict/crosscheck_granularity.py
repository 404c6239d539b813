"""Cross-check of `rkv select --granularity` (stream, layer, kvhead, sequence) on multi-layer
inputs against ref_rkv.select_multi, a NumPy float64 reference written from the definition in
docs/EVICTION.md ("Selection granularity"): per-stream joint scores Z from ref_rkv, aggregated
per group (head mean, layer sum), then the window plus the best B - window candidates, ties to
the lower position.

Inputs: clustered keys [layers, kv_heads, n, d] (the same generator as crosscheck_select.py),
every policy (rkv, snapkv, streaming, h2o) at every granularity, n below, at and above B,
GQA 1 / 2 / 4, pool dtypes f32 / f16 / bf16; H2O also with small integer masses so that the
aggregates tie often (the tie rule is then what decides, and must match exactly). Also: one
layer given as 3-D keys keeps the 2-D output; stream mode on 4-D keys equals 3-D runs layer by
layer; the 4-D score dumps equal the reference's per-stream scores; bad granularity and
mismatched layer counts are clear errors.

Comparison rule (as crosscheck_select.py): kept sets must be identical, except a position
whose aggregated reference score is within 1e-6 (relative to the group's largest |score|) of
the cut; H2O and streaming must match exactly.

Exit 0 all passed, 1 a mismatch, 77 numpy unavailable. Ends with "N passed, N failed".
"""
import argparse
import os
import subprocess
import sys

try:
    import numpy as np
except ImportError:  # pragma: no cover
    print("SKIP: numpy not importable by", sys.executable)
    print("0 passed, 0 failed, 1 skipped")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import crosscheck_select as cs  # noqa: E402
import ref_rkv  # noqa: E402

WINDOW, KERNEL, LAM, T, SINKS = 8, 7, 0.1, 0.5, 4


class Tally:
    def __init__(self):
        self.passed = self.failed = self.exceptions = 0

    def check(self, ok, what, msg=""):
        if ok:
            self.passed += 1
            print("ok  ", what)
        else:
            self.failed += 1
            print("FAIL", what, msg)


def make_inputs(rng, L, H, G, n, d, dtype, arows=12):
    K = np.empty((L, H, n, d), dtype=np.float32)
    for l in range(L):
        for _ in range(20):
            K[l] = cs.round_to(cs.clustered_keys(rng, H, n, d), dtype)
            if n <= WINDOW or not cs.fragile(K[l], WINDOW, T):
                break
            print("  regenerating fragile input (layer %d)" % l)
    Q = (rng.standard_normal((L, H * G, arows, d)) * 1.5).astype(np.float32)
    acc = rng.random((L, H, n)).astype(np.float32)
    return K, Q, acc


def tool_args(policy, gran, kp, qp, sp, B, dtype, out):
    return ["--policy", policy, "--granularity", gran, "--keys", kp, "--queries", qp,
            "--scores", sp, "--budget", str(B), "--window", str(WINDOW), "--kernel",
            str(KERNEL), "--lambda", str(LAM), "--threshold", str(T), "--sinks", str(SINKS),
            "--dtype", dtype, "--block-size", "16", "--out", out]


def run_kept(rkv, args, out):
    if os.path.exists(out):
        os.remove(out)
    cs.run_tool(rkv, args)
    return np.load(out)


def check_case(t, rkv, wd, K, Q, acc, B, dtype, policies, label):
    L, H, n, _ = K.shape
    kp = cs.save(os.path.join(wd, "K.npy"), K)
    qp = cs.save(os.path.join(wd, "Q.npy"), Q)
    sp = cs.save(os.path.join(wd, "S.npy"), acc)
    out = os.path.join(wd, "kept.npy")
    for policy in policies:
        for gran in ref_rkv.GRANULARITIES:
            what = "%-9s %-8s %s" % (policy, gran, label)
            try:
                kept = run_kept(rkv, tool_args(policy, gran, kp, qp, sp, B, dtype, out), out)
            except Exception as e:  # noqa: BLE001
                t.check(False, what, str(e))
                continue
            ref, A = ref_rkv.select_multi(policy, gran, K.astype(np.float64),
                                          Q[:, :, -WINDOW:].astype(np.float64), acc, B, WINDOW,
                                          KERNEL, LAM, T, SINKS)
            if kept.shape != ref.shape:
                t.check(False, what, "shape %s vs %s" % (kept.shape, ref.shape))
                continue
            flat = kept.reshape(L * H, -1)
            ok, exc, msg = cs.compare(flat, ref.reshape(L * H, -1),
                                      None if A is None else A.reshape(L * H, -1), n, B, WINDOW,
                                      policy in ("h2o", "streaming"))
            t.exceptions += exc
            # Every stream of a group holds the same set (the reference's rows are equal by
            # construction; the tool's must be too, near ties included).
            if ok and gran != "stream" and policy != "streaming":
                groups = {"layer": kept[:, :1], "kvhead": kept[:1], "sequence": kept[:1, :1]}
                if not (kept == groups[gran]).all():
                    ok, msg = False, "streams of one group differ"
            t.check(ok, what + (" (near-tie exceptions: %d)" % exc if exc else ""), msg)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rkv", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    wd = args.workdir
    os.makedirs(wd, exist_ok=True)
    t = Tally()
    all_policies = ("rkv", "snapkv", "streaming", "h2o")
    # (L, H, G, d, B, n, dtype)
    configs = [
        (2, 2, 4, 64, 96, 224, "f32"),
        (3, 4, 1, 64, 64, 200, "bf16"),
        (4, 2, 2, 128, 128, 256, "f16"),
        (2, 2, 4, 64, 64, 40, "f32"),    # n < B: everything kept
        (2, 3, 1, 32, 64, 64, "f32"),    # n = B: a no-op
    ]
    for ci, (L, H, G, d, B, n, dtype) in enumerate(configs):
        rng = np.random.default_rng(4100 + ci)
        K, Q, acc = make_inputs(rng, L, H, G, n, d, dtype)
        label = "L=%d H=%d G=%d d=%3d B=%3d n=%3d %s" % (L, H, G, d, B, n, dtype)
        check_case(t, args.rkv, wd, K, Q, acc, B, dtype, all_policies, label)
        if ci == 0:
            # Integer masses: aggregates tie often, so the tie rule decides (exactly).
            iacc = rng.integers(0, 4, size=acc.shape).astype(np.float32)
            check_case(t, args.rkv, wd, K, Q, iacc, B, dtype, ("h2o",), label + " int mass")

    # One layer as 3-D keys: the 2-D output of today, every granularity.
    L, H, G, d, B, n = 1, 4, 2, 64, 96, 200
    rng = np.random.default_rng(4200)
    K, Q, acc = make_inputs(rng, L, H, G, n, d, "f32")
    kp = cs.save(os.path.join(wd, "K3.npy"), K[0])
    qp = cs.save(os.path.join(wd, "Q3.npy"), Q[0])
    sp = cs.save(os.path.join(wd, "S3.npy"), acc[0])
    out = os.path.join(wd, "kept3.npy")
    for gran in ref_rkv.GRANULARITIES:
        kept = run_kept(args.rkv, tool_args("rkv", gran, kp, qp, sp, B, "f32", out), out)
        ref, A = ref_rkv.select_multi("rkv", gran, K.astype(np.float64),
                                      Q[:, :, -WINDOW:].astype(np.float64), acc, B, WINDOW,
                                      KERNEL, LAM, T, SINKS)
        ok, exc, msg = (False, 0, "shape %s" % (kept.shape,)) if kept.shape != (H, B) else \
            cs.compare(kept, ref[0], A[0], n, B, WINDOW, False)
        t.exceptions += exc
        t.check(ok, "3-D keys, %-8s -> [kv_heads, B]" % gran, msg)

    # Stream mode on 4-D keys = today's 3-D runs layer by layer (both C: exact).
    L, H, G, d, B, n = 3, 2, 4, 64, 96, 224
    rng = np.random.default_rng(4300)
    K, Q, acc = make_inputs(rng, L, H, G, n, d, "f32")
    kp = cs.save(os.path.join(wd, "K.npy"), K)
    qp = cs.save(os.path.join(wd, "Q.npy"), Q)
    sp = cs.save(os.path.join(wd, "S.npy"), acc)
    out = os.path.join(wd, "kept.npy")
    for policy in ("rkv", "h2o"):
        kept4 = run_kept(args.rkv, tool_args(policy, "stream", kp, qp, sp, B, "f32", out), out)
        same = True
        for l in range(L):
            cs.save(os.path.join(wd, "K3.npy"), K[l])
            cs.save(os.path.join(wd, "Q3.npy"), Q[l])
            cs.save(os.path.join(wd, "S3.npy"), acc[l])
            a = ["--policy", policy, "--keys", os.path.join(wd, "K3.npy"), "--queries",
                 os.path.join(wd, "Q3.npy"), "--scores", os.path.join(wd, "S3.npy"),
                 "--budget", str(B), "--out", os.path.join(wd, "kept3.npy")]
            k3 = run_kept(args.rkv, a, os.path.join(wd, "kept3.npy"))
            same &= bool((k3 == kept4[l]).all())
        t.check(same, "%s stream mode on [3, 2, n, d] = three one-layer runs" % policy)

    # 4-D score dumps: per stream, against the reference's per-layer scores.
    dump = os.path.join(wd, "dump")
    cs.run_tool(args.rkv, tool_args("rkv", "sequence", kp, qp, sp, B, "f32", out) +
                ["--dump-scores", dump])
    for name, idx in (("joint", 0), ("importance", 1), ("redundancy", 2)):
        ref = np.stack([ref_rkv.joint(K[l].astype(np.float64),
                                      Q[l][:, -WINDOW:].astype(np.float64), WINDOW, KERNEL, LAM,
                                      T)[idx] for l in range(L)])
        got = np.load(os.path.join(dump, name + ".npy"))
        err = np.abs(got - ref).max() / np.abs(ref).max() if got.shape == ref.shape else np.inf
        t.check(got.shape == ref.shape and err < 1e-5,
                "dump %s [L, H, n - window] (max rel err %.2e)" % (name, err))

    # Errors: exit 2 (usage) for a bad granularity, 1 with a reason for mismatched layers.
    p = subprocess.run([args.rkv, "select"] + tool_args("rkv", "heads", kp, qp, sp, B, "f32",
                                                        out), capture_output=True, text=True)
    t.check(p.returncode == 2 and "unknown granularity 'heads'" in p.stderr,
            "bad --granularity is a usage error", "rc %d: %s" % (p.returncode, p.stderr))
    qp2 = cs.save(os.path.join(wd, "Q2.npy"), Q[:2])
    p = subprocess.run([args.rkv, "select"] + tool_args("rkv", "layer", kp, qp2, sp, B, "f32",
                                                        out), capture_output=True, text=True)
    t.check(p.returncode == 1 and "layers = keys' layers" in p.stderr,
            "queries with fewer layers than the keys are rejected",
            "rc %d: %s" % (p.returncode, p.stderr))

    print("near-tie exceptions allowed: %d" % t.exceptions)
    print("%d passed, %d failed" % (t.passed, t.failed))
    return 1 if t.failed else 0


if __name__ == "__main__":
    sys.exit(main())
