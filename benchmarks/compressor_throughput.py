"""Compressor throughput relative to a bare backbone forward on the same batch, measured in one run.

    python benchmarks/compressor_throughput.py [--model smollm2-135m-instruct] [--batch 32] [--repeats 11]

Prints items/s of (a) the bare base model's transformer body on the evidence tokens, (b) the compressor
(compress adapter active, memory slot appended, latent gathered) on the same texts, and their ratio. The two arms
are interleaved (one untimed warm-up round, then ``--repeats`` rounds in a seeded shuffled order, see timing.py);
the ratio is taken per round and printed as its median with IQR, min-max and the number of rounds.
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved, ratios, spread

from latentlab.backbones import inner_model, load_causal_lm
from latentlab.configs import CompressorConfig, LoraSpec
from latentlab.data.synthetic import generate_world
from latentlab.memory.compressor import Compressor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=11, help="timed rounds, each running both arms once")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arms' order in each round")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    model_spec = {"tiny": {}} if args.model == "tiny" else args.model
    loaded = load_causal_lm(model_spec)
    lora = LoraSpec(r=args.rank, alpha=2 * args.rank, dropout=0.0)
    config = CompressorConfig(compress_lora=lora, query_lora=lora, decode_lora=lora, key_dim=256)
    compressor = Compressor(config, loaded.model, loaded.tokenizer, loaded.model.get_input_embeddings())
    compressor.to(args.device).eval()
    texts = [e.text for e in generate_world(num_people=64, seed=1).corpus()][: args.batch]
    ids, mask = compressor.tokenize(texts, config.max_evidence_tokens)

    def bare() -> None:
        with torch.no_grad(), compressor.lm.disable_adapter():
            inner_model(compressor.lm)(input_ids=ids, attention_mask=mask, use_cache=False)

    def compress() -> None:
        with torch.no_grad():
            compressor.encode_ids(ids, mask, "compress")

    sync = torch.cuda.synchronize if str(args.device).startswith("cuda") else None
    times = interleaved({"bare": bare, "compress": compress}, args.repeats, seed=args.seed, sync=sync)
    bare_ips = spread([len(texts) / t for t in times["bare"]])
    comp_ips = spread([len(texts) / t for t in times["compress"]])
    ratio = spread(ratios(times["bare"], times["compress"]))  # compressor items/s over bare items/s, per round
    print(f"model={args.model} device={args.device} batch={len(texts)} tokens/item={mask.sum(1).float().mean():.1f}")
    print(f"rounds: {args.repeats} interleaved (seed {args.seed}) after 1 warm-up round; median (IQR, min-max, n)")
    print(f"bare backbone forward : {bare_ips.format('.1f')} items/s")
    print(f"compressor (LoRA+slot): {comp_ips.format('.1f')} items/s")
    print(f"ratio compressor/bare : {ratio.format('.3f')}")


if __name__ == "__main__":
    main()
