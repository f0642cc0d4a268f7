"""Harness shared by scripts/bench, scripts/crash-test, scripts/fuzz and tests/test_faults_*.

Everything here talks to the host over real TCP, as a terminal would: wire helpers on top of
:mod:`specs` (``wire``), a journaling load terminal (``term``), a closed/open-loop load runner
and latency statistics (``load``, ``stats``), the floor server (``floor``), process management
for ``poshost serve`` (``procs``), provisioning (``fleet``), hostile frames (``hostile``) and the
ledger checks of the crash test (``ledger``). Every limit is a named constant in ``limits``.
"""
