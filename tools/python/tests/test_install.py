"""Installing the bindings as docs/PYTHON.md says, then importing them from outside the tree:
`cmake --install BUILD --prefix P` puts the package under P/lib/python3/dist-packages, where it
finds P's librkv.so by itself; `pip install tools/python` (offline, a venv with the system's
site packages) installs the package alone, which finds the library through RKV_LIBRARY."""
import os
import re
import shutil
import subprocess
import sys

import pytest

import librkv
from conftest import PKG_ROOT

PROBE = ("import librkv, numpy as np\n"
         "bm = librkv.BlockManager(8, block_size=4, num_kv_heads=1, head_dim=4, dtype='f32')\n"
         "pool = librkv.KVPool.for_blockmgr(bm)\n"
         "bm.seq_create(0); s = bm.append(0, 3).slots.reshape(-1)\n"
         "pool.k_blocks[s // 4, s % 4] = 1.0\n"
         "assert pool.read_blocks([s[0] // 4])[0, 0, :3].sum() == 12.0\n"
         "print(librkv.version()); print(librkv.library_path()); print(librkv.__file__)\n")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RKV_LIBRARY", "PYTHONPATH", "RKV_BUILD_DIR")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def test_version_strings_agree(need_build_dir):
    vh = (need_build_dir / "include" / "rkv" / "version.h").read_text()
    m = re.search(r'#define RKV_VERSION_STRING "([^"]+)"', vh)
    assert m and librkv.version() == m.group(1) == librkv.__version__, (
        "librkv.__version__ (tools/python/librkv/__init__.py) must follow project(VERSION)")
    assert librkv.version_info() == tuple(int(x) for x in m.group(1).split("."))


def test_cmake_install_prefix(need_build_dir, tmp_path):
    cmake = os.environ.get("CMAKE") or shutil.which("cmake")
    if not cmake:
        pytest.skip("no cmake to install with")
    prefix = tmp_path / "prefix"
    r = subprocess.run([cmake, "--install", str(need_build_dir), "--prefix", str(prefix)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    site = prefix / "lib" / "python3" / "dist-packages"
    assert (site / "librkv" / "__init__.py").is_file()
    assert not list(site.rglob("__pycache__")) and not list(site.rglob("*.pyc"))
    # the documented check, from a directory outside the tree, without RKV_LIBRARY
    env = clean_env(PYTHONPATH=str(site))
    r = subprocess.run([sys.executable, "-c", "import librkv; print(librkv.version())"],
                       env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == librkv.version()
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ver, lib, mod = r.stdout.split()
    assert ver == librkv.version()
    assert lib.startswith(str(prefix) + os.sep), "loaded %s, not the prefix's library" % lib
    assert mod.startswith(str(site) + os.sep)


def test_pip_install_venv(tmp_path):
    """pip install of a copy of tools/python (pip builds in place: the source tree stays
    clean) into a venv that sees the system's numpy and setuptools; offline."""
    venv = tmp_path / "venv"
    r = subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip("no venv with pip (Debian: apt-get install python3-venv): %s"
                    % (r.stderr.strip().splitlines() or ["?"])[-1])
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-c", "import setuptools, pip"], capture_output=True)
    if r.returncode != 0:
        pytest.skip("the venv has no pip or setuptools (apt-get install python3-pip "
                    "python3-setuptools)")
    src = tmp_path / "src"
    shutil.copytree(PKG_ROOT, src, ignore=shutil.ignore_patterns("tests", "__pycache__",
                                                                  "build", "*.egg-info"))
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-index", "--no-build-isolation",
                        "--disable-pip-version-check", str(src)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    env = clean_env(RKV_LIBRARY=librkv.library_path())
    r = subprocess.run([str(py), "-c", PROBE], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ver, lib, mod = r.stdout.split()
    assert ver == librkv.version() and mod.startswith(str(venv) + os.sep)
    r = subprocess.run([str(py), "-m", "pip", "show", "librkv"], capture_output=True,
                       text=True, timeout=60)
    assert "Version: " + librkv.__version__ in r.stdout
