"""An example sockbench plugin: the record that registers its server (``SERVER``), read through the entry point.

The record has the fields of ``sockbench.servers.registry.ServerSpec``;
``module`` is the full name of the module whose ``serve(listener, announce,
options)`` runs the server (see that registry's docstring for the contract).
"""

SERVER = {
    "name": "example-threads",
    "module": "sockbench_example_plugin.server",
    "summary": "example plugin: a selector loop accepts, a thread per connection echoes with blocking sockets",
    "protocols": ["raw"],
    "transports": ["tcp", "tcp6", "unix"],
}
