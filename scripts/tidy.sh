#!/usr/bin/env bash
# clang-tidy (.clang-tidy's checks) on the C++ sources a change touches, with the flags the build
# compiled them with (called by scripts/test.sh after the Release build):
#   scripts/tidy.sh [BUILD_DIR [BASE]]   # files changed since BASE (default: HEAD~1)
# In a unity build a file has no compile command of its own: it takes that of the batch that
# includes it.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:-build}
BASE=${2:-${BATON_TIDY_BASE:-HEAD~1}}
git rev-parse -q --verify "$BASE^{commit}" >/dev/null || { echo "tidy: no $BASE to compare with; nothing to check"; exit 0; }
mapfile -t files < <(git diff --name-only --diff-filter=AM "$BASE" -- 'src/*.cpp' 'apps/*.cpp' 'tests/*.cpp')
[ ${#files[@]} -gt 0 ] || { echo "tidy: no C++ source changed since $BASE"; exit 0; }
status=0
for f in "${files[@]}"; do
  cmd=$(python3 - "$BUILD_DIR" "$PWD/$f" <<'PY'
import json, sys, pathlib
build, path = sys.argv[1], sys.argv[2]
for e in json.load(open(pathlib.Path(build) / "compile_commands.json")):
    src = e["file"]
    if src == path or (("/Unity/" in src) and f'#include "{path}"' in open(src).read()):
        args = e["command"].split()
        out = [a for i, a in enumerate(args[1:]) if a not in ("-c", "-o") and args[i] not in ("-o", "-c")
               and not a.startswith(("-W", "-march", "-fsanitize")) and a != src and not a.endswith(".o")]
        print(" ".join(out))
        break
PY
)
  if [ -z "$cmd" ]; then echo "tidy: $f is not in $BUILD_DIR's build; skipped"; continue; fi
  echo "tidy: $f"
  # shellcheck disable=SC2086
  if ! out=$(clang-tidy --quiet "$f" -- $cmd -Wno-unknown-warning-option 2>&1); then status=1; fi
  printf '%s\n' "$out" | grep -v "warnings generated" || true
done
exit $status
