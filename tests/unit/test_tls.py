"""TLS's parts one at a time: the setting and its options, the certificate, the wording of failures, the registry,
the plan's TLS dimension, the result schema's TLS parts, and the report's TLS section and columns."""

import argparse
import ast
import csv
import dataclasses
import importlib.util
import os
import ssl
import sys

import pytest

from report_fixture import CONNECT_US, TLS_COST_US, make_results
from sockbench.bench.report.document import build_report
from sockbench.bench.report.formats import csv_columns
from sockbench.bench.report.store import load_results
from sockbench.bench.schema import (
    Cell, CellContext, Errors, Latency, LoadResult, Throughput, TlsPart, TlsSetting, Workload,
)
from sockbench.bench.suite.plan import Plan, default_plan, quick_plan
from sockbench.cli import tlsargs
from sockbench.errors import UsageError
from sockbench.servers import registry
from sockbench.servers import tls as T

EXT_TLS = importlib.util.find_spec("sockbench.ext.tls") is not None


# --- the setting and its options ---------------------------------------------------------------------


def test_a_setting_checks_its_version_and_cipher():
    assert T.TlsConfig().check().version == "1.3"
    assert T.TlsConfig(cipher="TLS_AES_128_GCM_SHA256").check().cipher == "TLS_AES_128_GCM_SHA256"
    assert T.TlsConfig(version="1.2", cipher="ECDHE-ECDSA-AES128-GCM-SHA256").check()
    with pytest.raises(UsageError, match="bad --tls-version '1.1'"):
        T.TlsConfig(version="1.1").check()
    with pytest.raises(UsageError, match="for TLS 1.3"):
        T.TlsConfig(cipher="ECDHE-ECDSA-AES128-GCM-SHA256").check()
    with pytest.raises(UsageError, match="selects no TLS 1.2 cipher"):
        T.TlsConfig(version="1.2", cipher="NO-SUCH-CIPHER").check()
    with pytest.raises(UsageError, match="--tls-handshake-timeout"):
        T.TlsConfig(handshake_timeout_s=0).check()


def test_server_args_are_what_serve_reads_back():
    cfg = T.TlsConfig(cert="/c.pem", key="/k.pem", version="1.2", cipher="AES128-GCM-SHA256", handshake_timeout_s=3)
    p = argparse.ArgumentParser()
    p.add_argument("name")
    tlsargs.add_arguments(p, "serve")
    back = tlsargs.config(p.parse_args(["x", *cfg.server_args()]), "serve")
    assert back == cfg
    assert T.TlsConfig().server_args() == ["--tls", "--tls-version", "1.3"]


def _parse(side, *argv):
    p = argparse.ArgumentParser()
    tlsargs.add_arguments(p, side)
    return tlsargs.config(p.parse_args(list(argv)), side)


def test_the_options_apply_with_tls_only():
    assert _parse("serve") is None
    with pytest.raises(UsageError, match="--tls-cipher applies with --tls"):
        _parse("serve", "--tls-cipher", "TLS_AES_128_GCM_SHA256")
    with pytest.raises(UsageError, match="--cert applies with --tls on"):
        _parse("run", "--cert", "c.pem", "--key", "k.pem")
    with pytest.raises(UsageError, match="--cert and --key go together"):
        _parse("load", "--tls", "--cert", "c.pem")
    assert _parse("load", "--tls", "--tls-resumption", "on").resumption is True
    assert _parse("serve", "--tls").resumption is False
    assert _parse("run", "--tls", "off") is None
    assert _parse("run", "--tls", "off", "on").version == "1.3"
    with pytest.raises(UsageError, match="use on or off"):
        tlsargs.parse_on_off("maybe", name="--tls")


# --- the certificate ---------------------------------------------------------------------------------


def _check_pair(cert, key):
    T.check_files(cert, key)
    assert os.stat(key).st_mode & 0o077 == 0, "the key is private"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    info = ssl._ssl._test_decode_cert(cert)
    assert ("commonName", "localhost") in [x for rdn in info["subject"] for x in rdn]
    assert ("IP Address", "127.0.0.1") in info["subjectAltName"]


@pytest.mark.skipif(not EXT_TLS, reason="sockbench.ext.tls is not built here (no OpenSSL headers)")
def test_the_certificate_is_made_once_per_folder(tmp_path):
    cert, key = T.ensure_certificate(str(tmp_path))
    assert (cert, key) == T.certificate_paths(str(tmp_path))
    _check_pair(cert, key)
    before = open(cert).read()
    assert T.ensure_certificate(str(tmp_path)) == (cert, key)
    assert open(cert).read() == before, "made once: a second call reuses the pair"


def test_without_the_extension_the_openssl_command_makes_it(tmp_path, monkeypatch):
    if T.shutil.which("openssl") is None:
        pytest.skip("no openssl command here")
    monkeypatch.setitem(sys.modules, "sockbench.ext.tls", None)  # an import of it now fails, as without the build
    cert, key = T.ensure_certificate(str(tmp_path))
    _check_pair(cert, key)


def test_without_either_a_certificate_is_one_line_saying_what_to_give(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "sockbench.ext.tls", None)
    monkeypatch.setattr(T.shutil, "which", lambda name: None)
    with pytest.raises(T.SockbenchError, match="give --cert and --key"):
        T.ensure_certificate(str(tmp_path))
    assert not os.path.exists(T.certificate_paths(str(tmp_path))[0])


def test_bad_files_are_one_usage_line_each(tmp_path):
    cert, key = T.ensure_certificate(str(tmp_path / "a"))
    _, other = T.ensure_certificate(str(tmp_path / "b"))
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    cases = [((str(tmp_path / "none.pem"), key), "no such file"), ((str(junk), key), "is not a PEM certificate"),
             ((cert, str(junk)), "is not a PEM private key"), ((cert, other), "does not match the certificate"),
             ((str(tmp_path), key), "is a directory"), ((cert, None), "--cert and --key go together")]
    for (c, k), says in cases:
        with pytest.raises(UsageError, match=says):
            T.check_files(c, k)


# --- the wording of a peer's failure -----------------------------------------------------------------


def _ssl_error(reason):
    e = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()} (_ssl.c:1006)")
    e.reason = reason
    e.library = "SSL"
    return e


def test_failures_are_worded_as_openssl_words_them():
    assert T.handshake_failure(_ssl_error("WRONG_VERSION_NUMBER")) == "TLS handshake failed: wrong version number"
    assert T.handshake_failure(_ssl_error("HTTP_REQUEST")) == "TLS handshake failed: http request"
    assert T.timeout_reason(0.5) == "TLS handshake not complete within 0.5 s (--tls-handshake-timeout)"


def test_a_peer_that_went_away_is_quiet():
    assert T.is_quiet(ssl.SSLEOFError(8, "EOF occurred in violation of protocol"))
    assert T.is_quiet(ConnectionResetError())
    assert T.is_quiet(_ssl_error("UNEXPECTED_EOF_WHILE_READING"))
    assert not T.is_quiet(_ssl_error("WRONG_VERSION_NUMBER"))


# --- the registry --------------------------------------------------------------------------------------


def test_the_registry_records_which_servers_serve_tls():
    names = registry.tls_names()
    assert {"blocking", "selectors", "asyncio-protocol", "uvloop", "cython"} <= set(names)
    for name in names:
        spec = registry.get(name)
        assert spec.tls and set(spec.tls) <= set(spec.protocols)
    assert registry.get("cython").tls == ("raw",), "the C core serves raw over TLS"
    assert registry.get("asyncio-streams").tls_half_close_gap, "its library's gap is recorded"
    with pytest.raises(UsageError, match="--tls applies to tcp, tcp6, unix"):
        registry.get("selectors").check_tls("raw", "udp")
    with pytest.raises(UsageError, match="speaks raw over TLS, not --protocol json"):
        registry.get("cython").check_tls("json", "tcp")


def test_a_server_without_its_tls_build_says_so(monkeypatch):
    spec = dataclasses.replace(registry.get("cython"), tls_requires=("sockbench.ext.no_such_module",))
    ok, why = spec.tls_availability()
    assert not ok and "TLS not built" in why and "libssl-dev" in why
    with pytest.raises(UsageError, match="TLS not built"):
        spec.check_tls()


# --- the plan ------------------------------------------------------------------------------------------


def test_tls_is_a_dimension_of_the_matrix_with_a_section_of_its_own():
    plan = default_plan(["cython", "selectors"], tls=(False, True), serves_tls={"cython": True, "selectors": False},
                        transports=("tcp", "udp"))
    ids = [c.id for c in plan.cells()]
    assert "cython:closed-64B-c100-tls" in ids and "cython:open-64B-c100-50pct-tls" in ids
    assert "cython:closed-64B-c100-json" in ids and "cython:closed-64B-c100-json-tls" not in ids, \
        "the load speaks raw over TLS"
    assert {"cython:closed-16KiB-c10", "cython:closed-16KiB-c10-tls", "cython:connect-64B-c10",
            "cython:connect-64B-c10-tls", "cython:connect-64B-c10-tls-resumed"} <= set(ids)
    assert not any(i.endswith("-udp-tls") or "udp-tls" in i for i in ids), "no TLS over udp"
    assert not any(i.startswith("selectors:") and "tls" in i for i in ids), "nor for a server without it"
    assert len(ids) == len(set(ids))
    assert any("selectors serves no TLS here" in n for n in plan.notes())
    plain = default_plan(["cython"])
    assert not any(c.tls for c in plain.cells()) and plain.cells() == default_plan(["cython"], tls=(False,)).cells()


def test_the_plan_round_trips_with_its_tls_setting(tmp_path):
    plan = quick_plan(["uvloop"], tls=(True,), tls_setting={"version": "1.2", "cipher": None, "cert": "c", "key": "k"},
                      handshake_resumption=(True,))
    plan.save(str(tmp_path / "plan.json"))
    back = Plan.load(str(tmp_path / "plan.json"))
    assert [c.id for c in back.cells()] == [c.id for c in plan.cells()]
    assert back.tls_setting["version"] == "1.2"
    with pytest.raises(UsageError, match="--tls takes off, on"):
        quick_plan(["uvloop"], tls=())


# --- the schema ----------------------------------------------------------------------------------------


def test_a_tls_cell_and_result_round_trip():
    cell = Cell("cython", "connect", 64, 10, tls=True, resumed=True)
    assert cell.id == "cython:connect-64B-c10-tls-resumed"
    assert Cell("cython", "closed", 64, 100, tls=True).workload_id == "closed-64B-c100-tls"
    assert "over TLS, sessions resumed" in cell.title() and "TLS resumed" in cell.describe()
    w = Workload(mode="connect", conns=10, size=64, tls=TlsSetting(version="1.3", resumption=True))
    part = TlsPart(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", group="x25519", handshakes=90, resumed=81,
                   handshakes_per_s=450.0)
    r = LoadResult(server="cython", workload=w, throughput=Throughput(msgs_per_s=450.0), latency_us=Latency(),
                   errors=Errors(), valid=True, tls=part)
    r = r.with_cell(CellContext.of(cell, 1, None, 0))
    back = LoadResult.from_json(r.to_json())
    assert back.tls == part and back.workload.tls == w.tls and back.identity() == cell
    assert part.resumed_share == pytest.approx(0.9)
    plain = dataclasses.replace(r, tls=None, workload=dataclasses.replace(w, tls=None), cell=None)
    d = plain.to_json()
    assert "tls" not in d and "tls" not in d["workload"], "a plain result keeps its old shape"
    assert LoadResult.from_json(d).identity().tls is False


# --- the report ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_folder(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tls_report"))
    plan = Plan(servers=("selectors", "uvloop"), sizes=(64,), conns=(100,), open_pcts=(), protocols=(),
                duration_s=1.0, warmup_s=0.2, interval_s=0.1, tls=(False, True))
    make_results(path, plan=plan, rounds=6)
    return path, build_report(path)


def test_the_report_prices_tls_per_message_and_per_handshake(tls_folder):
    path, rep = tls_folder
    section = rep["sections"]["tls"]
    assert section is not None
    rows = {(r[0], r[1]): r for r, _, _ in section.tax_rows}
    assert set(rows) == {(s, w) for s in ("selectors", "uvloop") for w in ("100 × 64 B", "10 × 16 KiB")}
    tax = float(rows[("uvloop", "100 × 64 B")][8])
    assert tax == pytest.approx(TLS_COST_US["uvloop"], rel=0.1), "the tax in µs is the TLS cell's CPU less the plain one's"
    hs = {r[0]: r for r, _, _ in section.handshake_rows}
    assert float(hs["uvloop"][5].replace(",", "")) == pytest.approx(CONNECT_US["full"], rel=0.05)
    assert float(hs["uvloop"][6].replace(",", "")) == pytest.approx(CONNECT_US["resumed"], rel=0.05)
    assert "TLSv1.3" in hs["uvloop"][7]
    md = open(rep["md"]).read()
    assert "## TLS" in md and "What TLS costs per message" in md and "Handshakes" in md
    assert "TLS costs the server" in md and "A full TLS handshake costs the server" in md
    assert "tls.png" in rep["dimension_plots"] and os.path.exists(os.path.join(path, "plots", "tls.png"))


def test_the_summary_compares_plain_servers_and_csv_carries_tls(tls_folder):
    path, rep = tls_folder
    results = load_results(path)
    assert results.has_tls()
    assert not any(c.cell.tls for c in results.cells.values() if results.in_base(c)), "the summary stays plain"
    for col in ("tls", "resumed", "tls_version", "tls_cipher", "handshakes_per_s", "resumed_share"):
        assert col in csv_columns()
    with open(os.path.join(path, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    resumed = [r for r in rows if r["resumed"] == "true"]
    assert resumed and all(r["tls_version"] == "TLSv1.3" and float(r["resumed_share"]) == 1.0 for r in resumed)
    assert all(r["tls_version"] == "" for r in rows if r["tls"] == "false")


def test_a_run_without_tls_has_no_tls_section(tmp_path):
    plan = Plan(servers=("selectors",), sizes=(64,), conns=(100,), open_pcts=(), protocols=(), duration_s=1.0,
                warmup_s=0.2, interval_s=0.1)
    rep = build_report(make_results(str(tmp_path), plan=plan, rounds=6))
    assert rep["sections"]["tls"] is None and "## TLS" not in open(rep["md"]).read()


# --- the build without OpenSSL ------------------------------------------------------------------------


def _setup_probe():
    """setup.py's ``openssl_found`` and what it needs, read out of setup.py (importing it would run the build)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    wanted = {"openssl_found", "_OPENSSL_PROBE", "TLS_LIBRARIES", "TLS_MODULES", "TLS_MISSING"}
    body = [n for n in tree.body if (isinstance(n, ast.FunctionDef) and n.name in wanted)
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in wanted for t in n.targets))]
    ns = {"os": os}
    exec(compile(ast.Module(body=body, type_ignores=[]), "setup.py", "exec"), ns)
    return ns


def test_setup_leaves_the_tls_modules_out_where_openssl_does_not_link(monkeypatch):
    ns = _setup_probe()
    monkeypatch.setenv("CC", "false")  # a compiler that compiles nothing: as a machine without libssl-dev
    assert ns["openssl_found"]() is False
    assert set(ns["TLS_MODULES"]) == {"tls", "tls_echo", "tlsgen"}
    assert "apt-get install libssl-dev" in ns["TLS_MISSING"] and "\n" not in ns["TLS_MISSING"]
