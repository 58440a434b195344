"""UTC time stamps, in the two spellings sockbench writes.

``iso_utc`` is what every JSON file carries (``started_at``, ``finished_at``):
ISO 8601 to the second, ending in ``Z``.  ``folder_stamp`` names a results
folder so that folders sort by time and need no quoting in a shell.
"""

import datetime

__all__ = ["utc_now", "iso_utc", "folder_stamp"]


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def iso_utc(t=None):
    """``2026-11-24T02:15:00Z``."""
    return (t or utc_now()).strftime("%Y-%m-%dT%H:%M:%SZ")


def folder_stamp(t=None):
    """``20261124T021500Z``."""
    return (t or utc_now()).strftime("%Y%m%dT%H%M%SZ")
