"""Linear probes (latentlab.eval.probe) and the world's fact values they are scored against."""

from __future__ import annotations

import pytest
import torch

from latentlab.data.synthetic import generate_world
from latentlab.errors import ConfigError
from latentlab.eval.probe import linear_probe


def _labelled(n: int, informative: bool) -> tuple[torch.Tensor, list[str]]:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (n,), generator=g)
    noise = torch.randn(n, 16, generator=g)
    features = noise + (3.0 * torch.nn.functional.one_hot(y, 16).float() if informative else 0.0)
    return features, [f"v{int(v)}" for v in y]


def test_probe_reads_a_label_the_vectors_carry_and_not_one_they_do_not():
    carried = linear_probe(*_labelled(400, informative=True))
    absent = linear_probe(*_labelled(400, informative=False))
    assert carried.n_train == 280 and carried.n_test == 120 and carried.n_classes == 4
    assert carried.accuracy > 0.95
    assert absent.accuracy < 0.45  # 4 balanced classes: chance is 0.25
    assert 0.1 < absent.majority_accuracy < 0.45


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
