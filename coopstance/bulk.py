"""`coopstance tag-corpus`: tag a whole news archive into Parquet shards, on one machine or on a Ray cluster.

    coopstance tag-corpus --model outputs/demo/model --input 'archive/*.jsonl' --output tagged/
    coopstance tag-corpus --model outputs/demo/model --input archive/ --output tagged/ --engine ray --actors 8
    coopstance summarize tagged/ --by lang,month --output summary.csv

Input (--input, repeatable): JSONL or Parquet files of articles, as paths, folders (searched recursively) or globs.
One article per line or row: `id`, `text`, optional `lang` (ISO 639-1; else --lang, else detected from the script),
and any other columns (`date`, `source`, ...). Those are carried to every output row of their article as strings
(other values as JSON text, dates in ISO format), so that every shard has one schema; a carried column named like an
output field (say `topics`) is renamed `input_topics`.

Output folder, read it with `pandas.read_parquet("tagged/sentences")` (files starting with "." are skipped):
    sentences/part-FFFFF-SSSSS.parquet  one row per sentence: the fields of `ArticleResult.records()` (type,
                                        article_id, sentence_index, start, end, text, topics, stance, topic_scores,
                                        stance_scores, truncated), then `lang` and the carried columns
    articles/part-FFFFF-SSSSS.parquet   one row per article: the summary fields of `records()` (type, article_id,
                                        lang, n_sentences, n_truncated, topic_shares, stance_distribution,
                                        top_sentence_per_topic), then the carried columns (which are its `meta`)
    errors/part-FFFFF-SSSSS.parquet     one row per bad article: file, line (JSONL line or Parquet row, 1-based),
                                        article_id (when it has one) and reason: not UTF-8, not JSON, no id, no text,
                                        over --max-chars, no sentence, or the tagger's error; a bad article never
                                        stops the job
    _job.json                           the settings and the shard plan

Shards: shard SSSSS of input file FFFFF holds that file's articles SSSSS*shard_size and on. Its three files are written
under temporary names and renamed when complete, and a shard counts as finished only when all three exist, so a
killed job never leaves anything half-written that looks finished. Started again with the same command, the job
skips finished shards and tags the others exactly as it would have (same shards, same batches), so the output is
identical to that of an uninterrupted run. Changed settings (model, inputs, shard size, batch size, ...) are refused,
naming the keys; --overwrite starts afresh.

Engines: `local` tags shard after shard in this process (the Tagger batches sentences sorted by length). `ray` runs a
Ray Data pipeline: the shard plan (one block per shard) -> map_batches on an actor pool with one Tagger per actor,
which reads its shard (a seek into the file) and tags it -> the driver, which writes each shard as it arrives. It
uses `ray.init()`: a local Ray, or the cluster named by RAY_ADDRESS. A shard is read and tagged by the same functions
with the same batches in both engines, so their outputs are byte-identical (a different --batch-size can change the
last digit of a score: padding changes the float sums). On a cluster the actors open the input files and the model
folder: both must be at the same path on every node (a shared filesystem). Needs `pip install -e ".[ray]"`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import glob
import hashlib
import io
import itertools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from coopstance.inference import BACKENDS, ONNX_FILES, Article, ArticleResult, Tagger, available_cpus

ENGINES = ("local", "ray")
TABLES = ("sentences", "articles", "errors")
JOB_FILE = "_job.json"
JOB_FORMAT = "coopstance tag-corpus 1"
RECORD_SUFFIXES = (".jsonl", ".parquet")
ARTICLE_KEYS = ("id", "text", "lang")
# Output fields of the two tables; a carried input column with one of these names gets the prefix below.
SENTENCE_FIELDS = ("type", "article_id", "sentence_index", "start", "end", "text", "topics", "stance", "topic_scores", "stance_scores",
                   "truncated", "lang")
ARTICLE_FIELDS = ("type", "article_id", "lang", "n_sentences", "n_truncated", "topic_shares", "stance_distribution", "top_sentence_per_topic")
CARRIED_PREFIX = "input_"
DEFAULT_SHARD_SIZE = 200
DEFAULT_MAX_CHARS = 100_000


# ---------------------------------------------------------------------------------------------------------------
# The job: input files, shard plan, settings that fix the output.


@dataclass
class Job:
    """Everything that determines the output; `_job.json` holds it, and a restarted job must match it."""

    model: str
    model_config_sha256: str
    backend: str
    batch_size: int
    shard_size: int
    max_chars: int
    lang: str | None
    files: list[dict[str, Any]]  # {"path", "bytes", "records"} in shard-number order
    carried_columns: list[str]  # input column names, in order of first appearance
    shards: list[dict[str, Any]]  # {"name", "file", "first", "count", "line", "offset", "problem"}: see plan_job

    def carried_names(self) -> dict[str, str]:
        """Input column -> output column."""
        taken = set(SENTENCE_FIELDS) | set(ARTICLE_FIELDS)
        return {c: CARRIED_PREFIX + c if c in taken else c for c in self.carried_columns}

    def tagging_settings(self) -> dict[str, Any]:
        """What a worker needs to tag a shard (the plan stays with the driver)."""
        return {"model": self.model, "backend": self.backend, "batch_size": self.batch_size, "max_chars": self.max_chars,
                "lang": self.lang, "carried": self.carried_names()}


def shard_name(file_index: int, chunk: int) -> str:
    return f"part-{file_index:05d}-{chunk:05d}"


def expand_inputs(specs: list[str]) -> tuple[list[str], list[str]]:
    """Absolute paths of the JSONL/Parquet files named by paths, folders and globs (in the order given, each sorted),
    and one error message per spec that names none."""
    files: list[str] = []
    errors: list[str] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in RECORD_SUFFIXES and not p.name.startswith(".")]
            if not found:
                errors.append(f"{spec}: no .jsonl or .parquet files in this folder")
        elif path.is_file():
            found = [path]
            if path.suffix.lower() not in RECORD_SUFFIXES:
                errors.append(f"{spec}: not a JSONL or Parquet file (.jsonl, .parquet); for text files use `coopstance predict`")
                found = []
        elif glob.has_magic(spec):
            found = [Path(p) for p in sorted(glob.glob(spec, recursive=True)) if Path(p).is_file() and Path(p).suffix.lower() in RECORD_SUFFIXES]
            if not found:
                errors.append(f"{spec}: no .jsonl or .parquet file matches this pattern")
        else:
            errors.append(f"{spec}: no such file or folder")
            found = []
        files += [str(p.resolve()) for p in found]
    unique = list(dict.fromkeys(files))
    return unique, errors


def _decode(line: bytes, line_no: int) -> tuple[Any, str | None]:
    try:
        text = line.decode("utf-8-sig" if line_no == 1 else "utf-8")
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1}); convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8`"
    try:
        return json.loads(text), None
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({err.msg} at column {err.colno}); each line must be one JSON object"


def jsonl_records(stream: IO[bytes], line_no: int = 1) -> Iterator[tuple[int, int, Any, str | None]]:
    """(line number, byte offset, raw record, problem) for each non-blank line, from the stream's position on (which
    is line `line_no`). A line that is not UTF-8 or not JSON is a record with a problem."""
    offset = stream.tell()
    for line in stream:
        if line.strip():
            yield (line_no, offset, *_decode(line, line_no))
        offset += len(line)
        line_no += 1


# One decoded row group per process: the shards of a Parquet file share its row groups (pyarrow writes up to a million
# rows in one), so each process decodes a row group once, not once per shard.
_row_group_cache: dict[str, Any] = {}


def parquet_records(path: str, first: int, count: int) -> Iterator[tuple[int, Any]]:
    """(row number, raw record) for rows first .. first+count-1 (0-based), decoding only the row groups that hold them."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    start = 0
    for group in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(group).num_rows
        if start < first + count and start + rows > first:
            key = (path, os.stat(path).st_mtime_ns, group)
            if _row_group_cache.get("key") != key:
                _row_group_cache.clear()  # free the previous row group before decoding the next
                _row_group_cache.update(key=key, table=parquet.read_row_group(group))
            low, high = max(first, start) - start, min(first + count, start + rows) - start
            for i, raw in enumerate(_row_group_cache["table"].slice(low, high - low).to_pylist()):
                yield start + low + i + 1, raw
        start += rows


def is_parquet(path: str) -> bool:
    return path.lower().endswith(".parquet")


def plan_job(files: list[str], model: str, backend: str, batch_size: int, shard_size: int, max_chars: int, lang: str | None) -> Job:
    """Read every file once: count its records, note where each shard starts (line and byte offset, so that a shard
    is read on its own), and collect the carried column names. An unreadable file is one shard with its problem."""
    file_rows: list[dict[str, Any]] = []
    shards: list[dict[str, Any]] = []
    carried: dict[str, None] = {}
    for index, path in enumerate(files):
        starts: list[tuple[int, int | None]] = []  # (line or row number, byte offset) of the first record of each shard
        count, problem, keys = 0, None, {}
        try:
            if is_parquet(path):  # the footer has the row count and the columns
                import pyarrow.parquet as pq

                parquet = pq.ParquetFile(path)
                count = parquet.metadata.num_rows
                starts = [(first + 1, None) for first in range(0, count, shard_size)]
                names = parquet.schema_arrow.names
                keys = dict.fromkeys(k for k in names if k not in ARTICLE_KEYS) if "id" in names and "text" in names else {}
            else:
                with open(path, "rb") as stream:
                    for line, offset, raw, _ in jsonl_records(stream):
                        if count % shard_size == 0:
                            starts.append((line, offset))
                        count += 1
                        if isinstance(raw, dict) and "id" in raw and "text" in raw:  # a record that cannot be an article adds no column
                            keys.update(dict.fromkeys(k for k in raw if k not in ARTICLE_KEYS and isinstance(k, str)))
        except (OSError, ValueError) as err:  # pyarrow's errors for a broken file are OSError or ValueError subclasses
            problem = f"cannot read the file ({err})" if isinstance(err, OSError) else f"not a readable Parquet file ({err})"
            starts, count = [(0, None)], 1
        carried.update(keys)
        file_rows.append({"path": path, "bytes": Path(path).stat().st_size if Path(path).exists() else None, "records": count})
        for chunk, (line, offset) in enumerate(starts):
            first = chunk * shard_size
            shards.append({"name": shard_name(index, chunk), "file": path, "first": first, "count": min(shard_size, count - first),
                           "line": line, "offset": offset, "problem": problem})
    config = Path(model) / "config.json"
    return Job(model=str(Path(model).resolve()), model_config_sha256=hashlib.sha256(config.read_bytes()).hexdigest(), backend=backend,
               batch_size=batch_size, shard_size=shard_size, max_chars=max_chars, lang=lang, files=file_rows,
               carried_columns=list(carried), shards=shards)


def _json_default(value: Any) -> Any:
    """Parquet values that JSON lacks: dates in ISO format, bytes as UTF-8 text, anything else as its str()."""
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def read_shard(shard: dict[str, Any]) -> dict[str, Any]:
    """The shard's records as {"shard", "file", "records": JSON list of [line, raw, problem]}.

    Both engines call this (the Ray engine in its actors) and hand the JSON text to `tag_shard`, so a shard reaches
    the tagger as the same values, Parquet dates included, whichever engine runs."""
    path = shard["file"]
    records: list[tuple[int | None, Any, str | None]] = []
    if shard["problem"]:
        records.append((None, None, shard["problem"]))
    else:
        try:
            if is_parquet(path):
                records = [(row, raw, None) for row, raw in parquet_records(path, shard["first"], shard["count"])]
            else:
                with open(path, "rb") as stream:
                    stream.seek(shard["offset"])
                    lines = itertools.islice(jsonl_records(stream, shard["line"]), shard["count"])
                    records = [(line, raw, problem) for line, _, raw, problem in lines]
        except (OSError, ValueError) as err:
            records.append((None, None, f"cannot read the file any more ({err})"))
        if len(records) < shard["count"]:
            records.append((None, None, f"expected {shard['count']} records from line/row {shard['line']} on, found {len(records)}: the file "
                            "changed after the job was planned; start afresh with --overwrite"))
    return {"shard": shard["name"], "file": path, "records": json.dumps(records, ensure_ascii=False, default=_json_default)}


# ---------------------------------------------------------------------------------------------------------------
# Tagging one shard: records -> articles (or reasons) -> the three tables, as Parquet bytes.


def _hint(wanted: str, raw: dict[str, Any]) -> str:
    close = difflib.get_close_matches(wanted, [str(k) for k in raw], n=1, cutoff=0.5)
    return f" Did you mean '{wanted}' (found '{close[0]}')?" if close else f" (found fields: {', '.join(map(str, raw)) or 'none'})"


def carried_value(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def to_article(raw: Any, settings: dict[str, Any]) -> Article | str:
    """The record as an Article with its carried columns as `meta`, or the reason it cannot be tagged."""
    if not isinstance(raw, dict):
        return f'expected a JSON object such as {{"id": "a-1", "text": "..."}}, got {type(raw).__name__}'
    article_id = raw.get("id")
    if article_id is None or isinstance(article_id, str) and not article_id.strip():
        return f'no "id"; each article needs {{"id": ..., "text": ...}}.{_hint("id", raw) if "id" not in raw else ""}'
    if not isinstance(article_id, (str, int)) or isinstance(article_id, bool):
        return f'"id" must be a string or an integer, got {type(article_id).__name__}'
    if "text" not in raw:
        return f'no "text" field; each article needs {{"id": ..., "text": ...}}.{_hint("text", raw)}'
    text = raw["text"]
    if not isinstance(text, str):
        return f'"text" must be a string, got {type(text).__name__}'
    if not text.strip():
        return 'empty "text"'
    if len(text) > settings["max_chars"]:
        return f"text has {len(text):,} characters, over the limit of {settings['max_chars']:,} (--max-chars); split the article or raise the limit"
    lang = raw.get("lang") if isinstance(raw.get("lang"), str) and raw["lang"].strip() else settings["lang"]
    meta = {name: carried_value(raw.get(column)) for column, name in settings["carried"].items()}
    return Article(id=str(article_id), text=text, lang=lang, meta=meta)


def _tag_all(tagger: Tagger, articles: list[Article], on_article: Callable[[], None]) -> list[ArticleResult | str]:
    """Results in input order; if the tagger fails, it is run article by article so that one article fails alone."""
    results: list[ArticleResult | str] = []
    try:
        for result in tagger.tag_articles(articles):
            results.append(result)
            on_article()
        return results
    except Exception:
        results = []
    for article in articles:
        try:
            results.append(next(tagger.tag_articles([article])))
        except Exception as err:  # a bad article must not stop the job; its reason goes to the errors table
            results.append(f"the tagger failed on this article ({type(err).__name__}: {err})")
    return results


def table_schemas(tagger: Tagger, carried: list[str]) -> dict[str, Any]:
    import pyarrow as pa

    topics = pa.struct([(t, pa.float64()) for t in tagger.schema.topics])
    stances = pa.struct([(s, pa.float64()) for s in tagger.schema.stances])
    top = pa.struct([(t, pa.struct([("sentence_index", pa.int64()), ("score", pa.float64()), ("text", pa.string())])) for t in tagger.schema.topics])
    carried_fields = [(name, pa.string()) for name in carried]
    return {
        "sentences": pa.schema([
            ("type", pa.string()), ("article_id", pa.string()), ("sentence_index", pa.int64()), ("start", pa.int64()), ("end", pa.int64()),
            ("text", pa.string()), ("topics", pa.list_(pa.string())), ("stance", pa.string()), ("topic_scores", topics),
            ("stance_scores", stances), ("truncated", pa.bool_()), ("lang", pa.string()), *carried_fields,
        ]),
        "articles": pa.schema([
            ("type", pa.string()), ("article_id", pa.string()), ("lang", pa.string()), ("n_sentences", pa.int64()), ("n_truncated", pa.int64()),
            ("topic_shares", topics), ("stance_distribution", stances), ("top_sentence_per_topic", top), *carried_fields,
        ]),
        "errors": pa.schema([("file", pa.string()), ("line", pa.int64()), ("article_id", pa.string()), ("reason", pa.string())]),
    }


def tag_shard(tagger: Tagger, payload: dict[str, Any], settings: dict[str, Any], on_article: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """The shard's three tables as Parquet bytes ({"sentences", "articles", "errors"}) and its counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    started_at = time.time()
    file = payload["file"]
    articles: list[Article] = []
    lines: list[int | None] = []
    errors: list[dict[str, Any]] = []
    records = json.loads(payload["records"])
    for line, raw, problem in records:
        article = to_article(raw, settings) if problem is None else problem
        if isinstance(article, str):
            article_id = raw.get("id") if isinstance(raw, dict) else None
            errors.append({"file": file, "line": line, "article_id": None if article_id is None else str(article_id), "reason": article})
        else:
            articles.append(article)
            lines.append(line)
    sentence_rows: list[dict[str, Any]] = []
    article_rows: list[dict[str, Any]] = []
    for article, line, result in zip(articles, lines, _tag_all(tagger, articles, on_article)):
        if isinstance(result, str) or not result.sentences:
            reason = result if isinstance(result, str) else "no sentence found in the text"
            errors.append({"file": file, "line": line, "article_id": article.id, "reason": reason})
            continue
        *sentences, summary = result.records()
        carried = summary.pop("meta")
        sentence_rows += [{**row, "lang": result.lang, **carried} for row in sentences]
        article_rows.append({**summary, **carried})
    errors.sort(key=lambda row: row["line"] or 0)
    schemas = table_schemas(tagger, list(settings["carried"].values()))
    out: dict[str, Any] = {"shard": payload["shard"], "n_records": len(records), "n_articles": len(article_rows),
                           "n_sentences": len(sentence_rows), "n_errors": len(errors)}
    for name, rows in (("sentences", sentence_rows), ("articles", article_rows), ("errors", errors)):
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=schemas[name]), buffer, compression="zstd")
        out[name] = buffer.getvalue()
    out["started_at"], out["finished_at"] = started_at, time.time()  # wall clock, for throughput without start-up costs
    return out


# ---------------------------------------------------------------------------------------------------------------
# Shards on disk.


def shard_finished(out: Path, name: str) -> bool:
    return all((out / table / f"{name}.parquet").is_file() for table in TABLES)


def _publish(tmp: str, target: Path) -> None:
    """The rename that makes one file of a shard visible (a function of its own: the kill test stops the job here)."""
    os.replace(tmp, target)


def write_shard(out: Path, shard: dict[str, Any]) -> None:
    """The three files of a shard, each written under a temporary name (skipped by Parquet readers: it starts
    with ".") and renamed into place; sentences last."""
    mask = os.umask(0)
    os.umask(mask)
    for table in ("errors", "articles", "sentences"):
        folder = out / table
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{shard['shard']}.parquet"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(shard[table])
            os.chmod(tmp, 0o666 & ~mask)
            _publish(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)


def remove_stale_temporaries(out: Path) -> None:
    """Temporary files left by a killed job (never read: their names start with ".")."""
    for table in TABLES:
        for tmp in (out / table).glob(".part-*.tmp"):
            tmp.unlink(missing_ok=True)


def prepare_output(out: Path, job: Job, overwrite: bool) -> str | None:
    """Create or reuse the output folder; the reason it cannot be used, if any."""
    job_file = out / JOB_FILE
    if overwrite:
        import shutil

        for table in TABLES:
            shutil.rmtree(out / table, ignore_errors=True)
        job_file.unlink(missing_ok=True)
    if job_file.is_file():
        previous = json.loads(job_file.read_text(encoding="utf-8"))
        current = {"format": JOB_FORMAT, **asdict(job)}
        changed = [k for k in current if k != "shards" and previous.get(k) != current[k]]
        if changed:
            details = []
            for key in changed:
                if key == "files":
                    before = {f["path"]: f for f in previous.get("files", [])}
                    after = {f["path"]: f for f in job.files}
                    diff = ([f"+{p}" for p in after if p not in before] + [f"-{p}" for p in before if p not in after]
                            + [f"~{p}" for p in after if p in before and before[p] != after[p]])
                    details.append(f"files ({', '.join(diff[:5])}{', ...' if len(diff) > 5 else ''})")
                else:
                    details.append(f"{key} {previous.get(key)!r} -> {current[key]!r}")
            return (f"{job_file}: this folder holds a job with other settings: {'; '.join(details)}. Run the same command to resume "
                    "it, pass another --output, or add --overwrite to delete its shards and start afresh")
    elif out.exists() and any(out.iterdir()):
        return f"{out}: not empty and not a tag-corpus output (no {JOB_FILE}); pass a new or empty folder as --output"
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    if not job_file.is_file():
        from coopstance.utils import atomic_write_json

        atomic_write_json(job_file, {"format": JOB_FORMAT, **asdict(job)})
    return None


# ---------------------------------------------------------------------------------------------------------------
# Engines. Each calls `done(shard)` with the output of `tag_shard` for every pending shard, in any order.


def run_local(job: Job, pending: set[str], done: Callable[[dict[str, Any]], None], progress: Any, threads: int | None,
              device: str | None, on_ready: Callable[[], None]) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar would cut through ours
    tagger = Tagger(job.model, backend=job.backend, device=device, batch_size=job.batch_size, num_threads=threads)
    on_ready()
    settings = job.tagging_settings()
    for planned in job.shards:
        if planned["name"] not in pending:
            continue
        counted = 0

        def count() -> None:
            nonlocal counted
            counted += 1
            progress.update(1)

        shard = tag_shard(tagger, read_shard(planned), settings, on_article=count)
        progress.update(shard["n_records"] - counted)
        done(shard)


class ShardTagger:
    """A Ray Data actor: one Tagger, loaded once; reads and tags one shard per call."""

    def __init__(self, settings: dict[str, Any], threads: int, device: str | None) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # each actor would print a weight-loading bar to the driver
        self.settings = settings
        self.tagger = Tagger(settings["model"], backend=settings["backend"], device=device, batch_size=settings["batch_size"], num_threads=threads)

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        shards = [tag_shard(self.tagger, read_shard(planned), self.settings) for planned in batch.to_pylist()]
        columns: dict[str, Any] = {key: [s[key] for s in shards] for key in shards[0]}
        binary = {table: pa.array(columns.pop(table), pa.large_binary()) for table in TABLES}
        return pa.table({**columns, **binary})


def run_ray(job: Job, pending: set[str], done: Callable[[dict[str, Any]], None], progress: Any, actors: int | None,
            cpus_per_actor: float, gpus_per_actor: float) -> None:
    import ray
    import ray.data

    started = not ray.is_initialized()
    if started:  # RAY_ADDRESS names an existing cluster; without it, a local Ray on this process's CPUs
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=available_cpus(), include_dashboard=False, logging_level=logging.WARNING)
    try:
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts articles
        if actors is None:
            actors = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_actor))
        shards = [s for s in job.shards if s["name"] in pending]
        threads = max(1, int(cpus_per_actor))
        device = "cuda" if gpus_per_actor else "cpu"
        # The dataset is the shard plan, one block per shard, so that the pool hands shards to idle actors one by one
        # (a whole file in one block would go to one actor); each actor reads its shard (a seek) and tags it.
        dataset = (
            ray.data.from_items(shards, override_num_blocks=len(shards))
            .map_batches(ShardTagger, batch_size=1, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
                         fn_constructor_kwargs={"settings": job.tagging_settings(), "threads": threads, "device": device},
                         num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None)
        )
        for shard in dataset.iter_rows():
            progress.update(shard["n_records"])
            done(shard)
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# The subcommand.


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="exported model folder (<run>/model); on a cluster, at this path on every node")
    parser.add_argument("--input", required=True, action="extend", nargs="+", metavar="PATH",
                        help="JSONL/Parquet file, folder or glob (quote it); repeatable")
    parser.add_argument("--output", required=True, help="output folder (created; a folder of an earlier run of the same job is resumed)")
    parser.add_argument("--engine", choices=ENGINES, default="local", help="local: this process; ray: Ray Data on a local Ray or RAY_ADDRESS")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="onnx/onnx-int8 need `coopstance export-onnx` first")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per model call (part of the job: changes the last digits)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="articles per output shard (the unit of resumption)")
    parser.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS, help="longer articles go to the errors table")
    parser.add_argument("--lang", help="language (ISO 639-1) of articles without a lang field; default: detected from the script")
    parser.add_argument("--threads", type=int, help="local engine: CPU threads (default: the CPUs available to this process)")
    parser.add_argument("--device", help="local engine: cpu, cuda, ... (default: cuda if available; torch backend)")
    parser.add_argument("--actors", type=int, help="ray engine: Taggers in the actor pool (default: cluster CPUs / --cpus-per-actor)")
    parser.add_argument("--cpus-per-actor", type=float, default=1, help="ray engine: CPUs (and model threads) per actor")
    parser.add_argument("--gpus-per-actor", type=float, default=0, help="ray engine: GPUs per actor (0: CPU only)")
    parser.add_argument("--overwrite", action="store_true", help="delete the shards of an earlier job in --output and start afresh")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    for option in ("batch_size", "shard_size", "max_chars", "actors", "threads"):
        value = getattr(args, option)
        if value is not None and value < 1:
            return _error(f"--{option.replace('_', '-')} must be at least 1, got {value}")
    files, problems = expand_inputs(args.input)
    if problems:
        for message in problems:
            print(f"error: {message}", file=sys.stderr)
        return 2
    if not (Path(args.model) / "config.json").is_file():
        return _error(f"{args.model}: no exported model here (config.json missing); pass <run folder>/model (`make train` or `make demo` writes it)")
    if args.backend in ONNX_FILES and not (Path(args.model) / ONNX_FILES[args.backend]).is_file():
        flag = " --int8" if args.backend == "onnx-int8" else ""
        return _error(f"{Path(args.model) / ONNX_FILES[args.backend]}: not found; export it first: coopstance export-onnx --model {args.model}{flag}")
    if args.engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            return _error("--engine ray needs Ray: pip install -e \".[ray]\" (or `make install`)")
    out = Path(args.output)
    files = [f for f in files if not Path(f).is_relative_to(out.resolve())]  # never our own shards, with --input archive/ --output archive/tagged
    if not files:
        return _error(f"no input files outside the output folder {out}")
    job = plan_job(files, args.model, args.backend, args.batch_size, args.shard_size, args.max_chars, args.lang)
    problem = prepare_output(out, job, args.overwrite)
    if problem:
        return _error(problem)

    pending = {s["name"] for s in job.shards if not shard_finished(out, s["name"])}
    totals = {"n_articles": 0, "n_sentences": 0, "n_errors": 0, "shards": 0}

    def done(shard: dict[str, Any]) -> None:
        write_shard(out, shard)
        for key in ("n_articles", "n_sentences", "n_errors"):
            totals[key] += shard[key]
        totals["shards"] += 1

    progress = tqdm(total=sum(s["count"] for s in job.shards if s["name"] in pending), unit=" articles", disable=args.quiet,
                    file=sys.stderr, mininterval=0.5, dynamic_ncols=True)
    start = time.perf_counter()
    tagging_start = [start]

    def on_ready() -> None:  # the model is loaded: the rate and the time left count from here
        progress.reset(total=progress.total)
        tagging_start[0] = time.perf_counter()

    try:
        if pending and args.engine == "local":
            run_local(job, pending, done, progress, args.threads, args.device, on_ready)
        elif pending:
            run_ray(job, pending, done, progress, args.actors, args.cpus_per_actor, args.gpus_per_actor)
    except (FileNotFoundError, ValueError, ImportError) as err:  # the Tagger refused the model folder (bad articles never raise)
        progress.close()
        return _error(str(err))
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    tagging_seconds = time.perf_counter() - tagging_start[0]  # local engine: after the model load; ray: with Ray's start
    finished = sum(shard_finished(out, s["name"]) for s in job.shards)
    skipped = len(job.shards) - len(pending)
    per_second = 1 / tagging_seconds if tagging_seconds else 0.0
    rate = f"{totals['n_articles'] * per_second:.1f} articles/s, {totals['n_sentences'] * per_second:.0f} sentences/s"
    print(f"tag-corpus: {totals['n_articles']} articles tagged, {totals['n_sentences']} sentences ({rate}), {totals['n_errors']} bad articles "
          f"-> {out / 'errors'}; {totals['shards']} shards written, {skipped} already finished, {finished}/{len(job.shards)} done in {out}; "
          f"{seconds:.1f} s in all", file=sys.stderr)
    if finished < len(job.shards):
        print(f"error: {len(job.shards) - finished} shard(s) not finished; run the command again to finish them", file=sys.stderr)
        return 1
    return 0
