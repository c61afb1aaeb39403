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
