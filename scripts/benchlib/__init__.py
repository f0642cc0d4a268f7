"""Harness shared by scripts/bench, scripts/crash-test, scripts/fuzz and tests/test_faults_*.

Everything here talks to the host over real TCP, as a terminal would, through posterm's own
terminal side (:mod:`terminal.core`, its PIN pad, transport and load-mode template): a
journaling load terminal (``term``) on top of it, a closed/open-loop load runner
and latency statistics (``load``, ``stats``), the floor server (``floor``), process management
for ``poshost serve`` (``procs``), provisioning (``fleet``), hostile frames (``hostile``) and the
ledger checks of the crash test (``ledger``). Every limit is a named constant in ``limits``.
"""
