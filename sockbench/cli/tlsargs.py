"""The TLS options of ``serve``, ``load`` and ``run``, spelled once, and their parsing into a ``TlsConfig``.

Why it is built this way: the three commands take the same settings (a
version, a cipher, a certificate and its key, a handshake timeout; the load
also whether connections resume), and a setting must mean the same thing and
fail with the same line in each.  ``add_arguments(p, side)`` adds them
(``side`` "serve", "load", "run" or "check"), ``config(args)`` reads them back into
``sockbench.servers.tls.TlsConfig``, checked (``sockbench check`` takes
``serve``'s options): a version or cipher OpenSSL does
not know, ``--cert`` without ``--key``, or a TLS option without ``--tls`` is
one usage line, exit 2.
"""

from sockbench.errors import UsageError
from sockbench.servers.tls import DEFAULT_VERSION, HANDSHAKE_TIMEOUT_S, VERSIONS, TlsConfig
from sockbench.units import arg, parse_number

__all__ = ["add_arguments", "config", "parse_on_off"]


def parse_on_off(text, name="value"):
    """``on``/``off`` (also yes/no, true/false, 1/0) -> bool."""
    t = str(text).strip().lower()
    if t in ("on", "yes", "true", "1"):
        return True
    if t in ("off", "no", "false", "0"):
        return False
    raise UsageError(f"bad {name} {text!r}; use on or off")


def add_arguments(p, side):
    """The TLS options of ``side`` (``serve``, ``load`` or ``run``); ``run`` takes ``--tls off on`` as a dimension."""
    if side == "run":
        p.add_argument("--tls", nargs="+", type=arg(parse_on_off, "--tls"), metavar="off|on",
                       help="run every stream cell without TLS (off) and/or over TLS (on), as a dimension of the matrix "
                            "(default off; on: the servers with a TLS form, and a TLS section in the report with the "
                            "TLS tax and handshakes per second, full and resumed)")
    else:
        what = {"serve": "serve TLS",
                "check": "run the checks over TLS (a server sockbench starts serves it; udp is left out)"}.get(
            side, "speak TLS to the server (one started by NAME serves it)")
        p.add_argument("--tls", action="store_true", help=f"{what}, over tcp, tcp6 or unix (see `sockbench servers`)")
    p.add_argument("--tls-version", choices=VERSIONS, default=None,
                   help=f"with --tls: the one TLS version both ends use (default {DEFAULT_VERSION})")
    p.add_argument("--tls-cipher", default=None, metavar="NAME",
                   help="with --tls: a TLS 1.3 suite (TLS_AES_128_GCM_SHA256, ...) or, with --tls-version 1.2, an "
                        "OpenSSL cipher list (default: OpenSSL's choice)")
    p.add_argument("--cert", default=None, metavar="PEM",
                   help="with --tls: the server's certificate (default: a self-signed ECDSA P-256 one, made once"
                        + (" per results folder)" if side in ("load", "run") else " for this run)"))
    p.add_argument("--key", default=None, metavar="PEM", help="with --tls: the private key of --cert")
    if side in ("serve", "load", "check"):
        p.add_argument("--tls-handshake-timeout", type=arg(parse_number, "--tls-handshake-timeout", positive=True),
                       default=None, metavar="S",
                       help=f"with --tls: a server closes a connection whose handshake is not complete within S "
                            f"seconds, with one line (default {HANDSHAKE_TIMEOUT_S:g})")
    if side in ("load", "run"):
        p.add_argument("--tls-resumption", type=arg(parse_on_off, "--tls-resumption"), default=None, metavar="on|off",
                       help="connect mode with --tls: each connection resumes the session of the one before it on "
                            "its slot (default off: every handshake is a full one)" if side == "load" else
                            "the handshake cells: which of full (off) and resumed (on) handshakes to measure "
                            "(default both)")


def _given(args, names):
    return [n for n in names if getattr(args, n.replace("-", "_"), None) is not None]


def config(args, side):
    """The ``TlsConfig`` of ``args`` (checked), or None without ``--tls``; for ``run``, the config its TLS cells use."""
    on = args.tls if side != "run" else bool(args.tls and any(args.tls))
    options = ["tls-version", "tls-cipher", "cert", "key", "tls-handshake-timeout", "tls-resumption"]
    if not on:
        stray = _given(args, options)
        if stray:
            need = "--tls on" if side == "run" else "--tls"
            raise UsageError(f"--{stray[0]} applies with {need}")
        return None
    if (args.cert is None) != (args.key is None):
        raise UsageError("--cert and --key go together: give both, or neither (a self-signed pair is made)")
    timeout = getattr(args, "tls_handshake_timeout", None)
    resumption = getattr(args, "tls_resumption", None)
    return TlsConfig(cert=args.cert, key=args.key, version=args.tls_version or DEFAULT_VERSION,
                     cipher=args.tls_cipher, resumption=bool(resumption) if side == "load" else False,
                     handshake_timeout_s=timeout if timeout is not None else HANDSHAKE_TIMEOUT_S).check()
