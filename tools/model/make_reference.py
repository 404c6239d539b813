"""Writes the reference the C forward-pass test compares against (PyTorch model, float64).

    /usr/bin/python3 tools/model/make_reference.py \
        --weights tests/unit/model/data/smoke.safetensors \
        --out tests/unit/model/data/smoke_ref.safetensors

Contents (safetensors): for each fixed problem i (seed REF_SEED, digit counts REF_DIGITS)
  tokens.i  I32 [T]      prompt + target, encoded
  prompt.i  I32 [1]      prompt length
  logits.i  F32 [T, V]   full causal forward logits (teacher forcing), computed in float64
  greedy.i  I32 [G]      greedy continuation of the prompt with the full explicit KV cache
  stream.i  I32 [G']     greedy continuation under StreamingLLM eviction (budget STREAM_BUDGET,
                         buffer STREAM_BUFFER, 4 sinks, librkv's trigger)
plus task_text U8 [...]: the prompt + target of TASK_COUNT problems of set TASK_SEED over
1-25 digits, joined by '|', which the C generator must reproduce byte for byte, and
task_text_v2 the same in generator version 2.
Regenerate whenever the smoke weights or the task generator change.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import task  # noqa: E402
from model import load_model, streaming_evictor  # noqa: E402
from safetensors_io import save  # noqa: E402

REF_SEED = 4242
REF_DIGITS = (6, 11, 20)
TASK_SEED = 777
TASK_COUNT = 40
STREAM_BUDGET = 32
STREAM_BUFFER = 16


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--f32", action="store_true",
                    help="compute in float32 instead of float64 (the default: the reference is "
                         "then the model's exact value, and a C f32 pass is judged on its own "
                         "rounding only)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, meta = load_model(args.weights)
    if not args.f32:
        model = model.double()
    eos = task.STOI[task.EOS]
    out = {}
    with torch.no_grad():
        for i, n in enumerate(REF_DIGITS):
            _, _, _, p, t = task.problem(REF_SEED, i, n, n)
            ids = task.encode(p + t)
            logits = model(torch.tensor([ids]))[0].numpy()
            gen = model.generate(torch.tensor([task.encode(p)]), len(t) + 8, eos)[0]
            out[f"tokens.{i}"] = np.array(ids, dtype=np.int32)
            out[f"prompt.{i}"] = np.array([len(p)], dtype=np.int32)
            out[f"logits.{i}"] = logits.astype(np.float32)  # f64 -> f32: error <= 1e-6
            out[f"greedy.{i}"] = np.array(gen, dtype=np.int32)
            sgen = model.generate(torch.tensor([task.encode(p)]), len(t) + 8, eos,
                                  streaming_evictor(STREAM_BUDGET, STREAM_BUFFER))[0]
            out[f"stream.{i}"] = np.array(sgen, dtype=np.int32)
            print(f"problem {i}: {n} digits, {len(ids)} tokens, greedy {len(gen)} tokens: "
                  f"{task.decode(gen)[:60]!r}...")
    texts = []
    for i in range(TASK_COUNT):
        _, _, _, p, t = task.problem(TASK_SEED, i, task.MIN_DIGITS, task.MAX_DIGITS)
        texts.append(p + t)
    out["task_text"] = np.frombuffer("|".join(texts).encode("ascii"), dtype=np.uint8)
    texts = []
    for i in range(TASK_COUNT):  # generator version 2, which the C generator must match too
        _, _, _, p, t = task.problem(TASK_SEED, i, task.MIN_DIGITS, task.MAX_DIGITS, 2)
        texts.append(p + t)
    out["task_text_v2"] = np.frombuffer("|".join(texts).encode("ascii"), dtype=np.uint8)
    meta_out = {"weights": os.path.basename(args.weights), "ref_seed": str(REF_SEED),
                "ref_digits": ",".join(map(str, REF_DIGITS)), "task_seed": str(TASK_SEED),
                "task_count": str(TASK_COUNT), "stream_budget": str(STREAM_BUDGET),
                "stream_buffer": str(STREAM_BUFFER), "generator_version": str(task.GENERATOR_VERSION),
                "torch": torch.__version__, "precision": "f32" if args.f32 else "f64"}
    save(args.out, out, meta_out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
