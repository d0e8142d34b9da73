"""Linear probes (latentlab.eval.probe) and the world's fact values they are scored against."""

from __future__ import annotations

import pytest
import torch

from latentlab.data.synthetic import generate_world
from latentlab.errors import ConfigError
from latentlab.eval.probe import linear_probe


def _labels(n: int) -> torch.Tensor:
    """Class ids 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, ... (50%, 30%, 20%): one clear majority class in any split."""
    return torch.tensor([(0, 0, 0, 0, 0, 1, 1, 1, 2, 2)[i % 10] for i in range(n)])


def test_probe_reads_a_label_the_vectors_carry_and_not_one_they_do_not():
    y = _labels(400)
    labels = [f"v{int(v)}" for v in y]
    carried = linear_probe(3.0 * torch.nn.functional.one_hot(y, 16).float(), labels)
    absent = linear_probe(torch.ones(400, 16), labels)  # every row the same vector: nothing to read
    assert (carried.n_train, carried.n_test, carried.n_classes) == (280, 120, 3)
    assert carried.accuracy == 1.0  # one dimension per class, no noise: linearly separable
    # Same labels, same seeded split: the same majority baseline. With identical vectors the probe can only learn
    # the label prior, so it answers the majority training class for every row: exactly the baseline.
    assert carried.majority_accuracy == absent.majority_accuracy
    assert absent.accuracy == absent.majority_accuracy


def test_probe_scores_a_label_seen_only_in_the_test_rows_as_an_error():
    # 2 rows, 0.7 of them for training: one trains, the other (the other label) is never seen in training.
    result = linear_probe(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), ["a", "b"])
    assert (result.n_train, result.n_test, result.n_classes) == (1, 1, 2)
    assert result.accuracy == 0.0 and result.majority_accuracy == 0.0


def test_probe_refuses_mismatched_or_too_few_rows():
    with pytest.raises(ConfigError, match="N labels"):
        linear_probe(torch.zeros(3, 2), ["a", "b"])
    with pytest.raises(ConfigError, match="one training and one test row"):
        linear_probe(torch.zeros(1, 2), ["a"])


def test_world_values_name_what_each_fact_states():
    world = generate_world(num_people=10, seed=3)
    assert set(world.values) == set(world.facts)
    for fact_id, value in world.values.items():
        assert world.facts[fact_id].rstrip(".").endswith(value), fact_id
