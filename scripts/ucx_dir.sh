#!/usr/bin/env bash
# Lays out the UCX that baton builds and runs on as one prefix (DESIGN.md, "Where UCX comes from"):
#   include/     UCX 1.22's headers from PyPI libucx-cu13 (the UCP API; UCX keeps it compatible
#                within 1.x, and the library checks the API version at ucp_init)
#   lib/         UCX 1.23's libraries from PyPI nixl-cu13: the only registry UCX built with both
#                CUDA (cuda_copy, cuda_ipc, gdrcopy-less GPU memory) and verbs (rc, dc, ud,
#                mlx5) transports, with its own rdma-core; names as the wheel spells them
#   lib/ucx/     its transport modules under the names UCX's loader looks for (the wheel kept
#                only libuct_X.so.0.0.0; UCX searches the directory of the libucs it was loaded
#                from, which is why lib/ holds links and not the wheel's own directory)
#   lib/pkgconfig/ucx.pc, bin/ucx_perftest and ucx_info (libucx-cu13's, run on this lib/)
# Usage: scripts/ucx_dir.sh SITE_PACKAGES DEST [--copy]
#   --copy: real files instead of links (a prefix that can travel: bench/gpu/prepare_deps.sh)
set -euo pipefail
site=$1 dest=$2 mode=${3:-}
ucx_headers=$site/libucx
nixl_libs=$site/nixl_cu13.libs
[ -d "$ucx_headers/include/ucp" ] || { echo "ucx_dir: no UCX headers in $ucx_headers (pip libucx-cu13)" >&2; exit 1; }
[ -d "$nixl_libs/ucx" ] || { echo "ucx_dir: no UCX libraries in $nixl_libs (pip nixl-cu13)" >&2; exit 1; }
link() {  # link TARGET NAME
  if [ "$mode" = --copy ]; then cp -L "$1" "$2"; else ln -sfn "$1" "$2"; fi
}
rm -rf "$dest" && mkdir -p "$dest/lib/ucx" "$dest/lib/pkgconfig" "$dest/bin"
if [ "$mode" = --copy ]; then cp -r "$ucx_headers/include" "$dest/include"; else ln -sfn "$ucx_headers/include" "$dest/include"; fi
# The UCX libraries and what they need (rdma-core, numa, netlink), under their own names; the
# plain sonames too, for libucx-cu13's tools.
for f in "$nixl_libs"/lib{ucp,ucs,uct,ucm,ibverbs,mlx5,numa,nl-3,nl-route-3}-*.so*; do
  link "$f" "$dest/lib/$(basename "$f")"
done
for l in ucp ucs uct ucm; do
  ln -sfn "$(cd "$dest/lib" && ls lib$l-*.so*)" "$dest/lib/lib$l.so.0"
  ln -sfn "lib$l.so.0" "$dest/lib/lib$l.so"
done
# Not ib_efa (AWS EFA): it needs the system's libefa, which brings a second rdma-core into the
# process (the system's libibverbs beside the wheel's), and the two crash at exit.
for f in "$nixl_libs"/ucx/*.so.0.0.0; do
  base=$(basename "$f" .0.0.0)
  [ "$base" = libuct_ib_efa.so ] && continue
  link "$f" "$dest/lib/ucx/$base.0.0.0"
  ln -sfn "$base.0.0.0" "$dest/lib/ucx/$base.0"
  ln -sfn "$base.0.0.0" "$dest/lib/ucx/$base"
done
version=$(sed -n 's/^Version: *//p' "$ucx_headers"/../libucx_cu13-*.dist-info/METADATA 2>/dev/null | head -1)
cat > "$dest/lib/pkgconfig/ucx.pc" <<EOF
prefix=\${pcfiledir}/../..
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: ucx
Description: UCX (headers: libucx-cu13 ${version:-?}; libraries: nixl-cu13's, CUDA and verbs)
Version: ${version:-1.22.0}
Cflags: -I\${includedir}
Libs: -L\${libdir} -lucp -luct -lucs -lucm
EOF
# The tools, run on lib/ (their own rpath names a build directory) with the OpenMP runtime the
# wheel ships for them.
for f in "$site"/libucx_cu13.libs/libgomp-*.so*; do link "$f" "$dest/lib/$(basename "$f")"; done
for b in ucx_perftest ucx_info; do
  link "$ucx_headers/bin/$b" "$dest/bin/.$b"
  printf '#!/bin/sh\nd=$(dirname "$(readlink -f "$0")")\nLD_LIBRARY_PATH="$d/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/.%s" "$@"\n' \
    "$b" > "$dest/bin/$b"
  chmod +x "$dest/bin/$b"
done
