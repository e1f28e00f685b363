"""k-fold cross-validation grouped by article: mean and standard deviation of the headline figures, so that a
difference between two runs can be read against the noise. Writes outputs/studies/cv-<config>.md (and .json).

    make cv                                                       # 5 folds, configs/e5-small.yaml, 2-core CPU budget
    python eval/cv.py --config configs/e5-small.yaml --folds 5 train.epochs=2 model.max_length=64
    python eval/cv.py --config configs/tiny.yaml --folds 3 train.max_steps=5                     # a quick smoke run

The fold split files are written to outputs/studies/runs/cv-<config>/splits/fold-<k>.json.
"""

from __future__ import annotations

import argparse
import sys

from coopstance.studies import add_study_arguments, cv_study, run_study_command, study_from_args


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5, help="number of folds, at least 2 (default: %(default)s)")
    add_study_arguments(parser)
    args = parser.parse_args(argv)
    if args.folds < 2:
        print(f"error: --folds {args.folds}: cross-validation needs at least 2 folds", file=sys.stderr)
        return 2
    return run_study_command(lambda: cv_study(study_from_args("cv", args), args.folds))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
