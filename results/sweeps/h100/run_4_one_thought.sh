#!/bin/bash
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
L=$OUT/logs; mkdir -p $L /tmp/res
COT=checkpoints/coconut_arithmetic_cot_tiny/reproduce
S="trainer.accelerator=gpu trainer.progress_bar=false reasoning.init_from=$COT reasoning.curriculum.thoughts_per_step=1"
C=paper_configs/tiny/coconut_arithmetic.yaml
run() { name=$1; shift; timeout 320 python3 experiments/sweep.py $C --name $name --set "$S" --results-dir /tmp/res --variant "$*" > $L/$name.log 2>&1 & }
run c1_n24k "reasoning.data.num_train=24000"
run c1_n16k "reasoning.data.num_train=16000"
run c1_n16k_lr2e3 "reasoning.data.num_train=16000 optim.lr=2e-3"
wait
grep -h "^\[sweep\]" $L/*.log
tar czf $OUT/results.tgz /tmp/res $(find checkpoints -name 'metrics.csv' -path '*c1_n*')
