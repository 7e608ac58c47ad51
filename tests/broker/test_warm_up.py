"""The broker imports the datasource drivers while the kernel starts, not in the job's first query.

Each test runs a broker in a fresh Python process: in this one, earlier tests imported the
drivers already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_BROKER = """
import json, sys, threading
from pathlib import Path
from analysis.config import Settings
from analysis.deadline import Deadline
from analysis.runner.broker import BrokerServer, ConnectionPool

watched = sys.argv[3:]
before = [m for m in watched if m in sys.modules]
server = BrokerServer(
    Path(sys.argv[1]), "p", Settings(datasources_file=Path(sys.argv[2])),
    deadline=Deadline(None), pool=ConnectionPool(),
).start()
for thread in threading.enumerate():
    if thread.name == "analysis-broker-warm-up":
        thread.join(60)
server.stop()
print(json.dumps({"before": before, "after": [m for m in watched if m in sys.modules]}))
"""


def _start_broker(tmp_path: Path, config: str, *modules: str) -> tuple[dict[str, list[str]], str]:
    """Start and stop a broker for a project whose datasources file is ``config``."""
    job_dir = tmp_path / "job"
    job_dir.mkdir(mode=0o700)
    datasources = tmp_path / "datasources.toml"
    datasources.write_text(config, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", _BROKER, str(job_dir), str(datasources), *modules],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout), done.stderr


def test_starting_a_broker_imports_the_drivers_of_the_projects_datasource_kinds(tmp_path: Path) -> None:
    config = '[shop]\nkind = "mysql"\nhost = "127.0.0.1"\nport = 1\ndatabase = "d"\nuser = "u"\n'
    modules, _ = _start_broker(tmp_path, config, "mysql.connector", "arrow_odbc", "psycopg")
    assert modules["before"] == []
    # MySQL's drivers, before any query; nothing for kinds the project does not use
    assert modules["after"] == ["mysql.connector", "arrow_odbc"]


def test_a_broken_datasources_file_is_left_for_the_query_to_report(tmp_path: Path) -> None:
    modules, stderr = _start_broker(tmp_path, "[shop\nkind = ", "mysql.connector")
    assert modules["after"] == [] and "Traceback" not in stderr
