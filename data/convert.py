"""Convert one official dataset file to latentlab JSONL, once, offline (see data/README.md for sources and commands).

Usage: python data/convert.py {hotpotqa,gsm8k,gsm8k_aug,gsm_hard,svamp,multiarith,prosqa,prontoqa} INPUT OUTPUT.jsonl
           [--corpus CORPUS.jsonl]
"""

from __future__ import annotations

import argparse
import logging
import sys

from latentlab.data.converters import CONVERTERS, convert, extract_corpus
from latentlab.data.schema import QAExample, write_jsonl
from latentlab.errors import ConfigError, LatentLabError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help=f"which official format INPUT is in: {', '.join(sorted(CONVERTERS))}")
    parser.add_argument("input", help="the official file (JSON, JSONL or GSM8k-Aug text)")
    parser.add_argument("output", help="the JSONL file to write (QA records for hotpotqa, reasoning records otherwise)")
    parser.add_argument(
        "--corpus", help="hotpotqa only: also write the unique evidence sentences as a corpus JSONL for an index"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        records = convert(args.dataset, args.input)
        write_jsonl(args.output, records)
        print(f"wrote {len(records)} {args.dataset} records to {args.output}")
        if args.corpus:
            if not all(isinstance(r, QAExample) for r in records):
                raise ConfigError(f"--corpus needs a QA dataset with evidence; '{args.dataset}' has none")
            corpus = extract_corpus(records)
            write_jsonl(args.corpus, corpus)
            print(f"wrote {len(corpus)} unique evidence items to {args.corpus}")
    except LatentLabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
