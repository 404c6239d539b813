"""Prefix caching with eviction in `rkv sim`: the matrix docs/BENCHMARKS.md reports.

    python3 tools/bench/prefix_table.py build/release/tools/rkv [--json OUT.json] [sim args...]

Runs `rkv sim --json` on a shared-prefix workload (default: the Llama-8B shape, 8 system
prompts of 1-4K tokens in front of Azure conversation prompts, R-KV paper reasoning lengths,
a 64 GiB pool, roofline on an H100) for every combination of admission (reserve,
optimistic), prefix rule (protect, copy) and prefix cache (off, on), policies full and R-KV,
and prints one markdown table: prefill tokens computed, hit rate, peak KV, mean KV, largest
batch and modelled decode tokens/s, with each cache-on row's ratio to its cache-off twin.
Progress on stderr; --json writes every run's results."""

import argparse
import json
import subprocess
import sys

DEFAULT = ["--model", "llama-8b", "--prefixes", "8", "--prefix-len", "1024-4096",
           "--policy", "full,rkv"]


def run_sim(rkv, args):
    """`rkv sim --json --quiet ARGS`, parsed; exits with its stderr when it fails."""
    cmd = [rkv, "sim", "--json", "--quiet"] + args
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("rkv sim failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stderr[-2000:]))
    return json.loads(p.stdout)


def sim(rkv, extra):
    return run_sim(rkv, DEFAULT + extra)


def hit_pct(p):
    """Share of the hashed prompt tokens a policy's run took from the cache, in percent."""
    hashed = p["prefix_hashed_tokens"]
    return 100.0 * p["prefix_hit_tokens"] / hashed if hashed else 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rkv")
    ap.add_argument("--json", help="write every run's results here")
    args, extra = ap.parse_known_args(argv)
    rows, runs = [], []
    for adm in ("reserve", "optimistic"):
        for rule in ("protect", "copy"):
            base = {}
            for cache in ("off", "on"):
                print("sim: %s admission, %s rule, prefix cache %s" % (adm, rule, cache),
                      file=sys.stderr)
                d = sim(args.rkv, extra + ["--admission", adm, "--prefix-rule", rule,
                                           "--prefix-cache", cache])
                runs.append({"admission": adm, "rule": rule, "cache": cache, "result": d})
                for p in d["policies"]:
                    if p["policy"] == "full" and rule == "copy":
                        continue  # nothing is evicted: the rule changes nothing
                    key = p["policy"]
                    tps = p["model_tokens_per_s"]
                    if cache == "off":
                        base[key] = p
                        ratio = ""
                    else:
                        b = base[key]
                        ratio = "%.2fx tok/s, %.2fx peak" % (
                            tps / b["model_tokens_per_s"], p["peak_blocks"] / b["peak_blocks"])
                    hit = hit_pct(p)
                    rows.append("| %s | %s | %s | %s | %d | %.1f%% | %.2f | %.2f | %d | %.0f | %s |" % (
                        adm, "R-KV" if key == "rkv" else "full", rule if key == "rkv" else "-",
                        cache, p["prompt_tokens"], hit, p["peak_kv_gib"], p["mean_kv_gib"],
                        p["max_batch"], tps, ratio))
                    if not p["complete"]:
                        rows[-1] += " (incomplete)"
    print("| admission | policy | rule | prefix cache | prefill tokens | hit | peak KV GiB | "
          "mean KV GiB | max batch | model tok/s | vs cache off |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"defaults": DEFAULT, "extra": extra, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
