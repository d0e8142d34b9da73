"""Faults around build_index and opening a memory: foreign files in out_dir, two builds at once, a damaged build
shard, Ctrl-C during a build, a memory directory that does not exist.

Each test is named after the case; the helpers (random data, a counting table encoder) come from test_index.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from latentlab.data.schema import Evidence
from latentlab.errors import IndexError_, LatentLabError
from latentlab.memory import index as index_module
from latentlab.memory import index_build
from latentlab.memory.index import MANIFEST_NAME, BuildInterrupted, LatentIndex, read_manifest
from tests.test_index import TableEncoder, build, clustered_keys, make_data, snapshot

LOCK = ".build.lock"
NOT_A_PID = 2**22 + 1
"""Above Linux's PID_MAX_LIMIT (and other systems' pid ranges): never the pid of a live process."""


class InterruptingEncoder(TableEncoder):
    """A TableEncoder on which Ctrl-C is pressed while it encodes call number ``interrupt_at_call`` (from 0)."""

    def __init__(self, items: list[Evidence], keys: np.ndarray, latents: np.ndarray, interrupt_at_call: int):
        super().__init__(items, keys, latents)
        self.interrupt_at_call = interrupt_at_call

    def __call__(self, batch: list[Evidence]) -> tuple[np.ndarray, np.ndarray]:
        if self.calls == self.interrupt_at_call:
            raise KeyboardInterrupt
        return super().__call__(batch)


def build_catching_ctrl_c(*args, **kwargs) -> LatentIndex:
    """``build``, but a KeyboardInterrupt escaping it fails the test instead of stopping the whole pytest run."""
    try:
        return build(*args, **kwargs)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped build_index instead of a latentlab error")


def assert_same_memory(got: LatentIndex, want: LatentIndex) -> None:
    """Same ids, same search results and same manifest (hence the same sha256 for every file)."""
    assert got.ids == want.ids
    queries = clustered_keys(30, seed=0, noise=0.2)
    for g, w in zip(got.search(queries, 10), want.search(queries, 10)):
        assert np.asarray(g).tolist() == np.asarray(w).tolist()
    manifests = [json.loads((m.path / MANIFEST_NAME).read_text()) for m in (got, want)]
    assert manifests[0] == manifests[1]


def progress_shards(out_dir: Path) -> list[str]:
    return [shard["name"] for shard in json.loads((out_dir / ".building" / "progress.json").read_text())["shards"]]


# ---------------------------------------------------------------------- 1. files that are not this build's
def _user_file(out: Path, name: str) -> Path:
    out.mkdir()
    (out / name).write_text("the user's own file\n")
    return out / name


def _crashed_build(out: Path, corpus: list[Evidence] | None = None, **build_args) -> Path:
    """A build of the 300 test items (or ``corpus``) that died after 2 of its 5 batches."""
    items, keys, latents = make_data(300)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(out, TableEncoder(items, keys, latents, fail_at_call=2), corpus or items, **build_args)
    return out / ".building" / "progress.json"


def _unrecorded_building(out: Path) -> Path:
    (out / ".building").mkdir(parents=True)
    np.savez(out / ".building" / "batch-000000.npz", keys=np.zeros((1, 1)))
    return out / ".building" / "batch-000000.npz"


def _same_plan_building_with_a_user_file(out: Path) -> Path:
    _crashed_build(out)
    (out / ".building" / "notes.txt").write_text("mine\n")
    return out / ".building" / "notes.txt"


FOREIGN = {
    "a user's items.1.jsonl": lambda out: _user_file(out, "items.1.jsonl"),
    "a user's index.3.faiss": lambda out: _user_file(out, "index.3.faiss"),
    "an unrelated file": lambda out: _user_file(out, "notes.txt"),
    ".building of another index spec": lambda out: _crashed_build(out, factory="IVF16,Flat"),
    ".building of another fingerprint": lambda out: _crashed_build(out, fingerprint="other-compressor"),
    ".building of another corpus": lambda out: _crashed_build(out, corpus=make_data(300)[0][:-1]),
    ".building without progress.json": _unrecorded_building,
    ".building of this plan holding a user's file": _same_plan_building_with_a_user_file,
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_build_refuses_a_folder_holding_files_it_did_not_write(tmp_path, case):
    out = tmp_path / "m"
    offending = FOREIGN[case](out)
    before = snapshot(out)
    items, keys, latents = make_data(300)
    encoder = TableEncoder(items, keys, latents)
    with pytest.raises(IndexError_) as err:
        build(out, encoder, items)
    assert str(out) in str(err.value) and str(offending) in str(err.value)
    assert encoder.calls == 0
    assert snapshot(out) == before  # nothing deleted, nothing overwritten, and the lock is gone again


def test_build_into_an_empty_existing_folder(tmp_path):
    items, keys, latents = make_data(120)
    (tmp_path / "m").mkdir()
    memory = build(tmp_path / "m", TableEncoder(items, keys, latents), items)
    assert memory.ids == [item.id for item in items]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted(
        [MANIFEST_NAME, "index.1.faiss", "items.1.jsonl", "keys.1.npy", "latents.1.npy"]
    )


@pytest.mark.parametrize("stop", [OSError, KeyboardInterrupt])
def test_build_resumes_after_dying_while_saving_the_memory(tmp_path, monkeypatch, stop):
    """The memory's files written but no manifest yet: they are this build's, so a rerun may replace them."""
    items, keys, latents = make_data(300)
    reference = build(tmp_path / "reference", TableEncoder(items, keys, latents), items)
    write_json = index_module._write_json

    def die_at_the_manifest(path: Path, obj) -> None:
        if path.name == MANIFEST_NAME:
            raise stop("stopped while committing the manifest")
        write_json(path, obj)

    monkeypatch.setattr(index_module, "_write_json", die_at_the_manifest)
    with pytest.raises(OSError if stop is OSError else BuildInterrupted):
        build_catching_ctrl_c(tmp_path / "m", TableEncoder(items, keys, latents), items)
    monkeypatch.undo()
    assert (tmp_path / "m" / "items.1.jsonl").exists() and not (tmp_path / "m" / MANIFEST_NAME).exists()
    finishing = TableEncoder(items, keys, latents)
    assert_same_memory(build(tmp_path / "m", finishing, items), reference)
    assert finishing.calls == 0 and not (tmp_path / "m" / ".building").exists()


def test_finished_memory_removes_only_its_own_leftover_building(tmp_path, monkeypatch):
    items, keys, latents = make_data(300)
    out = tmp_path / "m"

    def die(building: Path) -> None:
        raise OSError("died right after saving the memory")

    monkeypatch.setattr(index_build, "_remove_building", die)
    with pytest.raises(OSError, match="right after saving"):
        build(out, TableEncoder(items, keys, latents), items)
    monkeypatch.undo()
    assert (out / MANIFEST_NAME).exists() and (out / ".building" / "progress.json").exists()
    again = TableEncoder(items, keys, latents)
    assert build(out, again, items).ids == [item.id for item in items] and again.calls == 0
    assert not (out / ".building").exists()  # this build's leftover: removed
    (out / ".building").mkdir()
    (out / ".building" / "notes.txt").write_text("mine\n")
    before = snapshot(out)
    assert build(out, again, items).ids == [item.id for item in items] and again.calls == 0
    assert snapshot(out) == before  # not this build's: left alone


# ---------------------------------------------------------------------- 2. two builds at once
def test_second_build_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    items, keys, latents = make_data(300)
    out = tmp_path / "m"
    refusals: list[IndexError_] = []

    class BuildsAgainMidway(TableEncoder):
        def __call__(self, batch):
            if self.calls == 1:
                with pytest.raises(IndexError_) as err:
                    build(out, TableEncoder(items, keys, latents), items)
                refusals.append(err.value)
            return super().__call__(batch)

    memory = build(out, BuildsAgainMidway(items, keys, latents), items)
    assert len(refusals) == 1
    assert f"another build (pid {os.getpid()}) holds the lock" in str(refusals[0])
    assert str(out / LOCK) in str(refusals[0])
    assert memory.ids == [item.id for item in items] and not (out / LOCK).exists()


def test_lock_of_a_live_pid_refuses_and_a_stale_lock_is_taken_over(tmp_path):
    items, keys, latents = make_data(120)
    out = tmp_path / "m"
    out.mkdir()
    (out / LOCK).write_text(f"{os.getpid()}\n")  # a live pid: as if another build were running
    encoder = TableEncoder(items, keys, latents)
    with pytest.raises(IndexError_, match=rf"another build \(pid {os.getpid()}\) holds the lock"):
        build(out, encoder, items)
    assert encoder.calls == 0 and sorted(p.name for p in out.iterdir()) == [LOCK]
    assert (out / LOCK).read_text() == f"{os.getpid()}\n"
    (out / LOCK).write_text(f"{NOT_A_PID}\n")  # a build that died without releasing it
    memory = build(out, encoder, items)
    assert memory.ids == [item.id for item in items] and not (out / LOCK).exists()


# ---------------------------------------------------------------------- 3. a damaged build shard
@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete"])
def test_damaged_build_shard_is_found_before_encoding_and_only_its_batch_is_redone(tmp_path, damage):
    items, keys, latents = make_data(420)  # 7 batches of 60
    reference = build(tmp_path / "reference", TableEncoder(items, keys, latents), items)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(tmp_path / "m", TableEncoder(items, keys, latents, fail_at_call=5), items)
    shard = tmp_path / "m" / ".building" / "batch-000002.npz"
    data = bytearray(shard.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[:-9]))
    else:
        shard.unlink()
    finishing = TableEncoder(items, keys, latents)
    resumed = build(tmp_path / "m", finishing, items)
    assert finishing.calls == 3  # batch 2 again, then the never-encoded 5 and 6
    assert finishing.encoded_ids == [item.id for item in items[120:180] + items[300:]]
    assert_same_memory(resumed, reference)


def test_progress_records_size_and_sha256_of_each_shard(tmp_path):
    _crashed_build(tmp_path / "m")
    recorded = json.loads((tmp_path / "m" / ".building" / "progress.json").read_text())["shards"]
    assert [shard["name"] for shard in recorded] == ["batch-000000.npz", "batch-000001.npz"]
    for shard in recorded:
        data = (tmp_path / "m" / ".building" / shard["name"]).read_bytes()
        assert shard["bytes"] == len(data) and len(shard["sha256"]) == 64


# ---------------------------------------------------------------------- 4. Ctrl-C
def test_ctrl_c_keeps_finished_batches_and_rerun_resumes_to_an_identical_memory(tmp_path):
    items, keys, latents = make_data(420)  # 7 batches of 60
    reference = build(tmp_path / "reference", TableEncoder(items, keys, latents), items)
    out = tmp_path / "m"
    with pytest.raises(BuildInterrupted, match="rerun the same command to resume") as err:
        build_catching_ctrl_c(out, InterruptingEncoder(items, keys, latents, interrupt_at_call=1), items)
    assert isinstance(err.value, LatentLabError) and str(out) in str(err.value)
    assert progress_shards(out) == ["batch-000000.npz"]
    assert not (out / MANIFEST_NAME).exists() and not (out / LOCK).exists()
    finishing = TableEncoder(items, keys, latents)
    resumed = build(out, finishing, items)
    assert finishing.calls == 6 and finishing.encoded_ids == [item.id for item in items[60:]]
    assert_same_memory(resumed, reference)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.path.iterdir())


# ---------------------------------------------------------------------- 5. a memory directory that does not exist
def test_opening_a_missing_memory_directory_says_so(tmp_path):
    missing = tmp_path / "no-such-memory"
    with pytest.raises(IndexError_, match=f"^{re.escape(f'no such memory directory: {missing}')}$"):
        LatentIndex.open(missing)
    with pytest.raises(IndexError_, match="no such memory directory"):
        read_manifest(missing)
    assert not missing.exists()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(IndexError_, match="a-file: not a directory"):
        LatentIndex.open(tmp_path / "a-file")
