"""The librkv test model: a small decoder-only transformer (PyTorch) and a numpy twin.

Architecture (exactly what the C forward pass in tools/rkv/model_forward.c computes):
  x_t = tok_emb[tok_t] + prev_emb[tok_{t-1}]          (prev of the first token: PAD, id 0)
  per layer:  h = RMSNorm(x);  q = Wq h, k = Wk h, v = Wv h   (8 query / 2 kv heads, GQA)
              RoPE on q and k at the token's LOGICAL position (half-split pairs (j, j + d/2),
              angle = pos * theta^(-2j/d), computed in float64, cos/sin rounded to f32)
              x += Wo softmax(q k^T / sqrt(d)) v            (causal over the cached keys)
              h = RMSNorm(x);  x += W2 (silu(W1 h) * W3 h)  (SwiGLU)
  logits = lm_head RMSNorm(x)
RMSNorm: x / sqrt(mean(x^2) + eps) * w. Linear weights are [out][in] (y = W x).

The previous-token embedding gives every key its predecessor's identity, which makes
"find the digit after label X" a one-layer lookup. Keys are cached after RoPE together with
their logical positions, so a cache can drop entries (eviction) and the remaining ones keep
their meaning; `generate` uses such an explicit cache.
"""

import math

import numpy as np

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # the numpy twin works without torch
    torch = None

DEFAULT_CONFIG = {
    "vocab_size": 72,
    "d_model": 128,
    "n_layers": 4,
    "n_heads": 8,
    "n_kv_heads": 2,
    "head_dim": 32,
    "d_ff": 384,
    "rope_theta": 10000.0,
    "norm_eps": 1e-5,
    "prev_embed": 1,
}


def rope_tables(positions, head_dim, theta):
    """cos, sin [len(positions)][head_dim/2] as float32 (angles in float64)."""
    pos = np.asarray(positions, dtype=np.float64)
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    ang = pos[:, None] * inv[None, :]
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def tensor_names(cfg):
    names = ["tok_emb", "final_norm", "lm_head"]
    if cfg["prev_embed"]:
        names.append("prev_emb")
    for i in range(cfg["n_layers"]):
        for w in ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w1", "w2", "w3"):
            names.append(f"layers.{i}.{w}")
    return names


def config_to_metadata(cfg):
    return {k: repr(v) if isinstance(v, float) else str(v) for k, v in cfg.items()}


def config_from_metadata(meta):
    cfg = dict(DEFAULT_CONFIG)
    for k, v in DEFAULT_CONFIG.items():
        if k in meta:
            cfg[k] = float(meta[k]) if isinstance(v, float) else int(meta[k])
    return cfg


if torch is not None:

    class RMSNorm(nn.Module):
        def __init__(self, d, eps):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))
            self.eps = eps

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    class Block(nn.Module):
        def __init__(self, cfg):
            super().__init__()
            d, hd = cfg["d_model"], cfg["head_dim"]
            self.nh, self.nkv, self.hd = cfg["n_heads"], cfg["n_kv_heads"], hd
            self.attn_norm = RMSNorm(d, cfg["norm_eps"])
            self.wq = nn.Linear(d, self.nh * hd, bias=False)
            self.wk = nn.Linear(d, self.nkv * hd, bias=False)
            self.wv = nn.Linear(d, self.nkv * hd, bias=False)
            self.wo = nn.Linear(self.nh * hd, d, bias=False)
            self.mlp_norm = RMSNorm(d, cfg["norm_eps"])
            self.w1 = nn.Linear(d, cfg["d_ff"], bias=False)
            self.w3 = nn.Linear(d, cfg["d_ff"], bias=False)
            self.w2 = nn.Linear(cfg["d_ff"], d, bias=False)

        @staticmethod
        def rope(x, cos, sin):
            # x [B, H, T, hd]; cos/sin [B or 1, 1, T, hd/2]
            h = x.shape[-1] // 2
            x1, x2 = x[..., :h], x[..., h:]
            return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

        def qkv(self, x, cos, sin):
            B, T, _ = x.shape
            h = self.attn_norm(x)
            q = self.wq(h).view(B, T, self.nh, self.hd).transpose(1, 2)
            k = self.wk(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
            v = self.wv(h).view(B, T, self.nkv, self.hd).transpose(1, 2)
            return self.rope(q, cos, sin), self.rope(k, cos, sin), v

        def attend(self, q, k, v, mask):
            # q [B, H, Tq, hd], k/v [B, Hkv, Tk, hd], mask [B or 1, 1, Tq, Tk] bool (True = see).
            # GQA without copying K/V: the G query heads of a kv head become G*Tq rows.
            B, H, Tq, hd = q.shape
            g = self.nh // self.nkv
            qg = q.reshape(B, self.nkv, g * Tq, hd)
            s = torch.matmul(qg, k.transpose(-1, -2)) / math.sqrt(self.hd)
            s = s.view(B, self.nkv, g, Tq, -1).masked_fill(~mask[:, :, None], float("-inf"))
            p = torch.softmax(s, dim=-1).view(B, self.nkv, g * Tq, -1)
            return torch.matmul(p, v).view(B, H, Tq, hd)

        def attend_causal(self, q, k, v, chunk=128):
            """Causal self-attention over positions 0..T-1 computed by query chunks, each
            against only the keys it may see (skips the masked upper triangle: about half the
            work at T ~ 500). Same result as attend() with a lower-triangular mask."""
            T = q.shape[2]
            if T <= chunk:
                return self.attend(q, k, v, torch.ones(T, T, dtype=torch.bool).tril()[None, None])
            tri = torch.ones(T, T, dtype=torch.bool).tril()[None, None]
            outs = []
            for s0 in range(0, T, chunk):
                e = min(T, s0 + chunk)
                outs.append(self.attend(q[:, :, s0:e], k[:, :, :e], v[:, :, :e], tri[:, :, s0:e, :e]))
            return torch.cat(outs, dim=2)

        def finish(self, x, o):
            B, _, T, _ = o.shape
            x = x + self.wo(o.transpose(1, 2).reshape(B, T, self.nh * self.hd))
            h = self.mlp_norm(x)
            return x + self.w2(F.silu(self.w1(h)) * self.w3(h))

    class KVCache:
        """Explicit per-layer cache: post-RoPE keys, values and each entry's logical position.

        k[l], v[l]: [B, Hkv, T, hd]; pos[l]: [B, Hkv, T] int64 (per kv head, because eviction
        is per head). Dropping entries (`keep`) leaves the survivors valid because RoPE is
        already applied; only the next token's own position (`next_pos`, tokens fed so far) is
        needed to rotate its query. All streams hold the same number of entries (a uniform
        budget), so attention needs no per-head lengths.
        """

        def __init__(self, n_layers, masked=False):
            self.k = [None] * n_layers
            self.v = [None] * n_layers
            self.pos = [None] * n_layers
            # masked: entries are dropped by clearing valid[l] [B, Hkv, T] (bool) instead of
            # by keep(), so rows and heads may hold different counts
            self.valid = [None] * n_layers if masked else None
            self.next_pos = 0

        def length(self):
            return 0 if self.k[0] is None else self.k[0].shape[2]

        def keep(self, layer, idx):
            """Eviction: keeps cache entries idx [B, Hkv, n] (cache positions, any order) of one
            layer, in the given order."""
            g = idx[..., None].expand(-1, -1, -1, self.k[layer].shape[-1])
            self.k[layer] = torch.gather(self.k[layer], 2, g)
            self.v[layer] = torch.gather(self.v[layer], 2, g)
            self.pos[layer] = torch.gather(self.pos[layer], 2, idx)

    class TinyLM(nn.Module):
        def __init__(self, cfg=None):
            super().__init__()
            self.cfg = dict(DEFAULT_CONFIG if cfg is None else cfg)
            c = self.cfg
            self.tok_emb = nn.Embedding(c["vocab_size"], c["d_model"])
            self.prev_emb = nn.Embedding(c["vocab_size"], c["d_model"]) if c["prev_embed"] else None
            self.layers = nn.ModuleList([Block(c) for _ in range(c["n_layers"])])
            self.final_norm = RMSNorm(c["d_model"], c["norm_eps"])
            self.lm_head = nn.Linear(c["d_model"], c["vocab_size"], bias=False)
            self.reset_parameters()

        def reset_parameters(self):
            std = 0.02
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    s = std / math.sqrt(2 * self.cfg["n_layers"]) if name.endswith(("wo.weight", "w2.weight")) else std
                    nn.init.normal_(p, 0.0, s)

        def embed(self, tokens, prev):
            # tokens [B, T]; prev [B] = token before tokens[:, 0] (PAD at the start)
            x = self.tok_emb(tokens)
            if self.prev_emb is not None:
                p = torch.cat([prev[:, None], tokens[:, :-1]], dim=1)
                x = x + self.prev_emb(p)
            return x

        def _rope(self, positions):
            cos, sin = rope_tables(positions.reshape(-1).tolist(), self.cfg["head_dim"], self.cfg["rope_theta"])
            shape = tuple(positions.shape) + (self.cfg["head_dim"] // 2,)
            cos = torch.from_numpy(cos).view(shape)[:, None]
            sin = torch.from_numpy(sin).view(shape)[:, None]
            return cos, sin

        def forward(self, tokens):
            """Full causal forward over [B, T] tokens at positions 0..T-1 -> logits [B, T, V]."""
            B, T = tokens.shape
            x = self.embed(tokens, torch.zeros(B, dtype=torch.long))
            cos, sin = self._rope(torch.arange(T)[None, :])
            for blk in self.layers:
                q, k, v = blk.qkv(x, cos, sin)
                x = blk.finish(x, blk.attend_causal(q, k, v))
            return self.lm_head(self.final_norm(x))

        def extend(self, cache, tokens, prev):
            """Feeds [B, n] new tokens through the cache (all sequences at the same logical
            positions) and returns their logits [B, n, V]."""
            B, n = tokens.shape
            p0 = cache.next_pos
            positions = torch.arange(p0, p0 + n)[None, :].expand(B, n)
            cos, sin = self._rope(positions)
            x = self.embed(tokens, prev)
            t_old = cache.length()
            # new token t sees every cached entry and the new ones up to itself
            causal = torch.ones(n, t_old + n, dtype=torch.bool)
            causal[:, t_old:] = torch.ones(n, n, dtype=torch.bool).tril()
            mask = causal[None, None]
            for li, blk in enumerate(self.layers):
                q, k, v = blk.qkv(x, cos, sin)
                pos = positions[:, None, :].expand(B, blk.nkv, n)
                if cache.k[li] is not None:
                    k = torch.cat([cache.k[li], k], dim=2)
                    v = torch.cat([cache.v[li], v], dim=2)
                    pos = torch.cat([cache.pos[li], pos], dim=2)
                cache.k[li], cache.v[li], cache.pos[li] = k, v, pos.clone()
                if cache.valid is not None:
                    new = torch.ones(B, blk.nkv, n, dtype=torch.bool)
                    old = cache.valid[li]
                    cache.valid[li] = new if old is None else torch.cat([old, new], dim=2)
                    mask = cache.valid[li][:, :, None, :] & causal[None, None]  # [B, Hkv, n, T]
                x = blk.finish(x, blk.attend(q, k, v, mask))
            cache.next_pos = p0 + n
            return self.lm_head(self.final_norm(x))

        @torch.no_grad()
        def generate(self, prompts, max_new, eos_id, evict=None):
            """Greedy decoding of a batch of equal-length prompts ([B, T] long) with the
            explicit cache; `evict(cache, after_prefill)` (optional) runs after every step, after
            the attention that saw the whole cache (e.g. `streaming_evictor`). Returns a list of
            generated id lists (EOS included when produced)."""
            B = prompts.shape[0]
            cache = KVCache(self.cfg["n_layers"])
            logits = self.extend(cache, prompts, torch.zeros(B, dtype=torch.long))[:, -1]
            if evict is not None:
                evict(cache, True)

            def advance(nxt, last):
                lg = self.extend(cache, nxt[:, None], last)[:, -1]
                if evict is not None:
                    evict(cache, False)
                return lg

            return greedy_loop(logits, prompts[:, -1], advance, max_new, eos_id)


        def state_arrays(self):
            """{safetensors name: float32 numpy array} in the layout the C loader reads."""
            sd = {}
            sd["tok_emb"] = self.tok_emb.weight
            if self.prev_emb is not None:
                sd["prev_emb"] = self.prev_emb.weight
            sd["final_norm"] = self.final_norm.weight
            sd["lm_head"] = self.lm_head.weight
            for i, blk in enumerate(self.layers):
                sd[f"layers.{i}.attn_norm"] = blk.attn_norm.weight
                sd[f"layers.{i}.mlp_norm"] = blk.mlp_norm.weight
                for w in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
                    sd[f"layers.{i}.{w}"] = getattr(blk, w).weight
            return {k: v.detach().cpu().float().numpy().copy() for k, v in sd.items()}

        def load_arrays(self, arrays):
            with torch.no_grad():
                self.tok_emb.weight.copy_(torch.from_numpy(arrays["tok_emb"]))
                if self.prev_emb is not None:
                    self.prev_emb.weight.copy_(torch.from_numpy(arrays["prev_emb"]))
                self.final_norm.weight.copy_(torch.from_numpy(arrays["final_norm"]))
                self.lm_head.weight.copy_(torch.from_numpy(arrays["lm_head"]))
                for i, blk in enumerate(self.layers):
                    blk.attn_norm.weight.copy_(torch.from_numpy(arrays[f"layers.{i}.attn_norm"]))
                    blk.mlp_norm.weight.copy_(torch.from_numpy(arrays[f"layers.{i}.mlp_norm"]))
                    for w in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
                        getattr(blk, w).weight.copy_(torch.from_numpy(arrays[f"layers.{i}.{w}"]))


def greedy_loop(logits, last, advance, max_new, eos_id):
    """Greedy decoding after the prompt: logits [B, V] of the prompt's last position, last [B]
    its last token; advance(next [B], last [B]) feeds the next tokens and returns their logits.
    Returns a list of generated id lists (EOS included when produced); a row stops at EOS."""
    B = logits.shape[0]
    out = [[] for _ in range(B)]
    done = [False] * B
    for _ in range(max_new):
        nxt = logits.argmax(-1)
        for b in range(B):
            if not done[b]:
                out[b].append(int(nxt[b]))
                done[b] = int(nxt[b]) == eos_id
        if all(done):
            break
        logits = advance(nxt, last)
        last = nxt
    return out


def streaming_evictor(budget, buffer, sinks=4):
    """StreamingLLM with librkv's trigger (docs/EVICTION.md, "When a stream is compressed"): a
    cache that reached budget + buffer after a decode step, or at least budget after the
    prompt, keeps its first `sinks` entries and the newest budget - sinks, in cache order."""

    def evict(cache, after_prefill):
        n = cache.length()
        if n < (budget if after_prefill else budget + buffer):
            return
        keep = list(range(sinks)) + list(range(n - (budget - sinks), n))
        for li in range(len(cache.k)):
            B, H = cache.k[li].shape[:2]
            cache.keep(li, torch.tensor(keep)[None, None, :].expand(B, H, len(keep)))

    return evict


def load_model(path):
    """TinyLM from a safetensors file written by train.py (needs torch)."""
    from safetensors_io import load

    arrays, meta = load(path)
    m = TinyLM(config_from_metadata(meta))
    m.load_arrays(arrays)
    m.eval()
    return m, meta


# ---- numpy twin: full causal forward, float32 throughout, for cross-checks without torch ----

def _rms(x, w, eps):
    return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)).astype(np.float32) * w


def numpy_forward(arrays, cfg, tokens):
    """Logits [T, V] of one sequence (positions 0..T-1), float32."""
    T = len(tokens)
    tok = np.asarray(tokens)
    nh, nkv, hd = cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"]
    x = arrays["tok_emb"][tok].astype(np.float32)
    if cfg["prev_embed"]:
        prev = np.concatenate([[0], tok[:-1]])
        x = x + arrays["prev_emb"][prev]
    cos, sin = rope_tables(range(T), hd, cfg["rope_theta"])

    def rope(z):  # z [T, H, hd]
        h = hd // 2
        z1, z2 = z[..., :h], z[..., h:]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.concatenate([z1 * c - z2 * s, z1 * s + z2 * c], axis=-1)

    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(cfg["n_layers"]):
        L = lambda w: arrays[f"layers.{i}.{w}"]  # noqa: E731
        h = _rms(x, L("attn_norm"), cfg["norm_eps"])
        q = rope((h @ L("wq").T).reshape(T, nh, hd))
        k = rope((h @ L("wk").T).reshape(T, nkv, hd))
        v = (h @ L("wv").T).reshape(T, nkv, hd)
        o = np.zeros((T, nh, hd), dtype=np.float32)
        g = nh // nkv
        for qh in range(nh):
            s = (q[:, qh, :] @ k[:, qh // g, :].T) / np.float32(math.sqrt(hd))
            s = np.where(causal, s, -np.inf)
            s = s - s.max(axis=-1, keepdims=True)
            p = np.exp(s)
            p /= p.sum(axis=-1, keepdims=True)
            o[:, qh, :] = p @ v[:, qh // g, :]
        x = x + o.reshape(T, nh * hd) @ L("wo").T
        h = _rms(x, L("mlp_norm"), cfg["norm_eps"])
        a = h @ L("w1").T
        x = x + ((a / (1.0 + np.exp(-a))) * (h @ L("w3").T)) @ L("w2").T
    return (_rms(x, arrays["final_norm"], cfg["norm_eps"]) @ arrays["lm_head"].T).astype(np.float32)
