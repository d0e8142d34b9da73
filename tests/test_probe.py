"""Linear probes (latentlab.eval.probe) and the world's fact values they are scored against."""

from __future__ import annotations

import pytest
import torch

from latentlab.data.synthetic import generate_world
from latentlab.errors import ConfigError
from latentlab.eval.probe import bag_of_words_probe, linear_probe


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


def _token_sets(n: int, vocab: int, per_row: int, seed: int) -> list[list[int]]:
    rng = torch.Generator().manual_seed(seed)
    return [torch.randperm(vocab, generator=rng)[:per_row].tolist() for _ in range(n)]


def test_bag_of_words_probe_finds_tokens_the_vectors_carry_and_only_the_prior_otherwise():
    vocab = 40
    train_tokens, test_tokens = _token_sets(300, vocab, 3, 0), _token_sets(50, vocab, 3, 1)

    def bag(sets):  # each vector is its text's multi-hot bag: the tokens are linearly there
        out = torch.zeros(len(sets), vocab)
        for row, tokens in enumerate(sets):
            out[row, tokens] = 1.0
        return out

    carried = bag_of_words_probe(bag(train_tokens), train_tokens, bag(test_tokens), test_tokens, top_k=3, epochs=100)
    assert (carried.n_train, carried.n_test, carried.vocab, carried.top_k) == (300, 50, 40, 3)
    assert carried.recall == 1.0  # the 3 carried tokens score highest in every held-out row
    # The same vector for every row: the head can learn the token frequencies only, so it ranks like the prior.
    absent = bag_of_words_probe(torch.ones(300, vocab), train_tokens, torch.ones(50, vocab), test_tokens, top_k=3)
    assert absent.prior_recall == carried.prior_recall
    assert absent.recall == pytest.approx(absent.prior_recall, abs=0.07)
    assert absent.recall < 0.3


def test_bag_of_words_probe_counts_unseen_target_tokens_as_missed_and_refuses_bad_shapes():
    features = torch.eye(4)
    result = bag_of_words_probe(features, [[0], [1], [2], [3]], features[:1], [[99]], top_k=4)
    assert result.recall == 0.0 and result.prior_recall == 0.0
    with pytest.raises(ConfigError, match="token lists"):
        bag_of_words_probe(features, [[0]], features, [[0]] * 4)
    with pytest.raises(ConfigError, match="at least one target token"):
        bag_of_words_probe(features, [[0], [1], [2], [3]], features[:1], [[]])
    with pytest.raises(ConfigError, match="top_k"):
        bag_of_words_probe(features, [[0], [1], [2], [3]], features[:1], [[0]], top_k=0)
