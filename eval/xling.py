"""Cross-lingual transfer: for each corpus language, train without it and evaluate on its test articles, beside
the model trained on all languages on the same sentences. Writes outputs/studies/xling-<config>.md (and .json).

    make xling                                                    # configs/e5-small.yaml on the 2-core CPU budget
    python eval/xling.py --config configs/e5-small.yaml train.epochs=2 model.max_length=64
    python eval/xling.py --config configs/tiny.yaml --languages de,ja train.max_steps=5     # a quick smoke run

Runs go to outputs/studies/runs/xling-<config>/ (all/, without-<lang>/), each with its evaluation report; finished
runs with the same config are reused, so a stopped study continues where it was.
"""

from __future__ import annotations

import argparse
import sys

from coopstance.studies import add_study_arguments, cross_lingual_study, run_study_command, study_from_args


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--languages", help="comma-separated languages to leave out in turn (default: every language of data.sources)")
    add_study_arguments(parser)
    args = parser.parse_args(argv)
    languages = [lang.strip() for lang in args.languages.split(",") if lang.strip()] if args.languages else None
    return run_study_command(lambda: cross_lingual_study(study_from_args("xling", args), languages))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
