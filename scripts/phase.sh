# Sourced by scripts/test.sh and scripts/sanitize.sh: phase NAME CMD... runs CMD and, where
# BATON_PHASE_LOG names a file, appends how long it took (and its exit status if it failed).
phase() {
  local name=$1 t0=$SECONDS rc=0
  shift
  "$@" || rc=$?
  [ -z "${BATON_PHASE_LOG:-}" ] ||
    printf '%-24s %5d s%s\n' "$name" $((SECONDS - t0)) "$([ $rc = 0 ] || echo "  (failed: $rc)")" >> "$BATON_PHASE_LOG"
  return $rc
}

# seed_costs BUILD_DIR NAME: where BUILD_DIR has no timings of its own yet (a fresh clone), gives
# ctest those of tests/ctest_costs/NAME.txt (the tests of 1 s or more in an earlier run of that
# build), so that `ctest -j` starts the long tests first instead of in definition order.
seed_costs() {
  local dir=$1/Testing/Temporary
  [ -f "$dir/CTestCostData.txt" ] || { mkdir -p "$dir" && cp "tests/ctest_costs/$2.txt" "$dir/CTestCostData.txt"; }
}
