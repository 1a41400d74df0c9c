"""Usage rollup: synthetic usage events rolled up per day x user x model x unit, by engine.

    python bench/usage_rollup.py [--events 10M 100M] [--cache-dir /tmp/goshen-bench/usage-rollup]
                                 [--engines duckdb duckdb-sums polars ...] [--repeats 3]
                                 [--threads 2] [--memory-limit-gib 16] [--out figures.json]

Events (bench/usage_events.py) have UsageEvent's columns but `id`: thousands of Zipf-drawn users,
tens of models, integer micro-credit costs, 30 days in time order, 1 M-row row groups; written a
chunk at a time and cached under --cache-dir. Every engine runs twice over: with p50/p95 of run
seconds (what the usage_daily asset computes) and, as "-sums", sums and counts only (what the
issue's bench names); each variant is ranked and held against pandas' of the same work. Every
engine derives the day the same cheap way (epoch microseconds // a day's). Each runs in a fresh
process with its threads capped and its address space capped (--memory-limit-gib, and never more
than the memory free less 2 GiB), so an engine that does not fit fails alone. Timed: read the
Parquet, group, hold the result in memory (imports come before the clock). Peak memory: the
child's own high-water RSS. Every engine's groups are then compared with the first engine's
(bench/usage_rollup_report.py): costs and counts exactly, float quantity sums and exact quantiles
to 1e-9, approximate quantiles by their error.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from usage_events import ensure_events
from usage_rollup_report import GROUP, KEYS, QUANTILES, markdown_table, summary, verdicts

RESULT_SCHEMA = pa.schema(
    [("day", pa.date32())]
    + [(key, pa.string()) for key in KEYS]
    + [("quantity", pa.float64()), ("cost_micros", pa.int64()), ("events", pa.int64())]
    + [(name, pa.float64()) for name in QUANTILES]
)
CACHE_DIR = Path(tempfile.gettempdir()) / "goshen-bench" / "usage-rollup"


US_PER_DAY = 86_400_000_000  # the day as whole days since 1970: integer division, no calendar


def rollup_duckdb(path: Path, threads: int, quantile: str | None = "quantile_cont") -> pa.Table:
    """DuckDB SQL over the file; `quantile` is the aggregate for p50 and p95 (None: leave out).

    The day is epoch microseconds // a day's (a third faster than CAST(created_at AS DATE) at
    10 M); insertion order need not be kept, since nothing here depends on the groups' order.
    """
    import duckdb

    quantiles = f", {quantile}(seconds, [0.5, 0.95]) AS q" if quantile else ""
    config = {"threads": threads, "preserve_insertion_order": False}
    with duckdb.connect(config=config) as con:
        return con.sql(
            f"""
            SELECT epoch_us(created_at) // {US_PER_DAY} AS day, user_id, model_id, unit,
                   sum(quantity) AS quantity, CAST(sum(cost_micros) AS BIGINT) AS cost_micros,
                   count(*) AS events{quantiles}
            FROM read_parquet(?) GROUP BY ALL
            """,  # noqa: S608 - the aggregate is one of ENGINES' constants
            params=[str(path)],
        ).to_arrow_table()


def rollup_polars(path: Path, threads: int, quantiles: bool = True) -> pl.DataFrame:
    """Polars' lazy scan on its streaming engine; exact quantiles (linear, as quantile_cont)."""
    seconds = pl.col("seconds")
    extra = [
        seconds.quantile(0.5, "linear").alias("p50_seconds"),
        seconds.quantile(0.95, "linear").alias("p95_seconds"),
    ]
    day = (pl.col("created_at").dt.epoch("us") // US_PER_DAY).alias("day")
    return (
        pl.scan_parquet(path)
        .group_by(day, *KEYS)
        .agg(
            pl.col("quantity").sum(),
            pl.col("cost_micros").sum(),
            pl.len().alias("events"),
            *(extra if quantiles else []),
        )
        .collect(engine="streaming")
    )


def rollup_pandas(path: Path, threads: int, quantiles: bool = True) -> Any:
    """pandas as it is usually written well: keys read as categoricals, groupby(observed=True).

    The day comes the same cheap way as in the other engines: epoch microseconds // a day's.
    """
    import pandas as pd  # type: ignore[import-untyped]

    columns = ["created_at", *KEYS, "quantity", "cost_micros"] + (["seconds"] if quantiles else [])
    frame = pd.read_parquet(path, columns=columns, read_dictionary=list(KEYS))
    frame["day"] = frame.pop("created_at").dt.as_unit("us").array.asi8 // US_PER_DAY
    grouped = frame.groupby(list(GROUP), observed=True, sort=False)
    result = grouped.agg(
        quantity=("quantity", "sum"),
        cost_micros=("cost_micros", "sum"),
        events=("cost_micros", "size"),
    )
    if quantiles:
        result["p50_seconds"] = grouped["seconds"].quantile(0.5)
        result["p95_seconds"] = grouped["seconds"].quantile(0.95)
    return result.reset_index()


def rollup_pandas_naive(path: Path, threads: int, quantiles: bool = True) -> Any:
    """pandas as first written: read_parquet and groupby on the raw columns, the day by dt.floor."""
    import pandas as pd

    columns = ["created_at", *KEYS, "quantity", "cost_micros"] + (["seconds"] if quantiles else [])
    frame = pd.read_parquet(path, columns=columns)
    frame["day"] = frame.pop("created_at").dt.floor("D")
    grouped = frame.groupby(list(GROUP))
    result = grouped.agg(
        quantity=("quantity", "sum"),
        cost_micros=("cost_micros", "sum"),
        events=("cost_micros", "size"),
    )
    if quantiles:
        result["p50_seconds"] = grouped["seconds"].quantile(0.5)
        result["p95_seconds"] = grouped["seconds"].quantile(0.95)
    return result.reset_index()


SUMS = "none (sums and counts only)"
# Name: (rollup, its quantiles). Every engine in two variants: with p50/p95 (what the usage_daily
# asset computes) and "-sums", sums and counts only (what the bench names).
ENGINES: dict[str, tuple[Callable[[Path, int], Any], str]] = {
    "duckdb": (rollup_duckdb, "exact (quantile_cont)"),
    "duckdb-sums": (lambda p, t: rollup_duckdb(p, t, None), SUMS),
    "polars": (rollup_polars, "exact (quantile, linear)"),
    "polars-sums": (lambda p, t: rollup_polars(p, t, quantiles=False), SUMS),
    "pandas": (rollup_pandas, "exact (groupby quantile, linear)"),
    "pandas-sums": (lambda p, t: rollup_pandas(p, t, quantiles=False), SUMS),
    "pandas-naive": (rollup_pandas_naive, "exact (groupby quantile, linear)"),
    "pandas-naive-sums": (lambda p, t: rollup_pandas_naive(p, t, quantiles=False), SUMS),
    # Not run unless named: 1.5x slower than exact with these many small groups, and off by 70 %.
    "duckdb-approx": (lambda p, t: rollup_duckdb(p, t, "approx_quantile"), "t-digest (approx)"),
}
DEFAULT_ENGINES = [name for name in ENGINES if name != "duckdb-approx"]


def normalise(result: Any) -> pa.Table:
    """Any engine's result as one Arrow table: RESULT_SCHEMA's columns, types and order.

    The day arrives as days since 1970 (or a timestamp from naive pandas); quantiles as DuckDB's
    list or two columns, or not at all (the "-sums" variants: nulls).
    """
    if isinstance(result, pl.DataFrame):
        table = result.to_arrow()
    elif isinstance(result, pa.Table):
        table = result
    else:  # pandas
        if hasattr(result["day"], "dt"):
            result["day"] = result["day"].dt.date
        table = pa.Table.from_pandas(result, preserve_index=False)
    day = table.column("day")
    if pa.types.is_integer(day.type):
        day = pc.cast(pc.cast(day, pa.int32()), pa.date32())
    table = table.set_column(table.column_names.index("day"), "day", day)
    if "q" in table.column_names:
        quantiles = table.column("q").combine_chunks()
        table = table.drop(["q"])
        for position, name in enumerate(QUANTILES):
            table = table.append_column(name, pc.list_element(quantiles, position))
    for name in QUANTILES:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
    columns = [pc.cast(table.column(field.name), field.type) for field in RESULT_SCHEMA]
    return pa.Table.from_arrays(columns, schema=RESULT_SCHEMA)


def run_child(engine: str, source: Path, result: Path, threads: int, limit_bytes: int) -> None:
    """In the fresh process: cap its address space, time the rollup, save what it made."""
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    pa.set_cpu_count(threads)  # pandas reads through pyarrow's pool
    import duckdb  # noqa: F401 - imported before the clock starts, as polars is at the top
    import pandas  # noqa: F401

    rss_before = peak_rss_mib()
    started = time.perf_counter()
    try:
        rolled_up = ENGINES[engine][0](source, threads)
    except MemoryError as error:
        print(json.dumps({"status": "out of memory", "reason": f"{type(error).__name__}: {error}"}))
        return
    seconds = time.perf_counter() - started
    pq.write_table(normalise(rolled_up), result)
    figures = {
        "seconds": seconds,
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_imports_mib": rss_before,
    }
    print(json.dumps({"status": "ok", **figures}))


def peak_rss_mib() -> int:
    """This process's peak resident memory (VmHWM; Linux).

    Not ru_maxrss: Linux carries the parent's peak over fork and exec into it, so a child of a
    parent that once held 5 GiB would report 5 GiB however little it used itself.
    """
    status = Path("/proc/self/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return round(int(kib) / 1024)


def busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (Linux)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        Path("/proc/stat").read_text().split()[1:9]
    )
    ticks = sum(int(value) for value in (user, nice, system, irq, softirq, steal))
    return ticks / os.sysconf("SC_CLK_TCK")


def run_engine(
    engine: str, source: Path, result: Path, threads: int, limit_bytes: int, timeout_s: float
) -> dict[str, Any]:
    """One rollup in a fresh process: its figures, or why it gave none."""
    env = {**os.environ, "POLARS_MAX_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--child", engine, "--input", str(source)]
    command += ["--result", str(result), "--threads", str(threads)]
    command += ["--limit-bytes", str(limit_bytes)]
    busy_before, started = busy_cpu_seconds(), time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
        while True:  # wait4, not Popen.wait: it gives this child's own CPU time
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout_s:
                process.kill()
            time.sleep(0.02)
        process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        stdout.seek(0)
        lines = stdout.read().splitlines()
        stderr.seek(0)
        errors = stderr.read().strip().splitlines()
    figures = json.loads(lines[-1]) if process.returncode == 0 and lines else {}
    if not figures:
        figures = failure(process.returncode, errors, timed_out=wall > timeout_s)
    child_cpu = usage.ru_utime + usage.ru_stime
    # Cores other processes kept busy meanwhile: what makes a shared-machine run noisy.
    others = busy_cpu_seconds() - busy_before - child_cpu
    figures["neighbour_cores"] = round(max(0.0, others) / wall, 2)
    return figures


MEMORY_SIGNS = ("MemoryError", "Out of Memory", "bad_alloc", "allocat")


def failure(returncode: int, errors: list[str], *, timed_out: bool) -> dict[str, Any]:
    """Why a child gave no figures: its status and the line of its stderr that says most."""
    telling = [line for line in errors if any(sign in line for sign in MEMORY_SIGNS)]
    if timed_out:
        return {"status": "timed out", "reason": f"killed after the time limit ({returncode})"}
    if telling:
        return {"status": "out of memory", "reason": telling[0][:300]}
    if returncode < 0:
        # Allocators that cannot handle a failed mmap under RLIMIT_AS die of SIGSEGV or SIGABRT.
        name = signal.Signals(-returncode).name
        return {"status": "crashed", "reason": f"killed by {name}: " + " ".join(errors[-1:])}
    return {"status": "failed", "reason": (errors[-1:] or [f"exit status {returncode}"])[0][:300]}


def run_benchmark(
    events: int,
    cache_dir: Path,
    engines: Sequence[str],
    repeats: int,
    threads: int,
    limit_bytes: int,
    timeout_s: float = 1800,
) -> dict[str, Any]:
    """Every engine on `events` events, interleaved in each repeat, then compared."""
    source, generated_s = ensure_events(events, cache_dir)
    with source.open("rb") as file:  # every engine starts from the page cache alike
        while file.read(1 << 26):
            pass
    runs: dict[str, list[dict[str, Any]]] = {engine: [] for engine in engines}
    with tempfile.TemporaryDirectory(dir=cache_dir) as folder:
        for _ in range(repeats):
            for engine in engines:
                if runs[engine] and runs[engine][-1]["status"] != "ok":
                    continue  # a run out of memory would be out of memory again
                result = Path(folder) / f"{engine}.parquet"
                runs[engine].append(
                    run_engine(engine, source, result, threads, limit_bytes, timeout_s)
                )
        tables = {
            e: pq.read_table(Path(folder) / f"{e}.parquet")
            for e in engines
            if runs[e][-1]["status"] == "ok"
        }
    reference = next(iter(tables), None)
    rows = [
        summary(engine, ENGINES[engine][1], runs[engine], tables, reference) for engine in engines
    ]
    winners = {}
    for variant, sums_only in (("with p50/p95", False), ("sums and counts", True)):
        # Each variant against pandas' doing the same work.
        same = [row for row in rows if (row["quantiles"] == SUMS) == sums_only]
        agreeing = [row for row in same if "seconds" in row and row["comparison"]["sums_agree"]]
        best = min(agreeing, key=lambda row: row["seconds"], default=None)
        winners[variant] = best and best["engine"]
        name = "pandas-sums" if sums_only else "pandas"
        pandas = next((row for row in same if row["engine"] == name and "seconds" in row), None)
        for row in same:
            if pandas and "seconds" in row:
                row["x_pandas"] = round(pandas["seconds"] / row["seconds"], 1)
                row["x_pandas_best"] = round(pandas["best_seconds"] / row["best_seconds"], 1)
    return {
        "events": events,
        "file": str(source),
        "file_mib": round(source.stat().st_size / 2**20),
        "generated_seconds": generated_s,
        "reference": reference,
        "rows": rows,
        "winners": winners,
    }


def count(text: str) -> int:
    """`10M`, `20k` or `20000`: a number of events."""
    scale = {"k": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("kM")) * scale)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse options, run every size, print the command, the table, the winner; --out: JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=count, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--engines", nargs="+", choices=list(ENGINES), default=DEFAULT_ENGINES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-limit-gib", type=float, default=16.0)
    parser.add_argument("--out", type=Path, help="write every figure here as JSON")
    parser.add_argument("--child", choices=list(ENGINES), help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--limit-bytes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        run_child(args.child, args.input, args.result, args.threads, args.limit_bytes)
        return
    meminfo = Path("/proc/meminfo").read_text().split()
    available = int(meminfo[meminfo.index("MemAvailable:") + 1]) * 1024
    # Never more than what is free now less 2 GiB: neighbours' processes must not be the ones to go.
    limit = int(min(args.memory_limit_gib * 2**30, available - 2 * 2**30))
    load_before = os.getloadavg()[0]
    results = [
        run_benchmark(n, args.cache_dir, args.engines, args.repeats, args.threads, limit)
        for n in args.events
    ]
    figures = {
        "machine": f"{platform.processor() or platform.machine()} x{os.cpu_count()}, "
        f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB",
        "date": datetime.now(UTC).isoformat(timespec="minutes"),
        "threads": args.threads,
        "memory_limit_gib": round(limit / 2**30, 1),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "results": results,
    }
    print("$ python " + " ".join(sys.argv))
    print(
        f"{figures['machine']}, {args.threads} threads, address space capped at "
        f"{figures['memory_limit_gib']} GiB, load {figures['load_average_1m']}, "
        f"median of {args.repeats}\n"
    )
    print(markdown_table(results))
    print("\n".join(["", *verdicts(results)]))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
