#!/bin/bash
# Device run: the tiny Coconut table on one GPU, plus Coconut schedule variants from the CPU CoT run, in parallel.
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch,transformers,lightning,peft;print(torch.__version__,transformers.__version__,lightning.__version__,peft.__version__,torch.cuda.is_available())"
COT=checkpoints/coconut_arithmetic_cot_tiny/reproduce
GPU="trainer.accelerator=gpu trainer.progress_bar=false"
L=$OUT/logs; mkdir -p $L /tmp/res
T=${T:-500}
start=$(date +%s)
timeout $T python3 experiments/reproduce.py coconut_arithmetic --run gpu --set "$GPU" --results-dir /tmp/res > $L/reproduce.log 2>&1 &
run() { name=$1; shift; timeout $T python3 experiments/sweep.py paper_configs/tiny/coconut_arithmetic.yaml --name $name --set "$GPU reasoning.init_from=$COT" --results-dir /tmp/res "$@" > $L/$name.log 2>&1 & }
run eps1 --variant ""
run eps3 --variant "reasoning.curriculum.epochs_per_stage=3 trainer.max_epochs=12"
run eps6 --variant "reasoning.curriculum.epochs_per_stage=6 trainer.max_epochs=24"
run c1 --variant "reasoning.curriculum.thoughts_per_step=1"
run eps3_noreset --variant "reasoning.curriculum.epochs_per_stage=3 trainer.max_epochs=12 reasoning.curriculum.reset_optimizer_each_stage=false"
run eps3_lr3e4 --variant "reasoning.curriculum.epochs_per_stage=3 trainer.max_epochs=12 optim.lr=3e-4"
wait
echo "all done in $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=memory.used --format=csv,noheader
tail -n 3 $L/*.log
tar czf $OUT/results.tgz /tmp/res $(find checkpoints -path '*gpu*' -o -path '*eps*' -o -path '*c1-*' | grep -E 'metrics\.(json|csv)$|summary\.json$|table\.md$')
ls -la $OUT
