"""Rollout throughput of ``latentlab.rl.rollout`` relative to transformers ``generate``, measured in one run.

    python benchmarks/rollout_throughput.py [--model tiny | smollm2-135m-instruct] [--prompts 4] [--group 4]
        [--max-new-tokens 32] [--temperature 0.7] [--top-k 0] [--top-p 1.0] [--thoughts 16] [--repeats 7]

Pair 1: tokens/s of ``rollout`` (G samples of each prompt in one batched KV-cached generation, recording mu) over
tokens/s of ``model.generate(do_sample=True)`` on the same model, the same left-padded batch (each prompt repeated
G times, prompt-major), the same temperature / top-k / top-p and the same number of new tokens: EOS is disabled in
``rollout`` (an id never emitted) and ``generate`` gets ``min_new_tokens = max_new_tokens``, so both produce exactly
N x max_new_tokens tokens (checked). Ratio > 1 means the rollout sampler is faster.

Pair 2 (``--thoughts S > 0``): the cost of one continuous-thought step over one cached decode step, both from
``generate_from_ids`` on the same batch: (prefill + S thoughts) and (prefill + S decode steps), each less a
prefill-only arm timed in the same round, divided by S. Aim: <= 1.2.

Arms of a pair are interleaved (one untimed warm-up round, then ``--repeats`` rounds in a seeded shuffled order, see
timing.py); ratios are taken per round and printed as their median with IQR, min-max and the number of rounds.
"""

from __future__ import annotations

import argparse

import torch
from timing import interleaved, ratios, spread

from latentlab.backbones import load_causal_lm
from latentlab.reasoning.thoughts import generate_from_ids
from latentlab.rl.rollout import rollout

QUESTIONS = [
    "What is 17 plus 25? Think step by step.",
    "A train leaves at 3 pm and travels for 2 hours. When does it arrive?",
    "Name three prime numbers larger than ten.",
    "If x + 4 = 10, what is x?",
    "How many legs do five spiders have?",
    "Write the word 'cat' backwards.",
    "What is half of 86?",
    "Is 91 a prime number?",
]
NO_EOS = -1  # an id the sampler never emits: every row runs the whole budget


def left_pad(rows: list[list[int]], pad_id: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows], device=device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
    return ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' (random 2-layer llama, seconds) or a model spec")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4, help="G samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--thoughts", type=int, default=16, help="S steps of pair 2 (0 = skip it)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds, each running every arm once")
    parser.add_argument("--seed", type=int, default=0, help="seed of the arms' order in each round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    spec = {"tiny": {"arch": "llama", "layers": 2, "hidden": 64}} if args.model == "tiny" else args.model
    loaded = load_causal_lm(spec)
    model, tokenizer = loaded.model.to(args.device), loaded.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompts = [tokenizer(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS[: args.prompts]]
    rows = [prompt for prompt in prompts for _ in range(args.group)]  # prompt-major, as rollout orders them
    ids, mask = left_pad(rows, pad_id, args.device)
    n, t = len(rows), args.max_new_tokens
    generator = torch.Generator(device=args.device).manual_seed(0)
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}

    def ours() -> None:
        out = rollout(
            model, prompts, args.group, max_new_tokens=t, eos_id=NO_EOS, pad_id=pad_id, generator=generator, **sampling
        )
        assert int(out.mask.sum()) == n * t

    def hf() -> None:
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                max_new_tokens=t,
                min_new_tokens=t,
                pad_token_id=pad_id,
                **sampling,
            )
        assert out.shape == (n, ids.shape[1] + t)

    sync = torch.cuda.synchronize if str(args.device).startswith("cuda") else None
    times = interleaved({"rollout": ours, "generate": hf}, args.repeats, seed=args.seed, sync=sync)
    ours_tps = spread([n * t / s for s in times["rollout"]])
    hf_tps = spread([n * t / s for s in times["generate"]])
    ratio = spread(ratios(times["generate"], times["rollout"]))  # rollout tokens/s over generate tokens/s
    print(
        f"model={args.model} device={args.device} prompts={len(prompts)} G={args.group} N={n} "
        f"new_tokens={t} prompt_width={ids.shape[1]} T={args.temperature} top_k={args.top_k} top_p={args.top_p}"
    )
    print(f"rounds: {args.repeats} interleaved (seed {args.seed}) after 1 warm-up round; median (IQR, min-max, n)")
    print(f"rollout (KV stepper, mu recorded): {ours_tps.format('.1f')} tokens/s")
    print(f"transformers generate            : {hf_tps.format('.1f')} tokens/s")
    print(f"ratio rollout/generate           : {ratio.format('.3f')}")

    if args.thoughts > 0:
        s = args.thoughts
        common = {"eos_id": NO_EOS, "eot_id": None, "pad_id": pad_id, "temperature": args.temperature}

        def run(n_thoughts: int, new_tokens: int):
            return lambda: generate_from_ids(model, rows, n_thoughts, new_tokens, generator=generator, **common)

        arms = {"prefill": run(0, 1), "thoughts": run(s, 1), "decode": run(0, s + 1)}
        steps = interleaved(arms, args.repeats, seed=args.seed + 1, sync=sync)
        thought = [a - p for a, p in zip(steps["thoughts"], steps["prefill"])]
        decode = [d - p for d, p in zip(steps["decode"], steps["prefill"])]
        per_thought = spread([1e3 * x / s for x in thought])
        per_decode = spread([1e3 * x / s for x in decode])
        print(f"pair 2: {s} steps on N={n} rows, each arm less a prefill-only arm of the same round")
        print(f"continuous-thought step          : {per_thought.format('.3f')} ms")
        print(f"cached decode step               : {per_decode.format('.3f')} ms")
        print(f"ratio thought/decode step        : {spread(ratios(thought, decode)).format('.3f')} (aim <= 1.2)")


if __name__ == "__main__":
    main()
