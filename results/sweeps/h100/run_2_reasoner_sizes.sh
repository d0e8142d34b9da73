#!/bin/bash
# Device run: does a bigger tiny reasoner let Coconut's thoughts carry the steps? No-CoT, CoT, then Coconut
# (1 and 3 epochs a stage) from that CoT run, for three reasoner sizes, all in parallel on one GPU.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
L=$OUT/logs; mkdir -p $L /tmp/res
T=${T:-530}
GPU="trainer.accelerator=gpu trainer.progress_bar=false"
C=paper_configs/tiny
start=$(date +%s)
size() {
  tag=$1; spec=$2
  R="'reasoning.reasoner={tiny: {arch: gpt2, $spec}}'"
  timeout $T python3 experiments/sweep.py $C/coconut_arithmetic_no_cot.yaml --name $tag-nocot --set "$GPU $R" --variant "" --results-dir /tmp/res > $L/$tag-nocot.log 2>&1 &
  ( timeout $T python3 experiments/sweep.py $C/coconut_arithmetic_cot.yaml --name $tag --set "$GPU $R" --variant "" --results-dir /tmp/res > $L/$tag-cot.log 2>&1
    I="reasoning.init_from=checkpoints/coconut_arithmetic_cot_tiny/$tag-1"
    timeout $T python3 experiments/sweep.py $C/coconut_arithmetic.yaml --name $tag-coconut1 --set "$GPU $R $I" --variant "" --results-dir /tmp/res > $L/$tag-coconut1.log 2>&1 &
    timeout $T python3 experiments/sweep.py $C/coconut_arithmetic.yaml --name $tag-coconut3 --set "$GPU $R $I" --variant "reasoning.curriculum.epochs_per_stage=3 trainer.max_epochs=12" --results-dir /tmp/res > $L/$tag-coconut3.log 2>&1 &
    wait ) &
}
size L4H256 "layers: 4, hidden: 256, heads: 4"
size L8H128 "layers: 8, hidden: 128, heads: 4"
size L8H256 "layers: 8, hidden: 256, heads: 8"
wait
echo "all done in $(( $(date +%s) - start )) s"
grep -h "^\[sweep\]" $L/*.log
for f in $L/*.log; do echo "== $f"; grep -E "Error|error" $f | tail -2; done
tar czf $OUT/results.tgz /tmp/res $(find checkpoints -name 'metrics.csv' -path '*L[48]H*')
