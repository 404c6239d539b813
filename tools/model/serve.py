"""Serves the project's trained test model from PyTorch, with librkv holding its KV cache.

The engine split a Python serving stack would use: PyTorch runs the model's dense math
(embeddings, norms, projections, RoPE, the MLP, the LM head and greedy sampling); librkv,
through its Python binding, owns everything about the KV cache: the scheduler (continuous
batching, admission, which sequences compress), the block manager and KV pool (paged K/V),
and the executor (K/V writes, paged attention, the query window, eviction). The model never
holds a K/V tensor.

It reproduces `rkv eval` (tools/rkv/cmd_eval.c, the C client of the same library) token for
token: the same problems (task.py mirrors the C generator), the same scheduler settings, and
the same layer math in the same float32 order where it matters. `--generations FILE` writes
the JSON lines `rkv eval --generations` writes, so the two can be compared line by line
(tools/python/tests/test_model_client.py does that in CI).

    PYTHONPATH=tools/python RKV_LIBRARY=build/release/lib/librkv.so.0 \\
        /usr/bin/python3 tools/model/serve.py --policies full,rkv --budget 192 --problems 100

`--backend` puts the KV pool on a device: `emulated` (the emulated device: CPU kernels
behind device memory, Q/K/V and attention through librkv.DeviceArray; the same tokens as the
CPU pool) or `cuda` (the model on the GPU too, Q/K/V handed over as torch CUDA tensors on the
backend's stream; the head dimension zero-padded to the kernels' nearest size, queries scaled
so that attention and the eviction's scores keep the model's scale, as `rkv eval --backend
cuda` does).

Needs numpy and torch (Debian: python3-numpy, python3-torch) and the librkv binding.
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import librkv
except ImportError:  # from the source tree: the binding next door
    sys.path.insert(0, str(HERE.parent / "python"))
    import librkv

import numpy as np
import torch

import task
from model import load_model, rope_tables

# rkv eval's fixed settings (cmd_eval.c: eval_ctx_init, eval_run_sched)
SEED, MIN_DIGITS, MAX_DIGITS = 777, 6, 20
BATCH, BLOCK_SIZE, BUFFER, WINDOW = 32, 16, 16, 8
FULL_BUDGET = 1 << 20


def rmsnorm(x, w, eps):
    """The C runner's RMSNorm: x * (1 / sqrt(mean(x^2) + eps)) * w, in that order."""
    inv = 1.0 / torch.sqrt((x * x).sum(-1, keepdim=True) / x.shape[-1] + eps)
    return x * inv * w


def rope(x, cos, sin):
    """Half-split rotation of x [rows, heads, hd] by per-row cos/sin [rows, 1, hd/2]."""
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1).contiguous()


class TorchModel:
    """The dense half of the model: everything but attention, on [rows, ...] token rows, on
    torch device `device`."""

    def __init__(self, lm, device="cpu"):
        self.lm = lm
        self.device = torch.device(device)
        c = lm.cfg
        self.cfg = c
        self.nh, self.nkv, self.hd = c["n_heads"], c["n_kv_heads"], c["head_dim"]
        self.eps = c["norm_eps"]
        # weights transposed once, [in][out], as the C runner multiplies them
        self.layers = []
        for blk in lm.layers:
            self.layers.append({
                "attn_norm": blk.attn_norm.weight.detach(),
                "mlp_norm": blk.mlp_norm.weight.detach(),
                **{w: getattr(blk, w).weight.detach().t().contiguous()
                   for w in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")},
            })
            self.layers[-1] = {k: t.to(self.device) for k, t in self.layers[-1].items()}
        dev = self.device
        self.tok_emb = lm.tok_emb.weight.detach().to(dev)
        self.prev_emb = lm.prev_emb.weight.detach().to(dev) if lm.prev_emb is not None else None
        self.final_norm = lm.final_norm.weight.detach().to(dev)
        self.lm_head = lm.lm_head.weight.detach().t().contiguous().to(dev)

    def embed(self, tokens, prev):
        x = self.tok_emb[tokens]
        return x + self.prev_emb[prev] if self.prev_emb is not None else x.clone()

    def qkv(self, l, x, cos, sin):
        """Post-RoPE q [rows, nh, hd], k and v [rows, nkv, hd] of layer l, C-contiguous."""
        L = self.layers[l]
        rows = x.shape[0]
        h = rmsnorm(x, L["attn_norm"], self.eps)
        q = rope((h @ L["wq"]).view(rows, self.nh, self.hd), cos, sin)
        k = rope((h @ L["wk"]).view(rows, self.nkv, self.hd), cos, sin)
        v = (h @ L["wv"]).view(rows, self.nkv, self.hd).contiguous()
        return q, k, v

    def after_attention(self, l, x, att):
        """Output projection and residual, then the SwiGLU MLP and residual."""
        L = self.layers[l]
        x = x + att.reshape(x.shape[0], -1) @ L["wo"]
        h = rmsnorm(x, L["mlp_norm"], self.eps)
        a = h @ L["w1"]
        return x + (a / (1.0 + torch.exp(-a)) * (h @ L["w3"])) @ L["w2"]

    def logits(self, x):
        return rmsnorm(x, self.final_norm, self.eps) @ self.lm_head


def cuda_head_dim(hd):
    """The CUDA kernels' head size (64, 128, 256) the model's hd is zero-padded to, and the
    factor on the queries: the executor's default scale is then 1/sqrt(P), for attention and
    for the eviction's scores alike, and the factor sqrt(P / hd) brings it back to the model's
    1/sqrt(hd), exactly in float32 when P / hd is a power of 4 (the factor a power of 2)."""
    for p in (64, 128, 256):
        if p >= hd and p % hd == 0 and p // hd in (1, 4, 16, 64):
            return p, float(np.sqrt(p // hd))
    raise ValueError("head_dim %d has no exact padding to the CUDA kernels' 64/128/256" % hd)


class KVBackend:
    """Where the KV pool lives and how a layer's Q/K/V reach the executor: "cpu" (numpy views
    of torch CPU tensors, no copies), "emulated" (librkv.DeviceArray uploads, the attention
    downloaded), "cuda" (torch CUDA tensors on the backend's stream, zero-padded)."""

    def __init__(self, name, hd, pad=False):
        self.name, self.hd, self.pad_hd, self.q_factor = name, hd, hd, 1.0
        self.backend = self.stream = None
        if name == "emulated":
            self.backend = librkv.Backend.emulated()
            if pad:  # the CUDA path's padding on the emulated device (a test of it)
                self.pad_hd, self.q_factor = cuda_head_dim(hd)
        elif name == "cuda":
            self.backend = librkv.Backend("cuda")
            self.pad_hd, self.q_factor = cuda_head_dim(hd)
            self.stream = torch.cuda.ExternalStream(self.backend.stream)
        elif name != "cpu":
            raise ValueError("backend %r: cpu, emulated or cuda" % name)
        self.ins = None  # the emulated device's Q/K/V arrays of the step

    def pool(self, bm):
        if self.backend is None:
            return librkv.KVPool.for_blockmgr(bm)  # with its own CPU backend
        return librkv.KVPool(self.backend, bm.kv_layout, bm.config["num_blocks"])

    def new_step(self, rows, nh, nkv):
        """The attention output of one step's layers (and, on the emulated device, the arrays
        every layer uploads its Q/K/V into)."""
        if self.name == "cpu":
            return np.empty((rows, nh, self.hd), dtype=np.float32)
        if self.name == "emulated":
            self._close_ins()
            self.ins = [librkv.DeviceArray(self.backend, (rows, h, self.pad_hd))
                        for h in (nh, nkv, nkv)]
            return librkv.DeviceArray(self.backend, (rows, nh, self.pad_hd))
        return torch.empty(rows, nh, self.pad_hd, device="cuda")

    def _pad(self, t, factor=1.0):
        t = t * factor if factor != 1.0 else t
        if self.pad_hd == self.hd:
            return t.contiguous()
        z = t.new_zeros(t.shape[:-1] + (self.pad_hd,))
        z[..., :self.hd] = t
        return z

    def attention(self, x, l, q, k, v, out):
        """Executor layer l over q, k, v (torch, the model's head_dim) into out (new_step);
        the attention rows as torch [rows, nh, hd]."""
        if self.name == "cpu":
            x.layer(l, q.numpy(), k.numpy(), v.numpy(), out)
            return torch.from_numpy(out)
        if self.name == "emulated":
            for d, t in zip(self.ins, (self._pad(q, self.q_factor), self._pad(k), self._pad(v))):
                d.upload(t.numpy())
            x.layer(l, *self.ins, out)
            return torch.from_numpy(out.download())[..., :self.hd]
        x.layer(l, self._pad(q, self.q_factor), self._pad(k), self._pad(v), out)
        return out[..., :self.hd]

    def _close_ins(self):
        for d in self.ins or ():
            d.close()
        self.ins = None

    def close(self):
        self._close_ins()
        if self.backend is not None:
            self.backend.close()


class Request:
    def __init__(self, rid, n, a, b, prompt):
        self.id, self.digits, self.a, self.b = rid, n, a, b
        self.hist = task.encode(prompt)  # prompt, then every sampled token
        self.prompt_len = len(self.hist)
        self.gen = []


class Server:
    """One (policy, budget) run over `problems` problems, as `rkv eval` runs it."""

    def __init__(self, tm, policy, budget, problems, check=False, backend="cpu", pad=False):
        c = tm.cfg
        self.tm, self.policy = tm, policy
        self.kv = KVBackend(backend, c["head_dim"], pad)
        self.budget = 0 if policy == "full" else budget
        self.ep = librkv.EvictParams(policy, budget=FULL_BUDGET if policy == "full" else budget,
                                     window=WINDOW, buffer=BUFFER)
        self.max_prompt = 4 * MAX_DIGITS + 4
        self.max_new = 22 * MAX_DIGITS + 64
        max_len = self.max_prompt + self.max_new + 1
        streams = c["n_layers"] * c["n_kv_heads"]
        blocks_per_stream = (max_len + BLOCK_SIZE - 1) // BLOCK_SIZE + 1
        # sized so nothing is ever preempted, as rkv eval sizes it
        self.bm = librkv.BlockManager(BATCH * streams * blocks_per_stream, block_size=BLOCK_SIZE,
                                      num_layers=c["n_layers"], num_kv_heads=c["n_kv_heads"],
                                      head_dim=self.kv.pad_hd, dtype="f32", max_seqs=BATCH,
                                      watermark=0.0)
        self.pool = self.kv.pool(self.bm)
        self.sched = librkv.Scheduler(self.bm, max_batched_tokens=BATCH * self.max_prompt,
                                      max_seqs=BATCH, admission="reserve", preempt="recompute",
                                      evict=self.ep, check_every_step=check)
        self.x = librkv.Executor.for_scheduler(self.sched, self.pool, c["n_heads"],
                                               max_stream_tokens=max_len)
        self.check = check
        self.reqs = []
        for i in range(problems):
            n, a, b, prompt, _ = task.problem(SEED, i, MIN_DIGITS, MAX_DIGITS)
            r = Request(i, n, a, b, prompt)
            self.reqs.append(r)
            self.sched.add_request(i, r.prompt_len, self.max_new, 0, float(i))
        self.stats = dict(steps=0, generated_tokens=0, compressions=0, tokens_evicted=0,
                          blocks_freed=0, correct=0)
        self.finished = []  # (request, correct) in finishing order

    def close(self):
        for o in (self.x, self.sched, self.pool, self.bm, self.kv):
            o.close()

    def rows_of(self, plan):
        """Token ids, previous-token ids and positions of the plan's rows, in plan order."""
        toks, prev, pos = [], [], []
        for sid, p0, n in zip(plan.seqs["id"], plan.seqs["pos"], plan.seqs["n_tokens"]):
            h = self.reqs[int(sid)].hist
            p0, n = int(p0), int(n)
            if p0 + n > len(h):
                raise RuntimeError("plan feeds positions %d..%d of request %d, known %d" % (
                    p0, p0 + n, sid, len(h)))
            toks += h[p0:p0 + n]
            prev += ([h[p0 - 1]] if p0 else [0]) + h[p0:p0 + n - 1]
            pos += range(p0, p0 + n)
        dev = self.tm.device
        return torch.tensor(toks, device=dev), torch.tensor(prev, device=dev), pos

    def forward(self, plan):
        """Runs every layer of the open step; logits [n_seqs, V] of each sequence's last row."""
        tm = self.tm
        toks, prev, pos = self.rows_of(plan)
        cos, sin = rope_tables(pos, tm.hd, tm.cfg["rope_theta"])
        cos = torch.from_numpy(cos)[:, None, :].to(tm.device)
        sin = torch.from_numpy(sin)[:, None, :].to(tm.device)
        x = tm.embed(toks, prev)
        out = self.kv.new_step(len(pos), tm.nh, tm.nkv)  # the executor writes attention here
        for l in range(len(tm.layers)):
            q, k, v = tm.qkv(l, x, cos, sin)
            x = tm.after_attention(l, x, self.kv.attention(self.x, l, q, k, v, out))
        last = torch.from_numpy(plan.row_offsets()[1:] - 1).to(tm.device)
        return tm.logits(x[last])

    def sample(self, plan, logits):
        """Greedy tokens for the sequences that sample; returns eos [n_seqs] (ended now)."""
        eos = np.zeros(plan.n_seqs, dtype=bool)
        tokens = logits.argmax(-1).tolist()
        for i, (sid, samples) in enumerate(zip(plan.seqs["id"], plan.seqs["samples"])):
            if not samples:
                continue
            r = self.reqs[int(sid)]
            t = tokens[i]
            ch = task.VOCAB[t]
            r.gen.append(ch if ch != task.PAD else "?")
            r.hist.append(t)
            self.stats["generated_tokens"] += 1
            if ch == task.EOS or len(r.gen) >= self.max_new:
                eos[i] = True
                ok = task.is_correct(r.a, r.b, "".join(r.gen))
                self.stats["correct"] += ok
                self.finished.append((r, ok))
        return eos

    def step(self):
        plan = self.sched.step()
        if plan.n_seqs == 0:
            raise RuntimeError("the scheduler planned nothing with %d problems left" % (
                len(self.reqs) - len(self.finished)))
        self.stats["steps"] += 1
        self.x.begin(plan)
        # on CUDA the model runs on the backend's stream, in order with the library's kernels
        with torch.no_grad(), (torch.cuda.stream(self.kv.stream) if self.kv.stream
                               else contextlib.nullcontext()):
            eos = self.sample(plan, self.forward(plan))
        outs = self.x.finish(eos)
        self.sched.report(outs)
        for o in outs[outs["compressed"]]:
            self.stats["compressions"] += 1
            self.stats["tokens_evicted"] += int(o["tokens_evicted"])
            self.stats["blocks_freed"] += int(o["blocks_freed"])
        if self.check:
            self.x.check()

    def run(self, progress=None):
        t0 = time.perf_counter()
        while len(self.finished) < len(self.reqs):
            self.step()
            if progress and self.stats["steps"] % 100 == 0:
                progress("%s B=%d: step %d, %d/%d finished" % (
                    self.policy, self.budget, self.stats["steps"], len(self.finished),
                    len(self.reqs)))
        s = dict(self.stats)
        s.update(policy=self.policy, budget=self.budget, problems=len(self.reqs),
                 backend=self.kv.name, peak_kv_blocks=self.bm.stats()["peak_used_blocks"],
                 seconds=round(time.perf_counter() - t0, 3))
        return s

    def generations(self):
        """What `rkv eval --generations` writes, one dict per finished problem."""
        return [dict(policy=self.policy, budget=self.budget, id=r.id, digits=r.digits,
                     correct=bool(ok), text="".join(r.gen)) for r, ok in self.finished]


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Serve the trained test model from PyTorch with librkv holding the KV "
        "cache (scheduler, paged KV, attention, eviction through the Python binding); the "
        "same runs as `rkv eval`.")
    ap.add_argument("--model", default=str(HERE / "weights" / "adder.safetensors"))
    ap.add_argument("--policies", default="full,rkv",
                    help="comma list of full,rkv,snapkv,streaming,h2o (default full,rkv)")
    ap.add_argument("--budget", type=int, default=192, help="per-stream budget B (default 192)")
    ap.add_argument("--problems", type=int, default=100, help="problems per run (default 100)")
    ap.add_argument("--generations", help="write every generation as a JSON line, as "
                    "`rkv eval --generations` does")
    ap.add_argument("--check", action="store_true",
                    help="scheduler and executor checks after every step (slow)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    ap.add_argument("--backend", choices=("cpu", "emulated", "cuda"), default="cpu",
                    help="where the KV pool lives (default cpu; cuda: the model on the GPU "
                    "too)")
    ap.add_argument("--pad-head-dim", action="store_true",
                    help="emulated: zero-pad the head dimension and scale the queries as the "
                    "cuda backend does (a CPU test of that path)")
    args = ap.parse_args(argv)
    if args.problems < 1 or args.budget <= WINDOW:
        ap.error("--problems must be >= 1 and --budget > %d (the window)" % WINDOW)
    torch.set_num_threads(1)  # the step is small; threads only add noise
    lm, _ = load_model(args.model)
    tm = TorchModel(lm, "cuda" if args.backend == "cuda" else "cpu")
    runs, gens = [], []
    for policy in args.policies.split(","):
        srv = Server(tm, policy, args.budget, args.problems, check=args.check,
                     backend=args.backend, pad=args.pad_head_dim)
        try:
            res = srv.run(progress=lambda m: print(m, file=sys.stderr))
        finally:
            srv.close()
        runs.append(res)
        gens += srv.generations()
        print("%s B=%d: %d/%d correct (%.1fs)" % (policy, res["budget"], res["correct"],
                                                  res["problems"], res["seconds"]),
              file=sys.stderr)
    if args.generations:
        with open(args.generations, "w") as f:
            for g in gens:
                f.write(json.dumps(g) + "\n")
    if args.json:
        print(json.dumps({"model": args.model, "library": librkv.version(), "runs": runs}))
    else:
        print("%-10s %6s %9s %9s %11s %6s" % ("policy", "budget", "accuracy", "mean_gen",
                                               "peak_blocks", "steps"))
        for r in runs:
            print("%-10s %6s %9.3f %9.1f %11d %6d" % (
                r["policy"], r["budget"] or "-", r["correct"] / r["problems"],
                r["generated_tokens"] / r["problems"], r["peak_kv_blocks"], r["steps"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
