"""``poshost`` as a runnable module (``python -m benchlib.hostcli serve ...``), for cProfile."""

from __future__ import annotations

if __name__ == "__main__":
    from host.cli import main

    main()
