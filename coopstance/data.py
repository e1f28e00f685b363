"""Records, loaders, validation and article-level splits.

A record is one sentence: `article_id`, `sentence_id` (order within the article), `lang`, `text`, `topics`
(list of topic ids), `stance` (one stance id). Extra fields are kept in `Record.extra` and ignored by training.
Sources are JSONL, CSV or Parquet files, folders of them, or `hub:<dataset>[:split]`.

Every problem is reported as `file:line: problem. fix`, all of them at once (up to a limit), so that a user
fixing an annotation file sees the whole list in one run.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import json
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coopstance.config import resolve_path
from coopstance.labels import LabelSchema
from coopstance.utils import atomic_write_text

REQUIRED_FIELDS = ("article_id", "sentence_id", "lang", "text", "topics", "stance")
SPLITS = ("train", "dev", "test")
RECORD_SUFFIXES = (".jsonl", ".csv", ".parquet")
HUB_PREFIX = "hub:"
MAX_REPORTED_ERRORS = 30
# Shares of articles that are not listed in the splits file (e.g. a user's own data), assigned by hash.
UNLISTED_DEV_SHARE, UNLISTED_TEST_SHARE = 0.1, 0.1


class DataError(ValueError):
    """Bad records; the message lists each problem with file and line."""


@dataclass
class Record:
    article_id: str
    sentence_id: int
    lang: str
    text: str
    topics: list[str]
    stance: str
    where: str = ""  # "file:line", for error messages
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "article_id": self.article_id, "sentence_id": self.sentence_id, "lang": self.lang, "text": self.text,
            "topics": list(self.topics), "stance": self.stance, **self.extra,
        }


def normalize_text(text: str) -> str:
    """Text key for duplicate detection: NFKC, case-folded, punctuation and spaces removed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(ch for ch in text if ch.isalnum())


def _unknown(kind: str, value: Any, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else f" Valid {kind}s (configs/labels.yaml): {', '.join(choices)}"
    return f"unknown {kind} '{value}'.{hint}"


def parse_record(raw: Any, where: str, schema: LabelSchema) -> tuple[Record | None, list[str]]:
    """Validate one raw record; returns the record or the list of problems (each prefixed with `where`)."""
    if not isinstance(raw, dict):
        return None, [f"{where}: expected a JSON object with fields {', '.join(REQUIRED_FIELDS)}, got {type(raw).__name__}"]
    problems = [f"{where}: missing field '{name}'" for name in REQUIRED_FIELDS if name not in raw]
    if problems:
        return None, problems
    article_id, sentence_id, lang, text = raw["article_id"], raw["sentence_id"], raw["lang"], raw["text"]
    topics, stance = raw["topics"], raw["stance"]
    if isinstance(article_id, int) and not isinstance(article_id, bool):
        article_id = str(article_id)
    if not isinstance(article_id, str) or not article_id.strip():
        problems.append(f"{where}: article_id must be a non-empty string, got {article_id!r}")
    if isinstance(sentence_id, float) and sentence_id.is_integer():
        sentence_id = int(sentence_id)
    if isinstance(sentence_id, str) and sentence_id.strip().isdigit():
        sentence_id = int(sentence_id)
    if not isinstance(sentence_id, int) or isinstance(sentence_id, bool) or sentence_id < 0:
        problems.append(f"{where}: sentence_id must be an integer >= 0 (order within the article), got {sentence_id!r}")
    if not isinstance(lang, str) or not re.fullmatch(r"[a-z]{2}", lang):
        problems.append(f"{where}: lang must be a two-letter ISO 639-1 code such as 'de' or 'ja', got {lang!r}")
    if not isinstance(text, str) or not text.strip():
        problems.append(f"{where}: empty text; remove the line or write the sentence")
    if isinstance(topics, str):  # CSV cells: "a;b" or a JSON list
        try:
            topics = json.loads(topics) if topics.strip().startswith("[") else [t.strip() for t in re.split(r"[;|]", topics) if t.strip()]
        except json.JSONDecodeError:
            topics = None  # reported below
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        problems.append(f"{where}: topics must be a list of topic ids (use [] for none), got {topics!r}")
    else:
        problems += [f"{where}: {_unknown('topic', t, schema.topics)}" for t in topics if t not in schema.topics]
        dupes = sorted(t for t, n in Counter(topics).items() if n > 1)
        if dupes:
            problems.append(f"{where}: topic listed twice: {', '.join(dupes)}")
    if not isinstance(stance, str) or stance not in schema.stances:
        problems.append(f"{where}: {_unknown('stance', stance, schema.stances)}")
    if problems:
        return None, problems
    extra = {k: v for k, v in raw.items() if k not in REQUIRED_FIELDS}
    return Record(article_id, sentence_id, lang, text.strip(), list(topics), stance, where, extra), []


def _iter_raw(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (where, raw record) pairs from one file; unparseable lines come back as an error string."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{n}", json.loads(line)
                except json.JSONDecodeError as err:
                    yield f"{path}:{n}", DataError(f"{path}:{n}: not valid JSON ({err.msg} at column {err.colno}); each line must be one JSON object")
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                yield f"{path}:{reader.line_num}", dict(row)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for n, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"{path}:row {n}", row
    else:
        raise DataError(f"{path}: unsupported file type '{suffix}'; use {', '.join(RECORD_SUFFIXES)}")


def _iter_hub(spec: str) -> Iterator[tuple[str, Any]]:
    from datasets import load_dataset

    name, _, split = spec[len(HUB_PREFIX):].partition(":")
    try:
        dataset = load_dataset(name, split=split or "train")
    except Exception as err:  # network, missing dataset, bad split: all end here
        raise DataError(
            f"{spec}: could not load the dataset '{name}' ({type(err).__name__}: {err}). Without network, export it "
            "to JSONL/CSV/Parquet and list the file in data.sources instead."
        ) from None
    for n, row in enumerate(dataset, 1):
        yield f"{spec}:row {n}", row


def source_files(source: str) -> list[Path]:
    path = resolve_path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in RECORD_SUFFIXES)
        if not files:
            raise DataError(f"{source}: folder has no {'/'.join(RECORD_SUFFIXES)} files")
        return files
    if path.is_file():
        return [path]
    raise DataError(f"{source}: no such file or folder (check data.sources; a hub dataset is written 'hub:<name>')")


def load_records(sources: Iterable[str], schema: LabelSchema) -> list[Record]:
    """Load and validate every record from `sources`; raises one `DataError` listing all problems."""
    records: list[Record] = []
    problems: list[str] = []
    seen: dict[tuple[str, int], str] = {}
    for source in sources:
        streams = [_iter_hub(source)] if source.startswith(HUB_PREFIX) else [_iter_raw(p) for p in source_files(source)]
        for stream in streams:
            for where, raw in stream:
                if isinstance(raw, DataError):
                    problems.append(str(raw))
                    continue
                record, errs = parse_record(raw, where, schema)
                problems += errs
                if record is None:
                    continue
                key = (record.article_id, record.sentence_id)
                if key in seen:
                    problems.append(f"{where}: duplicate (article_id, sentence_id) = {key}, first at {seen[key]}; renumber the sentence")
                    continue
                seen[key] = where
                records.append(record)
    if problems:
        shown = problems[:MAX_REPORTED_ERRORS]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise DataError(f"{len(problems)} problem(s) in the data:\n  " + "\n  ".join(shown) + more)
    if not records:
        raise DataError(f"no records found in {list(sources)}")
    return records


def group_articles(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Article id -> its sentences in reading order."""
    articles: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        articles[r.article_id].append(r)
    return {a: sorted(rs, key=lambda r: r.sentence_id) for a, rs in articles.items()}


# ---------------------------------------------------------------------------------------------------------------
# Splits: by article, recorded in a file so every run and every user evaluates on the same held-out articles.


def load_splits(path: str | Path) -> dict[str, str]:
    """Article id -> split name, from the splits file (`{"train": [...], "dev": [...], "test": [...]}`)."""
    file = resolve_path(path)
    if not file.is_file():
        raise DataError(f"{path}: splits file not found; create it with `python -m coopstance.corpus make-splits --out {path}`")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    unknown = set(raw) - set(SPLITS) - {"comment"}
    if unknown:
        raise DataError(f"{path}: unknown split names {sorted(unknown)}; use {', '.join(SPLITS)}")
    assignment: dict[str, str] = {}
    for split in SPLITS:
        for article_id in raw.get(split, []):
            if article_id in assignment:
                raise DataError(f"{path}: article '{article_id}' is in both '{assignment[article_id]}' and '{split}'")
            assignment[article_id] = split
    return assignment


def hashed_split(article_id: str) -> str:
    """Stable split for an article the splits file does not list (e.g. a user's own data)."""
    value = int(hashlib.sha1(article_id.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    if value < UNLISTED_TEST_SHARE:
        return "test"
    return "dev" if value < UNLISTED_TEST_SHARE + UNLISTED_DEV_SHARE else "train"


def split_records(records: list[Record], assignment: dict[str, str]) -> tuple[dict[str, list[Record]], list[str]]:
    """Split records by article; returns the splits and the ids of articles assigned by hash."""
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    unlisted: set[str] = set()
    for r in records:
        split = assignment.get(r.article_id)
        if split is None:
            unlisted.add(r.article_id)
            split = hashed_split(r.article_id)
        out[split].append(r)
    return out, sorted(unlisted)


def _coverage_gaps(articles: dict[str, list[Record]], ids: list[str], schema: LabelSchema, langs: set[str]) -> list[str]:
    sentences = [r for a in ids for r in articles[a]]
    present = {r.lang for r in sentences} | {t for r in sentences for t in r.topics} | {r.stance for r in sentences}
    return sorted((langs | set(schema.topics) | set(schema.stances)) - present)


def make_splits(
    records: list[Record], schema: LabelSchema, dev_share: float = 0.15, test_share: float = 0.15,
    seed: int = 13, force_test: Iterable[str] = (), max_tries: int = 500, keep: dict[str, str] | None = None,
    new_split: str | None = None,
) -> dict[str, list[str]]:
    """Stratified by language; retries seeds until every language, topic and stance appears in dev and test.

    `keep` (article id -> split) pins articles that already have a split, so that a grown corpus keeps its old test
    articles in test (and every old number comparable); only the new articles are shuffled, in the same shares.
    `new_split` sends every article not in `keep` to that one split instead: a round written to fix the training
    data's class balance goes to train, so that dev and test, and every figure measured on them, stay as they were."""
    if new_split is not None and new_split not in SPLITS:
        raise DataError(f"new_split '{new_split}' is not a split; use one of {', '.join(SPLITS)}")
    articles = group_articles(records)
    by_lang: dict[str, list[str]] = defaultdict(list)
    forced = set(force_test)
    kept = {a: s for a, s in (keep or {}).items() if a in articles and a not in forced}
    for article_id, sentences in sorted(articles.items()):
        if article_id not in forced and article_id not in kept:
            by_lang[Counter(r.lang for r in sentences).most_common(1)[0][0]].append(article_id)
    if new_split is not None:  # nothing left to shuffle: the new articles all go to one split
        kept.update({a: new_split for ids in by_lang.values() for a in ids})
        by_lang.clear()
    langs = {r.lang for r in records}
    for attempt in range(max_tries):
        rng = random.Random(seed + attempt)
        split: dict[str, list[str]] = {"train": [], "dev": [], "test": sorted(forced)}
        for article_id, name in sorted(kept.items()):
            split[name].append(article_id)
        for lang in sorted(by_lang):
            ids = by_lang[lang][:]
            rng.shuffle(ids)
            n_test = max(1, round(len(ids) * test_share)) if len(ids) >= 3 else 0
            n_dev = max(1, round(len(ids) * dev_share)) if len(ids) >= 3 else 0
            split["test"] += ids[:n_test]
            split["dev"] += ids[n_test:n_test + n_dev]
            split["train"] += ids[n_test + n_dev:]
        if not any(_coverage_gaps(articles, split[s], schema, langs) for s in ("dev", "test")):
            return {s: sorted(ids) for s, ids in split.items()}
    raise DataError(
        f"no split in {max_tries} tries puts every language and label in dev and test; add articles for "
        f"{_coverage_gaps(articles, split['test'], schema, langs)}"
    )


def write_splits(splits: dict[str, list[str]], path: str | Path, comment: str) -> None:
    payload = {"comment": comment, **{s: splits[s] for s in SPLITS}}
    atomic_write_text(Path(path), json.dumps(payload, ensure_ascii=False, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Model inputs.


def context_pair(sentences: list[str], index: int, n: int, headline: bool = False) -> str | None:
    """Second segment for sentence `index`: the n sentences before and after it (`before [...] after`), led by the
    article's first sentence when `headline` (`headline [...] before [...] after`) unless that is already among them or is
    the sentence itself; None when there is no context at all (n == 0 and no headline)."""
    if n <= 0 and not headline:
        return None
    parts = []
    if headline and index - max(n, 0) > 0:
        parts.append(sentences[0])
    if n > 0:
        parts += [" ".join(sentences[max(0, index - n):index]), " ".join(sentences[index + 1:index + 1 + n])]
    return " [...] ".join(parts).strip()


def uses_context(context_sentences: int, context_headline: bool) -> bool:
    """Whether the model reads a second segment at all (else sentences go in alone, without a pair)."""
    return context_sentences > 0 or context_headline


def model_inputs(records: list[Record], context_sentences: int, context_headline: bool = False) -> tuple[list[str], list[str | None]]:
    """Texts and their context segments, with context taken from each record's own article."""
    articles = group_articles(records)
    by_article = {a: [r.text for r in rs] for a, rs in articles.items()}
    position = {(a, r.sentence_id): i for a, rs in articles.items() for i, r in enumerate(rs)}
    pairs = [
        context_pair(by_article[r.article_id], position[(r.article_id, r.sentence_id)], context_sentences, context_headline)
        for r in records
    ]
    return [r.text for r in records], pairs


def label_matrix(records: list[Record], schema: LabelSchema) -> tuple[list[list[float]], list[int]]:
    """Multi-hot topic rows and stance indices, in the schema's order."""
    topic_index = {t: i for i, t in enumerate(schema.topics)}
    stance_index = {s: i for i, s in enumerate(schema.stances)}
    topics = []
    for r in records:
        row = [0.0] * schema.num_topics
        for t in r.topics:
            row[topic_index[t]] = 1.0
        topics.append(row)
    return topics, [stance_index[r.stance] for r in records]
