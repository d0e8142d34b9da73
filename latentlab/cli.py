"""The ``latentlab`` command: a table of subcommands, each a thin layer over an importable function.

Everything below this module is argv-free, so notebooks call the same functions directly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from latentlab.errors import LatentLabError


def _cmd_fit(args: argparse.Namespace, extra: list[str]) -> int:
    from latentlab.config import load_config, parse_overrides
    from latentlab.training import fit

    config = load_config(args.config, parse_overrides(extra))
    result = fit(config, run_name=args.run, resume=args.resume)
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


COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[..., int], bool]] = {
    # name: (add arguments, run, accepts free --dotted.key overrides)
    "fit": (_add_fit, _cmd_fit, True),
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


if __name__ == "__main__":
    sys.exit(main())
