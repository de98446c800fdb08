#!/usr/bin/env bash
# The GPU checks and figures docs/benchmarks.md still owes, as one device run of at most 10
# minutes (each step has its own time limit; they add up to 560 s). A GPU session has 15
# minutes of device time in all: leave room for the machine's start.
#
#   bash benchmarks/gpu_checks.sh prepare   # here, in the repo root, project environment active:
#                                           # the wheels the GPU image lacks, into .whl/
#   bash benchmarks/gpu_checks.sh run       # on the device machine, carrying [".whl"]
#
# `run` writes one text file per step into $OUT (or ./gpu-out):
#   tests.txt     the CUDA tests: bf16 / compiled-decoder extraction vs the CPU, stacked trials
#                 and the captured training step vs autograd, batched encoding vs the CPU path
#   extract.txt   1024 px, all four sizes (random weights: same architectures, same cost):
#                 usam and usam + compiled decoder vs the published loop and vs the bare encoder
#   prefetch.txt  the whole stage over the bundled sample, prefetch 0 vs 2 threads
#   train.txt     epoch time vs the per-sample DataLoader loop, per trainer.step; 16 trials
#                 in turn vs stacked
#   smac.txt      SMAC on 1M synthetic rows, 16 concurrent trials, stopped after 120 s and
#                 extrapolated to 100 trials (target: under 10 minutes)
#   inference.txt SAM 2 alone vs SAM 2 + nine estimators
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = prepare ]; then
    ../shared/gpu/prepare-wheels
    # the GPU image has no pytest
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
        pytest pluggy iniconfig packaging pygments
    # nor SMAC and Dask (smac.txt, the concurrent-trials benchmark); versions as installed here
    P="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        $P -d .whl ConfigSpace==1.2.2 more_itertools==11.2.1 pyparsing==3.3.2 dask==2026.8.0 \
        distributed==2026.8.0 dask_jobqueue==0.9.0 emcee==3.1.6 regex==2026.5.9 psutil==7.2.2 \
        click==8.5.1 cloudpickle==3.1.3 jinja2==3.1.6 markupsafe==3.0.3 locket==1.0.0 msgpack==1.2.4 \
        sortedcontainers==2.4.0 tblib==3.2.2 toolz==1.2.0 tornado==6.6.1 zict==3.0.0 \
        fsspec==2026.9.0 partd==1.4.2 importlib_metadata==10.2.0 zipp==4.1.2
    python3 -m pip wheel -q --no-deps -w .whl smac==2.4.1 pynisher==1.0.10  # source-only on PyPI
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

step tests.txt 110 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_inference.py -k cuda
step extract.txt 150 python3 benchmarks/extract.py --sizes tiny small base_plus large --image-size 1024 \
    --images 4 --repeat 1 --device cuda --compile --images-per-call 4
step prefetch.txt 40 python3 benchmarks/extract.py --prefetch 2 --image-size 1024 --repeat 1 --device cuda
step train.txt 70 python3 benchmarks/train.py --device cuda --steps eager compile cuda_graph --stack 16
step smac.txt 150 python3 benchmarks/train.py --device cuda --rows 4000 --epochs 1 --smac-trials 100 \
    --smac-rows 1000000 --concurrent 16 --smac-walltime 120
step inference.txt 40 python3 benchmarks/inference.py --device cuda --image-size 1024
tail -n 4 "$OUT"/*.txt
