"""Tag an article (plain text, one or more paragraphs) with topics and stance, sentence by sentence.

    python eval/predict.py outputs/tiny/model seeds/trade_ministers_us_japan_korea.de.txt
    python eval/predict.py outputs/mbert/model article.txt --output tagged.jsonl
    cat article.txt | python eval/predict.py outputs/mbert/model -
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coopstance.inference import Tagger
from coopstance.utils import atomic_write_jsonl


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported model folder (<run>/model)")
    parser.add_argument("article", help="UTF-8 text file, or - for standard input")
    parser.add_argument("--output", help="write one JSON object per sentence here")
    args = parser.parse_args(argv)
    if args.article != "-" and not Path(args.article).is_file():
        print(f"error: {args.article}: no such file; pass a UTF-8 text file or - for standard input", file=sys.stderr)
        return 2
    text = sys.stdin.read() if args.article == "-" else Path(args.article).read_text(encoding="utf-8")
    try:
        tags = Tagger(args.model).tag_article(text)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for i, tag in enumerate(tags):
        print(f"[{i:>2}] stance={tag.stance:<15} topics={','.join(tag.topics) or '-'}\n     {tag.text}")
    if args.output:
        atomic_write_jsonl(Path(args.output), [{"sentence_id": i, **t.to_dict()} for i, t in enumerate(tags)])
        print(f"\n{len(tags)} tagged sentences written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
