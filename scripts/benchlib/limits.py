"""Every limit and default of the bench and fault harness, named once."""

from __future__ import annotations

from host.limits import FRAME_TIMEOUT as HOST_FRAME_TIMEOUT
from host.limits import MAX_CONNECTIONS as HOST_MAX_CONNECTIONS

# --- processes
READY_TIMEOUT = 30.0
"""Seconds a freshly started server gets to accept its first connection."""
STOP_TIMEOUT = 15.0
"""Seconds a server gets to exit after SIGTERM before it is killed."""
POLL_INTERVAL = 0.05
"""Seconds between polls of a starting or stopping process (bounded polling, not sleeping)."""

# --- terminals
REQUEST_TIMEOUT = 10.0
"""Seconds a bench terminal waits for a response before it counts a timeout (reversal 98)."""
CONNECT_TIMEOUT = 10.0
"""Seconds a bench terminal waits for a TCP connection."""
RECEIVE_SIZE = 4096
"""Bytes read from a socket at a time."""
TEST_PIN = "1234"
"""PIN of every bench card."""
CARD_EXPIRY = "3012"
"""Expiry YYMM of every bench card."""
CARD_BALANCE = 10**11
"""Opening balance (minor units) of every bench card: never the limiting factor."""
SALE_AMOUNT = 100
"""Amount (minor units) of every bench sale."""
BENCH_TMK_HEX = "CA5D92598DCA48CE8A4C76361A9269E9"
"""TMK injected into every bench terminal (the protocol.md test vector; lab only)."""
CARD_PREFIX = "622202"
"""BIN of bench cards (PANs are generated with a valid Luhn digit)."""
TID_PREFIX = "B"
"""Bench TIDs are B0000001, B0000002, ..."""
BENCH_MID = "898100000000001"
"""Merchant of every bench terminal."""
RECONNECT_BACKOFF = 0.05
"""Seconds a terminal waits before reconnecting after a lost connection (crash test)."""

# --- bench
SWEEP_TERMINALS = (10, 100, 1000)
"""Terminal counts the bench sweeps."""
QUICK_SWEEP_TERMINALS = (2, 10)
"""Terminal counts of ``--quick`` smoke runs."""
RUN_SECONDS = 15.0
"""Seconds each sweep point runs."""
QUICK_RUN_SECONDS = 2.0
WARMUP_SECONDS = 2.0
"""Seconds of load before measuring starts (connections, sign-ons, caches)."""
QUICK_WARMUP_SECONDS = 0.5
TARGET_RATE = 4000.0
"""Approved sales per second the issue asks for at 100 terminals."""
TARGET_P99_MS = 50.0
IDLE_CONNECTIONS = 1000
"""Idle connections opened to measure host memory per connection."""
QUICK_IDLE_CONNECTIONS = 100
IDLE_SETTLE_SECONDS = 1.0
"""Seconds after opening idle connections before RSS is read."""
SETTLEMENT_TXNS = 10_000
"""Transactions in the batch whose upload settlement is timed."""
QUICK_SETTLEMENT_TXNS = 200
SETTLEMENT_BATCH = 500
"""Sales per terminal batch in the settlement benchmark (settlement counts are n3: <= 999)."""
SETTLEMENT_GOAL_SECONDS = 10.0
MEMORY_GOAL_BYTES_PER_CONNECTION = 50 * 1024
RESULTS_DIR = "bench-results"

# --- crash test
CRASH_KILLS = 5
"""kill -9 rounds of scripts/crash-test."""
CRASH_INTERVAL = (1.0, 3.0)
"""Seconds of load between two kills (uniformly drawn)."""
CRASH_TERMINALS = 20
REVERSAL_RETRY_DEADLINE = 60.0
"""Seconds the terminals get, after the last restart, to push their pending reversals."""

# --- fuzz
FUZZ_FRAMES = 100_000
"""Hostile frames scripts/fuzz sends."""
HOSTILE_RATE = 1000.0
"""Hostile frames per second scripts/fuzz offers by default (0 = as fast as possible)."""
FUZZ_WORKERS = 16
"""Concurrent hostile connections (besides slow-drip and flood)."""
FLOOD_CONNECTIONS = min(1500, HOST_MAX_CONNECTIONS - 100)
"""Connections the flood opens at once (kept below the host's MAX_CONNECTIONS)."""
SLOW_DRIP_SENDERS = 20
"""Connections that send a frame a byte at a time."""
SLOW_DRIP_INTERVAL = 0.2
"""Seconds between two bytes of a slow-drip sender."""
HOSTILE_ANSWER_TIMEOUT = HOST_FRAME_TIMEOUT + 5.0
"""Seconds a hostile connection waits for an answer or a close (above host FRAME_TIMEOUT)."""
GOOD_TERMINALS = 10
"""Well-behaved terminals that transact during the fuzz."""
GOOD_RATE = 200.0
"""Aggregate sales per second of the good terminals (paced, so p99 is comparable)."""
P99_FACTOR = 2.0
"""Good terminals' p99 under fuzz may be at most this times their p99 without."""
RSS_GROWTH_ALLOWED = 32 * 1024 * 1024
"""Bytes the host RSS may grow across the whole fuzz (caches warm up; a leak grows further)."""
