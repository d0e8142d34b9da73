"""One training pass of the frozen generator on latent prompts, with and without the cached system prompt.

    python benchmarks/generator_prefix_cache.py [--model smollm2-135m-instruct] [--batch 16] [--repeats 7]

Times forward + backward (into the latents) of ``Generator.continuation_logits`` on a batch of answer prompts
(`Latent context i: <z>` slots, question, gold answer), packed (a) whole and (b) with ``split_prefix=True``,
where the prefix every row shares is read from its key/value cache. The two arms are interleaved (one untimed
warm-up round, then ``--repeats`` rounds in a seeded shuffled order, see timing.py). Prints both medians, the
speed-up taken per round as its median with IQR, min-max and the number of rounds, and the largest logit
difference between the two.
"""

from __future__ import annotations

import argparse
import random

import torch
from timing import interleaved, ratios, spread

from latentlab.backbones import load_causal_lm
from latentlab.configs import GeneratorConfig
from latentlab.data.synthetic import generate_world
from latentlab.memory.generator import Generator
from latentlab.memory.prompting import PromptBuilder, pack_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds, each running both arms once")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arms' order in each round")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_causal_lm({"tiny": {}} if args.model == "tiny" else args.model)
    generator = Generator(loaded.model, loaded.tokenizer)
    builder = PromptBuilder(loaded.tokenizer, GeneratorConfig().system_prompt)
    rng = random.Random(0)
    questions = generate_world(num_people=64, seed=1).questions["train"][: args.batch]
    prompts = [builder.latent(q.question, rng.randint(1, 4)) for q in questions]
    replies = [loaded.tokenizer(q.answers[0], add_special_tokens=False)["input_ids"] for q in questions]
    slots = sum(p.num_latents for p in prompts)
    latents = torch.randn(slots, generator.embedding_size) * float(generator.embed.weight.std())
    latents.requires_grad_(True)

    def step(split: bool) -> torch.Tensor:
        packed = pack_prompts(prompts, generator.embed, latents, replies, split_prefix=split)
        logits = generator.continuation_logits(packed)
        logits.logsumexp(dim=-1).mean().backward()
        return logits.detach()

    times = interleaved({"whole": lambda: step(False), "split": lambda: step(True)}, args.repeats, seed=args.seed)
    whole_ms, split_ms = (spread([1000 * t for t in times[arm]]) for arm in ("whole", "split"))
    speedup = spread(ratios(times["whole"], times["split"]))
    diff = (step(False) - step(True)).abs().max().item()
    prefix = len(pack_prompts(prompts, generator.embed, latents, replies, split_prefix=True).prefix_ids)
    tokens = sum(len(p.ids) + len(r) for p, r in zip(prompts, replies))
    print(f"model {args.model}, batch {args.batch}, {tokens} prompt+answer tokens, shared prefix {prefix} tokens a row")
    print(f"rounds: {args.repeats} interleaved (seed {args.seed}) after 1 warm-up round; median (IQR, min-max, n)")
    print(f"whole prompts:        {whole_ms.format('.1f')} ms a forward+backward")
    print(f"cached shared prefix: {split_ms.format('.1f')} ms a forward+backward")
    print(f"speed-up whole/cached: {speedup.format('.2f')}x   max |logit difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
