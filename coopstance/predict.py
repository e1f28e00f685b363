"""`coopstance predict`: tag articles sentence by sentence.

    coopstance predict --model outputs/demo/model seeds/trade_ministers_us_japan_korea.de.txt
    coopstance predict --model outputs/demo/model articles/ --format csv --output tagged.csv
    coopstance predict --model outputs/demo/model 'news/*.jsonl' --format jsonl --backend onnx --keep-going
    cat article.txt | coopstance predict --model outputs/demo/model

Inputs (any number, mixed): plain-text files (one article each, UTF-8), folders (searched recursively for .txt,
.jsonl and .parquet), glob patterns, and `-` for standard input (the default; plain text, or JSONL when it starts
with `{`). JSONL and Parquet files hold articles, `{"id": ..., "text": ..., "lang": optional, ...}` (other fields
are kept as the article's `meta`), or pre-split sentences, `{"article_id": ..., "sentence_id": ..., "text": ...}`,
tagged as given.

Output (stdout, or --output FILE; the format defaults to the file's suffix, else table): one row per sentence and
one summary per article. jsonl: the rows of `coopstance.inference` (field list in its docstring). csv: the same,
flat: topics joined by `;`, one column per topic score and per stance score; on article rows those columns hold the
topic shares and the stance distribution. table: for reading.

Bad input (a missing or undecodable file, a folder without articles, an empty article, a record without text)
stops with one line naming the file or line and exit code 2; with --keep-going the other inputs are still tagged
(the exit code is still 2). A sentence longer than the model takes is truncated, tagged and flagged
(`"truncated": true`), with a warning.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import glob
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from coopstance.inference import BACKENDS, Article, ArticleResult, Tagger

TEXT_SUFFIXES = (".txt", ".text", ".md")
RECORD_SUFFIXES = (".jsonl", ".parquet")
FORMATS = ("jsonl", "csv", "table")
FORMAT_BY_SUFFIX = {".jsonl": "jsonl", ".csv": "csv", ".txt": "table"}
ARTICLE_KEYS = ("id", "text", "lang")
TEXT_ALIASES = ("body", "content", "article", "full_text", "fulltext", "txt", "texte", "text_body")  # for "Did you mean 'text'?"


class InputError(ValueError):
    """One bad input; the message names the file (and line) and the fix."""


# ---------------------------------------------------------------------------------------------------------------
# Inputs -> articles.


def expand_inputs(specs: list[str]) -> tuple[list[str], list[str]]:
    """Files to read (or "-") from files, folders and globs; and one error message per spec that names nothing."""
    files: list[str] = []
    errors: list[str] = []
    for spec in specs:
        path = Path(spec)
        if spec == "-":
            files.append(spec)
        elif path.is_dir():
            found = sorted(
                str(p) for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES + RECORD_SUFFIXES and not p.name.startswith(".")
            )
            if not found:
                errors.append(f"{spec}: no articles in this folder (no {', '.join(TEXT_SUFFIXES + RECORD_SUFFIXES)} files); "
                              "pass text files, JSONL/Parquet files, or a folder that holds them")
            files += found
        elif path.is_file():
            files.append(spec)
        elif glob.has_magic(spec):
            matched = sorted(p for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not matched:
                errors.append(f"{spec}: no file matches this pattern")
            files += matched
        else:
            errors.append(f"{spec}: no such file or folder")
    return files, errors


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{where}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); convert it first, "
            f"e.g. `iconv -f latin1 -t utf-8 {where} > converted.txt`"
        ) from None


def _text_article(text: str, where: str, lang: str | None) -> Article:
    if not text.strip():
        raise InputError(f"{where}: empty article (no text); remove it or write the article into it")
    return Article(id=where, text=text, lang=lang, meta={"source": where})


def _article_from_record(raw: Any, where: str, lang: str | None) -> Article:
    if not isinstance(raw, dict):
        raise InputError(f'{where}: expected a JSON object such as {{"id": "a-1", "text": "..."}}, got {type(raw).__name__}')
    if "text" not in raw:
        keys = [str(k) for k in raw]
        close = [k for k in keys if k.lower() in TEXT_ALIASES] or difflib.get_close_matches("text", keys, n=1, cutoff=0.5)
        hint = f" Did you mean 'text' (found '{close[0]}')?" if close else f" (found fields: {', '.join(map(str, raw)) or 'none'})"
        raise InputError(f'{where}: record has no "text" field; each record needs {{"id": ..., "text": ...}}.{hint}')
    text = raw["text"]
    if not isinstance(text, str) or not text.strip():
        raise InputError(f'{where}: empty "text"; remove the record or fill in the article text')
    article_id = raw.get("id", where)
    record_lang = raw.get("lang") if isinstance(raw.get("lang"), str) else None
    meta = {k: v for k, v in raw.items() if k not in ARTICLE_KEYS}
    return Article(id=str(article_id), text=text, lang=record_lang or lang, meta=meta)


def _records(file: str, data: bytes | None = None) -> Iterator[tuple[str, Any]]:
    """(where, raw record) from a JSONL or Parquet file (or JSONL bytes read from stdin)."""
    if data is None and file.lower().endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(file)
        except Exception as err:  # pyarrow raises several types for a broken file
            raise InputError(f"{file}: not a readable Parquet file ({err})") from None
        row = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for raw in batch.to_pylist():
                row += 1
                yield f"{file}:row {row}", raw
        return
    text = _decode(data if data is not None else Path(file).read_bytes(), file)
    for n, line in enumerate(io.StringIO(text), 1):
        if not line.strip():
            continue
        try:
            yield f"{file}:{n}", json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{file}:{n}: not valid JSON ({err.msg} at column {err.colno}); each line must be one JSON object") from None


def _is_sentence_record(raw: Any) -> bool:
    return isinstance(raw, dict) and "article_id" in raw and "id" not in raw


def read_articles(files: list[str], lang: str | None, on_error: Callable[[InputError], None]) -> Iterator[Article]:
    """Articles from every file, in order; a bad file or record goes to `on_error` (which may raise to stop)."""
    for file in files:
        try:
            if file == "-":
                data = sys.stdin.buffer.read()
                if data.lstrip()[:1] == b"{":
                    yield from _articles_from_records(_records("<stdin>", data), lang, on_error)
                else:
                    yield _text_article(_decode(data, "<stdin>"), "<stdin>", lang)
            elif file.lower().endswith(RECORD_SUFFIXES):
                yield from _articles_from_records(_records(file), lang, on_error)
            else:
                yield _text_article(_decode(Path(file).read_bytes(), file), file, lang)
        except InputError as err:
            on_error(err)
        except OSError as err:
            on_error(InputError(f"{file}: cannot read it ({err.strerror})"))


def _articles_from_records(records: Iterator[tuple[str, Any]], lang: str | None, on_error: Callable[[InputError], None]) -> Iterator[Article]:
    """Article records are yielded as read; pre-split sentence records are grouped by article at the end of the file."""
    sentences: dict[str, list[tuple[Any, str, str]]] = {}
    langs: dict[str, str | None] = {}
    for where, raw in records:
        try:
            if _is_sentence_record(raw):
                text = raw.get("text")
                if not isinstance(text, str) or not text.strip():
                    raise InputError(f'{where}: sentence record without "text"; fill it in or remove the line')
                article_id = str(raw["article_id"])
                sentences.setdefault(article_id, []).append((raw.get("sentence_id", len(sentences.get(article_id, []))), where, text))
                langs.setdefault(article_id, raw.get("lang") if isinstance(raw.get("lang"), str) else lang)
            else:
                yield _article_from_record(raw, where, lang)
        except InputError as err:
            on_error(err)
    for article_id, rows in sentences.items():
        try:
            ordered = sorted(rows, key=lambda row: int(row[0]))
        except (TypeError, ValueError):
            on_error(InputError(f"{rows[0][1]}: sentence_id must be an integer (order within article {article_id!r})"))
            continue
        yield Article(id=article_id, text="", lang=langs[article_id], meta={"source": rows[0][1].rsplit(":", 1)[0]},
                      sentences=[text for _, _, text in ordered])


# ---------------------------------------------------------------------------------------------------------------
# Output.


def csv_columns(tagger: Tagger) -> list[str]:
    return [
        "type", "article_id", "lang", "sentence_index", "start", "end", "text", "topics", "stance", "truncated", "n_sentences", "n_truncated",
        *[f"topic_score/{t}" for t in tagger.schema.topics], *[f"stance_score/{s}" for s in tagger.schema.stances],
    ]


def csv_rows(result: ArticleResult) -> Iterator[dict[str, Any]]:
    for row in result.records():
        flat = {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
        if row["type"] == "sentence":
            flat["topics"] = ";".join(row["topics"])
            flat["truncated"] = str(row["truncated"]).lower()
            flat.update({f"topic_score/{t}": p for t, p in row["topic_scores"].items()})
            flat.update({f"stance_score/{s}": p for s, p in row["stance_scores"].items()})
        else:
            flat["topics"] = ";".join(t for t, share in row["topic_shares"].items() if share > 0)
            distribution = row["stance_distribution"]
            flat["stance"] = max(distribution, key=lambda s: distribution[s]) if row["n_sentences"] else ""
            flat.update({f"topic_score/{t}": p for t, p in row["topic_shares"].items()})
            flat.update({f"stance_score/{s}": p for s, p in distribution.items()})
        yield flat


def table_text(result: ArticleResult) -> str:
    summary = result.summary()
    lines = [f"== {result.article.id} ({result.lang}, {summary['n_sentences']} sentences) =="]
    for i, tags in enumerate(result.sentences):
        flag = " [truncated]" if tags.truncated else ""
        lines.append(f"[{i:>2}] stance={tags.stance:<15} topics={','.join(tags.topics) or '-'}{flag}\n     {tags.text}")
    shares = ", ".join(f"{t} {share:.0%}" for t, share in summary["topic_shares"].items() if share > 0) or "-"
    stances = ", ".join(f"{s} {share:.0%}" for s, share in summary["stance_distribution"].items() if share > 0) or "-"
    lines.append(f"topics: {shares}\nstance: {stances}\n")
    return "\n".join(lines) + "\n"


@contextmanager
def open_output(path: str | None) -> Iterator[IO[str]]:
    """stdout, or a temporary file renamed onto `path` only when everything was written."""
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# The subcommand.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", default=["-"], metavar="INPUT",
                        help="text file, folder, glob, JSONL/Parquet file, or - for standard input (default)")
    parser.add_argument("--model", required=True, help="exported model folder (<run>/model)")
    parser.add_argument("--format", choices=FORMATS, help="output format (default: from the --output suffix, else table)")
    parser.add_argument("--output", help="write here (atomically) instead of standard output")
    parser.add_argument("--lang", help="language of the articles (ISO 639-1) when a record has none; default: detected from the script")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="onnx/onnx-int8 need `coopstance export-onnx` first")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available; torch backend only)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the CPUs available to this process)")
    parser.add_argument("--keep-going", action="store_true", help="report bad inputs and tag the others (exit code still 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no warnings")


class _Stop(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the tagger's own messages only: no load reports or progress bars
    hf_logging.disable_progress_bar()
    output_format = args.format or (FORMAT_BY_SUFFIX.get(Path(args.output).suffix.lower(), "table") if args.output else "table")
    errors: list[str] = []

    def report(message: str) -> None:
        errors.append(message)
        tqdm.write(f"error: {message}", file=sys.stderr)

    def on_error(err: InputError) -> None:
        report(str(err))
        if not args.keep_going:
            raise _Stop

    files, problems = expand_inputs(args.inputs)
    for message in problems:
        report(message)
    if problems and not args.keep_going:
        return 2
    if args.inputs == ["-"] and sys.stdin.isatty():
        report("no input: pass text files, folders, JSONL/Parquet files, or pipe an article into standard input")
        return 2
    try:
        tagger = Tagger(args.model, backend=args.backend, device=args.device, batch_size=args.batch_size, num_threads=args.threads)
    except (FileNotFoundError, ValueError, ImportError) as err:
        report(str(err))
        return 2

    single_text = len(files) == 1 and not files[0].lower().endswith(RECORD_SUFFIXES)
    progress = tqdm(unit=" articles", disable=args.quiet or single_text, file=sys.stderr, mininterval=0.5)
    n_articles = n_sentences = 0
    try:
        with open_output(args.output) as out:
            writer = csv.DictWriter(out, fieldnames=csv_columns(tagger), lineterminator="\n") if output_format == "csv" else None
            if writer:
                writer.writeheader()
            for result in tagger.tag_articles(read_articles(files, args.lang, on_error)):
                n_articles += 1
                n_sentences += len(result.sentences)
                progress.update(1)
                truncated = sum(s.truncated for s in result.sentences)
                if truncated and not args.quiet:
                    tqdm.write(f"warning: {result.article.id}: {truncated} sentence(s) longer than the model's {tagger.max_length} "
                               "tokens were truncated (flagged \"truncated\": true); split them to tag them whole", file=sys.stderr)
                if writer:
                    writer.writerows(csv_rows(result))
                elif output_format == "jsonl":
                    out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in result.records())
                else:
                    out.write(table_text(result))
            if errors and not args.keep_going:
                raise _Stop
    except _Stop:
        return 2
    finally:
        progress.close()
    if args.output and not args.quiet:
        print(f"{n_articles} article(s), {n_sentences} sentence(s) tagged; written to {args.output}", file=sys.stderr)
    return 2 if errors else 0
