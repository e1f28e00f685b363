"""Per-topic and stance scores of an exported model on held-out articles, with a baseline beside it.

    python eval/evaluate.py outputs/tiny/model                      # test split of the project corpus
    python eval/evaluate.py outputs/mbert/model --split dev
    python eval/evaluate.py outputs/mbert/model --sources my_annotations.jsonl --split all
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coopstance.data import DataError
from coopstance.evaluation import evaluate_model, format_slices
from coopstance.metrics import format_report
from coopstance.utils import atomic_write_json


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported model folder (<run>/model)")
    parser.add_argument("--split", default="test", choices=["train", "dev", "test", "all"])
    parser.add_argument("--sources", nargs="+", help="record files/folders (default: those the model was trained on)")
    parser.add_argument("--splits-file", help="split file (default: the one the model was trained with)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="article bootstrap resamples for the 95%% CI")
    parser.add_argument("--no-baseline", action="store_true", help="skip the TF-IDF baseline")
    parser.add_argument("--output", help="JSON report path (default: <run>/eval_<split>.json)")
    args = parser.parse_args(argv)
    try:
        result = evaluate_model(args.model, args.split, args.sources, args.splits_file, args.bootstrap, not args.no_baseline)
    except (FileNotFoundError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(f"{args.model} on {args.split}", result["model_scores"], result.get("baseline_scores")))
    print("\nBy language, and on the hard cases (spurious_topic_rate: share of sentences given a topic gold does not have)")
    print(format_slices(result["model_slices"], result.get("baseline_slices")))
    output = Path(args.output) if args.output else Path(args.model).resolve().parent / f"eval_{args.split}.json"
    atomic_write_json(output, result)
    print(f"\nreport written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
