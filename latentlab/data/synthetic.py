"""Seeded fictional-entity multi-hop QA: a small world of people, cities, countries and companies.

One fact per sentence; 1-hop and 2-hop questions; disjoint people across train/validation/test, so a model
cannot answer from pre-training and must read the evidence. Any size, deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from latentlab.data.schema import Evidence, QAExample, write_jsonl

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "st"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "x", "m"]
PROFESSIONS = [
    "painter", "baker", "pilot", "doctor", "teacher", "architect", "farmer", "lawyer",
    "sailor", "chemist", "librarian", "carpenter",
]  # fmt: skip
COMPANY_SUFFIXES = ["Works", "Labs", "Foundry", "Mills", "Press", "Traders"]


def _name(rng: random.Random, syllables: int) -> str:
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
    return word.capitalize()


def unique_names(rng: random.Random, count: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    """``count`` new fictional names of ``syllables`` (min, max) syllables, none in ``taken`` (which they join)."""
    names: list[str] = []
    while len(names) < count:
        name = _name(rng, rng.randint(*syllables))
        if name not in taken and len(name) >= 4:
            taken.add(name)
            names.append(name)
    return names


@dataclass
class World:
    """Facts of the fictional world, one sentence each, keyed by a stable evidence id."""

    facts: dict[str, str]
    people: list[str]
    questions: dict[str, list[QAExample]]
    values: dict[str, str] = field(default_factory=dict)
    """fact id -> the value the fact states (a country, city, profession or company): labels for probing latents."""

    def corpus(self) -> list[Evidence]:
        return [Evidence(id=fid, text=text) for fid, text in self.facts.items()]


def generate_world(
    num_people: int = 400,
    seed: int = 0,
    distractors: int = 8,
    two_hop_fraction: float = 0.5,
    num_cities: int = 24,
    num_countries: int = 8,
    num_companies: int = 16,
    split_fractions: tuple[float, float] = (0.8, 0.1),
    train_questions_per_person: int = 2,
) -> World:
    """Generate the world and its questions; people are split train/validation/test by ``split_fractions``.

    Each training person gets ``train_questions_per_person`` questions (more supervision), everyone else one.
    The facts and the validation and test questions do not depend on it.
    """
    rng = random.Random(seed)
    taken: set[str] = set()
    countries = unique_names(rng, num_countries, (2, 3), taken)
    cities = unique_names(rng, num_cities, (2, 3), taken)
    company_roots = unique_names(rng, num_companies, (2, 2), taken)
    companies = [f"{root} {rng.choice(COMPANY_SUFFIXES)}" for root in company_roots]
    firsts = unique_names(rng, num_people, (2, 2), taken)
    lasts = unique_names(rng, num_people, (2, 3), taken)
    people = [f"{f} {last}" for f, last in zip(firsts, lasts)]

    facts: dict[str, str] = {}
    values: dict[str, str] = {}
    city_country = {c: rng.choice(countries) for c in cities}
    company_city = {c: rng.choice(cities) for c in companies}
    for city, country in city_country.items():
        facts[f"city:{city}:country"] = f"{city} is a city in {country}."
        values[f"city:{city}:country"] = country
    for company, city in company_city.items():
        facts[f"company:{company}:hq"] = f"{company} is based in the city of {city}."
        values[f"company:{company}:hq"] = city
    person_attrs = {}
    for person in people:
        attrs = {"born": rng.choice(cities), "job": rng.choice(PROFESSIONS), "employer": rng.choice(companies)}
        person_attrs[person] = attrs
        facts[f"person:{person}:born"] = f"{person} was born in {attrs['born']}."
        facts[f"person:{person}:job"] = f"{person} works as a {attrs['job']}."
        facts[f"person:{person}:employer"] = f"{person} is employed by {attrs['employer']}."
        values.update({f"person:{person}:{relation}": value for relation, value in attrs.items()})

    fact_ids = list(facts)

    def make_question(person: str, qrng: random.Random, index: int, split: str) -> QAExample:
        attrs = person_attrs[person]
        own = [f"person:{person}:{rel}" for rel in ("born", "job", "employer")]
        if qrng.random() < two_hop_fraction:
            if qrng.random() < 0.5:
                question = f"In which country was {person} born?"
                answer = city_country[attrs["born"]]
                supporting = [f"person:{person}:born", f"city:{attrs['born']}:country"]
            else:
                question = f"In which city is the company that employs {person} based?"
                answer = company_city[attrs["employer"]]
                supporting = [f"person:{person}:employer", f"company:{attrs['employer']}:hq"]
        else:
            relation = qrng.choice(["born", "job", "employer"])
            question, answer = {
                "born": (f"Where was {person} born?", attrs["born"]),
                "job": (f"What is the profession of {person}?", attrs["job"]),
                "employer": (f"Which company employs {person}?", attrs["employer"]),
            }[relation]
            supporting = [f"person:{person}:{relation}"]
        # Hard negatives: the person's other facts first, then random facts of the world.
        pool = [f for f in own if f not in supporting]
        while len(pool) < distractors:
            candidate = qrng.choice(fact_ids)
            if candidate not in supporting and candidate not in pool:
                pool.append(candidate)
        ids = supporting + pool[:distractors]
        qrng.shuffle(ids)
        evidence = [Evidence(id=fid, text=facts[fid]) for fid in ids]
        return QAExample(
            id=f"{split}-{index}", question=question, answers=[answer], evidence=evidence, supporting=supporting
        )

    order = people[:]
    rng.shuffle(order)
    n_train = int(len(order) * split_fractions[0])
    n_val = int(len(order) * split_fractions[1])
    groups = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    questions: dict[str, list[QAExample]] = {}
    for split, members in groups.items():
        qrng = random.Random(f"{seed}-{split}")
        repeats = train_questions_per_person if split == "train" else 1
        items = [person for person in members for _ in range(repeats)]
        questions[split] = [make_question(person, qrng, i, split) for i, person in enumerate(items)]
    return World(facts=facts, people=people, questions=questions, values=values)


def write_world(world: World, out_dir: str | Path) -> dict[str, Path]:
    """Write train/validation/test QA JSONL and the corpus JSONL into ``out_dir``."""
    out_dir = Path(out_dir)
    paths = {split: write_jsonl(out_dir / f"{split}.jsonl", items) for split, items in world.questions.items()}
    paths["corpus"] = write_jsonl(out_dir / "corpus.jsonl", world.corpus())
    return paths
