"""Can the bare generator read one soft token at all? Fill the latent slot with the best input it could get.

Usage:
  python experiments/reader_oracle.py paper_configs/tiny/latent_memory_text_projector_mixed.yaml

For each test question of the config (eval.split, eval.limit), the generator (no adapter) answers from:
  - nothing (no retrieval);
  - the gold answer as raw text (`Context 1: <answer>`), and the supporting facts as raw text;
  - one latent slot holding the input embedding of the gold answer's first token, or the mean embedding of all
    its tokens, with the paper's slot labels and with compact slots.
No projector output can beat a slot that already holds the answer's own token, so a row near zero there means
the generator needs help to read latents (``compressor.read_lora``). Writes ``results/probes/NAME_reader_oracle.{md,csv}``.
Nothing in latentlab imports this file.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from latentlab.backbones import load_causal_lm
from latentlab.configs import load_config, project_root
from latentlab.data.modules import load_qa_split
from latentlab.data.schema import QAExample
from latentlab.errors import LatentLabError
from latentlab.eval.metrics import ExactMatch, TokenF1
from latentlab.eval.report import write_table
from latentlab.memory.generator import Generator
from latentlab.memory.prompting import Prompt, PromptBuilder

REPO = project_root(Path(__file__).resolve().parent)


def _answers(gen: Generator, prompts: list[Prompt], slots: torch.Tensor | None, batch: int, max_new: int) -> list[str]:
    out: list[str] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        out += gen.answer(chunk, max_new, None if slots is None else slots[start : start + len(chunk)])
    return out


def reader_oracle(config_path: str, out_dir: Path, command: str, overrides: dict | None = None) -> list[dict]:
    config = load_config(config_path, overrides)
    examples = load_qa_split(config, config.eval.split, training_limits=False)[: config.eval.limit]
    if not examples:
        raise LatentLabError(f"{config.source_file}: split {config.eval.split!r} has no questions")
    loaded = load_causal_lm(config.generator.backbone, key="generator.backbone.model")
    gen = Generator(loaded.model.eval(), loaded.tokenizer)
    table = gen.embed.weight.detach()
    system = config.generator.system_prompt

    def token_ids(text: str) -> list[int]:
        return loaded.tokenizer(text, add_special_tokens=False)["input_ids"]

    first = torch.stack([table[token_ids(e.answers[0])[0]] for e in examples])
    mean = torch.stack([table[token_ids(e.answers[0])].mean(dim=0) for e in examples])
    text = PromptBuilder(loaded.tokenizer, system, "paper")
    conditions: list[tuple[str, Callable[[QAExample], Prompt], torch.Tensor | None]] = [
        ("no context", lambda e: text.text(e.question, []), None),
        ("gold answer as text", lambda e: text.text(e.question, [e.answers[0]]), None),
        ("supporting facts as text", lambda e: text.text(e.question, [s.text for s in e.supporting_evidence()]), None),
    ]
    for fmt in ("paper", "compact"):
        builder = PromptBuilder(loaded.tokenizer, system, fmt)
        conditions.append((f"slot = answer's first token ({fmt})", lambda e, b=builder: b.latent(e.question, 1), first))
        conditions.append((f"slot = mean of answer tokens ({fmt})", lambda e, b=builder: b.latent(e.question, 1), mean))
    rows = []
    gold = [e.answers for e in examples]
    for name, make, slots in conditions:
        predictions = _answers(
            gen, [make(e) for e in examples], slots, config.eval.batch_size, config.generator.max_new_tokens
        )
        em, f1 = ExactMatch(), TokenF1()
        em.update(predictions, gold)
        f1.update(predictions, gold)
        rows.append(
            {"input": name, "questions": len(examples), "exact_match": float(em.compute()), "f1": float(f1.compute())}
        )
        print(f"{name:>40}: EM {rows[-1]['exact_match']:.3f}  F1 {rows[-1]['f1']:.3f}", flush=True)
    title = f"{config.name}: what the bare generator answers from ideal inputs ({config.eval.split}, {len(examples)} questions)"
    write_table(rows, out_dir / f"{config.name}_reader_oracle", title, command=command)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a latent-memory config (its generator, eval split and eval.limit are used)")
    parser.add_argument("--results-dir", default=str(REPO / "results" / "probes"))
    args = parser.parse_args(argv)
    command = "python experiments/reader_oracle.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        reader_oracle(args.config, Path(args.results_dir), command)
    except LatentLabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
