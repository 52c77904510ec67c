#!/usr/bin/env bash
# Our NFNet-F0/F1 bf16 training steps and eval forward against timm's on one NVIDIA GPU, in about 5 minutes.
#
#   scripts/gpu_check.sh --fetch      # once, where pip reaches PyPI: the missing pure-Python wheels into .whl/
#   scripts/gpu_check.sh [OUT_DIR]    # on the GPU machine: JSON per measurement and summary.json in OUT_DIR
#
# Made for the H200 machine (Python 3.12, jax 0.11 with CUDA, torch, timm, optax, chex, orbax; no dm-haiku,
# ml-collections or TensorFlow): the wheels in .whl/ (git-ignored) install with --no-index. Measures, each
# alternating ours and timm's, timm in a process of its own (scripts/benchmark.py --compare=timm): F0 and F1 train steps
# in bf16 at per-device batch 64 and 128 at 192 px against timm with AMP bf16 + channels_last, eager and
# under torch.compile; eval forward at 256 px (batch 128). Each measurement has its own time limit within
# a total budget (BUDGET_S, default 285 s), so what finished is kept when one runs long. Without a GPU (CHECK_TINY=1, or no nvidia-smi) it runs the
# same commands at tiny sizes on the CPU (NF-ResNet-50, or CHECK_MODELS; torch.compile only with
# CHECK_COMPILED=nhwc_compile), to test the script.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(dm-haiku==0.0.17 jmp==0.0.4 ml-collections==1.1.0)
if [ "${1:-}" = "--fetch" ]; then
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
    -d .whl "${WHEELS[@]}"
fi

OUT_DIR=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT_DIR"
missing=$(python3 -c "import importlib.util as u; print(' '.join(m for m in ('haiku', 'jmp', 'ml_collections') if u.find_spec(m) is None))")
if [ -n "$missing" ]; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "missing $missing and no wheels in .whl/: run scripts/gpu_check.sh --fetch first" >&2; exit 2; }
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# JAX takes 75% of GPU memory by default; leave room for the torch process on the same GPU.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}

if [ -z "${CHECK_TINY:-}" ] && command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  SIZE=192; EVAL_SIZE=256; BATCHES="64 128"; EVAL_BATCH=128; MODELS=(nfnet_f0 nfnet_f1)
  EAGER=nhwc; COMPILED=nhwc_compile; LIMIT=60; EVAL_LIMIT=40; COMPILED_LIMIT=90; STEPS=10; MATMUL=8192
  nvidia-smi -L
else
  echo "no GPU: CPU fallback at tiny sizes (tests the script, not the speed)"
  SIZE=64; EVAL_SIZE=64; BATCHES="2"; EVAL_BATCH=2; MODELS=(${CHECK_MODELS:-nf_resnet50})
  EAGER=nchw,nhwc; COMPILED=${CHECK_COMPILED:-}; LIMIT=600; EVAL_LIMIT=600; COMPILED_LIMIT=600; STEPS=10
  MATMUL=256; BUDGET_S=${BUDGET_S:-1500}
fi
python3 -c "import jax, torch, timm, sys; print('python', sys.version.split()[0], 'jax', jax.__version__, jax.devices(), 'torch', torch.__version__, 'timm', timm.__version__)"

DEADLINE=$((SECONDS + ${BUDGET_S:-285}))
run() {  # NAME LIMIT_S FLAGS...: one benchmark run, its JSON in OUT_DIR/NAME.json, its log in OUT_DIR/NAME.log
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  [ "$left" -lt "$limit" ] && limit=$left
  [ "$limit" -lt 20 ] && { echo "== $name: skipped, the time budget is spent"; return; }
  echo "== $name: $*"
  timeout --kill-after=10 "$limit" python3 scripts/benchmark.py --compare=timm --dtype=bfloat16 --steps=$STEPS \
    --warmup=2 --matmul_size=$MATMUL --out="$OUT_DIR/$name.json" "$@" 2>&1 | tee "$OUT_DIR/$name.log" | grep -v Warning
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || echo "== $name: exit $rc (124: over its $limit s limit)"
}

# Eager timm first (fast to start), then the torch.compile variants, so the budget keeps the most.
for batch in $BATCHES; do
  for model in "${MODELS[@]}"; do
    run "train_${model}_b${batch}" $LIMIT --what=train --models=$model --batch_size=$batch --image_size=$SIZE \
      --timm_variants=$EAGER
  done
done
for model in "${MODELS[@]}"; do
  run "eval_${model}" $EVAL_LIMIT --what=eval --models=$model --batch_size=$EVAL_BATCH --image_size=$EVAL_SIZE \
    --timm_variants=$EAGER
done
for batch in ${COMPILED:+$BATCHES}; do
  for model in "${MODELS[@]}"; do
    run "train_${model}_b${batch}_compiled" $COMPILED_LIMIT --what=train --models=$model --batch_size=$batch \
      --image_size=$SIZE --timm_variants=$COMPILED
  done
done

python3 - "$OUT_DIR" <<'EOF'
import glob, json, os, sys
# DeepMind's published NFNet-F0 training step on GPU (the NFNet paper's training-latency table).
DEEPMIND_F0_MS = 56.7
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
  if path.endswith("summary.json"):
    continue
  run = json.load(open(path))
  for r in run["results"]:
    o = r["ours"]
    row = {"run": os.path.basename(path)[:-5], "kind": o["kind"], "model": o["model"], "batch": o["batch_size"],
           "image_size": o["image_size"], "compute_dtype": o["compute_dtype"], "ours_ms": 1e3 * o["median_s"],
           "ours_images_per_s": o["images_per_s"], "mfu": o["mfu"],
           "timm_ms": {v: 1e3 * t["median_s"] for v, t in r["theirs"].items()},
           "ours_vs_timm_best": r["speedup_median"], "timm_best": r["best"], "device": run["device"]["kind"],
           "matmul": run["matmul"]}
    if o["model"] == "nfnet_f0" and o["kind"] == "train":
      row["ours_vs_deepmind_56.7ms"] = DEEPMIND_F0_MS / row["ours_ms"]
    rows.append(row)
    print(f"{row['kind']:<5} {row['model']:<9} b{row['batch']:<4} {row['image_size']}px ours {row['ours_ms']:8.1f} ms "
          f"({row['ours_images_per_s']:7.1f} img/s) | timm " + ", ".join(f"{v} {ms:.1f} ms" for v, ms in row['timm_ms'].items())
          + f" | ours vs timm {row['ours_vs_timm_best']:.2f}x"
          + (f" | vs DeepMind 56.7 ms: {row['ours_vs_deepmind_56.7ms']:.2f}x" if "ours_vs_deepmind_56.7ms" in row else ""))
json.dump({"rows": rows}, open(os.path.join(out, "summary.json"), "w"), indent=2)
print(f"{len(rows)} measurements -> {os.path.join(out, 'summary.json')}")
EOF
