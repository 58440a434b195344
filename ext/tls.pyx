"""OpenSSL from C for what is done once, not per message: the self-signed certificate, and the library's version.

``make_certificate(cert, key, common_name)`` writes a self-signed ECDSA P-256
certificate (SHA-256, version 3, valid 825 days, for ``localhost``,
127.0.0.1 and ::1) and its key, PEM, the key mode 0600: the pair
``sockbench.servers.tls.ensure_certificate`` makes once per results folder.
It is here, in C, because OpenSSL is linked for the TLS loops anyway and
Python's ``ssl`` cannot make a certificate (the ``openssl`` command is the
fallback where this module is not built).  Built only where OpenSSL 3's
headers are found (setup.py).
"""

import os

from openssl cimport (
    OpenSSL_version, OPENSSL_VERSION,
    EVP_PKEY, EVP_PKEY_free, EVP_EC_gen, EVP_sha256,
    X509, X509_new, X509_free, X509_set_version, X509_get_serialNumber, ASN1_INTEGER_set, X509_gmtime_adj,
    X509_getm_notBefore, X509_getm_notAfter, X509_set_pubkey, X509_get_subject_name, X509_set_issuer_name,
    X509_NAME, X509_NAME_add_entry_by_txt, X509_sign, X509_add_ext, X509_EXTENSION, X509_EXTENSION_free,
    X509V3_CTX, X509V3_set_ctx, X509V3_EXT_conf_nid, NID_subject_alt_name, X509_VERSION_3, MBSTRING_ASC,
    BIO, BIO_new_file, BIO_free, PEM_write_bio_X509, PEM_write_bio_PrivateKey,
)
from tlsconf cimport ssl_error_text

__all__ = ["make_certificate", "openssl_version", "VALID_DAYS", "SUBJECT_ALT_NAMES"]

#: how long a made certificate is valid (the most a public CA may issue for, as browsers had it until 2020)
VALID_DAYS = 825
#: the names a made certificate is valid for: a client that verifies it may connect by any of them
SUBJECT_ALT_NAMES = "DNS:localhost,IP:127.0.0.1,IP:::1"


def openssl_version():
    """The version of the OpenSSL these extensions run with (``OpenSSL 3.0.19 27 Jan 2026``)."""
    return OpenSSL_version(OPENSSL_VERSION).decode()


cdef int _write_pem(path, X509* x, EVP_PKEY* pkey) except -1:
    cdef bytes p = os.fsencode(path)
    cdef BIO* bio
    if pkey != NULL:
        # the key is created private: no other user may read it, even for the instant before a chmod
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    bio = BIO_new_file(p, b"w")
    if bio == NULL:
        raise OSError(f"cannot write {path}: {ssl_error_text()}")
    try:
        ok = PEM_write_bio_X509(bio, x) if x != NULL else PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL)
        if ok != 1:
            raise OSError(f"cannot write {path}: {ssl_error_text()}")
    finally:
        BIO_free(bio)
    return 0


def make_certificate(cert, key, common_name="localhost"):
    """Write a self-signed ECDSA P-256 certificate to ``cert`` and its private key to ``key`` (PEM); ``OSError`` if not."""
    cdef EVP_PKEY* pkey = NULL
    cdef X509* x = NULL
    cdef X509_NAME* name
    cdef X509_EXTENSION* ext
    cdef X509V3_CTX v3
    cdef bytes cn = str(common_name).encode()
    try:
        pkey = EVP_EC_gen(b"P-256")
        x = X509_new()
        if pkey == NULL or x == NULL:
            raise OSError(f"cannot make a key: {ssl_error_text()}")
        X509_set_version(x, X509_VERSION_3)
        ASN1_INTEGER_set(X509_get_serialNumber(x), <long>(int.from_bytes(os.urandom(4), "big") >> 1))
        X509_gmtime_adj(X509_getm_notBefore(x), -3600)  # an hour back: a client whose clock is behind accepts it
        X509_gmtime_adj(X509_getm_notAfter(x), <long>VALID_DAYS * 86400)
        X509_set_pubkey(x, pkey)
        name = X509_get_subject_name(x)
        X509_NAME_add_entry_by_txt(name, b"CN", MBSTRING_ASC, <const unsigned char*>cn, -1, -1, 0)
        X509_NAME_add_entry_by_txt(name, b"O", MBSTRING_ASC, <const unsigned char*>b"sockbench", -1, -1, 0)
        X509_set_issuer_name(x, name)
        X509V3_set_ctx(&v3, x, x, NULL, NULL, 0)
        ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, SUBJECT_ALT_NAMES.encode())
        if ext == NULL:
            raise OSError(f"cannot add the certificate's names: {ssl_error_text()}")
        X509_add_ext(x, ext, -1)
        X509_EXTENSION_free(ext)
        if X509_sign(x, pkey, EVP_sha256()) <= 0:
            raise OSError(f"cannot sign the certificate: {ssl_error_text()}")
        _write_pem(key, NULL, pkey)
        _write_pem(cert, x, NULL)
    finally:
        X509_free(x)
        EVP_PKEY_free(pkey)
