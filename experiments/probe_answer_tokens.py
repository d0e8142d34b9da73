"""Does a real sentence's latent still hold its words, and the answer span in it? A bag-of-words probe.

Usage:
  python experiments/probe_answer_tokens.py paper_configs/tiny/latent_memory_hotpotqa_real_reader.yaml \
      [--checkpoint DIR] [--unlabelled data/hotpotqa_splits/unlabelled.jsonl] [--train-sentences 3000]

A linear head (``latentlab.eval.probe.bag_of_words_probe``) learns, from the latents of unlabelled real sentences,
which tokens each sentence holds. It is then scored on the supporting sentences of the config's evaluation
questions (eval.split, eval.limit) that contain their question's gold answer:
  - answer tokens: of the tokens the answer span takes inside that sentence, the share among the probe's top k;
  - sentence tokens: the same for all of the sentence's tokens.
Three feature sets go through the same probe, on the same sentences:
  - the compressor's latents (what the memory stores);
  - the mean input embedding of the sentence's tokens (a control that holds every word by construction: how far a
    linear probe gets when the words are there);
  - none: ranking tokens by how many training sentences hold them (the prior).
Writes ``results/probes/NAME_answer_tokens.{md,csv}``. Nothing in latentlab imports this file.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from latentlab.backbones import input_embeddings
from latentlab.configs import config_root, load_config, project_root
from latentlab.data.modules import load_qa_split
from latentlab.data.schema import read_corpus
from latentlab.errors import ConfigError, LatentLabError
from latentlab.eval.probe import bag_of_words_probe
from latentlab.eval.report import write_table
from latentlab.memory.checkpoint import load_model

REPO = project_root(Path(__file__).resolve().parent)
DEFAULT_UNLABELLED = "data/hotpotqa_splits/unlabelled.jsonl"


def answer_rows(examples) -> list[tuple[str, str]]:
    """(supporting sentence, answer) for each supporting sentence holding its question's first gold answer
    (case-insensitive; yes/no answers are not spans and are left out)."""
    rows = []
    for example in examples:
        answer = example.answers[0].strip()
        if not answer or answer.lower() in ("yes", "no"):
            continue
        for item in example.supporting_evidence():
            if item.text and answer.lower() in item.text.lower():
                rows.append((item.text, answer))
    return rows


def span_tokens(tokenizer, text: str, answer: str, max_tokens: int) -> tuple[list[int], list[int]]:
    """The sentence's token ids (cut at ``max_tokens``, as the compressor reads it) and those of them that overlap
    the first occurrence of ``answer`` (character offsets)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"][:max_tokens], encoded["offset_mapping"][:max_tokens]
    start = text.lower().index(answer.lower())
    end = start + len(answer)
    inside = [i for i, (a, b) in zip(ids, offsets) if a < end and b > start]
    return ids, inside


def _features(model, texts: list[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents [N, H] through the compress adapter, and the mean input embedding of each text's tokens [N, H]."""
    comp = model.compressor
    table = input_embeddings(comp.lm).weight
    latents, means = [], []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            ids, mask = comp.tokenize(texts[start : start + batch_size], comp.config.max_evidence_tokens)
            latents.append(comp.encode_ids(ids, mask, "compress").float())
            weights = mask.unsqueeze(-1).to(table.dtype)
            means.append(((table[ids] * weights).sum(1) / weights.sum(1).clamp(min=1)).float())
            print(f"  compressed {min(start + batch_size, len(texts))}/{len(texts)}", end="\r", flush=True)
    print()
    return torch.cat(latents), torch.cat(means)


def probe_answer_tokens(
    config_path: str,
    checkpoint: str | None,
    unlabelled: str,
    train_sentences: int,
    top_k: int,
    out_dir: Path,
    command: str,
    overrides: dict | None = None,
) -> list[dict]:
    config = load_config(config_path, overrides)
    root = config_root(config)
    source = checkpoint or config.eval.checkpoint
    if not source:
        raise ConfigError(f"{config.source_file}: no compressor: set eval.checkpoint or pass --checkpoint")
    corpus_path = Path(unlabelled) if Path(unlabelled).is_absolute() else root / unlabelled
    if not corpus_path.exists():
        raise ConfigError(
            f"--unlabelled: {corpus_path} not found (make it with: latentlab data hotpotqa-splits --out "
            f"data/hotpotqa_splits)"
        )
    corpus = [item.text for item in read_corpus(corpus_path) if item.text]
    model = load_model(Path(source) if Path(source).is_absolute() else root / source, config)

    picks = np.random.default_rng(config.seed).permutation(len(corpus))[:train_sentences]
    train_texts = [corpus[i] for i in sorted(picks)]
    examples = load_qa_split(config, config.eval.split, training_limits=False)[: config.eval.limit]
    rows = answer_rows(examples)
    if not rows:
        raise ConfigError(
            f"{config.source_file}: no supporting sentence of split {config.eval.split!r} holds its answer"
        )
    tokenizer, max_tokens = model.compressor.tokenizer, model.compressor.config.max_evidence_tokens
    train_tokens = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_tokens] for t in train_texts]
    test = [span_tokens(tokenizer, text, answer, max_tokens) for text, answer in rows]
    kept = [i for i, (_, inside) in enumerate(test) if inside]  # an answer cut off at max_tokens is not in the latent
    test_texts = [rows[i][0] for i in kept]
    sentence_targets = [test[i][0] for i in kept]
    answer_targets = [test[i][1] for i in kept]
    print(f"probe: {len(train_texts)} unlabelled sentences to train, {len(kept)} answer-bearing sentences to test")
    train_latents, train_means = _features(model, train_texts, config.index.batch_size)
    test_latents, test_means = _features(model, test_texts, config.index.batch_size)
    results = []
    for name, train_x, test_x in (
        ("latent (what the memory stores)", train_latents, test_latents),
        ("mean token embedding (control: every word there)", train_means, test_means),
    ):
        row = {"features": name}
        for target_name, targets in (("answer", answer_targets), ("sentence", sentence_targets)):
            result = bag_of_words_probe(train_x, train_tokens, test_x, targets, top_k=top_k, seed=config.seed)
            row[f"{target_name}_tokens_recall@{top_k}"] = result.recall
            row[f"{target_name}_prior_recall@{top_k}"] = result.prior_recall
        row["train_sentences"], row["test_sentences"] = len(train_texts), len(kept)
        results.append(row)
        print(
            f"{name:>50}: answer {row[f'answer_tokens_recall@{top_k}']:.3f}, sentence "
            f"{row[f'sentence_tokens_recall@{top_k}']:.3f} (prior {row[f'answer_prior_recall@{top_k}']:.3f} / "
            f"{row[f'sentence_prior_recall@{top_k}']:.3f})",
            flush=True,
        )
    title = (
        f"{config.name}: bag-of-words probe of real sentences ({config.eval.split}, {len(kept)} answer-bearing "
        f"supporting sentences; compressor {source})"
    )
    write_table(results, out_dir / f"{config.name}_answer_tokens", title, command=command)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a latent-memory config with real QA data (its eval split is probed)")
    parser.add_argument("--checkpoint", default=None, help="compressor (default: eval.checkpoint)")
    parser.add_argument("--unlabelled", default=DEFAULT_UNLABELLED, help="corpus JSONL the probe trains on")
    parser.add_argument("--train-sentences", type=int, default=3000, help="seeded sample of it to train on")
    parser.add_argument("--top-k", type=int, default=50, help="tokens a sentence's prediction keeps")
    parser.add_argument("--results-dir", default=str(REPO / "results" / "probes"))
    args = parser.parse_args(argv)
    if args.train_sentences < 2 or args.top_k < 1:
        parser.error("--train-sentences must be >= 2 and --top-k >= 1")
    command = "python experiments/probe_answer_tokens.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        probe_answer_tokens(
            args.config,
            args.checkpoint,
            args.unlabelled,
            args.train_sentences,
            args.top_k,
            Path(args.results_dir),
            command,
        )
    except LatentLabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
