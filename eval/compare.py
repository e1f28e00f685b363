"""One side-by-side table of the headline and per-label figures of several evaluation reports.

    python eval/compare.py outputs/tiny/eval/test outputs/e5-small/eval/test
    python eval/compare.py outputs/studies/runs/ablate-context-e5-small/ctx{0,1,2}/eval/test --baseline
    python eval/compare.py A/eval/test B/metrics.json --names tiny e5 --output comparison.md

A REPORT is a report folder written by eval/evaluate.py (or its metrics.json), or a training run's metrics.json
(its test scores). Figures are the model's, with their 95% intervals; --baseline adds each report's baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from coopstance.report import HEADLINE_ROWS
from coopstance.utils import atomic_write_text


class ReportError(ValueError):
    pass


def load_report(path_text: str) -> tuple[str, dict[str, Any], dict[str, Any] | None, str]:
    """(default name, model scores, baseline scores, what was evaluated) of one report."""
    path = Path(path_text)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise ReportError(f"{path_text}: no metrics.json here; pass a report folder (<run>/eval/<name>) or a metrics.json file")
    try:
        metrics = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ReportError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from None
    if "model_scores" in metrics:  # an evaluation report
        run = Path(metrics["model"]).parent.name
        data = f"{metrics['split']} of {', '.join(metrics['sources'])}"
        return f"{run}/{file.parent.name}", metrics["model_scores"], metrics.get("baseline_scores"), data
    if "test" in metrics:  # a training run's metrics.json
        return file.parent.name, metrics["test"], (metrics.get("baseline") or {}).get("test"), "test (training run)"
    raise ReportError(f"{file}: neither an evaluation report (model_scores) nor a training run's metrics.json (test)")


def cell(scores: dict[str, Any] | None, value: float | None, ci: list[float] | None) -> str:
    if scores is None or value is None:
        return "–"
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def compare(reports: list[tuple[str, dict[str, Any], dict[str, Any] | None, str]], with_baseline: bool) -> str:
    header = ["figure"]
    for name, _, _, _ in reports:
        header += [f"`{name}`"] + (["baseline"] if with_baseline else [])
    rows = []

    def add(label: str, get: Any) -> None:
        row = [label]
        for _, model, baseline, _ in reports:
            row.append(cell(model, *get(model)))
            if with_baseline:
                row.append(cell(baseline, *get(baseline)) if baseline else "–")
        if any(c != "–" for c in row[1:]):
            rows.append(row)

    sizes_row = ["sentences / articles"]
    for _, model, _, _ in reports:
        sizes_row += [f"{model['n_sentences']} / {model['n_articles']}"] + ([""] if with_baseline else [])
    rows.append(sizes_row)
    for key, label, _ in HEADLINE_ROWS:
        add(label, lambda s, k=key: (s.get(k), (s.get("ci95") or {}).get(k)))
    for section, prefix in (("topics", "topic F1"), ("stances", "stance F1")):
        labels = list(reports[0][1].get(section, {}))
        for label in labels:
            add(f"{prefix}: `{label}`", lambda s, sec=section, lab=label: ((s.get(sec, {}).get(lab) or {}).get("f1"),
                                                                          (s.get(sec, {}).get(lab) or {}).get("f1_ci95")))
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|", *("| " + " | ".join(r) + " |" for r in rows)]
    data = {d for _, _, _, d in reports if "training run" not in d}  # a training run's test split has no sources to compare
    sizes = {(m["n_sentences"], m["n_articles"]) for _, m, _, _ in reports}
    notes = ["", "Evaluated data: " + "; ".join(f"`{name}`: {d}" for name, _, _, d in reports) + "."]
    if len(data) > 1 or len(sizes) > 1:
        notes.append("**Note:** the reports score different data, so their differences include the change of data, not only of the model.")
    notes.append("95% intervals from an article bootstrap; overlapping intervals mean the difference may be noise (see `make cv`).")
    return "\n".join(lines + notes) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", metavar="REPORT", help="report folders or metrics.json files")
    parser.add_argument("--names", nargs="+", help="column names, one per report (default: <run>/<report folder>)")
    parser.add_argument("--baseline", action="store_true", help="add each report's baseline column")
    parser.add_argument("--output", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    if args.names and len(args.names) != len(args.reports):
        print(f"error: --names has {len(args.names)} names for {len(args.reports)} reports; give one per report", file=sys.stderr)
        return 2
    try:
        reports = [load_report(p) for p in args.reports]
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.names:
        reports = [(name, *rest) for name, (_, *rest) in zip(args.names, reports)]
    text = compare(reports, args.baseline)
    print(text)
    if args.output:
        atomic_write_text(Path(args.output), text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
