"""Words in the catalog's text: plain text from HTML, term counts, TF-IDF
keywords, and the typo-tolerant part of search queries."""

from __future__ import annotations

import html
import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from services.catalog.domain import Keyword

KEYWORD_LIMIT = 20
# A transcript contributes its most frequent words only: enough for topics, and
# it keeps a two-hour transcript from adding thousands of rows per episode.
TRANSCRIPT_TERM_LIMIT = 300
# A phrase is a stronger topic signal than either of its words alone.
PHRASE_BOOST = 1.5
MIN_WORD_LENGTH = 3
MAX_WORD_LENGTH = 40
# Query words shorter than this are too short for trigram similarity to say
# anything useful about a misspelling.
MIN_CORRECTABLE_LENGTH = 4
# How close to the closest word another must be to count as a spelling alternative.
ALTERNATIVE_MARGIN = 0.8

STOP_WORDS = frozenset(
    {
        "a", "about", "above", "after", "again", "against", "ago", "all", "almost", "along",
        "also", "although", "always", "am", "among", "an", "and", "another", "any", "anyone",
        "anything", "are", "aren", "around", "as", "at", "away", "back", "be", "because", "become",
        "been", "before", "being", "below", "best", "better", "between", "big", "both", "but",
        "by", "came", "can", "cannot", "could", "couldn", "day", "days", "did", "didn", "do",
        "does", "doesn", "doing", "don", "done", "down", "during", "each", "either", "else",
        "even", "ever", "every", "few", "find", "first", "for", "found", "from", "full", "further",
        "get", "gets", "getting", "give", "go", "goes", "going", "gone", "good", "got", "great",
        "had", "has", "hasn", "have", "haven", "having", "he", "her", "here", "hers", "herself",
        "him", "himself", "his", "how", "however", "i", "if", "in", "inside", "into", "is", "isn",
        "it", "its", "itself", "just", "keep", "know", "last", "least", "less", "let", "like",
        "little", "long", "look", "lot", "made", "make", "makes", "many", "may", "maybe", "me",
        "might", "more", "most", "much", "must", "my", "myself", "need", "never", "new", "next",
        "no", "nor", "not", "nothing", "now", "of", "off", "often", "oh", "ok", "okay", "on",
        "once", "one", "only", "or", "other", "others", "our", "ours", "ourselves", "out", "over",
        "own", "part", "per", "put", "quite", "rather", "re", "really", "right", "said", "same",
        "say", "says", "see", "seem", "she", "should", "shouldn", "show", "since", "so", "some",
        "something", "still", "such", "sure", "take", "talk", "talks", "tell", "than", "thank",
        "thanks", "that", "the", "their", "theirs", "them", "themselves", "then", "there", "these",
        "they", "thing", "things", "think", "this", "those", "though", "through", "thus", "time",
        "to", "today", "together", "too", "two", "under", "until", "up", "upon", "us", "use",
        "used", "very", "via", "want", "was", "wasn", "way", "we", "week", "well", "were", "weren",
        "what", "whatever", "when", "where", "whether", "which", "while", "who", "whom", "whose",
        "why", "will", "with", "within", "without", "won", "would", "wouldn", "year", "years",
        "yes", "yet", "you", "your", "yours", "yourself", "yourselves", "episode", "episodes",
        "podcast", "podcasts", "listen", "listening", "listeners", "subscribe", "host", "hosts",
        "join", "www", "http", "https", "com", "org", "net", "html", "amp", "nbsp",
    }
)  # fmt: skip

_SCRIPT_OR_STYLE = re.compile(r"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_SPACE = re.compile(r"\s+")
# Phrases never span punctuation: "finance. Personal" is not a phrase.
_SEGMENT_BREAK = re.compile(r"[.!?;:,()\[\]{}\"|/\\\n\u201c\u201d\u00ab\u00bb\u2013\u2014]+")
# A word starts with a letter; an apostrophe ends it ("host's" -> "host").
_WORD = re.compile(r"[^\W\d_][^\W_]*")
_PLAIN_WORD = re.compile(r"[^\W_]+")
_NEGATED = re.compile(r"(?:^|\s)-\S+")


def plain_text(text: str) -> str:
    """Visible text of a (possibly HTML) description, on one line."""
    without_code = _SCRIPT_OR_STYLE.sub(" ", text)
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", without_code))).strip()


def _content_words(segment: str) -> list[str | None]:
    """The segment's words in order, with None where a stop word breaks a phrase."""
    words: list[str | None] = []
    for match in _WORD.finditer(segment.lower()):
        word = match.group(0)
        keep = MIN_WORD_LENGTH <= len(word) <= MAX_WORD_LENGTH and word not in STOP_WORDS
        words.append(word if keep else None)
    return words


def count_terms(text: str, *, phrases: bool) -> Counter[str]:
    """Occurrences of each content word, and of each two-word phrase if asked."""
    counts: Counter[str] = Counter()
    visible = _URL.sub(" ", plain_text(text))
    for segment in _SEGMENT_BREAK.split(visible):
        words = _content_words(segment)
        counts.update(w for w in words if w is not None)
        if phrases:
            counts.update(
                f"{first} {second}"
                for first, second in itertools.pairwise(words)
                if first is not None and second is not None
            )
    return counts


def text_terms(*texts: str) -> Counter[str]:
    """Terms of titles and descriptions: words and phrases."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(count_terms(text, phrases=True))
    return counts


def transcript_terms(transcript: str) -> Counter[str]:
    counts = count_terms(transcript, phrases=False)
    return Counter(dict(counts.most_common(TRANSCRIPT_TERM_LIMIT)))


def term_delta(old: Mapping[str, int], new: Mapping[str, int]) -> dict[str, int]:
    """new - old per term, without the terms whose count did not change."""
    delta = {term: count - old.get(term, 0) for term, count in new.items()}
    delta.update({term: -count for term, count in old.items() if term not in new})
    return {term: change for term, change in delta.items() if change}


def add_terms(into: Counter[str], delta: Mapping[str, int]) -> None:
    for term, change in delta.items():
        into[term] += change


def tf_idf(count: int, document_frequency: int, documents: int) -> float:
    """Sublinear term frequency times smoothed inverse document frequency."""
    tf = 1.0 + math.log(count)
    idf = math.log((1 + documents) / (1 + document_frequency)) + 1.0
    return tf * idf


def rank_keywords(
    term_counts: Mapping[str, int],
    document_frequency: Mapping[str, int],
    documents: int,
    limit: int = KEYWORD_LIMIT,
) -> list[Keyword]:
    """The podcast's most characteristic terms, weighted 0..1 (the first is 1).

    A phrase must occur at least twice to count, and the words of a chosen
    phrase are not repeated on their own further down the list.
    """
    scored: list[tuple[float, str]] = []
    for term, count in term_counts.items():
        is_phrase = " " in term
        if count <= 0 or (is_phrase and count < 2):
            continue
        score = tf_idf(count, max(document_frequency.get(term, 1), 1), max(documents, 1))
        scored.append((score * (PHRASE_BOOST if is_phrase else 1.0), term))
    scored.sort(key=lambda item: (-item[0], item[1]))
    chosen: list[tuple[float, str]] = []
    covered: set[str] = set()
    for score, term in scored:
        if term in covered:
            continue
        chosen.append((score, term))
        if " " in term:
            covered.update(term.split(" "))
        if len(chosen) == limit:
            break
    if not chosen:
        return []
    top = chosen[0][0]
    return [Keyword(term, round(score / top, 4)) for score, term in chosen]


def query_words(query: str) -> list[str]:
    """The words of a search query that must match, lower case, in order.

    Negated words ("-crypto") are left to the full-text query, which excludes them.
    """
    positive = _NEGATED.sub(" ", query.lower())
    return _PLAIN_WORD.findall(positive)


def correctable(word: str) -> bool:
    return len(word) >= MIN_CORRECTABLE_LENGTH and word.isalpha() and word not in STOP_WORDS


def spelling_alternatives(similar: Sequence[tuple[str, float]]) -> list[str]:
    """The likely intended spellings among similar words (best first): those
    nearly as close as the closest. "sourdogh" is "sourdough" (0.58), not
    "source" (0.33), though both pass pg_trgm's threshold."""
    if not similar:
        return []
    best = max(score for _, score in similar)
    return [term for term, score in similar if score >= ALTERNATIVE_MARGIN * best]


def fuzzy_tsquery(words: Sequence[str], alternatives: Mapping[str, Iterable[str]]) -> str | None:
    """A to_tsquery() expression: every word, or one of its spelling alternatives.

    None when no word has an alternative (the plain query already says it all).
    Words are runs of letters and digits only, so they need no quoting.
    """
    if not any(alternatives.get(word) for word in words):
        return None
    groups = []
    for word in words:
        options = dict.fromkeys([word, *alternatives.get(word, ())])
        safe = [o for o in options if _PLAIN_WORD.fullmatch(o)]
        groups.append("(" + " | ".join(safe) + ")")
    return " & ".join(groups)
