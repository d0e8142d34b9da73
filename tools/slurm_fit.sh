#!/usr/bin/env bash
# Train one experiment on several GPU nodes with Slurm: one task per GPU, started by srun; Lightning reads each
# task's rank from Slurm (SLURM_PROCID, SLURM_LOCALID) and rank 0 writes the run directory. Every task sees the
# node's GPUs (--gres, not per-task binding) and takes the one of its local rank, as Lightning expects.
#
#   sbatch tools/slurm_fit.sh paper_configs/latent_memory/text_llama1b_llama8b.yaml [more `latentlab fit` options]
#   sbatch --nodes 4 tools/slurm_fit.sh CONFIG.yaml                      # more nodes: nothing else to change
#   STRATEGY=fsdp sbatch tools/slurm_fit.sh CONFIG.yaml                  # FSDP (decoder layers wrapped, LoRA-safe)
#   sbatch tools/slurm_fit.sh CONFIG.yaml --resume checkpoints/NAME/slurm-1234   # continue a run
#
# The global batch is data.batch_size x GPUs per node x nodes x trainer.accumulate_grad_batches: lower the
# accumulation (or the batch size) in the YAML when adding GPUs to keep the paper's effective batch.
#SBATCH --job-name=latentlab-fit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail
CONFIG="${1:?usage: sbatch tools/slurm_fit.sh CONFIG.yaml [latentlab fit options]}"
shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
VENV="${LATENTLAB_VENV:-.venv}"
STRATEGY="${STRATEGY:-ddp}"
RUN=()
case " $* " in
    *" --run "* | *" --run="* | *" --resume "* | *" --resume="*) ;;
    *) RUN=(--run "slurm-${SLURM_JOB_ID}") ;;  # one name for every task (each would otherwise stamp its own time)
esac
# export NCCL_SOCKET_IFNAME=ib0   # the interface the nodes talk over, if NCCL does not find it

srun --kill-on-bad-exit=1 "$VENV/bin/latentlab" fit "$CONFIG" \
    --trainer.strategy "$STRATEGY" \
    --trainer.accelerator gpu \
    --trainer.num_nodes "$SLURM_JOB_NUM_NODES" \
    --trainer.devices "$SLURM_NTASKS_PER_NODE" \
    "${RUN[@]}" "$@"
