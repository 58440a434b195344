"""One protocol table: what the C side compiles in is ``sockbench.servers.protocols``'s.

setup.py writes ``ext/protocols.h`` from ``servers/protocols.py`` on every
build; the extensions build their ``PROTOCOLS`` from that header, so equality
here means the C constants, the indices that cross from Python to C, and the
Python table are one.
"""

import os

import pytest

import sockbench.ext
from sockbench.servers import protocols


def _ext(name):
    return pytest.importorskip(f"sockbench.ext.{name}", reason="the Cython extensions are not built (pip install -e .)")


@pytest.mark.parametrize("module", ["loadgen", "epoll_echo"])
def test_an_extension_exposes_the_table_of_servers_protocols(module):
    assert _ext(module).PROTOCOLS == protocols.PROTOCOLS


def test_the_wire_module_has_the_servers_default_message_limit():
    assert _ext("wire").DEFAULT_MAX_MESSAGE == protocols.DEFAULT_MAX_MESSAGE


def test_the_generated_header_names_every_protocol_with_its_index():
    path = os.path.join(os.path.dirname(sockbench.ext.__file__), "protocols.h")
    if not os.path.exists(path):
        pytest.skip("ext/protocols.h is written by the build (pip install -e .)")
    with open(path) as f:
        text = f.read()
    for index, name in enumerate(protocols.PROTOCOLS):
        assert f"PROTO_{name.upper()} = {index}," in text
        assert f'"{name}"' in text
    assert f"PROTO_COUNT = {len(protocols.PROTOCOLS)}" in text
    assert f"PROTO_DEFAULT_MAX_MESSAGE ((uint64_t){protocols.DEFAULT_MAX_MESSAGE})" in text
