#!/usr/bin/env bash
# GPU verification in one call, for a fresh GPU machine (Python with torch+CUDA, nvcc, ninja,
# pybind11, pytest; no network): builds the CUDA extension in place, runs the whole test suite,
# runs the benchmark, and writes benchmarks/results/<device>-<date>.json and .log. Copies both
# to $OUT when it is set (the device tool brings that folder back). Exit status: the tests'.
#
#   FUSEDOPTIM_COMMIT=$(git rev-parse HEAD) benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# pytest-xdist workers share the cores: two OpenMP threads each, not $(nproc) each.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
PY="${PYTHON:-python3}"

slug=$("$PY" -c "import re, torch; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name()).strip('-').lower())")
name="benchmarks/results/${slug}-$(date -u +%Y%m%d)"
log="$name.log"
junit="$(mktemp -d)/junit.xml"
mkdir -p benchmarks/results

{
  echo "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], '| torch', torch.__version__, '| CUDA', torch.version.cuda)"
  nvcc --version | tail -1

  echo "== build"
  start=$SECONDS
  "$PY" setup.py build_ext --inplace > /tmp/fusedoptim_build.log 2>&1 || { tail -50 /tmp/fusedoptim_build.log; exit 3; }
  echo "built in $((SECONDS - start)) s"
  "$PY" -c "import fusedoptim; assert fusedoptim.cuda_kernels_compiled(), 'no CUDA kernels in the build'; print('CUDA kernels: yes')" || exit 3

  echo "== tests"
  start=$SECONDS
  workers=()
  if "$PY" -c "import xdist" 2>/dev/null; then workers=(-n 8 --dist loadfile); fi
  timeout 300 "$PY" -m pytest -q -p no:cacheprovider "${workers[@]}" --junitxml="$junit" tests 2>&1 | tail -40
  test_status=${PIPESTATUS[0]}
  echo "tests exited $test_status in $((SECONDS - start)) s"

  echo "== benchmark"
  start=$SECONDS
  "$PY" benchmarks/gpu_check.py --junit "$junit" --out "$name.json"
  echo "benchmark exited $? in $((SECONDS - start)) s"
  exit "$test_status"
} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ -n "${OUT:-}" ]; then cp "$name.json" "$log" "$OUT"/ 2>/dev/null; fi
exit "$status"
