# What the TLS extensions share around OpenSSL: one SSL_CTX from one setting, and OpenSSL's errors in words.
#
# The cython server (ext/tls_echo.pyx) and the load (ext/tlsgen.pyx) speak TLS
# with the settings of ``sockbench.servers.tls.TlsConfig``; both build their
# SSL_CTX here, so the two ends of a run can never disagree on what a setting
# means:
#
# * the version pinned at both ends (``SSL_CTX_set_min/max_proto_version``);
# * the cipher: a 1.3 suite (``SSL_CTX_set_ciphersuites``) or a 1.2 list;
# * ``SSL_MODE_ENABLE_PARTIAL_WRITE`` and ``SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER``:
#   ``SSL_write_ex`` then behaves as ``send`` does for the loops (it reports
#   what was taken, one record at a time, and a write that must be retried
#   may come from a buffer that moved), so a short write keeps only its tail;
# * read-ahead: one ``read(2)`` takes as many records as the socket holds,
#   where OpenSSL would otherwise read a record's 5-byte header and then its
#   body, two system calls a record.  Records read ahead wait inside OpenSSL,
#   where epoll cannot see them: the loops read until ``SSL_has_pending`` is 0;
# * no compression, no renegotiation (a peer cannot make the server redo a
#   handshake on an open connection);
# * a server: the certificate and key (checked to match), session tickets and
#   the server's session cache on, as a server in production has them; a
#   client: no certificate verification (servers/tls.py says why), and its
#   own session cache off (the load keeps each slot's session itself).
#
# ``cdef inline`` in a .pxd, as window.pxd: Cython pastes these into each module.

from openssl cimport (
    SSL_CTX, TLS_server_method, TLS_client_method, SSL_CTX_new, SSL_CTX_free,
    SSL_CTX_set_min_proto_version, SSL_CTX_set_max_proto_version, SSL_CTX_set_ciphersuites, SSL_CTX_set_cipher_list,
    SSL_CTX_use_certificate_chain_file, SSL_CTX_use_PrivateKey_file, SSL_CTX_check_private_key, SSL_CTX_set_mode,
    SSL_CTX_set_read_ahead, SSL_CTX_set_options, SSL_CTX_set_session_cache_mode, SSL_CTX_set_verify,
    SSL_CTX_set_session_id_context,
    TLS1_2_VERSION, TLS1_3_VERSION, SSL_FILETYPE_PEM, SSL_MODE_ENABLE_PARTIAL_WRITE,
    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, SSL_SESS_CACHE_SERVER, SSL_SESS_CACHE_OFF, SSL_VERIFY_NONE,
    SSL_OP_NO_COMPRESSION, SSL_OP_NO_RENEGOTIATION,
    ERR_get_error, ERR_peek_error, ERR_clear_error, ERR_error_string_n, ERR_reason_error_string,
)


cdef inline str ssl_error_text(default="no error queued"):
    """OpenSSL's first queued error in words (the queue is cleared), or ``default``."""
    cdef char buf[256]
    cdef unsigned long e = ERR_get_error()
    cdef const char* reason
    ERR_clear_error()
    if e == 0:
        return default
    reason = ERR_reason_error_string(e)
    if reason != NULL:
        return reason.decode("utf-8", "replace")
    ERR_error_string_n(e, buf, sizeof(buf))
    return buf.decode("utf-8", "replace")


cdef inline const char* ssl_reason(unsigned long e) noexcept nogil:
    """The reason of the OpenSSL error ``e`` in OpenSSL's words (``wrong version number``), or NULL."""
    if e == 0:
        return NULL
    return ERR_reason_error_string(e)


cdef inline SSL_CTX* make_context(bint server, str version, cipher, cert=None, key=None) except NULL:
    """A new SSL_CTX for one side of ``TlsConfig``'s setting (see above); ``ValueError`` in one line if refused."""
    cdef SSL_CTX* ctx = SSL_CTX_new(TLS_server_method() if server else TLS_client_method())
    cdef int v = TLS1_3_VERSION if version == "1.3" else TLS1_2_VERSION
    cdef bytes b
    if ctx == NULL:
        raise MemoryError(f"SSL_CTX_new: {ssl_error_text()}")
    try:
        if not SSL_CTX_set_min_proto_version(ctx, v) or not SSL_CTX_set_max_proto_version(ctx, v):
            raise ValueError(f"TLS {version} is not available in this OpenSSL: {ssl_error_text()}")
        if cipher:
            b = str(cipher).encode()
            if version == "1.3" and not SSL_CTX_set_ciphersuites(ctx, b):
                raise ValueError(f"OpenSSL refuses the TLS 1.3 suite {cipher!r}: {ssl_error_text()}")
            if version != "1.3" and not SSL_CTX_set_cipher_list(ctx, b):
                raise ValueError(f"OpenSSL selects no TLS 1.2 cipher from {cipher!r}: {ssl_error_text()}")
        SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
        SSL_CTX_set_read_ahead(ctx, 1)
        SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION)
        if server:
            b = str(cert).encode()
            if SSL_CTX_use_certificate_chain_file(ctx, b) != 1:
                raise ValueError(f"cannot load the certificate {cert}: {ssl_error_text()}")
            b = str(key).encode()
            if SSL_CTX_use_PrivateKey_file(ctx, b, SSL_FILETYPE_PEM) != 1:
                raise ValueError(f"cannot load the key {key}: {ssl_error_text()}")
            if SSL_CTX_check_private_key(ctx) != 1:
                raise ValueError(f"the key {key} does not match the certificate {cert}: {ssl_error_text()}")
            SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER)
            SSL_CTX_set_session_id_context(ctx, <const unsigned char*>b"sockbench", 9)
        else:
            SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL)
            SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF)
    except BaseException:
        SSL_CTX_free(ctx)
        raise
    ERR_clear_error()
    return ctx
