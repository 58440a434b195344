"""``sockbench run``: the main job.  Runs the pytest-benchmark suite, shows progress, writes the report.

Why it is built this way:

* The suite runs through pytest-benchmark, in a child ``python -m pytest``
  process, so that its storage (``benchmarks/``), its JSON
  (``pytest-benchmark.json``) and ``pytest-benchmark compare`` work exactly as
  they do for any pytest-benchmark suite.  The matrix goes to the child as a
  file (``plan.json``, named by ``SOCKBENCH_PLAN``), and progress comes back
  as a file (``progress.jsonl``, the typed events of ``progress``), which this
  process tails to draw a rich progress display: the current cell, cells done
  out of the total, load runs so far, and the time left.  A cell's rounds are
  not known in advance (it runs until its figure is stable), so the time left
  is the plan's estimate of the cells still to run (``Plan.cell_estimate_s``),
  scaled by how the run has kept to its estimates so far, and never past the
  run budget.
* The child runs in its own session: Ctrl-C reaches this process only, which
  forwards exactly one SIGINT to the child.  SIGTERM (what ``timeout`` and a
  cancelled CI job send) is handled the same way.  pytest then stops after
  cleaning up the round in flight (the harness stops its server and load
  processes), every round finished so far is already in ``raw/``, and the
  report is built from them, marked as incomplete.  A child that does not
  stop within ``STOP_GRACE_S`` is terminated, then killed; before it is
  reaped, whatever is left in its process group (a server or a load process
  whose parent was killed) is killed too, so nothing outlives the run.
  ``sockbench report DIR`` rebuilds the report later.  A runner that is
  killed outright (SIGKILL) takes the child with it: the kernel sends it
  SIGTERM (``children.child_setup``), which stops it as above, and it settles
  ``meta.json`` itself (status ``interrupted``).
* The report is built here, after the child exits, from ``raw/`` only.

Folder written (see ``results/README.md``): ``meta.json``, ``plan.json``,
``raw/``, ``progress.jsonl``, ``pytest.log``, ``pytest-benchmark.json``,
``benchmarks/``, ``plots/``, ``report.md``, ``report.html``.
"""

import dataclasses
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import time

from sockbench.bench.load.spec import check_engine
from sockbench.bench.load.worker import FD_HEADROOM
from sockbench.bench.report.store import RAW_DIR, is_discarded
from sockbench.bench.suite.plan import default_plan, full_plan, quick_plan
from sockbench.bench.suite.progress import (
    Calibrated, Calibrating, CellDone, PassStarted, RoundDone, RoundSetAside, RoundStarted, Window, parse,
)
from sockbench.bench.suite.session import (
    ENV_OUT, ENV_PLAN, ENV_STATUS_FD, PROGRESS_FILE, WRITE_FAILED_EXIT, new_meta, update_meta,
)
from sockbench.children import child_setup
from sockbench.damon import monitors, note as damon_note
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import check_writable, write_json_atomic
from sockbench.servers import registry
from sockbench.servers.tls import TlsConfig, ensure_certificate
from sockbench.timestamps import folder_stamp
from sockbench.units import format_size, parse_size

__all__ = ["build_plan", "run_main", "suite_command", "suite_env", "check_fd_limit", "preflight_commands", "prepare_pythons",
           "SUITE_FILE", "STOP_GRACE_S", "SERVER_FD_HEADROOM"]

SUITE_FILE = "test_echo_bench.py"
#: after a forwarded Ctrl-C or SIGTERM, how long pytest gets to stop cleanly before SIGTERM, then SIGKILL
STOP_GRACE_S = 20.0


#: descriptors a server needs beside its connections: the listening socket, stdio, its poller, a log
SERVER_FD_HEADROOM = 32


def check_fd_limit(plan):
    """Make sure every cell's server and load processes can open their descriptors, before anything runs.

    The children inherit this process's RLIMIT_NOFILE: a soft limit below the need is raised to it (the
    hard limit allows that without privileges); a hard limit below it is one line saying what to do.  The
    server holds every connection of a cell, so more load processes would not help: the advice is to
    raise the hard limit or run fewer connections.  Returns the soft limit the run has.
    """
    conns = max(c.conns for c in plan.cells())
    per_proc = math.ceil(conns / max(1, min(plan.procs, conns)))
    needed = max(conns + SERVER_FD_HEADROOM, per_proc + FD_HEADROOM)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        floor = max(1 + SERVER_FD_HEADROOM, 1 + FD_HEADROOM)
        if hard < floor:
            raise SockbenchError(
                f"the file-descriptor limit (ulimit -Hn) is {hard}, below the {floor} even one connection needs "
                f"(a load process keeps {FD_HEADROOM} spare); raise it to at least {needed} (ulimit -n {needed} in a "
                f"shell allowed to, or nofile in /etc/security/limits.conf)", exit_code=2)
        most = min(hard - SERVER_FD_HEADROOM, (hard - FD_HEADROOM) * max(1, plan.procs))
        section = (f"; the protocol section runs {conns}: --protocols none leaves it out"
                   if conns > max(plan.conns, default=0) else "")
        raise SockbenchError(
            f"{conns} connections need {needed} file descriptors per process but the limit (ulimit -Hn) is {hard}; "
            f"raise it (ulimit -n {needed} in a shell allowed to, or nofile in /etc/security/limits.conf) or keep "
            f"every cell to {most} connections or fewer (--conns{section})", exit_code=2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


def _split(values):
    out = []
    for v in values or ():
        out.extend(x for x in str(v).split(",") if x.strip())
    return [x.strip() for x in out]


def _none_or(values, option):
    """The split values of ``option``, or [] for the documented ``none``, which stands alone."""
    values = _split(values)
    if any(v.lower() == "none" for v in values):
        if len(values) > 1:
            raise UsageError(f"{option} none stands alone; give none, or the values to run")
        return []
    return values


def build_plan(servers=None, sizes=None, conns=None, quick=False, full=False, rounds=None, min_rounds=None,
               max_rounds=None, ci=None, ci_p99=None, cell_budget_s=None, run_budget_s=None, duration_s=None, warmup_s=None,
               open_pcts=None, server_cpus=None, client_cpus=None, protocols=None, transports=None, workers=None,
               seed=None, commands=None, pythons=None, tls=None, tls_config=None, tls_resumption=None,
               engine=None):
    """The run's Plan from the command line; any bad value is a one-line UsageError.

    ``rounds`` fixes the rounds of every cell (``min_rounds = max_rounds = rounds``); ``run_budget_s`` 0
    lifts the run budget.  ``commands``: ``Command``s to run beside the servers (alone when no ``servers``
    are named); ``pythons``: the interpreters (``prepare_pythons``) the built-in servers run under.
    ``tls`` is the TLS dimension (``[False, True]`` for ``--tls off on``), ``tls_config`` the setting of its
    TLS cells (``servers.tls.TlsConfig``), ``tls_resumption`` which handshakes its connect cells measure
    (None: full and resumed).  ``engine``: the load loop of the plain raw stream cells (``--engine``); the
    others stay on epoll's, the only loop that speaks them.
    """
    if quick and full:
        raise UsageError("--quick and --full exclude each other")
    if rounds is not None and (min_rounds is not None or max_rounds is not None):
        raise UsageError("--rounds fixes the rounds of every cell; give it alone, or --min-rounds/--max-rounds")
    commands = list(commands or [])
    names = _server_names(servers) if servers or not commands else []
    for c in commands:
        if c.name in registry.SERVERS or c.name in names:
            raise UsageError(f"the --command {c.text!r} is named {c.name!r}, as a registered server is; name it "
                             f"apart with --name")
    make = quick_plan if quick else full_plan if full else default_plan
    kw = _matrix_options(sizes, conns, open_pcts, protocols)
    kw.update(_round_options(make, names, rounds, min_rounds, max_rounds))
    for key, value, conv in (("ci", ci, float), ("ci_p99", ci_p99, float), ("cell_budget_s", cell_budget_s, float), ("duration_s", duration_s, float),
                             ("warmup_s", warmup_s, float), ("server_cpus", server_cpus, tuple),
                             ("client_cpus", client_cpus, tuple)):
        if value is not None:
            kw[key] = conv(value)
    if run_budget_s is not None:
        kw["run_budget_s"] = float(run_budget_s) or None
    if workers:
        kw["workers"] = tuple(workers)  # each count is checked by the Plan
    if seed is not None:
        kw["seed"] = int(seed)
    if engine is not None:
        check_engine(engine)  # unknown, unbuilt, or io_uring refused here: one line before anything runs
        if engine != "epoll" and tls and not any(not t for t in tls):
            raise UsageError(f"--engine {engine} loads the plain raw cells, and --tls on leaves none (TLS is epoll's "
                             f"loop); run --tls off on, or leave --engine out")
        kw["engine"] = engine
    kw["speaks"] = {n: list(registry.get(n).protocols) for n in names}
    kw["serves"] = {n: list(registry.get(n).transports) for n in names}
    for c in commands:
        kw["speaks"][c.name] = ["raw"]  # what else it speaks is not known: the protocol section leaves it out
        kw["serves"][c.name] = _command_transports(c)
    kw["commands"] = {c.name: c.to_json() for c in commands}
    if pythons:
        kw["pythons"] = tuple(pythons)
        kw["python_servers"] = tuple(n for n in names if registry.is_builtin(n))
    names = names + [c.name for c in commands]
    if tls:
        kw["tls"] = tuple(dict.fromkeys(bool(t) for t in tls))
        # a --command serves what its own command line says: sockbench cannot make it serve TLS
        command_names = {c.name for c in commands}
        kw["serves_tls"] = {n: n not in command_names and registry.get(n).tls_availability()[0]
                            and "raw" in registry.get(n).tls for n in names}
        if True in kw["tls"]:
            if not any(kw["serves_tls"].values()):
                raise UsageError("--tls on: no chosen server serves TLS here; see `sockbench servers`")
            cfg = tls_config or TlsConfig()
            kw["tls_setting"] = {"version": cfg.version, "cipher": cfg.cipher, "cert": cfg.cert, "key": cfg.key}
            if tls_resumption is not None:
                kw["handshake_resumption"] = (bool(tls_resumption),)
    if transports is not None:
        kw["transports"] = tuple(_split(transports))  # each name is checked by the Plan
    plan = make(names, **kw)
    if not any(plan.server_transports(n) for n in names):
        raise UsageError(f"no chosen server serves {' or '.join(plan.transports)}; see `sockbench servers`")
    if protocols and plan.protocols and not any(plan.server_protocols(n) for n in names):
        raise UsageError(f"no chosen server speaks {' or '.join(p for p in plan.protocols if p != 'raw') or 'a framed protocol'}; "
                         f"see `sockbench servers`")
    # the open-loop sweep runs where its peak was measured: the closed grid's smallest size
    # (64 B when present) and highest concurrency
    plan = dataclasses.replace(
        plan,
        open_size=64 if 64 in plan.sizes else min(plan.sizes),
        open_conns=max(plan.conns),
    )
    _check_cpus(plan)
    return plan


def _command_transports(command):
    """The transports a command can be started on, from its placeholders: {path} unix, {port} tcp, tcp6 and udp."""
    out = []
    for t in ("tcp", "tcp6", "unix", "udp"):
        try:
            command.check_transport(t)
        except UsageError:
            continue
        out.append(t)
    return out


def preflight_commands(plan, console=None):
    """Start and stop each ``--command`` of ``plan`` once, before the suite: a command that does not start, prints
    no ready line or ignores SIGTERM is one line, exit 2, before anything is measured (and nothing is left running)."""
    # deferred: the server process machinery, needed only when a run names a --command
    from sockbench.servers.command import Command
    from sockbench.servers.process import ServerProcess

    for name, d in plan.commands.items():
        command = Command.from_json(d)
        transport = plan.server_transports(name)[0] if plan.server_transports(name) else "tcp"
        server = ServerProcess(command=command, transport=transport, cpus=plan.server_cpus)
        try:
            server.start()
        finally:
            server.stop()
        if server.stop_note:
            raise UsageError(server.stop_note)
        if console is not None:
            console.print(f"{command.describe()}: starts, stops on SIGTERM", highlight=False)


def prepare_pythons(paths, log=None):
    """The interpreters of ``--python``, each built once (cached): ``[{"label", "python", "version"}]``.

    One that is not a Python, is older than 3.11 or cannot build the extensions is one warning line naming
    it (``log``); the others are still measured.  None left: a one-line error.
    """
    # deferred: building environments, needed by --python only
    from sockbench.servers.environments import prepare

    out = []
    for path in paths:
        try:
            env = prepare(path, log=log)
        except SockbenchError as e:
            if log:
                log(f"warning: {e}; left out")
            continue
        out.append({"label": env.label, "python": env.python, "version": env.interpreter.description,
                    "path": path, "source": env.source})
    if not out:
        raise UsageError(f"no --python could be used ({', '.join(paths)}); see the lines above")
    return out


def _server_names(servers):
    """The servers asked for (each must run here), or every available one."""
    if servers:
        names = _split(servers)
        for n in names:
            ok, why = registry.get(n).availability()
            if not ok:
                raise UsageError(f"server {n!r} cannot run here: {why}")
        return names
    names = registry.available_names()
    if not names:
        raise SockbenchError("no server is available here (see `sockbench servers`)")
    return names


def _matrix_options(sizes, conns, open_pcts, protocols):
    """The Plan's matrix fields the command line sets: sizes, connections, open-loop loads, protocols."""
    kw = {}
    if sizes:
        kw["sizes"] = tuple(parse_size(s) for s in _split(sizes))
    if conns:
        try:
            kw["conns"] = tuple(int(c) for c in _split(conns))
        except ValueError:
            raise UsageError(f"bad --conns {' '.join(map(str, conns))!r}; use whole numbers such as 1 10 100") from None
    if open_pcts is not None:
        try:
            kw["open_pcts"] = tuple(int(str(p).rstrip("%")) for p in _none_or(open_pcts, "--open-loads"))
        except ValueError:
            raise UsageError(f"bad --open-loads {' '.join(map(str, open_pcts))!r}; use percentages such as 25 50 75 90") from None
    if protocols is not None:
        kw["protocols"] = tuple(_none_or(protocols, "--protocols"))  # each name is checked by the Plan
        if set(kw["protocols"]) == {"raw"}:
            kw["protocols"] = ()  # raw alone has nothing to be compared with: no section
        elif kw["protocols"] and "raw" not in kw["protocols"]:
            # the section exists to show each protocol's cost over raw, measured side by side
            kw["protocols"] = ("raw",) + kw["protocols"]
    return kw


def _round_options(make, names, rounds, min_rounds, max_rounds):
    """``min_rounds``/``max_rounds`` from --rounds, or from one or both bounds (the other the matrix's own)."""
    if rounds is not None:
        return {"min_rounds": int(rounds), "max_rounds": int(rounds)}
    if min_rounds is None and max_rounds is None:
        return {}
    # one bound given: the other is the matrix's own, moved so that min <= max
    base = make(names)
    lo = int(min_rounds) if min_rounds is not None else min(base.min_rounds, int(max_rounds))
    hi = int(max_rounds) if max_rounds is not None else max(base.max_rounds, lo)
    return {"min_rounds": lo, "max_rounds": hi}


def _check_cpus(plan):
    allowed = os.sched_getaffinity(0)
    for label, cpus in (("server", plan.server_cpus), ("client", plan.client_cpus)):
        missing = sorted(set(cpus) - allowed)
        if missing:
            raise UsageError(f"--{label}-cpus {','.join(map(str, missing))} not available here; usable CPUs: "
                             f"{','.join(map(str, sorted(allowed)))}")


#: the suite's pytest loads pytest-benchmark and no other installed plugin (``-p`` names it): a plugin that
#: reorders tests or reseeds ``random`` (pytest-randomly, -random-order) would change what is measured, and
#: hypothesis's imported hypothesis and trio as an interrupted suite ended, a second before it could exit
SUITE_ENV = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


def suite_command(out):
    """The child pytest command line for a results folder (run with ``SUITE_ENV``)."""
    bench_dir = os.path.dirname(os.path.abspath(__file__))  # the suite's own room: conftest.py beside it
    out = os.path.abspath(out)
    return [
        sys.executable, "-m", "pytest", os.path.join(bench_dir, SUITE_FILE),
        "-p", "pytest_benchmark.plugin", "-p", "no:cacheprovider", "-o", "addopts=", "--import-mode=importlib", "-q",
        "--rootdir", bench_dir,
        "--benchmark-json", os.path.join(out, "pytest-benchmark.json"),
        "--benchmark-storage", "file://" + os.path.join(out, "benchmarks"),
        "--benchmark-save", "sockbench",
        "--benchmark-columns", "min,median,max,stddev,ops,rounds",
        "--benchmark-group-by", "group",
    ]


def suite_env(out, status_fd):
    """The child pytest's environment: ours less any outer pytest-xdist variables, plus ``SUITE_ENV`` and the run's.

    The suite is a pytest session of its own; pytest-benchmark switches itself
    off when it sees ``PYTEST_XDIST_WORKER`` (a run started from a test under
    xdist), which would leave the run without ``pytest-benchmark.json``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
    env.update(SUITE_ENV)
    env.update({ENV_PLAN: os.path.abspath(os.path.join(out, "plan.json")), ENV_OUT: os.path.abspath(out),
                ENV_STATUS_FD: str(status_fd)})
    return env


def _prepare_out(out):
    out = out or os.path.join("results", folder_stamp())
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise UsageError(f"--out {out} is a file, not a folder")
        if os.listdir(out):
            raise UsageError(f"{out} already holds files; pick an empty or new --out folder")
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise SockbenchError(f"cannot create the results folder {out}: {e.strerror}") from None
    try:
        check_writable(os.path.join(out, "meta.json"), "--out")
    except SockbenchError:
        if created:
            os.rmdir(out)  # empty: it was made just now
        raise
    return out


#: a one-line error of sockbench's as pytest shows it in the log (the ``E`` line of a failed test)
_LOG_ERROR = re.compile(r"^E +(?:[\w.]+\.)?(?:SockbenchError|UsageError|SchemaError): (.+)$")


def _log_reason(log_path):
    """The first one-line sockbench error in the suite's log (what stopped a load run), or None."""
    try:
        with open(log_path, errors="replace") as f:
            for line in f:
                m = _LOG_ERROR.match(line.rstrip("\n"))
                if m:
                    return m.group(1).strip()
    except OSError:
        return None
    return None


def _written(path, write, *args):
    """``write(*args)`` for the run's own file ``path``; a failure (a full disk) is one line naming it."""
    try:
        write(*args)
    except OSError as e:
        raise SockbenchError(f"cannot write {path}: {e.strerror or e}") from None


class _Tail:
    """Read the events the suite appends to progress.jsonl."""

    def __init__(self, path):
        self.path = path
        self.pos = 0
        self.buf = b""

    def read(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return []
        self.pos += len(data)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        out = []
        for line in lines:
            try:
                ev = parse(json.loads(line))
            except ValueError:
                continue
            if ev is not None:
                out.append(ev)
        return out


def _fmt_left(s):
    s = max(0, int(round(s)))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _fmt_figure(value, figure):
    if value is None:
        return f"n/a {figure}"
    return f"{value:,.0f} {figure}" if abs(value) >= 100 else f"{value:.3g} {figure}"


class _Follow:
    """What the display shows of the suite, updated from the events of progress.jsonl."""

    def __init__(self, plan, live, started=None):
        self.plan = plan
        self.live = live
        cells = plan.cells()
        self.n_cells = len(cells)
        self.descs = {c.id: c.describe() for c in cells}
        #: each cell's share of the work: its minimum rounds' estimate
        self.weights = {c.id: plan.cell_estimate_s(c) for c in cells}
        self.total_weight = plan.min_estimate_s()
        self.cells_done = 0
        self.done = set()
        #: kept rounds per cell so far (the passes spread a cell's rounds over the whole run)
        self.kept = {}
        self.pass_no = 0
        self.runs = 0
        self.remeasured = 0
        self.current = "starting"
        self.lines = []          # cell summaries to print (no terminal), held while a load runs
        self.quiet_until = 0     # CLOCK_MONOTONIC ns: a load window is open until then
        self.started = time.monotonic() if started is None else started

    def on_event(self, ev):
        if isinstance(ev, Window):
            self.quiet_until = max(self.quiet_until, int(ev.end_ns))
        elif isinstance(ev, PassStarted):
            self.pass_no = ev.pass_no
            if not self.live:
                self.lines.append(f"pass {ev.pass_no}: {len(ev.order)} cells open, in a random order (seed {ev.seed})")
        elif isinstance(ev, RoundStarted):
            self.current = f"pass {ev.pass_no} [{ev.index + 1}/{self.n_cells}] {ev.desc}"
        elif isinstance(ev, Calibrating):
            self.current = f"calibrating {ev.server} for the open-loop sweep"
        elif isinstance(ev, Calibrated):
            self.runs += 1
            if not self.live:
                self.lines.append(f"{self.runs} runs  calibrated {ev.server}: {_fmt_figure(ev.msgs_per_s, 'msgs/s')}"
                                  + ("" if ev.valid else " INVALID"))
        elif isinstance(ev, RoundDone):
            self.runs += 1
            if ev.kept:
                self.kept[ev.cell] = self.kept.get(ev.cell, 0) + 1
            else:
                self.remeasured += 1
        elif isinstance(ev, RoundSetAside):
            self.kept[ev.cell] = max(0, self.kept.get(ev.cell, 0) - 1)
            self.remeasured += 1
        elif isinstance(ev, CellDone):
            self.cells_done += 1
            self.done.add(ev.cell)
            if not self.live:
                again = f", {ev.remeasured} re-measured" if ev.remeasured else ""
                flags = (" " + " ".join(ev.flags)) if ev.flags else ""
                self.lines.append(f"{self.cells_done}/{self.n_cells} cells  {self.descs.get(ev.cell, ev.cell)}: "
                                  f"{_fmt_figure(ev.median, ev.figure)} (median of {ev.rounds}, interval "
                                  f"{ev.interval}, {ev.stopped}{again}){flags}")

    def _progress_weight(self):
        """The share of the planned work done: finished cells, and the minimum rounds of the others so far."""
        done = 0.0
        for cell, weight in self.weights.items():
            if cell in self.done:
                done += weight
            else:
                done += weight * min(0.95, self.kept.get(cell, 0) / self.plan.min_rounds)
        return done

    def left_s(self, now=None):
        """The time left: the estimate of the work left, scaled by how the run kept to its estimates."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        done = self._progress_weight()
        pace = elapsed / done if done > 0 and elapsed > 0 else 1.0
        left = max(0.0, self.total_weight - done) * pace
        if self.plan.run_budget_s:
            left = min(left, max(0.0, self.plan.run_budget_s - elapsed))
        return left

    def flush(self, console):
        for line in self.lines:
            console.print(line, highlight=False)
        self.lines = []


def _progress(console, live):
    # rich is imported only when a run starts: `sockbench run --help` and bad input stay quick
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}", table_column=None),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("cells, {task.fields[runs]} runs"),
        TimeElapsedColumn(),
        TextColumn("[cyan]{task.fields[left]} left"),
        console=console,
        disable=not live,
        transient=False,
        auto_refresh=False,  # drawn only between load windows, see _watch
    )


def _watch(child, out, plan, console):
    """Follow the child until it exits; returns True if the user pressed Ctrl-C (or SIGTERM came)."""
    tail = _Tail(os.path.join(out, PROGRESS_FILE))
    live = console.is_terminal
    state = _Follow(plan, live)
    progress = _progress(console, live)
    interrupted = False
    with progress:
        task = progress.add_task(state.current, total=state.n_cells, runs=0, left=_fmt_left(state.left_s()))

        def draw(**fields):
            progress.update(task, description=state.current, **fields)
            if live:
                progress.refresh()

        while True:
            try:
                finished = child.poll() is not None
                for ev in tail.read():
                    state.on_event(ev)
                now = time.monotonic_ns()
                if now < state.quiet_until and not finished:
                    # A load is being measured: drawing a frame costs ~2 ms of a CPU that the server or
                    # the client is using (in a terminal it raised cython's open-loop p99 from ~40 us to
                    # 1-1.7 ms).  Sleep past the window's end instead.
                    time.sleep(min((state.quiet_until - now) / 1e9 + 0.005, 1.0))
                    continue
                state.flush(console)
                draw(completed=state.cells_done, runs=state.runs, left=_fmt_left(state.left_s()))
                if finished:
                    break
                time.sleep(0.2)
            except KeyboardInterrupt:
                if interrupted:
                    continue  # already stopping; a second Ctrl-C changes nothing
                interrupted = True
                state.current = "interrupted: stopping after the round in flight"
                draw()
                _stop_child(child)
    return interrupted


def _stop_child(child):
    if child.poll() is not None:
        return
    try:
        os.kill(child.pid, signal.SIGINT)
    except ProcessLookupError:
        return


def _exited(child, timeout):
    """Wait up to ``timeout`` s for the child to exit, without reaping it (so its pid stays its own)."""
    deadline = time.monotonic() + timeout
    while True:
        if child.returncode is not None:
            return True
        try:
            if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _wait_child(child):
    """Wait for the child to exit (SIGTERM, then SIGKILL, past ``STOP_GRACE_S``), then reap it.

    Before it is reaped, its process group (it leads one: ``start_new_session``) is killed: a server or
    load process still in it lost the parent that would have stopped it.  While the child is unreaped its
    pid, the group's id, cannot name another process.
    """
    for step, wait_s in ((None, STOP_GRACE_S), (signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        if step is not None:
            try:
                os.kill(child.pid, step)
            except ProcessLookupError:
                pass
        if wait_s is None or _exited(child, wait_s):
            break
    if child.returncode is None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is empty: everything in it stopped cleanly
    child.wait()


def _protocols_line(plan):
    served = [n for n in plan.servers if plan.server_protocols(n)]
    if not served:
        return "none"
    return (f"{'/'.join(plan.protocols)} at {format_size(plan.proto_size)} x {plan.proto_conns} conns x "
            f"depth {plan.proto_depth} for {len(served)} server{'s' if len(served) != 1 else ''}")


def _rounds_line(plan):
    if not plan.adaptive:
        return f"{plan.min_rounds} rounds per cell"
    p99 = plan.ci_for("open")
    return (f"{plan.min_rounds}-{plan.max_rounds} rounds per cell, until the 95% interval of the median is within "
            f"±{plan.ci:.0%}" + (f" (open loop's p99: ±{p99:.0%})" if p99 != plan.ci else ""))


def _announce(plan, out, console):
    n_servers = len(plan.servers)
    opens = sorted({plan.round_duration(c) for c in plan.cells() if c.mode == "open"})
    open_s = f", open loop {'/'.join(f'{d:g}' for d in opens)} s" if opens and opens != [plan.duration_s] else ""
    most = plan.max_estimate_s()
    budget = f", at most {_fmt_left(most)}" if most > plan.min_estimate_s() else ""
    console.print(f"sockbench run: {n_servers} server{'s' if n_servers != 1 else ''}, {len(plan.cells())} cells "
                  f"(sizes {', '.join(format_size(s) for s in plan.sizes)}; conns {', '.join(map(str, plan.conns))}; "
                  f"open loop {', '.join(f'{p}%' for p in plan.open_pcts) or 'none'}; "
                  f"protocols {_protocols_line(plan)}"
                  f"{'; transports ' + ', '.join(plan.transports) if plan.transports != ('tcp',) else ''}); "
                  f"{_rounds_line(plan)}, each {plan.warmup_s:g} s warmup + "
                  f"{plan.duration_s:g} s{open_s}; about {_fmt_left(plan.min_estimate_s())}{budget} -> {out}",
                  highlight=False)
    for note in plan.notes():
        console.print(f"note: {note}", highlight=False)
    damon = damon_note(monitors())
    if damon:
        console.print(f"note: {damon}", highlight=False)


class _Signals:
    """While the suite runs, SIGTERM stops it as Ctrl-C does; ``received`` says which signal came first."""

    def __init__(self):
        self.received = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.received is None:
            self.received = signum
        raise KeyboardInterrupt

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _run_suite(out, plan, console, signals):
    """Run the suite as a child pytest, following its progress.

    Returns ``(exit status, interrupted, write failure)``: the last is the suite's one line saying what it
    could not write (``session.WRITE_FAILED_EXIT``), else None.
    """
    # a pipe for the one line saying what the suite could not write: a full disk cannot take it from pytest.log
    status_r, status_w = os.pipe()
    os.set_blocking(status_r, False)  # read once the child is gone: what it said is there, and a stray holder cannot block us
    env = suite_env(out, status_w)
    log_path = os.path.join(out, "pytest.log")
    try:
        log = open(log_path, "wb")
    except OSError as e:
        os.close(status_r)
        os.close(status_w)
        raise SockbenchError(f"cannot write {log_path}: {e.strerror or e}") from None
    with log, os.fdopen(status_r, "rb") as status_pipe:
        try:
            child = subprocess.Popen(suite_command(out), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True, pass_fds=(status_w,), preexec_fn=child_setup())
        finally:
            os.close(status_w)  # the child holds its own copy: the pipe ends when the child does
        try:
            interrupted = _watch(child, out, plan, console)
        except BaseException:
            _stop_child(child)
            _wait_child(child)
            raise
        while True:
            try:
                _wait_child(child)
                break
            except KeyboardInterrupt:
                interrupted = True  # stopping already; wait on
        said = (status_pipe.read() or b"").decode(errors="replace").strip()
    failure = None
    if said or child.returncode == WRITE_FAILED_EXIT:
        failure = said.splitlines()[0] if said else f"the suite could not write into {out}"
    return child.returncode, interrupted or signals.received is not None, failure


def _status(rc, interrupted):
    """The run's status for meta.json: pytest exits 2 when it was interrupted."""
    if interrupted or rc == 2:
        return "interrupted"
    return "complete" if rc == 0 else "failed"


def _print_outcome(rep, status, plan, elapsed_s, console):
    results = rep["results"]
    flagged = {}
    for c in results.cells.values():
        for f in c.flags():
            flagged[f] = flagged.get(f, 0) + 1
    rounds = len(results.results)
    again = sum(c.remeasured for c in results.cells.values())
    console.print(f"{status}: {len(results.cells)} of {len(plan.cells())} cells, {rounds} rounds "
                  f"({again} re-measured) in {elapsed_s:.0f} s", highlight=False)
    if flagged:
        console.print("warnings: " + ", ".join(f"{n} {f.lower()} cell{'s' if n != 1 else ''}" for f, n in sorted(flagged.items()))
                      + " (see the report)", highlight=False)
    console.print(f"report: {rep['html']}", highlight=False, soft_wrap=True)
    console.print(f"        {rep['md']}", highlight=False, soft_wrap=True)


def run_main(plan, out=None, console=None, argv=None, baseline=None, damon_paused=None):
    """Run the suite for ``plan`` into ``out`` (default ``results/<UTC time>``), then the report; ``damon_paused``:
    the DAMON monitors the caller turned off for the run (``sockbench.damon.paused``), recorded in meta.json.

    Returns the exit status: 0 complete, 128 + the signal when interrupted (130 Ctrl-C, 143 SIGTERM),
    1 if the suite failed.
    """
    # deferred: rich, and matplotlib behind the report, cost ~0.5 s to import
    from rich.console import Console

    from sockbench.bench.report.document import build_report

    console = console or Console(soft_wrap=True)
    check_fd_limit(plan)
    out = _prepare_out(out)
    if True in plan.tls and not plan.tls_setting.get("cert"):
        # the servers' certificate, made once per results folder: out/tls/cert.pem and key.pem
        cert, key = ensure_certificate(out)
        plan = dataclasses.replace(plan, tls_setting={**plan.tls_setting, "cert": cert, "key": key})
    plan_path, meta_path = os.path.join(out, "plan.json"), os.path.join(out, "meta.json")
    _written(plan_path, plan.save, plan_path)
    # a baseline is the server the report's ratios are to (``sockbench report`` reads it back)
    _written(meta_path, write_json_atomic, meta_path,
             new_meta(plan, argv, baseline=baseline, **({"damon_paused": list(damon_paused)} if damon_paused else {})))
    _announce(plan, out, console)
    for p in plan.pythons:
        console.print(f"interpreter {p['label']}: {p['version']} ({p['python']})", highlight=False)
    t0 = time.monotonic()
    with _Signals() as signals:
        rc, interrupted, write_failure = _run_suite(out, plan, console, signals)
        status = _status(rc, interrupted)
        raw = os.path.join(out, RAW_DIR)
        runs = [f for f in os.listdir(raw) if f.endswith(".json")] if os.path.isdir(raw) else []
        rounds = [f for f in runs if not is_discarded(f)]
        try:
            update_meta(out, status=status, finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        elapsed_s=round(time.monotonic() - t0, 1), finished_runs=len(runs), finished_rounds=len(rounds),
                        pytest_exit=rc, **({"signal": signal.Signals(signals.received).name} if signals.received else {}))
        except OSError as e:
            write_failure = write_failure or f"cannot write {meta_path}: {e.strerror or e}"
    log_path = os.path.join(out, "pytest.log")
    if write_failure:
        kept = f"the {len(runs)} load run{'s' if len(runs) != 1 else ''} already in {raw} are kept"
        raise SockbenchError(f"{write_failure}; the run stopped there; {kept}"
                             + (f"; `sockbench report {out}` rebuilds the report once there is room" if rounds else ""),
                             exit_code=128 + signals.received if signals.received else 1)
    reason = _log_reason(log_path)
    reason = f"; the first error: {reason}" if reason else ""
    if not rounds:
        raise SockbenchError(f"no round finished ({status}, pytest exit {rc}, {len(runs)} load runs set aside as "
                             f"disturbed){reason}; nothing to report; see {log_path}",
                             exit_code=128 + signals.received if signals.received else 1)
    rep = build_report(out)
    for line in rep["results"].skipped_lines():
        print(f"sockbench: warning: {line}", file=sys.stderr)
    _print_outcome(rep, status, plan, time.monotonic() - t0, console)
    if status == "interrupted":
        console.print(f"interrupted: the report covers the rounds that finished; rebuild it with `sockbench report {out}`",
                      highlight=False, soft_wrap=True)
        return 128 + (signals.received or signal.SIGINT)
    if status == "failed":
        raise SockbenchError(f"the benchmark suite failed (pytest exit {rc}){reason}; the report covers the rounds that "
                             f"finished; see {log_path}")
    return 0

