#!/usr/bin/env bash
# A/B against an earlier commit in one GPU call: the earlier build's baton-bench beside this one.
#   bash bench/gpu/ab_base.sh prepare REV   on this VM: the files that differ between REV and the
#                                           working tree, as of REV, into .device/ab_base/ (carried
#                                           with .device)
#   bash bench/gpu/ab_base.sh build         on the GPU machine: builds those into
#                                           /tmp/baton-bench-base, then the working tree again
# then e.g. AB_CONFIGS="bin=/tmp/baton-bench-base;default" bash bench/gpu/cuda.sh ab
set -euo pipefail
cd "$(dirname "$0")/../.."
case ${1:-} in
  prepare)
    rm -rf .device/ab_base && mkdir -p .device/ab_base
    for f in $(git diff --name-only "${2:?a commit}" -- src apps); do
      mkdir -p ".device/ab_base/$(dirname "$f")"
      git show "$2:$f" > ".device/ab_base/$f" 2>/dev/null || rm -f ".device/ab_base/$f"  # new since REV: kept
    done
    (cd .device/ab_base && find . -type f | sed 's#^\./##')
    ;;
  build)
    files=$(cd .device/ab_base && find . -type f | sed 's#^\./##')
    rm -rf /tmp/ab_new && mkdir -p /tmp/ab_new
    for f in $files; do
      mkdir -p "/tmp/ab_new/$(dirname "$f")" "$(dirname "$f")"
      if [ -f "$f" ]; then cp "$f" "/tmp/ab_new/$f"; fi
      cp ".device/ab_base/$f" "$f"
    done
    bash bench/gpu/build.sh
    cp build-gpu/apps/baton-bench /tmp/baton-bench-base
    for f in $files; do  # newer than the objects: rebuilt by the next build
      if [ -f "/tmp/ab_new/$f" ]; then cp "/tmp/ab_new/$f" "$f"; else rm "$f"; fi
    done
    ;;
  *)
    echo "usage: bench/gpu/ab_base.sh prepare REV | build" >&2
    exit 2
    ;;
esac
