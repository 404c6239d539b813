#!/usr/bin/env python3
"""Checks `rkv topo` end to end: --help, text output, and the JSON placement on synthetic
topologies with 2 and 4 NUMA nodes (GPU locality given with --gpu-numa). Standard library
only. Usage: check_rkv_topo.py PATH_TO_RKV. Prints the mandatory "N passed, N failed" line."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "common"))
from checks import Checks  # noqa: E402

RKV = sys.argv[1]
checks = Checks()
expect = checks.expect


def run(*args, ok=True):
    p = subprocess.run([RKV, "topo", *args], capture_output=True, text=True, timeout=60)
    expect((p.returncode == 0) == ok, "rkv topo %s exit %d: %s" % (" ".join(args), p.returncode,
                                                                   p.stderr.strip()))
    return p.stdout


def topo_json(*args):
    out = run(*args, "--json")
    try:
        return json.loads(out)
    except ValueError as e:
        expect(False, "JSON for %s: %s\n%s" % (args, e, out))
        return None


expect("--synthetic" in run("--help"), "--help mentions --synthetic")
run("--bogus", ok=False)
run("--synthetic", "nonsense:9 zz", ok=False)
run("--synthetic", "numa:2 core:2 pu:1", "--gpu-numa", "5", ok=False)

# A synthetic machine is not this one: binding is refused, memory is plain (not bound).
j = topo_json("--synthetic", "numa:2 core:2 pu:1", "--bind", "--alloc", "65536")
if j:
    expect(j["bind"].startswith("RKV_ERR_UNSUPPORTED"), "no binding on synthetic: " + j["bind"])
    expect("bound no" in j["alloc"], "synthetic memory not bound: " + j["alloc"])

text = run("--synthetic", "pack:2 numa:2 core:4 pu:2", "--gpu-numa", "3,2,1,0")
expect("NUMA nodes 4" in text, "text names 4 NUMA nodes")
expect("rank 0: swap pool on NUMA node 3" in text, "text places rank 0 on node 3:\n" + text)

# Four nodes, one GPU per node, reversed: rank r on node 3-r with that node's four cores.
j = topo_json("--synthetic", "pack:2 numa:2 core:4 pu:2", "--gpu-numa", "3,2,1,0")
if j:
    expect(j["source"] == "synthetic" and len(j["numa_nodes"]) == 4, "4 synthetic nodes")
    expect(j["num_cores"] == 16 and j["num_pus"] == 32, "16 cores, 32 PUs")
    for r, p in enumerate(j["placement"]):
        node = 3 - r
        expect(p["numa"] == node and p["reason"] == "gpu-local", "rank %d node: %s" % (r, p))
        expect(p["cores"] == j["numa_nodes"][node]["cores"], "rank %d cores: %s" % (r, p))
        expect(len(p["pus"]) == 8, "rank %d has 8 PUs" % r)

# Eight ranks, no locality: two per node, disjoint halves covering each node.
j = topo_json("--synthetic", "pack:2 numa:2 core:4 pu:2", "--ranks", "8")
if j:
    expect(len(j["placement"]) == 8, "8 placements")
    for node in j["numa_nodes"]:
        mine = [p for p in j["placement"] if p["core_numa"] == node["index"]]
        cores = sorted(c for p in mine for c in p["cores"])
        expect(len(mine) == 2 and cores == node["cores"], "node %d cover: %s" % (node["index"],
                                                                                  mine))

# Two nodes, both GPUs on node 1: both ranks there, 4 cores each, disjoint.
j = topo_json("--synthetic", "numa:2 core:8 pu:1", "--gpu-numa", "1,1")
if j:
    a, b = j["placement"]
    expect(a["numa"] == 1 and b["numa"] == 1, "both on node 1")
    expect(len(a["cores"]) == 4 and not set(a["cores"]) & set(b["cores"]), "disjoint halves")

# An XML fixture with GPUs: by default rank r drives GPU r and follows its locality.
XML = os.path.join(os.path.dirname(os.path.abspath(__file__)), "two_socket_4gpu.xml")
j = topo_json("--xml", XML)
if j:
    expect(j["source"] == "xml" and len(j["gpus"]) == 4, "4 GPUs in the fixture")
    expect([g["numa"] for g in j["gpus"]] == [0, 0, 1, -1], "GPU nodes: %s" % j["gpus"])
    expect([p["numa"] for p in j["placement"]] == [0, 0, 1, 1], "placement: %s" % j["placement"])
    expect(j["placement"][3]["reason"] == "balanced", "GPU above both sockets is balanced")
text = run("--xml", XML)
expect("not local to a single NUMA node" in text, "text flags the machine-level GPU")

# This machine: whatever it is, the output parses and is self-consistent.
j = topo_json()
if j:
    expect(j["source"] in ("hwloc", "fallback"), "source of this machine")
    expect(sum(len(n["cores"]) for n in j["numa_nodes"]) == j["num_cores"], "cores add up")
    expect(len(j["placement"]) == max(1, len(j["gpus"])), "one rank per GPU (or 1)")

sys.exit(checks.finish())
