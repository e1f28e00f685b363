"""Inter-annotator agreement: Cohen's kappa per topic and for stance between two annotation passes.

    python -m coopstance.agreement data/agreement/first_pass.jsonl data/agreement/second_pass_*.jsonl

The first file holds the original labels of the sampled sentences, the others the blind second pass
(matched by article_id and sentence_id). Prints a markdown table for data/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from coopstance.labels import DEFAULT_LABELS_FILE, load_schema


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa for two equally long label sequences; 1.0 when both are constant and equal."""
    if len(a) != len(b) or not a:
        raise ValueError("kappa needs two non-empty sequences of equal length")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca.keys() | cb.keys()) / (n * n)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1 - expected)


def read_labels(paths: list[Path]) -> dict[tuple[str, int], dict]:
    rows: dict[tuple[str, int], dict] = {}
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                key = (row["article_id"], int(row["sentence_id"]))
                if key in rows:
                    raise ValueError(f"{path}:{n}: {key} annotated twice")
                rows[key] = row
    return rows


def agreement(first: dict[tuple[str, int], dict], second: dict[tuple[str, int], dict], topics: tuple[str, ...]) -> dict:
    keys = sorted(first)
    missing = [k for k in keys if k not in second]
    if missing:
        raise ValueError(f"the second pass lacks {len(missing)} sentence(s), e.g. {missing[:3]}")
    result = {"n_sentences": len(keys), "topics": {}}
    for t in topics:
        a = [str(t in first[k]["topics"]) for k in keys]
        b = [str(t in second[k]["topics"]) for k in keys]
        result["topics"][t] = {
            "kappa": round(cohen_kappa(a, b), 3),
            "positives_first": a.count("True"), "positives_second": b.count("True"),
            "agreement": round(sum(x == y for x, y in zip(a, b)) / len(keys), 3),
        }
    sa, sb = [first[k]["stance"] for k in keys], [second[k]["stance"] for k in keys]
    result["stance"] = {"kappa": round(cohen_kappa(sa, sb), 3), "agreement": round(sum(x == y for x, y in zip(sa, sb)) / len(keys), 3),
                        "confusion": dict(Counter(f"{x} -> {y}" for x, y in zip(sa, sb) if x != y).most_common())}
    exact = sum(set(first[k]["topics"]) == set(second[k]["topics"]) for k in keys)
    result["topic_sets_identical"] = round(exact / len(keys), 3)
    return result


def markdown(result: dict) -> str:
    lines = ["| label | kappa | raw agreement | positives (pass 1 / pass 2) |", "|---|---:|---:|---:|"]
    for t, r in result["topics"].items():
        lines.append(f"| topic/{t} | {r['kappa']:.2f} | {r['agreement']:.1%} | {r['positives_first']} / {r['positives_second']} |")
    s = result["stance"]
    lines.append(f"| stance (4 classes) | {s['kappa']:.2f} | {s['agreement']:.1%} | |")
    mean = sum(r["kappa"] for r in result["topics"].values()) / len(result["topics"])
    lines.append(f"| mean over topics | {mean:.2f} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coopstance.agreement", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path, nargs="+")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = parser.parse_args(argv)
    schema = load_schema(DEFAULT_LABELS_FILE)
    result = agreement(read_labels([args.first]), read_labels(args.second), schema.topics)
    if args.json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
    else:
        print(markdown(result) + f"\n\n{result['n_sentences']} sentences; identical topic sets: {result['topic_sets_identical']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
