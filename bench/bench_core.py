"""Core speed figures, measured in one run on one machine (issue 2).

    .venv/bin/python bench/bench_core.py [--repeat N]

1. End-to-end latency of a trivial analysis, whole processes each:
   ``analysis run`` of a one-line ``run``; papermill on the equivalent two-cell notebook;
   a bare jupyter_client kernel start plus one execute (the floor).
2. Loading 200,000 dict rows (4 columns) into DuckDB: ``ctx.load_data``;
   ``pyarrow.Table.from_pylist`` + a DuckDB scan; ``executemany`` INSERTs (the seed's
   approach, measured on a 20,000-row slice because it is that slow, reported as throughput).

Figures are medians of ``--repeat`` runs; ratios compare figures from this same run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
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
    import nbformat

    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
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


def make_rows(n: int) -> list[dict[str, object]]:
    start = dt.datetime(2024, 1, 1)
    return [
        {
            "id": i,
            "customer": f"customer-{i % 977}",
            "amount": (i % 10_000) / 100,
            "ordered_at": start + dt.timedelta(seconds=i),
        }
        for i in range(n)
    ]


def loading(repeat: int) -> list[tuple[str, float, int]]:
    import duckdb
    import pyarrow as pa

    from analysis.context import Context

    rows = make_rows(200_000)
    ctx = Context()
    with contextlib.redirect_stderr(io.StringIO()):
        ctx.query("SELECT 1")  # open the connection outside the timing

    def ours() -> None:
        ctx.load_data("orders", rows)

    con = duckdb.connect()

    def arrow_baseline() -> None:
        table = pa.Table.from_pylist(rows)
        con.register("src", table)
        con.execute("CREATE OR REPLACE TABLE orders AS SELECT * FROM src").fetchall()
        con.unregister("src")

    few = rows[:20_000]

    def executemany() -> None:
        con.execute(
            "CREATE OR REPLACE TABLE orders_em "
            "(id BIGINT, customer VARCHAR, amount DOUBLE, ordered_at TIMESTAMP)"
        )
        con.executemany(
            "INSERT INTO orders_em VALUES (?, ?, ?, ?)",
            [(r["id"], r["customer"], r["amount"], r["ordered_at"]) for r in few],
        )

    with contextlib.redirect_stderr(io.StringIO()):  # the [load_data] log lines
        ours(), arrow_baseline()  # warm up both paths (imports, first allocations)
        results = [
            ("ctx.load_data", median_s(ours, repeat), len(rows)),
            ("pyarrow from_pylist + scan", median_s(arrow_baseline, repeat), len(rows)),
            ("executemany INSERT (seed)", median_s(executemany, 1), len(few)),
        ]
    ctx.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    lat = latency(args.repeat)
    bare = lat[2][1]
    print(f"\nEnd-to-end latency, whole process (median of {args.repeat})")
    print(f"{'path':32} {'seconds':>8} {'x bare':>7}")
    for name, seconds in lat:
        print(f"{name:32} {seconds:8.3f} {seconds / bare:7.2f}")
    ours, papermill = lat[0][1], lat[1][1]
    print(f"analysis run vs papermill: {papermill / ours:.2f}x faster (target: faster than papermill)")
    print(f"analysis run vs bare:      {ours / bare:.2f}x the bare floor (target: <= 1.5)")

    load = loading(args.repeat)
    base_rate = load[1][2] / load[1][1]
    print(f"\nLoading dict rows into DuckDB, 4 columns (median of {args.repeat})")
    print(f"{'path':32} {'rows':>8} {'seconds':>8} {'rows/s':>11} {'x arrow':>8}")
    for name, seconds, n in load:
        rate = n / seconds
        print(f"{name:32} {n:8,} {seconds:8.3f} {rate:11,.0f} {rate / base_rate:8.2f}")
    ratio = load[0][2] / load[0][1] / base_rate
    print(f"load_data throughput vs pyarrow baseline: {ratio:.2f} (target: >= 0.8)")
    print(json.dumps({"latency_s": dict(lat), "load_rows_per_s": {n: c / s for n, s, c in load}}))


if __name__ == "__main__":
    main()
