#!/usr/bin/env bash
# benchmarks/gpu.sh: the GPU run of ft-harness in one call (project issue #24).
# Run it from anywhere on a bare CUDA machine with this working tree copied in; `bash benchmarks/gpu.sh --help`.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bash benchmarks/gpu.sh [--help]

The GPU run of ft-harness in one call, on a bare CUDA machine:
  1. fail fast (exit 3, before anything is created) unless `nvidia-smi -L` lists a GPU
  2. create a venv, install a CUDA torch and ft-harness[test] (uv when it can be pip-installed, else pip)
  3. print nvidia-smi and the versions of python, torch (CUDA, device), transformers, peft, trl,
     bitsandbytes, optimum-quanto, diffusers; stop (exit 11) if torch cannot use the GPU
  4. python -m pytest --pyargs scenarios -m gpu -rs --durations=0   (the cuda variant of every scenario)
  5. the self-tests that behave differently with CUDA present (FT_GPU_SELFTESTS)
  6. optionally (FT_GPU_ALSO_CPU=1) the cpu variants of the same scenarios, for CPU vs GPU wall time
Writes into $OUT: versions.txt, timings.txt (wall seconds per phase), scenarios.log + gpu.xml,
selftests.log + selftests.xml, cpu.log + cpu.xml (with FT_GPU_ALSO_CPU=1).
Exit status: the first non-zero pytest status of steps 4, 5, 6 (0 when all passed); 2 bad usage;
3 no CUDA device; 10 the venv or an install failed; 11 torch is installed but cannot use the GPU.

Environment variables (all optional):
  OUT                    where results go (default: ./gpu-out in the repository root)
  FT_GPU_VENV            the venv to create or reuse (default: .venv-gpu in the repository root);
                         an existing one is reused, so a second call on a warm machine skips the installs
  PYTHON                 the Python that creates the venv (default: python3)
  TORCH_SPEC             the torch requirement to install (default: torch, which PyPI serves as a CUDA
                         build on Linux x86_64); e.g. 'torch==2.8.0' for a driver older than the newest
                         wheel's CUDA. Setting it always installs it (never reuses a system torch)
  FT_GPU_SYSTEM_TORCH    auto (default) | 1 | 0. auto: when TORCH_SPEC is unset and $PYTHON already
                         imports a torch that sees the GPU (machine images that ship PyTorch), the venv
                         sees that torch's site-packages (a .pth file) instead of downloading ~3 GB;
                         1: require that; 0: always install TORCH_SPEC
  FT_GPU_INSTALLER       auto (default) | uv | pip. auto: pip-install uv into the venv and use it, or
                         fall back to pip if that fails; always pip with a system torch (uv would not
                         see it and would install torch again)
  FT_GPU_WHEELS          a folder of wheels to install from, offline (--no-index --find-links); it
                         needs every missing package, setuptools>=77 (to build ft-harness) and uv if
                         FT_GPU_INSTALLER=uv. Unset: the configured index (PIP_INDEX_URL / pip.conf;
                         PIP_INDEX_URL and PIP_EXTRA_INDEX_URL are passed on to uv)
  FT_GPU_PYTEST_ARGS     extra arguments for the scenario runs (steps 4 and 6), split on whitespace,
                         e.g. '-n 4' or '-k resume'
  FT_GPU_SELFTESTS       self-test paths for step 5 (default: tests/test_plugin.py tests/test_gpu_script.py;
                         empty: skip step 5)
  FT_GPU_ALSO_CPU        1: also run step 6 and record its wall time (default: 0)
  FT_GPU_CHECK_ONLY      1: do step 1 only (print the GPUs, exit 0 or 3) and create nothing
EOF
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) echo "gpu.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

die() {  # die CODE MESSAGE...
  local code=$1; shift
  echo "gpu.sh: error: $*" >&2
  exit "$code"
}

cd "$(dirname "$0")/.."
ROOT=$PWD

# ---- 1. fail fast without a CUDA device (nothing is created before this) ---------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
  die 3 "no CUDA device: nvidia-smi is not on PATH (no NVIDIA driver here); run this on a GPU machine"
fi
smi_rc=0
if command -v timeout >/dev/null 2>&1; then
  gpus=$(timeout 60 nvidia-smi -L 2>&1) || smi_rc=$?
else
  gpus=$(nvidia-smi -L 2>&1) || smi_rc=$?
fi
if [ "$smi_rc" -ne 0 ]; then
  die 3 "no CUDA device: 'nvidia-smi -L' failed (exit $smi_rc): ${gpus:-no output}"
fi
if ! grep -Eq '^GPU [0-9]+:' <<<"$gpus"; then
  die 3 "no CUDA device: 'nvidia-smi -L' lists no GPU (output: '${gpus}')"
fi
echo "gpu.sh: $(grep -Ec '^GPU [0-9]+:' <<<"$gpus") GPU(s):"
echo "$gpus"
if [ "${FT_GPU_CHECK_ONLY:-0}" = 1 ]; then
  exit 0
fi

# ---- settings ------------------------------------------------------------------------------------------
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
VENV=${FT_GPU_VENV:-.venv-gpu}
PY=${PYTHON:-python3}
TORCH_SPEC_SET=${TORCH_SPEC:+1}
TORCH_SPEC=${TORCH_SPEC:-torch}
SYSTEM_TORCH_MODE=${FT_GPU_SYSTEM_TORCH:-auto}
INSTALLER=${FT_GPU_INSTALLER:-auto}
SELFTESTS=${FT_GPU_SELFTESTS-tests/test_plugin.py tests/test_gpu_script.py}
read -r -a EXTRA <<<"${FT_GPU_PYTEST_ARGS:-}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false UV_LINK_MODE=copy
INDEX_ARGS=()
if [ -n "${FT_GPU_WHEELS:-}" ]; then
  INDEX_ARGS=(--no-index --find-links "$(cd "$FT_GPU_WHEELS" && pwd)")
fi
[ -n "${PIP_INDEX_URL:-}" ] && export UV_INDEX_URL=${UV_INDEX_URL:-$PIP_INDEX_URL}
[ -n "${PIP_EXTRA_INDEX_URL:-}" ] && export UV_EXTRA_INDEX_URL=${UV_EXTRA_INDEX_URL:-$PIP_EXTRA_INDEX_URL}

TIMINGS=$OUT/timings.txt
: >"$TIMINGS"
now() { date +%s.%N; }
record() {  # record PHASE START: append "PHASE <wall seconds>" to timings.txt (written as we go)
  local s
  s=$(awk -v a="$2" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  printf '%-22s %8s s\n' "$1" "$s" | tee -a "$TIMINGS"
}
T_ALL=$(now)

# ---- 2. venv + installs ------------------------------------------------------------------------------
t=$(now)
system_torch=0
if [ -z "$TORCH_SPEC_SET" ] && [ "$SYSTEM_TORCH_MODE" != 0 ]; then
  if torch_site=$("$PY" -c 'import os, sys, torch
sys.exit(1) if not torch.cuda.is_available() else print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null); then
    system_torch=1
    echo "gpu.sh: reusing the CUDA torch of $PY (from $torch_site)"
  elif [ "$SYSTEM_TORCH_MODE" = 1 ]; then
    die 10 "FT_GPU_SYSTEM_TORCH=1 but $PY has no torch that sees the GPU"
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "gpu.sh: creating $VENV with $PY"
  "$PY" -m venv "$VENV" || die 10 "'$PY -m venv $VENV' failed (is the venv module installed? set PYTHON)"
fi
VPY=$ROOT/$VENV
case "$VENV" in /*) VPY=$VENV ;; esac
VPY=$VPY/bin/python
if [ "$system_torch" = 1 ]; then
  site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$torch_site" >"$site/_ft_gpu_system_torch.pth"  # appended to sys.path: the venv's own packages win
fi
record venv "$t"

t=$(now)
if [ "$INSTALLER" = auto ]; then
  INSTALLER=pip
  if [ "$system_torch" = 0 ] && "$VPY" -m pip install -q --retries 1 --timeout 20 "${INDEX_ARGS[@]}" uv; then
    INSTALLER=uv
  fi
elif [ "$INSTALLER" = uv ]; then
  "$VPY" -m pip install -q "${INDEX_ARGS[@]}" uv || die 10 "pip could not install uv (FT_GPU_INSTALLER=uv)"
fi
install() {  # install REQUIREMENT-ARGS...
  if [ "$INSTALLER" = uv ]; then
    "$(dirname "$VPY")/uv" pip install -q --python "$VPY" "${INDEX_ARGS[@]}" "$@"
  else
    "$VPY" -m pip install -q "${INDEX_ARGS[@]}" "$@"
  fi
}
echo "gpu.sh: installing with $INSTALLER"
if [ "$system_torch" = 0 ]; then
  t_torch=$(now)
  install "$TORCH_SPEC" || die 10 "installing '$TORCH_SPEC' with $INSTALLER failed"
  record install-torch "$t_torch"
fi
t_proj=$(now)
install -e "$ROOT[test]" || die 10 "installing ft-harness[test] with $INSTALLER failed"
record install-project "$t_proj"
record install "$t"

# ---- 3. what this run ran on ---------------------------------------------------------------------------
{
  echo "# gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), installer: $INSTALLER, system torch: $system_torch"
  nvidia-smi || true
  "$VPY" - <<'PY' || true
import importlib, importlib.metadata as md, platform, sys
print("python", platform.python_version(), sys.executable)
try:
    import torch
    print("torch", torch.__version__, "| torch.version.cuda", torch.version.cuda,
          "| cuda available", torch.cuda.is_available(), "| from", torch.__file__)
    if torch.cuda.is_available():
        print("device", torch.cuda.get_device_name(0), "| capability", torch.cuda.get_device_capability(0),
              "| bf16", torch.cuda.is_bf16_supported(), "| devices", torch.cuda.device_count())
except Exception as exc:  # noqa: BLE001 - recorded, step 3's check below stops the run
    print("torch: import failed:", repr(exc))
for dist in ("transformers", "peft", "trl", "bitsandbytes", "optimum-quanto", "diffusers", "accelerate",
             "datasets", "safetensors", "pytest"):
    try:
        print(dist, md.version(dist))
    except md.PackageNotFoundError:
        print(dist, "NOT INSTALLED")
try:
    import bitsandbytes  # noqa: F401 - its CUDA library is loaded on import
    print("bitsandbytes import: ok")
except Exception as exc:  # noqa: BLE001
    print("bitsandbytes import failed:", repr(exc))
PY
} 2>&1 | tee "$OUT/versions.txt"
"$VPY" -c 'import torch, sys
ok = torch.cuda.is_available() and (torch.ones(2, device="cuda") * 2).sum().item() == 4
sys.exit(0 if ok else 1)' \
  || die 11 "torch cannot use the GPU (torch.version.cuda and the driver are in $OUT/versions.txt; a CPU wheel or a driver older than the wheel's CUDA? set TORCH_SPEC, e.g. 'torch==2.8.0')"

# ---- 4-6. the runs ------------------------------------------------------------------------------------
run_pytest() {  # run_pytest PHASE LOG -- PYTEST-ARGS...: runs, tees to LOG, records the wall time, sets $rc
  local phase=$1 log=$2 t0
  shift 3
  t0=$(now)
  set +e
  "$VPY" -m pytest "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  set -e
  record "$phase" "$t0"
  echo "gpu.sh: $phase: pytest exit $rc"
}

status=0
run_pytest scenarios-gpu "$OUT/scenarios.log" -- --pyargs scenarios -m gpu -rs --durations=0 --durations-min=0 \
  --junitxml="$OUT/gpu.xml" "${EXTRA[@]}"
status=$rc

if [ -n "$SELFTESTS" ]; then
  read -r -a selftests <<<"$SELFTESTS"
  run_pytest self-tests "$OUT/selftests.log" -- "${selftests[@]}" -rs --durations=10 --junitxml="$OUT/selftests.xml"
  [ "$status" -ne 0 ] || status=$rc
fi

if [ "${FT_GPU_ALSO_CPU:-0}" = 1 ]; then
  # the cpu variants of exactly the tests that have a cuda variant: plain -m "not gpu" would add the
  # CPU-only tests (the distributed save, the pickle and crash scenarios) and spoil the comparison
  run_pytest scenarios-cpu "$OUT/cpu.log" -- --pyargs scenarios -m "not gpu" -k cpu -rs --durations=0 \
    --durations-min=0 --junitxml="$OUT/cpu.xml" "${EXTRA[@]}"
  [ "$status" -ne 0 ] || status=$rc
fi

record total "$T_ALL"
echo "gpu.sh: results in $OUT (exit $status)"
exit "$status"
