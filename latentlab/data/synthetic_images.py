"""Seeded synthetic image QA: pillow-rendered scenes of coloured shapes on a 3x3 grid, each titled with a fictional
person or place, with a ground-truth description; questions (colour, count, shape, position, yes/no) answered only
by the picture, beside image and text distractors. The PNGs are written once into a cache folder, same bytes a seed.
"""

from __future__ import annotations

import io
import os
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from latentlab import io as atomic_io
from latentlab.data.schema import Evidence, QAExample, write_jsonl
from latentlab.data.synthetic import unique_names
from latentlab.errors import DataError

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 170),
    "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = (
    "top left", "top middle", "top right",
    "middle left", "centre", "middle right",
    "bottom left", "bottom middle", "bottom right",
)  # fmt: skip
"""The 3x3 grid cells, row by row: where each shape sits."""
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
QUESTION_TYPES = ("colour", "count", "shape", "position", "yes/no")
"""Image questions: answered by the picture alone."""
TEXT_QUESTION_TYPES = ("maker", "gallery")
"""Text questions: answered by a fact about a picture's title (``text_questions``), never by the picture."""
PLACE_SUFFIXES = ("Square", "Harbour", "Gardens", "Market", "Bridge", "Hill")
RESERVED = {w.capitalize() for w in [*COLOURS, *SHAPES, *NUMBERS, "yes", "no", "top", "middle", "centre", "left"]}
"""Words an answer can be: no generated name is one of them, so no text distractor holds an answer."""
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Shape:
    colour: str
    kind: str
    cell: int
    """Grid cell 0..8, row by row (``POSITIONS[cell]``)."""

    def phrase(self) -> str:
        return f"{article(self.colour)} {self.colour} {self.kind} at the {POSITIONS[self.cell]}"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


@dataclass
class SceneSet:
    """Scenes (image items), text facts about their titles, and the questions of each split."""

    scenes: dict[str, Evidence]
    facts: dict[str, Evidence]
    questions: dict[str, list[QAExample]]

    def corpus(self) -> list[Evidence]:
        """Every scene and every text fact: one memory of both modalities."""
        return [*self.scenes.values(), *self.facts.values()]


def describe(title: str, shapes: list[Shape]) -> str:
    """The ground-truth description: every shape with its colour and position, then the count of each kind."""
    listed = [s.phrase() for s in shapes]
    body = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + " and " + listed[-1]
    counts = []
    for kind in SHAPES:
        n = sum(s.kind == kind for s in shapes)
        counts.append(f"{NUMBERS[n]} {kind}{'' if n == 1 else 's'}")
    return f"The picture of {title} shows {body}. In all: {', '.join(counts)}."


def render(shapes: list[Shape], size: int) -> bytes:
    """The PNG bytes of a scene: shapes drawn without anti-aliasing on white, so one seed gives the same bytes."""
    picture = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    cell = size / 3
    for shape in shapes:
        row, col = divmod(shape.cell, 3)
        x0, y0 = col * cell + cell * 0.15, row * cell + cell * 0.15
        x1, y1 = (col + 1) * cell - cell * 0.15, (row + 1) * cell - cell * 0.15
        box = [round(x0), round(y0), round(x1), round(y1)]
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif shape.kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _write_once(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` unless it already holds exactly these bytes; other bytes there are an error."""
    if path.exists():
        if path.read_bytes() != data:
            raise DataError(
                f"{path}: the image cache holds other bytes than this seed renders (expected the same PNG); delete "
                f"it, or point data.synthetic_images.cache_dir at another folder"
            )
        return
    atomic_io.write_bytes(path, data)


def _question(rng: random.Random, title: str, shapes: list[Shape]) -> tuple[str, str, str]:
    """(question type, question, answer) about one scene; the answer is only in its picture."""
    kinds = [s.kind for s in shapes]
    colours = [s.colour for s in shapes]
    pairs = [(s.colour, s.kind) for s in shapes]
    options = ["count", "yes/no"]
    if any(kinds.count(k) == 1 for k in SHAPES):
        options.append("colour")
    if any(colours.count(c) == 1 for c in COLOURS):
        options.append("shape")
    if any(pairs.count(p) == 1 for p in pairs):
        options.append("position")
    kind = rng.choice(sorted(options, key=QUESTION_TYPES.index))
    if kind == "colour":
        shape = rng.choice([s for s in shapes if kinds.count(s.kind) == 1])
        return kind, f"What colour is the {shape.kind} in the picture of {title}?", shape.colour
    if kind == "shape":
        shape = rng.choice([s for s in shapes if colours.count(s.colour) == 1])
        return kind, f"What shape is the {shape.colour} object in the picture of {title}?", shape.kind
    if kind == "count":
        asked = rng.choice(SHAPES)
        return kind, f"How many {asked}s are in the picture of {title}?", NUMBERS[kinds.count(asked)]
    if kind == "position":
        shape = rng.choice([s for s in shapes if pairs.count((s.colour, s.kind)) == 1])
        return kind, f"Where is the {shape.colour} {shape.kind} in the picture of {title}?", POSITIONS[shape.cell]
    absent = sorted({(c, k) for c in COLOURS for k in SHAPES} - set(pairs))
    colour, shape_kind = rng.choice(sorted(set(pairs))) if rng.random() < 0.5 else rng.choice(absent)
    answer = "yes" if (colour, shape_kind) in pairs else "no"
    return kind, f"Is there {article(colour)} {colour} {shape_kind} in the picture of {title}?", answer


def generate_scenes(
    num_scenes: int,
    seed: int,
    cache_dir: Path,
    image_size: int = 64,
    max_shapes: int = 4,
    image_distractors: int = 3,
    text_distractors: int = 3,
    split_fractions: tuple[float, float] = (0.8, 0.1),
    text_questions: float = 0.0,
) -> SceneSet:
    """Scenes, facts and one question a scene, split train/validation/test by scene; PNGs into ``cache_dir``.

    A question's pool holds its scene, ``image_distractors`` other scenes of its split (image hard negatives) and
    ``text_distractors`` facts (its own title's first, then others'); no fact holds an answer word (``RESERVED``).
    ``text_questions``: that fraction of each split's scenes also gets a text question (who made the picture, which
    gallery holds it; ids ``{split}-txt-{i}``, after the image questions), whose pool holds its fact, the title's
    other fact and its own scene first (hard negatives that name the same title), then other scenes and facts; it is
    drawn from its own random stream, so the image questions are the same with or without it.
    """
    if not 0.0 <= text_questions <= 1.0:
        raise DataError(f"text_questions must be a fraction in [0, 1], got {text_questions}")
    rng = random.Random(seed)
    taken = set(RESERVED)
    # Every setting that changes what is drawn names the folder: another set never meets these files.
    folder = Path(cache_dir) / f"seed{seed}-{image_size}px-{num_scenes}scenes-max{max_shapes}"
    places = unique_names(rng, num_scenes, (2, 3), taken)
    firsts = unique_names(rng, num_scenes, (2, 2), taken)
    lasts = unique_names(rng, num_scenes, (2, 3), taken)
    makers = unique_names(rng, max(8, num_scenes // 4), (2, 3), taken)
    halls = unique_names(rng, max(4, num_scenes // 8), (2, 3), taken)
    scenes: dict[str, Evidence] = {}
    facts: dict[str, Evidence] = {}
    shapes_of: dict[str, list[Shape]] = {}
    values: dict[str, str] = {}  # each fact's answer: its maker or its gallery
    for i in range(num_scenes):
        sid = f"scene:{i:05d}"
        title = f"{places[i]} {rng.choice(PLACE_SUFFIXES)}" if rng.random() < 0.5 else f"{firsts[i]} {lasts[i]}"
        cells = rng.sample(range(9), rng.randint(1, max_shapes))
        shapes = [Shape(rng.choice(list(COLOURS)), rng.choice(SHAPES), cell) for cell in sorted(cells)]
        path = folder / f"{sid.replace(':', '-')}.png"
        _write_once(path, render(shapes, image_size))
        scenes[sid] = Evidence(id=sid, text=describe(title, shapes), image=str(path), title=title)
        shapes_of[sid] = shapes
        maker = values[f"fact:{i:05d}:maker"] = rng.choice(makers)
        facts[f"fact:{i:05d}:maker"] = Evidence(
            id=f"fact:{i:05d}:maker", text=f"The picture of {title} was made by {maker}."
        )
        hall = values[f"fact:{i:05d}:hall"] = rng.choice(halls)
        facts[f"fact:{i:05d}:hall"] = Evidence(
            id=f"fact:{i:05d}:hall", text=f"The picture of {title} hangs in the {hall} gallery."
        )
    order = list(scenes)
    rng.shuffle(order)
    n_train, n_val = int(len(order) * split_fractions[0]), int(len(order) * split_fractions[1])
    groups = dict(zip(SPLITS, (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])))
    fact_ids = list(facts)
    questions: dict[str, list[QAExample]] = {}
    for split, members in groups.items():
        qrng = random.Random(f"{seed}-images-{split}")
        rows = []
        for index, sid in enumerate(members):
            kind, question, answer = _question(qrng, scenes[sid].title, shapes_of[sid])
            others = [m for m in members if m != sid]
            pool = qrng.sample(others, min(image_distractors, len(others)))
            own = [f"fact:{sid.split(':')[1]}:maker", f"fact:{sid.split(':')[1]}:hall"][:text_distractors]
            texts = own + qrng.sample([f for f in fact_ids if f not in own], text_distractors - len(own))
            ids = [sid, *pool, *texts]
            qrng.shuffle(ids)
            evidence = [scenes[e] if e in scenes else facts[e] for e in ids]
            rows.append(QAExample(f"{split}-img-{index}", question, [answer], evidence, [sid], question_type=kind))
        rows += _text_questions(
            random.Random(f"{seed}-texts-{split}"),
            split,
            members,
            scenes,
            facts,
            values,
            text_questions,
            image_distractors,
            text_distractors,
        )
        questions[split] = rows
    return SceneSet(scenes=scenes, facts=facts, questions=questions)


def _text_questions(
    rng: random.Random,
    split: str,
    members: list[str],
    scenes: dict[str, Evidence],
    facts: dict[str, Evidence],
    values: dict[str, str],
    fraction: float,
    image_distractors: int,
    text_distractors: int,
) -> list[QAExample]:
    """Text questions about ``fraction`` of a split's scenes (``generate_scenes``): each answered by one fact, whose
    maker or gallery ``values`` holds."""
    chosen = sorted(rng.sample(range(len(members)), round(fraction * len(members))))
    fact_ids = list(facts)
    rows = []
    for index, position in enumerate(chosen):
        sid = members[position]
        number, title = sid.split(":")[1], scenes[sid].title
        kind = rng.choice(TEXT_QUESTION_TYPES)
        own = {"maker": f"fact:{number}:maker", "gallery": f"fact:{number}:hall"}
        positive, other = own[kind], own["gallery" if kind == "maker" else "maker"]
        if kind == "maker":
            question = f"Who made the picture of {title}?"
        else:
            question = f"In which gallery does the picture of {title} hang?"
        answer = values[positive]
        others = [m for m in members if m != sid]
        images = ([sid] if image_distractors else []) + rng.sample(
            others, min(max(image_distractors - 1, 0), len(others))
        )
        spare = [f for f in fact_ids if f not in own.values()]
        texts = ([other] if text_distractors else []) + rng.sample(spare, max(text_distractors - 1, 0))
        ids = [positive, *images, *texts]
        rng.shuffle(ids)
        evidence = [scenes[e] if e in scenes else facts[e] for e in ids]
        rows.append(QAExample(f"{split}-txt-{index}", question, [answer], evidence, [positive], question_type=kind))
    return rows


def write_scenes(scene_set: SceneSet, out_dir: str | Path) -> dict[str, Path]:
    """Train/validation/test QA JSONL and a mixed corpus JSONL in ``out_dir``, image paths relative to it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def local(item: Evidence) -> Evidence:
        if not item.image:
            return item
        return Evidence(item.id, item.text, os.path.relpath(item.image, out_dir), item.title)

    def local_qa(example: QAExample) -> QAExample:
        return QAExample(
            example.id,
            example.question,
            example.answers,
            [local(e) for e in example.evidence],
            example.supporting,
            example.question_type,
        )

    paths = {
        split: write_jsonl(out_dir / f"{split}.jsonl", [local_qa(q) for q in rows])
        for split, rows in scene_set.questions.items()
    }
    paths["corpus"] = write_jsonl(out_dir / "corpus.jsonl", [local(e) for e in scene_set.corpus()])
    return paths
