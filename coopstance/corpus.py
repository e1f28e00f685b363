"""Corpus checks, count tables and the article-level split file.

    python -m coopstance.corpus check                 # make data-check: validity + corpus targets + counts
    python -m coopstance.corpus check --no-targets    # validity only (e.g. for your own files)
    python -m coopstance.corpus make-splits           # (re)write data/splits.json, seed article in test
    python -m coopstance.corpus tables                # markdown count tables for data/README.md
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from coopstance.config import DataArgs, resolve_path
from coopstance.data import (
    SPLITS,
    DataError,
    Record,
    group_articles,
    load_records,
    load_splits,
    make_splits,
    normalize_text,
    write_splits,
)
from coopstance.labels import DEFAULT_LABELS_FILE, LabelSchema, load_schema

SEED_DIR = "seeds"
STRESS_DIR = "data/stress"
STRESS_AGREEMENT_DIR = "data/agreement/stress"
NEAR_DUPLICATE_JACCARD = 0.8  # character 5-gram overlap above which two sentences count as near-duplicates
NEAR_DUPLICATE_MIN_CHARS = 25
HARD_CASE_KINDS = ("other_sense", "china_offtopic", "implicit")
HARD_CASE_DISTRACTORS = ("other_sense", "china_offtopic")  # shorter sentences ("Berlin, 3 May") are compared only for exact duplicates


@dataclass(frozen=True)
class Targets:
    """The corpus targets of the annotation issue; `check` fails when one is missed."""

    languages: tuple[str, ...] = ("de", "en", "fr", "ja", "ko", "zh")
    min_articles: int = 350
    min_sentences: int = 6000
    min_articles_per_language: int = 50
    min_topic_positives: int = 500
    min_topic_positives_per_language: int = 150
    min_stance_count: int = 600
    # Real news is mostly explicit: the first corpus (25% without topic) over-represented background sentences.
    min_no_topic_share: float = 0.18
    min_hard_cases: int = 150
    min_genres: int = 12
    # The stress set (data/stress): written blind, never trained on; its agreement study in data/agreement/stress.
    min_stress_articles: int = 40


def _shingles(key: str, n: int = 5) -> set[str]:
    return {key[i:i + n] for i in range(max(1, len(key) - n + 1))}


def duplicate_problems(records: list[Record]) -> list[str]:
    """Exact (normalised) duplicates anywhere, and near-duplicates across articles within a language."""
    problems = []
    first: dict[str, Record] = {}
    for r in records:
        key = normalize_text(r.text)
        if not key:
            problems.append(f"{r.where}: sentence has no letters or digits: {r.text!r}")
        elif key in first:
            problems.append(f"{r.where}: duplicate of {first[key].where} (same text after normalising): {r.text[:60]!r}")
        else:
            first[key] = r
    by_lang: dict[str, list[tuple[Record, set[str]]]] = defaultdict(list)
    for key, r in first.items():
        if len(key) >= NEAR_DUPLICATE_MIN_CHARS:
            by_lang[r.lang].append((r, _shingles(key)))
    for items in by_lang.values():
        for i, (a, sa) in enumerate(items):
            for b, sb in items[i + 1:]:
                if a.article_id == b.article_id:
                    continue
                overlap = len(sa & sb) / len(sa | sb)
                if overlap >= NEAR_DUPLICATE_JACCARD:
                    problems.append(f"{b.where}: near-duplicate of {a.where} ({overlap:.0%} of character 5-grams shared); rewrite one of them")
    return problems


def split_problems(records: list[Record], assignment: dict[str, str], splits_file: str, schema: LabelSchema,
                   seed_articles: set[str]) -> list[str]:
    articles = group_articles(records)
    problems = [f"{splits_file}: article '{a}' has no split; run `python -m coopstance.corpus make-splits`"
                for a in sorted(articles) if a not in assignment]
    problems += [f"{splits_file}: lists '{a}', which is not in the data" for a in sorted(set(assignment) - set(articles))]
    problems += [f"{splits_file}: seed article '{a}' must be in test, not {assignment.get(a)}" for a in sorted(seed_articles)
                 if assignment.get(a) != "test"]
    langs = {r.lang for r in records}
    for split in ("dev", "test"):
        part = [r for r in records if assignment.get(r.article_id) == split]
        present = {r.lang for r in part} | {t for r in part for t in r.topics} | {r.stance for r in part}
        missing = sorted((langs | set(schema.topics) | set(schema.stances)) - present)
        if missing:
            problems.append(f"{splits_file}: the {split} split has no sentence for {', '.join(missing)}; re-split or add articles")
    return problems


def article_problems(records: list[Record]) -> list[str]:
    problems = [f"{r.where}: unknown hard_case '{r.extra['hard_case']}'; use one of {', '.join(HARD_CASE_KINDS)} or omit it"
                for r in records if "hard_case" in r.extra and r.extra["hard_case"] not in HARD_CASE_KINDS]
    for article_id, sentences in group_articles(records).items():
        langs = {r.lang for r in sentences}
        if len(langs) > 1:
            problems.append(f"{sentences[0].where}: article '{article_id}' mixes languages {sorted(langs)}")
        ids = [r.sentence_id for r in sentences]
        if ids != list(range(ids[0], ids[0] + len(ids))):
            problems.append(f"{sentences[0].where}: article '{article_id}' has gaps in sentence_id {ids}; number sentences 0, 1, 2, ...")
    return problems


def target_problems(records: list[Record], schema: LabelSchema, targets: Targets) -> list[str]:
    articles = group_articles(records)
    langs = Counter(rs[0].lang for rs in articles.values())
    topic_counts = Counter(t for r in records for t in r.topics)
    topic_langs = defaultdict(set)
    for r in records:
        for t in r.topics:
            topic_langs[t].add(r.lang)
    stance_counts = Counter(r.stance for r in records)
    no_topic = sum(not r.topics for r in records) / len(records)
    # Implicit references are tracked too, but the target is for topic words in another sense and off-topic China.
    hard = sum(r.extra.get("hard_case") in HARD_CASE_DISTRACTORS for r in records)
    checks = [
        (len(articles) >= targets.min_articles, f"articles: {len(articles)} (target >= {targets.min_articles})"),
        (len(records) >= targets.min_sentences, f"sentences: {len(records)} (target >= {targets.min_sentences})"),
        (no_topic >= targets.min_no_topic_share, f"share without topic: {no_topic:.1%} (target >= {targets.min_no_topic_share:.0%})"),
        (hard >= targets.min_hard_cases, f"distractor sentences (other_sense + china_offtopic): {hard} (target >= {targets.min_hard_cases})"),
    ]
    for lang in targets.languages:
        checks.append((langs[lang] >= targets.min_articles_per_language,
                       f"articles in '{lang}': {langs[lang]} (target >= {targets.min_articles_per_language})"))
    topic_lang_counts = Counter((t, r.lang) for r in records for t in r.topics)
    for t in schema.topics:
        missing = sorted(set(targets.languages) - topic_langs[t])
        checks.append((topic_counts[t] >= targets.min_topic_positives and not missing,
                       f"topic {t}: {topic_counts[t]} positives (target >= {targets.min_topic_positives})"
                       + (f", missing in {missing}" if missing else ", in every language")))
        fewest = min(targets.languages, key=lambda lang: topic_lang_counts[t, lang])
        checks.append((topic_lang_counts[t, fewest] >= targets.min_topic_positives_per_language,
                       f"topic {t} per language: fewest {topic_lang_counts[t, fewest]} in '{fewest}' "
                       f"(target >= {targets.min_topic_positives_per_language} in each)"))
    genres = {rs[0].extra.get("genre") for rs in articles.values()} - {None}
    checks.append((len(genres) >= targets.min_genres, f"genres: {len(genres)} (target >= {targets.min_genres})"))
    for s in schema.stances:
        checks.append((stance_counts[s] >= targets.min_stance_count,
                       f"stance {s}: {stance_counts[s]} (target >= {targets.min_stance_count})"))
    for ok, line in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {line}")
    return [f"corpus target missed: {line}" for ok, line in checks if not ok]


def count_tables(records: list[Record], assignment: dict[str, str], schema: LabelSchema, markdown: bool = False) -> str:
    """Label x language and label x split counts (sentences), plus article counts."""
    langs = sorted({r.lang for r in records})
    columns = langs + list(SPLITS) + ["total"]
    rows: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        split = assignment.get(r.article_id, "?")
        for name in ["sentences"] + [f"topic/{t}" for t in r.topics] + ["(no topic)" if not r.topics else None] + [f"stance/{r.stance}"]:
            if name:
                rows[name].update([r.lang, split, "total"])
                if "hard_case" in r.extra and name == "sentences":
                    rows[f"hard_case/{r.extra['hard_case']}"].update([r.lang, split, "total"])
    for rs in group_articles(records).values():
        rows["articles"].update([rs[0].lang, assignment.get(rs[0].article_id, "?"), "total"])
    order = ["articles", "sentences", "(no topic)", *(f"hard_case/{k}" for k in HARD_CASE_KINDS)]
    order += [f"topic/{t}" for t in schema.topics] + [f"stance/{s}" for s in schema.stances]
    if markdown:
        lines = ["| label | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        lines += [f"| {name} | " + " | ".join(str(rows[name][c]) for c in columns) + " |" for name in order]
    else:
        lines = [f"{'':<34}" + "".join(f"{c:>7}" for c in columns)]
        lines += [f"{name:<34}" + "".join(f"{rows[name][c]:>7}" for c in columns) for name in order]
    return "\n".join(lines)


def stress_problems(stress_dir: Path, corpus: list[Record], schema: LabelSchema, targets: Targets) -> list[str]:
    """The stress set is valid, large enough, disjoint from the corpus, and has its two blind passes and adjudication."""
    if not stress_dir.is_dir():
        return [f"{stress_dir}: the stress set is missing"]
    try:
        stress = load_records([str(stress_dir)], schema)
    except DataError as err:
        return [f"stress set: {err}"]
    articles = group_articles(stress)
    problems = duplicate_problems(stress) + article_problems(stress)
    problems += [f"stress set: article '{a}' is also in the corpus; stress articles must never be trained on"
                 for a in sorted(set(articles) & {r.article_id for r in corpus})]
    langs = {r.lang for r in stress}
    checks = [(len(articles) >= targets.min_stress_articles, f"stress articles: {len(articles)} (target >= {targets.min_stress_articles})"),
              (set(targets.languages) <= langs, f"stress languages: {', '.join(sorted(langs))}")]
    agreement_dir = resolve_path(STRESS_AGREEMENT_DIR)
    for name in ("pass_A.jsonl", "pass_B.jsonl", "adjudication.jsonl"):
        checks.append(((agreement_dir / name).is_file(), f"stress agreement file {agreement_dir / name}"))
    print(f"\nStress set ({len(stress)} sentences):")
    for ok, line in checks:
        print(f"  [{'ok' if ok else 'MISSED'}] {line}")
    return problems + [f"stress set target missed: {line}" for ok, line in checks if not ok]


def seed_article_ids(schema: LabelSchema) -> set[str]:
    seed_dir = resolve_path(SEED_DIR)
    if not seed_dir.is_dir() or not any(seed_dir.glob("*.jsonl")):
        return set()
    return {r.article_id for r in load_records([str(seed_dir)], schema)}


def run_check(sources: list[str], splits_file: str, labels_file: str, targets: Targets | None) -> int:
    schema = load_schema(labels_file)
    try:
        records = load_records(sources, schema)
        assignment = load_splits(splits_file)
    except DataError as err:
        print(f"data-check FAILED\n{err}", file=sys.stderr)
        return 1
    problems = duplicate_problems(records) + article_problems(records)
    problems += split_problems(records, assignment, splits_file, schema, seed_article_ids(schema))
    print(count_tables(records, assignment, schema))
    if targets is not None:
        print("\nCorpus targets:")
        problems += target_problems(records, schema, targets)
        problems += stress_problems(resolve_path(STRESS_DIR), records, schema, targets)
    if problems:
        print(f"\ndata-check FAILED: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    print(f"\ndata-check passed: {len(records)} sentences, {len(group_articles(records))} articles")
    return 0


def main(argv: list[str] | None = None) -> int:
    defaults = DataArgs()
    parser = argparse.ArgumentParser(prog="python -m coopstance.corpus", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["check", "make-splits", "tables"])
    parser.add_argument("--sources", nargs="+", default=defaults.sources, help="folders/files with records")
    parser.add_argument("--splits", default=defaults.splits_file, help="the split file to check or write")
    parser.add_argument("--labels", default=str(DEFAULT_LABELS_FILE), help="label schema")
    parser.add_argument("--no-targets", action="store_true", help="check validity only, not the corpus size targets")
    parser.add_argument("--seed", type=int, default=13, help="make-splits: shuffling seed")
    parser.add_argument("--extend", action="store_true",
                        help="make-splits: keep the split of every article already in --splits; split only the new ones")
    parser.add_argument("--new-to", choices=SPLITS, default=None,
                        help="make-splits --extend: put every new article in this split instead of splitting them 70/15/15")
    args = parser.parse_args(argv)
    if args.new_to and not args.extend:
        parser.error("--new-to needs --extend (without it every article is split afresh)")
    if args.command == "check":
        return run_check(args.sources, args.splits, args.labels, None if args.no_targets else Targets())
    schema = load_schema(args.labels)
    records = load_records(args.sources, schema)
    if args.command == "tables":
        print(count_tables(records, load_splits(args.splits), schema, markdown=True))
        return 0
    seeds = seed_article_ids(schema)
    keep = load_splits(args.splits) if args.extend else None
    splits = make_splits(records, schema, seed=args.seed, force_test=seeds, keep=keep, new_split=args.new_to)
    how = f"make-splits --seed {args.seed}" + (" --extend" if args.extend else "") + (f" --new-to {args.new_to}" if args.new_to else "")
    kept_note = "; articles of the earlier split file kept where they were" if args.extend else ""
    new_note = f"; the articles new in this round all in {args.new_to}" if args.new_to else ""
    comment = (f"Article-level splits (15% dev, 15% test per language; seed article(s) forced into test"
               f"{kept_note}{new_note}), written by "
               f"`python -m coopstance.corpus {how}`. Do not edit by hand: every reported number depends on it.")
    write_splits(splits, Path(resolve_path(args.splits, must_exist=False)), comment)
    print(f"wrote {args.splits}: " + ", ".join(f"{s} {len(splits[s])} articles" for s in SPLITS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
