"""Tag an article: a thin wrapper around `coopstance predict` (kept for `make predict` habits and old scripts).

    python eval/predict.py outputs/demo/model seeds/trade_ministers_us_japan_korea.de.txt
    python eval/predict.py outputs/mbert/model article.txt --output tagged.jsonl
    cat article.txt | python eval/predict.py outputs/mbert/model -

Same as `coopstance predict --model MODEL ARTICLE [--output FILE]`; any other option is passed on
(`coopstance predict --help` lists them).
"""

from __future__ import annotations

import sys

from coopstance.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1].startswith("-"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(["predict", "--model", sys.argv[1], *sys.argv[2:]]))
