"""The entry scripts as users run them: exit codes, messages, and the offline behaviour of `make train`."""

import json
import os
import shutil
import subprocess
import sys
import time

from conftest import REPO


def run(args, env=None, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def test_train_without_network_stops_fast_with_the_ways_out(tmp_path):
    env = {"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    start = time.time()
    out = run(["train/train.py", "--config", "configs/mbert.yaml", f"train.output_root={tmp_path}"], env)
    elapsed = time.time() - start
    assert out.returncode == 2
    assert elapsed < 30, f"took {elapsed:.1f}s"  # seconds, not a download timeout; loose for loaded CI machines
    assert "Cannot load model 'bert-base-multilingual-cased'" in out.stderr
    assert "make train CONFIG=configs/tiny.yaml" in out.stderr and "model.name_or_path=" in out.stderr
    assert not (tmp_path / "mbert").exists()  # nothing half-made


def test_config_typo_is_reported_with_a_suggestion(tmp_path):
    out = run(["train/train.py", "--config", "configs/tiny.yaml", "train.epoch=1", f"train.output_root={tmp_path}"])
    assert out.returncode == 2
    assert "unknown key 'train.epoch'. Did you mean 'train.epochs'?" in out.stderr
    assert "Traceback" not in out.stderr


def test_help_lists_config_keys():
    out = run(["train/train.py", "--help"])
    assert out.returncode == 0 and "train.overwrite" in out.stdout and "data.context_sentences" in out.stdout


def test_predict_and_evaluate_report_a_missing_model(tmp_path):
    out = run(["eval/predict.py", str(tmp_path / "none"), "seeds/trade_ministers_us_japan_korea.de.txt"])
    assert out.returncode == 2 and "no exported model here" in out.stderr
    out = run(["eval/evaluate.py", str(tmp_path / "none")])
    assert out.returncode == 2 and "no exported model here" in out.stderr
    out = run(["eval/predict.py", str(tmp_path), "missing.txt"])
    assert out.returncode == 2 and "missing.txt: no such file" in out.stderr


def test_predict_and_evaluate_on_a_trained_model(trained_run, tmp_path):
    cfg, _ = trained_run
    model = str(cfg.run_dir / "model")
    out = run(["eval/predict.py", model, "seeds/trade_ministers_us_japan_korea.de.txt", "--output", str(tmp_path / "tags.jsonl")])
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (tmp_path / "tags.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["type"] for r in rows] == ["sentence"] * 12 + ["article"]
    copy = tmp_path / "model"  # evaluate refreshes the model card: never touch the shared run other tests read
    shutil.copytree(model, copy)
    out = run(["eval/evaluate.py", str(copy), "--bootstrap", "20", "--out-dir", str(tmp_path / "report")])
    assert out.returncode == 0, out.stderr
    assert "topic/semiconductors" in out.stdout and "baseline F1" in out.stdout and (tmp_path / "report" / "report.md").is_file()
    assert "lang/de" in out.stdout and "hard_case/other_sense" in out.stdout and "spurious_topic_rate" in out.stdout


def test_make_help_lists_the_targets():
    out = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True)
    for target in ("install", "train", "evaluate", "predict", "demo", "test", "lint", "data-check", "help"):
        assert f"make {target}" in out.stdout


# ---------------------------------------------------------------------------------------------------------------
# `coopstance predict`: inputs, formats, bad input. In-process (`coopstance.cli.main`) for speed; one test runs the
# installed console script and `python -m coopstance` as a user would.

SEED_TXT = REPO / "seeds" / "trade_ministers_us_japan_korea.de.txt"


def predict(capsys, *args, stdin=None, monkeypatch=None):
    from coopstance.cli import main

    if stdin is not None:
        import io

        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(["predict", *args, "--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


def jsonl_rows(text):
    return [json.loads(line) for line in text.splitlines()]


def test_coopstance_console_script_and_module(trained_run):
    cfg, _ = trained_run
    script = os.path.join(os.path.dirname(sys.executable), "coopstance")
    commands = [[script]] if os.path.exists(script) else []
    for command in [*commands, [sys.executable, "-m", "coopstance"]]:
        out = subprocess.run([*command, "predict", "--model", str(cfg.run_dir / "model"), str(SEED_TXT), "--format", "jsonl"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert [r["type"] for r in jsonl_rows(out.stdout)] == ["sentence"] * 12 + ["article"]
    out = subprocess.run([sys.executable, "-m", "coopstance", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "predict" in out.stdout and "export-onnx" in out.stdout


def test_predict_the_seed_article_in_every_format(trained_run, capsys, tmp_path):
    model = str(trained_run[0].run_dir / "model")
    code, out, _ = predict(capsys, "--model", model, str(SEED_TXT), "--format", "jsonl")
    rows = jsonl_rows(out)
    assert code == 0 and len(rows) == 13 and rows[-1]["type"] == "article" and rows[-1]["article_id"] == str(SEED_TXT)
    text = SEED_TXT.read_text(encoding="utf-8")
    assert all(text[r["start"]:r["end"]] == r["text"] for r in rows[:-1])
    code, out, _ = predict(capsys, "--model", model, str(SEED_TXT))  # table by default
    assert code == 0 and out.startswith(f"== {SEED_TXT} (de, 12 sentences) ==") and "[11] stance=" in out and "\nstance: " in out
    code, _, err = predict(capsys, "--model", model, str(SEED_TXT), "--output", str(tmp_path / "seed.csv"))  # format from suffix
    import csv

    table = list(csv.DictReader((tmp_path / "seed.csv").open(encoding="utf-8")))
    assert code == 0 and [r["type"] for r in table] == ["sentence"] * 12 + ["article"]
    assert table[0]["sentence_index"] == "0" and 0 <= float(table[0]["topic_score/semiconductors"]) <= 1
    assert table[-1]["n_sentences"] == "12" and abs(sum(float(table[-1][f"stance_score/{s}"]) for s in ("none", "confrontational", "neutral",
                                                                                                        "cooperative")) - 1) < 1e-3


def test_predict_a_folder_a_glob_a_jsonl_file_a_parquet_file_and_stdin(trained_run, capsys, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = str(trained_run[0].run_dir / "model")
    folder = tmp_path / "articles"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Peking reagiert mit Zöllen. Brüssel prüft.", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("日本は半導体の輸出規制を強化した。中国は反発した。", encoding="utf-8")
    (folder / "notes.pdf").write_bytes(b"%PDF")  # ignored
    articles = [{"id": "x-1", "text": "The U.S. added chip firms to the Entity List. Beijing responded.", "lang": "en", "source": "wire"},
                {"id": "x-2", "text": "La Chine réplique. M. Macron appelle au calme."}]
    jsonl = tmp_path / "articles.jsonl"
    pre_split = [{"article_id": "pre", "sentence_id": 1, "text": "Zweiter Satz."}, {"article_id": "pre", "sentence_id": 0, "text": "Erster."}]
    jsonl.write_text("".join(json.dumps(a) + "\n" for a in articles + pre_split), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(articles), tmp_path / "articles.parquet")

    code, out, _ = predict(capsys, "--model", model, str(folder), str(jsonl), str(tmp_path / "*.parquet"), "--format", "jsonl")
    summaries = [r for r in jsonl_rows(out) if r["type"] == "article"]
    assert code == 0
    assert [s["article_id"] for s in summaries] == [str(folder / "a.txt"), str(folder / "sub" / "b.txt"), "x-1", "x-2", "pre", "x-1", "x-2"]
    assert [s["n_sentences"] for s in summaries] == [2, 2, 2, 2, 2, 2, 2]
    assert summaries[1]["lang"] == "ja" and summaries[3]["lang"] == "fr" and summaries[2]["meta"] == {"source": "wire"}
    pre = [r["text"] for r in jsonl_rows(out) if r["type"] == "sentence" and r["article_id"] == "pre"]
    assert pre == ["Erster.", "Zweiter Satz."]  # pre-split records: kept as given, in sentence_id order

    code, out, _ = predict(capsys, "--model", model, "--format", "jsonl", stdin=b"Ein Satz. Noch einer.", monkeypatch=monkeypatch)
    assert code == 0 and [r["article_id"] for r in jsonl_rows(out)] == ["<stdin>"] * 3
    code, out, _ = predict(capsys, "--model", model, "-", "--format", "jsonl", stdin=jsonl.read_bytes(), monkeypatch=monkeypatch)
    assert code == 0 and len([r for r in jsonl_rows(out) if r["type"] == "article"]) == 3


def test_bad_inputs_are_one_line_errors_with_exit_code_2(trained_run, capsys, tmp_path):
    model = str(trained_run[0].run_dir / "model")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Zölle".encode("latin-1"))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    (empty_dir / "readme.pdf").write_bytes(b"x")
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n ", encoding="utf-8")
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"id": "a", "body": "Text."}\n{"id": "b", "text": "Gut."}\n', encoding="utf-8")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "text": "Gut."}\n{"id": "b", "text": \n', encoding="utf-8")
    cases = [
        ([str(latin1)], f"error: {latin1}: not UTF-8 text (byte 0xf6 at offset 1); convert it first, e.g. `iconv -f latin1 -t utf-8"),
        ([str(empty_dir)], f"error: {empty_dir}: no articles in this folder (no .txt, .text, .md, .jsonl, .parquet files)"),
        ([str(empty)], f"error: {empty}: empty article (no text); remove it or write the article into it"),
        ([str(no_text)], f"error: {no_text}:1: record has no \"text\" field; each record needs {{\"id\": ..., \"text\": ...}}. "
                         "Did you mean 'text' (found 'body')?"),
        ([str(broken)], f"error: {broken}:2: not valid JSON"),
        ([str(tmp_path / "missing.txt")], f"error: {tmp_path / 'missing.txt'}: no such file or folder"),
        ([str(tmp_path / "*.docx")], f"error: {tmp_path / '*.docx'}: no file matches this pattern"),
    ]
    for inputs, message in cases:
        code, out, err = predict(capsys, "--model", model, *inputs, "--format", "jsonl")
        assert code == 2, inputs
        assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err, err

    base_model = tmp_path / "base"
    from transformers import BertConfig

    BertConfig(num_labels=3).save_pretrained(base_model)
    code, _, err = predict(capsys, "--model", str(base_model), str(SEED_TXT))
    assert code == 2 and err.startswith(f"error: {base_model / 'config.json'}: no coopstance label metadata") and err.count("\n") == 1


def test_keep_going_tags_the_good_inputs_and_still_exits_2(trained_run, capsys, tmp_path):
    model = str(trained_run[0].run_dir / "model")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00")
    records = tmp_path / "records.jsonl"
    records.write_text('{"id": "ok-1", "text": "Gut."}\n{"id": "no", "txt": "x"}\n{"id": "ok-2", "text": "Auch gut."}\n', encoding="utf-8")
    output = tmp_path / "out.jsonl"
    code, _, err = predict(capsys, "--model", model, str(bad), str(SEED_TXT), str(records), str(tmp_path / "missing"), "--keep-going",
                           "--output", str(output))
    assert code == 2
    assert [line.split(":")[0] for line in err.splitlines()] == ["error"] * 3
    assert str(bad) in err and f"{records}:2" in err and "missing: no such file or folder" in err
    summaries = [r for r in jsonl_rows(output.read_text(encoding="utf-8")) if r["type"] == "article"]
    assert [s["article_id"] for s in summaries] == [str(SEED_TXT), "ok-1", "ok-2"]
    output.unlink()
    code, _, _ = predict(capsys, "--model", model, str(SEED_TXT), str(bad), "--output", str(output))  # without --keep-going
    assert code == 2 and not output.exists()  # no half-written output


def test_a_sentence_longer_than_the_model_limit_is_truncated_flagged_and_warned(trained_run, capsys, tmp_path):
    from coopstance.cli import main

    long = tmp_path / "long.txt"
    long.write_text("Die Regierung " + "und ihre Partner " * 200 + "beschließen Zölle. Kurz.", encoding="utf-8")
    code = main(["predict", "--model", str(trained_run[0].run_dir / "model"), str(long), "--format", "jsonl"])
    out = capsys.readouterr()
    rows = jsonl_rows(out.out)
    assert code == 0 and [r["truncated"] for r in rows[:-1]] == [True, False] and rows[-1]["n_truncated"] == 1
    assert f"warning: {long}: 1 sentence(s) longer than the model's" in out.err
