"""The terminal <-> host wire contract (protocol.md, dialect "cup-pos") as data and pure codecs.

Host and terminal build and check every message through this package and never re-type a
field number, a layout or a code.
"""

DIALECT = "cup-pos"
