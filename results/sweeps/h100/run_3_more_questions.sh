#!/bin/bash
# Device run: is Coconut's tiny row short of steps? The same CoT start (carried), 6x the training questions.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
L=$OUT/logs; mkdir -p $L /tmp/res
T=${T:-520}
COT=checkpoints/coconut_arithmetic_cot_tiny/reproduce
S="trainer.accelerator=gpu trainer.progress_bar=false reasoning.init_from=$COT reasoning.data.num_train=24000"
C=paper_configs/tiny/coconut_arithmetic.yaml
start=$(date +%s)
run() { name=$1; shift; timeout $T python3 experiments/sweep.py $C --name $name --set "$S" --results-dir /tmp/res --variant "$*" > $L/$name.log 2>&1 & }
run n24k ""
run n24k_lr3e4 "optim.lr=3e-4"
run n24k_stage1 "reasoning.curriculum.epochs_per_stage=3 trainer.max_epochs=3"
run n24k_stage1_c1 "reasoning.curriculum.epochs_per_stage=3 trainer.max_epochs=3 reasoning.curriculum.thoughts_per_step=1"
wait
echo "all done in $(( $(date +%s) - start )) s"
grep -h "^\[sweep\]" $L/*.log
for f in $L/*.log; do echo "== $f"; grep -E "Error|error" $f | tail -2; done
tar czf $OUT/results.tgz /tmp/res $(find checkpoints -name 'metrics.csv' -path '*n24k*')
