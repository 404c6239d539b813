#!/bin/sh
# Installs the build into a fresh prefix and builds tests/install/consumer against that prefix
# only, then runs what it built (tests/install/tests.cmake registers both modes):
#   pkgconfig  plain cc command lines from `pkg-config rkv`: shared, and static (librkv.a)
#   cmake      the consumer's CMake project through find_package(Rkv): Rkv::rkv and
#              Rkv::rkv_static, plus the version / component probes in its CMakeLists.txt
# Each mode also builds the executor's toy engine loop (docs/examples/toy_engine.c, the loop
# docs/EMBEDDING.md walks through) against the prefix and serves its swap and fork workloads.
# Both check with ldd that the shared consumer loads librkv.so.<major> from the prefix and no
# CUDA library, and that the static one needs no librkv.so at all.
# usage: check_consumer.sh pkgconfig|cmake BUILD_DIR WORK_DIR [COMPONENTS [ABSENT]]
# env:   CMAKE (cmake to use), CC (compiler), RKV_CONSUMER_FLAGS (e.g. sanitizer flags: the
#        consumer must be built like the library), RKV_SOURCE_DIR (must not leak into the
#        installed files)
# Exit 77 (skip) only when pkg-config (pkgconfig mode) or ldd is missing.
set -u
mode=$1
build=$2
work=$3
components=${4:-}
absent=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
cmake=${CMAKE:-cmake}
cc=${CC:-cc}
flags=${RKV_CONSUMER_FLAGS:-}

fail() {
  echo "FAIL: $*"
  exit 1
}
command -v ldd >/dev/null 2>&1 || { echo "SKIP: no ldd"; exit 77; }
if [ "$mode" = pkgconfig ] && ! command -v pkg-config >/dev/null 2>&1; then
  echo "SKIP: no pkg-config (apt-get install pkg-config)"
  exit 77
fi

rm -rf "$work"
mkdir -p "$work"
prefix=$work/prefix
"$cmake" --install "$build" --prefix "$prefix" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; fail "cmake --install"; }

# The installed tree stands alone: no path into the source or build tree in its metadata.
for f in "$prefix"/lib*/pkgconfig/rkv.pc "$prefix"/lib*/cmake/Rkv/*.cmake; do
  [ -f "$f" ] || fail "missing $f"
  if [ -n "${RKV_SOURCE_DIR:-}" ] && grep -qF "$RKV_SOURCE_DIR" "$f"; then
    fail "$f names the source tree"
  fi
  if grep -qF "$build" "$f"; then fail "$f names the build tree"; fi
done

# ldd_check BINARY shared|static
ldd_check() {
  out=$(ldd "$1") || fail "ldd $1"
  echo "ldd $(basename "$1"):"
  echo "$out"
  if echo "$out" | grep -Eiq 'libcuda|libcudart|libnccl|libcublas|libnvrtc|libnvJitLink'; then
    fail "$1 needs a CUDA library"
  fi
  if echo "$out" | grep -q 'not found'; then fail "$1 has unresolved libraries"; fi
  if [ "$2" = shared ]; then
    echo "$out" | grep -q "librkv.so.[0-9]* => $prefix/" || fail "$1 does not load librkv from $prefix"
  elif echo "$out" | grep -q librkv; then
    fail "$1 is linked statically but needs librkv.so"
  fi
}

run() {
  "$1" >"$1.out" 2>&1
  rc=$?
  cat "$1.out"
  [ $rc -eq 0 ] || fail "$1 exited $rc"
  grep -q "^consumer: ok" "$1.out" || fail "$1 did not finish"
}

src=$here/consumer/consumer.c
toy=$(cd "$here/../../docs/examples" && pwd)/toy_engine.c
if [ "$mode" = pkgconfig ]; then
  export PKG_CONFIG_PATH="$(echo "$prefix"/lib*/pkgconfig)"
  cflags=$(pkg-config --cflags rkv) || fail "pkg-config --cflags rkv"
  libs=$(pkg-config --libs rkv) || fail "pkg-config --libs rkv"
  slibs=$(pkg-config --static --libs rkv) || fail "pkg-config --static --libs rkv"
  libdir=$(pkg-config --variable=libdir rkv)
  echo "pkg-config rkv $(pkg-config --modversion rkv): cflags: $cflags"
  echo "  libs: $libs"
  echo "  static libs: $slibs"
  # Shared: the installed library is found through an rpath, as an application would set one.
  # shellcheck disable=SC2086
  $cc -std=c11 $flags -o "$work/consumer_shared" "$src" $cflags $libs -Wl,-rpath,"$libdir" ||
    fail "shared link"
  # Static: librkv.a, then the libraries it needs; --as-needed drops the -lrkv (shared) that
  # Libs repeats, whose symbols librkv.a already defined.
  # shellcheck disable=SC2086
  $cc -std=c11 $flags -o "$work/consumer_static" "$src" $cflags -Wl,-Bstatic -lrkv -Wl,-Bdynamic \
    -Wl,--as-needed $slibs || fail "static link"
  # shellcheck disable=SC2086
  $cc -std=c11 $flags -o "$work/toy_engine" "$toy" $cflags $libs -lm -Wl,-rpath,"$libdir" ||
    fail "toy engine link"
elif [ "$mode" = cmake ]; then
  "$cmake" -S "$here/consumer" -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_C_COMPILER="$cc" -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" \
    -DCMAKE_BUILD_TYPE=Release "-DRKV_COMPONENTS=$components" "-DRKV_ABSENT=$absent" \
    "-DRKV_TOY_ENGINE=$toy" \
    >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; fail "consumer configure"; }
  grep -E "Rkv |fails as it must" "$work/configure.log"
  "$cmake" --build "$work/cmake" >"$work/build.log" 2>&1 ||
    { cat "$work/build.log"; fail "consumer build"; }
  cp "$work/cmake/consumer_shared" "$work/cmake/consumer_static" "$work/cmake/toy_engine" "$work/"
else
  fail "unknown mode $mode"
fi

ldd_check "$work/consumer_shared" shared
ldd_check "$work/consumer_static" static
run "$work/consumer_shared"
run "$work/consumer_static"
ldd_check "$work/toy_engine" shared
for wl in "swap rkv" "fork-optimistic snapkv"; do
  # shellcheck disable=SC2086
  out=$("$work/toy_engine" $wl 2>&1) || { echo "$out"; fail "toy_engine $wl"; }
  echo "$out"
  echo "$out" | grep -q ": ok$" || fail "toy_engine $wl did not finish"
done
if [ "$mode" = pkgconfig ]; then
  # rkv.pc's cuda variable says what the library reports at run time.
  built=no
  grep -q "cuda built in" "$work/consumer_shared.out" && built=yes
  [ "$(pkg-config --variable=cuda rkv)" = $built ] || fail "rkv.pc cuda= disagrees with the library"
fi
echo "PASS: $mode consumer (shared and static)"
