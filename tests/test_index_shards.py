"""Tests of ShardedLatentIndex: saved shards searched as one give one index's answers; mismatched shards are refused.

The reference is a single Flat index over all the keys (brute-force inner product, numpy in float64).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from latentlab.data.schema import Evidence
from latentlab.errors import IndexError_
from latentlab.memory.index import IndexConfig, LatentIndex
from latentlab.memory.index_shards import ShardedLatentIndex
from latentlab.memory.pipeline import LatentMemory
from tests.test_index import FINGERPRINT, KEY_DIM, LATENT_DIM, brute_force_top_k, make_data, unit_rows

SIZES = (120, 1, 79)  # a one-item shard: most of its k results are padding that the merge must skip


def save_shard(path: Path, items, keys, latents, spec: IndexConfig | None = None, **create) -> LatentIndex:
    memory = LatentIndex.create(
        path,
        create.get("key_dim", KEY_DIM),
        create.get("latent_dim", LATENT_DIM),
        create.get("fingerprint", FINGERPRINT),
        spec or IndexConfig(),
    )
    memory.add(items, keys, latents)
    memory.save()
    return memory


def split_corpus(tmp_path: Path, sizes=SIZES, specs=None):
    """All items, keys, latents, and the paths of the saved shards holding consecutive slices of them."""
    items, keys, latents = make_data(sum(sizes), seed=3)
    paths, start = [], 0
    for number, size in enumerate(sizes):
        stop = start + size
        path = tmp_path / f"shard-{number}"
        spec = specs[number] if specs else None
        save_shard(path, items[start:stop], keys[start:stop], latents[start:stop], spec)
        paths.append(path)
        start = stop
    return items, keys, latents, paths


def test_shards_search_like_one_flat_index_over_all_keys(tmp_path):
    items, keys, latents, paths = split_corpus(tmp_path)
    sharded = ShardedLatentIndex.open(paths, fingerprint=FINGERPRINT)
    assert len(sharded) == 200 and sharded.ids == [item.id for item in items]
    queries = unit_rows(np.random.default_rng(8).standard_normal((25, KEY_DIM)))
    scores, ids = sharded.search(queries, 10)
    expected_scores, expected_rows = brute_force_top_k(queries, keys, 10)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5, rtol=0)
    assert ids.tolist() == [[items[r].id for r in row] for row in expected_rows]
    _, positions = sharded.search_positions(queries, 10)
    np.testing.assert_array_equal(positions, expected_rows)  # positions = rows of the shards laid end to end
    shard, rows = sharded.locate(np.array([0, 119, 120, 121, 199]))
    assert shard.tolist() == [0, 0, 1, 2, 2] and rows.tolist() == [0, 119, 0, 0, 78]
    np.testing.assert_array_equal(sharded.latents_at(positions), latents[expected_rows])
    wanted = ["doc-150", "doc-120", "doc-3", "doc-150"]
    np.testing.assert_array_equal(sharded.latents_for(wanted), latents[[150, 120, 3, 150]])
    assert sharded.items_for(wanted) == [items[150], items[120], items[3], items[150]]
    assert "doc-120" in sharded and "doc-200" not in sharded
    with pytest.raises(IndexError_, match="'doc-200' is not in any shard"):
        sharded.latents_for(["doc-200"])


def test_k_beyond_all_shards_pads_with_minus_one(tmp_path):
    items, keys, _, paths = split_corpus(tmp_path, sizes=(3, 2))
    sharded = ShardedLatentIndex.open(paths)
    scores, ids = sharded.search(keys[:2], 8)
    _, expected_rows = brute_force_top_k(keys[:2], keys, 5)
    assert ids.tolist() == [[items[r].id for r in row] + [None] * 3 for row in expected_rows]
    assert np.isneginf(scores[:, 5:]).all() and np.isfinite(scores[:, :5]).all()
    _, positions = sharded.search_positions(keys[:2], 8)
    assert (positions[:, 5:] == -1).all()
    with pytest.raises(IndexError_, match="-1 marks a missing"):
        sharded.latents_at(positions)


def test_empty_and_approximate_shards(tmp_path):
    """An empty (untrained IVF) shard adds nothing; an IVF shard probing every list is exact like Flat."""
    specs = [IndexConfig("IVF4,Flat", nprobe=4), IndexConfig("IVF8,Flat"), IndexConfig("Flat")]
    items, keys, _ = make_data(300, seed=3)
    save_shard(tmp_path / "a", items[:200], keys[:200], np.zeros((200, LATENT_DIM)), specs[0])
    LatentIndex.create(tmp_path / "empty", KEY_DIM, LATENT_DIM, FINGERPRINT, specs[1]).save()
    save_shard(tmp_path / "c", items[200:], keys[200:], np.zeros((100, LATENT_DIM)), specs[2])
    sharded = ShardedLatentIndex.open([tmp_path / "a", tmp_path / "empty", tmp_path / "c"])
    _, ids = sharded.search(keys[::20], 7)
    _, expected = brute_force_top_k(keys[::20], keys, 7)
    assert ids.tolist() == [[items[r].id for r in row] for row in expected]
    assert sharded.locate(np.array([199, 200]))[0].tolist() == [0, 2]


@pytest.mark.parametrize(
    ("create", "spec", "message"),
    [
        ({"fingerprint": "another-compressor"}, None, "fingerprint mismatch: expected 'compressor-sha256:aaaa'"),
        ({"key_dim": KEY_DIM + 8}, None, rf"has key_dim {KEY_DIM + 8}, but the first shard .* has {KEY_DIM}"),
        ({"latent_dim": LATENT_DIM + 4}, None, rf"has latent_dim {LATENT_DIM + 4}, but the first shard"),
        ({}, IndexConfig(latent_dtype="float16"), "has latent_dtype 'float16', but the first shard .* 'float32'"),
    ],
)
def test_mismatched_shard_is_refused_naming_it(tmp_path, create, spec, message):
    items, keys, latents, paths = split_corpus(tmp_path, sizes=(40, 30))
    key_dim, latent_dim = create.get("key_dim", KEY_DIM), create.get("latent_dim", LATENT_DIM)
    rng = np.random.default_rng(0)
    odd = tmp_path / "odd"
    save_shard(
        odd,
        [Evidence(id=f"odd-{i}") for i in range(5)],
        unit_rows(rng.standard_normal((5, key_dim))),
        rng.standard_normal((5, latent_dim)),
        spec,
        **create,
    )
    with pytest.raises(IndexError_, match=message) as err:
        ShardedLatentIndex.open([*paths, odd])
    assert str(odd) in str(err.value)


def test_an_id_in_two_shards_is_refused_naming_both(tmp_path):
    items, keys, latents, paths = split_corpus(tmp_path, sizes=(40, 30))
    save_shard(tmp_path / "again", items[5:6], keys[5:6], latents[5:6])
    with pytest.raises(IndexError_, match="id 'doc-5' is in shard .*shard-0 and in shard .*again") as err:
        ShardedLatentIndex.open([*paths, tmp_path / "again"])
    assert str(paths[0]) in str(err.value) and str(tmp_path / "again") in str(err.value)
    with pytest.raises(IndexError_, match="listed twice"):
        ShardedLatentIndex.open([paths[0], paths[1], paths[0]])


def test_a_shard_changed_after_opening_is_noticed(tmp_path):
    _, keys, _, paths = split_corpus(tmp_path, sizes=(40, 30))
    shards = [LatentIndex.open(path) for path in paths]
    sharded = ShardedLatentIndex(shards)
    shards[1].remove(["doc-41"])
    with pytest.raises(IndexError_, match=r"shard .*shard-1 changed after it was opened"):
        sharded.search(keys[:1], 3)


class KeysByQuestion:
    """A stand-in for LatentMemoryModel: the query key of a question is a fixed row of a table."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def query_keys(self, questions, batch_size):
        return torch.from_numpy(np.stack([self.table[q] for q in questions]))


def test_latent_memory_search_over_shards_keeps_its_contract(tmp_path):
    items, keys, latents, paths = split_corpus(tmp_path)
    questions = {f"q{i}": keys[i * 37] for i in range(4)}
    memory = LatentMemory(KeysByQuestion(questions), ShardedLatentIndex.open(paths))
    single = LatentMemory(KeysByQuestion(questions), save_shard(tmp_path / "one", items, keys, latents))
    got, want = memory.search(list(questions), k=6), single.search(list(questions), k=6)
    assert [[h.id for h in row] for row in got] == [[h.id for h in row] for row in want]
    for got_row, want_row in zip(got, want):
        np.testing.assert_allclose([h.score for h in got_row], [h.score for h in want_row], atol=1e-5, rtol=0)
        assert [(h.title, h.text) for h in got_row] == [(h.title, h.text) for h in want_row]
    assert len(memory.search("q1", k=500)) == 200  # no padding hits past the last item
