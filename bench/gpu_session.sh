#!/usr/bin/env bash
# The GPU figures on a lent GPU machine (docs/training.md, "GPU switches"): the training step's throughput per
# precision switch (bench.bench_gpu), the production profile's real steps on a share of its patients with the
# projection to 369 (bench.bench_gpu_stages), and the loader's scaling with workers on that machine's cores
# (bench.bench_loader). Runs under the machine's own python3 (PyTorch with CUDA); the packages it lacks travel as
# wheels in .whl/ (pydantic and its parts, nibabel, nilearn, ImageHash, PyWavelets, isal, and monai for evaluate's
# metrics; the machine's image has the rest, onnx and onnxruntime included). Logs to $OUT; the last line of each
# log is its JSON report.
#   bash bench/gpu_session.sh                     every step below, in order (at most 23 minutes: three calls' worth)
#   bash bench/gpu_session.sh stages stages_b32   only these steps (stages_b32 and stages_b64 reuse the data stages
#                                                 left in $PROJECT, /tmp/gpu-stages-project: run stages first, same
#                                                 call)
#   LIMITS="stages=310 stages_b32=145" bash ...  a step's seconds allowed, changed for this call
set -u
OUT=${OUT:-/tmp/slicewise-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cudnn', torch.backends.cudnn.version(), torch.cuda.get_device_name())"
    echo "cpu cores: $(nproc)"
} 2>&1 | tee "$OUT/machine.txt"
WANTED=" $* "
PROJECT=${PROJECT:-/tmp/gpu-stages-project}
step() {  # name, seconds allowed, command...
    local name=$1 limit=$2 given
    shift 2
    for given in ${LIMITS:-}; do [[ $given != "$name="* ]] || limit=${given#*=}; done
    [[ "$WANTED" == "  " || "$WANTED" == *" $name "* ]] || return 0
    echo "== $name (at most $limit s)"
    local started
    started=$(mktemp)  # a stages step's report counts only if written after this
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $? after ${SECONDS} s in all"
    grep -v '^{' "$OUT/$name.log" | tail -n 12
    # a stages step stopped at its limit prints no report: the one it kept after each finished step comes back,
    # if this step wrote it (not one left by the step before)
    local kept="$PROJECT/bench_gpu_stages.json"
    [[ $name != stages* || ! "$kept" -nt "$started" ]] || cp "$kept" "$OUT/$name.json"
    rm -f "$started"
}
step gpu 120 python3 -m bench.bench_gpu --steps 60 --warmup 10
step gpu_batch_32 120 python3 -m bench.bench_gpu --steps 40 --warmup 10 --batch-size 32
step stages 420 python3 -m bench.bench_gpu_stages --patients 96 --epochs 3,2,3 --workdir "$PROJECT"
step stages_b32 300 python3 -m bench.bench_gpu_stages --patients 96 --epochs 3,2,3 --workdir "$PROJECT" \
    --training-only --set train.batch_size=32 --set train.compile=true
step stages_b64 300 python3 -m bench.bench_gpu_stages --patients 96 --epochs 3,2,3 --workdir "$PROJECT" \
    --training-only --set train.batch_size=64 --set train.compile=true
step loader 90 python3 -m bench.bench_loader --patients 8 --batches 10 --worker-counts 0 --read-only-counts 0,1,2,4,8,15 --no-compressed
