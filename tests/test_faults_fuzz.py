"""Hostile input, reduced from scripts/fuzz: a few thousand hostile frames (random, mutated,
truncated, huge and short length prefixes), a slow-drip and a stalled sender and a small
connection flood against a real ``poshost serve`` process while good terminals sell.

The host must stay up and serve a fresh terminal, answer every hostile frame with a
well-formed frame (30 unless the frame is a mutation that still decodes) or close cleanly,
hold no connection afterwards and keep the good terminals error-free. The p99 ratio is
reported by scripts/fuzz, not asserted here (a shared 2-core machine makes it noisy)."""

from __future__ import annotations

import random
from pathlib import Path

from benchlib import fuzz, hostile
from specs.framing import MAX_FRAME_LENGTH, MIN_FRAME_LENGTH


def test_hostile_frames_cover_every_kind_and_stay_in_bounds() -> None:
    rng = random.Random(1)
    bases = hostile.base_payloads()
    frames = [hostile.make(rng, bases) for _ in range(2000)]
    assert {f.kind for f in frames} >= {k for k, _ in hostile.KINDS}
    for f in frames:
        length = int.from_bytes(f.data[:2], "big")
        if f.kind == "huge":
            assert length > MAX_FRAME_LENGTH
        elif f.kind == "short":
            assert length < MIN_FRAME_LENGTH
        elif f.complete:
            assert length == len(f.data) - 2 <= MAX_FRAME_LENGTH


def test_host_survives_hostile_input_while_good_terminals_sell(tmp_path: Path) -> None:
    args = fuzz.parser().parse_args([
        "--frames", "2000", "--workers", "8", "--good", "4", "--rate", "100",
        "--baseline", "1.5", "--drips", "2", "--drip-interval", "0.05", "--flood", "100",
    ])
    result = fuzz.run(args, tmp_path)
    checks = result["checks"]
    assert result["frames"] >= 2000
    assert result["thrown"]["violations"] == []
    assert result["thrown"]["flood"]["opened"] == 100
    outcomes = result["thrown"]["outcomes"]
    assert outcomes.get("stalled/closed", 0) == 1, outcomes
    assert {k: v for k, v in checks.items() if k != "p99_within_factor"} == {
        "host_alive": True, "fresh_terminal_approved": True, "thrower_exit_0": True,
        "no_violations": True, "fds_back_to_baseline": True, "rss_growth_ok": True,
        "good_errors_zero": True,
    }
    assert result["host_exit_after_sigterm"] == 0
