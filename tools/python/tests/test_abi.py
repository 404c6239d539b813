"""The ctypes mirrors equal the C headers: a small C program compiled with the build tree's
headers prints sizeof and offsetof of every mirrored struct, the values of the *_INIT
initialisers and of the enum constants, and each must equal the Python side. Skips without a
C compiler or a build tree (for the generated <rkv/version.h>)."""
import ctypes
import os
import shutil
import subprocess

import pytest

import librkv
from librkv import _structs as S
from conftest import SOURCE_DIR

STRUCTS = {
    "rkv_kv_layout": S.KvLayout, "rkv_block_copy": S.BlockCopy, "rkv_slot_move": S.SlotMove,
    "rkv_backend_config": S.BackendConfig, "rkv_blockmgr_config": S.BlockManagerConfig,
    "rkv_keep_list": S.KeepList, "rkv_blockmgr_stats": S.BlockManagerStats,
    "rkv_evict_params": S.EvictParams, "rkv_evict_scores": S.EvictScores,
    "rkv_evict_result": S.EvictResult, "rkv_sched_config": S.SchedConfig,
    "rkv_sched_request": S.SchedRequest, "rkv_sched_seq": S.SchedSeq,
    "rkv_sched_swap": S.SchedSwap, "rkv_sched_fork_op": S.SchedForkOp,
    "rkv_sched_plan": S.SchedPlan, "rkv_sched_output": S.SchedOutput,
    "rkv_sched_request_info": S.SchedRequestInfo, "rkv_sched_metrics": S.SchedMetrics,
    "rkv_exec_config": S.ExecConfig, "rkv_prefix_stats": S.PrefixStats,
    "rkv_sched_prefix_stats": S.SchedPrefixStats,
}

# (C type, initialiser macro, Python defaults)
INITS = [
    ("rkv_backend_config", "RKV_BACKEND_CONFIG_INIT", S.BackendConfig, S.BACKEND_CONFIG_INIT),
    ("rkv_blockmgr_config", "RKV_BLOCKMGR_CONFIG_INIT", S.BlockManagerConfig,
     S.BLOCKMGR_CONFIG_INIT),
    ("rkv_evict_params", "RKV_EVICT_PARAMS_INIT", S.EvictParams, S.EVICT_PARAMS_INIT),
    ("rkv_sched_config", "RKV_SCHED_CONFIG_INIT", S.SchedConfig, S.SCHED_CONFIG_INIT),
    ("rkv_exec_config", "RKV_EXEC_CONFIG_INIT", S.ExecConfig, S.EXEC_CONFIG_INIT),
]

ENUMS = [
    (S.Status, "RKV_"), (S.DType, "RKV_DTYPE_"), (S.BackendKind, "RKV_BACKEND_"),
    (S.EvictPolicy, "RKV_EVICT_"), (S.Granularity, "RKV_EVICT_GRAN_"),
    (S.Admission, "RKV_SCHED_"), (S.PreemptMode, "RKV_SCHED_PREEMPT_"),
    (S.PrefixRule, "RKV_SCHED_PREFIX_"),
    (S.SeqKind, "RKV_SCHED_"), (S.RequestState, "RKV_SCHED_"),
]

POINTERS = ("allocator", "logger")


def cname(field):
    return "lambda" if field == "lambda_" else field


def scalar_fields(struct):
    """(path, ctype) of every non-pointer scalar field, nested structs flattened."""
    out = []
    for name, typ in struct._fields_:
        if isinstance(typ, type) and issubclass(typ, ctypes.Structure):
            out += [(name + "." + p, t) for p, t in scalar_fields(typ)]
        elif typ in (ctypes.c_void_p,) or hasattr(typ, "contents") or name in POINTERS:
            continue
        else:
            out.append((name, typ))
    return out


def c_program():
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <rkv/rkv.h>",
             "#include <rkv/executor.h>",  # not in the umbrella header (yet)
             "int main(void) {"]
    for c, py in STRUCTS.items():
        lines.append('  printf("sizeof %s %%zu\\n", sizeof(%s));' % (c, c))
        for name, _ in py._fields_:
            lines.append('  printf("offsetof %s.%s %%zu\\n", offsetof(%s, %s));' % (
                c, name, c, cname(name)))
    for c, macro, py, _ in INITS:
        var = "v_" + c
        lines.append("  { %s %s = %s;" % (c, var, macro))
        for path, typ in scalar_fields(py):
            expr = var + "." + ".".join(cname(p) for p in path.split("."))
            if typ in (ctypes.c_float, ctypes.c_double):
                lines.append('    printf("init %s.%s %%.9g\\n", (double)%s);' % (c, path, expr))
            else:
                lines.append('    printf("init %s.%s %%lld\\n", (long long)%s);' % (
                    c, path, expr))
        lines.append("  }")
    for enum, prefix in ENUMS:
        for m in enum:
            lines.append('  printf("enum %s.%s %%d\\n", (int)%s%s);' % (
                enum.__name__, m.name, prefix, m.name))
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


def python_default(py, init):
    s = py()
    if hasattr(s, "struct_size"):
        s.struct_size = ctypes.sizeof(py)
    for k, v in init.items():
        if py is S.EvictParams and k == "policy":
            v = int(v)
        setattr(s, k, v)
    if "evict" in dict(py._fields_):
        s.evict = S.EvictParams()
    return s


def get_path(s, path):
    for p in path.split("."):
        s = getattr(s, p)
    return s


@pytest.fixture(scope="module")
def c_output(tmp_path_factory):
    from conftest import build_dir
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or not shutil.which(cc.split()[0]):
        pytest.skip("no C compiler (cc) to print the headers' layout")
    b = build_dir()
    if b is None or not (b / "include" / "rkv" / "version.h").is_file():
        pytest.skip("no build tree with the generated <rkv/version.h> (set RKV_BUILD_DIR)")
    incs = [str(b / "include")] + sorted(str(p) for p in SOURCE_DIR.glob("*/include")
                                         if (p / "rkv").is_dir())
    d = tmp_path_factory.mktemp("abi")
    src, exe = d / "abi.c", d / "abi"
    src.write_text(c_program())
    r = subprocess.run([cc, "-std=c11", "-o", str(exe), str(src)] + ["-I" + i for i in incs],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60, check=True)
    vals = {}
    for line in out.stdout.splitlines():
        kind, key, val = line.split(" ", 2)
        vals[(kind, key)] = val
    return vals


@pytest.mark.parametrize("c", sorted(STRUCTS))
def test_layout(c_output, c):
    py = STRUCTS[c]
    assert ctypes.sizeof(py) == int(c_output[("sizeof", c)]), "sizeof(%s)" % c
    for name, _ in py._fields_:
        assert getattr(py, name).offset == int(c_output[("offsetof", c + "." + name)]), (
            "offsetof(%s, %s)" % (c, cname(name)))


@pytest.mark.parametrize("c,macro,py,init", INITS, ids=[i[1] for i in INITS])
def test_init_values(c_output, c, macro, py, init):
    s = python_default(py, init)
    for path, typ in scalar_fields(py):
        want = c_output[("init", c + "." + path)]
        got = get_path(s, path)
        if typ in (ctypes.c_float, ctypes.c_double):
            assert "%.9g" % got == want, "%s.%s" % (macro, path)
        else:
            assert int(got) == int(want), "%s.%s" % (macro, path)


def test_enums(c_output):
    for enum, _ in ENUMS:
        for m in enum:
            assert int(m) == int(c_output[("enum", "%s.%s" % (enum.__name__, m.name))])


def test_numpy_dtypes_follow_structs():
    assert librkv.seq_dtype().itemsize == ctypes.sizeof(S.SchedSeq)
    assert librkv.output_dtype().itemsize == ctypes.sizeof(S.SchedOutput)
    for name in librkv.output_dtype().names:
        assert librkv.output_dtype().fields[name][1] == getattr(S.SchedOutput, name).offset
