"""``sockbench check``: the conformance checks as library code, for any echo server in any language.

Why it is built this way: the checks that catch a server reordering bytes,
dropping a half-close, growing without bound under a slow reader or dying on
a malformed frame matter to any echo server, not only to this repository's.
So they are a library (``registry``: every check is one function, registered once with
what it applies to), run by ``sockbench check`` against a registered server, a
``--command`` or a running ``HOST:PORT`` / ``unix:PATH`` (``runner``), reported
as a table, JSON and JUnit XML (``report``), and called by
``tests/conformance`` for every registered server, so each check has one
implementation.  As h2spec does for HTTP/2 and the Autobahn Testsuite for
WebSocket, each check says pass, fail (with what was seen) or not applicable
(with why).

The rooms inside: ``client`` (small, bounded clients: every socket has a
timeout, every loop a deadline), ``registry`` (``Subject``, ``Outcome``, the
``check`` decorator), the checks by concern (``stream``, ``framed``,
``datagram``, ``process``: the ones that need the server's pid), ``runner``
and ``report``.  Adding a check for a transport or an option is one decorated
function in one of those modules; its ``applies`` says when it runs.
"""
