"""Servers whose library is an optional extra: absent, they are one line naming the extra, never a traceback."""

import importlib.util

import pytest

from sockbench.cli.main import main
from sockbench.errors import UsageError
from sockbench.servers import registry


@pytest.fixture
def without(monkeypatch):
    """Make the named top-level modules look uninstalled to the registry."""
    hidden = set()
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] in hidden else real(name, *args, **kwargs)

    monkeypatch.setattr(registry.importlib.util, "find_spec", find_spec)
    return hidden


@pytest.mark.parametrize("name", ["gevent", "trio"])
def test_a_missing_extra_names_the_pip_command(without, name, capsys):
    without.add(name)
    spec = registry.get(name)
    assert spec.availability() == (False, f"not installed: pip install 'sockbench[{name}]'")
    assert name not in registry.available_names()
    with pytest.raises(UsageError) as e:
        spec.load()
    assert e.value.exit_code == 2
    assert main(["serve", name]) == 2
    err = capsys.readouterr().err
    assert err == f"sockbench: server {name!r}: not installed: pip install 'sockbench[{name}]'\n"


def test_the_extras_servers_are_served_when_installed():
    for name in ("gevent", "trio"):
        spec = registry.get(name)
        if spec.availability()[0]:
            assert callable(spec.load())
        assert spec.extra == name and spec.requires == (name,)


def test_looking_servers_up_never_imports_gevent_or_trio():
    """The registry, the CLI and the contract must not import (or monkey-patch with) the optional libraries."""
    import subprocess
    import sys

    code = ("import sys, sockbench.cli.main, sockbench.servers.registry as r; r.available_names(); "
            "print(sorted(m for m in ('gevent', 'trio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
