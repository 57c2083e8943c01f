#!/usr/bin/env bash
# gpu.sh: the GPU benchmarks and end-to-end run.py checks in one command, with a time budget.
#
# usage: bash bench/gpu.sh [OUT_DIR] [BUDGET_SECONDS]
#   OUT_DIR          where the summary <date>-<gpu>.md and the full log gpu-log.txt go (default bench/results)
#   BUDGET_SECONDS   wall-clock budget (default 1800); a check that would not fit in what is left is skipped
#                    and marked "skipped (out of time)", so a short budget still yields a partial summary
# environment:
#   DEVICE=cuda|cpu  cuda (default) runs every check; cpu runs only the run.py part (a smoke test of this
#                    script; add EXTRA to keep it tiny)
#   EXTRA="k=v ..."  Hydra overrides appended to every run.py check (e.g. data.max_train_samples=64)
#   PY=python3       the Python to use
#   OLD=<checkout>   an older fishtune checkout whose run.py runs beside ours as the baseline
# On a node without network, first `source <pack>/env.sh` (docs/offline-gpu.md). Nothing is downloaded:
# paper-size models are random-init, MiniLM comes from its package. About 7 minutes on one H100-class GPU.
set -uo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEST=${1:-$ROOT/bench/results}
BUDGET=${2:-1800}
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "gpu.sh: BUDGET_SECONDS must be a whole number, got $BUDGET" >&2; exit 2; }
mkdir -p "$DEST" && DEST=$(cd "$DEST" && pwd) || { echo "gpu.sh: cannot create $DEST" >&2; exit 2; }
cd "$ROOT"
PY=${PY:-python3}
[[ $PY == */* ]] && PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
DEVICE=${DEVICE:-cuda}
EXTRA=${EXTRA:-}
OLD=${OLD:-}
GPU=$($PY -c "import torch; print(torch.cuda.get_device_name(0).split()[1] if torch.cuda.is_available() and '$DEVICE' == 'cuda' else 'cpu')")
RES="$DEST/$(date +%F)-$GPU.md"
LOG="$DEST/gpu-log.txt"
RUNS=${TMPDIR:-/tmp}/fishtune-gpu-runs  # the run.py outputs (replaced on each call)
DEADLINE=$((SECONDS + BUDGET))
left() {  # left LIMIT: seconds the next check may take (0: skip it)
  local l=$((DEADLINE - SECONDS)); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 20 ] && l=0; echo "$l"
}
rm -rf "$RUNS"
: >"$LOG"
{
  echo "# GPU checks, $(date -u '+%F %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
  $PY -c "import torch, transformers; d = torch.cuda.get_device_name(0) if '$DEVICE' == 'cuda' else 'CPU'; print(f'- {d}, torch {torch.__version__}, transformers {transformers.__version__}, budget $BUDGET s')"
  echo
} >"$RES"

# bench NAME LIMIT CMD...: run one bench, keep its lines "...: ours ... reference ... ratio ..."
bench() {
  local name=$1 limit=$2; shift 2
  echo "### $name: $*" >>"$LOG"
  local t0=$SECONDS
  limit=$(left "$limit")
  if [ "$limit" = 0 ]; then echo "- $name: skipped (out of time)" >>"$RES"; return; fi
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "## $name" >>"$RES"
  echo '```' >>"$RES"
  echo "\$ $*" >>"$RES"
  sed -n '/^### '"$name"':/,$p' "$LOG" | grep -E "(: ours .* reference .* ratio|^model |^hooks|^peak|^weight_grad|^ *(dense|dense-mask|sparse|sparse-noemb|lora-r8):|^toy|^ours|difference)" >>"$RES"
  echo "(exit $rc, $((SECONDS - t0)) s)" >>"$RES"
  echo '```' >>"$RES"
}

# runpy NAME CODE_DIR ARGS...: one run.py job; its samples/s and timings from result.json
runpy() {
  local name=$1 code=$2; shift 2
  local dir="$RUNS/$name"
  echo "### $name: run.py $*" >>"$LOG"
  local t0=$SECONDS limit
  limit=$(left 150)
  if [ "$limit" = 0 ]; then echo "- $name: skipped (out of time)" >>"$RES"; return; fi
  (cd "$code" && PYTHONPATH="$code/src:${PYTHONPATH:-}" timeout "$limit" $PY run.py "$@" $EXTRA device=$DEVICE resume=false \
    train.progress=false data.dir="$OLDPWD/data/glue" hydra.run.dir="$dir") >>"$LOG" 2>&1
  local rc=$? wall=$((SECONDS - t0))
  $PY - "$dir/result.json" "$name" "$rc" "$wall" "$*" >>"$RES" <<'EOF'
import json, sys
path, name, rc, wall, args = sys.argv[1:]
try:
    r = json.load(open(path))
except Exception as e:
    print(f"- {name}: no result (exit {rc}, {wall} s): {e}")
    raise SystemExit
t = r.get("timings", {})
cells = r.get("cells") or [r]
steps = sum(c.get("steps") or 0 for c in cells)
print(f"- {name} (`run.py {args}`): status {r.get('status')}, score {r.get('score')}, "
      f"{t.get('samples_per_second', 0):.0f} training samples/s, train {t.get('train_seconds', 0):.1f} s, "
      f"selection {t.get('selection_seconds', 0):.1f} s, run {t.get('total_seconds', 0):.1f} s, "
      f"{steps} steps, command wall {wall} s, peak {r.get('peak_memory', {}).get('cuda_max_allocated_mib', 0):.0f} MiB")
EOF
}

SST=(model=minilm task=glue/sst2 sparsity=0.5 train.epochs=1 data.max_train_samples=30000)
LADDER=(model=minilm task=glue/rte method=ird sparsity=ladder train.epochs=3)
if [ "$DEVICE" = cuda ]; then
  bench masked-bert-base 90 $PY bench/masked_memory.py --model bert-base --random-init --device cuda --batch 32 --seq 128
  bench masked-llama-1b 150 $PY bench/masked_memory.py --model llama-3.2-1b --random-init --device cuda --batch 8 --seq 256
fi
echo "## run.py (MiniLM; SST-2: 30,000 sentences, 1 epoch; RTE: IRD ladder, 3 epochs per cell)" >>"$RES"
runpy fish "$PWD" "${SST[@]}" method=fish
runpy dense "$PWD" "${SST[@]}" method=dense
runpy fish-blocks "$PWD" "${SST[@]}" method=fish mask.weight_grad=blocks
runpy ird-ladder "$PWD" "${LADDER[@]}"
[ -n "$OLD" ] && runpy old-fish "$OLD" "${SST[@]}" method=fish
echo >>"$RES"
if [ "$DEVICE" = cuda ]; then
  bench fisher-bert-base 90 $PY bench/fisher.py --model bert-base --random-init --device cuda --samples 256 --batch 32 --seq 128 --precision bf16
  bench fisher-llama-1b 120 $PY bench/fisher.py --model llama-3.2-1b --random-init --device cuda --samples 64 --batch 8 --seq 256 --precision bf16
  bench epoch-bert-base 90 $PY bench/epoch.py --model bert-base --random-init --device cuda --samples 2048 --batch 32
  bench step-minilm 60 $PY bench/step.py --model minilm --device cuda --batch 32 --seq 32
  bench step-bert-base 60 $PY bench/step.py --model bert-base --random-init --device cuda --batch 32 --seq 128
  bench step-minilm-blocks 60 $PY bench/step.py --model minilm --device cuda --batch 32 --seq 64 --mask fish --weight-grad blocks
  bench step-llama-1b-blocks 120 $PY bench/step.py --model llama-3.2-1b --random-init --device cuda --batch 8 --seq 256 --steps 20 --mask fish --weight-grad blocks
fi
[ -n "$OLD" ] && runpy old-ird-ladder "$OLD" "${LADDER[@]}"

# Peers: the same SST-2 job through transformers.Trainer (dense) and peft LoRA + Trainer beside fishtune's
# dense and FISH runs (bench/peers.py; on a GPU: training samples per second and peak GPU memory)
if [ "$DEVICE" = cuda ]; then
  bench peers 240 $PY bench/peers.py --device cuda --rounds 1 --sides trainer-dense,fishtune-dense,peft-lora,fishtune-fish --out "$DEST/peers-gpu.md"
fi
cat "$RES"
echo "gpu.sh: summary $RES, log $LOG"
