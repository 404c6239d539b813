"""Trains the librkv test model on the labelled-addition task (CPU, fixed seed, time budget).

The documented command (docs/MODEL.md) is

    /usr/bin/python3 tools/model/train.py --minutes 40 --procs 2 --seed 1 --max-steps N

It writes tools/model/weights/adder.safetensors (config, generator version, seed and command in
the safetensors metadata) and a JSON sidecar next to it with the greedy exact-match accuracy,
full cache, on held-out problems by digit count. The curriculum widens the digit range over the
first half of the budget (small problems first), then trains on the whole range with the
longest problems over-sampled; the learning rate follows a cosine over the time budget. The
model is never trained with eviction.

Speed: on this kind of machine (2 cores, Debian's torch 1.13 on OpenBLAS) one process with one
thread per BLAS call is fastest per core; OpenBLAS's own threads on top of torch's OpenMP ones
halve the throughput. So the script pins OpenBLAS to one thread (before torch loads) and uses the
cores by data parallelism: --procs worker processes (torch.distributed, gloo over a local file
store) each run the forward/backward of their share of every batch; one all-reduce sums the
gradients and every process takes the same optimizer step.

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
import tempfile
import time

# One BLAS thread per process (see above); must precede the torch import.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import task  # noqa: E402
from model import DEFAULT_CONFIG, TinyLM, config_from_metadata, config_to_metadata  # noqa: E402
from safetensors_io import load, save  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
EVAL_SEED = task.EVAL_SEED  # held-out problem sets (training draws from seed-derived sets)


def train_set_seed(seed):
    return 0x7A11_0000 + seed


def digit_range(frac, lo, hi, ramp):
    """Curriculum: the upper digit bound grows linearly from lo + 2 to hi over `ramp` of the
    budget."""
    if frac >= ramp:
        return lo, hi
    top = lo + 2 + int((hi - lo - 2) * frac / ramp)
    return lo, min(hi, max(lo, top))


def target_weights(prompt, target, graded_weight, lookup_weight, grade_talk=False):
    """Loss weight per token: 0 on the prompt, `graded_weight` on the line and answer tokens
    exact match depends on (with grade_talk, also version 2's talk digits and outro),
    `lookup_weight` on those of them copied from far back (operand and answer digits), 1 on the
    rest of the target."""
    if graded_weight == 1.0 and lookup_weight == 1.0:
        return [0] * len(prompt) + [1] * len(target)
    w = (1.0, graded_weight, lookup_weight)
    return [0] * len(prompt) + [w[g] for g in task.graded_spans(target, grade_talk)]


def batch_problems(seed, start_index, count, lo, hi, long_frac, version, rehearse=0.0, graded_weight=1.0,
                   lookup_weight=1.0, grade_talk=False):
    """The batch's problems as (token ids, loss weight per token) pairs; weight 0 is no target."""
    out = []
    for j in range(count):
        idx = start_index + j
        # over-sample the longest problems: every (1/long_frac)-th problem uses the top 3 counts
        use_long = long_frac > 0 and (idx % max(1, int(round(1 / long_frac))) == 0)
        plo = max(lo, hi - 2) if use_long else lo
        # rehearsal: every (1/rehearse)-th problem in version 1, whose lookups version 2 reuses
        v = 1 if rehearse > 0 and idx % max(2, int(round(1 / rehearse))) == 1 else version
        _, _, _, p, t = task.problem(seed, idx, plo, hi, v)
        out.append((task.encode(p + t), target_weights(p, t, graded_weight, lookup_weight, grade_talk and v == 2)))
    return out


def pad_groups(probs, buckets):
    """`buckets` groups of similar length (less padding): a list of (tokens [b, T] right-padded
    with PAD, loss mask)."""
    order = sorted(range(len(probs)), key=lambda j: len(probs[j][0]))
    groups = []
    nb = max(1, min(buckets, len(probs)))
    for g in range(nb):
        idx = order[g * len(probs) // nb:(g + 1) * len(probs) // nb]
        if not idx:
            continue
        T = max(len(probs[j][0]) for j in idx)
        x = torch.zeros(len(idx), T, dtype=torch.long)
        m = torch.zeros(len(idx), T, dtype=torch.float32)
        for r, j in enumerate(idx):
            ids, mask = probs[j]
            x[r, : len(ids)] = torch.tensor(ids)
            m[r, : len(mask)] = torch.tensor(mask, dtype=torch.float32)
        groups.append((x, m))
    return groups


def monitor_set(lo, hi, version, per_digit=4, seed=EVAL_SEED + 1):
    """A fixed held-out batch for progress lines (teacher-forced, cheap)."""
    probs = []
    for n in range(lo, hi + 1):
        for i in range(per_digit):
            _, _, _, p, t = task.problem(seed * 100 + n, i, n, n, version)
            probs.append((task.encode(p + t), [0] * len(p) + [1] * len(t)))
    return probs


@torch.no_grad()
def teacher_forced_exact(model, probs):
    """Share of problems whose every target token is the argmax given the true prefix: a lower
    bound of greedy exact match (such a problem decodes exactly) at the cost of one forward."""
    model.eval()
    ok = 0
    for x, m in pad_groups(probs, 4):
        pred = model(x[:, :-1]).argmax(-1)
        wrong = (pred != x[:, 1:]) & (m[:, 1:] > 0)
        ok += int((~wrong.any(dim=1)).sum())
    model.train()
    return ok / len(probs)


@torch.no_grad()
def teacher_forced_answer(model, probs):
    """Like teacher_forced_exact over the answer's tokens only (what exact match grades)."""
    model.eval()
    ok = 0
    start = task.encode(task.ANSWER)
    for x, m in pad_groups(probs, 4):
        pred = model(x[:, :-1]).argmax(-1)
        for r in range(x.shape[0]):
            ids = x[r].tolist()
            k = max(i for i in range(len(ids) - len(start)) if ids[i:i + len(start)] == start)
            span = slice(k + len(start) - 1, int(m[r].nonzero().max()))
            ok += bool((pred[r, span] == x[r, 1:][span]).all())
    model.train()
    return ok / len(probs)


@torch.no_grad()
def evaluate(model, lo, hi, per_digit, version, seed=EVAL_SEED):
    """Greedy exact match with the full cache, by digit count (equal-length prompts batch)."""
    model.eval()
    res = {}
    eos = task.STOI[task.EOS]
    for n in range(lo, hi + 1):
        probs = [task.problem(seed * 100 + n, i, n, n, version) for i in range(per_digit)]
        prompts = torch.tensor([task.encode(p[3]) for p in probs])
        max_new = max(len(p[4]) for p in probs) + 8  # version 2's length varies with carries
        outs = model.generate(prompts, max_new, eos)
        ok = sum(task.is_correct(a, b, task.decode(o)) for (_, a, b, _, _), o in zip(probs, outs))
        res[n] = ok / per_digit
    model.train()
    return res


def warn_slow_blas():
    """Debian's torch calls whatever libblas.so.3 the alternatives system picks; the reference
    BLAS (libblas3) trains ~9x slower than OpenBLAS (584 vs 5,438 target tokens/s measured on
    one core). Says so on stderr rather than silently taking hours."""
    torch.ones(8, 8) @ torch.ones(8, 8)  # make sure the BLAS is loaded
    try:
        with open("/proc/self/maps") as f:
            # the resolved libblas.so.3 (torch's sgemm); libopenblas.so.0 may be mapped as well
            libs = {line.split()[-1] for line in f if os.path.basename(line.split()[-1]).startswith("libblas.so")}
    except OSError:
        return
    if libs and not any("openblas" in lib for lib in libs):
        print("train.py: warning: torch is using a non-OpenBLAS BLAS (" + ", ".join(sorted(libs)) +
              "); training will be ~9x slower. Install libopenblas0-pthread.", file=sys.stderr,
              flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=0,
                    help="train exactly this many steps, schedules by step (0 = by wall clock)")
    ap.add_argument("--stop-step", type=int, default=0,
                    help="stop after this many steps, schedules still following --max-steps (a "
                         "reproducible cut of a longer run)")
    ap.add_argument("--procs", type=int, default=2,
                    help="data-parallel worker processes (one per core)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads per process")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--task-version", type=int, default=1, choices=task.VERSIONS,
                    help="generator version of the task (docs/MODEL.md); 2 writes adder2.* by default")
    ap.add_argument("--init", default=None,
                    help="start from these weights (safetensors of the same config) instead of a "
                         "seeded random initialisation")
    ap.add_argument("--rehearse", type=float, default=0.0,
                    help="share of each batch drawn from generator version 1 (with --init from "
                         "the version-1 weights: keeps the lookups version 2 reuses)")
    ap.add_argument("--graded-weight", type=float, default=1.0,
                    help="loss weight of the column-line and answer tokens (exact match depends on "
                         "them); the other target tokens weigh 1")
    ap.add_argument("--lookup-weight", type=float, default=None,
                    help="loss weight of the operand and answer digits, which are copied from far "
                         "back (default: --graded-weight)")
    ap.add_argument("--grade-talk", action="store_true",
                    help="version 2: the talk's digits and the outro weigh --graded-weight too "
                         "(task.graded_spans)")
    ap.add_argument("--min-digits", type=int, default=6)
    ap.add_argument("--max-digits", type=int, default=20)
    ap.add_argument("--ramp", type=float, default=0.2, help="fraction of the budget for the curriculum")
    ap.add_argument("--long-frac", type=float, default=0.25, help="share of top-3-digit problems after the ramp")
    ap.add_argument("--batch-tokens", type=int, default=6144, help="tokens per optimizer step (all processes)")
    ap.add_argument("--buckets", type=int, default=2,
                    help="split each process's share of a batch into this many length groups")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--d-model", type=int, default=DEFAULT_CONFIG["d_model"])
    ap.add_argument("--layers", type=int, default=DEFAULT_CONFIG["n_layers"])
    ap.add_argument("--d-ff", type=int, default=DEFAULT_CONFIG["d_ff"])
    ap.add_argument("--eval-per-digit", type=int, default=20)
    ap.add_argument("--average", type=float, nargs="+", default=[], metavar="DECAY",
                    help="also keep an exponential moving average of the weights per DECAY (e.g. "
                         "0.99: about the last 100 steps); at the end the last weights and each "
                         "average are decoded greedily on a validation set apart from the held-out "
                         "one, and the best is written (ties keep the earlier candidate, the last "
                         "weights first)")
    ap.add_argument("--select-per-digit", type=int, default=10,
                    help="validation problems per digit count for --average's choice")
    ap.add_argument("--out", default=None,
                    help="weights file (default tools/model/weights/adder.safetensors, "
                         "adder2.safetensors for --task-version 2)")
    ap.add_argument("--log-every", type=float, default=30.0, help="seconds between progress lines")
    ap.add_argument("--monitor-every", type=float, default=120.0,
                    help="seconds between teacher-forced exact-match checks on held-out problems "
                         "(0 = never)")
    args = ap.parse_args(argv)
    if args.procs < 1 or args.threads < 1:
        ap.error("--procs and --threads must be at least 1")
    if any(not 0.0 < d < 1.0 for d in args.average):
        ap.error("--average decays must lie strictly between 0 and 1")
    if args.lookup_weight is None:
        args.lookup_weight = args.graded_weight
    if args.out is None:
        name = "adder.safetensors" if args.task_version == 1 else f"adder{args.task_version}.safetensors"
        args.out = os.path.join(HERE, "weights", name)
    return args


def allreduce_grads(params, loss, procs):
    """Sums every gradient and the loss over the processes in one all-reduce (each process
    holds its share's sum / the batch's target count, so the sum is the batch mean). Returns
    the summed loss. Nothing to do with one process."""
    if procs == 1:
        return loss
    flat = torch.cat([p.grad.reshape(-1) for p in params] + [torch.tensor([loss])])
    dist.all_reduce(flat)
    off = 0
    for p in params:
        p.grad.copy_(flat[off:off + p.numel()].view_as(p))
        off += p.numel()
    return float(flat[-1])


def control(procs, frac, stop):
    """Rank 0's schedule position and stop decision, shared so every process agrees."""
    t = torch.tensor([frac, 1.0 if stop else 0.0], dtype=torch.float64)
    if procs > 1:
        dist.broadcast(t, 0)
    return float(t[0]), bool(t[1] > 0.5)


@torch.no_grad()
def update_averages(averages, params):
    """One step of each exponential moving average of the weights (rank 0 keeps them; every
    process holds the same weights)."""
    for d, avg in averages.values():
        for a, p in zip(avg, params):
            a.mul_(d).add_(p.detach(), alpha=1.0 - d)


@torch.no_grad()
def choose_weights(model, params, averages, args, version):
    """Loads into `model` whichever of the last weights and the averages decodes best (greedy
    exact match, full cache) on a validation set drawn apart from the held-out evaluation's
    problems, so the reported held-out accuracy stays unbiased. Returns what it saw."""
    cands = {"last": [p.detach().clone() for p in params], **{k: v for k, (_, v) in averages.items()}}
    t = time.time()
    seen = {}
    for name, tensors in cands.items():
        for p, v in zip(params, tensors):
            p.copy_(v)
        res = evaluate(model, args.min_digits, args.max_digits, args.select_per_digit, version,
                       seed=EVAL_SEED + 1)
        # rounded: equal counts summed in another order must still tie
        seen[name] = round(sum(res.values()) / len(res), 9)
    chosen = max(seen, key=lambda k: seen[k])  # the first of equals: dicts keep insertion order
    for p, v in zip(params, cands[chosen]):
        p.copy_(v)
    print("validation greedy exact match: " + " ".join(f"{k} {v:.3f}" for k, v in seen.items()) +
          f"; writing {chosen} ({time.time() - t:.0f}s)", flush=True)
    return {"decays": list(args.average), "validation_seed": EVAL_SEED + 1,
            "validation_per_digit": args.select_per_digit, "validation": seen, "chosen": chosen}


def weights_metadata(cfg, version, seed, command, step):
    """What a weights file records: the configuration, the task version and vocabulary the C
    loader needs, and how it was made."""
    meta = config_to_metadata(cfg)
    meta.update(generator_version=str(version), seed=str(seed), train_command=command, steps=str(step),
                vocab_codes=",".join(str(ord(c)) for c in task.VOCAB))
    return meta


def partial_path(out):
    return os.path.splitext(out)[0] + ".partial.safetensors"


def worker(rank, args, argv, store):
    procs = args.procs
    if procs > 1:
        dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=procs)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    cfg = dict(DEFAULT_CONFIG)
    cfg.update(d_model=args.d_model, n_layers=args.layers, d_ff=args.d_ff, vocab_size=len(task.VOCAB))
    model = TinyLM(cfg)  # same seed on every process: identical initial weights
    if args.init:
        arrays, meta = load(args.init)
        if config_from_metadata(meta) != cfg:
            raise SystemExit(f"train.py: --init {args.init}: config {config_from_metadata(meta)} "
                             f"differs from {cfg}")
        model.load_arrays(arrays)
    params = list(model.parameters())
    nparams = sum(p.numel() for p in params)
    decay = [p for p in params if p.dim() == 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    command = "/usr/bin/python3 tools/model/train.py " + " ".join(shlex.quote(a) for a in argv)
    log = rank == 0
    if log:
        warn_slow_blas()
        print(f"params {nparams} ({nparams * 4 / 1e6:.2f} MB f32), {procs} process(es) x "
              f"{args.threads} thread(s), config {cfg}", flush=True)
    version = args.task_version
    monitor = monitor_set(args.min_digits, args.max_digits, version) if log and args.monitor_every > 0 else None

    budget = args.minutes * 60.0
    t0 = time.time()
    last_log = last_mon = t0
    step, index, tokens = 0, 0, 0
    seed = train_set_seed(args.seed)
    ema = None
    # name -> (decay, weights)
    averages = {f"ema{d:g}": (d, [p.detach().clone() for p in params]) for d in args.average} if log else {}
    losses = []
    monitor_log = []
    while True:
        elapsed = time.time() - t0
        # Schedules (curriculum, learning rate) follow the step count when one is given, so a
        # run is reproducible on any machine; else the wall clock.
        frac = step / args.max_steps if args.max_steps else elapsed / budget
        stop = elapsed >= budget or (args.max_steps and step >= args.max_steps) or \
            (args.stop_step and step >= args.stop_step)
        frac, stop = control(procs, frac, stop)
        if stop:
            break
        lo, hi = digit_range(frac, args.min_digits, args.max_digits, args.ramp)
        seq_len = len(task.prompt_text(hi, 1, 1, version)) + len(task.target_text(hi, 1, 1, version))
        count = max(2 * procs, args.batch_tokens // seq_len)
        probs = batch_problems(seed, index, count, lo, hi, args.long_frac if frac >= args.ramp else 0.0,
                               version, args.rehearse, args.graded_weight, args.lookup_weight, args.grade_talk)
        index += count
        n_tgt = sum(sum(1 for w in mk[1:] if w > 0) for _, mk in probs)
        w_tgt = sum(sum(mk[1:]) for _, mk in probs)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for g in opt.param_groups:
            g["lr"] = lr
        # weighted mean over all target tokens of the batch: each process sums its share's
        # weighted loss / the batch's total weight
        opt.zero_grad(set_to_none=False)
        lv = 0.0
        for x, m in pad_groups(probs[rank::procs], args.buckets):
            logits = model(x[:, :-1])
            tgt = x[:, 1:]
            w = m[:, 1:]
            mk = w > 0
            loss = (F.cross_entropy(logits[mk], tgt[mk], reduction="none") * w[mk]).sum() / w_tgt
            loss.backward()
            lv += float(loss)
        lv = allreduce_grads(params, lv, procs)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        update_averages(averages, params)
        step += 1
        tokens += n_tgt
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        losses.append(lv)
        now = time.time()
        if monitor is not None and now - last_mon >= args.monitor_every:
            tf = teacher_forced_exact(model, monitor)
            ta = teacher_forced_answer(model, monitor)
            monitor_log.append({"step": step, "seconds": round(now - t0, 1), "teacher_forced_exact": tf,
                                "teacher_forced_answer": ta})
            last_mon = now = time.time()
            print(f"step {step} t {now - t0:.0f}s held-out teacher-forced exact match {tf:.3f}, "
                  f"answer only {ta:.3f}", flush=True)
            # a checkpoint per progress check, so a long run can be inspected (diagnose.py)
            # or abandoned early; replaced by the final file at the end
            save(partial_path(args.out), model.state_arrays(), weights_metadata(cfg, version, args.seed,
                                                                                 command, step))
        if log and now - last_log >= args.log_every:
            last_log = now
            print(f"step {step} t {now - t0:.0f}s digits {lo}-{hi} batch {count} loss {lv:.4f} "
                  f"ema {ema:.4f} lr {lr:.2e} tok/s {tokens / (now - t0):.0f}", flush=True)
    train_s = time.time() - t0
    if procs > 1:
        dist.destroy_process_group()
    if not log:
        return 0
    print(f"trained {step} steps, {tokens} target tokens in {train_s:.0f}s "
          f"({tokens / max(train_s, 1e-9):.0f} tok/s); first loss {losses[0]:.4f} last ema {ema:.4f}",
          flush=True)

    selection = choose_weights(model, params, averages, args, version) if averages else None
    t1 = time.time()
    acc = evaluate(model, args.min_digits, args.max_digits, args.eval_per_digit, version)
    overall = sum(acc.values()) / len(acc)
    print("held-out greedy exact match (full cache): " +
          " ".join(f"{n}:{a:.2f}" for n, a in acc.items()) + f"  overall {overall:.3f} "
          f"({time.time() - t1:.0f}s)", flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save(args.out, model.state_arrays(), weights_metadata(cfg, version, args.seed, command, step))
    if os.path.exists(partial_path(args.out)):
        os.remove(partial_path(args.out))
    side = {
        "weights": os.path.basename(args.out),
        "command": command,
        "generator_version": version,
        "init": args.init,
        "rehearse": args.rehearse,
        "graded_weight": args.graded_weight,
        "lookup_weight": args.lookup_weight,
        "grade_talk": args.grade_talk,
        "digits": [args.min_digits, args.max_digits],
        "seed": args.seed,
        "config": cfg,
        "params": nparams,
        "steps": step,
        "train_seconds": round(train_s, 1),
        "target_tokens": tokens,
        "tokens_per_second": round(tokens / max(train_s, 1e-9), 1),
        "procs": procs,
        "threads": args.threads,
        "first_loss": round(losses[0], 4),
        "final_loss_ema": float(f"{ema:.4g}"),
        "monitor": monitor_log,
        "average": selection,
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


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.procs == 1:
        return worker(0, args, argv, None)
    with tempfile.TemporaryDirectory(prefix="rkv_train_") as d:
        # processes rendezvous through a fresh file store: no port to pick or collide on
        torch.multiprocessing.spawn(worker, args=(args, argv, os.path.join(d, "store")), nprocs=args.procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
