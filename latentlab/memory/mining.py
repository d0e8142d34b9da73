"""Hard-negative mining: what a global memory returns for each training question, before training starts.

A per-question pool's distractors are the question's own other facts and random ones. A memory of the whole corpus
returns something else beside the positives: the facts its retrieval scores next, mostly the same relation about
other entities ("X is employed by Y" for five people). Training only on pools never shows the generator those,
so it learns to read the relation and not whose fact it is. Mining ranks the corpus for every training question
with the starting compressor, through a FAISS flat inner-product index, like the memory it will serve from.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from latentlab.data.schema import Evidence, QAExample
from latentlab.errors import DataError


def _keys(module, texts: Sequence[str], adapter: str, batch_size: int, what: str, progress: bool) -> np.ndarray:
    rows = []
    for start in tqdm(range(0, len(texts), batch_size), desc=f"mining: {what}", disable=not progress, leave=False):
        chunk = list(texts[start : start + batch_size])
        rows.append(module.compressor.keys(module.latents_of(chunk, adapter)).float().cpu().numpy())
    return np.ascontiguousarray(np.concatenate(rows), dtype=np.float32)


def mine_rankings(
    module,
    examples: Sequence[QAExample],
    corpus: Sequence[Evidence],
    depth: int,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Question id -> the display texts of its ``depth`` best corpus items under ``module``'s retrieval, best first.

    Latents go through ``module.latents_of``, so a run whose compress adapter is frozen finds every corpus latent
    already cached when training starts.
    """
    if not corpus:
        raise DataError("cannot mine negatives: the corpus is empty")
    if depth < 1:
        raise DataError(f"cannot mine negatives: depth must be >= 1, got {depth}")
    texts = list(dict.fromkeys(e.display_text() for e in corpus))
    comp = module.compressor
    was_training = comp.training
    comp.eval()
    try:
        with torch.no_grad():
            item_keys = _keys(module, texts, "compress", batch_size, "corpus", progress)
            query_keys = _keys(module, [e.question for e in examples], "query", batch_size, "questions", progress)
    finally:
        comp.train(was_training)
    index = faiss.IndexFlatIP(item_keys.shape[1])
    index.add(item_keys)
    _, rows = index.search(query_keys, min(depth, len(texts)))
    return {e.id: [texts[i] for i in row if i >= 0] for e, row in zip(examples, rows.tolist())}
