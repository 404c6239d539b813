#!/bin/sh
# The shared library's interface (docs/PACKAGING.md): its soname is librkv.so.<major>, it
# exports only rkv_-prefixed symbols (nm -D --defined-only), every function the public headers
# declare with RKV_API is among them, and it needs no CUDA library (NEEDED entries).
# usage: check_exports.sh LIBRARY SONAME PUBLIC_INCLUDE_DIR...
# Exit 77 (skip) only when nm or objdump (binutils) is missing.
set -u
lib=$1
want_soname=$2
shift 2
for t in nm objdump; do
  command -v $t >/dev/null 2>&1 || { echo "SKIP: no $t (binutils)"; exit 77; }
done
fail=0

soname=$(objdump -p "$lib" | awk '$1 == "SONAME" { print $2 }')
echo "SONAME $soname"
[ "$soname" = "$want_soname" ] || { echo "FAIL: soname $soname, want $want_soname"; fail=1; }

needed=$(objdump -p "$lib" | awk '$1 == "NEEDED" { print $2 }')
echo "NEEDED" $needed
if echo "$needed" | grep -Eiq 'libcuda|libcudart|libnccl|libcublas|libnvrtc|libnvJitLink'; then
  echo "FAIL: librkv.so links a CUDA library"
  fail=1
fi

# __start_<section> / __stop_<section> are the linker's bounds of a section whose name is a C
# identifier; an instrumented build (sanitizer coverage: __sancov_guards) gets them whatever
# the code exports, so they are listed apart, not counted against the prefix rule.
all=$(nm -D --defined-only "$lib" | awk '{ print $NF }' | sort -u)
linker=$(echo "$all" | grep -E '^__(start|stop)_' || true)
syms=$(echo "$all" | grep -Ev '^__(start|stop)_')
[ -n "$linker" ] && echo "note: linker section bounds (instrumented build):" $linker
n=$(echo "$syms" | grep -c .)
bad=$(echo "$syms" | grep -v '^rkv_')
echo "$n exported symbols"
if [ -n "$bad" ]; then
  echo "FAIL: exported symbols without the rkv_ prefix:"
  echo "$bad"
  fail=1
fi

# RKV_API declarations: the function name is the last identifier before the first '(' (the
# lines of a declaration are joined up to that '(', in case the name was wrapped).
declared=$(for d in "$@"; do cat "$d"/rkv/*.h; done |
  awk '/^RKV_API/ { decl = "" } /^RKV_API/ || decl != "" {
         decl = decl " " $0
         if (index(decl, "(")) { print decl; decl = "" }
       }' |
  sed -E 's/\(.*//; s/[[:space:]]+$//; s/.*[^A-Za-z0-9_]([A-Za-z0-9_]+)$/\1/' | sort -u)
nd=$(echo "$declared" | grep -c .)
missing=$(echo "$declared" | while read -r f; do echo "$syms" | grep -qx "$f" || echo "$f"; done)
echo "$nd functions declared RKV_API in the public headers"
if [ -n "$missing" ]; then
  echo "FAIL: declared RKV_API but not exported:"
  echo "$missing"
  fail=1
fi
extra=$(echo "$syms" | while read -r f; do echo "$declared" | grep -qx "$f" || echo "$f"; done)
if [ -n "$extra" ]; then
  echo "note: exported but not declared in a public header:" $extra
fi
[ $fail -eq 0 ] && echo "PASS"
exit $fail
