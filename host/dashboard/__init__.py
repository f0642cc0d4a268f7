"""The dashboard page and its script and style, served by the host (host/observe.py)."""
