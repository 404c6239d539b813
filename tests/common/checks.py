"""The Python tests' side of tests/common/rkv_test.h: count checks, print each failure, end
with the "N passed, N failed" line every test prints, and skip with exit 77."""

import sys


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def expect(self, cond, what):
        if cond:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL: {what}", flush=True)
        return bool(cond)

    def finish(self):
        """Prints the summary line; the exit status for sys.exit."""
        print(f"{self.passed} passed, {self.failed} failed")
        return 1 if self.failed else 0


def skip(reason):
    print(f"SKIP: {reason}")
    print("0 passed, 0 failed, 1 skipped")
    sys.exit(77)
