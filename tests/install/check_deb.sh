#!/bin/sh
# `cpack -G DEB` from the build directory makes a .deb whose contents are the install tree
# under /usr: the shared library with its soname link and dev link, the static library, every
# public header and <rkv/version.h>, rkv.pc, the CMake package files and the rkv tool; its
# control data has the version, a shlibs file and no dependency on a CUDA package.
# usage: check_deb.sh BUILD_DIR WORK_DIR VERSION SONAME
# env:   CPACK (cpack to use)
# Exit 77 (skip) only when dpkg-deb is missing (not a Debian system).
set -u
build=$1
work=$2
version=$3
soname=$4
cpack=${CPACK:-cpack}
command -v dpkg-deb >/dev/null 2>&1 || { echo "SKIP: no dpkg-deb (not a Debian system)"; exit 77; }
rm -rf "$work"
mkdir -p "$work"
# Uncompressed: the listing is the same, and compressing ~20 MB would be most of the time.
if ! "$cpack" -G DEB --config "$build/CPackConfig.cmake" -B "$work" \
  -D CPACK_DEBIAN_COMPRESSION_TYPE=none >"$work/cpack.log" 2>&1; then
  cat "$work/cpack.log"
  echo "FAIL: cpack -G DEB"
  exit 1
fi
deb=$(ls "$work"/*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || { cat "$work/cpack.log"; echo "FAIL: no .deb in $work"; exit 1; }
echo "package $(basename "$deb")"
dpkg-deb -c "$deb" >"$work/contents.txt" || { echo "FAIL: dpkg-deb -c"; exit 1; }
dpkg-deb -f "$deb" >"$work/control.txt" || { echo "FAIL: dpkg-deb -f"; exit 1; }
cat "$work/control.txt"

fail=0
# want PATTERN: a line of `dpkg-deb -c` (permissions ... ./path [-> target]) matches.
want() {
  if grep -Eq "$1" "$work/contents.txt"; then
    echo "ok   $2"
  else
    echo "FAIL $2 (no entry matching $1)"
    fail=1
  fi
}
want " \./usr/lib/(.*/)?librkv\.so\.$version\$" "librkv.so.$version"
want " \./usr/lib/(.*/)?$soname -> librkv\.so\.$version\$" "$soname -> librkv.so.$version"
want " \./usr/lib/(.*/)?librkv\.so -> $soname\$" "librkv.so -> $soname"
want " \./usr/lib/(.*/)?librkv\.a\$" "librkv.a"
for h in rkv runtime blockmgr evict attention scheduler comm topo qwindow version; do
  want " \./usr/include/rkv/$h\.h\$" "include/rkv/$h.h"
done
want " \./usr/lib/(.*/)?pkgconfig/rkv\.pc\$" "pkgconfig/rkv.pc"
for f in RkvConfig RkvConfigVersion RkvTargets; do
  want " \./usr/lib/(.*/)?cmake/Rkv/$f\.cmake\$" "cmake/Rkv/$f.cmake"
done
want " \./usr/bin/rkv\$" "bin/rkv"

grep -q "^Version: $version" "$work/control.txt" || { echo "FAIL: Version is not $version"; fail=1; }
if grep -i '^Depends:' "$work/control.txt" | grep -Eiq 'cuda|nccl|nvidia'; then
  echo "FAIL: the package depends on a CUDA package"
  fail=1
fi
if dpkg-deb --ctrl-tarfile "$deb" | tar -t 2>/dev/null | grep -q shlibs; then
  echo "ok   control: shlibs"
else
  echo "FAIL control: no shlibs file"
  fail=1
fi
[ $fail -eq 0 ] && echo "PASS"
exit $fail
