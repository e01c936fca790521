#!/usr/bin/env bash
# Every GPU benchmark in one go, for a short loan of a GPU host that has PyTorch but not this
# project's other packages: each part runs under its own time limit, so one that hangs or fails
# leaves the others' figures. Output files go to $OUT (default ./gpu-out).
#   WHEELS=.whl  wheels to install first (pydantic and what it needs: prefine.params uses it)
#   FMNIST=DIR   the Fashion-MNIST IDX files, where /usr/share/datasets/fashion-mnist is missing
#   MINUTES=4    gpu_full.py's budget
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
if [ -n "${FMNIST:-}" ] && [ ! -e /usr/share/datasets/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && ln -s "$(realpath "$FMNIST")" /usr/share/datasets/fashion-mnist
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cpus', __import__('os').cpu_count())"

part() {  # part NAME SECONDS COMMAND...: run it, keep its log, say how it ended
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? after $((SECONDS - start)) s"
  grep -v -e '━' -e ' epoch ' "$OUT/$name.log" | tail -n 25
}

part full $(( ${MINUTES:-4} * 60 + 120 )) python3 benchmarks/gpu_full.py --minutes "${MINUTES:-4}" --out "$OUT"
part collection 150 python3 benchmarks/collection.py --sizes 10000 --steps 25 --batch 256 --workers 8 --work /tmp/collection
part methods 50 python3 benchmarks/gpu_methods.py --device cuda
