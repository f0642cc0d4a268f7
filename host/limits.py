"""Every limit and host-wide constant, named once (timeouts, sizes, institution ids)."""

from __future__ import annotations

from specs.codes import CURRENCY_CNY, DOMESTIC_ORGANISATION
from specs.framing import MAX_FRAME_LENGTH

__all__ = ["MAX_FRAME_LENGTH"]

IDLE_TIMEOUT = 120.0
"""Seconds a connection may stay silent between messages before the host closes it."""
FRAME_TIMEOUT = 10.0
"""Seconds a started frame may take to arrive completely (slow or half-sent frames)."""
HANDLER_TIMEOUT = 15.0
"""Seconds one request may take before the host drops the connection unanswered."""
SEND_TIMEOUT = 10.0
"""Seconds a response may take to be written to a slow reader."""
TLS_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a connection on a TLS listener may take to complete its handshake (a peer that
sends nothing, or plain bytes that never make a ClientHello, is closed then)."""
SHUTDOWN_GRACE = 5.0
"""Seconds in-flight transactions get to finish after SIGINT/SIGTERM."""
MAX_CONNECTIONS = 2000
"""Connections served at once; the next ones are closed on accept."""
UNPROVEN_PER_SECOND = 250.0
"""New connections per second that have not yet been answered a frame, at the most: more wait
in the listen backlog (admission, host/server.py). A connection gives its place back once
answered, so clean churn is never paced; a flood of garbage cannot starve the terminals that
are connected."""
UNPROVEN_BURST = 500
"""Unproven connections admitted at once before pacing starts (a fleet starting up)."""
PEER_LOG_PER_SECOND = 10.0
"""Log lines per second about peers closed for bad input; the rest are counted."""
PEER_LOG_BURST = 50
RECEIVE_CHUNK = 4096
"""Bytes read from a socket at a time (bounds per-connection buffers)."""
TERMINAL_CACHE_TTL = 5.0
"""Seconds a terminal row (keys under LMK, MID) is cached before re-reading the store."""
WRITER_MAX_GROUP = 512
"""Jobs the writer applies in one SQLite transaction at the most."""
WRITER_QUEUE = 10_000
"""Jobs that may wait for the writer; beyond this, submitters wait."""

MAX_PIN_TRIES = 3
"""Wrong PINs in a row after which the card answers 75 until reset."""
RRN_RESTART_GAP = 100_000
"""RRNs skipped at start-up so numbers handed out to rejects before a crash never repeat."""

ACQUIRER_ID = "48020000"
"""F32 acquiring institution id (lab value)."""
ISSUER_ID = "48020000"
"""Issuer id of the on-us issuer simulator (first half of F44)."""
ORGANISATION = DOMESTIC_ORGANISATION
"""F63 of responses that concern no card (the card's organisation otherwise)."""
CURRENCY = CURRENCY_CNY
"""Currency of the issuer simulator's accounts (CNY)."""
BATCH_FIRST = 1
BATCH_MAX = 999_999

HTTP_MAX_CONNECTIONS = 16
"""Connections the observability HTTP side (--http) serves at once; more are closed on
accept. It shares the event loop with the message path, so it is kept small."""
HTTP_MAX_REQUEST = 8192
"""Bytes of an HTTP request line and headers at the most (bodies are refused)."""
HTTP_REQUEST_TIMEOUT = 10.0
"""Seconds an HTTP connection may take to send a whole request (idle keep-alive included)."""
HTTP_SEND_TIMEOUT = 10.0
"""Seconds an HTTP response may take to be written to a slow reader."""
HTTP_REQUESTS_PER_SECOND = 50.0
"""HTTP requests served per second at the most (all clients); more get a 503."""
HTTP_REQUEST_BURST = 100
HTTP_STATE_TTL = 1.0
"""Seconds the dashboard state, the database figures and the health verdict are reused for,
whatever the number of clients asking."""
HTTP_RENDER_TTL = 0.5
"""Seconds a rendered /metrics or /api/state answer is reused for (rendering /metrics takes
about 1 ms on the event loop; a client flood costs at most two renders a second)."""
HTTP_HEALTH_TIMEOUT = 2.0
"""Seconds the health check's probe commit (and HSM probe) may take before it counts as
failed."""
HSM_PROBE_INTERVAL = 5.0
"""Seconds between two HSM probes (a check value request) for the dashboard and /metrics."""
