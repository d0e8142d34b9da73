"""A memory built by many workers (``index_merge``): shards encoded by separate processes with one shared quantizer
merge into one memory-mapped memory that returns the neighbours of a single-process build; a failed shard is re-run
alone; foreign, missing or mismatched inputs are refused naming the shard, with every file left as it was.

No model: the encoder looks precomputed random unit keys and latents up by item id (``tests.test_index``); the
last test runs the commands with a tiny random compressor.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from latentlab.data.schema import read_corpus, write_jsonl
from latentlab.errors import ConfigError, DataError, IndexError_
from latentlab.memory.index import MANIFEST_NAME, IndexConfig, LatentIndex
from latentlab.memory.index_manifest import _sha256
from latentlab.memory.index_merge import (
    build_shard,
    merge_shards,
    prepare_build,
    read_plan,
    shard_dir,
    shard_ranges,
    worker_shards,
)
from latentlab.memory.index_shards import ShardedLatentIndex
from tests.conftest import REPO
from tests.test_index import FINGERPRINT, KEY_DIM, LATENT_DIM, TableEncoder, make_data, snapshot, unit_rows

N_ITEMS = 600
N_SHARDS = 3
SPEC = IndexConfig("IVF16,Flat", nprobe=4)  # 4 of 16 lists: an approximate search, so the lists must agree


def corpus_files(tmp_path: Path, n: int = N_ITEMS):
    """The corpus as a JSONL file (read back, as a worker reads it) and its keys and latents as TABLE.npz."""
    items, keys, latents = make_data(n, seed=4)
    write_jsonl(tmp_path / "corpus.jsonl", items)
    np.savez(tmp_path / "table.npz", keys=keys, latents=latents)
    return read_corpus(tmp_path / "corpus.jsonl"), keys, latents


def prepare(work: Path, items, keys, latents, spec: IndexConfig = SPEC, fingerprint: str = FINGERPRINT):
    encoder = TableEncoder(items, keys, latents)
    return prepare_build(
        work,
        items,
        encoder,
        key_dim=KEY_DIM,
        latent_dim=LATENT_DIM,
        fingerprint=fingerprint,
        spec=spec,
        num_shards=N_SHARDS,
        batch_size=64,
        progress=False,
    )


def build_all(work: Path, items, keys, latents, fingerprint: str = FINGERPRINT, **encoder_args):
    encoder = TableEncoder(items, keys, latents, **encoder_args)
    results = [
        build_shard(work, items, encoder, shard, fingerprint=fingerprint, batch_size=64, progress=False)
        for shard in range(N_SHARDS)
    ]
    return results, encoder


def single_process_neighbours(work: Path, keys: np.ndarray, queries: np.ndarray, k: int):
    """The reference: one IVF index from the same trained quantizer, every key added in one process."""
    index = faiss.read_index(str(work / "quantizer.faiss"))
    faiss.extract_index_ivf(index).nprobe = SPEC.nprobe
    index.add(keys)
    return index.search(queries, k)


QUERIES = unit_rows(np.random.default_rng(11).standard_normal((30, KEY_DIM)))


def assert_same_neighbours(memory, work: Path, items, keys) -> None:
    scores, ids = memory.search(QUERIES, 10)
    expected_scores, rows = single_process_neighbours(work, keys, QUERIES, 10)
    assert ids.tolist() == [[items[r].id for r in row] for row in rows]
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5, rtol=0)


def test_shard_rule_and_worker_assignment():
    assert shard_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert worker_shards(5, rank=1, world_size=2) == [1, 3] and worker_shards(2, rank=0, world_size=1) == [0, 1]
    with pytest.raises(ConfigError, match=r"rank 2 is not in \[0, world size 2\)"):
        worker_shards(4, rank=2, world_size=2)


def test_two_worker_processes_merge_into_the_single_process_memory(tmp_path):
    items, keys, latents = corpus_files(tmp_path)
    work = tmp_path / "work"
    plan = prepare(work, items, keys, latents)
    assert plan.shards == [[0, 200], [200, 400], [400, 600]] and plan.sample["size"] == N_ITEMS

    # Two real processes, each a worker as torchrun starts them (RANK / WORLD_SIZE): rank 0 builds 0 and 2.
    command = [sys.executable, "-m", "tests.shard_worker", str(work), str(tmp_path / "corpus.jsonl")]
    command += [str(tmp_path / "table.npz"), FINGERPRINT]
    workers = [
        subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [worker.communicate(timeout=120)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    assert "shard 0: built=True" in outputs[0] and "shard 2: built=True" in outputs[0]
    assert "shard 1: built=True" in outputs[1]

    merged = merge_shards(work, tmp_path / "memory")
    assert_same_neighbours(merged, work, items, keys)
    assert merged.ids == [item.id for item in items]  # rows in corpus order, as a single build's
    np.testing.assert_array_equal(merged.latents_for(["doc-0", "doc-599", "doc-250"]), latents[[0, 599, 250]])
    # Opens memory-mapped: the inverted lists stay in their file, read-only.
    reopened = LatentIndex.open(tmp_path / "memory", fingerprint=FINGERPRINT)
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(reopened.faiss_index).invlists)
    assert isinstance(invlists, faiss.OnDiskInvertedLists)
    assert invlists.prefetch_nthread == 0  # no read-ahead threads per search (FAISS's 32 slowed cached queries)
    assert_same_neighbours(reopened, work, items, keys)
    # The manifest lists the shards with their checksums.
    manifest = json.loads((tmp_path / "memory" / MANIFEST_NAME).read_text())
    assert manifest["files"]["invlists"]["name"] == "invlists.1.ivfdata"
    shards = manifest["built_from"]["shards"]
    assert [(s["shard"], s["start"], s["stop"]) for s in shards] == [(0, 0, 200), (1, 200, 400), (2, 400, 600)]
    for entry in shards:
        assert entry["manifest_sha256"] == _sha256(shard_dir(work, entry["shard"]) / MANIFEST_NAME)
        assert entry["files"]["keys"]["sha256"] == _sha256(shard_dir(work, entry["shard"]) / "keys.1.npy")
    # The shards are memories themselves, searched as one by ShardedLatentIndex with the same answers.
    assert_same_neighbours(ShardedLatentIndex.open([shard_dir(work, s) for s in range(N_SHARDS)]), work, items, keys)
    # Moved elsewhere, it still finds its inverted lists (beside its index file, not where they were written).
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "memory", moved)
    assert_same_neighbours(LatentIndex.open(moved, fingerprint=FINGERPRINT), work, items, keys)
    # A merged memory is read-only: changing it is refused, naming why, and nothing is written.
    before = snapshot(moved)
    memory = LatentIndex.open(moved)
    with pytest.raises(IndexError_, match=r"cannot add to .*on-disk inverted lists \(invlists.1.ivfdata\)"):
        memory.add(items[:1], keys[:1], latents[:1])
    with pytest.raises(IndexError_, match=r"cannot remove from"):
        memory.remove(["doc-1"])
    assert snapshot(moved) == before


def test_a_failed_shard_is_rerun_alone_and_a_damaged_one_rebuilt(tmp_path):
    items, keys, latents = corpus_files(tmp_path)
    work = tmp_path / "work"
    prepare(work, items, keys, latents)
    encoder = TableEncoder(items, keys, latents)
    build_shard(work, items, encoder, 0, fingerprint=FINGERPRINT, batch_size=64, progress=False)
    dying = TableEncoder(items, keys, latents, fail_at_call=2)  # shard 1's worker dies at its third batch
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_shard(work, items, dying, 1, fingerprint=FINGERPRINT, batch_size=64, progress=False)
    build_shard(work, items, encoder, 2, fingerprint=FINGERPRINT, batch_size=64, progress=False)
    assert not shard_dir(work, 1).exists()
    (work / "shards" / ".shard-00001.x1y2.partial").mkdir()  # what a worker killed while saving leaves
    with pytest.raises(
        IndexError_, match=r"shard-00001/manifest.json: missing: shard 1 of 3 .*--shard 1 --num-shards 3"
    ):
        merge_shards(work, tmp_path / "memory")
    assert not (tmp_path / "memory").exists()

    results, rerun = build_all(work, items, keys, latents)  # every worker again: only shard 1 is encoded
    assert [r.built for r in results] == [False, True, False]
    assert rerun.encoded_ids == [item.id for item in items[200:400]]
    # A shard whose file no longer matches its checksum is built again (and only it).
    keys_file = shard_dir(work, 2) / "keys.1.npy"
    damaged = bytearray(keys_file.read_bytes())
    damaged[-1] ^= 0xFF
    keys_file.write_bytes(bytes(damaged))
    results, rerun = build_all(work, items, keys, latents)
    assert [r.built for r in results] == [False, False, True]
    assert rerun.encoded_ids == [item.id for item in items[400:600]]
    assert_same_neighbours(merge_shards(work, tmp_path / "memory"), work, items, keys)


@pytest.fixture
def built(tmp_path):
    """A prepared build with every shard built; the items, keys and latents."""
    items, keys, latents = corpus_files(tmp_path)
    work = tmp_path / "work"
    prepare(work, items, keys, latents)
    build_all(work, items, keys, latents)
    return work, items, keys, latents


def replace_shard(work: Path, shard: int, source: Path) -> None:
    shutil.rmtree(shard_dir(work, shard))
    shutil.copytree(source, shard_dir(work, shard))


def refused(work: Path, out: Path, match: str) -> None:
    """Merging is refused with ``match`` and changes no file of the work directory (nor makes ``out``)."""
    before = snapshot(work)
    had_out = out.exists()
    out_before = snapshot(out) if had_out else None
    with pytest.raises(IndexError_, match=match):
        merge_shards(work, out)
    assert snapshot(work) == before
    assert (snapshot(out) if out.exists() else None) == out_before and out.exists() == had_out


def test_a_shard_built_with_another_quantizer_is_refused_naming_it(built, tmp_path):
    work, items, keys, latents = built
    other = tmp_path / "other"  # same corpus and factory, another training sample: other centroids
    prepare(other, items, keys, latents, spec=IndexConfig("IVF16,Flat", nprobe=4, max_train_keys=300))
    build_shard(other, items, TableEncoder(items, keys, latents), 1, fingerprint=FINGERPRINT, progress=False)
    own_record = json.loads((shard_dir(work, 1) / MANIFEST_NAME).read_text())["built_from"]
    replace_shard(work, 1, shard_dir(other, 1))
    refused(work, tmp_path / "memory", r"shard 1 of 3 \(.*shard-00001\) was built with another quantizer")
    # Even where its manifest claims this plan's quantizer, its centroids give it away.
    manifest_path = shard_dir(work, 1) / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "built_from": own_record}))
    refused(work, tmp_path / "memory", r"shard 1 of 3 .*IVF centroids differ from the plan's .*quantizer.faiss")


def test_a_shard_of_another_compressor_or_a_missing_one_is_refused_naming_it(built, tmp_path):
    work, items, keys, latents = built
    other = tmp_path / "other"
    prepare(other, items, keys, latents, fingerprint="compressor-sha256:bbbb")
    encoder = TableEncoder(items, keys, latents)
    build_shard(other, items, encoder, 0, fingerprint="compressor-sha256:bbbb", progress=False)
    saved = tmp_path / "saved-shard-0"
    shutil.copytree(shard_dir(work, 0), saved)
    replace_shard(work, 0, shard_dir(other, 0))
    refused(
        work,
        tmp_path / "memory",
        r"shard 0 of 3 .* compressor fingerprint 'compressor-sha256:bbbb'.*'compressor-sha256:aaaa'",
    )
    replace_shard(work, 0, saved)
    shutil.rmtree(shard_dir(work, 2))
    refused(work, tmp_path / "memory", r"shard-00002/manifest.json: missing: shard 2 of 3")


def test_merging_into_an_existing_memory_is_refused(built, tmp_path):
    work, *_ = built
    merge_shards(work, tmp_path / "memory")
    refused(work, tmp_path / "memory", r"refusing to merge into .*memory: it already holds a built memory")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    refused(work, tmp_path / "notes", r"refusing to merge into .*notes: it already holds files")


def test_workers_and_prepare_refuse_what_does_not_fit_the_plan(built, tmp_path):
    work, items, keys, latents = built
    encoder = TableEncoder(items, keys, latents)
    with pytest.raises(IndexError_, match=r"fingerprint is 'compressor-sha256:bbbb', but .*plan.json was prepared"):
        build_shard(work, items, encoder, 0, fingerprint="compressor-sha256:bbbb", progress=False)
    with pytest.raises(DataError, match=r"not the one .*plan.json was prepared with \(600 items"):
        build_shard(work, items[:-1], encoder, 0, fingerprint=FINGERPRINT, progress=False)
    with pytest.raises(ConfigError, match=r"shard must be in \[0, 3\)"):
        build_shard(work, items, encoder, 3, fingerprint=FINGERPRINT, progress=False)
    assert read_plan(work)[0] == prepare(work, items, keys, latents)  # the same prepare again: the same plan
    with pytest.raises(IndexError_, match=r"plans another build \(.*factory"):
        prepare(work, items, keys, latents, spec=IndexConfig("IVF8,Flat"))
    with pytest.raises(ConfigError, match=r"index.factory 'HNSW32,Flat': .* needs an IVF factory"):
        prepare(tmp_path / "hnsw", items, keys, latents, spec=IndexConfig("HNSW32,Flat"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    with pytest.raises(IndexError_, match=r"refusing to prepare a build in .*busy: .*mine.txt is not part of one"):
        prepare(tmp_path / "busy", items, keys, latents)
    assert not (tmp_path / "hnsw").exists() and [p.name for p in (tmp_path / "busy").iterdir()] == ["mine.txt"]


def test_int8_latents_share_the_prepared_codec(tmp_path):
    """A trained latent codec is trained once, in prepare, and every shard encodes with it."""
    items, keys, latents = corpus_files(tmp_path, n=300)
    work = tmp_path / "work"
    spec = IndexConfig("IVF8,Flat", nprobe=8, latent_dtype="int8")
    prepare(work, items, keys, latents, spec=spec)
    build_all(work, items, keys, latents)
    merged = merge_shards(work, tmp_path / "memory")
    single = LatentIndex.create(tmp_path / "single", KEY_DIM, LATENT_DIM, FINGERPRINT, spec)
    single.add(items, keys, latents)  # trains int8 on all latents: the same min/max as prepare's whole-corpus sample
    np.testing.assert_array_equal(merged.latents_for(merged.ids), single.latents_for(single.ids))


def test_the_vision_tower_travels_from_the_plan_into_every_manifest_and_text_only_builds_name_none(tmp_path):
    items, keys, latents = corpus_files(tmp_path, n=300)
    spec = IndexConfig("IVF8,Flat", nprobe=8)
    tower = {"model": "ViT-B-32", "pretrained": "openai", "image_size": 224, "projector": "mlp", "pooled_token": True}
    for name, vision in (("images", tower), ("text", None)):
        work = tmp_path / name / "work"
        plan = prepare_build(
            work,
            items,
            TableEncoder(items, keys, latents),
            key_dim=KEY_DIM,
            latent_dim=LATENT_DIM,
            fingerprint=FINGERPRINT,
            spec=spec,
            num_shards=N_SHARDS,
            progress=False,
            vision=vision,
        )
        assert plan.vision == vision and read_plan(work)[0].vision == vision
        assert ("vision" in json.loads((work / "plan.json").read_text())) == (vision is not None)
        build_all(work, items, keys, latents)
        merge_shards(work, tmp_path / name / "memory")
        directories = [tmp_path / name / "memory", *(shard_dir(work, s) for s in range(N_SHARDS))]
        for directory in directories:
            manifest = json.loads((directory / MANIFEST_NAME).read_text())
            assert manifest.get("vision", "absent") == (vision if vision is not None else "absent"), directory
            assert LatentIndex.open(directory).vision == vision
        assert ShardedLatentIndex.open(directories[1:]).vision == vision


def test_the_commands_build_a_memory_with_a_compressor(tmp_path):
    from latentlab.cli import main
    from latentlab.configs import load_config
    from latentlab.memory.checkpoint import export_compressor
    from latentlab.memory.model import LatentMemoryModel
    from latentlab.memory.pipeline import LatentMemory
    from tests.conftest import TINY_LLAMA

    tiny_yaml = REPO / "paper_configs/tiny/latent_memory_text.yaml"
    overrides = {"compressor.backbone.model": TINY_LLAMA, "generator.backbone.model": TINY_LLAMA}
    overrides |= {"compressor.key_dim": 32, "index.factory": "IVF2,Flat", "index.nprobe": 1}
    export_compressor(LatentMemoryModel(load_config(tiny_yaml, overrides)), tmp_path / "export")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": f"f{i}", "text": f"Person {i} was born in town {i}."}) + "\n" for i in range(30))
    )
    flags = [arg for key, value in overrides.items() for arg in (f"--{key}", json.dumps(value))]
    work, memory = tmp_path / "work", tmp_path / "memory"
    prepare_args = ["index", "prepare", str(tiny_yaml), "--corpus", str(corpus), "--out", str(work)]
    assert main([*prepare_args, "--num-shards", "2", "--checkpoint", str(tmp_path / "export"), *flags]) == 0
    for shard in ("1", "0"):
        assert main(["index", "build-shard", str(work), "--shard", shard, "--num-shards", "2"]) == 0
    assert main(["index", "build-shard", str(work), "--shard", "0", "--num-shards", "3"]) == 2  # not the plan's
    assert main(["index", "merge", str(work), "--out", str(memory)]) == 0
    merged = LatentMemory.open(memory)  # the compressor travels with the merged memory
    sharded = LatentMemory.open([shard_dir(work, 0), shard_dir(work, 1)], compressor=work / "compressor")
    questions = ["Where was person 3 born?", "Who was born in town 17?"]
    hits = [[(h.id, round(h.score, 5)) for h in row] for row in merged.search(questions, 5)]
    assert hits == [[(h.id, round(h.score, 5)) for h in row] for row in sharded.search(questions, 5)]
    assert len(merged.index) == 30 and merged.index.ids == [f"f{i}" for i in range(30)]
