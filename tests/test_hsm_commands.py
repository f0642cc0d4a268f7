"""hsm_sim.commands under the test LMK: contract vectors, every command, every error path."""

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_sim import crypto
from hsm_sim.commands import COMMANDS, HsmEngine, SecurityPolicy, ibm_validation_data
from hsm_sim.errors import HsmError
from hsm_sim.lmk import (
    LmkSet,
    decrypt_key_under_kek,
    generate_lmk_file,
    load_lmk,
    parse_key_field,
    published_test_lmk,
)

h = bytes.fromhex
PIK = "0B681FC20E62C7340B681FC20E62C734"
MAK = "7962D9ECE03D1ACD4C76089DCE131543"
TMK = "CA5D92598DCA48CE8A4C76361A9269E9"
X919_KEY = "0123456789ABCDEFFEDCBA9876543210"
PAN = "6222021234567890128"
ACCOUNT = crypto.extract_account_number(PAN)
ENGINE = HsmEngine.test()
LEGACY = HsmEngine.test(policy=SecurityPolicy.legacy())
"""The same test LMK with every legacy setting on (single-DES and X/Y keys, downgrades)."""


def run(request: str | bytes, engine: HsmEngine = ENGINE) -> tuple[str, str, bytes]:
    """(response code, error code, data) for a request without header."""
    raw = request.encode() if isinstance(request, str) else request
    response = engine.handle(b"HDR1" + raw)
    assert response[:4] == b"HDR1"
    return response[4:6].decode(), response[6:8].decode(), response[8:]


def ok(request: str | bytes, engine: HsmEngine = ENGINE) -> str:
    resp, err, data = run(request, engine)
    assert err == "00", (resp, err)
    return data.decode()


def imported(key_type: str, clear: str, engine: HsmEngine = ENGINE) -> str:
    scheme = {16: "Z", 32: "U", 48: "T"}[len(clear)]
    data = ok(f"Y4{key_type}{scheme}{clear}", engine)
    return data[: len(data) - 6]


def error_of(request: str | bytes) -> str:
    return run(request)[1]


# --------------------------------------------------------------------------- vectors


def test_bu_contract_vector() -> None:
    assert run("BU0200406FBB23A5214DF") == ("BV", "00", b"0035BBE340A4B763")
    assert run("BUFF00406FBB23A5214DF;002") == ("BV", "00", b"0035BBE340A4B763")


def test_nc_reports_lmk_check_value_and_version() -> None:
    resp, err, data = run("NC")
    expected = crypto.generate_kcv(published_test_lmk().pairs[0], 8).hex().upper()
    assert (resp, err, data[:16].decode(), len(data)) == ("ND", "00", expected, 25)


def test_a0_generate_under_lmk() -> None:
    data = ok("A00002U")
    key, kcv = data[:33], data[33:]
    clear = ENGINE.lmk.decrypt_key("002", key)
    assert crypto.check_key_parity(clear) and len(clear) == 16
    assert kcv == crypto.generate_kcv(clear).hex().upper()


def test_a0_export_under_tmk_scheme_x_is_plain_ecb() -> None:
    tmk = imported("002", crypto.adjust_key_parity(h(TMK)).hex().upper())
    data = ok(f"A01003U;1{tmk}X")
    under_lmk, under_tmk, kcv = data[:33], data[33:66], data[66:]
    clear = ENGINE.lmk.decrypt_key("003", under_lmk)
    assert under_tmk[0] == "X"
    assert crypto.encrypt_tdes_ecb(h(TMK), clear).hex().upper() == under_tmk[1:]
    assert crypto.unwrap_key_tmk(h(TMK), h(under_tmk[1:]), crypto.generate_kcv(clear, 4)) == clear
    assert kcv == crypto.generate_kcv(clear).hex().upper()


def test_a0_export_under_zmk_scheme_u_uses_variants() -> None:
    zmk_clear = crypto.generate_random_key(16)
    zmk = imported("000", zmk_clear.hex().upper())
    data = ok(f"A01001U{zmk}U")
    under_lmk, under_zmk = data[:33], data[33:66]
    clear = ENGINE.lmk.decrypt_key("001", under_lmk)
    assert decrypt_key_under_kek(zmk_clear, "U", h(under_zmk[1:])) == clear
    assert crypto.decrypt_tdes_ecb(zmk_clear, h(under_zmk[1:])) != clear  # variants applied
    # FA imports it back and agrees
    fa = ok(f"FA{zmk}{under_zmk}")
    assert ENGINE.lmk.decrypt_key("001", fa[:33]) == clear
    assert fa[33:] == crypto.generate_kcv(clear, 8).hex().upper()
    assert ok(f"FA{zmk}{under_zmk};UU1")[33:] == crypto.generate_kcv(clear).hex().upper()


@pytest.mark.parametrize(("command", "child_type"), [("HC", "002"), ("HA", "003")])
def test_hc_ha_give_the_same_key_twice(command: str, child_type: str) -> None:
    parent_clear = crypto.generate_random_key(16)
    parent = imported("002", parent_clear.hex().upper())
    data = ok(f"{command}{parent}")
    under_parent, under_lmk = data[:33], data[33:]
    clear = ENGINE.lmk.decrypt_key(child_type, under_lmk)
    assert decrypt_key_under_kek(parent_clear, "U", h(under_parent[1:])) == clear
    data_x = ok(f"{command}{parent};XU0")
    assert data_x[0] == "X"


def test_ca_translates_the_worked_sale_pin_block() -> None:
    tpk = imported("002", PIK)
    zpk_clear = crypto.generate_random_key(16)
    zpk = imported("001", zpk_clear.hex().upper())
    data = ok(f"CA{tpk}{zpk}121B96E39DDF2F51400101{ACCOUNT}")
    assert data[:2] == "04" and data[18:] == "01"
    assert crypto.decipher_pinblock(zpk_clear, h(data[2:18]), ACCOUNT, "01") == "1234"
    data = ok(f"CA{tpk}{zpk}121B96E39DDF2F51400147{ACCOUNT}")
    assert crypto.decipher_pinblock(zpk_clear, h(data[2:18]), ACCOUNT, "47") == "1234"
    # CC: ZPK -> ZPK
    zpk2_clear = crypto.generate_random_key(16)
    zpk2 = imported("001", zpk2_clear.hex().upper())
    cc = ok(f"CC{zpk}{zpk2}12{data[2:18]}4701{ACCOUNT}")
    assert crypto.decipher_pinblock(zpk2_clear, h(cc[2:18]), ACCOUNT, "01") == "1234"
    cc = ok(f"CC{zpk}{zpk2}12{data[2:18]}4703{ACCOUNT}", LEGACY)  # a downgrade: legacy only
    assert crypto.decipher_pinblock(zpk2_clear, h(cc[2:18]), ACCOUNT, "03") == "1234"


def _pvk() -> tuple[bytes, str]:
    clear = crypto.generate_random_key(16)
    return clear, imported("002", clear.hex().upper())


def test_ba_dg_dc_ec_pvv() -> None:
    pvk_clear, pvk = _pvk()
    pin_lmk = ok(f"BA1234FFFFFFFFF{ACCOUNT}")
    assert ok(f"BA1234F{ACCOUNT}") == pin_lmk  # any LMK-PIN length
    pvv = ok(f"DG{pvk}{pin_lmk}{ACCOUNT}1")
    assert pvv == crypto.generate_visa_pvv(pvk_clear, "1", "1234", PAN)
    tpk = imported("002", PIK)
    assert run(f"DC{tpk}{pvk}1B96E39DDF2F514001{ACCOUNT}1{pvv}") == ("DD", "00", b"")
    wrong = f"{(int(pvv) + 1) % 10000:04d}"
    assert run(f"DC{tpk}{pvk}1B96E39DDF2F514001{ACCOUNT}1{wrong}") == ("DD", "01", b"")
    zpk = imported("001", PIK)
    assert run(f"EC{zpk}{pvk}1B96E39DDF2F514001{ACCOUNT}1{pvv}") == ("ED", "00", b"")
    # a PVK pair as two concatenated single keys under LMK 14-15: legacy settings only
    pair = ENGINE.lmk.encrypt_key("002", "X", pvk_clear)[1:]
    assert error_of(f"DG{pair}{pin_lmk}{ACCOUNT}1") == "26"
    assert ok(f"DG{pair}{pin_lmk}{ACCOUNT}1", LEGACY) == pvv


def test_da_ibm_offset() -> None:
    pvk_clear, pvk = _pvk()
    tpk = imported("002", PIK)
    table, template = "0123456789012345", "12345N" + "FFFFFF"
    data = ibm_validation_data(template, ACCOUNT)
    offset = crypto.generate_ibm3624_offset(pvk_clear, table, "1234", data)
    good = f"DA{tpk}{pvk}121B96E39DDF2F51400104{ACCOUNT}{table}{template}{offset}FFFFFFFF"
    assert run(good)[:2] == ("DB", "00")
    bad_offset = f"{(int(offset) + 1) % 10000:04d}"
    bad = f"DA{tpk}{pvk}121B96E39DDF2F51400104{ACCOUNT}{table}{template}{bad_offset}FFFFFFFF"
    assert run(bad)[:2] == ("DB", "01")


def test_m6_m8_x919_vector() -> None:
    tak = imported("003", X919_KEY)
    message = b"Now is the time for all "
    fields = f"00131003{tak}{len(message):04X}".encode() + message
    assert run(b"M6" + fields) == ("M7", "00", b"A1C72E74EA3FA9B6")
    assert run(b"M8" + fields + b"A1C72E74EA3FA9B6")[:2] == ("M9", "00")
    assert run(b"M8" + fields + b"A1C72E74EA3FA9B7")[:2] == ("M9", "01")
    hex_msg = message.hex().upper().encode()
    hex_fields = f"01031003{tak}{len(hex_msg):04X}".encode() + hex_msg
    assert run(b"M6" + hex_fields) == ("M7", "00", b"A1C72E74")
    alg1 = f"0011{1}003{tak}{len(message):04X}".encode() + message
    expected = crypto.generate_mac_iso9797_alg1(h(X919_KEY), message, 1).hex().upper()
    assert run(b"M6" + alg1)[2] == expected.encode()
    zak = imported("008", X919_KEY)
    assert run(f"M6001310080{zak[1:]}".encode())[1] == "15"  # bare 32H is not a TAK field
    assert run(b"M6" + f"0013{1}008{zak}0018".encode() + message)[2] == b"A1C72E74EA3FA9B6"


def test_cup_ecb_extension_vector() -> None:
    # parity forced to 2323..; K1 = K2: the single-DES MAC of the published vector
    tak = imported("003", "2222222222222222" * 2)
    data = h("1234567890ABCDEFABCDEF1234567890")
    fields = f"003{tak}{len(data):04X}".encode() + data
    assert run(b"Y0" + fields) == ("Y1", "00", b"E267B6E2")
    assert run(b"Y2" + fields + b"E267B6E2")[:2] == ("Y3", "00")
    assert run(b"Y2" + fields + b"E267B6E3")[:2] == ("Y3", "01")


def test_components() -> None:
    data = ok("Y8002U2")
    key, kcv, parts = data[:33], data[33:39], data[39:]
    assert len(parts) == 64
    c1, c2 = h(parts[:32]), h(parts[32:])
    assert crypto.check_key_parity(c1) and crypto.check_key_parity(c2)
    combined = crypto.adjust_key_parity(crypto.xor_bytes(c1, c2))
    assert ENGINE.lmk.decrypt_key("002", key) == combined
    assert kcv == crypto.generate_kcv(combined).hex().upper()
    again = ok(f"Y6002U2{parts}")
    assert again[33:] == kcv  # same clear key (a fresh encryption is deterministic too)
    assert again[:33] == key


def test_trailer_is_ignored() -> None:
    assert run(b"BU0200406FBB23A5214DF\x19trailer-up-to-32-chars") == (
        "BV",
        "00",
        b"0035BBE340A4B763",
    )


# --------------------------------------------------------------------------- errors


def _even_parity_key_field() -> str:
    return ENGINE.lmk.encrypt_key("002", "U", h("22222222222222224444444444444444"))


@pytest.mark.parametrize(
    ("request_text", "expected"),
    [
        ("XX", ("ZZ", "40")),
        ("N", ("ZZ", "15")),
        ("", ("ZZ", "15")),
        ("NCjunk", ("ND", "15")),
        ("BU02", ("BV", "15")),
        ("BU0900406FBB23A5214DF", ("BV", "10")),  # under the BDK pair: parity error
        ("BU0700406FBB23A5214DF", ("BV", "04")),
        ("BU0230406FBB23A5214DF", ("BV", "05")),
        ("BU0210406FBB23A5214DF", ("BV", "27")),
        ("A00002Q", ("A1", "26")),
        ("A00992U", ("A1", "04")),
        ("A02002U", ("A1", "15")),
        ("A01002U;1U" + "0" * 32 + "Z", ("A1", "27")),
        ("BA12" + "0" * 12, ("BB", "24")),
        ("BA12AB" + "0" * 12, ("BB", "15")),
    ],
)
def test_error_codes(request_text: str, expected: tuple[str, str]) -> None:
    assert run(request_text)[:2] == expected


def test_parity_errors_10_and_11() -> None:
    bad = _even_parity_key_field()
    assert error_of(f"BU021{bad}") == "10"
    zpk = imported("001", PIK)
    tpk = imported("002", PIK)
    bad_zpk = ENGINE.lmk.encrypt_key("001", "U", h("22222222222222224444444444444444"))
    assert error_of(f"CA{bad}{zpk}121B96E39DDF2F51400101{ACCOUNT}") == "10"
    assert error_of(f"CA{tpk}{bad_zpk}121B96E39DDF2F51400101{ACCOUNT}") == "11"


def test_pin_errors_20_23_24() -> None:
    tpk = imported("002", PIK)
    zpk = imported("001", PIK)
    assert error_of(f"CA{tpk}{zpk}121B96E39DDF2F51400101{ACCOUNT[::-1]}") == "20"
    assert error_of(f"CA{tpk}{zpk}121B96E39DDF2F51409901{ACCOUNT}") == "23"
    assert error_of(f"CA{tpk}{zpk}121B96E39DDF2F51404801{ACCOUNT}") == "23"
    assert error_of(f"CA{tpk}{zpk}031B96E39DDF2F51400101{ACCOUNT}") == "24"
    six = crypto.encrypt_tdes_ecb(h(PIK), crypto.encode_pinblock("123456", ACCOUNT, "01"))
    assert error_of(f"CA{tpk}{zpk}05{six.hex().upper()}0101{ACCOUNT}") == "24"


def test_mac_errors() -> None:
    tak = imported("003", X919_KEY)
    assert error_of(f"M60013100{1}{tak}0001x") == "04"  # key type 001 cannot MAC
    assert error_of(f"M60013{0}003{tak}0003abc") == "80"  # padding 0 needs whole blocks
    assert error_of(f"M60013{1}003{tak}0010abc") == "15"  # declared length beyond the data
    assert error_of(f"M61013{1}003{tak}0003abc") == "15"  # mode flag 1 not supported
    assert error_of("Y4003Z0123456789ABCDEF") == "26"  # no single-DES TAK by default
    single = imported("003", "0123456789ABCDEF", LEGACY)
    assert run(f"M600131003{single}0003abc", LEGACY)[1] == "27"  # alg 3 needs a double key
    assert error_of(f"M601131003{tak}0003abc") == "15"  # hex input that is not hex


def test_extensions_refuse_a_live_lmk(tmp_path: object) -> None:
    live = HsmEngine(generate_lmk_file(f"{tmp_path}/lmk"))
    for request in ("Y4002U" + X919_KEY, "Y6002U2" + X919_KEY * 2, "Y8002U2"):
        assert run(request, live)[1] == "17"
    assert run("A00002U", live)[1] == "00"


def test_lmk_file_generate_and_load(tmp_path: object) -> None:
    import os
    import stat

    path = f"{tmp_path}/lmk"
    written = generate_lmk_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    loaded = load_lmk(path)
    assert loaded.pairs == written.pairs and not loaded.is_test
    with pytest.raises(Exception, match="refusing"):
        generate_lmk_file(path)
    with open(path, "a") as f:
        f.write("garbage\n")
    with pytest.raises(Exception, match="LMK file"):
        load_lmk(path)
    with pytest.raises(Exception, match="cannot read"):
        load_lmk(f"{tmp_path}/missing")
    with pytest.raises(Exception, match="20 double-length"):
        LmkSet([b"x"], is_test=False, source="bad")


def test_key_scheme_round_trips_under_lmk() -> None:
    for scheme, length in (("Z", 8), ("U", 16), ("X", 16), ("T", 24), ("Y", 24)):
        clear = crypto.generate_random_key(length)
        field = ENGINE.lmk.encrypt_key("002", scheme, clear)
        assert parse_key_field(field)[0] == scheme
        assert ENGINE.lmk.decrypt_key("002", field) == clear
        other = decrypt_key_under_kek(ENGINE.lmk.kek_for("102"), scheme, parse_key_field(field)[1])
        assert other != clear  # the key-type variant matters


def test_audit_log_has_one_line_per_command_and_no_secrets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tpk = imported("002", PIK)
    pvk = imported("002", X919_KEY)
    caplog.set_level(logging.INFO, logger="hsm_sim.audit")
    requests = [
        "NC",
        f"Y4002U{PIK}",
        f"DC{tpk}{pvk}1B96E39DDF2F514001{ACCOUNT}11234",
        f"BA1234F{ACCOUNT}",
        "XX",
    ]
    engine = HsmEngine.test()
    for request in requests:
        engine.handle(b"0000" + request.encode(), client="lab-1")
    lines = [r.getMessage() for r in caplog.records
             if r.name == "hsm_sim.audit" and r.getMessage().startswith("client=")]
    assert len(lines) == len(requests)
    assert all(line.startswith("client=lab-1 cmd=") for line in lines)
    assert "kcv=" + crypto.generate_kcv(h(PIK)).hex().upper() in lines[1]
    text = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (PIK, PIK[:16], "1B96E39DDF2F5140", "041226CBA9876FED", "1234F"):
        assert secret not in text


# --------------------------------------------------------------------------- fuzz


@settings(max_examples=100, deadline=None)
@given(command=st.sampled_from(sorted(COMMANDS)), fields=st.binary(max_size=120))
def test_garbage_never_crashes(command: bytes, fields: bytes) -> None:
    response = ENGINE.handle(b"0000" + command + fields)
    assert response[:6] == b"0000" + command[:1] + bytes((command[1] + 1,))
    assert response[6:8].isdigit()


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=40))
def test_any_bytes_get_an_answer(data: bytes) -> None:
    response = ENGINE.handle(data)
    header = data[:4]
    assert response.startswith(header)
    assert response[len(header) + 2 : len(header) + 4].isdigit()


# --------------------------------------------------------------------------- direct API


def _direct_vs_text(caplog: pytest.LogCaptureFixture, direct: object, request: bytes
                    ) -> tuple[object, str, bytes]:
    """(direct result or error code, text error code, text data), audit lines compared."""
    caplog.clear()
    try:
        result = direct() if callable(direct) else direct
    except HsmError as exc:
        result = exc.code
    direct_audit = [r.getMessage() for r in caplog.records if r.name == "hsm_sim.audit"]
    caplog.clear()
    _, err, data = run(request)
    text_audit = [r.getMessage() for r in caplog.records if r.name == "hsm_sim.audit"]
    assert [line.replace("client=-", "") for line in direct_audit] == [
        line.replace("client=-", "") for line in text_audit
    ]
    assert len(direct_audit) == 1
    return result, err, data


def test_direct_api_matches_the_text_commands(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hsm_sim.audit")
    tak = imported("003", X919_KEY)
    cup = imported("003", "2222222222222222" * 2)
    for message in (b"Now is the time for all ", bytes(range(200)), b""):
        fields = f"00131003{tak}{len(message):04X}".encode() + message
        mac, err, data = _direct_vs_text(caplog, lambda m=message: ENGINE.generate_mac(tak, m),
                                         b"M6" + fields)
        assert (err, mac.encode()) == ("00", data)
        for candidate in (mac, mac[:-1] + ("0" if mac[-1] != "0" else "1")):
            ok_, err, _ = _direct_vs_text(
                caplog, lambda m=message, c=candidate: ENGINE.verify_mac(tak, m, c),
                b"M8" + fields + candidate.encode())
            assert ok_ == (err == "00") and err in ("00", "01")
        cup_fields = f"003{cup}{len(message):04X}".encode() + message
        cup_mac, err, data = _direct_vs_text(
            caplog, lambda m=message: ENGINE.generate_mac_cup(cup, m), b"Y0" + cup_fields)
        assert (err, cup_mac) == ("00", data)
        for candidate in (cup_mac, b"00000000"):
            ok_, err, _ = _direct_vs_text(
                caplog, lambda m=message, c=candidate: ENGINE.verify_mac_cup(cup, m, c),
                b"Y2" + cup_fields + candidate)
            assert ok_ == (err == "00") and err in ("00", "01")
    # errors: same Thales code both ways
    zpk = imported("001", PIK)
    message = b"abc"
    code, err, _ = _direct_vs_text(caplog, lambda: ENGINE.generate_mac(zpk, message),
                                   f"M600131003{zpk}0003".encode() + message)
    assert code == err != "00"
    code, err, _ = _direct_vs_text(
        caplog, lambda: ENGINE.generate_mac(tak, message, key_type="002"),
        f"M600131002{tak}0003".encode() + message)
    assert code == err == "04"
    # PIN verification by PVV
    _, pvk = _pvk()
    pin_lmk = ok(f"BA1234F{ACCOUNT}")
    pvv = ok(f"DG{pvk}{pin_lmk}{ACCOUNT}1")
    tpk = imported("002", PIK)
    block = "1B96E39DDF2F5140"
    for candidate in (pvv, f"{(int(pvv) + 1) % 10000:04d}"):
        ok_, err, _ = _direct_vs_text(
            caplog, lambda c=candidate: ENGINE.verify_pin_pvv(tpk, pvk, h(block), ACCOUNT, "1", c),
            f"DC{tpk}{pvk}{block}01{ACCOUNT}1{candidate}".encode())
        assert ok_ == (err == "00") and err in ("00", "01")
    ok_, err, _ = _direct_vs_text(
        caplog, lambda: ENGINE.verify_pin_pvv(zpk, pvk, h(block), ACCOUNT, "1", pvv,
                                              pin_key_type="001"),
        f"EC{zpk}{pvk}{block}01{ACCOUNT}1{pvv}".encode())
    assert ok_ is True and err == "00"
    code, err, _ = _direct_vs_text(
        caplog, lambda: ENGINE.verify_pin_pvv(tpk, pvk, h(block), ACCOUNT, "1", pvv,
                                              pinblock_format="99"),
        f"DC{tpk}{pvk}{block}99{ACCOUNT}1{pvv}".encode())
    assert code == err == "23"
    code, err, _ = _direct_vs_text(
        caplog, lambda: ENGINE.verify_pin_pvv(tpk[:-1] + "0", pvk, h(block), ACCOUNT, "1", pvv),
        f"DC{tpk[:-1]}0{pvk}{block}01{ACCOUNT}1{pvv}".encode())
    assert code == err
