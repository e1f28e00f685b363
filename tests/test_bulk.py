"""`coopstance tag-corpus` and `coopstance summarize` on a small archive made from the corpus (five languages, JSONL
and Parquet, with bad records): output fields and values, the errors table, kill and resume, both engines, summary."""

import contextlib
import io
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from coopstance.bulk import TABLES
from coopstance.cli import main
from coopstance.inference import Article, Tagger

LANGS = ("de", "en", "fr", "ja", "zh")
PER_LANG = 6
SHARD_SIZE = 4
MAX_CHARS = 10_000  # corpus articles have at most ~2,900 characters
N_JSONL_ARTICLES = 20


def corpus_articles() -> list[dict]:
    """PER_LANG articles per language, headline on its own line, with a date, a source and a number."""
    sentences = defaultdict(list)
    for lang in LANGS:
        for line in (REPO / "data" / "corpus" / f"{lang}.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            sentences[(lang, record["article_id"])].append(record)
    articles = []
    for lang in LANGS:
        for i, key in enumerate(sorted(k for k in sentences if k[0] == lang)[:PER_LANG]):
            rows = sorted(sentences[key], key=lambda r: r["sentence_id"])
            joiner = "" if lang in ("ja", "zh") else " "
            articles.append({
                "id": key[1], "text": rows[0]["text"] + "\n" + joiner.join(r["text"] for r in rows[1:]),
                "lang": lang if i % 2 else None,  # half of them detected
                "date": f"2025-0{1 + i % 3}-1{i}", "source": f"outlet-{i % 2}", "words": 100 + i,
            })
    return articles


# (position among the JSONL lines, raw line, article id or None, part of the reason)
BAD_LINES = [
    (3, b"{not json", None, "not valid JSON"),
    (7, b'{"id": "no-text", "txt": "hello"}', "no-text", "Did you mean 'text' (found 'txt')?"),
    (11, b'{"id": "latin1", "text": "Caf\xe9 au lait."}', None, "not UTF-8 (byte 0xe9"),
    (15, json.dumps({"id": "blank", "text": "  \n "}).encode(), "blank", 'empty "text"'),
    (19, json.dumps({"id": "long", "text": "Ein Satz. " * 1500}).encode(), "long", "over the limit of 10,000"),
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("archive")
    articles = corpus_articles()
    lines = [json.dumps(a, ensure_ascii=False).encode() for a in articles[:N_JSONL_ARTICLES]]
    for position, line, _, _ in BAD_LINES:
        lines.insert(position, line)
    (folder / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n\n")  # a trailing blank line is no record
    # Row groups of 3 rows: shards of 4 start and end inside them.
    pq.write_table(pa.Table.from_pylist(articles[N_JSONL_ARTICLES:]), folder / "b.parquet", row_group_size=3)
    (folder / "c.parquet").write_bytes(b"PAR1 but not really")  # an unreadable file: one error row
    return folder


@pytest.fixture(scope="module")
def model(trained_run) -> Path:
    cfg, _ = trained_run
    return cfg.run_dir / "model"


def tag_corpus(model: Path, archive: Path, output: Path, *extra: str) -> tuple[int, str]:
    args = ["tag-corpus", "--model", str(model), "--input", str(archive / "*"), "--output", str(output),
            "--shard-size", str(SHARD_SIZE), "--max-chars", str(MAX_CHARS), "--quiet", *extra]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(args)
    return code, stderr.getvalue()


@pytest.fixture(scope="module")
def local_output(model, archive, tmp_path_factory) -> tuple[Path, str]:
    output = tmp_path_factory.mktemp("tagged") / "local"
    code, log = tag_corpus(model, archive, output)
    assert code == 0, log
    return output, log


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {f"{table}/{f.name}": f.read_bytes() for table in TABLES for f in sorted((folder / table).iterdir())}


def without_nulls(value):
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


def test_rows_are_the_taggers_records_with_the_carried_columns(local_output, model, archive):
    output, log = local_output
    n_records = len(BAD_LINES) + PER_LANG * len(LANGS) + 1
    assert "30 articles tagged" in log and f"{len(BAD_LINES) + 1} bad articles" in log and "11/11 done" in log
    assert len(list((output / "sentences").iterdir())) == -(-(N_JSONL_ARTICLES + len(BAD_LINES)) // SHARD_SIZE) + 3 + 1
    assert pd.read_parquet(output / "articles")["article_id"].tolist() == [a["id"] for a in corpus_articles()]
    assert len(pd.read_parquet(output / "errors")) + 30 == n_records

    # The first Parquet shard holds articles 20..23 of the archive; the Tagger on the same articles, in one stream with
    # the same batch size, gives exactly the same rows.
    articles = corpus_articles()[N_JSONL_ARTICLES:N_JSONL_ARTICLES + SHARD_SIZE]
    carried = ["date", "source", "words"]
    tagger = Tagger(model, batch_size=32)
    results = list(tagger.tag_articles(Article(id=a["id"], text=a["text"], lang=a["lang"]) for a in articles))
    sentence_rows = pq.read_table(output / "sentences" / "part-00001-00000.parquet").to_pylist()
    article_rows = pq.read_table(output / "articles" / "part-00001-00000.parquet").to_pylist()
    expected_sentences, expected_articles = [], []
    for article, result in zip(articles, results):
        *sentences, summary = result.records()
        values = {"date": article["date"], "source": article["source"], "words": str(article["words"])}  # carried as text
        expected_sentences += [{**row, "lang": result.lang, **values} for row in sentences]
        expected_articles.append({**{k: v for k, v in summary.items() if k != "meta"}, **values})
        assert summary["meta"] == {}
    assert list(sentence_rows[0]) == [*results[0].records()[0], "lang", *carried]
    assert list(article_rows[0]) == [*[k for k in results[0].records()[-1] if k != "meta"], *carried]
    assert sentence_rows == expected_sentences
    assert [without_nulls(row) for row in article_rows] == expected_articles
    assert {r["lang"] for r in pd.read_parquet(output / "articles").to_dict("records")} == set(LANGS)  # detected where not given


def test_bad_articles_go_to_the_errors_table_with_their_reason(local_output, archive):
    output, _ = local_output
    errors = pq.read_table(output / "errors").to_pylist()
    expected = [(position + 1, article_id) for position, _, article_id, _ in BAD_LINES] + [(None, None)]
    assert [(e["line"], e["article_id"]) for e in errors] == expected
    for error, (_, _, _, reason) in zip(errors, BAD_LINES):
        assert reason in error["reason"] and error["file"] == str((archive / "a.jsonl").resolve())
    assert errors[-1]["file"] == str((archive / "c.parquet").resolve()) and "not a readable Parquet file" in errors[-1]["reason"]
    assert pq.read_schema(output / "errors" / "part-00001-00000.parquet").names == ["file", "line", "article_id", "reason"]


def test_a_killed_job_resumes_to_identical_output(local_output, model, archive, tmp_path):
    """The job is killed (SIGKILL) in the middle of writing its second shard: two of that shard's three files are in
    place, the third is a temporary file. Nothing of that shard counts as finished; started again, the job skips the
    first shard and writes the same bytes as an uninterrupted run."""
    reference, _ = local_output
    output = tmp_path / "tagged"
    args = ["tag-corpus", "--model", str(model), "--input", str(archive / "*"), "--output", str(output),
            "--shard-size", str(SHARD_SIZE), "--max-chars", str(MAX_CHARS), "--quiet"]
    killer = (
        "import os, signal, sys\n"
        "import coopstance.bulk as bulk\n"
        "from coopstance.cli import main\n"
        "real, calls = bulk._publish, []\n"
        "def publish(tmp, target):\n"
        "    calls.append(target)\n"
        "    if len(calls) == 6:  # shard 2: errors and articles are in place, sentences not yet\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(tmp, target)\n"
        "bulk._publish = publish\n"
        f"sys.exit(main({args!r}))\n"
    )
    killed = subprocess.run([sys.executable, "-c", killer], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr
    assert (output / "errors" / "part-00000-00001.parquet").is_file() and (output / "articles" / "part-00000-00001.parquet").is_file()
    assert not (output / "sentences" / "part-00000-00001.parquet").exists()
    assert [p.name for p in (output / "sentences").iterdir() if p.name.startswith(".")]  # the half-written file
    assert pd.read_parquet(output / "sentences")["article_id"].nunique() == 3  # shard 1 only (one of its 4 is bad)

    code, log = tag_corpus(model, archive, output)
    assert code == 0, log
    assert "10 shards written, 1 already finished" in log
    assert shard_bytes(output) == shard_bytes(reference)
    assert not [p for table in TABLES for p in (output / table).iterdir() if p.name.startswith(".")]


def test_changed_settings_and_foreign_folders_are_refused(local_output, model, archive, tmp_path):
    output, _ = local_output
    code, log = tag_corpus(model, archive, output, "--batch-size", "8")
    assert code == 2 and "batch_size 32 -> 8" in log and "--overwrite" in log
    (tmp_path / "notes.txt").write_text("mine")
    code, log = tag_corpus(model, archive, tmp_path)
    assert code == 2 and "not a tag-corpus output" in log
    code, log = tag_corpus(model, archive / "missing.jsonl", tmp_path / "new")
    assert code == 2 and "no .jsonl or .parquet file matches" in log
    code, log = tag_corpus(tmp_path, archive, tmp_path / "new")
    assert code == 2 and "config.json missing" in log
    with pytest.raises(SystemExit) as help_exit, contextlib.redirect_stdout(io.StringIO()) as shown:
        main(["tag-corpus", "--help"])
    assert help_exit.value.code == 0 and "--engine" in shown.getvalue()


def test_summarize_counts_topics_and_stances_by_language_and_month(local_output, tmp_path):
    output, _ = local_output
    csv_path, plot_path = tmp_path / "summary.csv", tmp_path / "plot.png"
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["summarize", str(output), "--by", "lang,month", "--output", str(csv_path), "--plot", str(plot_path)]) == 0
    summary = pd.read_csv(csv_path)
    sentences = pd.read_parquet(output / "sentences")
    sentences["month"] = sentences["date"].str[:7]
    topics = list(sentences["topic_scores"].iloc[0])
    groups = sentences.groupby(["lang", "month"])
    assert len(summary) == groups.ngroups * (len(topics) + 1)
    everything = summary[summary["topic"] == "(all)"].set_index(["lang", "month"])
    assert everything["sentences"].to_dict() == groups.size().to_dict()
    assert everything["articles"].to_dict() == groups["article_id"].nunique().to_dict()
    tagged = sentences.explode("topics").dropna(subset=["topics"])
    expected = tagged.groupby(["lang", "month", "topics"]).size().to_dict()
    per_topic = summary[summary["topic"] != "(all)"]
    assert {k: v for k, v in per_topic.set_index(["lang", "month", "topic"])["sentences"].to_dict().items() if v} == expected
    stance_columns = [c for c in summary if c.startswith("stance/")]
    assert (summary[stance_columns].sum(axis=1) == summary["sentences"]).all()
    assert everything[[f"stance/{s}" for s in ("none", "confrontational", "neutral", "cooperative")]].sum().sum() == len(sentences)
    assert (summary["share"] == (summary["sentences"] / summary.groupby(["lang", "month"])["sentences"].transform("max")).round(4)).all()
    assert plot_path.stat().st_size > 10_000

    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["summarize", str(output), "--by", "langg"]) == 2
    assert "Did you mean 'lang'?" in err.getvalue()


@pytest.fixture(scope="session")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow  # a local Ray and two actors importing torch: about a minute on 2 shared cores
def test_ray_engine_writes_the_same_bytes_as_the_local_engine(ray_session, local_output, model, archive, tmp_path):
    reference, _ = local_output
    output = tmp_path / "ray"
    code, log = tag_corpus(model, archive, output, "--engine", "ray", "--actors", "2")
    assert code == 0, log
    assert "30 articles tagged" in log and "11/11 done" in log
    assert ray_session.is_initialized()  # the job used the running Ray and left it running
    assert shard_bytes(output) == shard_bytes(reference)
    assert json.loads((output / "_job.json").read_text()) == json.loads((reference / "_job.json").read_text())

