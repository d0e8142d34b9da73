"""Probe a built memory: does each stored latent still carry the value its fact states?

Usage:
  python experiments/probe_memory.py paper_configs/tiny/latent_memory_text_projector_mixed.yaml \
      --memory results/latent_memory_text_tiny_projector_mixed/memory

For configs on the synthetic world (``data.source: synthetic``), which knows each fact's value: per relation
(a person's born city, job and employer; a city's country; a company's city), a linear probe
(``latentlab.eval.probe.linear_probe``) on the latents the generator reads, trained on 70% of that relation's facts
and scored on the rest, next to always answering the most frequent value. Writes ``results/probes/NAME.{md,csv}``.
Nothing in latentlab imports this file.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from latentlab.configs import load_config, project_root
from latentlab.data.modules import synthetic_world
from latentlab.errors import ConfigError, LatentLabError
from latentlab.eval.probe import linear_probe
from latentlab.eval.report import write_table
from latentlab.memory.index import LatentIndex

REPO = project_root(Path(__file__).resolve().parent)


def probe_memory(config_path: str, memory: str, out_dir: Path, command: str) -> list[dict]:
    config = load_config(config_path)
    if config.data.source != "synthetic":
        raise ConfigError(
            f"{config.source_file}: key 'data.source': probing needs the synthetic world (it knows every fact's "
            f"value), got {config.data.source!r}"
        )
    values = synthetic_world(config).values
    index = LatentIndex.open(memory)
    missing = [fact_id for fact_id in values if fact_id not in index]
    if missing:
        raise ConfigError(
            f"memory {memory} lacks {len(missing)} facts of the world of {config.source_file} (first: {missing[0]!r});"
            " was it built over this config's corpus?"
        )
    by_relation: dict[str, list[str]] = {}
    for fact_id in values:
        kind, _, relation = fact_id.split(":")
        by_relation.setdefault(f"{kind}:{relation}", []).append(fact_id)
    rows = []
    for relation, ids in sorted(by_relation.items()):
        result = linear_probe(torch.from_numpy(index.latents_for(ids)), [values[i] for i in ids], seed=config.seed)
        rows.append(
            {
                "relation": relation,
                "facts": len(ids),
                "values": result.n_classes,
                "test_facts": result.n_test,
                "probe_accuracy": result.accuracy,
                "majority_accuracy": result.majority_accuracy,
            }
        )
    write_table(rows, out_dir / config.name, f"{config.name}: linear probes of the stored latents", command=command)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the latent-memory config the memory was built from")
    parser.add_argument("--memory", required=True, help="a built memory directory")
    parser.add_argument("--results-dir", default=str(REPO / "results" / "probes"))
    args = parser.parse_args(argv)
    command = "python experiments/probe_memory.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        rows = probe_memory(args.config, args.memory, Path(args.results_dir), command)
    except LatentLabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for row in rows:
        print(
            f"{row['relation']:>16}: {row['values']:>3} values, probe {row['probe_accuracy']:.3f}, "
            f"majority {row['majority_accuracy']:.3f} ({row['test_facts']} held-out facts)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
