"""Prefix caching under memory pressure in `rkv sim`: what docs/BENCHMARKS.md reports as
"Copies under memory pressure".

    python3 tools/bench/prefix_pressure.py RKV [--compare OTHER_RKV] [--compare-args ARGS]
                                           [--pools 6,8,12] [--json OUT.json] [--svg OUT.svg]
                                           [sim args...]

For each pool size (GiB), runs R-KV with the copy rule on the shared-prefix workload of
prefix_table.py (default: the Llama-8B shape, 8 system prompts of 1-4K tokens, optimistic
admission) with the prefix cache off, then on, and prints one markdown row per pool: the cache
hit rate, prefill tokens computed, mean request latency, longest queue wait (arrival to
admission) and modelled decode tokens/s, each cache-on figure as a ratio to its cache-off twin of the same run. Small pools are
where a compaction finds the free list short and must choose between the prompt it compacts and
older parked ones. --compare runs the cache-on half again with another build (an older librkv,
say) and adds its columns, so a change of rule is measured in one run; --compare-args gives that
run extra sim arguments (alone, it reruns this build: --compare-args "--cache-lookahead 64"
measures cache-aware admission against arrival order). Progress on stderr; --json
writes every run's results; --svg plots the hit rate and the prefill tokens computed (as a
share of cache off) against the pool, one line per build. Other sim arguments replace the
defaults of the same name (--model tiny --pool-unit blocks --pools 64,128 for a quick run)."""

import argparse
import json
import shlex
import sys

import prefix_table  # the same workload and the same way to run it
from prefix_table import hit_pct as hit

OVERRIDES = ["--policy", "rkv", "--prefix-rule", "copy", "--admission", "optimistic"]


def with_opts(base, extra):
    """base ("--name value" pairs) without the options extra names, then extra."""
    named = {a for a in extra if a.startswith("--")}
    return [x for i in range(0, len(base), 2) if base[i] not in named
            for x in base[i:i + 2]] + extra


def sim(rkv, args):
    pol = prefix_table.run_sim(rkv, args)["policies"]
    if len(pol) != 1:
        sys.exit("expected one policy from rkv sim %s, got %d" % (" ".join(args), len(pol)))
    return pol[0]


def ratio(a, b, digits):
    return "%.*fx" % (digits, a / b) if b else "-"


def wait_cell(p, off):
    """The longest queue wait; "-" from a build whose sim does not report it."""
    if "max_wait_s" not in p:
        return "-"
    return "%.1f (%s)" % (p["max_wait_s"], ratio(p["max_wait_s"], off["max_wait_s"], 2))


def cells(p, off):
    return "%.1f%% | %d (%s) | %.1f (%s) | %s | %.0f (%s)" % (
        hit(p), p["prompt_tokens"], ratio(p["prompt_tokens"], off["prompt_tokens"], 2),
        p["mean_latency_s"], ratio(p["mean_latency_s"], off["mean_latency_s"], 2),
        wait_cell(p, off),
        p["model_tokens_per_s"], ratio(p["model_tokens_per_s"], off["model_tokens_per_s"], 3))


def prefill_share(r, key):
    return r[key]["prompt_tokens"] / r["off"]["prompt_tokens"]


def svg(path, runs, unit, names):
    """Two panels side by side: hit rate and prefill tokens / cache off, against the pool."""
    W, H, L, R, T, B, GAP = 760, 350, 56, 16, 34, 76, 60
    pw, ph = (W - L - R - GAP) / 2, H - T - B
    xs = [float(r["pool"]) for r in runs]
    x0, x1 = min(xs), max(xs)
    keys = [k for k in ("on", "compare") if k in runs[0]]
    colors = {"on": "#1f77b4", "compare": "#d62728"}
    panels = [("hit rate (%)", lambda r, k: hit(r[k]), 0.0, 100.0),
              ("prefill tokens / cache off", prefill_share, 0.0, 1.2)]
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
           'font-family="sans-serif" font-size="12">' % (W, H),
           '<rect width="100%" height="100%" fill="white"/>']
    text = '<text x="%.1f" y="%.1f" text-anchor="%s">%s</text>'
    for i, (title, val, y0, y1) in enumerate(panels):
        left = L + i * (pw + GAP)

        def px(x):
            return left + (x - x0) / ((x1 - x0) or 1) * pw

        def py(y):
            return T + (1 - (y - y0) / (y1 - y0)) * ph

        out.append(text % (left + pw / 2, 20, "middle", title))
        out.append('<rect x="%.1f" y="%d" width="%.1f" height="%.1f" fill="none" stroke="#888"/>'
                   % (left, T, pw, ph))
        for k in range(5):
            y = y0 + (y1 - y0) * k / 4
            out.append(text % (left - 4, py(y) + 4, "end", "%g" % round(y, 2)))
        for x in xs:
            out.append(text % (px(x), H - B + 16, "middle", "%g" % x))
        out.append(text % (left + pw / 2, H - B + 34, "middle", "pool (%s)" % unit))
        for key in keys:
            pts = [(px(float(r["pool"])), py(val(r, key))) for r in runs]
            out.append('<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>'
                       % (" ".join("%.1f,%.1f" % p for p in pts), colors[key]))
            out += ['<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>' % (x, y, colors[key])
                    for x, y in pts]
    for j, key in enumerate(keys):
        x, y = L + j * 300, H - 12
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/>'
                   % (x, y - 4, x + 24, y - 4, colors[key]))
        out.append(text % (x + 30, y, "start", names[key]))
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rkv")
    ap.add_argument("--compare", help="another rkv build: its cache-on runs get their own columns")
    ap.add_argument("--compare-args", default="",
                    help="extra sim arguments of the compare runs (without --compare: this "
                         "build again), e.g. \"--cache-lookahead 64\"")
    ap.add_argument("--pools", default="6,8,10,12,16,24", help="pool sizes, comma separated")
    ap.add_argument("--pool-unit", choices=("gib", "blocks"), default="gib")
    ap.add_argument("--json", help="write every run's results here")
    ap.add_argument("--svg", help="write the plot here")
    ap.add_argument("--labels", default="this build,compare",
                    help="the plot's names for RKV and --compare (comma separated)")
    args, extra = ap.parse_known_args(argv)
    base = with_opts(with_opts(prefix_table.DEFAULT, OVERRIDES), extra)
    cargs = shlex.split(args.compare_args)
    compare = args.compare or (args.rkv if cargs else None)
    unit = "GiB" if args.pool_unit == "gib" else "blocks"
    heads = ["pool", "cache off: prefill tokens", "cache off: model tok/s",
             "hit", "prefill tokens", "mean latency s", "max wait s", "model tok/s"]
    if compare:
        heads += ["compare: hit", "compare: prefill tokens", "compare: mean latency s",
                  "compare: max wait s", "compare: model tok/s"]
    print("| " + " | ".join(heads) + " |")
    print("|" + "---|" * len(heads))
    runs = []
    for pool in args.pools.split(","):
        size = ["--pool-" + ("gib" if args.pool_unit == "gib" else "blocks"), pool]
        res = {}
        for name, rkv, cache, more in (("off", args.rkv, "off", []), ("on", args.rkv, "on", []),
                                       ("compare", compare, "on", cargs)):
            if not rkv:
                continue
            print("sim: pool %s %s, %s" % (pool, args.pool_unit, name), file=sys.stderr)
            res[name] = sim(rkv, with_opts(base, more) + size + ["--prefix-cache", cache])
        runs.append({"pool": pool, "unit": args.pool_unit, **res})
        off = res["off"]
        row = "| %s %s | %d | %.0f | %s" % (pool, unit, off["prompt_tokens"],
                                           off["model_tokens_per_s"], cells(res["on"], off))
        if compare:
            row += " | " + cells(res["compare"], off)
        incomplete = [k for k, p in res.items() if not p["complete"]]
        print(row + " |" + (" (incomplete: %s)" % ", ".join(incomplete) if incomplete else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": base, "compare_args": cargs, "runs": runs}, f, indent=1)
    if args.svg:
        labels = (args.labels.split(",") + ["compare"])[:2]
        svg(args.svg, runs, unit, {"on": labels[0], "compare": labels[1]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
