"""The HSM side of a host-to-host link (protocol.md section 9): working keys under the link's
ZMK (A0 export, A6/FA import, BU check values), X9.19 MACs under the ZAK (M6/M8, key type 008)
and PIN translation TPK -> ZPK (CA). Every key here is under the LMK or the ZMK; no clear key
leaves the HSM."""

from __future__ import annotations

from dataclasses import dataclass

from hsm_sim.client import HsmClient
from hsm_sim.errors import HsmError
from specs.composite import KeyData

ZPK_TYPE = "001"
ZAK_TYPE = "008"
CHECK_VALUE_LENGTH = 4
_MAC_HEAD = b"00131" + ZAK_TYPE.encode()
"""M6/M8: one block, binary input, 16H MAC, ISO 9797-1 algorithm 3 (X9.19), padding 1."""


@dataclass(frozen=True)
class LinkKeys:
    """A link's working keys under the LMK."""

    zpk: str
    zak: str


def _split(data: str) -> tuple[str, str]:
    length = {"U": 33, "X": 33, "T": 49, "Y": 49}.get(data[:1], 16)
    return data[:length], data[length:]


async def _check_value(hsm: HsmClient, code: str, key: str) -> bytes:
    flag = "1" if len(key) == 33 else "0"
    data = (await hsm.call("BU", f"{code}{flag}{key}".encode()))[1].decode()
    return bytes.fromhex(data[:16])[:CHECK_VALUE_LENGTH]


async def _export(hsm: HsmClient, zmk: str, key_type: str, code: str) -> tuple[str, bytes,
                                                                              bytes]:
    data = (await hsm.call("A0", f"1{key_type}U;0{zmk}X".encode()))[1].decode()
    under_lmk, rest = _split(data)
    under_zmk, _ = _split(rest)
    return under_lmk, bytes.fromhex(under_zmk[1:]), await _check_value(hsm, code, under_lmk)


async def generate_link_keys(hsm: HsmClient, zmk: str) -> tuple[LinkKeys, KeyData]:
    """Upstream side of 0800/101: a fresh ZPK and ZAK, under the LMK and under the ZMK."""
    zpk, zpk_zmk, zpk_cv = await _export(hsm, zmk, ZPK_TYPE, "01")
    zak, zak_zmk, zak_cv = await _export(hsm, zmk, ZAK_TYPE, "08")
    return LinkKeys(zpk, zak), KeyData(zpk_zmk, zpk_cv, zak_zmk, zak_cv)


async def import_link_keys(hsm: HsmClient, zmk: str, data: KeyData) -> LinkKeys:
    """Acquirer side of 0810/101: the keys under the LMK; HsmError when a check value
    differs from the one sent."""
    keys = []
    for key_type, code, ciphertext, cv in ((ZPK_TYPE, "01", data.pik, data.pik_cv),
                                           (ZAK_TYPE, "08", data.mak, data.mak_cv)):
        out = (await hsm.call("A6", f"{key_type}{zmk}X{ciphertext.hex().upper()}U".encode()))
        key, _ = _split(out[1].decode())
        if await _check_value(hsm, code, key) != cv:
            raise HsmError(f"key type {key_type} check value differs", code="10")
        keys.append(key)
    return LinkKeys(*keys)


async def generate_mac_zak(hsm: HsmClient, zak: str, data: bytes) -> bytes:
    """F64 (8 bytes) under the link's ZAK."""
    out = await hsm.call("M6", _MAC_HEAD + zak.encode() + f"{len(data):04X}".encode() + data)
    return bytes.fromhex(out[1].decode())


async def verify_mac_zak(hsm: HsmClient, zak: str, data: bytes, mac: bytes) -> bool:
    if len(mac) != 8:
        return False
    fields = (_MAC_HEAD + zak.encode() + f"{len(data):04X}".encode() + data
              + mac.hex().upper().encode())
    code, _ = await hsm.call("M8", fields, ok=("00", "01"))
    return code == "00"


async def verify_pin_zpk(hsm: HsmClient, zpk: str, pvk: str, block: bytes, account: str,
                         pvv: str, pvki: int = 1) -> bool:
    """EC: an interchange PIN (under the ZPK) against the card's PVV."""
    fields = f"{zpk}{pvk}{block.hex().upper()}01{account}{pvki}{pvv}"
    code, _ = await hsm.call("EC", fields.encode(), ok=("00", "01"))
    return code == "00"
