# The C declarations of OpenSSL 3 that the TLS extensions use (ext/tls.pyx, tls_echo.pyx, tlsgen.pyx).
#
# One ``cdef extern from "<header>" nogil:`` block per OpenSSL header, as in
# posix.pxd, so that every name can be checked against its man page and called
# inside ``with nogil:``.  Several of these are macros in OpenSSL (declared here
# as the functions they expand to the calls of); only what the modules use is
# declared.  These modules are built only where OpenSSL's headers are found
# (setup.py's ``openssl_found``): nothing else cimports this file.

from libc.stdint cimport uint64_t


cdef extern from "<openssl/crypto.h>" nogil:
    const char* OpenSSL_version(int t)
    enum:
        OPENSSL_VERSION


cdef extern from "<openssl/err.h>" nogil:
    unsigned long ERR_get_error()
    unsigned long ERR_peek_error()
    void ERR_clear_error()
    void ERR_error_string_n(unsigned long e, char* buf, size_t len)
    const char* ERR_reason_error_string(unsigned long e)
    int ERR_GET_REASON(unsigned long e)


cdef extern from "<openssl/bio.h>" nogil:
    ctypedef struct BIO:
        pass
    BIO* BIO_new_file(const char* filename, const char* mode)
    int BIO_free(BIO* a)


cdef extern from "<openssl/evp.h>" nogil:
    ctypedef struct EVP_PKEY:
        pass
    ctypedef struct EVP_MD:
        pass
    void EVP_PKEY_free(EVP_PKEY* pkey)
    const EVP_MD* EVP_sha256()


cdef extern from "<openssl/ec.h>" nogil:
    EVP_PKEY* EVP_EC_gen(const char* curve)  # a macro over EVP_PKEY_Q_keygen


cdef extern from "<openssl/asn1.h>" nogil:
    ctypedef struct ASN1_INTEGER:
        pass
    ctypedef struct ASN1_TIME:
        pass
    int ASN1_INTEGER_set(ASN1_INTEGER* a, long v)
    enum:
        MBSTRING_ASC


cdef extern from "<openssl/x509.h>" nogil:
    ctypedef struct X509:
        pass
    ctypedef struct X509_NAME:
        pass
    ctypedef struct X509_EXTENSION:
        pass
    X509* X509_new()
    void X509_free(X509* a)
    int X509_set_version(X509* x, long version)
    ASN1_INTEGER* X509_get_serialNumber(X509* x)
    ASN1_TIME* X509_gmtime_adj(ASN1_TIME* s, long adj)
    ASN1_TIME* X509_getm_notBefore(const X509* x)
    ASN1_TIME* X509_getm_notAfter(const X509* x)
    int X509_set_pubkey(X509* x, EVP_PKEY* pkey)
    X509_NAME* X509_get_subject_name(const X509* a)
    int X509_set_issuer_name(X509* x, const X509_NAME* name)
    int X509_NAME_add_entry_by_txt(X509_NAME* name, const char* field, int type, const unsigned char* bytes,
                                   int len, int loc, int set)
    int X509_sign(X509* x, EVP_PKEY* pkey, const EVP_MD* md)
    int X509_add_ext(X509* x, X509_EXTENSION* ex, int loc)
    void X509_EXTENSION_free(X509_EXTENSION* a)
    enum:
        X509_VERSION_3


cdef extern from "<openssl/x509v3.h>" nogil:
    ctypedef struct X509V3_CTX:
        pass
    void X509V3_set_ctx(X509V3_CTX* ctx, X509* issuer, X509* subject, void* req, void* crl, int flags)
    X509_EXTENSION* X509V3_EXT_conf_nid(void* conf, X509V3_CTX* ctx, int ext_nid, const char* value)
    enum:
        NID_subject_alt_name


cdef extern from "<openssl/pem.h>" nogil:
    int PEM_write_bio_X509(BIO* bp, X509* x)
    int PEM_write_bio_PrivateKey(BIO* bp, EVP_PKEY* x, const void* enc, unsigned char* kstr, int klen,
                                 void* cb, void* u)


cdef extern from "<openssl/ssl.h>" nogil:
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_METHOD:
        pass
    ctypedef struct SSL_SESSION:
        pass
    ctypedef struct SSL_CIPHER:
        pass

    const SSL_METHOD* TLS_server_method()
    const SSL_METHOD* TLS_client_method()
    SSL_CTX* SSL_CTX_new(const SSL_METHOD* method)
    void SSL_CTX_free(SSL_CTX* ctx)
    int SSL_CTX_set_min_proto_version(SSL_CTX* ctx, int version)      # macro
    int SSL_CTX_set_max_proto_version(SSL_CTX* ctx, int version)      # macro
    int SSL_CTX_set_ciphersuites(SSL_CTX* ctx, const char* s)
    int SSL_CTX_set_cipher_list(SSL_CTX* ctx, const char* s)
    int SSL_CTX_use_certificate_chain_file(SSL_CTX* ctx, const char* file)
    int SSL_CTX_use_PrivateKey_file(SSL_CTX* ctx, const char* file, int type)
    int SSL_CTX_check_private_key(const SSL_CTX* ctx)
    long SSL_CTX_set_mode(SSL_CTX* ctx, long mode)                    # macro
    void SSL_CTX_set_read_ahead(SSL_CTX* ctx, int yes)                # macro
    uint64_t SSL_CTX_set_options(SSL_CTX* ctx, uint64_t op)
    long SSL_CTX_set_session_cache_mode(SSL_CTX* ctx, long mode)      # macro
    void SSL_CTX_set_verify(SSL_CTX* ctx, int mode, void* callback)
    int SSL_CTX_set_session_id_context(SSL_CTX* ctx, const unsigned char* sid_ctx, unsigned int sid_ctx_len)

    SSL* SSL_new(SSL_CTX* ctx)
    void SSL_free(SSL* ssl)
    int SSL_set_fd(SSL* ssl, int fd)
    void SSL_set_accept_state(SSL* ssl)
    void SSL_set_connect_state(SSL* ssl)
    int SSL_do_handshake(SSL* ssl)
    int SSL_read_ex(SSL* ssl, void* buf, size_t num, size_t* readbytes)
    int SSL_write_ex(SSL* ssl, const void* buf, size_t num, size_t* written)
    int SSL_get_error(const SSL* ssl, int ret)
    int SSL_has_pending(const SSL* ssl)
    int SSL_shutdown(SSL* ssl)
    int SSL_set_session(SSL* ssl, SSL_SESSION* session)
    SSL_SESSION* SSL_get1_session(SSL* ssl)
    void SSL_SESSION_free(SSL_SESSION* session)
    int SSL_SESSION_is_resumable(const SSL_SESSION* s)
    int SSL_session_reused(const SSL* ssl)
    const char* SSL_get_version(const SSL* ssl)
    const SSL_CIPHER* SSL_get_current_cipher(const SSL* ssl)
    const char* SSL_CIPHER_get_name(const SSL_CIPHER* c)
    int SSL_get_negotiated_group(SSL* ssl)                            # macro
    const char* SSL_group_to_name(SSL* ssl, int id)

    enum:
        TLS1_2_VERSION
        TLS1_3_VERSION
        SSL_FILETYPE_PEM
        SSL_MODE_ENABLE_PARTIAL_WRITE
        SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
        SSL_SESS_CACHE_SERVER
        SSL_SESS_CACHE_CLIENT
        SSL_SESS_CACHE_OFF
        SSL_VERIFY_NONE
        SSL_ERROR_NONE
        SSL_ERROR_SSL
        SSL_ERROR_WANT_READ
        SSL_ERROR_WANT_WRITE
        SSL_ERROR_SYSCALL
        SSL_ERROR_ZERO_RETURN
        SSL_R_UNEXPECTED_EOF_WHILE_READING
    uint64_t SSL_OP_NO_COMPRESSION
    uint64_t SSL_OP_NO_RENEGOTIATION
