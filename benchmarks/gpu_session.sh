#!/usr/bin/env bash
# The GPU benchmarks of the prefetch (issue 3) and SpAc (issue 4) work, in stages that each fit one 10-minute
# device command. Each stage packs its results into $OUT/stage<N>.tgz. The replays read the committed
# checkpoints/v1/traces and every --ckpt defaults to checkpoints/v1/code_moe, so a stage needs no earlier one.
#
#   bash benchmarks/gpu_session.sh 1    # SpAc: trained pair (+ traces); prefetch: trained model + Mixtral replay
#   bash benchmarks/gpu_session.sh 2    # prefetch: Qwen3 replay; SpAc: Mixtral replay
#   bash benchmarks/gpu_session.sh 3    # SpAc: Qwen3 replay; qhs replays (Mixtral, Qwen3)
#   bash benchmarks/gpu_session.sh 4    # stage 3's replays at shorter timeouts, plus the budget-sweep figure
set -uo pipefail
cd "$(dirname "$0")/.."
source tools/device_env.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" results
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
case "$1" in
  1) timeout 200 python benchmarks/spac.py --sections trained --out results/bench_spac \
         2>&1 | tee "$OUT/stage1_spac.log" | grep -v '^{'
     timeout 370 python benchmarks/prefetch.py --replay-models mixtral:4 \
         --out results/bench_prefetch 2>&1 | tee "$OUT/stage1_prefetch.log" | grep -v '^{' ;;
  2) timeout 250 python benchmarks/prefetch.py --sections replay \
         --replay-models qwen3_moe:12 --out results/bench_prefetch_qwen3 2>&1 | tee "$OUT/stage2_prefetch.log" | grep -v '^{'
     timeout 320 python benchmarks/spac.py --sections replay --replay-models mixtral:4 \
         --out results/bench_spac_mixtral 2>&1 | tee "$OUT/stage2_spac.log" | grep -v '^{' ;;
  3) timeout 300 python benchmarks/spac.py --sections replay --replay-models qwen3_moe:12 \
         --configs ar,sd,sd+cpu_cold,spac,spac-no-utility,spac-no-balancer --out results/bench_spac_qwen3 \
         2>&1 | tee "$OUT/stage3_spac.log" | grep -v '^{'
     timeout 250 python benchmarks/prefetch.py --sections replay \
         --replay-models mixtral:4,qwen3_moe:12 --policies none,qhs,qhs+spec --out results/bench_prefetch_qhs \
         2>&1 | tee "$OUT/stage3_prefetch.log" | grep -v '^{' ;;
  4) timeout 170 python benchmarks/spac.py --sections replay --replay-models qwen3_moe:12 \
         --configs ar,sd,sd+cpu_cold,spac,spac-no-utility,spac-no-balancer --out results/bench_spac_qwen3 \
         2>&1 | tee "$OUT/stage4_spac.log" | grep -v '^{'
     timeout 190 python benchmarks/prefetch.py --sections replay \
         --replay-models mixtral:4,qwen3_moe:12 --policies none,qhs,qhs+spec --out results/bench_prefetch_qhs \
         2>&1 | tee "$OUT/stage4_prefetch.log" | grep -v '^{'
     timeout 110 python run.py -m +experiment=budget_sweep model=mixtral model.random_init=true model.num_layers=4 policy=on_demand,qhs,oracle \
         budget.fraction=0.25,0.5 results_dir=results/sweep 2>&1 | tail -25 | tee "$OUT/stage4_sweep.log"
     MOELAB_RESULTS=results/sweep python notebooks/budget_sweep.py 2>&1 | tail -3
     cp results/sweep/figures/budget_sweep.png "$OUT/" 2>/dev/null ;;
esac
tar czf "$OUT/stage$1.tgz" $(ls results/bench_*/*.csv results/bench_*/*.png results/sweep/*/runs.parquet 2>/dev/null)
ls -la "$OUT"
