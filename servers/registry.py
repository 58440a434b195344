"""The one registry of echo servers: a name, and how to start it.

The command line (``sockbench serve`` / ``sockbench servers``), the load
harness and the conformance suite all read this table, so a server added here
is served, benchmarked and tested with no other change.

Every server module exposes one function::

    serve(listener: socket.socket, announce: Callable[[], None], options: dict) -> None

``listener`` is already bound and listening.  ``serve`` installs its own
SIGTERM/SIGINT handling, calls ``announce()`` exactly once when it is ready to
accept (that prints the ready line), serves until one of those signals arrives,
closes the listener and every connection, and returns.  ``listener`` is a
TCP (IPv4 or IPv6) or a unix socket: the same code serves them all
(``contract.set_nodelay`` knows where Nagle applies).

A server with a TLS form (``tls`` in its line: the protocols it speaks over
TLS) finds ``options["tls"]``, a ``servers.tls.TlsConfig``, when it is asked
to serve TLS, and builds its context from it; it then serves TLS over the
same listener, and announces nothing different (the contract adds ``"tls"``
to the ready line).

A server with a datagram form (``"udp"`` in its ``transports``) also exposes::

    serve_datagram(sock: socket.socket, announce: Callable[[], None], options: dict) -> None

``sock`` is a bound SOCK_DGRAM socket; the stop signals and ``announce`` are
as for ``serve``.

Plugins: a package registers servers of its own through the entry-point group
``sockbench.servers`` (``ENTRY_POINT_GROUP``), one entry point per server,
named as the server and pointing at its record: a ``ServerSpec`` (its
``module`` the full module name), a dict of the same fields (``name`` may be
left out), or a function that returns either.  For example, in the plugin's
``pyproject.toml``::

    [project.entry-points."sockbench.servers"]
    ring = "sockbench_ring:SERVER"

Once installed, the server is listed, served, measured and reported like a
built-in one: ``SERVERS`` holds both.  Plugins are looked for only when a name
is not built in or the whole table is read, so ``sockbench serve`` of a
built-in server never pays for the scan.  A plugin that cannot be imported,
whose record is malformed, or whose name is taken (a built-in's or an earlier
plugin's, in the order of distribution and entry-point names) is left out and
reported in one warning line (``plugin_problems``); the others still work.
"""

import importlib
import importlib.util
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from sockbench.endpoints import STREAM_TRANSPORTS, TRANSPORTS
from sockbench.errors import UsageError
from sockbench.servers.protocols import PROTOCOLS as ALL_PROTOCOLS
# the cython server's TLS is OpenSSL from C: built only where OpenSSL's headers were found
from sockbench.servers.tls import BUILD_HINT as TLS_BUILD_HINT

__all__ = ["ServerSpec", "SERVERS", "BUILTIN", "ALL_PROTOCOLS", "ENTRY_POINT_GROUP", "get", "names", "available_names",
           "plugin_problems", "set_warning", "is_builtin", "valid_name", "tls_names"]
#: the entry-point group through which a package registers servers
ENTRY_POINT_GROUP = "sockbench.servers"
#: what a server's name may be: it names report rows, results files and cell ids (``server:workload``)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
#: a ``kernel_check``: a module's full dotted name, a colon, a function's name
_KERNEL_CHECK_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")

BUILD_HINT = "pip install -e .  (needs a C compiler and Cython)"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    module: str
    summary: str
    #: modules that must import for the server to run here (e.g. ``uvloop``)
    requires: tuple = field(default=())
    #: set for servers compiled from ext/: the line shown when the build is missing
    build_hint: str = ""
    #: the wire protocols it speaks (``sockbench serve NAME --protocol P``); see servers/protocols.py
    protocols: tuple = ("raw",)
    #: the transports it serves (``sockbench serve NAME --transport T``); see sockbench/endpoints.py
    transports: tuple = STREAM_TRANSPORTS
    #: set for servers whose library is an optional dependency: the ``sockbench[EXTRA]`` that installs it
    extra: str = ""
    #: the distribution that registered it through ``ENTRY_POINT_GROUP`` ("" for a built-in server)
    plugin: str = ""
    #: the wire protocols it speaks over TLS (``sockbench serve NAME --tls``; see servers/tls.py); empty: no TLS
    tls: tuple = ()
    #: modules that must import for its TLS to run here (the cython server's OpenSSL core)
    tls_requires: tuple = ()
    #: why its TLS cannot complete a half-close (the peer's close_notify, then the echo of what came before it),
    #: when its library cannot; "" when it can
    tls_half_close_gap: str = ""
    #: set for servers that need something of the kernel: ``"module:function"`` (a full module name), a function
    #: returning ``(ok, reason)`` that asks the kernel (``cython-uring``: whether io_uring may be used here); a
    #: plugin may name its own
    kernel_check: str = ""

    def availability(self):
        """Return ``(True, "available")`` or ``(False, reason)``; never raises."""
        if self.plugin:
            try:
                found = importlib.util.find_spec(self.module) is not None
            except (ImportError, ValueError) as e:
                return False, f"plugin module {self.module!r} cannot be imported: {e}"
            if not found:
                return False, f"plugin module {self.module!r} is not installed (plugin {self.plugin})"
        for mod in self.requires:
            if importlib.util.find_spec(mod) is None:
                if self.build_hint:
                    return False, f"not built (build it with: {self.build_hint})"
                if self.extra:
                    return False, f"not installed: pip install 'sockbench[{self.extra}]'"
                return False, f"missing module {mod!r} (pip install {mod.split('.')[0]})"
        if self.kernel_check:
            return self._ask_kernel()
        return True, "available"

    def _ask_kernel(self):
        """``kernel_check``'s answer, or why it could not be asked (a plugin's check must not take the table down)."""
        module, _, function = self.kernel_check.partition(":")
        try:
            ok, why = getattr(importlib.import_module(module), function)()
        except Exception as e:
            return False, f"its kernel check {self.kernel_check!r} failed: {type(e).__name__}: {str(e)[:200]}"
        return bool(ok), str(why)

    @property
    def serves_tls(self):
        """True when the server has a TLS form (built here or not: ``tls_availability`` says)."""
        return bool(self.tls)

    def tls_availability(self):
        """``(True, "available")``, or ``(False, reason)`` when it has no TLS form or its TLS is not built here."""
        if not self.tls:
            return False, "no TLS form"
        ok, why = self.availability()
        if not ok:
            return ok, why
        for mod in self.tls_requires:
            if importlib.util.find_spec(mod) is None:
                return False, f"TLS not built ({TLS_BUILD_HINT})"
        return True, "available"

    def check_tls(self, protocol="raw", transport="tcp"):
        """A one-line usage error unless this server serves ``protocol`` over TLS on ``transport`` here."""
        if transport not in STREAM_TRANSPORTS:
            raise UsageError(f"--tls applies to {', '.join(STREAM_TRANSPORTS)}, not --transport {transport}", exit_code=2)
        if not self.tls:
            raise UsageError(f"server {self.name!r} has no TLS form", exit_code=2)
        ok, why = self.tls_availability()
        if not ok:
            raise UsageError(f"server {self.name!r}: {why}", exit_code=2)
        if protocol not in self.tls:
            raise UsageError(f"server {self.name!r} speaks {', '.join(self.tls)} over TLS, not --protocol {protocol}",
                             exit_code=2)

    def check_transport(self, transport):
        """``transport`` if this server serves it; otherwise a one-line usage error that lists what it serves."""
        if transport not in TRANSPORTS:
            raise UsageError(f"unknown transport {transport!r}; use one of {', '.join(TRANSPORTS)}", exit_code=2)
        if transport not in self.transports:
            raise UsageError(f"server {self.name!r} does not serve --transport {transport}; it serves "
                             f"{', '.join(self.transports)}", exit_code=2)
        return transport

    def load(self, transport="tcp"):
        """Import the server module and return its ``serve`` function (``serve_datagram`` for udp)."""
        self.check_transport(transport)
        ok, why = self.availability()
        if not ok:
            raise UsageError(f"server {self.name!r}: {why}", exit_code=2)
        module = importlib.import_module(self.module)
        fn = getattr(module, "serve_datagram" if transport == "udp" else "serve", None)
        if not callable(fn):
            raise UsageError(f"server {self.name!r}: module {self.module} has no "
                             f"{'serve_datagram' if transport == 'udp' else 'serve'}() (see sockbench.servers.registry)",
                             exit_code=2)
        return fn


def _spec(name, module, summary, requires=(), build_hint="", protocols=("raw",), transports=STREAM_TRANSPORTS, extra="",
          tls=None, tls_requires=(), tls_half_close_gap="", kernel_check=""):
    """A registry line; ``tls`` defaults to every protocol the server speaks (its stream forms all serve TLS)."""
    return ServerSpec(name, "sockbench.servers." + module, summary, tuple(requires), build_hint, tuple(protocols),
                      tuple(transports), extra, tls=tuple(protocols if tls is None else tls),
                      tls_requires=tuple(tls_requires), tls_half_close_gap=tls_half_close_gap,
                      kernel_check=kernel_check)


#: asyncio's TLS transport (``sslproto``, uvloop's design since Python 3.11) starts its own shutdown when the
#: peer's close_notify arrives and drops what is written after it; a streams handler that has not yet echoed what
#: its StreamReader holds then loses that echo (a protocol echoes inside data_received, before the shutdown)
_ASYNCIO_STREAMS_TLS_HALF_CLOSE = ("asyncio's TLS transport shuts down on the peer's close_notify and drops the "
                                   "writes after it: the echo of what the StreamReader still holds is lost")


#: the transports of a server with a datagram form (``serve_datagram``)
WITH_UDP = STREAM_TRANSPORTS + ("udp",)

#: The built-in servers.  Insertion order is display order: from the simplest model to the fastest.
BUILTIN = {
    s.name: s
    for s in (
        _spec("blocking", "blocking_echo", "blocking sockets, one thread per connection", protocols=ALL_PROTOCOLS,
              transports=WITH_UDP),
        _spec("socketserver", "socketserver_echo", "socketserver.ThreadingTCPServer + StreamRequestHandler, a thread per connection",
              protocols=ALL_PROTOCOLS, transports=STREAM_TRANSPORTS),
        _spec("selectors", "selectors_echo", "one thread, non-blocking sockets, selectors.DefaultSelector", protocols=ALL_PROTOCOLS,
              transports=WITH_UDP),
        _spec("asyncio-streams", "asyncio_streams_echo", "asyncio.start_server, StreamReader/StreamWriter, await drain()", protocols=ALL_PROTOCOLS,
              tls_half_close_gap=_ASYNCIO_STREAMS_TLS_HALF_CLOSE),
        _spec("asyncio-protocol", "asyncio_protocol_echo", "asyncio.Protocol with write flow control", protocols=ALL_PROTOCOLS,
              transports=WITH_UDP),
        _spec("asyncio-sockets", "asyncio_sockets_echo", "asyncio's loop.sock_accept/sock_recv_into/sock_sendall, a task per connection",
              protocols=ALL_PROTOCOLS, transports=STREAM_TRANSPORTS),
        _spec("trio", "trio_echo", "trio.serve_listeners, a task per connection in a nursery", requires=("trio",),
              protocols=ALL_PROTOCOLS, transports=STREAM_TRANSPORTS, extra="trio"),
        _spec("gevent", "gevent_echo", "gevent.server.StreamServer, a greenlet per connection", requires=("gevent",),
              protocols=ALL_PROTOCOLS, transports=STREAM_TRANSPORTS, extra="gevent"),
        _spec("uvloop", "uvloop_echo", "the asyncio-protocol server on uvloop's loop", requires=("uvloop",), protocols=ALL_PROTOCOLS,
              transports=WITH_UDP),
        _spec("cython-protocol", "cython_protocol_echo", "a Cython cdef-class asyncio.BufferedProtocol on uvloop",
              requires=("sockbench.ext.protocol_echo",), build_hint=BUILD_HINT),
        _spec("cython", "cython_echo", "Cython: level-triggered epoll loop in C, without the GIL",
              requires=("sockbench.ext.epoll_echo", "sockbench.ext.udp_echo"), build_hint=BUILD_HINT, protocols=ALL_PROTOCOLS,
              transports=WITH_UDP, tls=("raw",), tls_requires=("sockbench.ext.tls_echo",)),
        _spec("cython-uring", "uring_echo",
              "Cython: io_uring loop in C, without the GIL (multishot accept and receive, provided buffer ring)",
              requires=("sockbench.ext.uring_echo", "sockbench.ext.uringprobe"), build_hint=BUILD_HINT,
              protocols=ALL_PROTOCOLS, tls=(), kernel_check="sockbench.servers.iouring:availability"),
    )
}


def valid_name(name):
    """True when ``name`` can name a server (see ``_NAME_RE``)."""
    return isinstance(name, str) and bool(_NAME_RE.match(name))


def _warn_stderr(line):
    print(f"sockbench: warning: {line}", file=sys.stderr, flush=True)


_warning = _warn_stderr


def set_warning(fn):
    """Where a broken plugin's line goes: ``fn(line)``, or None for nowhere (``sockbench serve``: its parent said it)."""
    global _warning
    _warning = fn


_SPEC_FIELDS = {f.name for f in fields(ServerSpec)} - {"plugin"}


def _as_tuple(value, key):
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a list of names, not {value!r}")
    return tuple(value)


def _plugin_spec(ep_name, obj, dist):
    """A plugin's record as a ``ServerSpec``, checked; a ``ValueError`` says what is wrong with it."""
    if callable(obj) and not isinstance(obj, ServerSpec):
        obj = obj()
    if isinstance(obj, ServerSpec):
        obj = {f: getattr(obj, f) for f in _SPEC_FIELDS}
    if not isinstance(obj, dict):
        raise ValueError(f"it is a {type(obj).__name__}, not a ServerSpec or a dict of its fields")
    unknown = sorted(set(obj) - _SPEC_FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(_SPEC_FIELDS))}")
    name = obj.get("name", ep_name)
    if name != ep_name:
        raise ValueError(f"its name {name!r} is not the entry point's, {ep_name!r}")
    if not valid_name(name):
        raise ValueError(f"bad name {name!r}: use 1-64 letters, digits, '.', '_', '+' or '-'")
    module = obj.get("module")
    if not isinstance(module, str) or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"module must be a module's full dotted name, not {module!r}")
    protocols = _as_tuple(obj.get("protocols", ("raw",)), "protocols")
    bad = [p for p in protocols if p not in ALL_PROTOCOLS]
    if bad or "raw" not in protocols:
        raise ValueError(f"protocols must include raw and be among {', '.join(ALL_PROTOCOLS)}, not {list(protocols)}")
    transports = _as_tuple(obj.get("transports", STREAM_TRANSPORTS), "transports")
    bad = [t for t in transports if t not in TRANSPORTS]
    if bad or not transports:
        raise ValueError(f"transports must be among {', '.join(TRANSPORTS)}, not {list(transports)}")
    summary = obj.get("summary", "")
    for key in ("summary", "build_hint", "extra"):
        if not isinstance(obj.get(key, ""), str):
            raise ValueError(f"{key} must be a string")
    kernel_check = obj.get("kernel_check", "")
    if not isinstance(kernel_check, str) or (kernel_check and not _KERNEL_CHECK_RE.match(kernel_check)):
        raise ValueError(f"kernel_check must be \"module:function\" (a function returning (ok, reason)), "
                         f"not {kernel_check!r}")
    tls = _as_tuple(obj.get("tls", ()), "tls")
    if any(p not in protocols for p in tls):
        raise ValueError(f"tls must be among its protocols ({', '.join(protocols)}), not {list(tls)}")
    return ServerSpec(name=name, module=module, summary=summary or f"plugin from {dist}",
                      requires=_as_tuple(obj.get("requires", ()), "requires"), build_hint=obj.get("build_hint", ""),
                      protocols=protocols, transports=transports, extra=obj.get("extra", ""), plugin=dist, tls=tls,
                      tls_requires=_as_tuple(obj.get("tls_requires", ()), "tls_requires"), kernel_check=kernel_check)


def _scan_plugins():
    """``({name: ServerSpec}, [problem lines])`` of the installed plugins; nothing here raises."""
    # deferred: reading every installed distribution's metadata costs tens of ms; a built-in `serve` never needs it
    from importlib.metadata import entry_points

    found, problems = {}, []
    try:
        eps = list(entry_points(group=ENTRY_POINT_GROUP))
    except Exception as e:  # a broken metadata file must not take the built-in servers down
        return found, [f"cannot read the {ENTRY_POINT_GROUP} entry points: {type(e).__name__}: {e}"]

    def dist_of(ep):
        return getattr(getattr(ep, "dist", None), "name", None) or "an unknown distribution"

    for ep in sorted(eps, key=lambda e: (dist_of(e).lower(), e.name)):
        dist = dist_of(ep)
        where = f"server plugin {ep.name!r} from {dist} ({ep.value})"
        try:
            obj = ep.load()
        except BaseException as e:  # an import error, or a plugin that calls sys.exit: one line, never a traceback
            if isinstance(e, KeyboardInterrupt):
                raise
            problems.append(f"{where} cannot be imported: {type(e).__name__}: {str(e)[:200]}; left out")
            continue
        try:
            spec = _plugin_spec(ep.name, obj, dist)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            problems.append(f"{where} has a bad record: {str(e)[:300]}; left out")
            continue
        if spec.name in BUILTIN:
            problems.append(f"{where}: the name {spec.name!r} is a built-in server's; left out")
        elif spec.name in found:
            problems.append(f"{where}: the name {spec.name!r} is taken by {found[spec.name].plugin}'s; left out")
        else:
            found[spec.name] = spec
    return found, problems


class _Servers(Mapping):
    """The built-in servers, then the plugins' (scanned on first need, once per process)."""

    def __init__(self, builtin):
        self._builtin = builtin
        self._plugins = None
        self._problems = []

    def plugins(self):
        if self._plugins is None:
            self._plugins, self._problems = _scan_plugins()
            if _warning is not None:
                for line in self._problems:
                    _warning(line)
        return self._plugins

    def problems(self):
        self.plugins()
        return list(self._problems)

    def __getitem__(self, name):
        if name in self._builtin:
            return self._builtin[name]
        return self.plugins()[name]

    def __contains__(self, name):
        return name in self._builtin or name in self.plugins()

    def __iter__(self):
        yield from self._builtin
        yield from self.plugins()

    def __len__(self):
        return len(self._builtin) + len(self.plugins())


#: every server: the built-in ones (``BUILTIN``), then the installed plugins'
SERVERS = _Servers(BUILTIN)


def plugin_problems():
    """One line per plugin left out (import error, bad record, duplicate name); scans the plugins if not yet done."""
    return SERVERS.problems()


def is_builtin(name):
    return name in BUILTIN


def names():
    return list(SERVERS)


def available_names():
    return [n for n, s in SERVERS.items() if s.availability()[0]]


def tls_names():
    """The servers with a TLS form, in display order."""
    return [n for n, s in SERVERS.items() if s.serves_tls]


def get(name):
    """Look a server up by name; an unknown name is a one-line usage error."""
    try:
        return SERVERS[name]
    except KeyError:
        raise UsageError(
            f"unknown server {name!r}; valid names: {', '.join(SERVERS)}", exit_code=2
        ) from None
