"""Tests of the latent store: float32 / float16 / int8 / pq codecs inside LatentIndex, their files and their errors.

Hand-made latents with known bounds: float16 keeps 11 significant bits, int8 is within half a step of its
per-dimension range, and pq trained on exactly 2**nbits distinct sub-vectors per subspace represents them exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from latentlab.configs.memory import LATENT_CODECS
from latentlab.data.schema import Evidence, to_record
from latentlab.errors import ConfigError, DataError, IndexError_
from latentlab.memory.index import MANIFEST_NAME, IndexConfig, LatentIndex, build_index
from latentlab.memory.latent_store import new_codec, reconstruction_error
from tests.test_index import FINGERPRINT, KEY_DIM, LATENT_DIM, TableEncoder, clustered_keys, make_items

PQ_M, PQ_NBITS = 3, 4  # 3 sub-vectors of 4 values, 16 centroids each
SPECS = {
    "float32": IndexConfig(),
    "float16": IndexConfig(latent_dtype="float16"),
    "int8": IndexConfig(latent_dtype="int8"),
    "pq": IndexConfig(latent_dtype="pq", latent_pq_m=PQ_M, latent_pq_nbits=PQ_NBITS),
}


def hand_made_latents(n: int, seed: int = 0) -> np.ndarray:
    """[n, LATENT_DIM] with |values| in [0.5, 4] (no float16 subnormals) and a different range per dimension."""
    rng = np.random.default_rng(seed)
    magnitude = rng.uniform(0.5, 4.0, (n, LATENT_DIM)) * np.linspace(0.5, 2.0, LATENT_DIM)
    return (np.where(rng.random((n, LATENT_DIM)) < 0.5, -1.0, 1.0) * magnitude).astype(np.float32)


def pq_codebook_latents(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Latents whose every sub-vector is one of 2**nbits per subspace: ``(first 2**nbits rows, n more rows)``.

    The first block holds each sub-vector once (row i has sub-vector i in every subspace): k-means with as many
    points as centroids keeps the points, so the codebooks can represent every row of both blocks exactly.
    """
    rng = np.random.default_rng(seed)
    ksub, dsub = 2**PQ_NBITS, LATENT_DIM // PQ_M
    codebooks = rng.standard_normal((PQ_M, ksub, dsub)).astype(np.float32)  # [M, ksub, dsub]
    first = np.concatenate([codebooks[m] for m in range(PQ_M)], axis=1)  # [ksub, M * dsub]
    picks = rng.integers(0, ksub, (n, PQ_M))
    more = np.concatenate([codebooks[m][picks[:, m]] for m in range(PQ_M)], axis=1)
    return first, more


def unit_keys(n: int, seed: int = 0) -> np.ndarray:
    return clustered_keys(n, seed)


def items_named(prefix: str, n: int) -> list[Evidence]:
    return [Evidence(id=f"{prefix}-{i}", text=f"text {i}") for i in range(n)]


def memory_with(path: Path, codec: str, latents: np.ndarray, **spec_changes) -> LatentIndex:
    spec = SPECS[codec] if not spec_changes else IndexConfig(**{**SPECS[codec].searched_as(), **spec_changes})
    memory = LatentIndex.create(path, KEY_DIM, LATENT_DIM, FINGERPRINT, spec)
    memory.add(items_named("doc", len(latents)), unit_keys(len(latents)), latents)
    return memory


def manifest_of(path: Path) -> dict:
    return json.loads((path / MANIFEST_NAME).read_text())


# ---------------------------------------------------------------------- round trips
def test_float32_is_exact_and_float16_within_its_precision(tmp_path):
    latents = hand_made_latents(300)
    exact = memory_with(tmp_path / "f32", "float32", latents)
    np.testing.assert_array_equal(exact.latents_at(np.arange(300)), latents)
    half = memory_with(tmp_path / "f16", "float16", latents)
    got = half.latents_at(np.arange(300))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, latents, rtol=2.0**-11, atol=0)  # 11 significant bits: within 1e-3 relative
    assert not np.array_equal(got, latents)


def test_int8_is_within_half_a_step_of_each_dimensions_range(tmp_path):
    latents = hand_made_latents(300)
    memory = memory_with(tmp_path / "m", "int8", latents)
    got = memory.latents_at(np.arange(300))
    value_range = latents.max(axis=0) - latents.min(axis=0)  # [LATENT_DIM]: QT_8bit's per-dimension min/max
    step = value_range / 255
    assert (np.abs(got - latents) <= step / 2 * (1 + 1e-4)).all()
    assert np.abs(got - latents).max() > step.min() / 8  # really quantised, not stored as floats


def test_int8_trained_by_the_first_add_clips_later_values_to_its_range(tmp_path):
    latents = hand_made_latents(300)
    memory = memory_with(tmp_path / "m", "int8", latents)
    outside = np.full((1, LATENT_DIM), 100.0, np.float32)  # far above every dimension's trained maximum
    memory.add([Evidence(id="outside", text="x")], unit_keys(1, seed=3), outside)
    (got,) = memory.latents_for(["outside"])
    np.testing.assert_allclose(got, latents.max(axis=0), atol=float(np.max(latents.max(0) - latents.min(0))) / 255)
    np.testing.assert_array_equal(
        memory.latents_for(["doc-7"]), memory_with(tmp_path / "n", "int8", latents).latents_for(["doc-7"])
    )


def test_pq_with_codebooks_that_fit_the_data_decodes_exactly(tmp_path):
    first, more = pq_codebook_latents(50)
    memory = memory_with(tmp_path / "m", "pq", first)  # trains the codebooks on the 16 distinct sub-vectors
    np.testing.assert_array_equal(memory.latents_at(np.arange(len(first))), first)
    memory.add(items_named("more", 50), unit_keys(50, seed=1), more)  # encoded with the trained codebooks
    np.testing.assert_array_equal(memory.latents_for([f"more-{i}" for i in range(50)]), more)
    assert memory._latent_codes.shape == (66, (PQ_M * PQ_NBITS + 7) // 8) and memory._latent_codes.dtype == np.uint8


def test_pq_trains_on_the_seeded_sample_like_faiss_itself(tmp_path):
    """Codebooks = FAISS's ProductQuantizer trained on the same seeded max_train_keys sample as IVF keys are."""
    latents = hand_made_latents(400)
    memory = memory_with(tmp_path / "m", "pq", latents, max_train_keys=100)
    sample = latents[np.sort(np.random.default_rng(0).choice(400, 100, replace=False))]
    reference = faiss.ProductQuantizer(LATENT_DIM, PQ_M, PQ_NBITS)
    reference.train(sample)
    np.testing.assert_array_equal(memory.latents_at(np.arange(400)), reference.decode(reference.compute_codes(latents)))
    error = reconstruction_error(latents, memory.latents_at(np.arange(400)))
    assert 0 < error["relative_mse"] < 0.35 and 0.8 < error["mean_cosine"] < 1  # measured: 0.250, 0.872


def test_reconstruction_error_by_hand():
    z = np.array([[3.0, 4.0], [1.0, 0.0]])
    decoded = np.array([[3.0, 4.0], [0.0, 1.0]])  # second row: orthogonal, |error|^2 = 2
    error = reconstruction_error(z, decoded)
    assert error["relative_mse"] == pytest.approx(2 / 26, abs=1e-12) and error["mean_cosine"] == pytest.approx(0.5)


# ---------------------------------------------------------------------- files
@pytest.mark.parametrize("codec", LATENT_CODECS)
def test_save_open_verify_keeps_the_decoded_latents(tmp_path, codec):
    latents = pq_codebook_latents(0)[0] if codec == "pq" else hand_made_latents(200)
    memory = memory_with(tmp_path / "m", codec, latents)
    before = memory.latents_at(np.arange(len(latents)))
    memory.save()
    manifest = manifest_of(tmp_path / "m")
    assert manifest["latent_dtype"] == codec
    expected_roles = {"index", "keys", "latents", "items"} | ({"codec"} if codec in ("int8", "pq") else set())
    assert set(manifest["files"]) == expected_roles
    if codec == "pq":
        assert (manifest["latent_pq_m"], manifest["latent_pq_nbits"]) == (PQ_M, PQ_NBITS)
    for entry in manifest["files"].values():
        data = (tmp_path / "m" / entry["name"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert {p.name for p in (tmp_path / "m").iterdir()} == {MANIFEST_NAME} | {
        e["name"] for e in manifest["files"].values()
    }
    reopened = LatentIndex.open(tmp_path / "m", fingerprint=FINGERPRINT, verify=True)
    assert reopened.spec == memory.spec
    np.testing.assert_array_equal(reopened.latents_at(np.arange(len(latents))), before)
    np.testing.assert_array_equal(reopened.latents_for(["doc-3", "doc-1"]), before[[3, 1]])


@pytest.mark.parametrize("codec", ["int8", "pq"])
def test_remove_then_save_and_open_keeps_the_right_latents(tmp_path, codec):
    first, more = pq_codebook_latents(40)
    latents = np.concatenate([first, more]) if codec == "pq" else hand_made_latents(56)
    memory = memory_with(tmp_path / "m", codec, latents[:16])
    memory.add(items_named("more", 40), unit_keys(40, seed=2), latents[16:])
    ids = memory.ids
    decoded = dict(zip(ids, memory.latents_for(ids)))
    removed = ids[::3]
    memory.remove(removed)
    memory.save()
    memory.add([Evidence(id="late", text="x")], unit_keys(1, seed=4), latents[:1])  # encoded by the same codec
    memory.save()
    reopened = LatentIndex.open(tmp_path / "m")
    kept = [i for i in ids if i not in removed]
    assert reopened.ids == kept + ["late"]
    np.testing.assert_array_equal(reopened.latents_for(kept), np.stack([decoded[i] for i in kept]))
    np.testing.assert_array_equal(reopened.latents_for(["late"]), decoded[ids[0]][None])
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        [MANIFEST_NAME, "codec.2.faiss", "index.2.faiss", "items.2.jsonl", "keys.2.npy", "latents.2.npy"]
    )


def test_empty_pq_memory_saves_without_a_codec_and_trains_after_opening(tmp_path):
    LatentIndex.create(tmp_path / "m", KEY_DIM, LATENT_DIM, FINGERPRINT, SPECS["pq"]).save()
    assert "codec" not in manifest_of(tmp_path / "m")["files"]
    reopened = LatentIndex.open(tmp_path / "m")
    first, _ = pq_codebook_latents(0)
    reopened.add(items_named("doc", 16), unit_keys(16), first)
    np.testing.assert_array_equal(reopened.latents_at(np.arange(16)), first)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete"])
def test_damaged_codec_file_is_refused_naming_it(tmp_path, damage):
    memory_with(tmp_path / "m", "int8", hand_made_latents(50)).save()
    file = tmp_path / "m" / manifest_of(tmp_path / "m")["files"]["codec"]["name"]
    data = bytearray(file.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0x01
        file.write_bytes(bytes(data))
    elif damage == "truncate":
        file.write_bytes(bytes(data[:-9]))
    else:
        file.unlink()
    expected = {"flip a byte": "sha256 differs", "truncate": "truncated", "delete": "missing"}[damage]
    with pytest.raises(IndexError_, match=expected) as err:
        LatentIndex.open(tmp_path / "m")
    assert str(file) in str(err.value)


def rewrite_manifest(path: Path, change) -> None:
    manifest = manifest_of(path)
    change(manifest)
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_codec_file_of_the_wrong_kind_is_refused_naming_it(tmp_path):
    """A readable FAISS file with a valid checksum that is not this codec's quantiser (an index, another PQ)."""
    memory_with(tmp_path / "m", "pq", pq_codebook_latents(0)[0]).save()
    manifest = manifest_of(tmp_path / "m")
    file = tmp_path / "m" / manifest["files"]["codec"]["name"]
    for impostor, message in [
        (faiss.IndexFlatIP(LATENT_DIM), "expected the trained IndexPQ .* found a trained IndexFlatIP"),
        (faiss.IndexPQ(LATENT_DIM, 2, PQ_NBITS), "M=2, nbits=4, but the manifest records latent_pq_m=3"),
    ]:
        impostor.is_trained = True
        faiss.write_index(impostor, str(file))
        data = file.read_bytes()
        rewrite_manifest(
            tmp_path / "m",
            lambda m, data=data: m["files"]["codec"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data)),
        )
        with pytest.raises(IndexError_, match=message) as err:
            LatentIndex.open(tmp_path / "m")
        assert str(file) in str(err.value)


def test_unknown_codec_in_the_manifest_is_refused_naming_the_key(tmp_path):
    memory_with(tmp_path / "m", "int8", hand_made_latents(20)).save()
    rewrite_manifest(tmp_path / "m", lambda m: m.update(latent_dtype="int4-lattice"))
    with pytest.raises(
        IndexError_, match="latent_dtype must be one of float32, float16, int8, pq, got 'int4-lattice'"
    ) as err:
        LatentIndex.open(tmp_path / "m")
    assert str(err.value).startswith(f"{tmp_path / 'm' / MANIFEST_NAME}: ")


def test_missing_codec_entry_or_a_codec_beside_float_latents_is_refused(tmp_path):
    memory_with(tmp_path / "q", "int8", hand_made_latents(20)).save()
    rewrite_manifest(tmp_path / "q", lambda m: m["files"].pop("codec"))
    with pytest.raises(IndexError_, match="no files.codec entry, but latent_dtype 'int8' needs its trained state"):
        LatentIndex.open(tmp_path / "q")
    memory_with(tmp_path / "f", "float16", hand_made_latents(20)).save()
    rewrite_manifest(tmp_path / "f", lambda m: m["files"].update(codec=m["files"]["index"]))
    with pytest.raises(IndexError_, match="files.codec lists .* but latent_dtype 'float16' has no state"):
        LatentIndex.open(tmp_path / "f")


def test_old_format_memory_still_opens(tmp_path):
    """A memory as latentlab wrote it before latents could be quantised: no codec file, no latent_pq_* fields."""
    path = tmp_path / "old"
    path.mkdir()
    items, keys, latents = make_items(30), unit_keys(30), hand_made_latents(30).astype(np.float16)
    index = faiss.IndexFlatIP(KEY_DIM)
    index.add(keys)
    faiss.write_index(index, str(path / "index.1.faiss"))
    np.save(path / "keys.1.npy", keys)
    np.save(path / "latents.1.npy", latents)
    (path / "items.1.jsonl").write_text("".join(json.dumps(to_record(item)) + "\n" for item in items))
    files = {}
    for role, name in [
        ("index", "index.1.faiss"),
        ("keys", "keys.1.npy"),
        ("latents", "latents.1.npy"),
        ("items", "items.1.jsonl"),
    ]:
        data = (path / name).read_bytes()
        files[role] = {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest = {
        "format_version": 1,
        "fingerprint": FINGERPRINT,
        "key_dim": KEY_DIM,
        "latent_dim": LATENT_DIM,
        "count": 30,
        "factory": "Flat",
        "metric": "inner_product",
        "nprobe": 16,
        "ef_search": 64,
        "latent_dtype": "float16",
        "max_train_keys": None,
        "generation": 1,
        "files": files,
    }
    (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    memory = LatentIndex.open(path, fingerprint=FINGERPRINT)
    assert memory.spec == IndexConfig(latent_dtype="float16", ef_search=64)
    np.testing.assert_array_equal(memory.latents_for(["doc-4"]), latents[[4]].astype(np.float32))
    assert memory.search(keys[:1], 1)[1][0, 0] == "doc-0"
    memory.remove(["doc-0"])
    memory.save()  # re-saved in today's format: still no codec file for float16
    assert set(manifest_of(path)["files"]) == {"index", "keys", "latents", "items"}
    np.testing.assert_array_equal(LatentIndex.open(path).latents_for(["doc-4"]), latents[[4]].astype(np.float32))


# ---------------------------------------------------------------------- configuration errors
def test_pq_m_that_does_not_divide_the_latent_dim_is_a_config_error(tmp_path):
    spec = IndexConfig(latent_dtype="pq", latent_pq_m=5)
    with pytest.raises(
        ConfigError, match=rf"latent_pq_m must divide the latent size {LATENT_DIM}.*got 5.*1, 2, 3, 4, 6, 12"
    ):
        LatentIndex.create(tmp_path / "m", KEY_DIM, LATENT_DIM, FINGERPRINT, spec)
    assert not (tmp_path / "m").exists()
    with pytest.raises(ConfigError, match="latent_pq_m must be a positive integer"):
        IndexConfig(latent_dtype="pq")
    with pytest.raises(ConfigError, match="latent_pq_nbits must be an integer in 1..16, got 17"):
        IndexConfig(latent_dtype="pq", latent_pq_m=4, latent_pq_nbits=17)
    with pytest.raises(ConfigError, match="latent_pq_m is only read with latent_dtype 'pq'"):
        IndexConfig(latent_dtype="int8", latent_pq_m=4)
    with pytest.raises(ConfigError, match="latent_dtype must be one of float32, float16, int8, pq, got 'bf16'"):
        IndexConfig(latent_dtype="bf16")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"max_train_keys must be null or an integer >= 256"):
        IndexConfig(latent_dtype="pq", latent_pq_m=4, max_train_keys=100)


def test_pq_with_too_few_latents_names_the_key_and_numbers_and_changes_nothing(tmp_path):
    memory = LatentIndex.create(tmp_path / "m", KEY_DIM, LATENT_DIM, FINGERPRINT, SPECS["pq"])
    with pytest.raises(
        IndexError_, match=r"needs at least 16 latents .*2\*\*latent_pq_nbits.* only 10.*latent_pq_nbits to 3"
    ):
        memory.add(items_named("doc", 10), unit_keys(10), hand_made_latents(10))
    assert len(memory) == 0 and memory._codec.state() is None


def test_non_finite_latent_is_refused_for_quantised_codecs(tmp_path):
    latents = hand_made_latents(20)
    latents[7, 2] = np.inf
    memory = LatentIndex.create(tmp_path / "m", KEY_DIM, LATENT_DIM, FINGERPRINT, SPECS["int8"])
    with pytest.raises(DataError, match="'doc-7' has a non-finite latent"):
        memory.add(items_named("doc", 20), unit_keys(20), latents)


def test_every_configured_codec_has_an_implementation():
    for name in LATENT_CODECS:
        codec = new_codec(SPECS[name], LATENT_DIM)
        assert codec.name == name and codec.is_trained == (not codec.trainable)


# ---------------------------------------------------------------------- builds
def test_build_reuses_a_finished_pq_memory_and_refuses_other_pq_parameters(tmp_path):
    items, keys, latents = make_items(60), unit_keys(60), hand_made_latents(60)

    def run(spec: IndexConfig, encoder: TableEncoder) -> LatentIndex:
        return build_index(
            tmp_path / "m",
            items,
            encoder,
            key_dim=KEY_DIM,
            latent_dim=LATENT_DIM,
            fingerprint=FINGERPRINT,
            spec=spec,
            batch_size=25,
            progress=False,
        )

    built = run(SPECS["pq"], TableEncoder(items, keys, latents))
    assert reconstruction_error(latents, built.latents_at(np.arange(60)))["mean_cosine"] > 0.85  # measured 0.927
    again = TableEncoder(items, keys, latents)
    assert run(SPECS["pq"], again).ids == built.ids and again.calls == 0
    other = IndexConfig(latent_dtype="pq", latent_pq_m=6, latent_pq_nbits=PQ_NBITS)
    with pytest.raises(IndexError_, match="different items, dimensions or index type"):
        run(other, TableEncoder(items, keys, latents))
