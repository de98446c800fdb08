#!/usr/bin/env bash
# The GPU checks and figures the README still owes, as one device run (a GPU session has 15
# minutes of device time in all; this takes about 6 when it works).
#
#   bash benchmarks/gpu_checks.sh prepare   # here, in the repo root, project environment active:
#                                           # the wheels the GPU image lacks, into .whl/
#   bash benchmarks/gpu_checks.sh run       # on the device machine, carrying [".whl"]
#
# `run` writes one text file per step into $OUT (or ./gpu-out): the CUDA tests (bf16
# autocast extraction against the CPU, the compiled decoder, training determinism, the
# inference API), then the extraction, training and inference benchmarks on the GPU.
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
    ../shared/gpu/prepare-wheels
    # the GPU image has no pytest
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
        pytest pluggy iniconfig packaging pygments
    exit
fi
[ "${1:-}" = run ] || { echo "usage: $0 prepare|run"; exit 2; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
step() {  # step <file> <seconds> <command...>: one step, its output and exit status in $OUT/<file>
    local file=$1 limit=$2
    shift 2
    echo "== $* (limit ${limit}s)" | tee "$OUT/$file"
    local t0=$SECONDS
    timeout "$limit" "$@" >>"$OUT/$file" 2>&1
    echo "== exit $? after $((SECONDS - t0)) s" | tee -a "$OUT/$file"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/device.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.version.cuda)" >>"$OUT/device.txt" 2>&1

step tests.txt 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_predictor.py -k cuda
step extract.txt 200 python3 benchmarks/extract.py --sizes tiny small base_plus large --image-size 1024 \
    --images 4 --repeat 1 --device cuda
step extract_compiled.txt 150 python3 benchmarks/extract.py --image-size 1024 --images 4 --repeat 1 \
    --device cuda --compile
step train.txt 90 python3 benchmarks/train.py --device cuda
step inference.txt 60 python3 benchmarks/inference.py --device cuda --image-size 1024
tail -n 4 "$OUT"/*.txt
