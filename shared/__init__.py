"""What the host and the terminal both use, so neither imports the other.

``shared.serialline`` is the trio/pyserial shell around :mod:`specs.seriallink` (the host serves
terminals on serial lines through it, posterm talks to the host through it);
``shared.naming`` names lab terminals (``poshost terminal add-range`` provisions the TIDs
``posterm load`` drives); ``shared.stats`` holds the one percentile/latency summary.
"""
