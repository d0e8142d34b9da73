"""Tests of LatentIndex and build_index: exact search, approximate recall, persistence, removal, resumable builds.

Random data with fixed seeds; expected neighbours come from a brute-force numpy inner product.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from latentlab.data.schema import Evidence
from latentlab.errors import ConfigError, DataError, IndexError_
from latentlab.memory import index as index_module
from latentlab.memory.index import MANIFEST_NAME, IndexConfig, LatentIndex, build_index

KEY_DIM = 32
LATENT_DIM = 12
FINGERPRINT = "compressor-sha256:aaaa"


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_items(n: int) -> list[Evidence]:
    return [Evidence(id=f"doc-{i}", text=f"sentence number {i}", title=f"Title {i % 7}") for i in range(n)]


def clustered_keys(n: int, seed: int, clusters: int = 40, noise: float = 0.06) -> np.ndarray:
    """Unit keys around ``clusters`` random directions (what trained retrieval keys look like)."""
    rng = np.random.default_rng(seed)
    centers = unit_rows(rng.standard_normal((clusters, KEY_DIM)))
    return unit_rows(centers[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, KEY_DIM)))


def make_data(n: int, seed: int = 0) -> tuple[list[Evidence], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    return make_items(n), clustered_keys(n, seed), rng.standard_normal((n, LATENT_DIM)).astype(np.float32)


def brute_force_top_k(queries: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ keys.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def new_memory(path: Path, factory: str = "Flat", n: int = 600, seed: int = 0, **spec_fields) -> LatentIndex:
    items, keys, latents = make_data(n, seed)
    memory = LatentIndex.create(path, KEY_DIM, LATENT_DIM, FINGERPRINT, IndexConfig(factory, **spec_fields))
    memory.add(items, keys, latents)
    return memory


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


class TableEncoder:
    """Deterministic encoder that looks keys and latents up by id, counts calls, and can die at a given call."""

    def __init__(self, items: list[Evidence], keys: np.ndarray, latents: np.ndarray, fail_at_call: int | None = None):
        self.row = {item.id: i for i, item in enumerate(items)}
        self.keys, self.latents = keys, latents
        self.fail_at_call = fail_at_call
        self.encoded_ids: list[str] = []
        self.calls = 0

    def __call__(self, batch: list[Evidence]) -> tuple[np.ndarray, np.ndarray]:
        if self.calls == self.fail_at_call:
            raise RuntimeError("simulated crash while encoding")
        self.calls += 1
        rows = [self.row[item.id] for item in batch]
        self.encoded_ids += [item.id for item in batch]
        return self.keys[rows], self.latents[rows]


def build(
    out_dir: Path,
    encoder: TableEncoder,
    items: list[Evidence],
    factory: str = "Flat",
    fingerprint: str = FINGERPRINT,
    batch_size: int = 60,
) -> LatentIndex:
    spec = IndexConfig(factory, nprobe=4)
    return build_index(
        out_dir,
        items,
        encoder,
        key_dim=KEY_DIM,
        latent_dim=LATENT_DIM,
        fingerprint=fingerprint,
        spec=spec,
        batch_size=batch_size,
        progress=False,
    )


# ---------------------------------------------------------------------- search
def test_flat_search_equals_brute_force_top_k(tmp_path):
    items, keys, _ = make_data(300)
    memory = new_memory(tmp_path / "m", n=300)
    queries = unit_rows(np.random.default_rng(5).standard_normal((9, KEY_DIM)))
    scores, ids = memory.search(queries, 7)
    expected_scores, expected_rows = brute_force_top_k(queries, keys, 7)
    assert scores.dtype == np.float32 and scores.shape == (9, 7) and ids.shape == (9, 7)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6, rtol=0)
    assert ids.tolist() == [[items[r].id for r in row] for row in expected_rows]
    _, positions = memory.search_positions(queries, 7)
    assert positions.dtype == np.int64
    np.testing.assert_array_equal(positions, expected_rows)


def test_missing_results_are_none_with_minus_inf(tmp_path):
    memory = new_memory(tmp_path / "m", n=3)
    scores, ids = memory.search(np.zeros((0, KEY_DIM), np.float32), 2)  # no queries: empty result
    assert scores.shape == (0, 2) and ids.shape == (0, 2)
    _, keys, _ = make_data(3)
    scores, ids = memory.search(keys[:1], 5)
    _, expected_rows = brute_force_top_k(keys[:1], keys, 3)
    assert ids[0].tolist() == [f"doc-{r}" for r in expected_rows[0]] + [None, None]
    assert np.isneginf(scores[0, 3:]).all() and np.isfinite(scores[0, :3]).all()
    _, positions = memory.search_positions(keys[:1], 5)
    assert positions[0, 3:].tolist() == [-1, -1]
    with pytest.raises(IndexError_, match="-1 marks a missing"):
        memory.latents_at(positions)


def test_empty_memory_searches_to_nothing(tmp_path):
    memory = LatentIndex.create(tmp_path / "m", KEY_DIM, LATENT_DIM, FINGERPRINT, IndexConfig("IVF8,Flat"))
    scores, ids = memory.search(np.ones((2, KEY_DIM), np.float32), 3)
    assert ids.tolist() == [[None] * 3] * 2 and np.isneginf(scores).all()


def recall_at_10(memory: LatentIndex, queries: np.ndarray, keys: np.ndarray) -> float:
    _, expected_rows = brute_force_top_k(queries, keys, 10)
    _, positions = memory.search_positions(queries, 10)
    return float(np.mean([len(set(p) & set(e)) / 10 for p, e in zip(positions, expected_rows)]))


def overlapping_clusters(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys and queries (seed 0 centres) noisy enough that approximate search really misses some neighbours."""
    return clustered_keys(n, seed=0, noise=0.2), clustered_keys(200, seed=0, noise=0.2)


@pytest.mark.parametrize(
    ("factory", "spec_fields", "min_recall"),
    [  # measured: 0.959, 0.991, 0.741
        ("IVF32,Flat", {"nprobe": 4}, 0.93),
        ("HNSW16,Flat", {"ef_search": 32}, 0.96),
        ("IVF32,PQ8", {"nprobe": 4}, 0.65),
    ],
)
def test_approximate_index_recall_against_flat(tmp_path, factory, spec_fields, min_recall):
    keys, queries = overlapping_clusters(2000)
    memory = LatentIndex.create(tmp_path / "m", KEY_DIM, LATENT_DIM, FINGERPRINT, IndexConfig(factory, **spec_fields))
    memory.add(make_items(2000), keys, np.zeros((2000, LATENT_DIM)))
    assert recall_at_10(memory, queries, keys) >= min_recall


def test_ivf_trained_on_a_sample_keeps_recall_and_records_it(tmp_path):
    """max_train_keys: the coarse quantizer is k-means on a seeded 320-key sample; every key is still indexed."""
    keys, queries = overlapping_clusters(2000)
    spec = IndexConfig("IVF32,Flat", nprobe=4, max_train_keys=320)
    memory = LatentIndex.create(tmp_path / "m", KEY_DIM, LATENT_DIM, FINGERPRINT, spec)
    memory.add(make_items(2000), keys, np.zeros((2000, LATENT_DIM)))
    assert memory.info()["count"] == 2000 and recall_at_10(memory, queries, keys) >= 0.8  # measured 0.855 (all: 0.959)
    sample = keys[np.sort(np.random.default_rng(0).choice(2000, 320, replace=False))]
    reference = faiss.index_factory(KEY_DIM, "IVF32,Flat", faiss.METRIC_INNER_PRODUCT)
    reference.train(sample)
    quantizer = faiss.extract_index_ivf(memory._faiss).quantizer
    np.testing.assert_allclose(quantizer.reconstruct_n(0, 32), reference.quantizer.reconstruct_n(0, 32), atol=1e-5)
    memory.save()
    reopened = LatentIndex.open(tmp_path / "m")
    assert reopened.spec.max_train_keys == 320
    with pytest.raises(ConfigError, match=r"max_train_keys must be null or an integer >= 32"):
        IndexConfig("IVF32,Flat", max_train_keys=31)


def test_search_params_take_effect_and_persist(tmp_path):
    keys, queries = overlapping_clusters(2000)
    memory = LatentIndex.create(tmp_path / "m", KEY_DIM, LATENT_DIM, FINGERPRINT, IndexConfig("IVF32,Flat", nprobe=1))
    memory.add(make_items(2000), keys, np.zeros((2000, LATENT_DIM)))
    one_list = recall_at_10(memory, queries, keys)
    memory.set_search_params(nprobe=32)  # every list: exhaustive, so exactly the brute-force neighbours
    assert recall_at_10(memory, queries, keys) == 1.0 and one_list < 0.9
    memory.save()
    reopened = LatentIndex.open(tmp_path / "m")
    assert reopened.spec.nprobe == 32 and recall_at_10(reopened, queries, keys) == 1.0
    reopened.set_search_params(nprobe=1)
    assert recall_at_10(reopened, queries, keys) == one_list


# ---------------------------------------------------------------------- persistence
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16,Flat", "IVF16,PQ8"])
def test_reopened_memory_returns_same_neighbours(tmp_path, factory):
    memory = new_memory(tmp_path / "m", factory, n=600, nprobe=3, ef_search=20)
    memory.save()
    queries = clustered_keys(25, seed=0, noise=0.2)
    scores, ids = memory.search(queries, 10)
    reopened = LatentIndex.open(tmp_path / "m", fingerprint=FINGERPRINT)
    assert reopened.spec == IndexConfig(factory, nprobe=3, ef_search=20)
    reopened_scores, reopened_ids = reopened.search(queries, 10)
    np.testing.assert_array_equal(reopened_scores, scores)
    assert reopened_ids.tolist() == ids.tolist()
    items, _, latents = make_data(600)
    assert reopened.items_for(["doc-5", "doc-2"]) == [items[5], items[2]]
    np.testing.assert_array_equal(reopened.latents_for(["doc-5", "doc-2"]), latents[[5, 2]])


def test_manifest_records_everything(tmp_path):
    memory = new_memory(tmp_path / "m", "IVF16,Flat", n=500, nprobe=5)
    memory.save()
    manifest = json.loads((tmp_path / "m" / MANIFEST_NAME).read_text())
    expected = {
        "format_version": 1,
        "fingerprint": FINGERPRINT,
        "key_dim": KEY_DIM,
        "latent_dim": LATENT_DIM,
        "count": 500,
        "factory": "IVF16,Flat",
        "metric": "inner_product",
        "nprobe": 5,
        "ef_search": IndexConfig().ef_search,
        "latent_dtype": "float32",
    }
    assert {key: manifest[key] for key in expected} == expected
    on_disk = {p.name for p in (tmp_path / "m").iterdir()}
    assert on_disk == {MANIFEST_NAME} | {entry["name"] for entry in manifest["files"].values()}
    assert set(manifest["files"]) == {"index", "keys", "latents", "items"}
    for entry in manifest["files"].values():
        data = (tmp_path / "m" / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    info = memory.info()
    assert info["count"] == 500 and info["factory"] == "IVF16,Flat" and info["is_trained"] is True
    assert info["bytes_total"] == sum(e["bytes"] for e in manifest["files"].values())
    assert info["bytes_per_item"] == pytest.approx(info["bytes_total"] / 500, abs=1e-9)


def test_float16_latent_store(tmp_path):
    _, _, latents = make_data(600)
    memory = new_memory(tmp_path / "m", latent_dtype="float16")
    memory.save()
    reopened = LatentIndex.open(tmp_path / "m")
    got = reopened.latents_for(["doc-0", "doc-599"])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, latents[[0, 599]].astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(reopened.latents_at(np.array([[0], [599]])), got[:, None, :])


def test_failed_save_leaves_previous_memory(tmp_path, monkeypatch):
    memory = new_memory(tmp_path / "m", n=100)
    memory.save()
    before = snapshot(tmp_path / "m")
    items, keys, latents = make_data(150, seed=3)
    memory.add([Evidence(id=f"new-{i}", text="x") for i in range(50)], keys[:50], latents[:50])

    def crash(*args, **kwargs):
        raise OSError("disk full while committing the manifest")

    monkeypatch.setattr(index_module, "_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        memory.save()
    monkeypatch.undo()
    reopened = LatentIndex.open(tmp_path / "m", fingerprint=FINGERPRINT, verify=True)
    assert len(reopened) == 100 and "new-0" not in reopened
    assert {k: v for k, v in snapshot(tmp_path / "m").items() if k in before} == before
    memory.save()  # a later successful save commits and sweeps the orphaned files
    assert len(LatentIndex.open(tmp_path / "m")) == 150
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        [MANIFEST_NAME, "index.2.faiss", "items.2.jsonl", "keys.2.npy", "latents.2.npy"]
    )


# ---------------------------------------------------------------------- add and remove
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16,Flat", "IVF16,PQ8"])
def test_removed_ids_are_never_returned(tmp_path, factory):
    items, keys, latents = make_data(600)
    memory = new_memory(tmp_path / "m", factory, n=600, nprobe=16, ef_search=200)
    removed = [f"doc-{i}" for i in range(0, 600, 7)]
    memory.remove(removed + removed[:3])  # repeats are harmless
    kept_rows = [i for i in range(600) if i % 7]
    assert len(memory) == len(kept_rows) and memory.ids == [items[i].id for i in kept_rows]
    memory.save()
    for current in (memory, LatentIndex.open(tmp_path / "m")):
        _, ids = current.search(keys, 20)
        assert not set(ids.ravel()) & set(removed)
        assert None not in set(ids.ravel())
        np.testing.assert_array_equal(current.latents_for(["doc-1", "doc-8"]), latents[[1, 8]])
        if factory in ("Flat", "IVF16,Flat"):  # exhaustive (nprobe = nlist): exactly brute force over kept keys
            _, expected = brute_force_top_k(keys, keys[kept_rows], 20)
            assert ids.tolist() == [[items[kept_rows[r]].id for r in row] for row in expected]
        with pytest.raises(IndexError_, match="doc-0"):
            current.latents_for(["doc-0"])
    memory.add([items[0]], keys[:1], latents[:1])  # a removed id can come back
    assert memory.search(keys[:1], 1)[1][0, 0] == "doc-0"


def test_remove_unknown_id_names_it_and_removes_nothing(tmp_path):
    memory = new_memory(tmp_path / "m", n=50)
    with pytest.raises(IndexError_, match="'ghost-7'"):
        memory.remove(["doc-1", "ghost-7"])
    assert len(memory) == 50 and "doc-1" in memory


def test_incremental_add_to_trained_ivf(tmp_path):
    items, keys, latents = make_data(800)
    memory = LatentIndex.create(tmp_path / "m", KEY_DIM, LATENT_DIM, FINGERPRINT, IndexConfig("IVF16,Flat", nprobe=16))
    memory.add(items[:500], keys[:500], latents[:500])
    memory.add(items[500:], keys[500:], latents[500:])
    _, ids = memory.search(keys[::50], 5)
    _, expected = brute_force_top_k(keys[::50], keys, 5)
    assert ids.tolist() == [[items[r].id for r in row] for row in expected]


@pytest.mark.parametrize("clash", ["existing", "within batch"])
def test_duplicate_id_on_add_names_it_and_changes_nothing(tmp_path, clash):
    memory = new_memory(tmp_path / "m", n=100)
    _, keys, latents = make_data(3, seed=9)
    new_ids = ["fresh-1", "doc-42", "fresh-2"] if clash == "existing" else ["fresh-1", "fresh-2", "fresh-1"]
    before = memory.search(keys, 5)
    with pytest.raises(DataError, match="doc-42" if clash == "existing" else "fresh-1"):
        memory.add([Evidence(id=i, text="t") for i in new_ids], keys, latents)
    assert len(memory) == 100 and "fresh-2" not in memory
    after = memory.search(keys, 5)
    np.testing.assert_array_equal(after[0], before[0])
    assert after[1].tolist() == before[1].tolist()


def test_dimension_mismatch_names_both_dimensions_and_path(tmp_path):
    memory = new_memory(tmp_path / "mem", n=20)
    with pytest.raises(IndexError_, match=rf"dimension 24.*{KEY_DIM}") as err:
        memory.search(np.zeros((2, 24), np.float32), 3)
    assert str(tmp_path / "mem") in str(err.value)
    with pytest.raises(IndexError_, match="use q\\[None\\]"):
        memory.search(np.zeros(KEY_DIM, np.float32), 3)
    items = [Evidence(id="x", text="t")]
    with pytest.raises(IndexError_, match=rf"dimension 31.*{KEY_DIM}") as err:
        memory.add(items, unit_rows(np.ones((1, 31))), np.zeros((1, LATENT_DIM)))
    assert str(tmp_path / "mem") in str(err.value)
    with pytest.raises(IndexError_, match=rf"dimension 7.*{LATENT_DIM}"):
        memory.add(items, unit_rows(np.ones((1, KEY_DIM))), np.zeros((1, 7)))
    with pytest.raises(IndexError_, match="2 rows but there are 1 items"):
        memory.add(items, unit_rows(np.ones((2, KEY_DIM))), np.zeros((2, LATENT_DIM)))
    assert len(memory) == 20


def test_unnormalised_or_nan_keys_are_rejected_naming_the_item(tmp_path):
    memory = new_memory(tmp_path / "m", n=20)
    items = [Evidence(id="ok", text="t"), Evidence(id="long-key", text="t")]
    keys = unit_rows(np.ones((2, KEY_DIM)))
    keys[1] *= 1.01
    with pytest.raises(DataError, match="'long-key'.*norm 1.01"):
        memory.add(items, keys, np.zeros((2, LATENT_DIM)))
    keys[1] = np.nan
    with pytest.raises(DataError, match="'long-key'.*non-finite key"):
        memory.add(items, keys, np.zeros((2, LATENT_DIM)))
    assert len(memory) == 20


def test_ivf_with_too_few_keys_says_how_many_it_needs(tmp_path):
    items, keys, latents = make_data(50)
    memory = LatentIndex.create(tmp_path / "m", KEY_DIM, LATENT_DIM, FINGERPRINT, IndexConfig("IVF64,Flat"))
    with pytest.raises(IndexError_, match="needs at least 64 keys.*only 50"):
        memory.add(items, keys, latents)
    assert len(memory) == 0 and not memory.info()["is_trained"]
    with pytest.raises(IndexError_, match="needs at least 256 keys"):  # PQ codebooks: 2**8 centroids
        LatentIndex.create(tmp_path / "p", KEY_DIM, LATENT_DIM, FINGERPRINT, IndexConfig("IVF4,PQ8")).add(
            items, keys, latents
        )


def test_bad_spec_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nprobe"):
        IndexConfig(nprobe=0)
    with pytest.raises(ConfigError, match="IDMap"):
        IndexConfig("IDMap,Flat")
    with pytest.raises(ConfigError, match=r"'IVF8,PQ5'.*key_dim 32.*multiple"):
        LatentIndex.create(tmp_path / "m", KEY_DIM, LATENT_DIM, FINGERPRINT, IndexConfig("IVF8,PQ5"))


# ---------------------------------------------------------------------- opening errors
def test_different_fingerprint_refuses_and_leaves_files_byte_identical(tmp_path):
    items, keys, latents = make_data(200)
    build(tmp_path / "m", TableEncoder(items, keys, latents), items)
    before = snapshot(tmp_path / "m")
    with pytest.raises(IndexError_, match=f"expected 'other-compressor', found '{FINGERPRINT}'") as err:
        LatentIndex.open(tmp_path / "m", fingerprint="other-compressor")
    assert str(tmp_path / "m") in str(err.value)
    encoder = TableEncoder(items, keys, latents)
    with pytest.raises(IndexError_, match="built with compressor fingerprint .* left untouched") as err:
        build(tmp_path / "m", encoder, items, fingerprint="other-compressor")
    assert "new directory" in str(err.value) and encoder.calls == 0
    assert snapshot(tmp_path / "m") == before
    with pytest.raises(IndexError_, match="already holds a built memory"):
        LatentIndex.create(tmp_path / "m", KEY_DIM, LATENT_DIM, "other-compressor")


@pytest.mark.parametrize("role", ["index", "keys", "latents", "items"])
@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete"])
def test_damaged_file_is_named(tmp_path, role, damage):
    memory = new_memory(tmp_path / "m", "IVF16,Flat", n=300)
    memory.save()
    file = tmp_path / "m" / json.loads((tmp_path / "m" / MANIFEST_NAME).read_text())["files"][role]["name"]
    data = bytearray(file.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0x01
        file.write_bytes(bytes(data))
    elif damage == "truncate":
        file.write_bytes(bytes(data[: len(data) - 9]))
    else:
        file.unlink()
    after_damage = snapshot(tmp_path / "m")
    expected = {"flip a byte": "sha256 differs", "truncate": "truncated", "delete": "missing"}[damage]
    with pytest.raises(IndexError_, match=expected) as err:
        LatentIndex.open(tmp_path / "m")
    assert str(file) in str(err.value)
    assert snapshot(tmp_path / "m") == after_damage


def test_missing_or_malformed_manifest_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexError_, match="manifest.json: missing; .* not a built memory"):
        LatentIndex.open(tmp_path / "empty")
    new_memory(tmp_path / "m", n=10).save()
    manifest = tmp_path / "m" / MANIFEST_NAME
    manifest.write_text(manifest.read_text()[:-20])
    with pytest.raises(IndexError_, match="manifest.json: not valid JSON"):
        LatentIndex.open(tmp_path / "m")
    manifest.write_text(json.dumps({"format_version": 1}))
    with pytest.raises(IndexError_, match="manifest.json: missing or malformed field 'fingerprint'"):
        LatentIndex.open(tmp_path / "m")


# ---------------------------------------------------------------------- resumable build
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_interrupted_build_resumes_to_an_identical_memory(tmp_path, factory):
    items, keys, latents = make_data(420)  # 7 batches of 60
    reference = build(tmp_path / "reference", TableEncoder(items, keys, latents), items, factory)

    dying = TableEncoder(items, keys, latents, fail_at_call=4)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(tmp_path / "resumed", dying, items, factory)
    assert not (tmp_path / "resumed" / MANIFEST_NAME).exists()  # never a half-written memory
    progress = json.loads((tmp_path / "resumed" / ".building" / "progress.json").read_text())
    assert [shard["name"] for shard in progress["shards"]] == [f"batch-{i:06d}.npz" for i in range(4)]

    finishing = TableEncoder(items, keys, latents)
    resumed = build(tmp_path / "resumed", finishing, items, factory)
    assert finishing.calls == 3 and finishing.encoded_ids == [item.id for item in items[240:]]
    assert not (tmp_path / "resumed" / ".building").exists()

    assert resumed.ids == reference.ids
    queries = clustered_keys(30, seed=0, noise=0.2)
    for got, want in zip(resumed.search(queries, 10), reference.search(queries, 10)):
        np.testing.assert_array_equal(np.asarray(got.tolist(), dtype=object), np.asarray(want.tolist(), dtype=object))
    manifests = [json.loads((tmp_path / d / MANIFEST_NAME).read_text()) for d in ("reference", "resumed")]
    assert manifests[0] == manifests[1]  # same file bytes: same sha256 for index, keys, latents and items
    again = TableEncoder(items, keys, latents)
    assert build(tmp_path / "resumed", again, items, factory).ids == reference.ids and again.calls == 0


def test_resume_with_other_arguments_is_refused(tmp_path):
    items, keys, latents = make_data(300)
    with pytest.raises(RuntimeError):
        build(tmp_path / "m", TableEncoder(items, keys, latents, fail_at_call=2), items)
    before = snapshot(tmp_path / "m")
    with pytest.raises(IndexError_, match="batch_size: 60 then, 50 now.*delete .*\\.building"):
        build(tmp_path / "m", TableEncoder(items, keys, latents), items, batch_size=50)
    with pytest.raises(IndexError_, match="corpus_sha256"):
        build(tmp_path / "m", TableEncoder(items, keys, latents), items[:-1])
    assert snapshot(tmp_path / "m") == before


def test_build_rejects_empty_corpus_and_duplicate_ids_before_writing(tmp_path):
    encoder = TableEncoder([], np.zeros((0, KEY_DIM)), np.zeros((0, LATENT_DIM)))
    with pytest.raises(DataError, match="empty"):
        build(tmp_path / "empty", encoder, iter([]))
    items, keys, latents = make_data(10)
    duplicated = items[:6] + [Evidence(id="doc-2", text="again")] + items[6:]
    with pytest.raises(DataError, match="duplicate id 'doc-2' \\(items 3 and 7\\)"):
        build(tmp_path / "dup", encoder, duplicated)
    assert encoder.calls == 0
    assert not (tmp_path / "empty").exists() and not (tmp_path / "dup").exists()


def test_build_checks_what_the_encoder_returns(tmp_path):
    items, keys, latents = make_data(100)

    def wrong_width(batch):
        return np.zeros((len(batch), KEY_DIM + 1), np.float32), np.zeros((len(batch), LATENT_DIM), np.float32)

    with pytest.raises(IndexError_, match=rf"encoded keys.*dimension {KEY_DIM + 1}.*batch 0"):
        build_index(
            tmp_path / "m",
            items,
            wrong_width,
            key_dim=KEY_DIM,
            latent_dim=LATENT_DIM,
            fingerprint=FINGERPRINT,
            progress=False,
        )
