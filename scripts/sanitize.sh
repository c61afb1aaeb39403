#!/usr/bin/env bash
# Builds baton with sanitizers and runs the tests that matter for them (called by scripts/test.sh):
#   scripts/sanitize.sh asan   # AddressSanitizer + UndefinedBehaviorSanitizer: unit and e2e tests
#   scripts/sanitize.sh tsan   # ThreadSanitizer: engine/scheduler, transfer engine, server, proxy, P/D
# Extra arguments go to ctest. The build is -O0 -g1 in build-asan/ or build-tsan/: line tables are
# enough for the reports' stacks (10% less compile time than -g), and -O0 compiles in half the
# time of -O1 (src/server/http.cpp under ASan: 32 s against 64); src/CMakeLists.txt keeps the
# code the tests spend their time in at -O1.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?usage: scripts/sanitize.sh asan|tsan [ctest args]}
shift
case "$MODE" in
  asan) SAN="address,undefined"
        # UBSan's null and alignment checks, which instrument every memory access, make g++ take
        # half as long again over the whole build (src/server/http.cpp: 72 s with them, 49-51
        # without, 48 for ASan alone). A null dereference still stops the run here (ASan reports
        # the SEGV with its stack); both checks stay on in scripts/fuzz.sh's full UBSan (clang).
        # vptr: its check reads the object's memory through a pipe, which fails once a test has
        # used up the file descriptors (AdmissionTest, e2e_security's fd exhaustion) and is then
        # reported as an invalid vptr; ASan still sees bad accesses through a dangling object.
        SKIP="null,alignment,vptr"
        # The fuzz corpora replay here (corpus_*); libFuzzer runs (fuzz_*, -DBATON_CTEST_LIBFUZZER)
        # are sanitized already; the Python reference diffs test the tokenizer, which the unit
        # tests cover under ASan too.
        # The soak runs in the main build (ASan would make the chaos restarts slow, not find more).
        TESTS=(-E '^(fuzz_|tokenizer_differential|chat_template_differential|e2e_soak)')
        TARGETS=(all)
        export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
        export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp"
        export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ;;
  tsan) SAN="thread"
        SKIP=""
        TESTS=(-R '^(EngineTest|BlockManagerTest|ThreadPoolTest|Transports/XferTest|XferCoalesceTest|ReadSectionTest|CapabilityTest|AdmissionTest|Cases/KvHandoffTest|e2e_openai_server|e2e_pd)')
        # Over TCP only: UCX is not built with TSan, and its internal synchronisation (progress
        # thread callbacks, spinlocks) shows up as false races.
        # The 1 GiB copy test is a bandwidth test; TSan only makes it slow.
        # The tiny-pool preemption test is the engine loop alone (one thread): ASan runs it.
        TESTS+=(-E '"ucx"|_ucx_|OneGib|PreemptionUnderATinyPool')
        export BATON_XFER_NO_UCX=1
        TARGETS=(engine_test xfer_test xfer_peer disagg_test common_test baton-server baton-proxy baton-generate)
        export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/scripts/tsan.supp" ;;
  *) echo "sanitize.sh: mode must be asan or tsan" >&2; exit 2 ;;
esac
export BATON_SANITIZER_RUN=1  # e2e tests cover fewer configurations (tests/e2e/server_util.py)
# UCX patches malloc/mmap to track memory types; that fights the sanitizers' own interceptors.
export UCX_MEM_MALLOC_HOOKS=no UCX_MEM_EVENTS=no
BUILD_DIR=build-$MODE
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O0 -g1" \
  -DBATON_SANITIZE="$SAN" -DBATON_SANITIZE_SKIP="$SKIP" -DBATON_BUILD_BENCH=OFF -DBATON_NATIVE=OFF -DBATON_CUDA=OFF >/dev/null
source scripts/phase.sh
phase "$MODE build" cmake --build "$BUILD_DIR" -j "$(nproc)" --target "${TARGETS[@]}"
seed_costs "$BUILD_DIR" "$MODE"
phase "$MODE tests" ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$(nproc)" "${TESTS[@]}" "$@"
