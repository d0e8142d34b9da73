"""Use a trained compressor: export it, build a latent memory over a corpus, search it and answer from it.

``LatentMemory.open(DIR)`` needs nothing but the directory: the compressor that built the memory is stored
beside the index (config + trainable weights, a few MB) and its fingerprint must match the manifest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from latentlab.backbones import fingerprint, spec_name
from latentlab.configs import ExperimentConfig, config_from_dict
from latentlab.data.schema import Evidence, titled
from latentlab.errors import IndexError_, LatentLabError
from latentlab.memory.index import IndexSpec, LatentIndex, build_index
from latentlab.memory.prompting import Prompt

COMPRESSOR_DIR = "compressor"
WEIGHTS = "weights.safetensors"


@dataclass(frozen=True)
class Hit:
    """One retrieved evidence item."""

    id: str
    score: float
    title: str | None = None
    text: str | None = None


@dataclass
class Answer:
    """A generated answer with what it read and what it cost in generator tokens."""

    question: str
    answer: str
    hits: list[Hit] = field(default_factory=list)
    prompt_tokens: int = 0
    no_system_tokens: int = 0
    context_tokens: int = 0


# --------------------------------------------------------------------------- compressor files


def _fingerprint(config: ExperimentConfig, state: dict[str, torch.Tensor]) -> str:
    cfg = config.compressor
    parts = {"model": spec_name(cfg.backbone.model), "key_dim": cfg.key_dim, "precision": cfg.backbone.precision}
    return fingerprint(parts, {k: v for k, v in state.items() if ".decode." not in k})


def compressor_fingerprint(module) -> str:
    """Identifies a trained compressor: base model spec, key size and every tensor that builds or reads a memory
    (the reconstruction decoder is left out: it plays no part in either)."""
    return _fingerprint(module.config, module.compressor.trainable_state_dict())


def export_compressor(
    module, out_dir: str | Path, include_decoder: bool = True, dtype: torch.dtype = torch.float32
) -> str:
    """Write config.yaml + trainable weights (LoRA, slot, heads) + fingerprint.txt; returns the fingerprint.

    ``include_decoder=False`` drops the reconstruction adapter (not needed to build or answer from a memory)
    and ``dtype=torch.float16`` halves the file: together they make a shippable inference checkpoint.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to("cpu", dtype).contiguous()
        for k, v in module.compressor.trainable_state_dict().items()
        if include_decoder or ".decode." not in k
    }
    tmp = out_dir / f".{WEIGHTS}.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, out_dir / WEIGHTS)
    from latentlab.configs import to_dict

    (out_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(module.config), sort_keys=False), encoding="utf-8")
    # The fingerprint is of the weights as stored (after any rounding), which is what a loader sees.
    stored = _fingerprint(module.config, state)
    (out_dir / "fingerprint.txt").write_text(stored + "\n", encoding="utf-8")
    return stored


def _config_beside(path: Path) -> ExperimentConfig:
    config_path = path / "config.yaml"
    if not config_path.exists():
        raise LatentLabError(f"{path}: no config.yaml beside the compressor weights (expected a run or export dir)")
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config = config_from_dict(data, source=str(config_path))
    config.source_file = str(config_path)
    return config


def _weights_source(source: Path) -> tuple[Path | None, Path | None]:
    """(.ckpt file, export folder): which of the two ``source`` is (the other is None); neither is an error."""
    if source.is_file() and source.suffix == ".ckpt":
        return source, None
    if (source / WEIGHTS).exists():
        return None, source
    if (source / "last.ckpt").exists():
        return source / "last.ckpt", None
    raise LatentLabError(f"{source}: not a trained compressor (expected {WEIGHTS}, last.ckpt or a .ckpt file)")


def load_compressor_weights(
    module, source: str | Path, allow_missing_decoder: bool = True, allow_missing_reader: bool = False
) -> None:
    """Load trained compressor weights (export folder, run directory or .ckpt) into ``module.compressor``.

    An export's fingerprint.txt is checked. Inference exports leave out the reconstruction decoder; that is
    accepted only where ``allow_missing_decoder`` (the decoder then keeps its initial weights). A stage that adds
    a reading adapter to an earlier stage's compressor (``allow_missing_reader``) starts it at peft's
    initialisation, which leaves the generator as it was.
    """
    source = Path(source)
    ckpt, folder = _weights_source(source)
    if ckpt is not None:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        state = {k.removeprefix("compressor."): v for k, v in state.items() if k.startswith("compressor.")}
    else:
        state = load_file(str(folder / WEIGHTS))
    expected = set(module.compressor.trainable_state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if allow_missing_decoder:
        missing = [k for k in missing if ".decode." not in k]
    if allow_missing_reader:
        missing = [k for k in missing if ".read." not in k]
    if missing or unexpected:
        decoder = " (an inference export has no decoder)" if any(".decode." in k for k in missing) else ""
        raise LatentLabError(
            f"{source}: weights do not fit this compressor config: missing {missing[:3]}{decoder}, "
            f"unexpected {unexpected[:3]}"
        )
    own = module.compressor.state_dict()
    mismatched = [k for k in state if own[k].shape != state[k].shape]
    if mismatched:
        raise LatentLabError(f"{source}: weights do not fit this compressor config: mis-shaped {mismatched[:3]}")
    module.compressor.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
    if folder is not None and (folder / "fingerprint.txt").exists():
        stored = (folder / "fingerprint.txt").read_text().strip()
        loaded = {k: v for k, v in module.compressor.trainable_state_dict().items() if k in state}
        if _fingerprint(module.config, loaded) != stored:
            raise LatentLabError(f"{source}: weights do not match fingerprint.txt ({stored}); the export is damaged")


def load_trained(source: str | Path, device: str = "cpu"):
    """A LatentMemoryModule with trained weights from an export dir, a run dir (last.ckpt) or a .ckpt file."""
    from latentlab.memory.module import LatentMemoryModule

    source = Path(source)
    ckpt, folder = _weights_source(source)
    module = LatentMemoryModule(_config_beside(ckpt.parent if ckpt is not None else folder))
    load_compressor_weights(module, source)
    return module.to(device).eval()


# --------------------------------------------------------------------------- building


def encode_corpus(module, items: Sequence[Evidence]) -> tuple[np.ndarray, np.ndarray]:
    """Evidence -> (keys [n, d], latents [n, H]) float32, with the compress adapter."""
    with torch.no_grad():
        latents = module.compressor.encode_evidence([e.display_text() for e in items])
        keys = module.compressor.keys(latents)
    return keys.cpu().numpy().astype(np.float32), latents.cpu().numpy().astype(np.float32)


def index_spec(config) -> IndexSpec:
    """The IndexSpec of an experiment's `index:` section."""
    ix = config.index
    return IndexSpec(
        factory=ix.factory,
        nprobe=ix.nprobe,
        ef_search=ix.ef_search,
        latent_dtype=ix.latent_dtype,
        max_train_keys=ix.max_train_keys,
    )


def build_memory(
    compressor,
    corpus: Sequence[Evidence],
    out_dir: str | Path,
    spec: IndexSpec | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> LatentIndex:
    """Compress a corpus into a memory directory (resumable; refuses a directory built by another compressor).

    ``compressor``: a trained-compressor path (see ``load_trained``) or an already loaded module.
    """
    out_dir = Path(out_dir)
    module = load_trained(compressor) if isinstance(compressor, (str, Path)) else compressor
    spec = spec or index_spec(module.config)
    fp = compressor_fingerprint(module)
    stored = out_dir / COMPRESSOR_DIR / "fingerprint.txt"
    if stored.exists() and stored.read_text().strip() != fp:
        raise IndexError_(
            f"{out_dir} was built with compressor {stored.read_text().strip()}, not {fp}; "
            "choose another output directory or delete it"
        )
    index = build_index(
        out_dir,
        corpus,
        lambda batch: encode_corpus(module, batch),
        key_dim=module.config.compressor.key_dim,
        latent_dim=module.compressor.hidden,
        fingerprint=fp,
        spec=spec,
        batch_size=batch_size,
        progress=progress,
    )
    if not stored.exists():
        export_compressor(module, out_dir / COMPRESSOR_DIR)
    return index


# --------------------------------------------------------------------------- answering


class LatentMemory:
    """A built memory and its compressor: ``search`` and ``answer``, batched."""

    def __init__(self, module, index: LatentIndex | None, batch_size: int = 16):
        self.module = module
        self.index = index
        self.batch_size = batch_size

    @classmethod
    def open(cls, path: str | Path, compressor: str | Path | None = None, verify: bool = True) -> LatentMemory:
        """Open a memory; ``compressor`` (default: the one stored in it) must be the one that built it."""
        path = Path(path)
        source = Path(compressor) if compressor is not None else path / COMPRESSOR_DIR
        if compressor is None and not (source / WEIGHTS).exists():
            raise IndexError_(f"{path}: no {COMPRESSOR_DIR}/{WEIGHTS} (is this a memory built by latentlab?)")
        module = load_trained(source)
        index = LatentIndex.open(path, fingerprint=compressor_fingerprint(module), verify=verify)
        return cls(module, index)

    @property
    def generator(self):
        return self.module.generator

    def query_keys(self, questions: Sequence[str]) -> torch.Tensor:
        keys = []
        with torch.no_grad():
            for start in range(0, len(questions), self.batch_size):
                chunk = list(questions[start : start + self.batch_size])
                keys.append(self.module.compressor.keys(self.module.compressor.encode_queries(chunk)))
        return torch.cat(keys)

    def search(self, questions: str | Sequence[str], k: int = 5) -> list[list[Hit]]:
        single = isinstance(questions, str)
        questions = [questions] if single else list(questions)
        if self.index is None:
            raise LatentLabError("this LatentMemory has no index (built for per-question pools only)")
        scores, ids = self.index.search(self.query_keys(questions).cpu().numpy(), k)
        results = []
        for row_scores, row_ids in zip(scores, ids):
            kept = [(s, i) for s, i in zip(row_scores, row_ids) if i is not None]
            items = self.index.items_for([i for _, i in kept])
            results.append([Hit(i, float(s), e.title, e.text) for (s, i), e in zip(kept, items)])
        return results[0] if single else results

    def answer_from_latents(
        self, questions: Sequence[str], latents: Sequence[torch.Tensor], hits: Sequence[list[Hit]]
    ) -> list[Answer]:
        """Answer each question from its latents ([k_i, H] each) through the projector and the generator."""
        module, answers = self.module, []
        for start in range(0, len(questions), self.batch_size):
            qs = list(questions[start : start + self.batch_size])
            lats = list(latents[start : start + self.batch_size])
            prompts = [module.prompts.latent(q, int(z.shape[0])) for q, z in zip(qs, lats)]
            with torch.no_grad():
                stacked = torch.cat([z.to(module.device) for z in lats]) if lats else None
                projected = module.compressor.project(stacked) if stacked is not None and len(stacked) else None
            texts = _generate(module, prompts, projected)
            answers += _answers(qs, texts, prompts, hits[start : start + self.batch_size])
        return answers

    def answer(self, questions: str | Sequence[str], k: int = 5) -> Answer | list[Answer]:
        single = isinstance(questions, str)
        questions = [questions] if single else list(questions)
        hits = self.search(questions, k)
        latents = [torch.from_numpy(self.index.latents_for([h.id for h in row])) for row in hits]
        answers = self.answer_from_latents(questions, latents, hits)
        return answers[0] if single else answers


def answer_with_text(module, questions: Sequence[str], hits: Sequence[list[Hit]], batch_size: int = 8) -> list[Answer]:
    """Raw-text RAG with the same generator: `Context i: text` for each hit (none: no retrieval)."""
    answers: list[Answer] = []
    for start in tqdm(range(0, len(questions), batch_size), desc="answer (text)", leave=False, disable=None):
        qs = list(questions[start : start + batch_size])
        rows = list(hits[start : start + batch_size])
        prompts = [module.prompts.text(q, [titled(h.title, h.text or "") for h in row]) for q, row in zip(qs, rows)]
        answers += _answers(qs, _generate(module, prompts), prompts, rows)
    return answers


def _generate(module, prompts: list[Prompt], projected: torch.Tensor | None = None) -> list[str]:
    """Greedy answers of the generator for prompts (latent slots filled from ``projected``, read through the
    reading adapter if the compressor has one)."""
    return module.generator.answer(
        prompts, module.config.generator.max_new_tokens, projected, read=projected is not None
    )


def _answers(questions: list[str], texts: list[str], prompts: list[Prompt], hits) -> list[Answer]:
    return [
        Answer(q, t, list(h), p.total_tokens, p.no_system_tokens, p.context_tokens)
        for q, t, p, h in zip(questions, texts, prompts, hits)
    ]


def answer_to_record(answer: Answer) -> dict:
    return json.loads(
        json.dumps(
            {
                "question": answer.question,
                "answer": answer.answer,
                "hits": [h.__dict__ for h in answer.hits],
                "prompt_tokens": answer.prompt_tokens,
                "no_system_tokens": answer.no_system_tokens,
                "context_tokens": answer.context_tokens,
            }
        )
    )
