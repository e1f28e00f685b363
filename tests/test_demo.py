"""The `make demo` pipeline end to end, timed: slow, so excluded by default (`make test-all` runs it; CI runs
`make demo` itself)."""

import subprocess
import sys
import time

import pytest
from conftest import REPO


@pytest.mark.slow
def test_demo_pipeline_under_five_minutes(tmp_path):
    start = time.time()
    steps = [
        ["train/train.py", "--config", "configs/tiny.yaml", f"train.output_root={tmp_path}", "train.run_name=demo"],
        ["eval/evaluate.py", str(tmp_path / "demo" / "model"), "--bootstrap", "300"],
        ["eval/predict.py", str(tmp_path / "demo" / "model"), "seeds/trade_ministers_us_japan_korea.de.txt",
         "--output", str(tmp_path / "demo" / "seed_tagged.jsonl")],
    ]
    for step in steps:
        out = subprocess.run([sys.executable, *step], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
    assert time.time() - start < 300
    for name in ("model/config.json", "metrics.json", "eval_test.json", "seed_tagged.jsonl"):
        assert (tmp_path / "demo" / name).is_file(), name
