"""TLS for the stream servers and the load: one configuration, one certificate, one wording of every failure.

Why it is built this way: every server model serves TLS with its own library
(CPython's ``ssl`` for the Python servers, gevent's and trio's wrappers of it,
OpenSSL from C for ``cython`` and the load generator), and a benchmark only
compares them if they all serve the same thing.  So the settings live here
once, as ``TlsConfig``, and every side builds its context from it:

* **Version**: TLS 1.3 unless ``--tls-version 1.2`` asks for 1.2; both ends
  are pinned to the one version, so the version measured is the version asked.
* **Cipher**: ``--tls-cipher`` names an OpenSSL cipher list for 1.2
  (``ECDHE-ECDSA-AES128-GCM-SHA256``) or one 1.3 suite
  (``TLS_AES_128_GCM_SHA256``).  CPython's ``ssl`` cannot restrict a server's
  1.3 suites (``set_ciphers`` covers 1.2 only), but a 1.3 server picks from
  what the client offers, and the load offers only the suite asked for: every
  measured connection uses it, and the result records the suite negotiated.
* **Certificate**: a self-signed ECDSA P-256 certificate and key
  (``ensure_certificate``), made once per results folder and reused by every
  server of the run, or the user's (``--cert``/``--key``).  ECDSA P-256 is
  what certbot issues by default and the cheapest key for a server to sign
  with; the load verifies no certificate (as ``openssl s_time``, wrk and
  h2load do not), so a handshake costs the server what a real client's costs
  it, and the client no more than the protocol demands.
* **Resumption**: a server always offers session tickets, as servers in
  production do; whether a connection resumes is the client's choice
  (``sockbench load --tls-resumption on``), and the load counts the
  handshakes that did.
* **Handshake timeout**: a handshake not complete within
  ``handshake_timeout_s`` (``--tls-handshake-timeout``, 10 s) closes its
  connection with one line: a peer that stops halfway costs that
  connection only, in every model.

Every failure a peer can cause is worded here (``handshake_failure``,
``HANDSHAKE_TIMEOUT``), so that every server logs it alike:
``closing 127.0.0.1:5555: TLS handshake failed: wrong version number``.  A
peer that simply went away during the handshake (end of file, a reset) is
quiet, like a reset elsewhere.  A certificate or key that is missing, not
PEM, or mismatched is one ``UsageError`` line before anything is bound.

``ssl`` is imported where it is used: a server started without ``--tls``
does not load it.
"""

import importlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace

from sockbench.errors import SockbenchError, UsageError

__all__ = [
    "VERSIONS",
    "DEFAULT_VERSION",
    "HANDSHAKE_TIMEOUT_S",
    "TLS13_SUITES",
    "TlsConfig",
    "check_version",
    "check_cipher",
    "check_files",
    "server_context",
    "client_context",
    "ensure_certificate",
    "certificate_paths",
    "handshake_failure",
    "is_quiet",
    "timeout_reason",
    "BUILD_HINT",
]

VERSIONS = ("1.2", "1.3")
DEFAULT_VERSION = "1.3"
#: how long a server waits for a peer to finish its handshake before closing it, with one line
HANDSHAKE_TIMEOUT_S = 10.0
#: the TLS 1.3 cipher suites OpenSSL knows (the CCM ones are off by default but can be asked for)
TLS13_SUITES = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256",
                "TLS_AES_128_CCM_SHA256", "TLS_AES_128_CCM_8_SHA256")
#: what a user does when the C parts (the cython server's TLS, the load over TLS) were built without OpenSSL
BUILD_HINT = "install OpenSSL's headers with apt-get install libssl-dev, then pip install -e ."
#: the file names of a results folder's certificate, under ``tls/``
CERT_NAME, KEY_NAME = "cert.pem", "key.pem"
#: the common name and the names the made certificate is valid for (a client that verifies may use them)
_CN = "localhost"
_SAN = "DNS:localhost,IP:127.0.0.1,IP:::1"


@dataclass(frozen=True)
class TlsConfig:
    """One TLS setting, for a server (``cert``, ``key``) and for the load (``resumption``).

    ``cipher`` None is OpenSSL's default choice; ``resumption`` (the load,
    connect mode): each connection offers the session of the previous one on
    its slot.
    """

    cert: str | None = None
    key: str | None = None
    version: str = DEFAULT_VERSION
    cipher: str | None = None
    resumption: bool = False
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S

    def check(self):
        """This config with its version and cipher checked (a one-line ``UsageError`` otherwise)."""
        check_version(self.version)
        check_cipher(self.version, self.cipher)
        if not self.handshake_timeout_s > 0:
            raise UsageError(f"--tls-handshake-timeout must be > 0 s, not {self.handshake_timeout_s!r}")
        return self

    def with_files(self, cert, key):
        return replace(self, cert=cert, key=key)

    def ready_fields(self):
        """The ready line's ``"tls"`` object: what the server serves."""
        return {"version": self.version, "cipher": self.cipher, "cert": self.cert,
                "handshake_timeout_s": self.handshake_timeout_s}

    def server_args(self):
        """The ``sockbench serve`` arguments that serve this config."""
        args = ["--tls", "--tls-version", self.version]
        if self.cert:
            args += ["--cert", self.cert, "--key", self.key]
        if self.cipher:
            args += ["--tls-cipher", self.cipher]
        if self.handshake_timeout_s != HANDSHAKE_TIMEOUT_S:
            args += ["--tls-handshake-timeout", repr(self.handshake_timeout_s)]
        return args


def check_version(version):
    if version not in VERSIONS:
        raise UsageError(f"bad --tls-version {version!r}; use 1.2 or 1.3")
    return version


def check_cipher(version, cipher):
    """``cipher`` if OpenSSL knows it for ``version``; None stays None (OpenSSL's default)."""
    if cipher is None:
        return None
    if version == "1.3":
        if cipher not in TLS13_SUITES:
            raise UsageError(f"bad --tls-cipher {cipher!r} for TLS 1.3; use one of {', '.join(TLS13_SUITES)} "
                             f"(or --tls-version 1.2 with an OpenSSL cipher list)")
        return cipher
    import ssl  # deferred: only a TLS run loads ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.set_ciphers(cipher)
    except ssl.SSLError:
        raise UsageError(f"bad --tls-cipher {cipher!r}: OpenSSL selects no TLS 1.2 cipher from it; use a name "
                         f"from `openssl ciphers -v`, such as ECDHE-ECDSA-AES128-GCM-SHA256") from None
    return cipher


def _read_head(path, what, option):
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file; give an existing PEM {what}") from None
    except IsADirectoryError:
        raise UsageError(f"{option} {path} is a directory; give a PEM {what} file") from None
    except OSError as e:
        raise UsageError(f"{option} {path}: {e.strerror}") from None


def check_files(cert, key):
    """A one-line ``UsageError`` unless ``cert`` holds a PEM certificate and ``key`` the private key that matches it."""
    import ssl  # deferred: only a TLS run loads ssl

    if not cert or not key:
        raise UsageError("--cert and --key go together: give both, or neither (a self-signed pair is made)")
    text = _read_head(cert, "certificate", "--cert")
    if b"-----BEGIN CERTIFICATE-----" not in text:
        raise UsageError(f"--cert {cert} is not a PEM certificate (no BEGIN CERTIFICATE block)")
    if b"PRIVATE KEY-----" not in _read_head(key, "private key", "--key"):
        raise UsageError(f"--key {key} is not a PEM private key (no BEGIN ... PRIVATE KEY block)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise UsageError(f"--key {key} does not match the certificate {cert}; give the key it was made with") from None
        raise UsageError(f"cannot load --cert {cert} with --key {key}: {_reason(e)}") from None
    except OSError as e:
        raise UsageError(f"cannot load --cert {cert} with --key {key}: {e.strerror or e}") from None


def _pin(ctx, ssl, version):
    v = ssl.TLSVersion.TLSv1_3 if version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.minimum_version = v
    ctx.maximum_version = v


def server_context(cfg, context_class=None):
    """The server's ``SSLContext`` for ``cfg`` (``context_class``: gevent's, or the standard library's).

    The certificate is loaded here, so a bad file is a ``UsageError`` line
    before the server binds.  Session tickets stay on (see the module doc).
    """
    import ssl  # deferred: only a TLS server loads ssl

    check_files(cfg.cert, cfg.key)
    ctx = (context_class or ssl.SSLContext)(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cfg.cert, cfg.key)
    _pin(ctx, ssl, cfg.version)
    if cfg.cipher and cfg.version == "1.2":
        ctx.set_ciphers(cfg.cipher)
    return ctx


def client_context(cfg=None):
    """A client ``SSLContext`` as the load's: ``cfg``'s version and cipher, no certificate verification."""
    import ssl  # deferred: only a TLS client loads ssl

    cfg = cfg or TlsConfig()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _pin(ctx, ssl, cfg.version)
    if cfg.cipher and cfg.version == "1.2":
        ctx.set_ciphers(cfg.cipher)
    return ctx


# --- the certificate --------------------------------------------------------------------------


def certificate_paths(folder):
    """Where a results folder keeps its certificate and key: ``FOLDER/tls/cert.pem`` and ``key.pem``."""
    base = os.path.join(folder, "tls")
    return os.path.join(base, CERT_NAME), os.path.join(base, KEY_NAME)


def ensure_certificate(folder):
    """``(cert, key)`` of ``folder``'s self-signed pair, made now if it is not there yet (once per results folder).

    Made by OpenSSL from C (``sockbench.ext.tls``) when that is built, else by
    the ``openssl`` command; without either, a one-line ``SockbenchError``
    that says what to give instead.  The key is written mode 0600.
    """
    cert, key = certificate_paths(folder)
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    os.makedirs(os.path.dirname(cert), exist_ok=True)
    # written beside, then renamed: two runs that make the pair at once never read half a file
    tmp = tempfile.mkdtemp(prefix=".tls-", dir=os.path.dirname(cert))
    try:
        tcert, tkey = os.path.join(tmp, CERT_NAME), os.path.join(tmp, KEY_NAME)
        _make_pair(tcert, tkey)
        os.replace(tkey, key)
        os.replace(tcert, cert)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cert, key


def _make_pair(cert, key):
    try:
        # deferred: the extension is built only where OpenSSL's headers were found
        ext_tls = importlib.import_module("sockbench.ext.tls")
    except ImportError:
        ext_tls = None
    if ext_tls is not None:
        try:
            ext_tls.make_certificate(cert, key, _CN)
        except OSError as e:
            raise SockbenchError(f"cannot make a TLS certificate in {os.path.dirname(cert)}: {e}") from None
        return
    exe = shutil.which("openssl")
    if exe is None:
        raise SockbenchError(f"cannot make a TLS certificate: TLS is not built here and there is no `openssl` "
                             f"command; give --cert and --key, or {BUILD_HINT}")
    old = os.umask(0o077)
    try:
        r = subprocess.run([exe, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                            "-nodes", "-keyout", key, "-out", cert, "-days", "825", "-subj", f"/CN={_CN}",
                            "-addext", f"subjectAltName={_SAN}"], capture_output=True, text=True, timeout=60)
    finally:
        os.umask(old)
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise SockbenchError(f"cannot make a TLS certificate with `openssl req`: {why}")


# --- the wording of a peer's failure ------------------------------------------------------------

#: OpenSSL reasons that mean the peer went away (end of file, not an attack or a mistake): no line
_QUIET_REASONS = frozenset({"UNEXPECTED_EOF_WHILE_READING", "EOF_IN_VIOLATION_OF_PROTOCOL"})


def _reason(exc):
    """An ``ssl.SSLError``'s reason as OpenSSL's own text spells it (``wrong version number``)."""
    reason = getattr(exc, "reason", None)
    if reason:
        return reason.lower().replace("_", " ")
    text = str(exc.args[1] if len(getattr(exc, "args", ())) > 1 else exc)
    return text.split(" (_ssl.c", 1)[0]


def is_quiet(exc):
    """True when ``exc``, raised by a handshake, only says the peer went away (end of file, a reset)."""
    import ssl  # deferred: only a TLS server gets here

    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError, EOFError, BrokenPipeError)):
        return True
    if isinstance(exc, ssl.SSLError):
        return getattr(exc, "reason", None) in _QUIET_REASONS
    return False


def handshake_failure(exc):
    """``log_closing``'s reason for a failed handshake: ``TLS handshake failed: wrong version number``."""
    import ssl  # deferred: only a TLS server gets here

    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {_reason(exc)}"
    text = str(exc) or type(exc).__name__
    return f"TLS handshake failed: {text}"


def timeout_reason(seconds):
    """``log_closing``'s reason for a handshake that did not complete in time."""
    return f"TLS handshake not complete within {seconds:g} s (--tls-handshake-timeout)"
