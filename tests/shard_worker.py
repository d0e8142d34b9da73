"""A worker process of tests/test_index_merge.py: builds its shards of a prepared build, as a process of a torchrun
would (``RANK`` / ``WORLD_SIZE`` from the environment), encoding with a table of precomputed keys and latents.

``python -m tests.shard_worker WORK_DIR CORPUS.jsonl TABLE.npz FINGERPRINT``
"""

from __future__ import annotations

import sys

import numpy as np

from latentlab.data.schema import read_corpus
from latentlab.memory.index_merge import build_shard, read_plan, worker_shards
from tests.test_index import TableEncoder


def main(work_dir: str, corpus_path: str, table_path: str, fingerprint: str) -> None:
    corpus = read_corpus(corpus_path)
    with np.load(table_path) as table:
        encoder = TableEncoder(corpus, table["keys"], table["latents"])
    plan, _ = read_plan(work_dir)
    for shard in worker_shards(plan.num_shards):
        result = build_shard(work_dir, corpus, encoder, shard, fingerprint=fingerprint, batch_size=64, progress=False)
        print(f"shard {result.shard}: built={result.built}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
