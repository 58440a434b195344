"""The framed-protocol checks (``--protocol frame`` or ``json``): pipelining, partial messages, malformed input.

Answers are judged by meaning (the payload, the header fields), not by the
exact bytes of a JSON header, so a server may format its JSON its own way.
The oracle is ``sockbench.servers.protocols``' own decoders: what a correct
server answers to a stream, and whether the stream is malformed.  A malformed
message costs its own connection only: the answers before it are kept,
nothing after it is answered, the connection is closed, and another client
with half a message in the server loses nothing.
"""

import json
import random
import socket
import struct
import threading
import time

from sockbench.bench.check.base import FRAMED, STREAM, Failed, check
from sockbench.bench.check.client import connect, exchange, payload, read_to_eof
from sockbench.servers.protocols import FrameDecoder, JsonDecoder, encode_frame, encode_json_request

__all__ = ["parse_frames", "parse_json_messages", "requests_for", "answers", "oracle", "malformed_cases",
           "REQUIRED", "good_header", "json_header"]

REQUIRED = ("byteorder", "content-type", "content-encoding", "content-length")


def json_header(obj):
    raw = json.dumps(obj).encode()
    return struct.pack(">H", len(raw)) + raw


def good_header(length, **extra):
    return {"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8", "content-length": length,
            **extra}


def parse_frames(data):
    """Split a stream of frames; a trailing partial frame is a ``Failed``."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 4:
            raise Failed(f"a partial frame header at byte {pos:,} of the answers")
        (n,) = struct.unpack_from(">I", data, pos)
        if len(data) - pos - 4 < n:
            raise Failed(f"a partial frame at byte {pos:,} of the answers: {n:,} B announced")
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def parse_json_messages(data):
    """Split a stream of json-protocol messages into (header, content) pairs, checking each header."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < 2:
            raise Failed(f"a partial header length at byte {pos:,} of the answers")
        (hlen,) = struct.unpack_from(">H", data, pos)
        try:
            header = json.loads(data[pos + 2 : pos + 2 + hlen].decode("utf-8"))
        except ValueError as e:
            raise Failed(f"an answer's JSON header at byte {pos:,} does not parse: {e}") from None
        if not isinstance(header, dict) or not isinstance(header.get("content-length"), int):
            raise Failed(f"an answer's JSON header at byte {pos:,} is not an object with a content-length: {header!r}"[:300])
        n = header["content-length"]
        start = pos + 2 + hlen
        content = data[start : start + n]
        if len(content) != n:
            raise Failed(f"partial content at byte {start:,} of the answers")
        out.append((header, content))
        pos = start + n
    return out


def requests_for(protocol, payloads, ids=True):
    if protocol == "frame":
        return [encode_frame(p) for p in payloads]
    return [encode_json_request(p, request_id=(i if ids else None)) for i, p in enumerate(payloads)]


def answers(protocol, data):
    """What a stream of answers means: a list of payloads (frame) or of (request-id, type, encoding, content) (json)."""
    if protocol == "frame":
        return parse_frames(data)
    result = []
    for header, content in parse_json_messages(data):
        extra = set(header) - {"content-type", "content-encoding", "content-length", "request-id"}
        if extra:
            raise Failed(f"an answer's header has keys a response does not carry: {sorted(extra)}")
        result.append((header.get("request-id"), header.get("content-type"), header.get("content-encoding"), content))
    return result


def oracle(protocol, stream, max_message):
    """What a correct server answers to ``stream`` followed by EOF, and whether it is malformed."""
    decoder = FrameDecoder(max_message) if protocol == "frame" else JsonDecoder(max_message)
    out = decoder.feed(stream)
    return answers(protocol, out), decoder.eof() is not None


def malformed_cases(protocol, max_message):
    """``{case: bytes}``: each a malformed message of ``protocol`` for a server whose limit is ``max_message``."""
    big = max_message + 1
    if protocol == "frame":
        return {
            "over-limit": struct.pack(">I", big) + b"x" * 16,
            "truncated-then-eof": encode_frame(b"0123456789")[:9],
            "truncated-header-then-eof": b"\x00\x00",
        }
    return {
        "header-length-0": b"\x00\x00" + b"{}",
        "not-json": struct.pack(">H", 9) + b"not json!",
        "not-utf8": struct.pack(">H", 2) + b"\xff\xfe",
        "not-an-object": json_header([1, 2, 3]),
        "missing-content-length": json_header({k: "x" for k in REQUIRED if k != "content-length"}),
        "negative-content-length": json_header(good_header(-1)),
        "string-content-length": json_header(good_header("5")),
        "float-content-length": json_header(good_header(5.0)),
        "bool-content-length": json_header(good_header(True)),
        "over-limit": json_header(good_header(big)),
        "nested-1000-deep": struct.pack(">H", 990) + b"[" * 990,
        "nested-object-value": (lambda deep: struct.pack(">H", len(deep)) + deep)(
            b'{"byteorder":' * 2000 + b'"little"' + b"}" * 2000),
        "truncated-content-then-eof": json_header(good_header(10)) + b"12345",
        "truncated-header-then-eof": json_header(good_header(10))[:7],
    }


@check("framed-pipelining", "207 messages pipelined in random cuts (0 B to 300 KB), answered in order",
       transports=STREAM, protocols=FRAMED)
def framed_pipelining(s):
    rng = random.Random(11)
    sizes = [0, 1, 64, 1000, 4096, 65536, 300_000] + [rng.randrange(0, 5000) for _ in range(200)]
    payloads = [payload(n, seed=i) for i, n in enumerate(sizes)]
    stream = b"".join(requests_for(s.protocol, payloads))
    with connect(s.address, tls=s.tls, timeout=20) as sock:
        # answers are read while sending: over AF_UNIX (no receive buffer) the kernel would otherwise block the writer
        # both directions once both send buffers are full
        box = []
        reader = threading.Thread(target=lambda: box.append(read_to_eof(sock, limit=len(stream) * 2)), daemon=True)
        reader.start()
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pos = 0
        while pos < len(stream):
            step = rng.choice([1, 3, 7, 100, 4096, 70000])
            sock.sendall(stream[pos : pos + step])
            pos += step
        sock.shutdown(socket.SHUT_WR)
        reader.join(30)
    if not box:
        raise Failed("no end of the answers within 30 s of the half-close")
    want, _ = oracle(s.protocol, stream, s.max_message)
    got = answers(s.protocol, box[0])
    if got != want:
        i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        raise Failed(f"{len(got)} answers for {len(want)} requests; the first wrong or missing is answer {i + 1}")
    return f"{len(want)} answers"


@check("framed-partial", "a message missing its last byte is not answered until that byte comes",
       transports=STREAM, protocols=FRAMED)
def framed_partial(s):
    req = requests_for(s.protocol, [b"complete-me"])[0]
    want, _ = oracle(s.protocol, req, s.max_message)
    with connect(s.address, tls=s.tls, timeout=5) as sock:
        sock.sendall(req[:-1])
        sock.settimeout(0.3)
        try:
            early = sock.recv(1)
        except socket.timeout:
            early = None
        if early is not None:
            raise Failed("the server answered (or closed) before the message was complete"
                         if early else "the server closed a connection holding an incomplete message")
        sock.settimeout(5)
        sock.sendall(req[-1:])
        got = b""
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            got += chunk
            try:
                if answers(s.protocol, got) == want:
                    return None
            except Failed:
                continue
    raise Failed(f"after the last byte: {got[:80]!r} instead of the answer")


@check("malformed", "each malformed message closes its own connection only; the answers before it are kept",
       transports=STREAM, protocols=FRAMED)
def malformed(s):
    proto = s.protocol
    good = requests_for(proto, [b"before"])[0]
    others = requests_for(proto, [payload(5000, seed=k) for k in range(3)])
    failures = []
    cases = malformed_cases(proto, s.max_message)
    with connect(s.address, tls=s.tls, timeout=10) as other:
        # another client has half a message in the server while the bad ones arrive
        other.sendall(others[0][:100])
        time.sleep(0.05)
        for name, bad in cases.items():
            want, is_bad = oracle(proto, good + bad, s.max_message)
            assert is_bad, f"{name}: the case must be malformed per the oracle"
            try:
                got = answers(proto, exchange(s.address, good + bad, timeout=5, tls=s.tls))
            except Failed as e:
                failures.append(f"{name}: {e}")
                continue
            except OSError as e:
                failures.append(f"{name}: {type(e).__name__}: {e}")
                continue
            if got != want:
                failures.append(f"{name}: {len(got)} answer(s), {len(want)} expected")
            if not s.alive():
                raise Failed(f"{name}: the server exited (status {s.server.proc.returncode})")
        other.sendall(others[0][100:] + b"".join(others[1:]))
        other.shutdown(socket.SHUT_WR)
        try:
            rest = answers(proto, read_to_eof(other, limit=1 << 20))
        except Failed as e:
            raise Failed(f"the other client lost its messages: {e}") from None
    if rest != oracle(proto, b"".join(others), s.max_message)[0]:
        failures.append("the other client's messages were not all answered")
    if failures:
        raise Failed(f"{len(failures)} of {len(cases)} cases: " + "; ".join(failures[:4]))
    return f"{len(cases)} cases"
