"""Seeded synthetic reasoning sets of any size: multi-step arithmetic and ProsQA-style graph questions.

Fictional names and small integers only, so a model trained from scratch can learn them and nothing leaks from pre-training.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

from latentlab.data.converters import equation_step
from latentlab.data.schema import CoTExample, write_jsonl
from latentlab.errors import ConfigError
from latentlab.registry import Registry

_VARIABLES = "abcdefghijklmnopqrstuvwxyz"
_OPERATIONS: dict[str, Callable[[int, int], int | None]] = {
    "+": lambda x, y: x + y,
    "-": lambda x, y: x - y,
    "*": lambda x, y: x * y,
    "/": lambda x, y: x // y if y != 0 and x % y == 0 else None,  # exact division only
}

# Fictional concept names in ProsQA's style ("wumpus", "brimpus"); all start with a consonant so "a <name>" reads well.
_ONSETS = ["b", "br", "d", "dr", "f", "fl", "g", "gl", "gr", "h", "j", "k", "kr", "l", "m", "n", "p", "pl", "r", "s"]
_ONSETS += ["sc", "sh", "sl", "st", "t", "tr", "v", "w", "y", "z", "zh"]
_VOWELS = ["a", "e", "i", "o", "u", "oo"]
_CODAS = ["", "m", "n", "r", "l"]
CONCEPT_NAMES: tuple[str, ...] = tuple(sorted({o + v + c + "pus" for o in _ONSETS for v in _VOWELS for c in _CODAS}))
_PEOPLE = ["Alex", "Bob", "Cora", "Dana", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jack", "Kim", "Lena", "Max", "Nia"]
_PEOPLE += ["Omar", "Pia", "Rex", "Sally", "Tom", "Uma", "Vic", "Wren", "Yuri", "Zoe"]
PERSON_NAMES: tuple[str, ...] = tuple(_PEOPLE)


def _check_range(low_name: str, low: int, high_name: str, high: int, minimum: int) -> None:
    if low < minimum:
        raise ConfigError(f"{low_name}={low} is too small (expected at least {minimum})")
    if high < low:
        raise ConfigError(f"{high_name}={high} is below {low_name}={low} (expected {low_name} <= {high_name})")


def _unique(n: int, seed: int, make: Callable[[random.Random], CoTExample], id_prefix: str) -> list[CoTExample]:
    """n examples with distinct question texts, drawn from one seeded stream; ids ``f"{id_prefix}-{i}"``."""
    if n < 0:
        raise ConfigError(f"n={n} must be >= 0")
    rng = random.Random(seed)
    examples: list[CoTExample] = []
    seen: set[str] = set()
    attempts = 0
    while len(examples) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ConfigError(
                f"only {len(examples)} distinct questions found for n={n} after {attempts - 1} draws; "
                "widen the options (more steps, larger operands, more concepts) or ask for fewer"
            )
        example = make(rng)
        if example.question in seen:
            continue
        seen.add(example.question)
        examples.append(CoTExample(id=f"{id_prefix}-{len(examples)}", **_fields(example)))
    return examples


def _fields(example: CoTExample) -> dict:
    return {"question": example.question, "steps": example.steps, "answer": example.answer}


# ---------------------------------------------------------------------------------------------------------------------
# Arithmetic chains


def _arithmetic_problem(
    rng: random.Random, min_steps: int, max_steps: int, max_operand: int, max_value: int, ops: tuple[str, ...]
) -> CoTExample:
    n_steps = rng.randint(min_steps, max_steps)
    names = _VARIABLES[: n_steps + 1]
    values = [rng.randint(1, max_operand)]
    expression = names[0]
    running = values[0]
    steps = []
    for position in range(1, n_steps + 1):
        # Every (operation, operand, side) whose result stays in [0, max_value]; the first step reads a op b.
        sides = ("right",) if position == 1 else ("right", "left")
        choices = []
        for op in ops:
            for operand in range(1, max_operand + 1):
                for side in sides:
                    left, right = (running, operand) if side == "right" else (operand, running)
                    result = _OPERATIONS[op](left, right)
                    if result is not None and 0 <= result <= max_value:
                        choices.append((op, operand, side, left, right, result))
        op, operand, side, left, right, result = rng.choice(choices)
        values.append(operand)
        inner = expression if position == 1 else f"({expression})"
        expression = f"{inner}{op}{names[position]}" if side == "right" else f"{names[position]}{op}{inner}"
        steps.append(equation_step(f"{left}{op}{right}", result))
        running = result
    assignments = ", ".join(f"{name}={value}" for name, value in zip(names, values))
    return CoTExample(id="", question=f"{assignments}. Compute {expression}.", steps=steps, answer=str(running))


def arithmetic_chains(
    n: int,
    seed: int,
    min_steps: int = 2,
    max_steps: int = 4,
    max_operand: int = 9,
    max_value: int = 99,
    ops: tuple[str, ...] = ("+", "-", "*"),
    id_prefix: str = "arith",
) -> list[CoTExample]:
    """n distinct multi-step arithmetic problems; each step one operation, written like GSM8k-Aug.

    Example: question ``"a=3, b=4, c=5. Compute (a*b)+c."``, steps ``["<<3*4=12>>", "<<12+5=17>>"]``, answer ``"17"``.
    Operands are 1..max_operand; every intermediate value is an integer in [0, max_value] ("/" only when exact).
    The step count is drawn uniformly from [min_steps, max_steps], so curriculum stages can ask for longer chains.
    """
    _check_range("min_steps", min_steps, "max_steps", max_steps, 1)
    if max_steps > len(_VARIABLES) - 1:
        raise ConfigError(f"max_steps={max_steps} is too large (expected at most {len(_VARIABLES) - 1})")
    if max_operand < 1 or max_value < max_operand:
        raise ConfigError(f"need 1 <= max_operand <= max_value, got max_operand={max_operand}, max_value={max_value}")
    unknown = [op for op in ops if op not in _OPERATIONS]
    if not ops or unknown:
        raise ConfigError(f"ops={list(ops)} has unknown operations {unknown} (known: {' '.join(_OPERATIONS)})")
    ops = tuple(ops)
    return _unique(
        n, seed, lambda rng: _arithmetic_problem(rng, min_steps, max_steps, max_operand, max_value, ops), id_prefix
    )


# ---------------------------------------------------------------------------------------------------------------------
# ProsQA-style reachability


def _prosqa_problem(
    rng: random.Random, min_hops: int, max_hops: int, n_extra_concepts: int, n_extra_edges: int, n_people: int
) -> CoTExample:
    """One question. The graph is built so that only the planted chain leads from the person to the target:

    reachable side R = the chain plus R-extras (edges into R-extras only), unreachable side U = a distractor person's
    chain to the negative target plus U-extras; U may point into R, R never points into U, so no cycles.
    """
    hops = rng.randint(min_hops, max_hops)
    neg_hops = rng.randint(min_hops, max_hops)
    concepts = rng.sample(CONCEPT_NAMES, hops + neg_hops + n_extra_concepts)
    chain, neg_chain, extras = concepts[:hops], concepts[hops : hops + neg_hops], concepts[hops + neg_hops :]
    cut = rng.randint(0, len(extras))
    r_extra, u_extra = extras[:cut], extras[cut:]
    people = rng.sample(PERSON_NAMES, n_people)
    root, rival, others = people[0], people[1], people[2:]

    edges = [(root, chain[0])] + list(zip(chain, chain[1:]))
    steps = [f"{root} is a {chain[0]}."] + [f"Every {x} is a {y}." for x, y in zip(chain, chain[1:])]
    edges += [(rival, neg_chain[0])] + list(zip(neg_chain, neg_chain[1:]))

    candidates = [(x, y) for y_pos, y in enumerate(r_extra) for x in [root, *chain, *r_extra[:y_pos]]]
    candidates += [(x, y) for y_pos, y in enumerate(u_extra) for x in [rival, *neg_chain, *u_extra[:y_pos]]]
    candidates += [(x, y) for x in neg_chain + u_extra for y in chain + r_extra]
    candidates += [(p, y) for p in others for y in concepts]
    planted = set(edges)
    candidates = [edge for edge in candidates if edge not in planted]
    edges += rng.sample(candidates, min(n_extra_edges, len(candidates)))
    # Every extra person says something, so a name in the facts is never a giveaway.
    for person in others:
        if not any(x == person for x, _ in edges):
            edges.append((person, rng.choice(concepts)))

    person_set = set(people)
    facts = [f"{x} is a {y}." if x in person_set else f"Every {x} is a {y}." for x, y in edges]
    rng.shuffle(facts)
    target, neg_target = chain[-1], neg_chain[-1]
    first, second = (target, neg_target) if rng.random() < 0.5 else (neg_target, target)
    question = " ".join(facts) + f" Is {root} a {first} or {second}?"
    return CoTExample(id="", question=question, steps=steps, answer=f"{root} is a {target}.")


def prosqa_like(
    n: int,
    seed: int,
    min_hops: int = 3,
    max_hops: int = 6,
    n_extra_concepts: int = 10,
    n_extra_edges: int = 20,
    n_people: int = 3,
    id_prefix: str = "prosqa_like",
) -> list[CoTExample]:
    """n distinct ProsQA-style questions over random DAGs of fictional concepts.

    The question lists the facts ("Tom is a wumpus.", "Every wumpus is a yumpus.") in random order and ends with
    "Is Tom a X or Y?" (ProsQA's phrasing); exactly one option is reachable from Tom. The steps are the facts along the
    only path to it, one per hop (hops drawn from [min_hops, max_hops]); the answer is "Tom is a X.". The unreachable
    option is the end of another person's chain of similar length, so it is not told apart by having no parents.
    The defaults give about 22 nodes, 30 facts and 3-6 steps, near the real ProsQA test set (23 nodes, 36 edges, 3-6).
    """
    _check_range("min_hops", min_hops, "max_hops", max_hops, 1)
    if n_extra_concepts < 0 or n_extra_edges < 0:
        raise ConfigError(f"n_extra_concepts={n_extra_concepts} and n_extra_edges={n_extra_edges} must be >= 0")
    if not 2 <= n_people <= len(PERSON_NAMES):
        raise ConfigError(f"n_people={n_people} must be in [2, {len(PERSON_NAMES)}] (the asked person and a rival)")
    if 2 * max_hops + n_extra_concepts > len(CONCEPT_NAMES):
        raise ConfigError(f"2*max_hops + n_extra_concepts must be at most {len(CONCEPT_NAMES)} concept names")
    return _unique(
        n,
        seed,
        lambda rng: _prosqa_problem(rng, min_hops, max_hops, n_extra_concepts, n_extra_edges, n_people),
        id_prefix,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Splits

SYNTHETIC_TASKS: Registry[Callable[..., list[CoTExample]]] = Registry("synthetic task")
"""Generators ``(n, seed, **options) -> list[CoTExample]`` by task name."""
SYNTHETIC_TASKS.register("arithmetic", arithmetic_chains)
SYNTHETIC_TASKS.register("prosqa_like", prosqa_like)


def synthetic_splits(
    task: str, seed: int, n_train: int, n_valid: int, n_test: int, **options
) -> dict[str, list[CoTExample]]:
    """train/valid/test lists of one generated set, disjoint by question text; ids ``f"{task}-{split}-{i}"``.

    ``options`` go to the task's generator (e.g. ``min_steps=3``). The same arguments give the same splits. The
    held-out splits are drawn first (test, then valid), so they do not depend on ``n_train``: runs trained on more
    or fewer questions are scored on the same test questions.
    """
    generate = SYNTHETIC_TASKS.get(task)
    sizes = {"train": n_train, "valid": n_valid, "test": n_test}
    for split, size in sizes.items():
        if size < 0:
            raise ConfigError(f"n_{split}={size} must be >= 0")
    # One generator call, so every question is distinct across the three splits; held-out splits come first.
    examples = generate(sum(sizes.values()), seed, **options)
    splits: dict[str, list[CoTExample]] = {}
    start = 0
    for split in ("test", "valid", "train"):
        size = sizes[split]
        splits[split] = [
            CoTExample(id=f"{task}-{split}-{i}", **_fields(example))
            for i, example in enumerate(examples[start : start + size])
        ]
        start += size
    return {split: splits[split] for split in sizes}


def make_splits(
    out_dir: str | os.PathLike, task: str, seed: int, n_train: int, n_valid: int, n_test: int, **options
) -> dict[str, Path]:
    """Write ``train.jsonl``, ``valid.jsonl`` and ``test.jsonl`` of ``synthetic_splits(...)`` to out_dir."""
    splits = synthetic_splits(task, seed, n_train, n_valid, n_test, **options)
    out_dir = Path(out_dir)
    return {split: write_jsonl(out_dir / f"{split}.jsonl", examples) for split, examples in splits.items()}
