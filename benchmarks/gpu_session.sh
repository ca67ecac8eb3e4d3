#!/usr/bin/env bash
# The GPU runs of the replay experiments and the trained pair, in stages that each fit one 10-minute device
# command. Each stage packs its results into $OUT/stage<N>.tgz. The replays read the committed checkpoints/v1/traces,
# the trained-pair stage checkpoints/v1/code_moe and code_draft, so a stage needs no earlier one.
#
#   bash benchmarks/gpu_session.sh 1    # SpAc variants on the trained pair; predictors on the trained model
#   bash benchmarks/gpu_session.sh 2    # SpAc variants replayed: Mixtral shapes, then Qwen3 shapes
#   bash benchmarks/gpu_session.sh 3    # the peers figure (Mixtral shapes, 16 layers) with transformers + accelerate
#   bash benchmarks/gpu_session.sh 4    # the budget-sweep figure at Mixtral shapes
set -uo pipefail
cd "$(dirname "$0")/.."
source tools/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" results
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
sweep() { timeout "$1" python run.py -m "${@:2}" 2>&1 | tail -30 | tee -a "$OUT/stage_$STAGE.log"; }
STAGE=$1
case "$1" in
  1) sweep 250 +experiment=spac_ablation '+experiment/spac_variant=glob(*)' workload=builtin
     sweep 300 +experiment=budget_sweep policy=on_demand,ar_binary,qhs,oracle budget.fraction=0.25,0.5 ;;
  2) sweep 280 +experiment=spac_replay
     sweep 280 +experiment=spac_replay model=qwen3_moe model.num_layers=12 ;;
  3) sweep 400 +experiment=peers model.num_layers=16
     timeout 150 python benchmarks/peers.py model.num_layers=16 2>&1 | tail -5 | tee -a "$OUT/stage_3.log" ;;
  4) sweep 110 +experiment=budget_sweep model=mixtral model.random_init=true model.num_layers=4 \
         policy=on_demand,qhs,oracle budget.fraction=0.25,0.5 results_dir=results/sweep
     MOELAB_RESULTS=results/sweep python notebooks/budget_sweep.py 2>&1 | tail -3 ;;
esac
for nb in spac_ablation budget_sweep spac_replay peers; do
  [ -f "results/$nb/runs.parquet" ] && python "notebooks/$nb.py" > "$OUT/$nb.txt" 2>&1
done
tar czf "$OUT/stage$1.tgz" $(ls results/*/runs.parquet results/*/accelerate.parquet results/*/figures/*.png \
    results/figures/*.png 2>/dev/null)
ls -la "$OUT"
