"""Synthetic reasoning sets: seeded determinism, steps that really compute the answer, BFS-checked graph answers."""

from __future__ import annotations

import ast
import collections
import operator
import re

import pytest

from latentlab.data.converters import equation_parts
from latentlab.data.schema import read_cot
from latentlab.data.synthetic_reasoning import (
    SYNTHETIC_TASKS,
    arithmetic_chains,
    make_splits,
    prosqa_like,
    synthetic_splits,
)
from latentlab.errors import ConfigError

BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(expression: str, names: dict[str, int] | None = None) -> float:
    """A tiny reference evaluator for + - * / over integers and variables (no eval)."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
            return BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and names is not None:
            return names[node.id]
        raise AssertionError(f"unexpected node {ast.dump(node)} in {expression!r}")

    return walk(ast.parse(expression, mode="eval").body)


def parse_arithmetic_question(question: str) -> tuple[dict[str, int], str]:
    match = re.fullmatch(r"((?:[a-z]=\d+, )*[a-z]=\d+)\. Compute (.+)\.", question)
    assert match, question
    names = {name: int(value) for name, value in (pair.split("=") for pair in match.group(1).split(", "))}
    return names, match.group(2)


# ---------------------------------------------------------------------------------------------------------------------
# Arithmetic


def test_arithmetic_is_deterministic_and_seeds_differ():
    assert arithmetic_chains(50, seed=3) == arithmetic_chains(50, seed=3)
    assert [e.question for e in arithmetic_chains(50, seed=3)] != [e.question for e in arithmetic_chains(50, seed=4)]


def test_arithmetic_example_shape():
    example = arithmetic_chains(1, seed=0, min_steps=2, max_steps=2)[0]
    assert example.id == "arith-0"
    assert len(example.steps) == 2
    assert all(re.fullmatch(r"<<\d+[-+*/]\d+=\d+>>", s) for s in example.steps)
    assert re.fullmatch(r"a=\d, b=\d, c=\d\. Compute .+\.", example.question)


@pytest.mark.parametrize(("min_steps", "max_steps"), [(1, 1), (2, 4), (5, 6)])
def test_arithmetic_steps_compute_the_answer(min_steps, max_steps):
    examples = arithmetic_chains(200, seed=11, min_steps=min_steps, max_steps=max_steps, max_value=99)
    assert len({e.question for e in examples}) == 200
    counts = collections.Counter(len(e.steps) for e in examples)
    assert set(counts) == set(range(min_steps, max_steps + 1))
    for example in examples:
        names, expression = parse_arithmetic_question(example.question)
        previous = None
        for step in example.steps:
            left_side, result = equation_parts(step)
            assert evaluate(left_side) == int(result), step
            assert 0 <= int(result) <= 99
            operands = re.findall(r"\d+", left_side)
            # Each step after the first reuses the previous result as one operand.
            assert previous is None or previous in operands, (example.steps, step)
            previous = result
        assert example.answer == previous
        assert evaluate(expression, names) == int(example.answer)
        assert all(1 <= v <= 9 for v in names.values())


def test_arithmetic_division_is_exact():
    examples = arithmetic_chains(100, seed=5, ops=("/", "+"), min_steps=3, max_steps=3)
    assert any("/" in step for e in examples for step in e.steps)
    for example in examples:
        for step in example.steps:
            left_side, result = equation_parts(step)
            assert evaluate(left_side) == int(result)


def test_arithmetic_option_errors():
    with pytest.raises(ConfigError, match="max_steps=1 is below min_steps=2"):
        arithmetic_chains(3, seed=0, min_steps=2, max_steps=1)
    with pytest.raises(ConfigError, match=r"unknown operations \['\^'\]"):
        arithmetic_chains(3, seed=0, ops=("+", "^"))
    with pytest.raises(ConfigError, match="distinct questions"):
        arithmetic_chains(500, seed=0, min_steps=1, max_steps=1, max_operand=2, ops=("+",))


# ---------------------------------------------------------------------------------------------------------------------
# ProsQA-like

FACT = re.compile(r"(Every )?([A-Za-z]+) is a ([a-z]+)\.")


def parse_graph(question: str) -> tuple[dict[str, list[str]], str, str, str]:
    facts, _, query = question.rpartition(". Is ")
    match = re.fullmatch(r"([A-Z][a-z]+) a ([a-z]+) or ([a-z]+)\?", query)
    assert match, query
    graph: dict[str, list[str]] = collections.defaultdict(list)
    for sentence in re.findall(r"[^.]+\.", facts + "."):
        fact = FACT.fullmatch(sentence.strip())
        assert fact, sentence
        graph[fact.group(2)].append(fact.group(3))
    return graph, match.group(1), match.group(2), match.group(3)


def reachable(graph: dict[str, list[str]], start: str) -> set[str]:
    seen, frontier = {start}, collections.deque([start])
    while frontier:
        node = frontier.popleft()
        for nxt in graph.get(node, []):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return seen


def test_prosqa_like_is_deterministic_and_seeds_differ():
    assert prosqa_like(30, seed=1) == prosqa_like(30, seed=1)
    assert [e.question for e in prosqa_like(30, seed=1)] != [e.question for e in prosqa_like(30, seed=2)]


def test_prosqa_like_answers_are_correct_by_bfs():
    examples = prosqa_like(300, seed=7, min_hops=2, max_hops=6)
    assert len({e.question for e in examples}) == 300
    assert set(collections.Counter(len(e.steps) for e in examples)) == {2, 3, 4, 5, 6}
    first_option_is_answer = 0
    for example in examples:
        graph, person, first, second = parse_graph(example.question)
        from_person = reachable(graph, person)
        # Exactly one option is reachable, and it is the answer.
        assert (first in from_person) != (second in from_person), example.question
        answer = first if first in from_person else second
        assert example.answer == f"{person} is a {answer}."
        first_option_is_answer += answer == first
        # The steps are facts of the question that chain from the person to the answer.
        assert example.steps[0].startswith(f"{person} is a ")
        node = person
        for step in example.steps:
            fact = FACT.fullmatch(step)
            assert fact and fact.group(2) == node and fact.group(3) in graph[node], step
            assert step in example.question
            node = fact.group(3)
        assert node == answer
        # The wrong option is reachable from someone, so it is not a parentless giveaway.
        wrong = second if answer == first else first
        assert any(wrong in kids for kids in graph.values())
    assert 90 < first_option_is_answer < 210  # the answer's position is not a giveaway either


def test_prosqa_like_phrasing_matches_real_prosqa():
    example = prosqa_like(1, seed=0)[0]
    assert re.search(r" Is [A-Z][a-z]+ a [a-z]+pus or [a-z]+pus\?$", example.question)
    assert re.fullmatch(r"[A-Z][a-z]+ is a [a-z]+pus\.", example.answer)
    assert example.id == "prosqa_like-0"


def test_prosqa_like_option_errors():
    with pytest.raises(ConfigError, match="min_hops=0 is too small"):
        prosqa_like(2, seed=0, min_hops=0)
    with pytest.raises(ConfigError, match="n_people=1"):
        prosqa_like(2, seed=0, n_people=1)


# ---------------------------------------------------------------------------------------------------------------------
# Splits


@pytest.mark.parametrize("task", sorted(SYNTHETIC_TASKS))
def test_make_splits_writes_disjoint_deterministic_files(tmp_path, task):
    paths = make_splits(tmp_path / "a", task, seed=0, n_train=40, n_valid=10, n_test=10)
    assert set(paths) == {"train", "valid", "test"}
    splits = {name: read_cot(path) for name, path in paths.items()}
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [40, 10, 10]
    assert splits["valid"][3].id == f"{task}-valid-3"
    questions = [{e.question for e in examples} for examples in splits.values()]
    assert sum(len(q) for q in questions) == 60  # distinct within and across splits
    again = make_splits(tmp_path / "b", task, seed=0, n_train=40, n_valid=10, n_test=10)
    for name in paths:
        assert paths[name].read_bytes() == again[name].read_bytes()
    other = synthetic_splits(task, seed=1, n_train=40, n_valid=10, n_test=10)
    assert [e.question for e in other["train"]] != [e.question for e in splits["train"]]


def test_synthetic_splits_pass_options_and_reject_unknown_tasks():
    splits = synthetic_splits("arithmetic", seed=0, n_train=20, n_valid=5, n_test=5, min_steps=3, max_steps=3)
    assert all(len(e.steps) == 3 for examples in splits.values() for e in examples)
    with pytest.raises(ConfigError, match="unknown synthetic task 'gsm'.*arithmetic, prosqa_like"):
        synthetic_splits("gsm", seed=0, n_train=1, n_valid=1, n_test=1)
    with pytest.raises(ConfigError, match="n_valid=-1"):
        synthetic_splits("arithmetic", seed=0, n_train=1, n_valid=-1, n_test=1)


def test_held_out_splits_do_not_depend_on_the_training_size():
    """Runs trained on 40 or 400 questions are scored on the same test (and validation) questions, and neither
    held-out split shares a question with either training set."""
    small = synthetic_splits("arithmetic", seed=0, n_train=40, n_valid=10, n_test=10)
    large = synthetic_splits("arithmetic", seed=0, n_train=400, n_valid=10, n_test=10)
    for split in ("test", "valid"):
        assert [e.question for e in small[split]] == [e.question for e in large[split]]
    held_out = {e.question for e in small["test"] + small["valid"]}
    assert not held_out & {e.question for e in large["train"]}
    assert [e.question for e in small["train"]] == [e.question for e in large["train"][:40]]
