"""The transports' plumbing: endpoints and targets, the listening socket per transport, the registry's transports.

``listen`` binds loopback and unix sockets in process (nothing leaves the
machine); the unix rules (private directory, stale file, refusals, removal)
are pinned here, and the conformance suite checks every server over each
transport from outside.
"""

import os
import socket
import stat

import pytest

from sockbench.bench.load.spec import LoadSpec
from sockbench.bench.schema import Cell, LoadResult, Workload
from sockbench.endpoints import STREAM_TRANSPORTS, TRANSPORTS, UNIX_PATH_MAX, Endpoint, parse_target
from sockbench.errors import UsageError
from sockbench.servers import contract, registry


# --- endpoints and targets ------------------------------------------------------------------------


@pytest.mark.parametrize("text, endpoint", [
    ("127.0.0.1:5000", Endpoint("tcp", "127.0.0.1", 5000)),
    ("localhost:1", Endpoint("tcp", "localhost", 1)),
    ("[::1]:5000", Endpoint("tcp6", "::1", 5000)),
    ("[fe80::1%lo]:80", Endpoint("tcp6", "fe80::1%lo", 80)),
    ("unix:/tmp/x.sock", Endpoint("unix", path="/tmp/x.sock")),
    ("udp:127.0.0.1:53", Endpoint("udp", "127.0.0.1", 53)),
    ("udp:[::1]:53", Endpoint("udp", "::1", 53)),
    ("tcp6:[::1]:7", Endpoint("tcp6", "::1", 7)),
])
def test_parse_target_reads_every_spelling_and_format_writes_it_back(text, endpoint):
    assert parse_target(text) == endpoint
    assert parse_target(endpoint.format()) == endpoint
    if not text.startswith("tcp6:"):
        assert endpoint.format() == text


@pytest.mark.parametrize("text, transport, endpoint", [
    ("127.0.0.1:53", "udp", Endpoint("udp", "127.0.0.1", 53)),
    ("/run/echo.sock", "unix", Endpoint("unix", path="/run/echo.sock")),
    ("unix:/run/echo.sock", "unix", Endpoint("unix", path="/run/echo.sock")),
    ("[::1]:80", "tcp6", Endpoint("tcp6", "::1", 80)),
    ("[::1]:80", "tcp", Endpoint("tcp6", "::1", 80)),  # tcp takes the family from the address
    ("localhost:80", "tcp6", Endpoint("tcp6", "localhost", 80)),
])
def test_parse_target_with_a_transport(text, transport, endpoint):
    assert parse_target(text, transport) == endpoint


@pytest.mark.parametrize("text, transport, says", [
    ("[::g]:80", None, "'::g' is not an IPv6 address"),
    ("[::1:80", None, "an IPv6 target is [V6]:PORT"),
    ("[::1]80", None, "an IPv6 target is [V6]:PORT"),
    ("::1:80", None, "an IPv6 address goes in brackets: [::1]:80"),
    ("[1.2.3.4]:80", None, "is not an IPv6 address"),
    ("127.0.0.1", None, "use HOST:PORT"),
    ("127.0.0.1:0", None, "use HOST:PORT"),
    ("127.0.0.1:65536", None, "use HOST:PORT"),
    ("unix:", None, "use unix:/PATH"),
    ("unix:/" + "x" * UNIX_PATH_MAX, None, "at most 107 bytes"),
    ("unix:/tmp/a", "tcp", "is a unix socket but --transport is tcp"),
    ("127.0.0.1:80", "unix", "is not a unix socket path; use unix:/PATH"),
    ("127.0.0.1:80", "tcp6", "is an IPv4 address but the transport is tcp6"),
    ("udp:127.0.0.1:80", "tcp", "is udp but --transport is tcp"),
    ("127.0.0.1:80", "sctp", "bad --transport 'sctp'"),
])
def test_a_bad_target_is_one_usage_line(text, transport, says):
    with pytest.raises(UsageError) as info:
        parse_target(text, transport)
    assert says in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_an_endpoint_knows_its_family_socktype_and_sockaddr():
    assert TRANSPORTS == ("tcp", "tcp6", "unix", "udp") and STREAM_TRANSPORTS == TRANSPORTS[:3]
    tcp, tcp6, unix = Endpoint("tcp", port=1), Endpoint("tcp6", port=2), Endpoint("unix", path="/tmp/s")
    udp, udp6 = Endpoint("udp", port=3), Endpoint("udp", "::1", 4)
    assert (tcp.host, tcp6.host, udp.host) == ("127.0.0.1", "::1", "127.0.0.1")
    assert [e.family for e in (tcp, tcp6, unix, udp, udp6)] == [
        socket.AF_INET, socket.AF_INET6, socket.AF_UNIX, socket.AF_INET, socket.AF_INET6]
    assert [e.socktype for e in (tcp, unix, udp)] == [socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_DGRAM]
    assert [e.stream for e in (tcp, tcp6, unix, udp)] == [True, True, True, False]
    assert tcp.sockaddr() == ("127.0.0.1", 1)
    assert tcp6.sockaddr()[:2] == ("::1", 2) and len(tcp6.sockaddr()) == 4
    assert unix.sockaddr() == "/tmp/s"
    assert Endpoint("tcp", "::1", 5).transport == "tcp6"
    with pytest.raises(UsageError):
        Endpoint("unix")
    with pytest.raises(UsageError):
        Endpoint("tcp", path="/tmp/s")


def test_an_endpoint_from_a_ready_line():
    assert Endpoint.from_ready({"event": "ready", "host": "127.0.0.1", "port": 9, "pid": 1}) == Endpoint("tcp", port=9)
    assert Endpoint.from_ready({"transport": "tcp6", "host": "::1", "port": 9}) == Endpoint("tcp6", "::1", 9)
    assert Endpoint.from_ready({"transport": "unix", "path": "/tmp/e.sock"}) == Endpoint("unix", path="/tmp/e.sock")
    assert Endpoint.from_ready({"transport": "udp", "host": "127.0.0.1", "port": 9}).socktype == socket.SOCK_DGRAM


# --- the listening socket, per transport --------------------------------------------------------


def _echo_once(listener, endpoint):
    with socket.socket(endpoint.family, endpoint.socktype) as c:
        c.settimeout(5)
        c.connect(endpoint.sockaddr())
        conn, _ = listener.accept()
        with conn:
            contract.set_nodelay(conn)  # a no-op on AF_UNIX, TCP_NODELAY on TCP
            c.sendall(b"ping")
            conn.sendall(conn.recv(4))
            assert c.recv(4) == b"ping"


@pytest.mark.parametrize("transport", ["tcp", "tcp6"])
def test_listen_tcp_and_tcp6_bind_their_loopback(transport):
    with contract.listen(transport) as listener:
        endpoint = Endpoint.from_sockname(transport, listener.getsockname())
        assert endpoint.host == ("127.0.0.1" if transport == "tcp" else "::1") and endpoint.port > 0
        assert listener.family == endpoint.family
        _echo_once(listener, endpoint)


def test_listen_udp_is_a_bound_datagram_socket():
    with contract.listen("udp") as sock:
        assert sock.type == socket.SOCK_DGRAM
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.sendto(b"x", (host, port))
            sock.settimeout(5)
            assert sock.recvfrom(10)[0] == b"x"


def test_listen_unix_makes_a_private_directory_and_removes_it():
    listener = contract.listen("unix")
    path = listener.getsockname()
    folder = os.path.dirname(path)
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
        _echo_once(listener, Endpoint("unix", path=path))
    finally:
        listener.close()
        contract.remove_socket_file(path)
    assert not os.path.exists(path) and not os.path.exists(folder)


def test_listen_unix_at_a_path_replaces_a_stale_socket(tmp_path):
    path = str(tmp_path / "e.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays; no one listens there
    listener = contract.listen("unix", path=path)
    try:
        _echo_once(listener, Endpoint("unix", path=path))
        with pytest.raises(UsageError, match="is in use: a server listens there"):
            contract.listen("unix", path=path)
    finally:
        listener.close()
        contract.remove_socket_file(path)
    assert not os.path.exists(path) and tmp_path.exists()  # a directory it did not make stays


@pytest.mark.parametrize("make, says", [
    (lambda d: str(d / "missing" / "e.sock"), "does not exist"),
    (lambda d: (d / "f").write_text("x") and str(d / "f"), "exists and is not a socket"),
    (lambda d: str(d / ("x" * 120)), "a unix socket path is at most 107 bytes"),
])
def test_listen_unix_refuses_a_bad_path_in_one_line(tmp_path, make, says):
    path = make(tmp_path)
    with pytest.raises(UsageError) as info:
        contract.listen("unix", path=path)
    assert says in str(info.value) and "\n" not in str(info.value)
    if os.path.isfile(path):
        assert open(path).read() == "x"  # never removed


def test_listen_refuses_options_of_another_transport():
    with pytest.raises(UsageError, match="--path applies to --transport unix"):
        contract.listen("tcp", path="/tmp/x")
    with pytest.raises(UsageError, match="a unix socket takes --path"):
        contract.listen("unix", host="127.0.0.1")
    with pytest.raises(UsageError, match="tcp6 binds an IPv6 one"):
        contract.listen("tcp6", host="127.0.0.1")


def test_set_nodelay_is_a_no_op_on_unix_sockets():
    a, b = socket.socketpair()
    with a, b:
        contract.set_nodelay(a)


# --- the registry, the schema and the load spec ---------------------------------------------------


def test_every_server_serves_the_stream_transports_and_says_which():
    for spec in registry.SERVERS.values():
        assert set(STREAM_TRANSPORTS) <= set(spec.transports) <= set(TRANSPORTS)
    spec = next(s for s in registry.SERVERS.values() if "udp" not in s.transports)
    with pytest.raises(UsageError) as info:
        spec.load("udp")
    assert str(info.value) == (f"server {spec.name!r} does not serve --transport udp; it serves "
                               f"{', '.join(spec.transports)}")
    assert info.value.exit_code == 2
    assert registry.get("selectors").load("unix") is registry.get("selectors").load()


def test_a_cell_keeps_its_id_over_tcp_and_names_another_transport():
    tcp = Cell("cython", "closed", 64, 100)
    assert tcp.transport == "tcp" and tcp.id == "cython:closed-64B-c100"
    for t in ("tcp6", "unix", "udp"):
        c = Cell("cython", "closed", 64, 100, transport=t)
        assert c.id == f"cython:closed-64B-c100-{t}" and t in c.describe() and t in c.title()


def test_a_result_without_a_transport_reads_as_tcp():
    assert Workload.from_json({"mode": "closed", "conns": 1, "size": 64}).transport == "tcp"
    w = Workload(mode="closed", conns=1, size=64, transport="unix")
    assert Workload.from_json(w.to_json()) == w
    with pytest.raises(Exception, match="malformed workload"):
        Workload.from_json({"mode": "closed", "conns": 1, "size": 64, "transport": "ipx"})
    d = {"schema": 2, "server": "s", "workload": w.to_json(), "throughput": {"msgs_per_s": 1.0},
         "latency_us": {}, "errors": {}, "valid": True}
    assert LoadResult.from_json(d).identity() == Cell("s", "closed", 64, 1, transport="unix")


def test_a_load_spec_target_is_an_endpoint():
    spec = LoadSpec(target=("127.0.0.1", 5000))
    assert spec.target == Endpoint("tcp", "127.0.0.1", 5000) and spec.transport == "tcp"
    assert LoadSpec(target=("::1", 5000)).transport == "tcp6"
    spec = LoadSpec(target=Endpoint("unix", path="/tmp/e.sock"))
    assert spec.transport == "unix" and spec.validate() is spec
    with pytest.raises(UsageError, match="is unix but the transport is tcp6"):
        LoadSpec(target=Endpoint("unix", path="/tmp/e.sock"), transport="tcp6").validate()
    with pytest.raises(UsageError, match="does not serve --transport udp"):
        LoadSpec(server="asyncio-streams", transport="udp").validate()
