"""The usage rollup benchmark's report: how engines' results compare, its table, its verdicts."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

KEYS = ("user_id", "model_id", "unit")
GROUP = ("day", *KEYS)
QUANTILES = ("p50_seconds", "p95_seconds")
# Float sums in another order, and exact quantiles by the same definition, differ by rounding.
EXACT_TOLERANCE = 1e-9
TARGET_EVENTS, TARGET_SECONDS, TARGET_X = 100_000_000, 5.0, 10.0


def compare(reference: pa.Table, other: pa.Table) -> dict[str, Any]:
    """How `other` differs from `reference`, group by group (costs and counts must be equal)."""
    left, right = pl.DataFrame(reference), pl.DataFrame(other)
    joined = left.join(right, on=list(GROUP), how="full", coalesce=True, nulls_equal=True)
    matched = joined.drop_nulls(["events", "events_right"])

    def relative(name: str) -> pl.Expr:
        a, b = pl.col(name), pl.col(f"{name}_right")
        return (a - b).abs() / pl.max_horizontal(a.abs(), b.abs(), pl.lit(1e-12))

    errors = matched.select(
        *(relative(name).max().alias(f"{name}_max_relative") for name in ("quantity", *QUANTILES)),
        *(relative(name).mean().alias(f"{name}_mean_relative") for name in QUANTILES),
    ).fill_null(0.0)

    different = matched.filter(
        (pl.col("cost_micros") != pl.col("cost_micros_right"))
        | (pl.col("events") != pl.col("events_right"))
    )
    figures = {
        "groups": other.num_rows,
        "unmatched_groups": joined.height - matched.height,
        "cost_micros_total": pc.sum(other.column("cost_micros")).as_py(),
        "events_total": pc.sum(other.column("events")).as_py(),
        "groups_with_other_cost_or_count": different.height,
        **errors.row(0, named=True),
    }
    figures["sums_agree"] = (
        figures["unmatched_groups"] == 0
        and different.height == 0
        and figures["quantity_max_relative"] <= EXACT_TOLERANCE
    )
    for name in QUANTILES:  # an engine that leaves them out has no error to show
        if other.column(name).null_count == other.num_rows:
            figures[f"{name}_max_relative"] = figures[f"{name}_mean_relative"] = None
    figures["quantiles_agree"] = all(
        figures[f"{name}_max_relative"] is not None
        and figures[f"{name}_max_relative"] <= EXACT_TOLERANCE
        for name in QUANTILES
    )
    return figures


def summary(
    engine: str,
    quantiles: str,
    runs: list[dict[str, Any]],
    tables: dict[str, pa.Table],
    reference: str | None,
) -> dict[str, Any]:
    """One engine's row: median and best seconds, peak memory, how it compares."""
    row: dict[str, Any] = {"engine": engine, "quantiles": quantiles, "runs": runs}
    row["status"], row["reason"] = runs[-1]["status"], runs[-1].get("reason")
    ok = [run["seconds"] for run in runs if run["status"] == "ok"]
    if ok and reference is not None and engine in tables:
        row["seconds"], row["best_seconds"] = round(statistics.median(ok), 2), round(min(ok), 2)
        row["comparison"] = compare(tables[reference], tables[engine])
    row["peak_rss_mib"] = max((run.get("peak_rss_mib", 0) for run in runs), default=None) or None
    return row


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per size and engine; a failed engine's status stands in for its seconds."""
    lines = [
        "| events | engine | quantiles | seconds (median) | best | peak RSS "
        "| x pandas (median / best) | sums & counts agree | p95 max rel. diff | neighbour cores |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for row in result["rows"]:
            comparison = row.get("comparison", {})
            p95_error = comparison.get("p95_seconds_max_relative")
            seconds = f"{row['seconds']:.2f}" if "seconds" in row else f"**{row['status']}**"
            neighbours = statistics.median(run["neighbour_cores"] for run in row["runs"])
            cells = [
                f"{result['events']:,}",
                row["engine"],
                row["quantiles"],
                seconds,
                f"{row['best_seconds']:.2f}" if "best_seconds" in row else "-",
                f"{row['peak_rss_mib']:,} MiB" if row["peak_rss_mib"] else "-",
                f"{row['x_pandas']}x / {row['x_pandas_best']}x" if "x_pandas" in row else "-",
                {True: "yes", False: "**no**"}.get(comparison.get("sums_agree"), "-"),
                f"{p95_error:.1e}" if p95_error is not None else "-",
                f"{neighbours:.2f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(results: Sequence[dict[str, Any]]) -> list[str]:
    """Each variant's winner at each size, the target against it, why any engine gave no figures.

    The target (100 M events under 5 s, 10x pandas) is judged for both variants: the issue's
    rollup names sums and counts; the usage_daily asset adds p50/p95.
    """
    lines = []
    for result in results:
        rows = {row["engine"]: row for row in result["rows"]}
        for variant, name in result["winners"].items():
            winner = rows.get(name or "")
            line = f"{result['events']:,} events, {variant}: fastest engine whose sums agree: "
            if winner is None:
                lines.append(line + "none")
                continue
            line += f"{winner['engine']}, {winner['seconds']:.2f} s (best {winner['best_seconds']})"
            fast = "met" if winner["seconds"] < TARGET_SECONDS else "NOT met"
            if "x_pandas" in winner:
                ahead = ("met" if winner["x_pandas"] >= TARGET_X else "NOT met") + (
                    f" ({winner['x_pandas']}x; best against best {winner['x_pandas_best']}x)"
                )
            else:
                ahead = "not measured (pandas gave no figures)"
            if result["events"] >= TARGET_EVENTS:
                line += f"; under {TARGET_SECONDS} s: {fast}"
            line += f"; {TARGET_X}x pandas: {ahead}"
            lines.append(line)
        lines += [
            f"  {r['engine']}: {r['status']}: {r['reason']}" for r in rows.values() if r["reason"]
        ]
    return lines
