"""tools/model/train.py end to end on a toy configuration: one process and two data-parallel
processes must train the same model (same data, same losses up to summation order), write
weights the loader reads back, repeat bit for bit when run again, pick among the last
weights and their moving averages by validation (--average), and record the command, steps and accuracy in the sidecar.
Ends with the "N passed, N failed" line; exit 77 when torch or numpy is missing."""

import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = os.path.join(HERE, "..", "..", "..", "tools", "model")
sys.path.insert(0, TOOLS)
sys.path.insert(0, os.path.join(HERE, "..", "..", "common"))
from checks import Checks, skip  # noqa: E402

try:
    import numpy as np
    import torch  # noqa: F401
except ImportError as e:
    skip(str(e))

from model import load_model  # noqa: E402
from safetensors_io import load  # noqa: E402

TOY = ["--max-steps", "6", "--minutes", "5", "--seed", "3", "--d-model", "32", "--layers", "1",
       "--d-ff", "64", "--min-digits", "1", "--max-digits", "3", "--batch-tokens", "512",
       "--warmup", "2", "--eval-per-digit", "2", "--monitor-every", "0", "--log-every", "1000"]


def train(out_dir, procs, tag="", extra=()):
    out = os.path.join(out_dir, f"p{procs}{tag}", "toy.safetensors")
    cmd = [sys.executable, os.path.join(TOOLS, "train.py"), *TOY, *extra, "--procs", str(procs),
           "--out", out]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        print(r.stdout + r.stderr)
        return None, None
    with open(os.path.splitext(out)[0] + ".json") as f:
        return out, json.load(f)


def main():
    checks = Checks()
    expect = checks.expect

    # the loss weights' classes: operand and answer digits 2, the rest of lines and answer 1
    import task
    t2 = "ok\nA8+A:1+0=9,0; so 8\nall done, so the answer is B0A9."
    want2 = "000" + "1211121111111" + "0" * len(" so 8\nall done, " + task.ANSWER) + "1212" + "1"
    expect("".join(map(str, task.graded_spans(t2))) == want2, "graded_spans, version 2")
    # --grade-talk: version 2's talk digits and its outro (the decision to stop) join class 1
    outro = "all columns done, the last carry is 0, "
    t3 = "ok\nA8+A:1+0=9,0; so 8 plus 1 is 9\n" + outro + task.ANSWER + "B0A9."
    want3 = ("000" + "1211121111111" + "0000" + "1" + "000000" + "1" + "0000" + "1" + "0" + "1" * len(outro) +
             "0" * len(task.ANSWER) + "1212" + "1")
    expect("".join(map(str, task.graded_spans(t3, talk=True))) == want3, "graded_spans, version 2, talk graded")
    expect("".join(map(str, task.graded_spans(t3))).startswith("000121112111111100000000"),
           "graded_spans without talk=True leaves the talk ungraded")
    t1 = "A8+1+0=09;\nwait, let me verify:A8+1+0=09;\nso the answer is B0A9."
    want1 = ("1212111111" + "0" * len("\nwait, let me verify:") + "1212111111" + "0" * len("\n" + task.ANSWER)
             + "1212" + "1")
    expect("".join(map(str, task.graded_spans(t1))) == want1, "graded_spans, version 1")

    with tempfile.TemporaryDirectory() as d:
        _, sv = train(d, 1, "v2", ["--task-version", "2", "--graded-weight", "4", "--lookup-weight", "8",
                                    "--grade-talk", "--stop-step", "3"])
        expect(sv is not None and sv["steps"] == 3 and sv["graded_weight"] == 4.0 and
               sv["lookup_weight"] == 8.0 and sv["grade_talk"] is True, "version 2 with loss weights (talk graded); --stop-step cuts the run")
        wa, sa = train(d, 2, "avg", ["--average", "0.9", "0.5", "--select-per-digit", "2"])
        sel = (sa or {}).get("average") or {}
        seen = sel.get("validation", {})
        expect(set(seen) == {"last", "ema0.9", "ema0.5"} and sel.get("chosen") in seen and
               seen[sel["chosen"]] == max(seen.values()) and
               list(seen).index(sel["chosen"]) == min(i for i, v in enumerate(seen.values())
                                                      if v == max(seen.values())),
               f"--average: the last weights and each average validated, the first best written ({sel})")
        expect(sa is not None and sa["steps"] == 6, "--average trains the same schedule")
        w1, s1 = train(d, 1)
        w2, s2 = train(d, 2)
        w2b, s2b = train(d, 2, "again")
        expect(s1 is not None and s2 is not None, "train.py runs with --procs 1 and --procs 2")
        if s1 is not None and s2 is not None:
            expect(s1["steps"] == 6 and s2["steps"] == 6, f"--max-steps honoured: {s1['steps']}, {s2['steps']}")
            expect(s1["target_tokens"] == s2["target_tokens"], "both saw the same batches")
            expect(s1["first_loss"] == s2["first_loss"],
                   f"same initial model and data: first loss {s1['first_loss']} vs {s2['first_loss']}")
            expect(abs(s1["final_loss_ema"] - s2["final_loss_ema"]) <= 2e-4,
                   f"gradients summed across processes: loss ema {s1['final_loss_ema']} vs {s2['final_loss_ema']}")
            expect(s1["final_loss_ema"] < s1["first_loss"], "the loss went down")
            expect("--procs 2" in s2["command"] and s2["procs"] == 2, "sidecar records the command")
            expect(set(s2["accuracy_by_digits"]) == {"1", "2", "3"}, "accuracy by digit count recorded")
            m1, meta = load_model(w1)
            m2, _ = load_model(w2)
            expect(meta["steps"] == "6" and meta["generator_version"] == str(s1["generator_version"]),
                   "safetensors metadata has steps and generator version")
            diff = max(float(np.abs(a.detach().numpy() - b.detach().numpy()).max())
                       for a, b in zip(m1.parameters(), m2.parameters()))
            expect(diff < 1e-3, f"1- and 2-process weights agree (max diff {diff:.2e})")
            if w2b is not None:
                a, _ = load(w2)
                b, _ = load(w2b)  # the metadata differs only in the --out path
                same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
                expect(same, "the same --procs 2 command repeats bit for bit")
            if wa is not None and sel.get("chosen"):
                # averaging never changes the training itself: the last weights are w2's
                c, _ = load(wa)
                a, _ = load(w2)
                same = all(np.array_equal(a[k], c[k]) for k in a)
                expect(same == (sel["chosen"] == "last"),
                       f"--average writes the chosen weights ({sel['chosen']}; equal to the last: {same})")
    return checks.finish()


if __name__ == "__main__":
    sys.exit(main())
