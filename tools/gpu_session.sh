#!/usr/bin/env bash
# One script for a lent GPU (the `device` tool; see DEVELOPERS.md): build, CUDA correctness, sanitizers and the
# benchmark report, in stages that each fit one 10-minute call. Every stage writes its logs under $OUT (default
# ./gpu-out) and prints a short summary last.
#
#   tools/gpu_session.sh build      # pip install (sm_90), fastgan info                          ~3-5 min
#   tools/gpu_session.sh test       # build + pytest on CUDA (cuda and triton impls)              ~5 min
#   tools/gpu_session.sh sanitize   # build + compute-sanitizer memcheck/racecheck, small cases   ~5 min
#   tools/gpu_session.sh bench      # build + `fastgan bench` (default preset on CUDA) -> report  ~6 min
#                                   # (every suite but sampling, which has its own stage)
#   tools/gpu_session.sh sampling   # build + CUDA-graph sampler tests + the sampling-loop report ~5 min
#   tools/gpu_session.sh first      # all of it in brief, for a 15-minute lease: one call     <= 9 min
#
# A lease is 15 minutes of device time in all, the machine's start included, so a session that gets one runs
# `first` (timeout_s 600) and, with time left, one of the full stages.
# The device machine keeps nothing between sessions, so each stage builds first (a warm machine reuses ./build).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:-test}
OUT=${OUT:-$(pwd)/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}

build() {
  FASTGAN_CUDA_ARCHS=${FASTGAN_CUDA_ARCHS:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
    "$PY" -m pip install --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  # Run from outside the checkout so the installed package (with _C) is imported, not ./fastgan.
  (cd /tmp && "$PY" -m fastgan info) | tee "$OUT/info.txt"
}

op_suites() {  # --suite for every suite but sampling (whole 1000-step loops: the sampling stage runs them)
  (cd /tmp && "$PY" -c "from fastgan.bench.suites import all_suites
print(' '.join('--suite ' + s for s in all_suites() if s != 'sampling'))")
}

case "$stage" in
  build) build ;;
  test)
    build
    # TRITON_INTERPRET=0: Triton runs compiled on the GPU; the tests parametrize every live CUDA impl.
    TRITON_INTERPRET=0 FASTGAN_REQUIRE_EXT=1 "$PY" -m pytest tests -q -rs -p no:cacheprovider \
      --ignore=tests/test_metrics.py --ignore=tests/test_datasets.py >"$OUT/pytest.log" 2>&1 || true
    tail -30 "$OUT/pytest.log"
    ;;
  sanitize)
    build
    for tool in memcheck racecheck; do
      TRITON_INTERPRET=0 compute-sanitizer --tool "$tool" --error-exitcode 9 "$PY" -m pytest -q -x -p no:cacheprovider \
        tests/test_instance_norm.py -k "cuda-cuda and (forward or backward) and not gradcheck" \
        >"$OUT/sanitizer-$tool.log" 2>&1 && echo "$tool: clean" || { echo "$tool: FAILED"; tail -20 "$OUT/sanitizer-$tool.log"; }
    done
    ;;
  bench)
    build
    # shellcheck disable=SC2046,SC2086
    (cd /tmp && "$PY" -m fastgan bench --out "$OUT/bench" $(op_suites) ${BENCH_ARGS:-}) >"$OUT/bench.log" 2>&1 || true
    tail -40 "$OUT/bench.log"
    ;;
  sampling)
    build
    # Whole 1000-step loops (seconds each): the graphed sampler's tests first, then its report.
    TRITON_INTERPRET=0 FASTGAN_REQUIRE_EXT=1 "$PY" -m pytest tests/test_samplers.py -q -rs -p no:cacheprovider \
      >"$OUT/pytest-samplers.log" 2>&1 || true
    tail -15 "$OUT/pytest-samplers.log"
    (cd /tmp && "$PY" -m fastgan bench --suite sampling --no-compile --out "$OUT/bench-sampling" ${BENCH_ARGS:-}) \
      >"$OUT/bench-sampling.log" 2>&1 || true
    tail -20 "$OUT/bench-sampling.log"
    ;;
  first)
    # Each part under its own timeout so the call ends inside 10 minutes whatever hangs; at most 8 files come
    # back from $OUT, so the report is written without its PNG.
    start=$SECONDS
    build
    echo "build: $((SECONDS - start)) s"
    TRITON_INTERPRET=0 FASTGAN_REQUIRE_EXT=1 timeout 200 "$PY" -m pytest -q -rs -p no:cacheprovider -k cuda \
      tests/test_instance_norm.py tests/test_bias_act.py tests/test_grad_penalty_op.py tests/test_group_norm.py \
      tests/test_diffusion.py tests/test_samplers.py tests/test_bench.py >"$OUT/pytest.log" 2>&1 || true
    tail -12 "$OUT/pytest.log"
    echo "tests: $((SECONDS - start)) s"
    TRITON_INTERPRET=0 timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" -m pytest -q -x \
      -p no:cacheprovider tests/test_instance_norm.py -k "cuda-cuda and forward and not gradcheck" \
      >"$OUT/sanitizer.log" 2>&1 && echo "memcheck: clean" ||
      { echo "memcheck: FAILED or timed out"; tail -5 "$OUT/sanitizer.log"; }
    # shellcheck disable=SC2046
    (cd /tmp && timeout 150 "$PY" -m fastgan bench --quick --no-png --out "$OUT/bench" $(op_suites)) \
      >"$OUT/bench.log" 2>&1 || true
    grep -A40 "^## Goals" "$OUT/bench/report.md" 2>/dev/null | head -45 || tail -20 "$OUT/bench.log"
    echo "total: $((SECONDS - start)) s"
    ;;
  *) echo "unknown stage $stage (build|test|sanitize|bench|sampling|first)"; exit 2 ;;
esac
