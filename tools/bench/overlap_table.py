"""Overlap scheduling in `rkv sim`: the table docs/BENCHMARKS.md reports.

    python3 tools/bench/overlap_table.py build/release/tools/rkv [--json OUT.json] [sim args...]

Runs `rkv sim --json --compute none` twice per workload, overlap off and on, in the same
process order (sync first), and prints one markdown table: steps, largest batch, modelled
decode tokens/s of the device alone, the scheduler's measured host time per step (planning,
report), the planning time overlap hid, and the modelled tokens/s with the host on the
critical path (sync: plan + step + report; overlap: max(step, next plan) + report), with
overlap's ratio to sync. Host times are this machine's wall clock (CPU, one thread), the
device time is the cost model's. Progress on stderr; --json writes every run's results.

Workloads (Llama-8B shape, H100 roofline, B = 1024):
  fixed   the paper's fixed batch: 600 requests at t = 0, 16K generations, 80 GiB pool
  azure   256 Azure-conversation requests, R-KV paper reasoning lengths, 64 GiB pool,
          optimistic admission, shared system prompts through the prefix cache"""

import argparse
import json
import subprocess
import sys

WORKLOADS = {
    "fixed": ["--model", "llama-8b", "--workload", "fixed", "--requests", "600",
              "--prompt-len", "128", "--gen-len", "16384", "--pool-gib", "80",
              "--budget", "1024", "--steps", "3000"],
    "azure": ["--model", "llama-8b", "--admission", "optimistic", "--prefixes", "8",
              "--prefix-len", "1024-4096", "--prefix-cache", "on"],
}


def sim(rkv, args):
    cmd = [rkv, "sim", "--json", "--quiet", "--compute", "none", "--gpu", "h100",
           "--policy", "full,rkv"] + args
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit("rkv sim failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stderr[-2000:]))
    return json.loads(p.stdout)


def per_step(p, key):
    return 1e6 * p[key] / p["steps"] if p["steps"] else 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("rkv")
    ap.add_argument("--json", help="write every run's results here")
    args, extra = ap.parse_known_args(argv)
    rows, runs = [], []
    for name, wl in WORKLOADS.items():
        base = {}
        for overlap in ("off", "on"):
            print("sim: %s, overlap %s" % (name, overlap), file=sys.stderr)
            d = sim(args.rkv, wl + extra + ["--overlap", overlap])
            runs.append({"workload": name, "overlap": overlap, "result": d})
            for p in d["policies"]:
                key = p["policy"]
                host_tps = p["model_tokens_per_s_with_host"]
                if overlap == "off":
                    base[key] = p
                    ratio = ""
                else:
                    ratio = "%.3fx" % (host_tps / base[key]["model_tokens_per_s_with_host"])
                if not p["complete"]:
                    ratio += " (first %d steps)" % p["steps"]
                rows.append("| %s | %s | %s | %d | %d | %.0f | %.1f | %.1f | %.1f | %.0f | %s |" % (
                    name, "R-KV" if key == "rkv" else "full", overlap, p["steps"],
                    p["max_batch"], p["model_tokens_per_s"], per_step(p, "plan_seconds"),
                    per_step(p, "report_seconds"), per_step(p, "hidden_host_seconds"),
                    host_tps, ratio))
    print("| workload | policy | overlap | steps | max batch | model tok/s (device) | plan us/step "
          "| report us/step | hidden us/step | model tok/s with host | vs sync |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workloads": WORKLOADS, "extra": extra, "runs": runs}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
