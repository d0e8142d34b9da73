"""WebQA's official QA accuracy by question category (``Qcate``), after the official answer normalisation.

Pure functions score one prediction; ``WebQAAccuracy`` (a torchmetrics ``Metric``) accumulates per-category means.

Source: the WebQA authors' leaderboard script (``vlp/eval_1022.py`` of WebQnA/WebQA_Baseline) and the validation-set
approximation they publish beside it (``eval_webqa.md`` of WebQnA/WebQA). Kept from them:

- **Normalisation** (``normalize_webqa``): lower-case; drop ASCII punctuation except a ``.`` followed by a digit (a
  decimal point); drop the articles a/an/the unless the text is one word; map each word that is a digit string or a
  single number word (``zero`` .. ``nineteen``, the tens, ``hundred``, ``thousand``, ``million``, ``billion``) to its
  digits, as ``word2number.w2n.word_to_num`` does word by word, except ``point``; then lemmatise. A text of one
  character is only lower-cased and number-mapped. "three hundred" becomes ``3 100`` and "twenty-one"
  ``twentyone``, as in the official script.
- **Scores**: ``color``, ``shape`` and ``YesNo`` are the F1 between the *sets* of the official vocabulary's words in
  the prediction and in the answer (``COLOR_WORDS``, ``SHAPE_WORDS``, ``YESNO_WORDS``, copied from the script with
  its quirks: "yes" is a colour word, "h", "xs" and "point" shape words); ``number`` is the F1 between the bags of
  integer tokens (a decimal such as ``2.5`` is no integer and drops out); every other category (``choose``,
  ``Others``, ``text``) scores the *recall* of the answer's keywords in the prediction. No shared word scores 0, so
  does an answer without a vocabulary word (a ``color`` answer naming no listed colour).

Where this differs from the official script, and why:

- **Keywords.** The leaderboard scores against ``Keywords_A``, a field only the hidden test set has. Without it the
  answer's *content words* are the keywords: its normalised words less ``WEBQA_STOP_WORDS`` (function words), or all
  of them if nothing else is left (so "A" or "It is." still has a keyword). The authors' own validation
  approximation keeps every word; ``stop_words=frozenset()`` reproduces it. Pass ``keywords`` where you have them.
- **Lemmatiser.** The script uses spaCy's ``en_core_web_sm``, which latentlab does not ship. ``lemmatize`` is a
  small rule set: plural and third-person ``-s``/``-es``/``-ies`` and the forms of be/have/do and a few irregular
  plurals; ``-ed``/``-ing`` forms are kept, and so is every word of the three vocabularies. Both sides of a
  comparison go through it, so it decides only which inflections count as the same word.
- **F1** is exact; the leaderboard script adds 1e-5 to its denominator (a perfect answer scores 0.999995 there).
- **Several gold answers** (WebQA lists ``A``; nearly always one): the best-scoring one counts.
- **No fluency.** The leaderboard also reports BARTScore fluency and accuracy x fluency; the BART-large-CNN model it
  needs is not available here, so only accuracy is computed.
"""

from __future__ import annotations

import contextlib
import re
import string
from collections import Counter
from collections.abc import Collection, Sequence

import torch
from torchmetrics import Metric

from latentlab.errors import DataError

__all__ = [
    "CATEGORIES",
    "COLOR_WORDS",
    "SHAPE_WORDS",
    "WEBQA_STOP_WORDS",
    "YESNO_WORDS",
    "WebQAAccuracy",
    "answer_keywords",
    "lemmatize",
    "normalize_webqa",
    "webqa_accuracy",
]

CATEGORIES = ("YesNo", "choose", "color", "shape", "number", "Others", "text")
"""WebQA's question categories (``Qcate``), spelled as the official files spell them."""

# fmt: off
COLOR_WORDS = frozenset({
    "orangebrown", "spot", "yellow", "blue", "rainbow", "ivory", "brown", "gray", "teal", "bluewhite",
    "orangepurple", "black", "white", "gold", "redorange", "pink", "blonde", "tan", "turquoise", "grey", "beige",
    "golden", "orange", "bronze", "maroon", "purple", "bluere", "red", "rust", "violet", "transparent", "yes",
    "silver", "chrome", "green", "aqua",
})
"""The official ``color_set`` (36 words)."""
# fmt: on

# fmt: off
SHAPE_WORDS = frozenset({
    "globular", "octogon", "ring", "hoop", "octagon", "concave", "flat", "wavy", "shamrock", "cross", "cylinder",
    "cylindrical", "pentagon", "point", "pyramidal", "crescent", "rectangular", "hook", "tube", "cone", "bell",
    "spiral", "ball", "convex", "square", "arch", "h", "cuboid", "step", "rectangle", "dot", "oval", "circle",
    "star", "crosse", "crest", "octagonal", "cube", "triangle", "semicircle", "domeshape", "obelisk", "corkscrew",
    "curve", "circular", "xs", "slope", "pyramid", "round", "bow", "straight", "triangular", "heart", "fork",
    "teardrop", "fold", "curl", "spherical", "diamond", "keyhole", "conical", "dome", "sphere", "bellshaped",
    "rounded", "hexagon", "flower", "globe", "torus",
})
"""The official ``shape_set`` (69 words)."""
# fmt: on

YESNO_WORDS = frozenset({"yes", "no"})
"""The official ``yesno_set``."""

_VOCABULARY = {"color": COLOR_WORDS, "shape": SHAPE_WORDS, "YesNo": YESNO_WORDS}

# fmt: off
WEBQA_STOP_WORDS = frozenset({
    "a", "an", "the", "and", "or", "but", "nor", "so", "of", "in", "on", "at", "to", "for", "from", "by", "with",
    "about", "as", "into", "onto", "over", "under", "through", "than", "then", "there", "here", "that", "this",
    "these", "those", "it", "its", "be", "have", "do", "i", "you", "he", "she", "we", "they", "them", "him", "her",
    "his", "their", "our", "my", "your", "me", "us", "which", "who", "whom", "whose", "what", "when", "where",
    "why", "how", "can", "will", "would", "could", "should", "may", "might", "shall", "must", "also", "very",
    "such", "only", "just", "too", "if", "because", "while", "up", "down", "out", "off",
})
"""Function words (in ``lemmatize``'d form) that are not keywords of an answer; "no" and "not" stay keywords."""
# fmt: on

# fmt: off
_UNITS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)
# fmt: on
_NUMBER_WORDS = {word: value for value, word in enumerate(_UNITS)}
_NUMBER_WORDS |= {
    word: 10 * (i + 2)
    for i, word in enumerate(["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"])
}
_NUMBER_WORDS |= {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}

_PUNCTUATION_BUT_POINT = frozenset(string.punctuation) - {"."}
_POINT_NOT_DECIMAL = re.compile(r"\.(?!\d)")
_ARTICLES = re.compile(r"\b(a|an|the)\b")

_IRREGULAR = {
    **dict.fromkeys(("is", "are", "was", "were", "am", "been", "being"), "be"),
    **dict.fromkeys(("has", "had", "having"), "have"),
    **dict.fromkeys(("does", "did", "done", "doing"), "do"),
    "men": "man",
    "women": "woman",
    "children": "child",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "geese": "goose",
    "leaves": "leaf",
    "knives": "knife",
    "wolves": "wolf",
}
_KEEP = frozenset({"series", "species", "news", "physics", "mathematics", "always", "perhaps"}) | SHAPE_WORDS


def lemmatize(word: str) -> str:
    """A lower-case word's lemma under a small rule set (see the module docstring): ``"circles" -> "circle"``,
    ``"boxes" -> "box"``, ``"berries" -> "berry"``, ``"was" -> "be"``; words of up to 3 letters, non-alphabetic
    tokens and words ending in -ss, -us or -is stay as they are."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word in _KEEP or len(word) <= 3 or not word.isalpha() or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def _to_digits(word: str) -> str:
    """``word2number``'s reading of one word: a digit string loses leading zeros, a number word becomes digits."""
    if word == "point":  # the official script keeps it (w2n would read it as a decimal point)
        return word
    if word.isdigit():
        try:
            return str(int(word))
        except ValueError:  # a digit that int() does not read, such as "²"
            return word
    value = _NUMBER_WORDS.get(word)
    return word if value is None else str(value)


def normalize_webqa(text: str) -> list[str]:
    """The official WebQA normalisation of an answer or a prediction, as a list of words (see the module docstring).

    ``"The two circles."`` -> ``["2", "circle"]``; ``"Yes, it is."`` -> ``["yes", "it", "be"]``.
    """
    lowered = text.lower()
    if len(text.strip()) == 1:  # a single character keeps its punctuation and is not lemmatised
        return [_to_digits(w) for w in lowered.split()]
    kept = "".join(ch for ch in lowered if ch not in _PUNCTUATION_BUT_POINT)
    kept = _POINT_NOT_DECIMAL.sub("", kept)
    if len(text.split()) > 1:  # one word keeps its article ("A" can be an option's name)
        kept = _ARTICLES.sub(" ", kept)
    return [lemmatize(_to_digits(w)) for w in kept.split()]


def answer_keywords(answer: str, stop_words: Collection[str] = WEBQA_STOP_WORDS) -> list[str]:
    """The keywords of an answer: its normalised words less ``stop_words``, or all of them if none would be left."""
    words = normalize_webqa(answer)
    content = [w for w in words if w not in stop_words]
    return content or words


def _integers(words: list[str]) -> list[str]:
    """The official ``detectNum``: the words ``int()`` reads, written as ``int()`` prints them."""
    found = []
    for word in words:
        with contextlib.suppress(ValueError):
            found.append(str(int(word)))
    return found


def _f1_and_recall(pred_bag: list[str], gold_bag: list[str]) -> tuple[float, float]:
    same = sum((Counter(pred_bag) & Counter(gold_bag)).values())
    if same == 0:
        return 0.0, 0.0
    precision, recall = same / len(pred_bag), same / len(gold_bag)
    return 2 * precision * recall / (precision + recall), recall


def _check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise DataError(
            f"unknown WebQA question category {category!r} (expected one of {', '.join(CATEGORIES)}, spelled as "
            f"WebQA's 'Qcate' spells them)"
        )


def _score_one(prediction: str, gold: str, category: str, is_keywords: bool, stop_words: Collection[str]) -> float:
    pred_words = normalize_webqa(prediction)
    if category == "number":
        return _f1_and_recall(_integers(pred_words), _integers(normalize_webqa(gold)))[0]
    if category in _VOCABULARY:
        vocabulary = _VOCABULARY[category]
        gold_set = vocabulary.intersection(normalize_webqa(gold))
        return _f1_and_recall(sorted(vocabulary.intersection(pred_words)), sorted(gold_set))[0]
    gold_words = normalize_webqa(gold) if is_keywords else answer_keywords(gold, stop_words)
    return _f1_and_recall(pred_words, gold_words)[1]


def webqa_accuracy(
    prediction: str,
    answers: str | Sequence[str],
    category: str,
    keywords: str | None = None,
    stop_words: Collection[str] = WEBQA_STOP_WORDS,
) -> float:
    """WebQA accuracy of one prediction: F1 over the category's vocabulary (``color``, ``shape``, ``YesNo``), F1 over
    integers (``number``), else recall of the answer's keywords; the best of several ``answers`` counts.

    ``keywords``: the official ``Keywords_A`` where the data has it (the test set); it is then the gold text of every
    category, as in the leaderboard script, and is normalised but not stop-word filtered.
    """
    _check_category(category)
    if keywords is not None:
        return _score_one(prediction, keywords, category, True, stop_words)
    golds = [answers] if isinstance(answers, str) else list(answers)
    if not golds:
        raise DataError("a WebQA example has no gold answers; expected at least one answer string in 'answers'")
    return max(_score_one(prediction, gold, category, False, stop_words) for gold in golds)


class WebQAAccuracy(Metric):
    """Mean WebQA accuracy (``webqa_accuracy``) per question category and over all questions (``"all"``).

    ``compute`` returns ``{category: mean}`` for the categories seen, plus ``"all"`` (the mean over every question,
    the leaderboard's "All"); per-category sums and counts are summed across processes.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    score_sum: torch.Tensor
    count: torch.Tensor

    def __init__(self, stop_words: Collection[str] = WEBQA_STOP_WORDS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stop_words = frozenset(stop_words)
        zeros = torch.zeros(len(CATEGORIES), dtype=torch.float64)
        self.add_state("score_sum", default=zeros, dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(len(CATEGORIES), dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        predictions: Sequence[str],
        answers: Sequence[Sequence[str]],
        categories: Sequence[str],
        keywords: Sequence[str | None] | None = None,
    ) -> None:
        """predictions: [B]; answers: [B] lists of gold answers; categories: [B] ``Qcate``; keywords: [B] or None."""
        keywords = [None] * len(predictions) if keywords is None else list(keywords)
        lengths = {len(predictions), len(answers), len(categories), len(keywords)}
        if len(lengths) != 1:
            raise ValueError(
                f"predictions ({len(predictions)}), answers ({len(answers)}), categories ({len(categories)}) and "
                f"keywords ({len(keywords)}) must have one entry per question"
            )
        scores = [
            webqa_accuracy(p, a, c, k, self.stop_words)
            for p, a, c, k in zip(predictions, answers, categories, keywords)
        ]
        index = torch.tensor([CATEGORIES.index(c) for c in categories], dtype=torch.long, device=self.count.device)
        values = torch.tensor(scores, dtype=torch.float64, device=self.score_sum.device)
        self.score_sum.index_add_(0, index, values)
        self.count.index_add_(0, index, torch.ones_like(index))

    def compute(self) -> dict[str, torch.Tensor]:
        """``{category: mean}`` for each category seen and ``"all"``; ``{"all": nan}`` before any question."""
        means = {name: self.score_sum[i] / self.count[i] for i, name in enumerate(CATEGORIES) if int(self.count[i]) > 0}
        total = self.count.sum()
        means["all"] = (
            self.score_sum.sum() / total if int(total) > 0 else torch.tensor(float("nan"), dtype=torch.float64)
        )
        return means
