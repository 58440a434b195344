"""Build script for sockbench: the package, the generated protocol header, and the Cython extensions in ext/.

Every ``ext/*.pyx`` is compiled to ``sockbench.ext.<name>``.  The compiler
directives live here, in one place, so that every module is built the same way.

The protocol table has one owner, ``sockbench/protocol_table.py`` (``PROTOCOLS``,
``DEFAULT_MAX_MESSAGE``), in the core because ext/ is built from it (the
layers test checks that ``PROTOCOLS_SOURCE`` stays below ext/).  C cannot
import it, so every build writes
``ext/protocols.h`` from it: the names and indices as C constants, read with
``ast`` (the package itself is not imported during a build, when its
dependencies may be missing).  The header is generated, gitignored, rewritten
only when its content changes (so an unchanged table rebuilds nothing), and
shipped with the other headers: the Cython modules and the reference C client
(``bench/calibrate/ref_client.c``) include it.

Every build that compiles the extensions also writes ``ext/build_info.json``:
the Cython version and the C compiler (its ``--version`` line) that built
them, which ``sockbench.machine`` records with every result (the build
environment is gone by run time).  Generated and gitignored, like the header.

The wheel carries the ``.pxd`` and ``.h`` files (the C client is compiled
from them at run time) but not the ``.c`` files Cython generates.

Environment switches:

``SOCKBENCH_ANNOTATE=1``
    Also write Cython's annotated HTML (``ext/<name>.html``) that shows, line by
    line, where the generated C touches the Python C-API.  The yellow lines are
    the ones to remove from a hot loop.
``SOCKBENCH_NO_EXT=1``
    Skip the extensions (a pure-Python install).  ``sockbench servers`` then
    reports the Cython rows as ``not built`` together with the command that
    builds them.  The protocol header is still written.
``SOCKBENCH_CFLAGS``
    Extra C compiler flags (default ``-O2``).
``SOCKBENCH_NO_TLS=1``
    Build without the TLS modules even where OpenSSL is found (what a machine
    without its headers gets; the tests of that path use it).

TLS in C (``ext/tls.pyx``, ``tls_echo.pyx``, ``tlsgen.pyx``: the cython
server's ``--tls``, the load over TLS, the certificate maker) links OpenSSL
3.  Whether its headers and libraries are here is asked of the C compiler
itself, by compiling and linking a three-line program (``openssl_found``),
the way autoconf asks; where they are not, those modules are left out with
one line on stderr that says what to install, and everything else builds as
before (``sockbench servers`` then says ``tls: not built`` for cython, and a
load with ``--tls`` says the same in one line).
"""

import ast
import glob
import os

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))

PACKAGE_DIRS = {
    "sockbench": "sockbench",
    "sockbench.cli": "sockbench/cli",
    "sockbench.servers": "servers",
    "sockbench.ext": "ext",
    "sockbench.bench": "bench",
    "sockbench.bench.load": "bench/load",
    "sockbench.bench.suite": "bench/suite",
    "sockbench.bench.report": "bench/report",
    "sockbench.bench.calibrate": "bench/calibrate",
    "sockbench.bench.check": "bench/check",
}

COMPILER_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
    "embedsignature": True,
}

PROTOCOLS_SOURCE = os.path.join("sockbench", "protocol_table.py")
PROTOCOLS_HEADER = os.path.join("ext", "protocols.h")


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _int_expr(node):
    """The value of an integer constant expression (``16 * 1024 * 1024``, ``1 << 24``)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    ops = {ast.Mult: int.__mul__, ast.Add: int.__add__, ast.Sub: int.__sub__, ast.LShift: int.__lshift__,
           ast.Pow: int.__pow__}
    if isinstance(node, ast.BinOp) and type(node.op) in ops:
        return ops[type(node.op)](_int_expr(node.left), _int_expr(node.right))
    raise ValueError(f"{PROTOCOLS_SOURCE}:{node.lineno}: not an integer constant expression")


def read_protocol_table(path=PROTOCOLS_SOURCE):
    """``(PROTOCOLS, DEFAULT_MAX_MESSAGE)`` as assigned at the top level of ``PROTOCOLS_SOURCE``."""
    with open(os.path.join(HERE, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name == "PROTOCOLS":
                found[name] = ast.literal_eval(node.value)
            elif name == "DEFAULT_MAX_MESSAGE":
                found[name] = _int_expr(node.value)
    missing = {"PROTOCOLS", "DEFAULT_MAX_MESSAGE"} - set(found)
    if missing:
        raise ValueError(f"{path} does not assign {', '.join(sorted(missing))} at its top level")
    names = found["PROTOCOLS"]
    if not (isinstance(names, tuple) and names and all(isinstance(n, str) and n.isidentifier() for n in names)):
        raise ValueError(f"{path}: PROTOCOLS must be a tuple of identifier-like names, not {names!r}")
    return names, found["DEFAULT_MAX_MESSAGE"]


def protocols_header(names, max_message):
    """The text of ``ext/protocols.h`` for this table."""
    enum = "".join(f"    PROTO_{n.upper()} = {i},\n" for i, n in enumerate(names))
    table = ", ".join(f'"{n}"' for n in names)
    return f"""\
/* protocols.h: GENERATED by setup.py from {PROTOCOLS_SOURCE} on every build; do not edit, do not commit.
 *
 * The wire protocols' names and indices (an index is what crosses from Python
 * to C: ``run_loop(protocol=...)``, ``serve(protocol=...)``) and the default
 * message limit, as C constants for the Cython modules and the reference C
 * client.  The Python owner of the table is sockbench.protocol_table. */
#ifndef SOCKBENCH_PROTOCOLS_H
#define SOCKBENCH_PROTOCOLS_H

#include <stdint.h>
#include <string.h>

enum {{
{enum}    PROTO_COUNT = {len(names)}
}};

#define PROTO_DEFAULT_MAX_MESSAGE ((uint64_t){max_message})

/* The name of protocol ``index``, or NULL. */
static inline const char *proto_name(int index) {{
    static const char *const names[PROTO_COUNT] = {{{table}}};
    return index >= 0 && index < PROTO_COUNT ? names[index] : NULL;
}}

/* The index of protocol ``name``, or -1. */
static inline int proto_index(const char *name) {{
    for (int i = 0; i < PROTO_COUNT; i++)
        if (strcmp(name, proto_name(i)) == 0) return i;
    return -1;
}}

#endif /* SOCKBENCH_PROTOCOLS_H */
"""


def write_protocols_header():
    """(Re)write ``ext/protocols.h`` if its content changed; return its path."""
    text = protocols_header(*read_protocol_table())
    path = os.path.join(HERE, PROTOCOLS_HEADER)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return path
    except FileNotFoundError:
        pass
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def write_build_info():
    """Record the Cython and the C compiler this build uses in ``ext/build_info.json`` (see the module doc)."""
    import json
    import shlex
    import subprocess
    import sysconfig

    import Cython

    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    try:
        line = subprocess.run(cc + ["--version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        line = None
    with open(os.path.join(HERE, "ext", "build_info.json"), "w", encoding="utf-8") as f:
        json.dump({"cython": Cython.__version__, "compiler": line or " ".join(cc)}, f)


#: the modules that link OpenSSL, built only where it is found (``openssl_found``)
TLS_MODULES = ("tls", "tls_echo", "tlsgen")
TLS_LIBRARIES = ["ssl", "crypto"]
TLS_MISSING = ("sockbench: building without TLS in C (the cython server's --tls, the load's --tls): OpenSSL 3 "
               "headers not found; install them (apt-get install libssl-dev), then pip install -e . again")

_OPENSSL_PROBE = """\
#include <openssl/ssl.h>
#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "OpenSSL 3.0 or newer is needed"
#endif
int main(void) { SSL_CTX *c = SSL_CTX_new(TLS_method()); SSL_CTX_free(c); return 0; }
"""


def openssl_found():
    """True when the C compiler compiles and links a program against OpenSSL 3 (``libssl-dev``)."""
    import shlex
    import subprocess
    import sysconfig
    import tempfile

    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "probe.c")
        with open(src, "w", encoding="utf-8") as f:
            f.write(_OPENSSL_PROBE)
        try:
            r = subprocess.run(cc + [src, "-o", os.path.join(d, "probe")] + [f"-l{lib}" for lib in TLS_LIBRARIES],
                               capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
    return r.returncode == 0


def extensions():
    if _flag("SOCKBENCH_NO_EXT"):
        return []
    from Cython.Build import cythonize

    write_build_info()

    cflags = os.environ.get("SOCKBENCH_CFLAGS", "-O2").split()
    headers = sorted(glob.glob(os.path.join("ext", "*.h")))
    with_tls = not _flag("SOCKBENCH_NO_TLS") and openssl_found()
    if not with_tls:
        import sys

        print(TLS_MISSING, file=sys.stderr)
    mods = []
    for pyx in sorted(glob.glob(os.path.join("ext", "*.pyx"))):
        name = os.path.splitext(os.path.basename(pyx))[0]
        tls = name in TLS_MODULES
        if tls and not with_tls:
            continue
        mods.append(Extension(
            "sockbench.ext." + name,
            [pyx],
            include_dirs=["ext"],
            depends=headers,  # the C helpers live in headers: a changed header rebuilds
            extra_compile_args=cflags + ["-Wno-unused-function"],
            libraries=TLS_LIBRARIES if tls else [],
        ))
    return cythonize(
        mods,
        compiler_directives=COMPILER_DIRECTIVES,
        annotate=_flag("SOCKBENCH_ANNOTATE"),
        # cythonize skips an up-to-date .c, and with it the HTML: regenerate when asked for it
        force=_flag("SOCKBENCH_ANNOTATE"),
        include_path=["ext"],
        quiet=True,
    )


write_protocols_header()
setup(
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"sockbench.ext": ["*.pxd", "*.pyx", "*.h", "build_info.json"], "sockbench.bench.calibrate": ["*.c"]},
    # Cython's generated C (and its annotated HTML) is rebuilt from the .pyx: never shipped
    exclude_package_data={"sockbench.ext": ["*.c", "*.html"]},
    ext_modules=extensions(),
    zip_safe=False,
)
