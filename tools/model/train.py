"""Trains the librkv test model on the labelled-addition task (CPU, fixed seed, time budget).

The documented command (docs/MODEL.md) is

    /usr/bin/python3 tools/model/train.py --minutes 40 --threads 2 --seed 1

It writes tools/model/weights/adder.safetensors (config, generator version, seed and command in
the safetensors metadata) and a JSON sidecar next to it with the greedy exact-match accuracy,
full cache, on held-out problems by digit count. The curriculum widens the digit range over the
first half of the budget (small problems first), then trains on the whole range with the
longest problems over-sampled; the learning rate follows a cosine over the time budget. The
model is never trained with eviction.

Reproducibility: the data stream is a pure function of --seed (tools/model/task.py) and the
initialisation is seeded. With --minutes alone the curriculum and learning rate follow the wall
clock, so the result depends on the machine's speed; with --max-steps N they follow the step
count and a run is identical whenever the thread count (summation order) is the same (the
--minutes budget then only guards against running over).
"""

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import task  # noqa: E402
from model import DEFAULT_CONFIG, TinyLM, config_to_metadata  # noqa: E402
from safetensors_io import save  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EVAL_SEED = 20261122  # held-out problem set (training draws from seed-derived sets)


def train_set_seed(seed):
    return 0x7A11_0000 + seed


def digit_range(frac, lo, hi, ramp):
    """Curriculum: the upper digit bound grows linearly from lo + 2 to hi over `ramp` of the
    budget."""
    if frac >= ramp:
        return lo, hi
    top = lo + 2 + int((hi - lo - 2) * frac / ramp)
    return lo, min(hi, max(lo, top))


def make_batch(seed, start_index, count, lo, hi, long_frac, buckets=1):
    """The batch's problems as `buckets` groups of similar length (less padding): a list of
    (tokens [b, T] right-padded with PAD, loss mask over target tokens)."""
    seqs, masks = [], []
    for j in range(count):
        idx = start_index + j
        # over-sample the longest problems: every (1/long_frac)-th problem uses the top 3 counts
        use_long = long_frac > 0 and (idx % max(1, int(round(1 / long_frac))) == 0)
        plo = max(lo, hi - 2) if use_long else lo
        _, _, _, p, t = task.problem(seed, idx, plo, hi)
        ids = task.encode(p + t)
        seqs.append(ids)
        masks.append([0] * len(p) + [1] * len(t))
    order = sorted(range(count), key=lambda j: len(seqs[j]))
    groups = []
    nb = max(1, min(buckets, count))
    for g in range(nb):
        idx = order[g * count // nb:(g + 1) * count // nb]
        if not idx:
            continue
        T = max(len(seqs[j]) for j in idx)
        x = torch.zeros(len(idx), T, dtype=torch.long)
        m = torch.zeros(len(idx), T, dtype=torch.bool)
        for r, j in enumerate(idx):
            x[r, : len(seqs[j])] = torch.tensor(seqs[j])
            m[r, : len(masks[j])] = torch.tensor(masks[j], dtype=torch.bool)
        groups.append((x, m))
    return groups


@torch.no_grad()
def evaluate(model, lo, hi, per_digit, seed=EVAL_SEED):
    """Greedy exact match with the full cache, by digit count (equal-length prompts batch)."""
    model.eval()
    res = {}
    eos = task.STOI[task.EOS]
    for n in range(lo, hi + 1):
        probs = [task.problem(seed * 100 + n, i, n, n) for i in range(per_digit)]
        prompts = torch.tensor([task.encode(p[3]) for p in probs])
        max_new = len(probs[0][4]) + 8
        outs = model.generate(prompts, max_new, eos)
        ok = sum(task.is_correct(a, b, task.decode(o)) for (_, a, b, _, _), o in zip(probs, outs))
        res[n] = ok / per_digit
    model.train()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=0,
                    help="train exactly this many steps, schedules by step (0 = by wall clock)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-digits", type=int, default=6)
    ap.add_argument("--max-digits", type=int, default=20)
    ap.add_argument("--ramp", type=float, default=0.5, help="fraction of the budget for the curriculum")
    ap.add_argument("--long-frac", type=float, default=0.25, help="share of top-3-digit problems after the ramp")
    ap.add_argument("--batch-tokens", type=int, default=6144)
    ap.add_argument("--buckets", type=int, default=2,
                    help="split each batch into this many length groups (less padding)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--d-model", type=int, default=DEFAULT_CONFIG["d_model"])
    ap.add_argument("--layers", type=int, default=DEFAULT_CONFIG["n_layers"])
    ap.add_argument("--d-ff", type=int, default=DEFAULT_CONFIG["d_ff"])
    ap.add_argument("--eval-per-digit", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(HERE, "weights", "adder.safetensors"))
    ap.add_argument("--log-every", type=float, default=30.0, help="seconds between progress lines")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(d_model=args.d_model, n_layers=args.layers, d_ff=args.d_ff, vocab_size=len(task.VOCAB))
    model = TinyLM(cfg)
    nparams = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    command = "/usr/bin/python3 tools/model/train.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"params {nparams} ({nparams * 4 / 1e6:.2f} MB f32), config {cfg}", flush=True)

    budget = args.minutes * 60.0
    t0 = time.time()
    last_log = t0
    step, index, tokens = 0, 0, 0
    seed = train_set_seed(args.seed)
    ema = None
    losses = []
    while True:
        elapsed = time.time() - t0
        if elapsed >= budget or (args.max_steps and step >= args.max_steps):
            break
        # Schedules (curriculum, learning rate) follow the step count when one is given, so a
        # run is reproducible on any machine; else the wall clock.
        frac = step / args.max_steps if args.max_steps else elapsed / budget
        lo, hi = digit_range(frac, args.min_digits, args.max_digits, args.ramp)
        seq_len = len(task.prompt_text(hi, 1, 1)) + len(task.target_text(hi, 1, 1))
        count = max(4, args.batch_tokens // seq_len)
        groups = make_batch(seed, index, count, lo, hi, args.long_frac if frac >= args.ramp else 0.0,
                            args.buckets)
        index += count
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        # mean over all target tokens of the batch, accumulated group by group
        opt.zero_grad(set_to_none=True)
        n_tgt = sum(int(m[:, 1:].sum()) for _, m in groups)
        lv = 0.0
        for x, m in groups:
            logits = model(x[:, :-1])
            tgt = x[:, 1:]
            mk = m[:, 1:]
            loss = F.cross_entropy(logits[mk], tgt[mk], reduction="sum") / n_tgt
            loss.backward()
            lv += float(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += n_tgt
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        losses.append(lv)
        now = time.time()
        if now - last_log >= args.log_every:
            last_log = now
            print(f"step {step} t {now - t0:.0f}s digits {lo}-{hi} batch {count} loss {lv:.4f} "
                  f"ema {ema:.4f} lr {lr:.2e} tok/s {tokens / (now - t0):.0f}", flush=True)
    train_s = time.time() - t0
    print(f"trained {step} steps, {tokens} target tokens in {train_s:.0f}s "
          f"({tokens / max(train_s, 1e-9):.0f} tok/s); first loss {losses[0]:.4f} last ema {ema:.4f}",
          flush=True)

    t1 = time.time()
    acc = evaluate(model, args.min_digits, args.max_digits, args.eval_per_digit)
    overall = sum(acc.values()) / len(acc)
    print("held-out greedy exact match (full cache): " +
          " ".join(f"{n}:{a:.2f}" for n, a in acc.items()) + f"  overall {overall:.3f} "
          f"({time.time() - t1:.0f}s)", flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    meta = config_to_metadata(cfg)
    meta.update(generator_version=str(task.GENERATOR_VERSION), seed=str(args.seed),
                train_command=command, steps=str(step), vocab_codes=",".join(str(ord(c)) for c in task.VOCAB))
    save(args.out, model.state_arrays(), meta)
    side = {
        "weights": os.path.basename(args.out),
        "command": command,
        "generator_version": task.GENERATOR_VERSION,
        "seed": args.seed,
        "config": cfg,
        "params": nparams,
        "steps": step,
        "train_seconds": round(train_s, 1),
        "target_tokens": tokens,
        "tokens_per_second": round(tokens / max(train_s, 1e-9), 1),
        "threads": args.threads,
        "first_loss": round(losses[0], 4),
        "final_loss_ema": round(ema, 4),
        "eval_seed": EVAL_SEED,
        "eval_per_digit": args.eval_per_digit,
        "accuracy_by_digits": {str(n): a for n, a in acc.items()},
        "accuracy_overall": overall,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(side, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
