"""Synthetic chain-of-thought task for the librkv test model: labelled n-digit addition.

A problem is written as a prompt (the two operands, every digit tagged with its column label)
followed by a reasoning trace: one fixed-width line per column with its carries, a redundant
"wait, let me verify:" pass repeating every line, and the labelled answer (generator version
1). Version 2 replaces the verification pass by self-talk around each column's line that
nothing later reads (docs/MODEL.md). Two properties make
KV eviction matter: the operands the last lines need appear at the very start, and the
verification pass duplicates earlier tokens. The format is documented in docs/MODEL.md; the C
side (tools/rkv/model_task.c) generates byte-identical problems from the same seeds.

Problems are a pure function of (seed, index, digit range) through splitmix64, so training,
held-out evaluation and `rkv eval` never depend on Python's random module.
"""

import argparse
import sys

GENERATOR_VERSION = 1  # the default format; version 2 is selected per call (version=2)
VERSIONS = (1, 2)

# Character vocabulary. Index 0 is padding and never appears in text. Column labels: operand a
# uses 'A'.., operand b uses 'a'..; the answer reuses the uppercase labels.
PAD = "\0"
VOCAB = PAD + "\n :;+=.?" + "0123456789" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + "abcdefghijklmnopqrstuvwxyz" + ","
STOI = {c: i for i, c in enumerate(VOCAB)}
MIN_DIGITS = 1
MAX_DIGITS = 25  # label alphabet bound: column n (final carry) needs letter n

# The held-out problem sets (train.py's evaluation and progress checks, diagnose.py); the
# training sets derive from --seed and never use it.
EVAL_SEED = 20261122

VERIFY = "wait, let me verify:"
ANSWER = "so the answer is "
EOS = "."

MASK64 = (1 << 64) - 1


def splitmix64(state):
    """One splitmix64 step: returns (new_state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return state, z ^ (z >> 31)


class Rng:
    """splitmix64 stream; the C generator uses the same arithmetic."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def next(self):
        self.state, out = splitmix64(self.state)
        return out

    def below(self, n):
        # Plain modulo: the bias (< 2^-50 for our ranges) is irrelevant and trivially portable.
        return self.next() % n


def problem_seed(seed, index):
    """Seed of problem `index` of a problem set: independent streams per index."""
    _, s = splitmix64((seed * 0x100000001B3 + index) & MASK64)
    return s


def make_operands(seed, index, lo, hi):
    """Digit count in [lo, hi] and two n-digit operands (no leading zero) for one problem."""
    if not (MIN_DIGITS <= lo <= hi <= MAX_DIGITS):
        raise ValueError(f"digit range {lo}..{hi} outside {MIN_DIGITS}..{MAX_DIGITS}")
    rng = Rng(problem_seed(seed, index))
    n = lo + rng.below(hi - lo + 1)
    digits = []
    for _ in range(2):
        d = [1 + rng.below(9)] + [rng.below(10) for _ in range(n - 1)]  # most significant first
        digits.append(int("".join(map(str, d))))
    return n, digits[0], digits[1]


def upper(i):
    return chr(ord("A") + i)


def lower(i):
    return chr(ord("a") + i)


def prompt_text(n, a, b, version=1):
    """'Q:' + labelled a (most significant first) + '+' + labelled b + newline. Version 1 labels
    b's digits in lower case ('c3'); version 2 writes b's labels in upper case with a ':'
    before the digit ('C:3'), so that a's digit is the only one right after its label and b's
    the only one after ':'."""
    da = str(a).zfill(n)
    db = str(b).zfill(n)
    pa = "".join(upper(n - 1 - k) + da[k] for k in range(n))
    if version == 2:
        pb = "".join(upper(n - 1 - k) + ":" + db[k] for k in range(n))
    else:
        pb = "".join(lower(n - 1 - k) + db[k] for k in range(n))
    return "Q:" + pa + "+" + pb + "\n"


def column_lines(n, a, b):
    """One 10-character line per column, least significant first: 'A6+4+0=10;'."""
    da = str(a).zfill(n)[::-1]
    db = str(b).zfill(n)[::-1]
    carry = 0
    out = []
    for i in range(n):
        s = int(da[i]) + int(db[i]) + carry
        out.append(f"{upper(i)}{da[i]}+{db[i]}+{carry}={s // 10}{s % 10};")
        carry = s // 10
    return "".join(out), carry


def answer_text(n, a, b):
    """Labelled sum, n + 1 digits (leading carry included even when 0), most significant first."""
    s = str(a + b).zfill(n + 1)
    return "".join(upper(n - k) + s[k] for k in range(n + 1))


# Version 2: the column lines of version 1, each followed by reasoning-style self-talk that
# restates it (and, when a carry came in, an abandoned first sum), and no verification pass.
# Nothing later reads the talk: the next line reads the prompt and the carry, the answer
# reads the lines. No '.' inside the trace: '.' is the end-of-sequence token.
V2_INTRO = "ok, let me add these column by column, from the right\n"
V2_SO = " so {x} plus {y} is {t}"
V2_FORGOT = ", hmm, i forgot the carry, {t} plus 1 is {s}"
V2_OVER = ", that is ten or more, so i write {d} and carry 1\n"
V2_UNDER = ", that is under ten, so i write {d} and carry 0\n"
V2_OUTRO = "all columns done, the last carry is {c}, "


def column_talk(n, a, b):
    """Version 2's trace before the answer: per column the version-1 line, then the talk."""
    da = str(a).zfill(n)[::-1]
    db = str(b).zfill(n)[::-1]
    carry = 0
    out = [V2_INTRO]
    for i in range(n):
        x, y = int(da[i]), int(db[i])
        t = x + y
        s = t + carry
        out.append(f"{upper(i)}{x}+{upper(i)}:{y}+{carry}={s % 10},{s // 10};")
        out.append(V2_SO.format(x=x, y=y, t=t))
        if carry:
            out.append(V2_FORGOT.format(t=t, s=s))
        out.append((V2_OVER if s >= 10 else V2_UNDER).format(d=s % 10))
        carry = s // 10
    out.append(V2_OUTRO.format(c=carry))
    return "".join(out)


def target_text(n, a, b, version=1):
    """Everything the model generates after the prompt, EOS included."""
    if version == 2:
        return column_talk(n, a, b) + ANSWER + answer_text(n, a, b) + EOS
    if version != 1:
        raise ValueError(f"generator version {version} not in {VERSIONS}")
    lines, _ = column_lines(n, a, b)
    return lines + "\n" + VERIFY + lines + "\n" + ANSWER + answer_text(n, a, b) + EOS


def graded_spans(target, talk=False):
    """Per character of a target text: 2 for a digit copied from far back (an operand digit in a
    column line, an answer digit), 1 for the rest of a column line (from its label through ';')
    and of the answer (after ANSWER, EOS included), 0 elsewhere. Exact match depends on classes
    1 and 2; train.py can weight them in the loss.

    talk=True also makes class 1 of what version 2's trace decides outside the lines: every
    digit of the talk (the sums and carries the model evidently reads back when it writes the
    next line) and the whole outro, whose first character is the decision to stop adding
    columns (otherwise a weight-1 token competing with the next line's graded label)."""
    out = [0] * len(target)
    k = target.rfind(ANSWER)
    body_end = k if k >= 0 else len(target)
    if talk:  # the lines below overwrite their own digits
        for q in range(body_end):
            if target[q].isdigit():
                out[q] = 1
        o = target.rfind(V2_OUTRO.split("{")[0], 0, body_end)
        for q in range(o, body_end) if o >= 0 else ():
            out[q] = 1
    i = 0
    while i < body_end:
        if "A" <= target[i] <= "Z" and (i == 0 or target[i - 1] in "\n;:"):
            j = target.find(";", i, body_end)
            j = body_end - 1 if j < 0 else j
            for q in range(i, j + 1):
                # an operand digit follows its label (a: 'C9') or, for b, ':' in version 2
                # ('C:3') and the '+' after a's digit in version 1 ('C9+3')
                far = target[q].isdigit() and (target[q - 1].isalpha() or target[q - 1] == ":" or
                                               q == i + 3)
                out[q] = 2 if far else 1
            i = j + 1
        else:
            i += 1
    if k >= 0:
        for q in range(k + len(ANSWER), len(target)):
            out[q] = 2 if target[q].isdigit() else 1
    return out


def problem(seed, index, lo, hi, version=1):
    """(n, a, b, prompt, target) of problem `index` of the set `seed` with digits in [lo, hi]."""
    n, a, b = make_operands(seed, index, lo, hi)
    return n, a, b, prompt_text(n, a, b, version), target_text(n, a, b, version)


def parse_answer(generated):
    """Integer answer of a generated trace, or None when the answer is missing or malformed.

    The answer is the text between ANSWER and EOS with its labels dropped; every label must be
    followed by exactly one digit.
    """
    k = generated.rfind(ANSWER)
    if k < 0:
        return None
    rest = generated[k + len(ANSWER):]
    end = rest.find(EOS)
    if end < 0:
        return None
    body = rest[:end]
    if len(body) < 2 or len(body) % 2:
        return None
    digits = []
    for j in range(0, len(body), 2):
        if not ("A" <= body[j] <= "Z") or not body[j + 1].isdigit():
            return None
        digits.append(body[j + 1])
    return int("".join(digits))


def is_correct(a, b, generated):
    return parse_answer(generated) == a + b


def encode(text):
    return [STOI[c] for c in text]


def decode(ids):
    return "".join(VOCAB[i] for i in ids if i != 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Print problems of the labelled-addition task.")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=3)
    ap.add_argument("--min-digits", type=int, default=6)
    ap.add_argument("--max-digits", type=int, default=20)
    ap.add_argument("--version", type=int, default=GENERATOR_VERSION, choices=VERSIONS,
                    help="generator version (docs/MODEL.md)")
    ap.add_argument("--tsv", action="store_true",
                    help="one line per problem: index n a b len(prompt) len(target) (cross-checks)")
    args = ap.parse_args(argv)
    for i in range(args.count):
        n, a, b, p, t = problem(args.seed, i, args.min_digits, args.max_digits, args.version)
        assert is_correct(a, b, t)
        if args.tsv:
            print(f"{i}\t{n}\t{a}\t{b}\t{len(p)}\t{len(t)}")
        else:
            sys.stdout.write(p + t + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
