"""Interchangeable echo servers, one module each; see ``sockbench.servers.registry``."""
