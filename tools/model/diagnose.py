"""Teacher-forced token errors of trained weights, by token class.

Given the true prefix, is each target token the argmax? Counted per class: each character
position of a column line (label, operand a, b's label, operand b, carry in, sum digit, carry
out, separators), the answer's labels and digits, and everything else (self-talk, intro,
verification pass). Exact match needs every line and answer token right, so this shows which
lookup a run has not learnt yet, without decoding.

  /usr/bin/python3 tools/model/diagnose.py WEIGHTS [--version 2] [--digits 6-10] [--per-digit 4]
"""

import argparse
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
try:
    import torch  # noqa: E402
except ImportError as e:  # the tests treat 77 as skipped
    print(f"diagnose.py: needs torch ({e})", file=sys.stderr)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import task  # noqa: E402
from model import load_model  # noqa: E402


def classes(target):
    """A class name per target character."""
    spans = task.graded_spans(target)
    k = target.rfind(task.ANSWER)
    a0 = k + len(task.ANSWER) if k >= 0 else len(target)
    out = []
    line_pos = None
    for i, c in enumerate(target):
        if i >= a0:
            out.append("answer_eos" if c == task.EOS else
                       "answer_label" if c.isalpha() else "answer_digit")
        elif spans[i]:
            line_pos = 0 if (i == 0 or not spans[i - 1] or target[i - 1] == ";") else line_pos + 1
            out.append(f"line[{line_pos}]")
        else:
            out.append("other")
    return out


@torch.no_grad()
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--version", type=int, default=2, choices=task.VERSIONS)
    ap.add_argument("--digits", default="6-10", help="lo-hi digit counts")
    ap.add_argument("--per-digit", type=int, default=4, help="held-out problems per digit count")
    args = ap.parse_args(argv)
    lo, hi = (int(v) for v in args.digits.split("-"))
    torch.set_num_threads(1)
    model, _ = load_model(args.weights)
    model.eval()
    wrong, total = {}, {}
    exact = 0
    count = 0
    for n in range(lo, hi + 1):
        for i in range(args.per_digit):
            # the problems of train.py's progress checks (monitor_set)
            _, _, _, p, t = task.problem((task.EVAL_SEED + 1) * 100 + n, i, n, n, args.version)
            x = torch.tensor([task.encode(p + t)])
            pred = model(x[:, :-1]).argmax(-1)[0].tolist()
            ids = x[0].tolist()
            bad = 0
            for j, cls in enumerate(classes(t)):
                pos = len(p) + j  # the token at pos is predicted at pos - 1
                miss = pred[pos - 1] != ids[pos]
                total[cls] = total.get(cls, 0) + 1
                wrong[cls] = wrong.get(cls, 0) + miss
                bad += miss
            exact += bad == 0
            count += 1
    print(f"{args.weights}: version {args.version}, digits {lo}-{hi}, {count} problems, "
          f"teacher-forced exact {exact}/{count}")
    for cls in sorted(total, key=lambda c: (c.startswith("other"), c)):
        print(f"  {cls:14s} {wrong[cls]:6d} / {total[cls]:6d} wrong ({100.0 * wrong[cls] / total[cls]:5.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
