"""A process of a multi-process fit, started by tests/test_distributed.py through torchrun
(``python -m torch.distributed.run --nproc-per-node N -m tests.ddp_fit SPEC.json``).

SPEC.json lists fits, run one after the other in this process: ``[{"config", "overrides", "run", "out"}]``. Rank 0
writes to each ``out`` the loss of every optimizer step averaged over the ranks (each rank's loss is the mean over
its own micro-batch), the run directory and the metrics ``fit`` returned.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L

from latentlab.configs import load_config
from latentlab.distributed import end_process_group
from latentlab.io import write_json
from latentlab.training import fit


class GlobalLoss(L.Callback):
    """The training loss of each step, as the mean over the ranks of their micro-batch losses."""

    def __init__(self) -> None:
        self.curve: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.curve.append(float(trainer.strategy.reduce(outputs["loss"].detach(), reduce_op="mean")))


def main(spec_path: str) -> None:
    for spec in json.loads(Path(spec_path).read_text()):
        curve = GlobalLoss()
        config = load_config(spec["config"], spec["overrides"])
        result = fit(config, run_name=spec["run"], callbacks=[curve])
        if int(os.environ.get("RANK", "0")) == 0:
            write_json(spec["out"], {"curve": curve.curve, "run_dir": str(result.run_dir), "metrics": result.metrics})
    end_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
