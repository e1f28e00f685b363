"""Score an exported model on held-out articles, with a baseline beside it, and write a report folder.

    python eval/evaluate.py outputs/tiny/model                      # test split of the model's own data
    python eval/evaluate.py outputs/mbert/model --split dev
    python eval/evaluate.py outputs/mbert/model --sources my_annotations.jsonl --split all

Writes <run>/eval/<name>/ (name: the split, or the evaluated file and split): report.md with the plots embedded,
metrics.json and predictions.jsonl. The baseline is trained on the model's own training data, never on the evaluated
data. On the model's own test split the model card (<run>/model/README.md) is refreshed with the new figures.
Exit code 2 for bad input (model folder, data file, split), with the file, line and what to do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coopstance.data import DataError
from coopstance.evaluation import EvaluationError, format_slices, run_evaluation
from coopstance.metrics import format_report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported model folder (<run>/model)")
    parser.add_argument("--split", default="test", choices=["train", "dev", "test", "all"])
    parser.add_argument("--sources", nargs="+", help="record files/folders (default: those the model was trained on)")
    parser.add_argument("--splits-file", help="split file for the evaluated data (default: the one the model was trained with)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="article bootstrap resamples for the 95%% CI (default: %(default)s)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the TF-IDF baseline")
    parser.add_argument("--allow-overlap", action="store_true",
                        help="score evaluated articles whose ids the model was trained or tuned on (the report flags them)")
    parser.add_argument("--backend", default="torch", choices=["torch", "onnx", "onnx-int8"],
                        help="the Tagger's backend (onnx files from `coopstance export-onnx`); the default report folder gets the name as a suffix")
    parser.add_argument("--out-dir", help="report folder (default: <run>/eval/<split> or <run>/eval/<file>-<split>)")
    args = parser.parse_args(argv)
    try:
        evaluation = run_evaluation(args.model, args.split, args.sources, args.splits_file, args.bootstrap, not args.no_baseline,
                                    allow_overlap=args.allow_overlap, backend=args.backend)
    except (FileNotFoundError, DataError, EvaluationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from coopstance.report import report_name, write_report

    metrics = evaluation.metrics
    print(format_report(f"{args.model} on {args.split}", metrics["model_scores"], metrics.get("baseline_scores")))
    print("\nBy language, and on the hard cases (spurious_topic_rate: share of sentences given a topic gold does not have)")
    print(format_slices(metrics["model_slices"], metrics.get("baseline_slices")))
    for warning in metrics["warnings"]:
        print(f"\nwarning: {warning}", file=sys.stderr)
    name = report_name(args.split, args.sources) + ("" if args.backend == "torch" else f"-{args.backend}")
    folder = Path(args.out_dir) if args.out_dir else Path(args.model).resolve().parent / "eval" / name
    print(f"\nreport: {write_report(evaluation, folder)}")
    if evaluation.own_test_split and evaluation.training_splits is not None and args.backend == "torch":
        from coopstance.modelcard import write_model_card

        shown = folder.resolve().relative_to(Path.cwd()) if folder.resolve().is_relative_to(Path.cwd()) else folder
        card = write_model_card(evaluation.info.model_dir, evaluation.training_splits, metrics["model_scores"], metrics.get("baseline_scores"),
                                f"`make evaluate` (the full report: `{shown / 'report.md'}`)")
        print(f"model card refreshed: {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
