"""`coopstance summarize`: counts and shares of topics and stances in a `coopstance tag-corpus` output, by any columns.

    coopstance summarize tagged/ --by lang,month --output summary.csv
    coopstance summarize tagged/ --by source,month --plot topics_by_month.png
    coopstance summarize tagged/                          # totals, printed

--by: columns of the sentence table (`lang`, or a carried input column such as `source`), and periods derived from
the date column (--date-column, default `date`, ISO 8601 text): year, quarter, month, week, day. A missing value or
a date that does not parse is grouped as "(none)". Only finished shards are read (pandas on pyarrow), so a job
that is still running or was killed is summarized as far as it got, with a warning.

Output (CSV or Parquet, by the --output suffix; printed without --output): per group, a row for topic "(all)" (every
sentence of the group), then one row per topic, in label order, zeros included:
    <by columns>        the group
    topic               topic id, or (all)
    sentences           sentences tagged with the topic
    share               sentences / all sentences of the group
    articles            articles with at least one such sentence
    article_share       articles / all articles of the group
    stance/<id>         how many of these sentences have that stance
    stance_share/<id>   the same / sentences
--plot FILE.png draws one small panel per topic: its share of the sentences per period (the period in --by), one line
per value of the other --by columns (the 8 with the most sentences).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from coopstance.bulk import JOB_FILE, shard_finished

PERIODS = ("year", "quarter", "month", "week", "day")
NONE = "(none)"
ALL = "(all)"
MAX_PLOT_LINES = 8


class SummaryError(ValueError):
    """Bad arguments or folder; the message says what to pass instead."""


def finished_sentence_files(folder: Path) -> tuple[list[Path], int]:
    """The sentence files of the finished shards, and the number of shards in the job."""
    job_file = folder / JOB_FILE
    if not job_file.is_file():
        raise SummaryError(f"{folder}: not a tag-corpus output (no {JOB_FILE}); pass the --output folder of `coopstance tag-corpus`")
    shards = [s["name"] for s in json.loads(job_file.read_text(encoding="utf-8"))["shards"]]
    return [folder / "sentences" / f"{name}.parquet" for name in shards if shard_finished(folder, name)], len(shards)


def add_periods(frame: Any, periods: list[str], date_column: str) -> None:
    import pandas as pd

    dates = pd.to_datetime(frame[date_column], errors="coerce", utc=True, format="ISO8601")
    formats = {"year": "%Y", "month": "%Y-%m", "week": "%G-W%V", "day": "%Y-%m-%d"}
    for period in periods:
        if period == "quarter":
            values = dates.dt.year.astype("Int64").astype("string") + "-Q" + dates.dt.quarter.astype("Int64").astype("string")
        else:
            values = dates.dt.strftime(formats[period])
        frame[period] = values.fillna(NONE).astype(str)


def summarize(folder: Path, by: list[str], date_column: str = "date") -> tuple[Any, list[str], list[str]]:
    """The summary table (one row per group and topic, fields in the module docstring), the topics, the stances."""
    import pandas as pd
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    files, n_shards = finished_sentence_files(folder)
    if not files:
        raise SummaryError(f"{folder}: no finished shard yet (0 of {n_shards}); run or resume `coopstance tag-corpus` first")
    if len(files) < n_shards:
        print(f"warning: {folder}: {len(files)} of {n_shards} shards finished; summarizing those", file=sys.stderr)
    schema = pq.read_schema(files[0])
    topics = [f.name for f in schema.field("topic_scores").type]
    stances = [f.name for f in schema.field("stance_scores").type]
    columns = set(schema.names)
    for key in by:
        if key in columns:
            continue
        if key in PERIODS:
            if date_column not in columns:
                raise SummaryError(f"--by {key} needs a date column, and '{date_column}' is not one (columns: {', '.join(schema.names)}); "
                                   "pass --date-column NAME")
            continue
        close = difflib.get_close_matches(key, [*schema.names, *PERIODS], n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise SummaryError(f"--by: unknown column '{key}'.{hint} Columns: {', '.join(schema.names)}; "
                           f"periods from '{date_column}': {', '.join(PERIODS)}")
    periods = [k for k in by if k in PERIODS and k not in columns]
    read = ["article_id", "topics", "stance", *dict.fromkeys(k for k in by if k in columns)]
    if periods:
        read.append(date_column)
    frame = pads.dataset([str(f) for f in files], format="parquet").to_table(columns=list(dict.fromkeys(read))).to_pandas()
    if periods:
        add_periods(frame, periods, date_column)
    keys = list(by) or ["_all"]
    if not by:
        frame["_all"] = ALL
    for key in by:
        frame[key] = frame[key].fillna(NONE).astype(str)

    totals = frame.groupby(keys).agg(group_sentences=("stance", "size"), group_articles=("article_id", "nunique"))
    tagged = frame[[*keys, "article_id", "stance", "topics"]].explode("topics").dropna(subset=["topics"])
    both = pd.concat([frame[[*keys, "article_id", "stance"]].assign(topic=ALL), tagged.drop(columns="topics").assign(topic=tagged["topics"])])
    index = pd.MultiIndex.from_tuples(
        [(*(group if isinstance(group, tuple) else (group,)), topic) for group in totals.index for topic in [ALL, *topics]], names=[*keys, "topic"]
    )
    grouped = both.groupby([*keys, "topic"])
    counts = pd.DataFrame({"sentences": grouped.size(), "articles": grouped["article_id"].nunique()}).reindex(index, fill_value=0)
    by_stance = both.groupby([*keys, "topic", "stance"]).size().unstack("stance", fill_value=0).reindex(index=index, columns=stances, fill_value=0)
    table = counts.join(totals, on=keys).reset_index()
    table["share"] = (table["sentences"] / table["group_sentences"]).round(4)
    table["article_share"] = (table["articles"] / table["group_articles"]).round(4)
    for stance in stances:
        table[f"stance/{stance}"] = by_stance[stance].to_numpy()
    for stance in stances:
        table[f"stance_share/{stance}"] = (table[f"stance/{stance}"] / table["sentences"].where(table["sentences"] > 0)).round(4).fillna(0.0)
    ordered = [*by, "topic", "sentences", "share", "articles", "article_share", *[c for c in table.columns if c.startswith("stance")]]
    return table[ordered], topics, stances


def plot(table: Any, by: list[str], topics: list[str], path: Path) -> None:
    """One panel per topic: share of sentences per period, one line per group of the other --by columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    period = next(k for k in by if k in PERIODS)
    others = [k for k in by if k != period]
    rows = table[table[period] != NONE]
    label = rows[others].astype(str).agg(", ".join, axis=1) if others else None
    rows = rows.assign(series=label if label is not None else "all")
    largest = rows[rows["topic"] == ALL].groupby("series")["sentences"].sum().nlargest(MAX_PLOT_LINES).index
    x_values = sorted(rows[period].unique())
    columns = min(5, len(topics))
    n_rows = -(-len(topics) // columns)
    figure, axes = plt.subplots(n_rows, columns, figsize=(3.2 * columns, 2.6 * n_rows), sharex=True, squeeze=False)
    for ax, topic in zip(axes.flat, topics):
        for series in largest:
            line = rows[(rows["topic"] == topic) & (rows["series"] == series)].set_index(period)["share"].reindex(x_values)
            ax.plot(range(len(x_values)), line.to_numpy(), marker=".", label=series)
        ax.set_title(topic, fontsize=9)
        ax.set_xticks(range(len(x_values)), x_values, rotation=60, fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylim(bottom=0)
    for ax in list(axes.flat)[len(topics):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("share of sentences", fontsize=8)
    if others:
        figure.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center", ncol=min(4, len(largest)), fontsize=8, title=", ".join(others))
    figure.tight_layout(rect=(0, 0.12 if others else 0, 1, 1))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        figure.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        Path(tmp).unlink(missing_ok=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="the --output folder of `coopstance tag-corpus`")
    parser.add_argument("--by", default="", help=f"comma-separated columns to group by: lang, carried input columns, periods ({', '.join(PERIODS)})")
    parser.add_argument("--date-column", default="date", help="the column the periods are derived from (default: date)")
    parser.add_argument("--output", help="write the table here (.csv or .parquet; atomically) instead of printing it")
    parser.add_argument("--plot", help="also draw the share of each topic per period (.png, .pdf or .svg); needs a period in --by")


def run(args: argparse.Namespace) -> int:
    from coopstance.utils import atomic_write_text

    by = [k.strip() for k in args.by.split(",") if k.strip()]
    output = Path(args.output) if args.output else None
    try:
        if output and output.suffix.lower() not in (".csv", ".parquet"):
            raise SummaryError(f"--output {output}: use a .csv or .parquet file name")
        if args.plot and not any(k in PERIODS for k in by):
            raise SummaryError(f"--plot draws topics over time: add a period to --by, e.g. --by {','.join([*by, 'month'])}")
        table, topics, _ = summarize(Path(args.folder), by, args.date_column)
    except SummaryError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if output is None:
        print(table.to_string(index=False))
    elif output.suffix.lower() == ".csv":
        atomic_write_text(output, table.to_csv(index=False))
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
        os.close(fd)
        try:
            table.to_parquet(tmp, index=False)
            os.replace(tmp, output)
        finally:
            Path(tmp).unlink(missing_ok=True)
    if args.plot:
        plot_path = Path(args.plot)
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(table, by, topics, plot_path)
    groups = len(table) // (len(topics) + 1)
    print(f"summarize: {groups} group(s) x {len(topics) + 1} topic rows" + (f" -> {output}" if output else "")
          + (f"; plot -> {args.plot}" if args.plot else ""), file=sys.stderr)
    return 0
