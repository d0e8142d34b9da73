"""NLVR: the official dev JSON Lines to true/false QA examples on one (or every) rendered image, read in place
(issue 16); a tiny hand-made copy in tmp_path, and the real dev split when ../shared/data has it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from latentlab.cli import main
from latentlab.data.nlvr import IMAGES_PER_RECORD, convert_nlvr, image_set, nlvr_question, split_nlvr, write_nlvr
from latentlab.data.schema import read_qa
from latentlab.errors import ConfigError, DataError
from latentlab.io import ResultsExistError
from tests.conftest import shared_file

RECORDS = [
    {"sentence": "There is a yellow circle", "label": "true", "identifier": "7-0", "directory": "1"},
    {"sentence": "There are two black squares", "label": "false", "identifier": "7-1", "directory": "1"},
    {"sentence": "One box is empty", "label": "true", "identifier": "12-3", "directory": "0"},
]


def _dataset(root: Path, records=RECORDS, skip: tuple[str, int] | None = None) -> Path:
    """``root/dev/dev.json`` (JSON Lines, with the official extra keys) and its six PNGs per record, except
    ``skip = (identifier, k)``."""
    folder = root / "dev"
    folder.mkdir(parents=True)
    lines = []
    for record in records:
        lines.append(json.dumps({**record, "evals": {"r0": record["label"]}, "structured_rep": [[], [], []]}))
        for k in range(IMAGES_PER_RECORD):
            if (record["identifier"], k) == skip:
                continue
            image = folder / "images" / record["directory"] / f"dev-{record['identifier']}-{k}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 1), (k * 40, 0, 0)).save(image)
    path = folder / "dev.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_one_question_per_record_on_image_zero(tmp_path):
    path = _dataset(tmp_path)
    examples = convert_nlvr(path)
    assert [e.id for e in examples] == ["nlvr-dev-7-0-0", "nlvr-dev-7-1-0", "nlvr-dev-12-3-0"]
    first = examples[0]
    assert first.question == "True or false: There is a yellow circle" == nlvr_question(" There is a yellow circle ")
    assert (first.answers, first.question_type, first.supporting) == (["true"], "nlvr", ["dev-7-0-0"])
    assert examples[1].answers == ["false"]
    (item,) = first.evidence
    assert (item.id, item.text, item.title) == ("dev-7-0-0", None, None)
    assert item.image == str(path.parent / "images" / "1" / "dev-7-0-0.png") and Path(item.image).is_absolute()
    assert examples[2].evidence[0].image.endswith("images/0/dev-12-3-0.png")


def test_every_image_makes_its_own_question(tmp_path):
    examples = convert_nlvr(_dataset(tmp_path), images="all")
    assert len(examples) == 3 * IMAGES_PER_RECORD
    assert [e.id for e in examples[:6]] == [f"nlvr-dev-7-0-{k}" for k in range(6)]
    assert {e.evidence[0].image for e in examples[:6]} == {
        str(tmp_path / "dev" / "images" / "1" / f"dev-7-0-{k}.png") for k in range(6)
    }
    with pytest.raises(ConfigError, match="images='some' is not a choice"):
        convert_nlvr(tmp_path / "dev" / "dev.json", images="some")


def test_written_file_reads_the_images_in_place(tmp_path):
    examples = convert_nlvr(_dataset(tmp_path / "shared"))
    out = tmp_path / "project" / "data" / "nlvr"
    written = write_nlvr(examples, out)
    assert written == out / "dev.jsonl" and sorted(p.name for p in out.iterdir()) == ["dev.jsonl"]
    on_disk = json.loads(written.read_text(encoding="utf-8").splitlines()[0])
    assert on_disk["evidence"][0]["image"] == "../../../shared/dev/images/1/dev-7-0-0.png"  # relative to the JSONL
    assert read_qa(written) == examples  # the paths resolve to the same files
    assert not list((tmp_path / "project").rglob("*.png"))  # no image copied
    with pytest.raises(ResultsExistError, match="already holds results"):
        write_nlvr(examples, out)
    write_nlvr(examples[:1], out, overwrite=True)
    assert len(read_qa(written)) == 1


def test_a_missing_image_names_identifier_file_and_line(tmp_path):
    path = _dataset(tmp_path, skip=("7-1", 3))
    assert len(convert_nlvr(path)) == 3  # image 3 is not needed for image 0 only
    with pytest.raises(DataError) as error:
        convert_nlvr(path, images="all")
    message = str(error.value)
    assert (
        f"{path}:2 (identifier 7-1): image 3 not found at {path.parent / 'images' / '1' / 'dev-7-1-3.png'}" in message
    )
    with pytest.raises(DataError, match=r"dev.json:1 \(identifier 7-0\): image 0 not found at .*/elsewhere/1/"):
        convert_nlvr(path, image_dir=tmp_path / "elsewhere")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"label": "True"}, r"dev.json:2 \(identifier 7-1\): field 'label' must be \"true\" or \"false\", got 'True'"),
        ({"sentence": ""}, r"dev.json:2 \(identifier 7-1\): field 'sentence' must be the statement"),
        ({"identifier": "7"}, r"dev.json:2: field 'identifier' is '7' \(expected '<number>-<number>'"),
        ({"identifier": "7-0"}, r"dev.json:2: identifier 7-0 is also the identifier at .*dev.json:1"),
        ({"directory": None}, r"dev.json:2 \(identifier 7-1\): field 'directory' must be the image folder's number"),
    ],
)
def test_a_malformed_record_names_its_line(tmp_path, change, expected):
    records = [RECORDS[0], {**RECORDS[1], **change}]
    path = _dataset(tmp_path, records=[RECORDS[0], RECORDS[1]])
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = json.dumps(records[1])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=expected):
        convert_nlvr(path)


def test_cli_writes_the_questions(tmp_path, capsys):
    path = _dataset(tmp_path / "shared")
    out = tmp_path / "nlvr"
    assert main(["data", "nlvr", "--dev-json", str(path), "--out", str(out), "--images", "all"]) == 0
    assert f"18 true/false questions (12 true, 6 false) in {out / 'dev.jsonl'}" in capsys.readouterr().out
    assert len(read_qa(out / "dev.jsonl")) == 18
    assert main(["data", "nlvr", "--dev-json", str(path), "--out", str(out)]) == 2
    assert "already holds results; pass --overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "nlvr", "--dev-json", str(path), "--out", str(out), "--imgs", "x.tsv"])
    assert "(--imgs is an option of `latentlab data webqa`)" in capsys.readouterr().err


def test_real_dev_split_has_989_records_547_true_442_false():
    path = shared_file("images_nlvr/dev/dev.json")
    examples = convert_nlvr(path)
    assert len(examples) == 989
    assert Counter(e.answers[0] for e in examples) == {"true": 547, "false": 442}
    assert all(Path(e.evidence[0].image).is_file() for e in examples)
    first = examples[0]
    assert first.question == "True or false: Each grey box contains atleast one yellow object touching the edge"
    assert first.evidence[0].image.endswith("images_nlvr/dev/images/2/dev-1572-0-0.png")
    assert len(convert_nlvr(path, images="all")) == 989 * IMAGES_PER_RECORD  # all 5,934 images are present


def _many_records(n: int) -> list[dict]:
    """``n`` image sets, two sentences each (identifiers ``<set>-0`` and ``<set>-1``), labels alternating."""
    return [
        {
            "sentence": f"Sentence {i}.{j}",
            "label": ("true", "false")[(i + j) % 2],
            "identifier": f"{i}-{j}",
            "directory": str(i % 3),
        }
        for i in range(n)
        for j in range(2)
    ]


def test_splits_are_by_image_set_with_every_image_in_training_and_image_zero_elsewhere(tmp_path):
    examples = convert_nlvr(_dataset(tmp_path, _many_records(20)), images="all")
    splits = split_nlvr(examples, seed=1)
    assert list(splits) == ["train", "validation", "test"]
    sets = {name: {image_set(e) for e in rows} for name, rows in splits.items()}
    assert [len(v) for v in sets.values()] == [16, 2, 2]
    assert not (sets["train"] & sets["validation"] or sets["train"] & sets["test"] or sets["validation"] & sets["test"])
    assert len(splits["train"]) == 16 * 2 * IMAGES_PER_RECORD  # every image of every training record
    assert all(e.id.endswith("-0") for e in splits["validation"] + splits["test"])
    assert len(splits["test"]) == 2 * 2  # image 0 of each of the test sets' two statements
    assert split_nlvr(examples, seed=1) == splits and split_nlvr(examples, seed=2) != splits
    with pytest.raises(DataError, match="cannot fill train, validation and test"):
        split_nlvr(examples[:12], seed=1)  # one image set
    with pytest.raises(ConfigError, match="must be positive"):
        split_nlvr(examples, fractions=(0.9, 0.1))


def test_the_cli_writes_the_splits_and_refuses_a_seed_without_them(tmp_path, capsys):
    path = _dataset(tmp_path, _many_records(20))
    out = tmp_path / "splits"
    assert main(["data", "nlvr", "--dev-json", str(path), "--out", str(out), "--splits", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "train: 32 true/false questions" in printed and "test: 4 true/false questions" in printed
    for name in ("train", "validation", "test"):
        rows = read_qa(out / f"{name}.jsonl")
        assert rows and all(Path(e.evidence[0].image).is_file() for e in rows)
    before = (out / "train.jsonl").read_bytes()
    assert main(["data", "nlvr", "--dev-json", str(path), "--out", str(out), "--splits"]) != 0  # refused: exists
    assert (out / "train.jsonl").read_bytes() == before
    assert main(["data", "nlvr", "--dev-json", str(path), "--out", str(tmp_path / "x"), "--seed", "3"]) != 0
    assert "--seed is read only with --splits" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
