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
#   tools/gpu_session.sh first      # all of it in brief, for a 15-minute lease: one call    DEADLINE_S (570 s)
#   tools/gpu_session.sh recheck    # a later lease: build, CUDA tests, sanitizer, every issue goal (bench
#                                   # --quick), host profile, StarGAN v2 profile, sampling    DEADLINE_S (560 s)
#
# A lease is 15 minutes of device time in all, the machine's start included, so a session that gets one runs
# `first` (run timeout_s 590, carry [".whl"] for the FID network copy) and gives the machine back.
# The device machine keeps nothing between sessions, so each stage builds first (a warm machine reuses ./build).
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${1:-test}
OUT=${OUT:-$(pwd)/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}

build() {
  FASTGAN_CUDA_ARCHS=${FASTGAN_CUDA_ARCHS:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
    "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  # Editable (in place): `python -m pytest` from the checkout imports ./fastgan, which must hold the built _C.
  (cd /tmp && "$PY" -m fastgan info) | tee "$OUT/info.txt"
}

op_suites() {  # --suite for every suite but sampling (whole 1000-step loops: the sampling stage runs them),
  # those with the issues' GPU goals first, so that a run cut short by --time-limit has measured them
  (cd /tmp && "$PY" -c "from fastgan.bench.suites import all_suites
first = ['instance_norm', 'bias_act', 'adain', 'spade', 'grad_penalty', 'group_norm', 'ddpm_step', 'ddim_step',
         'stargan_v2']
names = [s for s in all_suites() if s != 'sampling']
print(' '.join('--suite ' + s for s in sorted(names, key=lambda s: (first + names).index(s))))")
}

# The lease stages (`first`, `recheck`) share these: every part is cut to what is left of DEADLINE_S.
t0=$SECONDS
sum="$OUT/summary.txt"
say() { echo "[$((SECONDS - t0)) s] $*" | tee -a "$sum"; }
slot() {  # slot CAP RESERVE: seconds for the next part, at most CAP, leaving RESERVE for the parts after it
  local left=$((deadline - (SECONDS - t0) - $2))
  if ((left < $1)); then echo $((left > 1 ? left : 1)); else echo "$1"; fi  # never 0: timeout 0 = no limit
}

lease_build() {  # CAP RESERVE: the extension built in place (editable), so that `python -m` from the checkout
  # and the tests import it; on failure the rest runs the Triton and reference impls only
  export FASTGAN_REQUIRE_EXT=1 TRITON_INTERPRET=0 PYTHONPATH="$(pwd)/tools${PYTHONPATH:+:$PYTHONPATH}"
  export FASTGAN_CUDA_ARCHS=${FASTGAN_CUDA_ARCHS:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  if timeout "$(slot "$1" "$2")" "$PY" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
    say "build ok"
  elif say "pip install -e failed: $(tail -3 "$OUT/build.log" | tr '\n' ' ')"; timeout "$(slot "$1" "$2")" \
      "$PY" setup.py build_ext --inplace >>"$OUT/build.log" 2>&1; then
    say "build ok (setup.py build_ext --inplace)"
  else
    say "BUILD FAILED: the rest runs the Triton and reference impls only"; tail -25 "$OUT/build.log" >>"$sum"
    FASTGAN_REQUIRE_EXT=0
  fi
  "$PY" -m fastgan info >>"$sum" 2>&1 || true
}

sanitize_cuda_cpp() {  # SECONDS each: memcheck and racecheck (it uses shared memory) on the CUDA C++ instance
  # norm's forward/backward tests, without torch's caching allocator, so that an access past a tensor's end
  # leaves its allocation
  local tool rc
  for tool in memcheck racecheck; do
    echo "== $tool instance_norm cuda-cuda" >>"$OUT/sanitizer.log"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$1" compute-sanitizer --tool "$tool" --error-exitcode 9 "$PY" -m pytest \
      -q -x -p no:cacheprovider tests/test_instance_norm.py -k "cuda-cuda and (forward or backward) and not gradcheck" \
      >>"$OUT/sanitizer.log" 2>&1 && rc=0 || rc=$?
    echo "== $tool exit $rc" >>"$OUT/sanitizer.log"
  done
}

sanitize_all() {  # the CUDA C++ kernel, then the Triton kernels of the other ops (memcheck), small cases
  local rc
  sanitize_cuda_cpp 70
  echo "== memcheck triton forwards" >>"$OUT/sanitizer.log"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 90 compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" -m pytest \
    -q -p no:cacheprovider tests/test_bias_act.py tests/test_group_norm.py tests/test_grad_penalty_op.py \
    tests/test_diffusion.py -k "cuda-triton and forward and not gradcheck and not compile" \
    >>"$OUT/sanitizer.log" 2>&1 && rc=0 || rc=$?
  echo "== memcheck triton exit $rc" >>"$OUT/sanitizer.log"
}

tests_and_sanitizer() {  # "SANITIZER COMMAND" SECONDS WORKERS: the sanitizer runs beside the tests (neither is timed)
  $1 &
  local pid=$!
  cuda_tests "$2" "$3"
  wait "$pid" || true
  say "sanitizer: $(grep '^== .* exit' "$OUT/sanitizer.log" 2>/dev/null | tr '\n' ' ')"
}

cuda_tests() {  # SECONDS WORKERS: every CUDA-parametrised test under xdist, failures streamed to failures.txt as
  # they happen (a cut run keeps them); the metrics and dataset tests need data packages the machine lacks
  local rc
  FASTGAN_FAILURES_FILE="$OUT/failures.txt" timeout "$1" "$PY" -m pytest tests -n "$2" -q -rfE --tb=short \
    --timeout 150 --continue-on-collection-errors -p no:cacheprovider -p pytest_failures_now -k cuda \
    --ignore=tests/test_metrics.py --ignore=tests/test_datasets.py --ignore=tests/test_cli_eval.py \
    >"$OUT/pytest.log" 2>&1 && rc=0 || rc=$?
  say "tests (exit $rc; 124 = cut by the slot): $(grep -E '[0-9]+ (passed|failed|error)|no tests ran' \
    "$OUT/pytest.log" | tail -1)"
}

fid_throughput() {  # SECONDS: FID feature extraction, images/s per precision. The weights file (87 MB) cannot travel
  # (64 MiB a call); an fp16 copy can, made here with `python -c "import torch; m = torch.jit.load(P); m.half();
  # torch.jit.save(m, '.whl/inception_fp16.pt')"` (P: fastgan.metrics.inception.weights_path()) and carried
  # (carry [".whl"]): the same network, so the same speed; the FIDs between precisions are then only a proxy.
  # Its SHA-1 is not the real file's, so the check is skipped in this measurement only.
  [ -f .whl/inception_fp16.pt ] || { say "no .whl/inception_fp16.pt: FID throughput not measured"; return 0; }
  say "FID feature extraction:"
  FASTGAN_INCEPTION_WEIGHTS=.whl/inception_fp16.pt timeout "$1" "$PY" -c "
import fastgan.metrics.inception as inc, fastgan.metrics.throughput as tp
inc._verify_sha1 = lambda path: None
tp.main(['--device', 'cuda', '--dtypes', 'fp32', 'fp16', 'bf16', '--batch-size', '200', '--batches', '10',
         '--compare', '1000'])" >>"$sum" 2>&1 || say "fid throughput failed or timed out"
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
    # The whole first look in one call, for a 15-minute lease (the machine's start takes a minute or two of it).
    # Every part is cut to what is left of DEADLINE_S (default 570 s from here), most important first: build,
    # CUDA tests (compute-sanitizer runs beside them: neither is timed), then the timed parts one at a time (see
    # below). At most 8 files come back from $OUT: summary.txt (all short outputs), build.log, pytest.log,
    # failures.txt, sanitizer.log and the report.json of bench/, bench-sampling/ and bench-compile/.
    deadline=${DEADLINE_S:-570}
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv >>"$sum" 2>&1 || true
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__,
    'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())" >>"$sum" 2>&1 || true
    lease_build 300 240
    tests_and_sanitizer sanitize_all "$(slot 170 250)" 10
    # Timed parts, one at a time. --time-limit starts no case in a slot's last 30 s, and the report is rewritten
    # after each case anyway, so a cut run keeps what it measured. The markdown is rendered here afterwards from
    # report.json (fastgan.bench.report.render_markdown), which keeps the files that come back to 8.
    # 1. every op suite without the torch.compile baseline (compiling dominates otherwise), fastgan's CUDA and
    #    Triton impls against eager; 2. the sampling loops (the issue's 1000-step DDPM goal); 3. FID images/s;
    #    4. what is left: the same op cases with the torch.compile baseline, most-asked-for ops first.
    s=$(slot 110 150)
    # shellcheck disable=SC2046
    timeout "$s" "$PY" -m fastgan bench --quick --no-png --no-compile --impl cuda,triton --time-limit $((s - 30)) \
      --out "$OUT/bench" $(op_suites) >"$OUT/bench.log" 2>&1 || true
    say "bench (no compile):"; tr '\r' '\n' <"$OUT/bench.log" | grep -v '^ *$' | tail -14 >>"$sum"
    s=$(slot 90 70)
    timeout "$s" "$PY" -m fastgan bench --suite sampling --quick --no-compile --no-png \
      --out "$OUT/bench-sampling" >"$OUT/bench-sampling.log" 2>&1 || true
    say "sampling:"; tr '\r' '\n' <"$OUT/bench-sampling.log" | grep -E 'goal|done in|rror' | tail -4 >>"$sum" || true
    fid_throughput "$(slot 30 45)"
    s=$(slot 400 0)
    # shellcheck disable=SC2046
    timeout "$s" "$PY" -m fastgan bench --quick --no-png --impl cuda,triton --time-limit $((s > 60 ? s - 30 : 1)) \
      --out "$OUT/bench-compile" $(op_suites) >"$OUT/bench-compile.log" 2>&1 || true
    say "bench (with compile):"; tr '\r' '\n' <"$OUT/bench-compile.log" | grep -v '^ *$' | tail -14 >>"$sum"
    rm -f "$OUT"/bench*.log "$OUT"/bench*/report.md
    say "done"
    ;;
  recheck)
    # A later lease's one call (DEADLINE_S, default 560 s; run timeout_s 590): build; every CUDA-parametrised test
    # with compute-sanitizer on the CUDA C++ kernel beside them; the quick preset of every op suite (on CUDA it
    # holds every issue goal: instance norm, AdaIN, SPADE, bias_act, penalty op and critic steps, DDPM/DDIM steps,
    # StarGAN v2 fp32/bf16 with its channels-last variant), CUDA C++ and Triton against eager, no compile; where
    # the host time of a call goes (tools/gpu_profile.py host); a kernel profile of the StarGAN v2 iteration (torch,
    # fastgan, fastgan channels-last); the 1000-step sampling loops with one repetition each.
    # Files back: summary.txt, build.log, pytest.log, failures.txt, sanitizer.log, bench/report.json.
    deadline=${DEADLINE_S:-560}
    "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__,
    'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())" >>"$sum" 2>&1 || true
    lease_build 150 400  # measured on the H200 (16 jobs): the build takes ~100-130 s, the CUDA tests ~75 s
    tests_and_sanitizer "sanitize_cuda_cpp 50" "$(slot 100 300)" 12
    s=$(slot 150 150)
    # shellcheck disable=SC2046
    timeout "$s" "$PY" -m fastgan bench --quick --no-png --no-compile --impl cuda,triton --time-limit $((s - 20)) \
      --out "$OUT/bench" $(op_suites) >"$OUT/bench.log" 2>&1 || true
    say "bench:"; tr '\r' '\n' <"$OUT/bench.log" | grep -E 'goal|done in|rror' | tail -30 >>"$sum" || true
    say "host overhead:"
    timeout "$(slot 40 110)" "$PY" tools/gpu_profile.py host --iters 200 >>"$sum" 2>&1 || say "host profile cut or failed"
    say "stargan-v2 profile:"
    timeout "$(slot 60 50)" "$PY" tools/gpu_profile.py stargan --top 10 >>"$sum" 2>&1 || say "stargan profile cut or failed"
    # The 1000-step goal's loops, one timed loop per variant (the harness would run each five times or more, which
    # did not fit 200 s in the second lease): SAMPLING_STEPS steps, the per-step ratio being the goal's.
    say "sampling:"
    timeout "$(slot 90 0)" "$PY" tools/gpu_profile.py sampling --steps "${SAMPLING_STEPS:-300}" >>"$sum" 2>&1 \
      || say "sampling cut or failed"
    rm -f "$OUT"/bench*.log "$OUT"/bench*/report.md
    say "done"
    ;;
  *) echo "unknown stage $stage (build|test|sanitize|bench|sampling|first|recheck)"; exit 2 ;;
esac
