"""Cross-checks the committed model reference with numpy only (no torch): the numpy twin of
the model (tools/model/model.py numpy_forward) reproduces the PyTorch logits stored in
smoke_ref.safetensors within 1e-4, and the Python task generator reproduces the stored task
text. Together with model_test_forward (C vs the same file) this ties C, numpy and PyTorch
to one reference. Ends with the "N passed, N failed" line; exit 77 when numpy is missing."""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "tools", "model"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "common"))
from checks import Checks, skip  # noqa: E402

try:
    import numpy as np
except ImportError:
    skip("numpy is not importable by this interpreter")

import task  # noqa: E402
from model import config_from_metadata, numpy_forward  # noqa: E402
from safetensors_io import load  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--ref", required=True)
    args = ap.parse_args()
    checks = Checks()
    expect = checks.expect

    arrays, meta = load(args.weights)
    cfg = config_from_metadata(meta)
    ref, rmeta = load(args.ref)
    i = 0
    while f"tokens.{i}" in ref:
        toks = ref[f"tokens.{i}"].tolist()
        got = numpy_forward(arrays, cfg, toks)
        d = float(np.max(np.abs(got - ref[f"logits.{i}"])))
        print(f"seq {i}: {len(toks)} tokens, numpy vs torch max |logit diff| = {d:.3g}")
        expect(d <= 1e-4, f"seq {i} logits differ by {d}")
        i += 1
    expect(i > 0, "reference holds no sequences")
    seed, count = int(rmeta["task_seed"]), int(rmeta["task_count"])
    texts = []
    for j in range(count):
        _, a, b, p, t = task.problem(seed, j, task.MIN_DIGITS, task.MAX_DIGITS)
        texts.append(p + t)
        expect(task.is_correct(a, b, t), f"checker rejects the target of problem {j}")
    expect("|".join(texts).encode("ascii") == ref["task_text"].tobytes(),
           "task generator output differs from the reference")
    expect(int(rmeta["generator_version"]) == task.GENERATOR_VERSION, "generator version changed")
    texts = []
    for j in range(count):
        _, a, b, p, t = task.problem(seed, j, task.MIN_DIGITS, task.MAX_DIGITS, 2)
        texts.append(p + t)
        expect(task.is_correct(a, b, t), f"checker rejects the version-2 target of problem {j}")
        expect("." not in t[:-1], f"version-2 problem {j} has an EOS inside its trace")
    expect("|".join(texts).encode("ascii") == ref["task_text_v2"].tobytes(),
           "version-2 task generator output differs from the reference")

    # Answer parsing: labels required, leading zeros ignored, last answer wins, EOS required.
    _, a, b, p, t = task.problem(5, 3, 8, 8)
    expect(task.parse_answer(t) == a + b, "parse_answer on a target")
    body = t[t.rfind(task.ANSWER) + len(task.ANSWER):-1]
    wrong = body[:-1] + str((int(body[-1]) + 1) % 10)
    expect(not task.is_correct(a, b, task.ANSWER + wrong + "."), "a wrong digit passes")
    expect(task.parse_answer(task.ANSWER + body) is None, "an answer without EOS parses")
    expect(task.parse_answer(task.ANSWER + "A1B." ) is None, "odd-length answer parses")
    expect(task.parse_answer(task.ANSWER + "11.") is None, "unlabelled answer parses")
    expect(task.parse_answer("x" + task.ANSWER + "B0A7." + task.ANSWER + "A3.") == 3,
           "the last answer is not the one parsed")
    expect(task.parse_answer(task.ANSWER + "C0B0A7.") == 7, "leading zeros")

    # safetensors round trip and a truncated file.
    import tempfile
    from safetensors_io import save
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.safetensors")
        arrs = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.array([7], np.int32)}
        save(path, arrs, {"k": "v"})
        with open(path, "rb") as f:
            raw = f.read()
        hlen = int.from_bytes(raw[:8], "little")
        expect(hlen % 8 == 0, "header not padded to 8 bytes")
        back, m = load(path)
        expect(m == {"k": "v"} and all(np.array_equal(back[k], arrs[k]) for k in arrs),
               "round trip changed the tensors")
        with open(path, "wb") as f:
            f.write(raw[:-4])
        try:
            load(path)
            expect(False, "a truncated file loads")
        except ValueError:
            expect(True, "")
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
