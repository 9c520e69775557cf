#!/usr/bin/env bash
# Issue 18's GPU benchmarks in one call on a lent GPU machine: first whether SelfExtend's and DCA's
# fused partials match their explicit reference on the device (benchmarks/gpu_fused_check.py), then
# prefill of the attention-overriding
# methods against the baseline at 8k, 32k and 128k, and KV-eviction decoding against its
# memory-bound floor at 32k and 128k, on a random-initialised model with Llama-3-8B's shapes in
# bfloat16 (benchmarks/random_checkpoint.py; 4 of its 32 layers, so that the run fits a short lease).
#
#   OUT=/some/folder bash benchmarks/gpu_long_context.sh
#
# The machine's own torch is used; transformers and tokenizers come from wheels in .whl/ when the
# machine's versions differ from the project's pins (pip download, see the device notes). Results:
# $OUT/prefill_gpu.json, $OUT/kv_decode_gpu.json, $OUT/gqa_attention_gpu.json, kv_profile.<context>.txt (the ops of 4 dense
# decoding steps: the dense step was 30x its floor on the first run) and the log; each benchmark writes its JSON as it
# goes and has its own time limit, so a slow one keeps what it measured and the next still runs.
set -u
OUT=${OUT:-/tmp/gpu_out}
LAYERS=${LAYERS:-4}
DEVICE=${DEVICE:-cuda}  # cpu, with SHAPE_SET="--set hidden_size=256 ..." and short LENGTHS: a smoke test
LENGTHS=${LENGTHS:-8192,32768,131072}
CONTEXTS=${CONTEXTS:-32768,131072}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
site=/tmp/site
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $site .whl/*.whl || exit 1
fi
# the project itself, as installed (methods/ and tasks/ map to harness.methods / harness.tasks)
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target $site . || exit 1
export PYTHONPATH=$site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 60 python3 benchmarks/gpu_fused_check.py --device "$DEVICE" | tee "$OUT/fused_check.txt"
# the kv engine's grouped-query attention against SDPA's enable_gqa (the engine's path of the first run)
timeout 90 python3 benchmarks/gqa_attention.py --device "$DEVICE" --dtype "${GQA_DTYPE:-bfloat16}" \
    --contexts "$CONTEXTS" --chunk 2048 --json "$OUT/gqa_attention_gpu.json" | tee "$OUT/gqa_attention.txt"
ck=/tmp/llama-3-8b-shapes
python3 benchmarks/random_checkpoint.py --out $ck --layers "$LAYERS" --device "$DEVICE" ${SHAPE_SET:-} || exit 1
timeout "${PREFILL_S:-210}" python3 benchmarks/prefill.py --model $ck --device "$DEVICE" \
    --lengths "$LENGTHS" --json "$OUT/prefill_gpu.json"
echo "prefill exit $?"
timeout "${DECODE_S:-270}" python3 benchmarks/kv_decode.py --model $ck --device "$DEVICE" \
    --context "$CONTEXTS" --json "$OUT/kv_decode_gpu.json" --profile "$OUT/kv_profile"
echo "kv_decode exit $?"
