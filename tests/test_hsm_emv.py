"""EMV cryptograms: known answers from protocol.md section 8 and pyemv's published vectors,
pyemv as an independent oracle, KW modes 0/1/2 over both transports, A0 for key type 109."""

from __future__ import annotations

import logging
import warnings
from collections.abc import AsyncIterator

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim import crypto, emv
from hsm_sim.client import HsmClient
from hsm_sim.commands import HsmEngine
from hsm_sim.crypto.errors import CryptoError
from hsm_sim.lmk import decrypt_key_under_kek
from hsm_sim.server import serve_hsm

with warnings.catch_warnings():  # pyemv imports cryptography's deprecated TripleDES
    warnings.simplefilter("ignore")
    from pyemv import ac as pyemv_ac
    from pyemv import kd as pyemv_kd

h = bytes.fromhex
ENGINE = HsmEngine.test()
IMK = "9E15204313F7318ACB79B90BD986AD29"
PAN, PSN = "6222021234567890128", "01"
Y = h("2123456789012801")
ATC, UN = h("0001"), h("1A2B3C4D")
DATA = h("000000012345000000000000015600000000000156261129001A2B3C4D7C00000107001203A0000000")
ARQC, ARPC = h("EEA5EECC83A08C96"), h("3E3D17E3C39C2074")


@pytest.mark.parametrize(("imk", "pan", "psn", "mk", "kcv"), [
    (IMK, PAN, PSN, "F1E0B6B592544373A494F252752386DC", "A0B79C"),  # protocol.md section 8
    ("0123456789ABCDEFFEDCBA9876543210", "12345678901234567", "01",
     "73AD54688CEF2934B0979857E3C719F1", None),  # pyemv's docstring
    ("0123456789ABCDEFFEDCBA9876543210", "12345678901234567", "45", None, "FF089D"),  # pyemv
])
def test_icc_mk_option_a(imk: str, pan: str, psn: str, mk: str | None, kcv: str | None) -> None:
    derived = emv.derive_icc_mk_option_a(h(imk), pan, psn)
    if mk is not None:
        assert derived.hex().upper() == mk
    if kcv is not None:
        assert crypto.generate_kcv(derived).hex().upper() == kcv


def test_section_8_worked_values() -> None:
    assert crypto.generate_kcv(h(IMK)).hex().upper() == "850571"
    assert emv.build_option_a_y(PAN, PSN) == Y
    mk = emv.derive_icc_mk_option_a(h(IMK), PAN, PSN)
    sk = emv.derive_session_key_common(mk, ATC)
    assert sk.hex().upper() == "3DC802975797DF08C23BDAF201A29E3E"
    assert crypto.generate_kcv(sk).hex().upper() == "5B62E5"
    assert emv.generate_ac(sk, DATA) == ARQC
    assert emv.verify_ac(sk, DATA, ARQC) and not emv.verify_ac(sk, DATA[:-1], ARQC)
    assert emv.generate_arpc_method_1(sk, ARQC, b"00") == ARPC


@settings(max_examples=40, deadline=None)
@given(imk=st.binary(min_size=16, max_size=16), pan=st.from_regex(r"\A[0-9]{12,19}\Z"),
       psn=st.from_regex(r"\A[0-9]{2}\Z"), atc=st.binary(min_size=2, max_size=2),
       data=st.binary(min_size=1, max_size=64), arc=st.sampled_from([b"00", b"05", b"51"]))
def test_agrees_with_pyemv(imk: bytes, pan: str, psn: str, atc: bytes, data: bytes,
                           arc: bytes) -> None:
    imk = crypto.adjust_key_parity(imk)
    if imk[:8] == imk[8:]:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mk = pyemv_kd.derive_icc_mk_a(imk, pan, psn)
        sk = pyemv_kd.derive_common_sk(mk, atc + bytes(6))
        arqc = pyemv_ac.generate_ac(sk, data, pyemv_ac.PaddingType.EMV)
        arpc = pyemv_ac.generate_arpc_1(sk, arqc, arc)
    assert emv.derive_icc_mk_option_a(imk, pan, psn) == mk
    assert emv.derive_session_key_common(mk, atc) == sk
    assert emv.generate_ac(sk, data) == arqc
    assert emv.generate_arpc_method_1(sk, arqc, arc) == arpc


@pytest.mark.parametrize(("call", "code"), [
    (lambda: emv.derive_icc_mk_option_a(h("0123456789ABCDEF"), PAN, PSN), "27"),
    (lambda: emv.build_option_a_y("62220X", PSN), "15"),
    (lambda: emv.build_option_a_y(PAN, "1"), "15"),
    (lambda: emv.derive_session_key_common(h(IMK), b"\x01"), "15"),
    (lambda: emv.generate_arpc_method_1(h(IMK), ARQC[:7], b"00"), "15"),
])
def test_bad_inputs(call: object, code: str) -> None:
    with pytest.raises(CryptoError) as info:
        call()  # type: ignore[operator]
    assert info.value.code == code


def _imk_under_lmk() -> str:
    response = ENGINE.handle(b"0000Y4109U" + IMK.encode())
    assert response[:8] == b"0000Y500", response
    return response[8:41].decode()


def _kw(mode: str, mk: str, arqc: bytes = ARQC, arc: bytes = b"00", scheme: str = "1",
        data: bytes = DATA, sep: bytes = b";") -> bytes:
    tail = arc if mode in "12" else b""
    return ENGINE.handle(b"0000KW" + f"{mode}{scheme}{mk}".encode() + Y + ATC + UN
                         + f"{len(data):02X}".encode() + data + sep + arqc + tail)


def test_kw_modes_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    mk = _imk_under_lmk()
    caplog.set_level(logging.INFO, logger="hsm_sim.audit")
    assert _kw("0", mk) == b"0000KX00"
    assert _kw("1", mk) == b"0000KX00" + ARPC
    assert _kw("2", mk) == b"0000KX00" + ARPC
    bad = bytes(8)
    assert _kw("0", mk, arqc=bad) == b"0000KX01"
    assert _kw("1", mk, arqc=bad) == b"0000KX01"
    assert _kw("2", mk, arqc=bad)[:8] == b"0000KX00"  # mode 2 does not verify
    assert _kw("0", mk, scheme="2") == b"0000KX15"
    assert _kw("3", mk) == b"0000KX15"
    assert _kw("0", mk, sep=b"") == b"0000KX15"
    assert _kw("1", mk, arc=b"") == b"0000KX15"
    audit = "\n".join(r.getMessage() for r in caplog.records)
    assert "cmd=KW err=00 kcv=850571" in audit and "cmd=KW err=01" in audit
    for secret in (ARQC.hex(), ARPC.hex(), IMK):
        assert secret.upper() not in audit.upper()


def test_kw_refuses_a_key_of_another_type() -> None:
    tak = ENGINE.handle(b"0000Y4003U" + IMK.encode())[8:41].decode()
    assert _kw("0", tak) == b"0000KX10"  # decrypts under the wrong variant: parity error


def test_a0_generates_and_exports_mk_ac() -> None:
    response = ENGINE.handle(b"0000A00109U")
    assert response[:8] == b"0000A100"
    key, kcv = response[8:41].decode(), response[41:47].decode()
    clear = ENGINE.lmk.decrypt_key("109", key)
    assert crypto.generate_kcv(clear).hex().upper() == kcv
    zmk = ENGINE.handle(b"0000Y4000U" + b"0123456789ABCDEFFEDCBA9876543210")[8:41]
    exported = ENGINE.handle(b"0000A01109U" + zmk + b"U")
    assert exported[:8] == b"0000A100", exported
    under_lmk, under_zmk = exported[8:41].decode(), exported[41:74].decode()
    clear = ENGINE.lmk.decrypt_key("109", under_lmk)
    zmk_clear = h("0123456789ABCDEFFEDCBA9876543210")
    assert decrypt_key_under_kek(zmk_clear, "U", h(under_zmk[1:])) == clear
    assert exported[74:80].decode() == crypto.generate_kcv(clear).hex().upper()


@pytest.fixture(params=["in-process", "tcp"])
async def client(request: pytest.FixtureRequest, nursery: trio.Nursery
                 ) -> AsyncIterator[HsmClient]:
    if request.param == "in-process":
        hsm = HsmClient.in_process(ENGINE)
    else:
        listeners = await nursery.start(serve_hsm, ENGINE, "127.0.0.1", 0, 4)
        hsm = HsmClient.tcp("127.0.0.1", listeners[0].socket.getsockname()[1])
    yield hsm
    await hsm.aclose()


async def test_kw_through_the_client(client: HsmClient) -> None:
    mk = (await client.import_clear_key("109", IMK)).key
    assert await client.verify_arqc(mk, Y, ATC, UN, DATA, ARQC)
    assert not await client.verify_arqc(mk, Y, ATC, UN, DATA, bytes(8))
    assert await client.verify_arqc_generate_arpc(mk, Y, ATC, UN, DATA, ARQC, "00") == ARPC
    assert await client.verify_arqc_generate_arpc(mk, Y, ATC, UN, DATA, bytes(8), "00") is None
    assert await client.generate_arpc(mk, Y, ATC, UN, DATA, ARQC, "00") == ARPC
    generated = await client.generate_key("109")
    assert generated.key.startswith("U") and len(generated.kcv) == 6
