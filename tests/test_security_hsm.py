"""Issue 19 (b)-(e): each attack an HSM-command client could make, performed against the real
HSM code on a live (random) LMK and on the test LMK, and refused with payShield's error code;
the legacy settings re-open exactly what the README's table says."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from hsm_sim import commands, crypto
from hsm_sim.commands import HsmEngine, SecurityPolicy
from hsm_sim.errors import HsmError
from hsm_sim.lmk import generate_lmk_file, load_lmk
from tests.test_hsm_cli import HSM_SIM, READY_TIMEOUT

h = bytes.fromhex
PAN = "6222021234567890128"
ACCOUNT = crypto.extract_account_number(PAN)
OTHER_ACCOUNT = "999999999999"


def run(engine: HsmEngine, request: str | bytes) -> tuple[str, bytes]:
    raw = request.encode() if isinstance(request, str) else request
    response = engine.handle(b"0000" + raw)
    return response[6:8].decode(), response[8:]


def ok(engine: HsmEngine, request: str | bytes) -> str:
    code, data = run(engine, request)
    assert code == "00", (request[:2], code)
    return data.decode()


@pytest.fixture
def live(tmp_path: Path) -> HsmEngine:
    """A live LMK, freshly generated: not Authorised, default (PCI) settings."""
    return HsmEngine(generate_lmk_file(tmp_path / "lmk"))


def under_lmk(engine: HsmEngine, key_type: str, clear: bytes, scheme: str = "U") -> str:
    return engine.lmk.encrypt_key(key_type, scheme, clear)


# --------------------------------------------------------------------------- (b) Authorised


def test_ba_dg_pin_recovery_needs_the_authorised_state(
        live: HsmEngine, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack: BA (clear PIN -> LMK) + DG (PVV) against a card's PVV from the database
    tries every PIN. Not Authorised, BA answers 17 and nothing follows."""
    pvk_clear = crypto.generate_random_key(16)
    pvk = under_lmk(live, "002", pvk_clear)
    pvv = crypto.generate_visa_pvv(pvk_clear, "1", "4821", PAN)
    assert run(live, f"BA4821F{ACCOUNT}") == ("17", b"")
    for extension in ("Y4002U" + "01" * 16, "Y6002U2" + "01" * 32, "Y8002U2"):
        assert run(live, extension)[0] == "17"
    # the operator authorises, with a time limit; logged
    caplog.set_level(logging.INFO, logger="hsm_sim.audit")
    clock = [1000.0]
    monkeypatch.setattr(commands.time, "monotonic", lambda: clock[0])
    live.authorise(60, who="test operator")
    pin_lmk = ok(live, f"BA4821F{ACCOUNT}")
    assert ok(live, f"DG{pvk}{pin_lmk}{ACCOUNT}1") == pvv
    clock[0] += 61
    assert run(live, f"BA4821F{ACCOUNT}") == ("17", b"")
    audit = [r.getMessage() for r in caplog.records if r.name == "hsm_sim.audit"]
    assert any("authorised state entered by test operator, for 60 s" in a for a in audit)
    assert any("authorised state expired" in a for a in audit)
    assert any("cmd=BA err=17" in a for a in audit)
    live.authorise(None)
    live.cancel_authorisation()
    assert run(live, f"BA4821F{ACCOUNT}")[0] == "17"
    # the test LMK's lab engine starts Authorised; asked not to, it refuses as a live one
    assert run(HsmEngine.test(authorised=False), f"BA4821F{ACCOUNT}")[0] == "17"
    assert run(HsmEngine.test(authorised=False), "Y4002U" + "01" * 16)[0] == "17"


def _serve(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([HSM_SIM, "serve", "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    assert ready, "no ready line"
    return proc, int(proc.stdout.readline().split()[3].rsplit(":", 1)[1])


def _exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(len(payload).to_bytes(2, "big") + payload)
        length = int.from_bytes(sock.recv(2), "big")
        data = b""
        while len(data) < length:
            data += sock.recv(length - len(data))
        return data


def test_hsm_sim_serve_authorised_state_per_lmk(tmp_path: Path) -> None:
    lmk = tmp_path / "lmk"
    generate_lmk_file(lmk)
    ba = f"0000BA1234F{ACCOUNT}".encode()
    audit = tmp_path / "audit.log"
    for args, expected in (((), b"0000BB17"), (("--authorised-for", "300"), b"0000BB00")):
        proc, port = _serve("--lmk", str(lmk), "--audit-log", str(audit), *args)
        try:
            assert _exchange(port, ba)[:8] == expected
        finally:
            proc.terminate()
            proc.wait(timeout=READY_TIMEOUT)
    assert stat.S_IMODE(os.stat(audit).st_mode) == 0o600  # the audit log is private
    text = audit.read_text()
    assert "cmd=BA err=17" in text and "cmd=BA err=00" in text
    assert "authorised state entered by hsm-sim serve, for 300 s" in text
    # the published test LMK: Authorised by default (lab flows), unless told not to be
    for args, expected in (((), b"0000BB00"), (("--not-authorised",), b"0000BB17")):
        proc, port = _serve("--lmk", "test", *args)
        try:
            assert _exchange(port, ba)[:8] == expected
        finally:
            proc.terminate()
            proc.wait(timeout=READY_TIMEOUT)


def _wait_for(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stderr is not None
    while True:
        ready, _, _ = select.select([proc.stderr], [], [], READY_TIMEOUT)
        assert ready, f"no {text!r} line"
        if text in proc.stderr.readline():
            return


def test_a_running_hsm_is_authorised_by_the_operator_for_a_time(tmp_path: Path) -> None:
    """The operator's authorise command on a running HSM: SIGUSR1 (time-limited), SIGUSR2
    cancels; both audit-logged."""
    lmk, audit = tmp_path / "lmk", tmp_path / "audit.log"
    generate_lmk_file(lmk)
    ba = f"0000BA1234F{ACCOUNT}".encode()
    proc, port = _serve("--lmk", str(lmk), "--audit-log", str(audit),
                        "--authorise-window", "120")
    try:
        assert _exchange(port, ba)[:8] == b"0000BB17"
        proc.send_signal(signal.SIGUSR1)
        _wait_for(proc, "Authorised for 120 s")
        assert _exchange(port, ba)[:8] == b"0000BB00"
        proc.send_signal(signal.SIGUSR2)
        _wait_for(proc, "Authorised state cancelled")
        assert _exchange(port, ba)[:8] == b"0000BB17"
    finally:
        proc.terminate()
        proc.wait(timeout=READY_TIMEOUT)
    text = audit.read_text()
    assert "authorised state entered by operator (SIGUSR1), for 120 s" in text
    assert "authorised state cancelled by operator (SIGUSR2)" in text


# --------------------------------------------------------------------------- (c) export


NOT_UNDER_A_TMK = ("000", "001", "008", "009", "00A", "109")


def test_a0_export_policy_per_key_type(live: HsmEngine) -> None:
    """The attack: with one known TMK, export a ZPK (or ZMK, BDK, ZEK, MK-AC) under it,
    then translate any terminal's PIN block to that ZPK. Refused with 04."""
    tmk = under_lmk(live, "002", crypto.generate_random_key(16))
    zmk = under_lmk(live, "000", crypto.generate_random_key(16))
    for key_type in NOT_UNDER_A_TMK:
        assert run(live, f"A01{key_type}U;1{tmk}U")[0] == "04", key_type
    for key_type in ("002", "003"):  # TPK / TMK and TAK: what a terminal takes
        assert run(live, f"A01{key_type}U;1{tmk}X")[0] == "00", key_type
    for key_type in ("000", "001", "002", "003", "008", "009", "00A", "109"):
        assert run(live, f"A01{key_type}U;0{zmk}U")[0] == "00", key_type
    assert run(live, f"A010A3U{zmk}U")[0] == "04"  # not a key type at all
    legacy = HsmEngine(live.lmk, policy=SecurityPolicy(any_export=True))
    assert run(legacy, f"A01001U;1{tmk}U")[0] == "00"


# --------------------------------------------------------------------------- (d) PIN rules


def _pin_keys(engine: HsmEngine) -> tuple[bytes, str, bytes, str]:
    tpk_clear, zpk_clear = crypto.generate_random_key(16), crypto.generate_random_key(16)
    return (tpk_clear, under_lmk(engine, "002", tpk_clear), zpk_clear,
            under_lmk(engine, "001", zpk_clear))


def test_ca_cc_refuse_iso0_downgrade_and_account_rebinding(live: HsmEngine) -> None:
    tpk_clear, tpk, zpk_clear, zpk = _pin_keys(live)
    block = crypto.encrypt_tdes_ecb(tpk_clear, crypto.encode_pinblock("1234", ACCOUNT, "01"))
    fields = f"12{block.hex().upper()}"
    for dst in ("03", "05"):  # ISO 0 -> IBM 3624 / ISO 1: the account binding would be lost
        assert run(live, f"CA{tpk}{zpk}{fields}01{dst}{ACCOUNT}")[0] == "69"
    out = ok(live, f"CA{tpk}{zpk}{fields}0101{ACCOUNT}")
    zpk_block = out[2:18]
    zpk2_clear = crypto.generate_random_key(16)
    zpk2 = under_lmk(live, "001", zpk2_clear)
    # CC: the same downgrade, the route to re-binding the PIN to another account
    assert run(live, f"CC{zpk}{zpk2}12{zpk_block}0105{ACCOUNT}")[0] == "69"
    assert run(live, f"CC{zpk}{zpk2}12{zpk_block}0103{ACCOUNT}")[0] == "69"
    # CC naming another account: the ISO 0 fill no longer decodes -> 20, nothing out
    assert run(live, f"CC{zpk}{zpk2}12{zpk_block}0101{OTHER_ACCOUNT}")[0] == "20"
    assert ok(live, f"CC{zpk}{zpk2}12{zpk_block}0147{ACCOUNT}")[18:] == "47"
    # ISO 1 -> ISO 0 is allowed (PCI PIN): format 1 blocks may be bound to an account
    iso1 = crypto.encrypt_tdes_ecb(zpk_clear, crypto.encode_pinblock_iso_1("1234"))
    assert ok(live, f"CC{zpk}{zpk2}12{iso1.hex().upper()}0501{ACCOUNT}")[:2] == "04"
    legacy = HsmEngine(live.lmk, policy=SecurityPolicy(pin_downgrade=True))
    out = ok(legacy, f"CA{tpk}{zpk}{fields}0103{ACCOUNT}")
    assert crypto.decipher_pinblock(zpk_clear, h(out[2:18]), ACCOUNT, "03") == "1234"


def test_da_refuses_a_weak_clear_decimalisation_table(live: HsmEngine) -> None:
    """The attack: with an all-zeros table every natural PIN is 0000, so the offset an
    attacker submits equals the PIN: DA becomes a PIN oracle. Weak tables answer 15; a proper
    table still verifies."""
    tpk_clear, tpk, _, _ = _pin_keys(live)
    pvk_clear = crypto.generate_random_key(16)
    pvk = under_lmk(live, "002", pvk_clear)
    block = crypto.encrypt_tdes_ecb(tpk_clear, crypto.encode_pinblock("1234", ACCOUNT, "01"))
    template = "12345N" + "FFFFFF"
    data = commands.ibm_validation_data(template, ACCOUNT)

    def da(table: str, engine: HsmEngine = live) -> str:
        offset = crypto.generate_ibm3624_offset(pvk_clear, table, "1234", data)
        return run(engine, f"DA{tpk}{pvk}12{block.hex().upper()}0104{ACCOUNT}{table}"
                           f"{template}{offset}FFFFFFFF")[0]

    assert da("0123456789012345") == "00"
    for weak in ("0" * 16, "0000000000000001", "0123456700000000", "0101010101010101"):
        assert da(weak) == "15", weak
    assert da("0" * 16, HsmEngine(live.lmk, policy=SecurityPolicy(clear_dectab=True))) == "00"


# --------------------------------------------------------------------------- (e) weak keys


def test_weak_pin_and_mac_keys_are_refused(live: HsmEngine) -> None:
    double, single = crypto.generate_random_key(16), crypto.generate_random_key(8)
    # creating them: A0 under the LMK in X, Y or single DES (Z)
    for key_type in ("001", "002", "003", "008"):
        for scheme in ("X", "Y", "Z"):
            assert run(live, f"A00{key_type}{scheme}")[0] == "26", (key_type, scheme)
        assert run(live, f"A00{key_type}U")[0] == "00"
    assert run(live, "A00000Z")[0] == "00"  # a ZMK is not a PIN/MAC key
    # using them: a TAK in X scheme, a single-DES TAK, a single-DES TPK
    message = b"0123456789ABCDEF"
    for tak in (under_lmk(live, "003", double, "X"), under_lmk(live, "003", single, "Z")):
        fields = f"00131003{tak}{len(message):04X}".encode() + message
        assert run(live, b"M6" + fields)[0] == "26"
        assert run(live, f"Y0003{tak}{len(message):04X}".encode() + message)[0] == "26"
        with pytest.raises(HsmError) as refused:
            live.generate_mac(tak, message)
        assert refused.value.code == "26"
    tpk_single = under_lmk(live, "002", single, "Z")
    zpk = under_lmk(live, "001", double)
    block = "0" * 16
    assert run(live, f"CA{tpk_single}{zpk}12{block}0101{ACCOUNT}")[0] == "26"
    # an X-scheme (no variant) TMK exports nothing
    tmk_x = under_lmk(live, "002", double, "X")
    assert run(live, f"A01002U;1{tmk_x}X")[0] == "26"
    # legacy: the old behaviour back
    legacy = HsmEngine(live.lmk, policy=SecurityPolicy(weak_keys=True))
    tak = under_lmk(live, "003", single, "Z")
    fields = f"00111003{tak}{len(message):04X}".encode() + message
    assert run(legacy, b"M6" + fields)[0] == "00"
    assert run(legacy, "A00002X")[0] == "00"


# --------------------------------------------------------------------------- (f) LMK file


def test_a_live_lmk_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lmk"
    generate_lmk_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(HsmError) as refused:
        load_lmk(str(path))
    assert refused.value.code == "13" and "chmod 600" in str(refused.value)
    os.chmod(path, 0o640)
    with pytest.raises(HsmError):
        load_lmk(str(path))
    os.chmod(path, 0o600)
    assert not load_lmk(str(path)).is_test


def test_legacy_settings_by_name() -> None:
    assert SecurityPolicy.from_names(["all"]) == SecurityPolicy.legacy()
    assert SecurityPolicy.from_names(["weak-keys"]).names() == ["weak-keys"]
    with pytest.raises(HsmError):
        SecurityPolicy.from_names(["no-such"])


# --------------------------------------------------------------------------- (e) 002 separation


def test_key_type_002_separation_keeps_tmk_tpk_and_pvk_apart(live: HsmEngine) -> None:
    """The attack behind the export one: a PVK or a TPK handed to A0 as the "TMK". Under the
    variant LMK all three are type 002, so the HSM cannot tell. With key type 002 separation
    (TPK 70D, TMK 80D, PVK 002) the stand-in decrypts under the wrong LMK variant: 10."""
    separated = HsmEngine(live.lmk, policy=SecurityPolicy(separate_002=True))
    tmk_clear, tpk_clear, pvk_clear = (crypto.generate_random_key(16) for _ in range(3))
    tmk = under_lmk(separated, "80D", tmk_clear)
    tpk = under_lmk(separated, "70D", tpk_clear)
    pvk = under_lmk(separated, "002", pvk_clear)
    assert run(separated, f"A0170DU;1{tmk}X")[0] == "00"  # a TPK under the TMK: fine
    assert run(separated, f"A01003U;1{tmk}X")[0] == "00"  # a TAK
    assert run(separated, f"A01002U;1{tmk}X")[0] == "04"  # a PVK never goes to a terminal
    for stand_in in (pvk, tpk):
        assert run(separated, f"A0170DU;1{stand_in}X")[0] == "10"
    # PIN work takes each key only in its own role
    block = crypto.encrypt_tdes_ecb(tpk_clear, crypto.encode_pinblock("1234", ACCOUNT, "01"))
    pvv = crypto.generate_visa_pvv(pvk_clear, "1", "1234", PAN)
    dc = f"{block.hex().upper()}01{ACCOUNT}1{pvv}"
    assert run(separated, f"DC{tpk}{pvk}{dc}")[0] == "00"
    assert separated.verify_pin_pvv(tpk, pvk, block, ACCOUNT, "1", pvv)
    assert run(separated, f"DC{pvk}{pvk}{dc}")[0] == "10"  # the PVK as the TPK
    assert run(separated, f"DC{tpk}{tpk}{dc}")[0] == "10"  # the TPK as the PVK
    # without the setting, a PVK under 002 is accepted as the TMK (what the issue found)
    assert run(live, f"A01002U;1{under_lmk(live, '002', pvk_clear)}X")[0] == "00"


# --------------------------------------------------------------------------- (f) data keys


def test_m0_m2_data_under_a_zek_and_m2_needs_the_authorised_state(live: HsmEngine) -> None:
    zek_clear = crypto.generate_random_key(16)
    zek = under_lmk(live, "00A", zek_clear)
    data = PAN.ljust(24, "F").encode()
    ecb = ok(live, f"M00001{'00A'}{zek}{len(data):04X}".encode() + data)
    assert ecb == f"{48:04X}" + crypto.encrypt_tdes_ecb(zek_clear, data).hex().upper()
    iv = "0123456789ABCDEF"
    cbc = ok(live, f"M00101{'00A'}{zek}{iv}{len(data):04X}".encode() + data)
    assert cbc[:16] == iv
    request = f"M20110{'00A'}{zek}{iv}".encode() + cbc[16:].encode()
    assert run(live, request) == ("17", b"")  # clear card data out: Authorised only
    live.authorise(60)
    assert run(live, request) == ("00", iv.encode() + f"{len(data):04X}".encode() + data)
    assert run(live, f"M00001003{zek}0008ABCDEFGH")[0] == "04"  # a TAK cannot encrypt data
    assert run(live, f"M00001{'00A'}{zek}0005ABCDE")[0] == "80"  # not whole blocks
