"""hsm_sim.crypto: published known-answer vectors, psec as a second opinion, doctests."""

import doctest

import psec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim import commands, crypto, lmk
from hsm_sim.crypto import CryptoError, des, mac, pin, pinblock
from hsm_sim.errors import HsmError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

h = bytes.fromhex
X919_KEY = h("0123456789ABCDEFFEDCBA9876543210")


@pytest.mark.parametrize("module", [des, pinblock, pin, mac, lmk, commands])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.failed == 0 and result.attempted > 0


# --------------------------------------------------------------------------- known answers


def test_x919_ansi_vector() -> None:
    assert crypto.generate_mac_x919(X919_KEY, b"Now is the time for all ") == h("A1C72E74EA3FA9B6")


def test_x99_ansi_vector() -> None:
    # ANSI X9.9 / FIPS 113 example: key 0123456789ABCDEF, "7654321 Now is the time for "
    key = h("0123456789ABCDEF")
    mac = crypto.generate_mac_x99(key, b"7654321 Now is the time for ")
    assert mac[:4] == h("F1D30F68")


def test_iso9797_alg1_alg3_psec_examples() -> None:
    data = h("1234567890ABCDEF")
    assert crypto.generate_mac_iso9797_alg1(X919_KEY, data, 2) == h("925B1737EF681AD3")
    assert crypto.generate_mac_iso9797_alg3(X919_KEY, data, 1) == psec.mac.generate_retail_mac(
        X919_KEY[:8], X919_KEY[8:], data, 1
    )


def test_tmk_unwrap_vector() -> None:
    tmk = h("CA5D92598DCA48CE8A4C76361A9269E9")
    clear = crypto.unwrap_key_tmk(tmk, h("6701EAD6A9AD51E51AA406E2C27FCFA9"), h("8D0A74B8"))
    assert clear == h("807A23AD32B36D457AE91FDF927570EA")
    assert crypto.wrap_key_tmk(tmk, clear) == (h("6701EAD6A9AD51E51AA406E2C27FCFA9"), h("8D0A74B8"))
    with pytest.raises(CryptoError) as err:
        crypto.unwrap_key_tmk(tmk, h("6701EAD6A9AD51E51AA406E2C27FCFA9"), h("8D0A74B9"))
    assert err.value.code == "01"


def test_pinblock_vectors() -> None:
    assert crypto.encode_pinblock_iso_0("1234", "43219876543210987") == h("0412AC89ABCDEF67")
    block = crypto.encode_pinblock_iso_0("1234", "6222021234567890128")
    assert block == h("041226CBA9876FED")
    pik = h("0B681FC20E62C7340B681FC20E62C734")  # K1 = K2: DES3 alone would refuse it
    assert crypto.encrypt_tdes_ecb(pik, block) == h("1B96E39DDF2F5140")
    account = crypto.extract_account_number("6222021234567890128")
    assert crypto.decipher_pinblock(pik, h("1B96E39DDF2F5140"), account, "01") == "1234"


def test_iso9564_format_examples() -> None:
    # ISO 9564-1 annex examples (PIN 1234, PAN 4321987654321098x style)
    assert crypto.encode_pinblock_ibm_3624("1234") == h("1234FFFFFFFFFFFF")
    assert crypto.encode_pinblock_iso_1("1234", "ABCDEF9876").hex().upper() == "141234ABCDEF9876"
    assert crypto.decode_pinblock_iso_1(h("141234ABCDEF9876")) == "1234"
    block3 = crypto.encode_pinblock_iso_3("1234", "43219876543210987", fill="ABCDEFABCD")
    assert block3 == crypto.xor_bytes(h("341234ABCDEFABCD"), h("0000987654321098"))
    assert crypto.decode_pinblock_iso_3(block3, "43219876543210987") == "1234"


def test_cup_ecb_vector_uses_hex_decoded_block_data() -> None:
    data = h("1234567890ABCDEFABCDEF1234567890")
    assert crypto.generate_mac_cup_ecb(h("2222222222222222"), data) == b"E267B6E2"
    # the left half of a double-length MAK is the DES key
    mak = h("22222222222222221111111111111111")
    assert crypto.generate_mac_cup_ecb(mak, data) == b"E267B6E2"
    # the ASCII reading of the vector's block data gives something else
    assert crypto.generate_mac_cup_ecb(mak, data.hex().upper().encode()) == b"88016178"


def test_kcv_vectors() -> None:
    assert crypto.generate_kcv(X919_KEY).hex().upper() == "08D7B4"
    assert crypto.generate_kcv(h("0123456789ABCDEF"), 8) == crypto.encrypt_tdes_ecb(
        h("0123456789ABCDEF"), bytes(8)
    )


def test_visa_pvv_and_ibm_offset_published() -> None:
    assert crypto.generate_visa_pvv(X919_KEY, "3", "4524", "1122334455667788") == "4021"
    table, data = "0123456789012345", "1234567890123456"
    offset = crypto.generate_ibm3624_offset(X919_KEY, table, "1234", data)
    expected = psec.pin.generate_ibm3624_offset(
        X919_KEY, "0123456789012345", "1234", "1234567890123456", 0, 16, "F"
    )
    assert offset == expected


def test_parity() -> None:
    assert crypto.check_key_parity(X919_KEY)
    assert not crypto.check_key_parity(h("CA5D92598DCA48CE"))
    fixed = crypto.adjust_key_parity(h("CA5D92598DCA48CE"))
    assert crypto.check_key_parity(fixed)
    assert crypto.encrypt_tdes_ecb(fixed, bytes(8)) == crypto.encrypt_tdes_ecb(
        h("CA5D92598DCA48CE"), bytes(8)
    )


def test_random_key_has_odd_parity_and_distinct_halves() -> None:
    key = crypto.generate_random_key(16)
    assert crypto.check_key_parity(key) and key[:8] != key[8:]


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda: crypto.encode_pinblock_iso_0("123", "4321987654321098"), "24"),
        (lambda: crypto.encode_pinblock_iso_0("12a4", "4321987654321098"), "15"),
        (lambda: crypto.decode_pinblock_iso_0(h("1412AC89ABCDEF67"), "43219876543210987"), "20"),
        (lambda: crypto.decode_pinblock_iso_0(h("0F12AC89ABCDEF67"), "43219876543210987"), "24"),
        (lambda: crypto.decode_pinblock_iso_0(h("0412AC89ABCDEF00"), "43219876543210987"), "20"),
        (lambda: crypto.decode_pinblock_ibm_3624(h("12F4FFFFFFFFFFFF")), "20"),
        (lambda: crypto.encode_pinblock("1234", "123456789012", "48"), "23"),
        (lambda: crypto.encrypt_tdes_ecb(b"1234567", bytes(8)), "27"),
        (lambda: crypto.encrypt_tdes_ecb(X919_KEY, bytes(7)), "80"),
        (lambda: crypto.generate_mac_iso9797_alg3(X919_KEY[:8], b"x"), "27"),
        (lambda: crypto.pad_mac_data(b"x", 0), "80"),
        (lambda: crypto.pad_mac_data(b"x", 3), "15"),
    ],
)
def test_bad_input_raises_crypto_error_with_code(call: object, code: str) -> None:
    with pytest.raises(CryptoError) as err:
        call()  # type: ignore[operator]
    assert err.value.code == code


# --------------------------------------------------------------------------- psec oracle

des_keys = st.sampled_from([8, 16, 24]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
double_keys = st.binary(min_size=16, max_size=16).filter(lambda k: k[:8] != k[8:])
pins = st.text("0123456789", min_size=4, max_size=12)
pans = st.text("0123456789", min_size=13, max_size=19)
messages = st.binary(max_size=200)
oracle = settings(max_examples=60, deadline=None)


@oracle
@given(pin=pins, pan=pans)
def test_iso0_matches_psec(pin: str, pan: str) -> None:
    block = crypto.encode_pinblock_iso_0(pin, pan)
    assert block == psec.pinblock.encode_pinblock_iso_0(pin, pan)
    assert crypto.decode_pinblock_iso_0(block, pan) == pin


@oracle
@given(pin=pins, pan=pans)
def test_iso3_matches_psec_decoder(pin: str, pan: str) -> None:
    block = crypto.encode_pinblock_iso_3(pin, pan)
    assert psec.pinblock.decode_pinblock_iso_3(block, pan) == pin
    assert crypto.decode_pinblock_iso_3(psec.pinblock.encode_pinblock_iso_3(pin, pan), pan) == pin


@oracle
@given(key=st.binary(min_size=16, max_size=16), pin=pins, pan=pans)
def test_iso4_matches_psec(key: bytes, pin: str, pan: str) -> None:
    block = crypto.encipher_pinblock_iso_4(key, pin, pan)
    assert psec.pinblock.decipher_pinblock_iso_4(key, block, pan) == pin
    theirs = psec.pinblock.encipher_pinblock_iso_4(key, pin, pan)
    assert crypto.decipher_pinblock_iso_4(key, theirs, pan) == pin


@oracle
@given(key=double_keys, data=messages)
def test_x919_matches_psec(key: bytes, data: bytes) -> None:
    expected = psec.mac.generate_retail_mac(key[:8], key[8:], data, 1)
    assert crypto.generate_mac_x919(key, data) == expected
    assert crypto.generate_mac_iso9797_alg3(key, data, 2) == psec.mac.generate_retail_mac(
        key[:8], key[8:], data, 2
    )


@oracle
@given(key=des_keys, data=messages, padding=st.sampled_from([1, 2]))
def test_alg1_matches_psec(key: bytes, data: bytes, padding: int) -> None:
    assert crypto.generate_mac_iso9797_alg1(key, data, padding) == psec.mac.generate_cbc_mac(
        key, data, padding
    )


@oracle
@given(key=des_keys, data=st.binary(min_size=8, max_size=64).map(lambda b: b[: len(b) // 8 * 8]))
def test_tdes_and_kcv_match_psec(key: bytes, data: bytes) -> None:
    assert crypto.encrypt_tdes_ecb(key, data) == psec.des.encrypt_tdes_ecb(key, data)
    assert crypto.decrypt_tdes_ecb(key, data) == psec.des.decrypt_tdes_ecb(key, data)
    assert crypto.generate_kcv(key, 3) == psec.des.generate_kcv(key, 3)
    assert crypto.adjust_key_parity(key) == psec.des.adjust_key_parity(key)


@oracle
@given(key=st.binary(min_size=8, max_size=8))
def test_equal_halves_key_is_single_des(key: bytes) -> None:
    assert crypto.encrypt_tdes_ecb(key * 2, bytes(8)) == psec.des.encrypt_tdes_ecb(key, bytes(8))
    assert crypto.encrypt_tdes_ecb(key * 3, bytes(8)) == psec.des.encrypt_tdes_ecb(key, bytes(8))


@oracle
@given(key=double_keys, pin=pins, pan=pans, pvki=st.sampled_from("0123456789"))
def test_pvv_matches_psec(key: bytes, pin: str, pan: str, pvki: str) -> None:
    assert crypto.generate_visa_pvv(key, pvki, pin[:4], pan) == psec.pin.generate_visa_pvv(
        key, pvki, pin[:4], pan
    )


@oracle
@given(
    key=des_keys,
    pin=pins,
    data=st.text("0123456789", min_size=16, max_size=16),
    table=st.text("0123456789", min_size=16, max_size=16),
)
def test_ibm3624_offset_matches_psec(key: bytes, pin: str, data: str, table: str) -> None:
    ours = crypto.generate_ibm3624_offset(key, table, pin, data)
    assert ours == psec.pin.generate_ibm3624_offset(key, table, pin, data, 0, 16, "F")


@oracle
@given(tmk=double_keys, key=double_keys)
def test_wrap_unwrap_round_trip(tmk: bytes, key: bytes) -> None:
    ciphertext, cv = crypto.wrap_key_tmk(tmk, key)
    assert ciphertext == psec.des.encrypt_tdes_ecb(tmk, key)
    assert cv == psec.des.generate_kcv(key, 4)
    assert crypto.unwrap_key_tmk(tmk, ciphertext, cv) == key


@oracle
@given(
    key=st.binary(min_size=16, max_size=16),
    src=st.sampled_from(crypto.DES_PINBLOCK_FORMATS),
    dst=st.sampled_from(crypto.DES_PINBLOCK_FORMATS),
    pin=pins,
    account=st.text("0123456789", min_size=12, max_size=12),
)
def test_translate_round_trip(key: bytes, src: str, dst: str, pin: str, account: str) -> None:
    block = crypto.encipher_pinblock(key, pin, account, src)
    length, out = crypto.translate_pinblock(key, X919_KEY, block, account, src, dst)
    assert length == f"{len(pin):02d}"
    assert crypto.decipher_pinblock(X919_KEY, out, account, dst) == pin


def test_crypto_error_is_a_value_error_the_hsm_maps() -> None:
    """Pure crypto raises CryptoError (a ValueError, not HsmError); the HSM answers its code."""
    with pytest.raises(CryptoError) as err:
        crypto.encode_pinblock_iso_0("12", "43219876543210987")
    assert isinstance(err.value, ValueError) and not isinstance(err.value, HsmError)
    assert err.value.code == "24"
    engine = commands.HsmEngine.test()
    # BA with a 2-digit PIN: the PIN block encoder refuses (24), the HSM answers 24
    assert engine.handle(b"0000BA" + b"12FFFFFFFFFFF" + b"987654321098")[6:8] == b"24"
