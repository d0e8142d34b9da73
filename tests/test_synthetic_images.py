"""The seeded synthetic image QA: same scenes, questions and PNG bytes for a seed; answers only in the pictures; PNGs
written once; splits disjoint by scene; JSONL round trip; the data source selectable from the memory config."""

import os
import re
from pathlib import Path

import pytest

from latentlab.configs import load_config
from latentlab.data.modules import corpus_of, load_qa_split
from latentlab.data.schema import read_corpus, read_qa
from latentlab.data.synthetic_images import (
    COLOURS,
    NUMBERS,
    POSITIONS,
    QUESTION_TYPES,
    SHAPES,
    TEXT_QUESTION_TYPES,
    generate_scenes,
    write_scenes,
)
from latentlab.errors import ConfigError, DataError
from latentlab.eval.metrics import normalize_answer
from tests.conftest import REPO

TINY_YAML = REPO / "paper_configs/tiny/latent_memory_multimodal.yaml"


def _relative(scene_set, root):
    """The questions with image paths relative to ``root`` (two caches hold the same scenes at other paths)."""
    return [
        (q.id, q.question, q.answers, q.supporting, q.question_type)
        + tuple((e.id, e.text, e.title, e.image and os.path.relpath(e.image, root)) for e in q.evidence)
        for split in scene_set.questions.values()
        for q in split
    ]


def test_same_seed_same_questions_and_png_bytes_other_seed_other_scenes(tmp_path):
    a = generate_scenes(40, 7, tmp_path / "a")
    b = generate_scenes(40, 7, tmp_path / "b")
    assert _relative(a, tmp_path / "a") == _relative(b, tmp_path / "b")
    for sid, scene in a.scenes.items():
        data = Path(scene.image).read_bytes()
        assert data == Path(b.scenes[sid].image).read_bytes() and data.startswith(b"\x89PNG\r\n\x1a\n")
    other = generate_scenes(40, 8, tmp_path / "a")
    assert [s.text for s in other.scenes.values()] != [s.text for s in a.scenes.values()]
    assert {s.image for s in other.scenes.values()}.isdisjoint({s.image for s in a.scenes.values()})


def test_answers_are_only_in_the_pictures(tmp_path):
    scene_set = generate_scenes(120, 0, tmp_path)
    seen_types = set()
    for questions in scene_set.questions.values():
        for q in questions:
            seen_types.add(q.question_type)
            (scene,) = q.supporting_evidence()
            assert scene.image and scene.title and f"picture of {scene.title}" in q.question
            answer = normalize_answer(q.answers[0])
            for item in q.negative_evidence():
                if not item.image:  # no text distractor holds the answer
                    assert not re.search(rf"\b{re.escape(answer)}\b", normalize_answer(item.text)), (q, item)
            description = normalize_answer(scene.text)
            if q.question_type == "yes/no":
                colour, shape = re.search(r"there an? (\w+) (\w+) in", q.question).groups()
                assert (answer == "yes") == bool(re.search(rf"\b{colour} {shape}\b", description)), q
            else:
                assert re.search(rf"\b{re.escape(answer)}\b", description), (q, scene.text)
                allowed = {"colour": COLOURS, "shape": SHAPES, "count": NUMBERS, "position": POSITIONS}
                assert q.answers[0] in allowed[q.question_type]
    assert seen_types == set(QUESTION_TYPES)


def test_pools_hold_image_and_text_distractors_and_splits_are_disjoint(tmp_path):
    scene_set = generate_scenes(60, 1, tmp_path, image_distractors=3, text_distractors=2)
    by_split = {split: {q.supporting[0] for q in qs} for split, qs in scene_set.questions.items()}
    assert sum(len(s) for s in by_split.values()) == 60 and len(by_split["train"]) == 48
    assert by_split["train"].isdisjoint(by_split["validation"]) and by_split["train"].isdisjoint(by_split["test"])
    for split, questions in scene_set.questions.items():
        for q in questions:
            images = [e for e in q.negative_evidence() if e.image]
            texts = [e for e in q.negative_evidence() if not e.image]
            assert len(images) == min(3, len(by_split[split]) - 1) and len(texts) == 2
            assert {e.id for e in images} <= by_split[split]  # image hard negatives from the same split
            title = q.supporting_evidence()[0].title
            assert any(title in e.text for e in texts)  # its own title's facts: a text distractor that names it


def test_pngs_are_written_once_and_a_changed_cache_file_is_an_error(tmp_path):
    scene_set = generate_scenes(12, 0, tmp_path)
    first = next(iter(scene_set.scenes.values())).image
    stamps = {s.image: os.stat(s.image).st_mtime_ns for s in scene_set.scenes.values()}
    generate_scenes(12, 0, tmp_path)
    assert stamps == {s.image: os.stat(s.image).st_mtime_ns for s in scene_set.scenes.values()}
    with open(first, "wb") as handle:
        handle.write(b"other bytes")
    with pytest.raises(DataError, match=rf"{re.escape(first)}: the image cache holds other bytes"):
        generate_scenes(12, 0, tmp_path)
    assert Path(first).read_bytes() == b"other bytes"  # left as found


def test_written_jsonl_reads_back_with_resolved_image_paths(tmp_path):
    scene_set = generate_scenes(20, 2, tmp_path / "cache")
    paths = write_scenes(scene_set, tmp_path / "data")
    assert '"image": "../cache/' in paths["train"].read_text()
    for split, questions in scene_set.questions.items():
        assert read_qa(paths[split]) == questions
    corpus = read_corpus(paths["corpus"])
    assert corpus == scene_set.corpus() and {bool(e.image) for e in corpus} == {True, False}


def test_the_data_source_is_selectable_from_the_memory_config(tmp_path):
    overrides = {"data.synthetic_images.num_scenes": 20, "data.synthetic_images.cache_dir": str(tmp_path)}
    config = load_config(TINY_YAML, overrides)
    train = load_qa_split(config, "train")
    images = [q for q in train if q.id.startswith("train-img-")]
    assert len(images) == 16 and all(q.supporting_evidence()[0].image for q in images)
    assert len(train) == 16 + 8  # the tiny twin's text_questions: 0.5 adds one text question per two scenes
    assert load_qa_split(config, "test", training_limits=False)[0].id.startswith("test-img-")
    assert len(corpus_of(config, train)) == 20 * 3  # every scene and its two facts
    with pytest.raises(ConfigError, match=r"key 'compressor\.vision'.*synthetic_images"):
        load_config(TINY_YAML, {**overrides, "compressor.vision": None})
    text_yaml = REPO / "paper_configs/tiny/latent_memory_text.yaml"
    with pytest.raises(ConfigError, match=r"key 'data\.synthetic_images'.*only read with"):
        load_config(text_yaml, {"data.synthetic_images.num_scenes": 20})
    with pytest.raises(ConfigError, match=r"key 'loss\.image'.*compressor\.vision"):
        load_config(text_yaml, {"loss.image.embed_recon_weight": 1.0})
    with pytest.raises(ConfigError, match=r"key 'data\.synthetic_images\.max_shapes'.*1\.\.6"):
        load_config(TINY_YAML, {"data.synthetic_images.max_shapes": 9})


def test_text_questions_are_answered_by_a_fact_and_leave_the_image_questions_as_they_were(tmp_path):
    plain = generate_scenes(40, 3, tmp_path / "a")
    mixed = generate_scenes(40, 3, tmp_path / "b", text_questions=0.5)
    for split in plain.questions:
        images = [q for q in mixed.questions[split] if q.id.startswith(f"{split}-img-")]
        texts = [q for q in mixed.questions[split] if q.id.startswith(f"{split}-txt-")]
        assert [(q.question, q.answers, [e.id for e in q.evidence]) for q in images] == [
            (q.question, q.answers, [e.id for e in q.evidence]) for q in plain.questions[split]
        ]
        assert len(texts) == round(0.5 * len(images))
        for q in texts:
            assert q.question_type in TEXT_QUESTION_TYPES
            (fact,) = q.supporting_evidence()
            assert not fact.image and q.answers[0] in fact.text
            title = re.split(r" was made by | hangs in ", fact.text.removeprefix("The picture of "))[0]
            assert f"picture of {title}" in q.question
            own_scene = [e for e in q.evidence if e.image and e.title == title]
            assert len(own_scene) == 1 and q.answers[0] not in own_scene[0].text  # the picture does not answer it
            assert len(q.evidence) == 1 + 3 + 3
    with pytest.raises(DataError, match="text_questions must be a fraction"):
        generate_scenes(20, 3, tmp_path / "c", text_questions=1.5)


def test_the_cache_folder_is_named_by_every_setting_that_changes_the_pictures(tmp_path):
    generate_scenes(20, 3, tmp_path)
    generate_scenes(30, 3, tmp_path)  # other scenes for seed 3: another folder, not a clash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed3-64px-20scenes-max4", "seed3-64px-30scenes-max4"]
