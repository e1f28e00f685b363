"""Does context help? Train with data.context_sentences 0, 1 and 2 (same seed, budget and max length), score each
on the test articles, stance accuracy on implicit references, training time and tagging speed.
Writes outputs/studies/ablate-context-<config>.md (and .json).

    make ablate-context                                           # configs/e5-small.yaml on the 2-core CPU budget
    python eval/ablate_context.py --config configs/e5-small.yaml train.epochs=2 model.max_length=256
    python eval/ablate_context.py --config configs/tiny.yaml --contexts 0,1 train.max_steps=5    # a quick smoke run

Keep model.max_length large enough for the context, or it is cut and the comparison says little. With the e5-small
tokenizer on the corpus (measured): context 0 needs 29 tokens (median; 95th percentile 47), context 1 85 (120),
context 2 137 (190); at 256 tokens 0.2% of the context-2 inputs are truncated, at 160 21%.
"""

from __future__ import annotations

import argparse
import sys

from coopstance.studies import add_study_arguments, context_study, run_study_command, study_from_args


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="0,1,2", help="comma-separated values of data.context_sentences (default: %(default)s)")
    parser.add_argument("--speed-repeats", type=int, default=3, help="timed tagging passes per model; the median is reported")
    add_study_arguments(parser)
    args = parser.parse_args(argv)
    contexts = tuple(int(n) for n in args.contexts.split(","))
    return run_study_command(lambda: context_study(study_from_args("ablate-context", args), contexts, args.speed_repeats))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
