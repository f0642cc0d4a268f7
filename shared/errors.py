"""The root exception of :mod:`shared`."""

from __future__ import annotations


class SharedError(Exception):
    """Something the shared pieces (serial lines, lab naming) refuse."""


class NamingError(SharedError, ValueError):
    """Lab terminal names that cannot be made (a prefix that leaves no room)."""
