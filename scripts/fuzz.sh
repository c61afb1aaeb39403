#!/usr/bin/env bash
# Builds a libFuzzer target with clang (ASan + UBSan) and runs it for a bounded time from its
# committed seed corpus. New crashes are saved under build-fuzz/TARGET/ and fail the run;
# keep each fixed crash as a regression input in tests/fuzz/corpus/TARGET/.
#   scripts/fuzz.sh request_parser 30
# BATON_FUZZ_OPT=-O0 builds without optimisation into build-fuzz-O0/ instead: ctest's short runs
# do (clang compiles the HTTP target in 22 s instead of 61; those runs are regression checks from
# the corpus, where the slower executions matter less than the compile).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:?usage: scripts/fuzz.sh TARGET SECONDS}
SECONDS_TO_RUN=${2:-30}
OPT=${BATON_FUZZ_OPT:--O1}
ROOT=build-fuzz
[ "$OPT" = -O1 ] || ROOT=build-fuzz$OPT
OUT=$ROOT/$TARGET
mkdir -p "$OUT/corpus"
case "$TARGET" in
  request_parser) SRCS="src/server/openai_protocol.cpp" ;;
  chat_template) SRCS="src/model/chat_template.cpp src/model/jinja/ast.cpp src/model/jinja/builtins.cpp
                      src/model/jinja/lexer.cpp src/model/jinja/parser.cpp src/model/jinja/value.cpp" ;;
  safetensors) SRCS="src/model/safetensors.cpp" ;;
  tokenizer) SRCS="src/model/tokenizer.cpp src/model/bpe.cpp src/model/tokenizer_stages.cpp src/model/regex.cpp"
             LIBS="-lpcre2-8 -licuuc" ;;
  pd_messages) SRCS="src/proxy/instance_table.cpp src/disagg/kv_layout.cpp src/disagg/kv_transfer_config.cpp src/xfer/types.cpp" ;;
  proxy_request) SRCS="src/proxy/relay_plan.cpp" ;;
  http_server) SRCS="src/server/http.cpp src/server/openai_protocol.cpp src/xfer/socket.cpp"
               LIBS="-DBOOST_ASIO_NO_DEPRECATED" ;;
  xfer_control) SRCS="src/xfer/agent.cpp src/xfer/agent_serve.cpp src/xfer/agent_wire.cpp src/xfer/session.cpp src/xfer/read_section.cpp src/xfer/socket.cpp src/xfer/types.cpp src/xfer/ucx/no_ucx.cpp src/xfer/cuda_ipc/no_cuda_ipc.cpp" ;;
  *) echo "fuzz.sh: unknown target '$TARGET' (request_parser, chat_template, safetensors, tokenizer, pd_messages, proxy_request, xfer_control, http_server)" >&2
     exit 2 ;;
esac
COMMON="src/common/json.cpp src/common/utf8.cpp src/common/mapped_file.cpp src/common/log.cpp"
# -fno-sanitize=function: clang 14 cannot assemble that check in coroutine code (the HTTP server).
# -gline-tables-only: file:line in reports, without full debug info's compile time.
FLAGS="-std=c++20 $OPT -gline-tables-only -fsanitize=fuzzer,address,undefined -fno-sanitize=function
  -fno-sanitize-recover=undefined -Isrc"
# The sources every target links are compiled once into an archive that all targets share (ctest
# runs targets in parallel: built under a lock).
LIB=$ROOT/common/libcommon.a
mkdir -p $ROOT/common
(
  flock 9
  if [ ! -f "$LIB" ] || [ -n "$(find src/common -newer "$LIB" -name '*.[ch]*' | head -1)" ]; then
    rm -f $ROOT/common/*.o
    for f in $COMMON; do clang++ $FLAGS -c "$f" -o "$ROOT/common/$(basename "$f" .cpp).o"; done
    ar rcs "$LIB.tmp" $ROOT/common/*.o && mv "$LIB.tmp" "$LIB"
  fi
) 9> $ROOT/common.lock
if [ ! -x "$OUT/fuzzer" ] || [ "$LIB" -nt "$OUT/fuzzer" ] ||
  [ -n "$(find src tests/fuzz -newer "$OUT/fuzzer" -name '*.[ch]*' | head -1)" ]; then
  clang++ $FLAGS "tests/fuzz/${TARGET}_fuzz.cpp" $SRCS "$LIB" ${LIBS:-} -o "$OUT/fuzzer"
fi
cp -n tests/fuzz/corpus/"$TARGET"/* "$OUT/corpus/" 2>/dev/null || true
# -rss_limit_mb bounds memory; -timeout catches hangs (a render that never ends is a bug).
"$OUT/fuzzer" -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 -timeout=10 -max_len=4096 \
  -artifact_prefix="$OUT/" -print_final_stats=1 "$OUT/corpus" 2>&1 | tail -n 15
