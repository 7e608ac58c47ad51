"""``%load_ext analysis``: ``ctx`` in the notebook and the ``%%analysis`` cell magic.

``%%analysis`` runs a cell that defines ``run(ctx, parameters)`` the way the headless runner
will: a fresh ``Context`` (its own DuckDB), parameters as data, the deadline, the same JSON
encoding and result-size limit, and the same error types. ``%%analysis --sql`` runs the cell as
SQL on the notebook's ``ctx`` (DuckDB or a datasource) with bound parameters. ``%analysis run``,
``validate`` and ``jobs`` work with saved analyses. Settings are traitlets::

    %config AnalysisMagics.timeout_s = 60
    %config AnalysisMagics.max_result_bytes = 1_000_000
    %config AnalysisMagics.display_rows = 50
    %config AnalysisMagics.log_queries = True
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments, parse_argstring
from IPython.display import display
from traitlets import Bool, Float, Int, Unicode, default, observe

from analysis.config import Settings
from analysis.context import Context
from analysis.deadline import Deadline
from analysis.display import envelope_bundle, jobs_bundle, value_bundle
from analysis.duck import QueryResult
from analysis.errors import InvalidAnalysisError, InvalidParametersError, JobTimeoutError
from analysis.execute import Watchdog, describe_failure, failure, load_run, run_analysis
from analysis.extras import MissingExtraError, require
from analysis.logs import echo_automatic_lines
from analysis.params import check_id, parse_assignments
from analysis.results import DEFAULT_MAX_RESULT_BYTES
from analysis.saved_runs import run_saved, validate_saved
from analysis.tracebacks import AnalysisCellError, keeping_exception
from analysis.tracebacks import install as install_short_tracebacks
from analysis.tracebacks import uninstall as uninstall_short_tracebacks
from analysis.validate import validate_source

__all__ = ["AnalysisCellError", "AnalysisMagics", "load", "unload"]


@magics_class
class AnalysisMagics(Magics):
    """The ``%%analysis`` magic and the notebook's ``ctx``."""

    timeout_s = Float(
        300.0, allow_none=True, help="Deadline of an %%analysis cell in seconds (None: none)."
    ).tag(config=True)
    max_result_bytes = Int(
        DEFAULT_MAX_RESULT_BYTES, allow_none=True, help="Limit of an encoded %%analysis result in bytes."
    ).tag(config=True)
    display_rows = Int(20, help="Rows of a QueryResult shown in a notebook.").tag(config=True)
    project_id = Unicode(
        "", help="Project of this notebook (datasources, --save); default $ANALYSIS_PROJECT_ID or 'default'."
    ).tag(config=True)
    log_queries = Bool(
        help="Echo [query:...], [load_data] and [files] lines under cells (default: off in a notebook, "
        "on in a headless run). They always go to the 'analysis' logger."
    ).tag(config=True)

    def __init__(self, shell: Any, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        self.settings = Settings.from_env()
        if not self.project_id:
            self.project_id = self.settings.project_id
        QueryResult.display_rows = self.display_rows
        self.ctx = Context(project_id=self.project_id, settings=self.settings)
        #: Saved analyses run from this kernel with ``%analysis run``: (name, JobResult).
        self.jobs: list[tuple[str, Any]] = []

    @observe("display_rows")
    def _display_rows_changed(self, change: dict[str, Any]) -> None:
        QueryResult.display_rows = change["new"]

    @default("log_queries")
    def _log_queries_default(self) -> bool:
        return self.headless

    @observe("log_queries")
    def _log_queries_changed(self, change: dict[str, Any]) -> None:
        echo_automatic_lines(change["new"])

    @property
    def headless(self) -> bool:
        """Whether this kernel runs a headless notebook job (the runner put the job's ``ctx`` in)."""
        ctx = self.shell.user_ns.get("ctx") if self.shell is not None else None
        return isinstance(ctx, Context) and ctx.job_id is not None

    @magic_arguments()
    @argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="A parameter; VALUE is JSON where valid, else a string; -p NAME binds variable NAME.",
    )
    @argument(
        "-o", "--output", metavar="VAR", help="Store the result in VAR (JSON data; for --sql see --as)."
    )
    @argument("--timeout", type=float, default=None, metavar="SECONDS", help="Deadline of this run.")
    @argument("--max-result-bytes", type=int, default=None, metavar="N", help="Result size limit.")
    @argument("--save", metavar="NAME", help="Also save the cell as saved analysis NAME of the project.")
    @argument("--sql", action="store_true", help="The cell is SQL, run on ctx (DuckDB, or --datasource).")
    @argument("--datasource", metavar="NAME", help="With --sql: run on this datasource.")
    @argument("--into", metavar="TABLE", help="With --sql: load the rows into this DuckDB table.")
    @argument(
        "--as",
        dest="as_",
        choices=("df", "pl", "arrow", "result"),
        default="df",
        help="With --sql -o: store a pandas DataFrame (default), polars, Arrow, or the QueryResult.",
    )
    @line_cell_magic
    def analysis(self, line: str, cell: str | None = None) -> Any:
        """``%%analysis``: run the cell as an analysis (or, with ``--sql``, as SQL).

        ``%analysis run NAME [-p KEY=VALUE]...``, ``%analysis validate NAME`` and
        ``%analysis jobs`` work with the project's saved analyses.
        """
        if cell is None:
            return self._line(line)
        args = parse_argstring(self.analysis, line)
        parameters = _parameters(args.param, self.shell.user_ns if self.shell is not None else {})
        timeout_s = args.timeout if args.timeout is not None else self.timeout_s
        if timeout_s is not None and timeout_s <= 0:
            raise UsageError(f"--timeout must be a positive number of seconds, not {timeout_s:g}.")
        if args.sql:
            return self._sql(args, cell, parameters, timeout_s)
        if args.datasource or args.into:
            raise UsageError("--datasource and --into are for SQL cells: add --sql.")
        if args.save:
            self._save(args.save, cell)
        max_bytes = args.max_result_bytes if args.max_result_bytes is not None else self.max_result_bytes
        outcome, result, raised = self._run(cell, parameters, timeout_s, max_bytes)
        assert self.shell is not None
        if not outcome["success"]:
            if args.output:
                self.shell.user_ns[args.output] = None
            raise AnalysisCellError(outcome, raised)
        assert result is not None
        value = json.loads(result)
        if args.output:
            self.shell.user_ns[args.output] = value
        hint = f"; all of it is in {args.output}" if args.output else "; keep all of it with -o VAR"
        display(value_bundle(value, self.display_rows, hint=hint), raw=True)
        return None

    def notebook_ctx(self) -> Context:
        """The ``ctx`` of the notebook: the job's in a headless run, else this session's."""
        assert self.shell is not None
        ctx = self.shell.user_ns.get("ctx")
        return ctx if isinstance(ctx, Context) else self.ctx

    def _sql(self, args: Any, cell: str, parameters: dict[str, Any], timeout_s: float | None) -> QueryResult:
        if args.save:
            raise UsageError("--save is for analysis cells, not --sql cells.")
        if args.output and args.as_ in _NEEDS:
            module, what = _NEEDS[args.as_]
            try:
                require(module, what)
            except MissingExtraError as exc:
                raise UsageError(f"{exc} (or store Arrow or the result: --as arrow, --as result)") from None
        ctx = self.notebook_ctx()
        params = parameters or None
        deadline = Deadline.after(timeout_s)
        with Watchdog(ctx, deadline, interrupt_main=True) as watchdog:
            try:
                if args.datasource:
                    result = ctx.query_datasource(args.datasource, cell, params, into=args.into)
                else:
                    result = ctx.query(cell, params)
                    if args.into:
                        loaded = ctx.load_data(args.into, result)
                        result = QueryResult(None, row_count=loaded, loaded_into=args.into)
            except BaseException as exc:
                if not isinstance(exc, Exception | KeyboardInterrupt) or isinstance(exc, UsageError):
                    raise
                if watchdog.fired:  # the notebook's ctx has no deadline of its own: name this one
                    stopped = JobTimeoutError(f"The SQL cell ran past {deadline.describe()} and was stopped.")
                    outcome = failure(stopped, None)
                else:
                    outcome = {**describe_failure(exc, ctx, None), "stack": None}
                raise AnalysisCellError(outcome, exc, sql=True) from None
        if args.output:
            assert self.shell is not None
            converters = {"df": QueryResult.df, "pl": QueryResult.pl, "arrow": QueryResult.arrow}
            self.shell.user_ns[args.output] = (
                converters[args.as_](result) if args.as_ in converters else result
            )
        return result

    def _line(self, line: str) -> Any:
        args = _line_parser().parse_argstring(line)
        root, project = self.settings.root, self.project_id
        if args.command == "validate":
            try:
                path = validate_saved(root, project, args.name)
            except InvalidAnalysisError as exc:
                raise UsageError(exc.message) from None
            print(f"ok: {path}")
            return None
        if args.command == "jobs":
            display(jobs_bundle(self.jobs), raw=True)
            return None
        parameters = _parameters(args.param, self.shell.user_ns if self.shell is not None else {})
        options: dict[str, Any] = {"timeout_s": args.timeout if args.timeout is not None else self.timeout_s}
        if self.max_result_bytes is not None:
            options["max_result_bytes"] = self.max_result_bytes
        result = run_saved(root, project, args.name, parameters, **options)
        self.jobs.append((args.name, result))
        display(envelope_bundle(args.name, result.to_dict(), self.display_rows), raw=True)
        return None

    def _run(
        self, cell: str, parameters: dict[str, Any], timeout_s: float | None, max_bytes: int | None
    ) -> tuple[dict[str, Any], bytes | None, BaseException | None]:
        job_id = f"cell-{uuid.uuid4().hex}"
        filename = "<%%analysis cell>"
        ctx = Context(
            project_id=self.project_id,
            job_id=job_id,
            parameters=parameters,
            settings=self.settings,
            deadline=Deadline.after(timeout_s),
        )
        try:
            try:
                run = load_run(cell, filename)
            except InvalidAnalysisError as exc:
                return {"success": False, **exc.to_dict(), "stack": None}, None, None
            raised: list[BaseException] = []
            outcome, result = run_analysis(
                keeping_exception(run, raised),
                ctx,
                filename=filename,
                max_result_bytes=max_bytes,
                interrupt_main=True,
            )
            return outcome, result, raised[-1] if raised and not outcome["success"] else None
        finally:
            ctx.close()

    def _save(self, name: str, cell: str) -> None:
        try:
            check_id(name, "Analysis name")
            validate_source(cell, f"{name}.py")
        except (ValueError, InvalidAnalysisError) as exc:
            raise UsageError(str(exc)) from None
        path = self.settings.project_dir(self.project_id) / "scripts" / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".py.tmp")
        tmp.write_text(cell if cell.endswith("\n") else cell + "\n", encoding="utf-8")
        tmp.replace(path)
        print(f"Saved analysis {name!r} of project {self.project_id!r} to {Path(path)}")


def _parameters(items: list[str], namespace: dict[str, Any]) -> dict[str, Any]:
    """``-p`` values of a magic line: ``KEY=VALUE``, or ``NAME`` for the notebook variable NAME.

    IPython keeps the quotes around ``-p "k=v w"``: they are dropped.
    """
    unquoted = []
    variables: dict[str, Any] = {}
    for item in items:
        if "=" not in item and item.isidentifier():
            if item not in namespace:
                raise UsageError(f"-p {item}: there is no variable {item!r} in the notebook.")
            variables[item] = namespace[item]
            continue
        text = item[1:-1] if len(item) >= 2 and item[0] == item[-1] and item[0] in "\"'" else item
        key, sep, value = text.partition("=")
        if sep and len(value) >= 2 and value[0] == value[-1] == "'":
            text = f"{key}={value[1:-1]}"
        unquoted.append(text)
    try:
        return {**variables, **parse_assignments(unquoted)}
    except InvalidParametersError as exc:
        raise UsageError(exc.message) from None


def _line_parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(prog="%analysis", description="Saved analyses of this project.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a saved analysis in a fresh kernel and show its envelope")
    run.add_argument("name")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    validate = commands.add_parser("validate", help="check a saved analysis without running it")
    validate.add_argument("name")
    commands.add_parser("jobs", help="the jobs this kernel ran with %%analysis run")
    return parser


#: ``--as`` choices that need an optional library: (module, what needs it).
_NEEDS = {"df": ("pandas", "-o with --as df (the default)"), "pl": ("polars", "-o with --as pl")}


def _registered(ipython: Any) -> AnalysisMagics | None:
    magics = ipython.magics_manager.registry.get("AnalysisMagics")
    return magics if isinstance(magics, AnalysisMagics) else None


def load(ipython: Any) -> None:
    """Register the magics and put ``ctx`` in the user namespace; a second load changes nothing."""
    if _registered(ipython) is None:
        ipython.register_magics(AnalysisMagics(shell=ipython))
    magics = _registered(ipython)
    assert magics is not None
    ipython.user_ns.setdefault("ctx", magics.ctx)
    echo_automatic_lines(magics.log_queries)
    install_short_tracebacks(ipython)


def unload(ipython: Any) -> None:
    """Close the notebook's ``ctx``, remove it from the namespace, and unregister the magic."""
    magics = _registered(ipython)
    if magics is None:
        return
    uninstall_short_tracebacks(ipython)
    echo_automatic_lines(True)
    magics.ctx.close()
    if ipython.user_ns.get("ctx") is magics.ctx:
        del ipython.user_ns["ctx"]
    ipython.magics_manager.magics["cell"].pop("analysis", None)
    ipython.magics_manager.magics["line"].pop("analysis", None)
    ipython.magics_manager.registry.pop("AnalysisMagics", None)
