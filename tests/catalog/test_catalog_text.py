"""Terms, TF-IDF keywords and the spelling-tolerant part of search queries."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.catalog.text import (
    count_terms,
    fuzzy_tsquery,
    plain_text,
    query_words,
    rank_keywords,
    spelling_alternatives,
    term_delta,
    text_terms,
    tf_idf,
    transcript_terms,
)


def test_plain_text_strips_markup_scripts_and_entities() -> None:
    html = '<p>Tips &amp; <b>tricks</b><script>alert("x")</script> for&nbsp;you</p>'
    assert plain_text(html) == "Tips & tricks for you"


def test_count_terms_drops_stop_words_urls_and_short_words() -> None:
    counts = count_terms(
        "The best <b>index funds</b> for 2024: see https://example.com/funds. "
        "Index funds, index funds!",
        phrases=True,
    )
    assert counts["index"] == 3
    assert counts["funds"] == 3
    assert counts["index funds"] == 3
    for dropped in ("the", "for", "best", "see", "https", "example", "2024"):
        assert dropped not in counts
    # Phrases never span punctuation or stop words.
    assert "funds index" not in counts


def test_transcript_terms_keep_only_the_most_frequent_words() -> None:
    words = " ".join(f"word{n:04d}x " * (1 + n % 5) for n in range(1000))
    terms = transcript_terms(words)
    assert len(terms) == 300
    assert all(" " not in t for t in terms)


def test_term_delta() -> None:
    old = {"radio": 3, "antenna": 1}
    new = {"radio": 5, "yagi": 2}
    assert term_delta(old, new) == {"radio": 2, "yagi": 2, "antenna": -1}
    assert term_delta(new, new) == {}


@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 9)),
    st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 9)),
)
def test_term_delta_applied_to_old_gives_new(old: dict[str, int], new: dict[str, int]) -> None:
    total = Counter(old)
    total.update(term_delta(old, new))
    assert +total == Counter(new)


def test_tf_idf_prefers_distinctive_terms() -> None:
    assert tf_idf(10, 1, 20) > tf_idf(10, 20, 20)
    assert tf_idf(20, 5, 20) > tf_idf(10, 5, 20)
    # Sublinear: ten times as frequent is not ten times as important.
    assert tf_idf(100, 5, 20) < 3 * tf_idf(10, 5, 20)


def test_rank_keywords_over_a_catalog() -> None:
    finance = text_terms(
        "Personal finance weekly",
        "Personal finance, budgeting and retirement. Personal finance for families. "
        "Our radio show about budgeting. Retirement planning.",
    )
    # In a catalog of 10 podcasts, "radio" is in all of them, "retirement" in two.
    df = {"radio": 10, "retirement": 2, "budgeting": 2, "personal finance": 1, "show": 10}
    keywords = rank_keywords(finance, df, documents=10)
    texts = [k.text for k in keywords]
    assert texts[0] == "personal finance"
    assert keywords[0].weight == 1.0
    assert all(0 < k.weight <= 1 for k in keywords)
    assert [k.weight for k in keywords] == sorted((k.weight for k in keywords), reverse=True)
    assert texts.index("retirement") < texts.index("radio")
    # The words of a chosen phrase are not repeated on their own.
    assert "personal" not in texts
    assert "finance" not in texts


def test_rank_keywords_edge_cases() -> None:
    assert rank_keywords({}, {}, 0) == []
    # A phrase seen once is noise.
    assert [k.text for k in rank_keywords({"one off": 1, "radio": 1}, {}, 1)] == ["radio"]
    many = {f"term{n}": n + 1 for n in range(50)}
    assert len(rank_keywords(many, {}, 1, limit=20)) == 20


def test_query_words_and_fuzzy_tsquery() -> None:
    assert query_words('personal "finanse" -crypto or stocks') == [
        "personal", "finanse", "or", "stocks",
    ]  # fmt: skip
    words = ["personal", "finanse"]
    assert fuzzy_tsquery(words, {}) is None
    assert (
        fuzzy_tsquery(words, {"finanse": ["finance", "finances"]})
        == "(personal) & (finanse | finance | finances)"
    )
    # Anything that is not a plain word never reaches to_tsquery().
    assert fuzzy_tsquery(["a"], {"a": ["b'|!c", "ok"]}) == "(a | ok)"


@pytest.mark.parametrize(
    ("similar", "expected"),
    [
        ([("sourdough", 0.58), ("source", 0.33)], ["sourdough"]),
        ([("finance", 0.45), ("finances", 0.42)], ["finance", "finances"]),
        ([], []),
    ],
)
def test_spelling_alternatives(similar: list[tuple[str, float]], expected: list[str]) -> None:
    assert spelling_alternatives(similar) == expected
