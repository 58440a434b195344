"""Build script for sockbench: the package, and the Cython extensions in ext/.

Every ``ext/*.pyx`` is compiled to ``sockbench.ext.<name>``.  The compiler
directives live here, in one place, so that every module is built the same way.

Environment switches:

``SOCKBENCH_ANNOTATE=1``
    Also write Cython's annotated HTML (``ext/<name>.html``) that shows, line by
    line, where the generated C touches the Python C-API.  The yellow lines are
    the ones to remove from a hot loop.
``SOCKBENCH_NO_EXT=1``
    Skip the extensions (a pure-Python install).  ``sockbench servers`` then
    reports the Cython rows as ``not built`` together with the command that
    builds them.
``SOCKBENCH_CFLAGS``
    Extra C compiler flags (default ``-O2``).
"""

import glob
import os

from setuptools import Extension, setup

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


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def extensions():
    if _flag("SOCKBENCH_NO_EXT"):
        return []
    from Cython.Build import cythonize

    cflags = os.environ.get("SOCKBENCH_CFLAGS", "-O2").split()
    mods = [
        Extension(
            "sockbench.ext." + os.path.splitext(os.path.basename(pyx))[0],
            [pyx],
            extra_compile_args=cflags + ["-Wno-unused-function"],
        )
        for pyx in sorted(glob.glob(os.path.join("ext", "*.pyx")))
    ]
    return cythonize(
        mods,
        compiler_directives=COMPILER_DIRECTIVES,
        annotate=_flag("SOCKBENCH_ANNOTATE"),
        # cythonize skips an up-to-date .c, and with it the HTML: regenerate when asked for it
        force=_flag("SOCKBENCH_ANNOTATE"),
        include_path=["ext"],
        quiet=True,
    )


setup(
    packages=list(PACKAGE_DIRS),
    package_dir=PACKAGE_DIRS,
    package_data={"sockbench.ext": ["*.pxd", "*.pyx"], "sockbench.bench.calibrate": ["*.c"]},
    ext_modules=extensions(),
    zip_safe=False,
)
