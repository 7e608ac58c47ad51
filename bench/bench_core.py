"""Core speed figures, measured in one run on one machine (issue 2).

    .venv/bin/python bench/bench_core.py [--repeat N]

1. End-to-end latency of a trivial analysis, whole processes each:
   ``analysis run`` of a one-line ``run``; papermill on the equivalent two-cell notebook;
   a bare jupyter_client kernel start plus one execute (the floor).
2. Loading 200,000 dict rows (int, str, float, ISO-date string) into DuckDB inside real jobs
   (``run_job``, a fresh kernel each): ``ctx.load_data`` against ``pyarrow.Table.from_pylist`` +
   ``CREATE TABLE AS`` on a fresh DuckDB connection, the first and the second load of the job
   (the order of the two paths alternates between jobs), and ``executemany`` INSERTs (the
   seed's approach, on a 5,000-row slice because it is that slow, reported as throughput).

Figures are medians of ``--repeat`` runs; ratios compare figures from this same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import median_s

BIN = Path(sys.executable).parent


def run_quiet(argv: list[str], cwd: Path) -> None:
    subprocess.run(argv, cwd=cwd, check=True, capture_output=True, timeout=300)


BARE = """
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name="python3")
reply = kc.execute_interactive("result = 1 + 1", timeout=60)
assert reply["content"]["status"] == "ok"
kc.stop_channels()
km.shutdown_kernel(now=True)
"""


def latency(repeat: int) -> list[tuple[str, float]]:
    """Median seconds of each whole-process path, in a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        return _latency(Path(tmp), repeat)


def _latency(work: Path, repeat: int) -> list[tuple[str, float]]:
    import nbformat

    (work / "trivial.py").write_text("def run(ctx, parameters):\n    return 1 + 1\n")
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("result = x + 1")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, work / "trivial.ipynb")
    (work / "bare.py").write_text(BARE)
    return [
        (
            "analysis run (trivial .py)",
            median_s(lambda: run_quiet([str(BIN / "analysis"), "run", "trivial.py"], work), repeat),
        ),
        (
            "papermill (2-cell notebook)",
            median_s(
                lambda: run_quiet(
                    [
                        str(BIN / "papermill"),
                        "trivial.ipynb",
                        "out.ipynb",
                        "-p",
                        "x",
                        "1",
                        "--no-progress-bar",
                    ],
                    work,
                ),
                repeat,
            ),
        ),
        (
            "bare kernel start + execute",
            median_s(lambda: run_quiet([sys.executable, "bare.py"], work), repeat),
        ),
    ]


#: The analysis each loading job runs. The libraries both paths need are imported (and pyarrow's
#: pandas hook triggered) before the clock starts; each path then loads the same 200,000 dicts
#: (int, str, float, ISO-date string) twice: on a fresh connection (``ctx``'s DuckDB is opened
#: by its first ``load_data``), then on a warm one.
LOAD_JOB = """
import datetime as dt
import time

import duckdb
import pyarrow as pa

pa.array([0])


def run(ctx, parameters):
    start = dt.date(2024, 1, 1)
    rows = [
        {"id": i, "customer": f"customer-{i % 977}", "amount": (i % 10_000) / 100,
         "day": (start + dt.timedelta(days=i % 366)).isoformat()}
        for i in range(parameters["rows"])
    ]
    baseline_con = None

    def load_data():
        ctx.load_data("orders", rows)

    def arrow_baseline():
        nonlocal baseline_con
        if baseline_con is None:
            baseline_con = duckdb.connect()
        baseline_con.register("src", pa.Table.from_pylist(rows))
        baseline_con.execute("CREATE OR REPLACE TABLE orders AS SELECT * FROM src").fetchall()
        baseline_con.unregister("src")

    def executemany():
        con = duckdb.connect()
        con.execute("CREATE TABLE orders_em (id BIGINT, customer VARCHAR, amount DOUBLE, day VARCHAR)")
        few = [(r["id"], r["customer"], r["amount"], r["day"]) for r in rows[: parameters["few"]]]
        con.executemany("INSERT INTO orders_em VALUES (?, ?, ?, ?)", few)

    paths = [load_data, arrow_baseline] if parameters["ours_first"] else [arrow_baseline, load_data]
    if parameters["few"]:
        paths.append(executemany)
    times = {}
    for call in ("first", "second"):
        for path in paths:
            if path is executemany and call == "second":
                continue
            started = time.perf_counter()
            path()
            times[f"{path.__name__} {call}"] = time.perf_counter() - started
    return times
"""


def loading(repeat: int) -> tuple[dict[str, float], int, int]:
    """Medians over ``repeat`` jobs (each a fresh kernel) of each path's first and second load."""
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        return _loading(Path(tmp), repeat)


def _loading(work: Path, repeat: int) -> tuple[dict[str, float], int, int]:
    from analysis.runner import JobSpec, run_job

    rows, few = 200_000, 5_000
    script = work / "load.py"
    script.write_text(LOAD_JOB, encoding="utf-8")
    runs: dict[str, list[float]] = {}
    for n in range(repeat):
        parameters = {"rows": rows, "ours_first": n % 2 == 0, "few": few if n == 0 else 0}
        result = run_job(
            JobSpec(source_path=script, parameters=parameters, root=work / ".clients", timeout_s=600)
        )
        if not result.success:
            raise RuntimeError(json.dumps(result.to_dict(), indent=1))
        for name, seconds in result.result.items():
            runs.setdefault(name, []).append(seconds)
    return {name: statistics.median(times) for name, times in runs.items()}, rows, few


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=["latency", "load"], help="run one of the two parts")
    args = parser.parse_args()

    lat: list[tuple[str, float]] = []
    if args.only != "load":
        lat = latency(args.repeat)
        bare = lat[2][1]
        print(f"\nEnd-to-end latency, whole process (median of {args.repeat})")
        print(f"{'path':32} {'seconds':>8} {'x bare':>7}")
        for name, seconds in lat:
            print(f"{name:32} {seconds:8.3f} {seconds / bare:7.2f}")
        ours, papermill = lat[0][1], lat[1][1]
        print(f"analysis run vs papermill: {papermill / ours:.2f}x faster (target: faster than papermill)")
        print(f"analysis run vs bare:      {ours / bare:.2f}x the bare floor (target: <= 1.5)")
    if args.only == "latency":
        print(json.dumps({"latency_s": dict(lat)}))
        return

    load, rows, few = loading(args.repeat)
    print(
        f"\nLoading {rows:,} dicts (int, str, float, ISO date string) inside a job "
        f"(median of {args.repeat} jobs)"
    )
    print(f"{'path':38} {'rows':>8} {'seconds':>8} {'rows/s':>11} {'x arrow':>8}")
    for call in ("first", "second"):
        base_rate = rows / load[f"arrow_baseline {call}"]
        for name, label in (
            ("load_data", "ctx.load_data"),
            ("arrow_baseline", "from_pylist + CREATE TABLE AS"),
        ):
            seconds = load[f"{name} {call}"]
            print(f"{label + ', ' + call:38} {rows:8,} {seconds:8.3f} {rows / seconds:11,.0f} "
                  f"{rows / seconds / base_rate:8.2f}")  # fmt: skip
    seconds = load["executemany first"]
    print(f"{'executemany INSERT (seed)':38} {few:8,} {seconds:8.3f} {few / seconds:11,.0f} "
          f"{few / seconds / (rows / load['arrow_baseline first']):8.2f}")  # fmt: skip
    ratio = load["arrow_baseline first"] / load["load_data first"]
    print(f"load_data throughput vs pyarrow baseline, first load of a job: {ratio:.2f} (target: >= 0.8)")
    print(json.dumps({"latency_s": dict(lat), "load_s": load}))


if __name__ == "__main__":
    main()
