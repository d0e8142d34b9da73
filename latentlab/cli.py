"""The ``latentlab`` command: a table of subcommands, each a thin layer over an importable function.

Everything below this module is argv-free, so notebooks call the same functions directly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from latentlab.errors import ConfigError, LatentLabError


def _cmd_fit(args: argparse.Namespace, extra: list[str]) -> int:
    from latentlab.configs import load_config, parse_overrides
    from latentlab.distributed import end_process_group, launch_rank
    from latentlab.training import fit

    config = load_config(args.config, parse_overrides(extra))
    try:
        result = fit(config, run_name=args.run, resume=args.resume)
    finally:
        end_process_group()
    if launch_rank(config.trainer.devices) != 0:
        return 0  # rank 0 reports the run
    print(f"run directory: {result.run_dir}")
    before, after = result.metrics.get("val_before", {}), result.metrics.get("val_after", {})
    for key in sorted(after):
        start = f"{before[key]:.4f} -> " if key in before else ""
        print(f"  {key:<20} {start}{after[key]:.4f}")
    return 0


def _add_fit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="train the experiment described by a YAML (overrides: --section.key VALUE)")
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--run", default=None, help="run name (default: a UTC timestamp)")
    p.add_argument("--resume", default=None, help="run directory whose last.ckpt to continue from")


def _compressor_checkpoint(args: argparse.Namespace, config) -> Path:
    """``--checkpoint``, else the YAML's eval.checkpoint: the trained compressor `index build|prepare` encode with."""
    from latentlab.configs import resolve_path

    if args.checkpoint:
        return Path(args.checkpoint)
    if config.eval.checkpoint:
        return resolve_path(config, "eval.checkpoint", config.eval.checkpoint)
    raise _usage(f"index {args.action} needs a trained compressor: --checkpoint DIR or eval.checkpoint in the YAML")


def _cmd_index_sharded(args: argparse.Namespace, extra: list[str]) -> int:
    """`index prepare | build-shard | merge`: a memory built by many workers (``latentlab.memory.index_merge``)."""
    from latentlab.memory import index_merge

    if args.action != "prepare" and extra:
        raise _usage(
            f"index {args.action} takes no config overrides (the prepared build fixes them): {' '.join(extra)}"
        )
    if args.action == "prepare":
        from latentlab.configs import load_config, parse_overrides
        from latentlab.data.schema import read_corpus
        from latentlab.memory.checkpoint import load_model

        if not args.corpus or not args.out or not args.num_shards:
            raise _usage("index prepare needs --corpus FILE, --out WORK_DIR and --num-shards N")
        config = load_config(args.target, parse_overrides(extra))
        model = load_model(_compressor_checkpoint(args, config), config)
        plan = index_merge.prepare_from_model(model, read_corpus(args.corpus), args.out, args.num_shards, args.corpus)
        print(f"prepared {plan.count} items in {plan.num_shards} shards in {args.out} ({config.index.factory})")
    elif args.action == "build-shard":
        if (args.shard is None) != (args.num_shards is None):
            raise _usage(
                "index build-shard takes --shard I with --num-shards N (or neither: torchrun's RANK, WORLD_SIZE)"
            )
        plan, _ = index_merge.read_plan(args.target)
        if args.num_shards is not None and args.num_shards != plan.num_shards:
            raise _usage(
                f"--num-shards {args.num_shards}, but {args.target} was prepared with {plan.num_shards} shards"
            )
        shards = None if args.shard is None else [args.shard]
        for result in index_merge.build_shards_from_work(args.target, shards, args.corpus):
            print(f"shard {result.shard}: {'built' if result.built else 'already built, kept'} ({result.count} items)")
    else:
        if not args.out:
            raise _usage("index merge needs --out MEMORY_DIR")
        index = index_merge.merge_shards(args.target, args.out)
        print(f"merged {len(index)} items into {args.out}")
    return 0


def _cmd_index(args: argparse.Namespace, extra: list[str]) -> int:
    if args.action in ("prepare", "build-shard", "merge"):
        return _cmd_index_sharded(args, extra)
    if args.action == "build":
        from latentlab.configs import load_config, parse_overrides
        from latentlab.data.schema import read_corpus
        from latentlab.memory.checkpoint import load_model
        from latentlab.memory.pipeline import build_memory

        if not args.corpus or not args.out:
            raise _usage("index build needs --corpus FILE and --out DIR")
        config = load_config(args.target, parse_overrides(extra))
        checkpoint = _compressor_checkpoint(args, config)
        corpus = read_corpus(args.corpus)
        # The YAML in hand is honoured (index:, compressor.max_evidence_tokens, generator.*); settings the weights
        # depend on must agree with the compressor's own config (load_model checks, naming both values).
        model = load_model(checkpoint, config)
        index = build_memory(model, corpus, args.out, skip_bad=args.skip_bad)
        print(f"built {len(index)} items into {args.out} ({config.index.factory})")
        if args.skip_bad:
            from latentlab.memory.pipeline import skipped_report_path

            skipped = len(corpus) - len(index)
            print(f"skipped {skipped} bad image item(s); report: {skipped_report_path(args.out)}")
    elif args.action == "search":
        from latentlab.memory.pipeline import LatentMemory

        if not args.query or not args.query.strip():
            raise _usage('index search needs a non-empty query: latentlab index search MEMORY_DIR "question"')
        if args.k < 1:
            raise _usage(f"-k must be >= 1, got {args.k}")
        memory = LatentMemory.open(args.target)
        for hit in memory.search(args.query, args.k):
            shown = f"[image {hit.image}] " if hit.modality == "image" else ""
            print(f"{hit.score:8.4f}  {hit.id}  {shown}{(hit.title + ': ') if hit.title else ''}{hit.text or ''}")
    else:
        from latentlab.memory.pipeline import memory_info

        print(json.dumps(memory_info(args.target), indent=2))
    return 0


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="build, search or describe a latent memory; prepare, build-shard, merge: one built by many workers",
    )
    p.add_argument("action", choices=["build", "search", "info", "prepare", "build-shard", "merge"])
    p.add_argument(
        "target", help="build, prepare: experiment YAML; search, info: memory directory; build-shard, merge: WORK_DIR"
    )
    p.add_argument("query", nargs="?", help="search: the query text")
    p.add_argument(
        "--corpus",
        help="build, prepare: corpus JSONL ({id, text|image, title?} per line); build-shard: default the prepared one",
    )
    p.add_argument("--out", help="build, merge: output memory directory; prepare: the build's WORK_DIR")
    p.add_argument("--checkpoint", help="build, prepare: trained compressor (export dir, run dir or .ckpt)")
    p.add_argument("--num-shards", type=int, default=None, help="prepare: shards to split the corpus into")
    p.add_argument(
        "--shard", type=int, default=None, help="build-shard: the shard to build (default: torchrun's RANK's)"
    )
    p.add_argument("-k", type=int, default=5, help="search: number of hits")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="build: leave out image items that cannot be loaded and list them in OUT.skipped.jsonl beside OUT",
    )


def _cmd_ask(args: argparse.Namespace, extra: list[str]) -> int:
    from latentlab.memory.pipeline import LatentMemory

    if not args.question.strip():
        raise _usage('ask needs a non-empty question: latentlab ask MEMORY_DIR "question"')
    if args.k < 1:
        raise _usage(f"-k must be >= 1, got {args.k}")
    memory = LatentMemory.open(args.memory)
    answer = memory.answer(args.question, args.k)
    print(answer.answer)
    for hit in answer.hits:
        print(f"  [{hit.score:.3f}] {hit.id}: {hit.text}")
    print(f"  generator tokens: {answer.prompt_tokens} in the prompt, {answer.context_tokens} of context")
    return 0


def _add_ask(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="answer a question from a latent memory")
    p.add_argument("memory", help="memory directory")
    p.add_argument("question")
    p.add_argument("-k", type=int, default=5)


def _cmd_evaluate(args: argparse.Namespace, extra: list[str]) -> int:
    from latentlab.configs import load_config, parse_overrides
    from latentlab.tasks import task_of

    config = load_config(args.config, parse_overrides(extra))
    named = [f"--{flag} {value}" for flag, value in (("checkpoint", args.checkpoint), ("out", args.out)) if value]
    command = "latentlab evaluate " + " ".join(
        [args.config, *named, *(["--overwrite"] if args.overwrite else []), *extra]
    )
    result = task_of(config).evaluate(
        config, checkpoint=args.checkpoint, out_dir=args.out, command=command, overwrite=args.overwrite or None
    )
    print(result.table())
    print(f"written to {result.out_dir}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="latent memory vs raw-text baselines; writes predictions, summary, table")
    p.add_argument("config")
    p.add_argument("--checkpoint", default=None, help="trained compressor (default: eval.checkpoint)")
    p.add_argument("--out", default=None, help="output directory (default: <eval.output_dir>/<name>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results folder (else refused)")


def _cmd_demo(args: argparse.Namespace, extra: list[str]) -> int:
    from latentlab.demo import run_demo

    result = run_demo(config_path=args.config, overrides=extra)
    print(result.table())
    print(f"written to {result.out_dir}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job on the embedded default: train or load, build, answer, compare")
    p.add_argument(
        "--config", default=None, help="experiment YAML (default: paper_configs/tiny/latent_memory_text.yaml)"
    )


def _cmd_explain(args: argparse.Namespace, extra: list[str]) -> int:
    from latentlab.reasoning.evaluate import explain

    explanation = explain(args.checkpoint, args.question)
    for i, step in enumerate(explanation.decoded_steps, start=1):
        print(f"thought {i}: {step}")
    print(f"answer: {explanation.answer}  ({explanation.n_thoughts} latent thoughts)")
    return 0


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="decode each latent thought of an ATP-Latent run back to text")
    p.add_argument("checkpoint", help="run directory (config.yaml + last.ckpt) or a .ckpt file")
    p.add_argument("question")


def _data_hotpotqa_splits(args: argparse.Namespace) -> None:
    from latentlab.configs.loader import project_root
    from latentlab.data.hotpotqa_splits import DEFAULT_EVALUATION, DEFAULT_SOURCES, describe, make_hotpotqa_splits

    # As the YAMLs and tests find the shared datasets: $LATENTLAB_SHARED_DATA, else ../shared/data beside the project.
    data_dir = Path(
        args.data_dir or os.environ.get("LATENTLAB_SHARED_DATA") or project_root(Path.cwd()).parent / "shared/data"
    )
    sources = args.source or [data_dir / p for p in DEFAULT_SOURCES]
    evaluation = args.exclude or [data_dir / p for p in DEFAULT_EVALUATION]
    splits = make_hotpotqa_splits(
        args.out,
        sources,
        evaluation,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        min_supporting_paragraphs=args.min_supporting_paragraphs,
        overwrite=args.overwrite,
    )
    print(describe(splits))


def _data_webqa(args: argparse.Namespace) -> None:
    from latentlab.data.webqa import convert_webqa

    stats = convert_webqa(args.json, args.imgs, args.out, args.lineidx, args.split, args.overwrite)
    print(stats.summary())


def _data_nlvr(args: argparse.Namespace) -> None:
    from latentlab.data.nlvr import convert_nlvr, split_nlvr, write_nlvr

    if args.seed is not None and not args.splits:
        raise ConfigError("latentlab data nlvr: --seed is read only with --splits (it seeds their shuffle)")

    def counted(rows) -> str:
        labels = Counter(e.answers[0] for e in rows)
        return f"{len(rows)} true/false questions ({labels['true']} true, {labels['false']} false)"

    examples = convert_nlvr(args.dev_json, args.images, args.image_dir)
    if not args.splits:
        written = write_nlvr(examples, args.out, f"{Path(args.dev_json).stem}.jsonl", args.overwrite)
        print(f"{counted(examples)} in {written}")
        return
    splits = split_nlvr(examples, seed=args.seed or 0)
    write_nlvr(splits, args.out, overwrite=args.overwrite)
    for name, rows in splits.items():
        print(f"{name}: {counted(rows)}")
    print("train / validation / test by image set: no picture is in two splits")


DATA_ACTIONS: dict[str, Callable[[argparse.Namespace], None]] = {
    "hotpotqa-splits": _data_hotpotqa_splits,
    "webqa": _data_webqa,
    "nlvr": _data_nlvr,
}
"""`latentlab data ACTION`: each builds one data set from official files."""


def _cmd_data(args: argparse.Namespace, extra: list[str]) -> int:
    DATA_ACTIONS[args.action](args)
    print(f"written to {args.out}")
    return 0


class _DataActionParser(argparse.ArgumentParser):
    """The parser of one `data` action: an option of another action is refused naming the action it belongs to."""

    owners: dict[str, list[str]]
    """Option string -> the data actions that take it (set by ``_add_data``)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extra = super().parse_known_args(args, namespace)
        if extra:
            action = self.prog.split()[-1]
            option = next((a.split("=")[0] for a in extra if a.startswith("-")), None)
            owners = getattr(self, "owners", {}).get(option or "", [])
            where = f" ({option} is an option of `latentlab data {' / '.join(owners)}`)" if owners else ""
            ours = sorted(o for o in self._option_string_actions if o.startswith("--") and o != "--help")
            self.error(f"unrecognized arguments: {' '.join(extra)}{where}; `data {action}` takes {', '.join(ours)}")
        return namespace, extra


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data", help="build data sets from official files (hotpotqa-splits: real training splits; webqa; nlvr)"
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=_DataActionParser)

    splits = actions.add_parser("hotpotqa-splits", help="train / val / test splits of the official HotpotQA files")
    splits.add_argument("--out", required=True, help="output folder (train/val/test/unlabelled JSONL + manifest.json)")
    splits.add_argument(
        "--data-dir", default=None, help="shared data folder (default: $LATENTLAB_SHARED_DATA or ../shared/data)"
    )
    splits.add_argument(
        "--source", action="append", help="official HotpotQA file to split (repeatable; default: train + fullwiki)"
    )
    splits.add_argument(
        "--exclude",
        action="append",
        help="evaluation file whose questions stay out of every split (repeatable; default: the dev-distractor file)",
    )
    splits.add_argument("--val-fraction", type=float, default=0.1, help="share of each source's questions in val")
    splits.add_argument("--test-fraction", type=float, default=0.1, help="share of each source's questions in test")
    splits.add_argument("--seed", type=int, default=0, help="seed of the assignment of questions to splits")
    splits.add_argument(
        "--min-supporting-paragraphs",
        type=int,
        default=1,
        help="questions with fewer supporting paragraphs in their context go to unlabelled text (2: both hops)",
    )

    webqa = actions.add_parser("webqa", help="WebQA_train_val.json + imgs.tsv -> <split>.jsonl and images/")
    webqa.add_argument("--json", required=True, help="the official WebQA_train_val.json")
    webqa.add_argument("--imgs", required=True, help="the official imgs.tsv (image_id TAB base64 a line)")
    webqa.add_argument("--lineidx", default=None, help="its byte-offset index (default: imgs.lineidx beside --imgs)")
    webqa.add_argument("--out", required=True, help="output folder (<split>.jsonl per split + images/)")
    webqa.add_argument("--split", action="append", help="convert only this split (repeatable; default: every split)")

    nlvr = actions.add_parser("nlvr", help="NLVR dev.json -> true/false questions on its images, read in place")
    nlvr.add_argument("--dev-json", required=True, help="NLVR's dev.json (JSON Lines; images/ beside it)")
    nlvr.add_argument("--out", required=True, help="output folder (<stem of --dev-json>.jsonl)")
    nlvr.add_argument(
        "--images", choices=["first", "all"], default="first", help="first: image 0 of each record; all: images 0-5"
    )
    nlvr.add_argument("--image-dir", default=None, help="folder of the numbered image folders (default: images/)")
    nlvr.add_argument(
        "--splits",
        action="store_true",
        help="write train/validation/test.jsonl (80/10/10 by image set; validation and test on image 0 only)",
    )
    nlvr.add_argument("--seed", type=int, default=None, help="seed of the --splits shuffle (default 0)")

    for action in (splits, webqa, nlvr):
        action.add_argument("--overwrite", action="store_true", help="replace an existing output folder (else refused)")
    owners: dict[str, list[str]] = {}
    for name, action in actions.choices.items():
        for option in action._option_string_actions:
            owners.setdefault(option, []).append(name)
    for action in actions.choices.values():
        action.owners = owners


class _UsageError(LatentLabError):
    pass


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[..., int], bool]] = {
    # name: (add arguments, run, accepts free --dotted.key overrides)
    "fit": (_add_fit, _cmd_fit, True),
    "index": (_add_index, _cmd_index, True),
    "ask": (_add_ask, _cmd_ask, False),
    "evaluate": (_add_evaluate, _cmd_evaluate, True),
    "demo": (_add_demo, _cmd_demo, True),
    "explain": (_add_explain, _cmd_explain, False),
    "data": (_add_data, _cmd_data, False),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentlab", description="Latent memory and latent reasoning.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    _, run, takes_overrides = COMMANDS[args.command]
    if extra and not takes_overrides:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return run(args, extra)
    except LatentLabError as err:
        print(f"latentlab {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"latentlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
