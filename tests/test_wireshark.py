"""The generated Wireshark dissector against real host traffic: a host started with a pcap
capture (``serve --pcap``) serves a terminal over real TCP (port 0) through a sign-on, a sale
and a settlement; tshark, with ``cup-pos.lua`` from ``poshost spec --wireshark``, must decode
every field of every frame to the values our own codec reads from the same bytes, with card
data masked by default, and no frame malformed."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from host.app import HostConfig, run_host
from host.cli import main as poshost
from specs.composite import decode_key_data
from specs.fields import FIELDS
from specs.framing import Frame
from specs.messages import decode_message
from specs.pretty import mask_pan
from specs.wireshark import FIELD60, FIELD61, TOTALS_HALF, UPLOAD_RECORD, find_emv_tags
from terminal.cards import Card
from terminal.session import Terminal
from terminal.state import Config, Store
from terminal.transport import TcpTransport
from tests.conftest import MID, TID, TMK, provision

TSHARK = shutil.which("tshark")
TSHARK_TIMEOUT = 120.0
needs_tshark = pytest.mark.skipif(
    TSHARK is None and not os.environ.get("CI"),
    reason="tshark is not installed (.ci/run installs it; under CI its absence fails)")


def pcap_payloads(path: Path) -> list[tuple[int, bytes]]:
    """(source port, TCP payload) of every data segment of a RAW/IPv4 pcap."""
    data = path.read_bytes()
    out, pos = [], 24
    while pos < len(data):
        incl = struct.unpack_from("<IIII", data, pos)[2]
        packet = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        ihl = (packet[0] & 0x0F) * 4
        tcp = packet[ihl:]
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            out.append((struct.unpack_from("!H", tcp)[0], payload))
    return out


async def capture(tmp_path: Path, nursery: trio.Nursery) -> tuple[Path, int]:
    """A sign-on, a swiped sale with PIN, a keyed sale and a settlement, captured."""
    db = tmp_path / "host.db"
    from host.hsm import open_hsm
    async with open_hsm("embedded", "test", authorise=None) as (client, _):
        cards = await provision(db, client)
    pcap = tmp_path / "cap.pcap"
    stop = trio.Event()
    done = trio.Event()

    async def host(task_status: Any) -> None:
        try:
            await run_host(HostConfig(listen_port=0, db_path=db, pcap=pcap), stop=stop,
                           task_status=task_status)
        finally:
            done.set()

    _, port = await nursery.start(host)
    store = Store(tmp_path / "t.db")
    store.initialise(Config(TID, MID, "127.0.0.1", port, timeout=5.0), bytes.fromhex(TMK))
    t = Terminal(store, TcpTransport("127.0.0.1", port))
    assert (await t.sign_on()).status == "approved"
    good = cards["good"]
    assert (await t.sale(Card.from_track2(good.track2), 12345, good.pin)).status == "approved"
    keyed = await t.sale(Card.keyed(good.pan, good.expiry), 500, good.pin)  # a PIN card: CVM pin
    assert keyed.status == "approved"
    assert (await t.balance(Card.from_track2(good.track2), good.pin)).status == "approved"
    assert (await t.void(keyed.details["stan"], None, None)).status == "approved"
    assert (await t.settle()).status in ("approved", "done", "balanced"), "settle"
    await t.transport.aclose()
    stop.set()
    await done.wait()
    return pcap, port


def lua_file(tmp_path: Path) -> Path:
    result = CliRunner().invoke(poshost, ["spec", "--wireshark"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "cup-pos.lua"
    path.write_text(result.output)
    return path


def tshark(*args: str) -> str:
    assert TSHARK is not None
    run = subprocess.run([TSHARK, *args], capture_output=True, text=True,
                         timeout=TSHARK_TIMEOUT)
    assert run.returncode == 0, run.stderr
    assert "Lua" not in run.stderr, run.stderr
    return run.stdout


def cuppos_layers(out: str) -> list[dict[str, Any]]:
    """The cuppos layer of every decoded PDU (a segment may carry several)."""
    layers: list[dict[str, Any]] = []
    for packet in json.loads(out):
        found = packet["_source"]["layers"].get("cuppos")
        if isinstance(found, list):
            layers.extend(found)
        elif found is not None:
            layers.append(found)
    return layers


def flatten(node: Any, out: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every cuppos.* key of a tshark JSON tree -> its values, in order."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key.startswith("cuppos.") and not key.endswith("_tree") and not isinstance(
                    value, dict | list):
                out.setdefault(key, []).append(value)
            flatten(value, out)
    elif isinstance(node, list):
        for item in node:
            flatten(item, out)
    return out


def expected(doc: dict[str, str], reveal: bool) -> dict[str, str]:
    """What the dissector must show for each field of a message our codec decoded."""
    out = {"cuppos.mti": doc["t"]}
    for key, value in doc.items():
        if not key.isdigit():
            continue
        secret = FIELDS[int(key)].secret
        shown = value
        if not reveal and secret == "pan":
            shown = mask_pan(value) if key == "2" else "****"
        elif not reveal and secret == "track2":
            pan = value.split("D")[0]
            shown = f"[track 2, {len(value)} digits, PAN {mask_pan(pan)}]"
        elif not reveal and secret == "emv":
            shown = f"[EMV data, {len(value) // 2} bytes, tags below]"
        elif not reveal and secret in ("pinblock", "keys"):
            label = {"pinblock": "PIN block", "keys": "key data"}[secret]
            shown = f"[{label}, {len(value) // 2} bytes, masked]"
        out[f"cuppos.f{key}"] = shown
    return out


@needs_tshark
async def test_tshark_decodes_a_captured_day_field_by_field(tmp_path: Path,
                                                           nursery: trio.Nursery) -> None:
    pcap, port = await capture(tmp_path, nursery)
    lua = lua_file(tmp_path)
    frames = []
    for _, payload in pcap_payloads(pcap):
        while payload:  # one segment per read/write; a segment holds whole frames here
            length = int.from_bytes(payload[:2], "big")
            frames.append(payload[2:2 + length])
            payload = payload[2 + length:]
    docs = [decode_message(Frame.parse(f).body) for f in frames]
    mtis = [d["t"] for d in docs]
    assert mtis[:2] == ["0800", "0810"] and "0200" in mtis and "0500" in mtis
    assert "0510" in mtis
    assert any("54" in d for d in docs) and any("61" in d for d in docs)

    # The port preference (heuristics off): the capture's port is not the default 5000.
    text = tshark("-X", f"lua_script:{lua}", "-o", f"cuppos.port:{port}", "-o",
                  "cuppos.heuristic:FALSE", "-r", str(pcap), "-V")
    assert "Malformed" not in text and "Lua Error" not in text and "cuppos.malformed" not in text
    assert text.count("CUP POS ISO 8583 (cup-pos)") >= len(frames)
    for reveal in (False, True):
        out = tshark("-X", f"lua_script:{lua}", "-o", f"cuppos.show_secrets:{str(reveal).upper()}",
                     "-r", str(pcap), "-T", "json", "--no-duplicate-keys", "-J", "cuppos")
        layers = cuppos_layers(out)  # found heuristically (port 5000 is not the capture's)
        assert len(layers) == len(frames)
        for doc, layer in zip(docs, layers, strict=True):
            got = flatten(layer, {})
            for key, value in expected(doc, reveal).items():
                assert got.get(key) == [value], (doc["t"], key, got.get(key), value)
            check_subfields(doc, got, reveal)
    # Nothing secret in the default rendering.
    default = tshark("-X", f"lua_script:{lua}", "-r", str(pcap), "-V")
    for doc in docs:
        for key in ("2", "35", "52", "62"):
            if key in doc:
                assert doc[key] not in default.replace(":", ""), key
    assert "sign-on (double-length PIK + MAK)" in default and "settlement response" in default
    assert "Response code meaning: approved" in default


def check_subfields(doc: dict[str, str], got: dict[str, list[str]], reveal: bool) -> None:
    if "60" in doc:
        value, pos = doc["60"], 0
        for key, _, digits in FIELD60:
            part = value[pos:pos + digits] if digits else value[pos:]
            if part:
                assert got[f"cuppos.f60.{key}"] == [part]
            pos += digits or len(part)
    if "61" in doc:
        value, pos = doc["61"], 0
        for key, _, digits in FIELD61:
            if value[pos:pos + digits]:
                assert got[f"cuppos.f61.{key}"] == [value[pos:pos + digits]]
            pos += digits
    if "48" in doc and len(doc["48"]) == 62:
        for half, side in ((doc["48"][:31], "domestic"), (doc["48"][31:], "foreign")):
            pos = 0
            for key, _, digits in TOTALS_HALF:
                assert got[f"cuppos.f48.{side}.{key}"] == [half[pos:pos + digits]]
                pos += digits
    elif "48" in doc and len(doc["48"]) > 4:
        records = (len(doc["48"]) - 2) // 40
        assert got["cuppos.f48.record_count"] == [doc["48"][:2]]
        for key, _, _ in UPLOAD_RECORD:
            assert len(got[f"cuppos.f48.record.{key}"]) == records
    if "62" in doc:
        keys = decode_key_data(doc["62"])
        assert got["cuppos.f62.pik_cv"] == [keys.pik_cv.hex().upper()]
        assert got["cuppos.f62.mak_cv"] == [keys.mak_cv.hex().upper()]
        shown = got["cuppos.f62.pik"][0]
        assert (shown == keys.pik.hex().upper()) == reveal


def test_subfield_layouts_match_the_codecs() -> None:
    from specs.composite import (
        Field60,
        Field61,
        SettlementTotals,
        Totals,
        UploadRecord,
        decode_field60,
        decode_field61,
        encode_settlement_totals,
        encode_upload_records,
    )
    value = "22000123201" + "77"
    assert [value[0:2], value[2:8], value[8:11], value[11:]] == [
        getattr(decode_field60(value), k) for k in ("type_code", "batch", "network_code", "extra")]
    assert sum(d for _, _, d in FIELD60) == 11 and Field60
    f61 = decode_field61("0000010001231123")
    assert [f61.batch, f61.trace, f61.date] == ["000001", "000123", "1123"] and Field61
    assert [d for _, _, d in FIELD61] == [6, 6, 4]
    totals = encode_settlement_totals(SettlementTotals(Totals(12345, 1, 2, 3, 1), Totals()))
    pos, half = 0, {}
    for key, _, digits in TOTALS_HALF:
        half[key] = int(totals[pos:pos + digits])
        pos += digits
    assert half == {"debit_amount": 12345, "debit_count": 1, "credit_amount": 2,
                    "credit_count": 3, "result": 1}
    record = encode_upload_records([UploadRecord("000002", "6222021234567890128", 99, "01")])
    parts, pos = {}, 2
    for key, _, digits in UPLOAD_RECORD:
        parts[key] = record[pos:pos + digits]
        pos += digits
    assert parts == {"organisation": "01", "trace": "000002", "pan": "06222021234567890128",
                     "amount": "000000000099"}


def test_emv_tag_table_is_found_when_specs_has_one() -> None:
    from specs import wireshark
    from specs.codes import RESPONSE_CODES

    tags = find_emv_tags()
    # Response codes have hex-looking keys too, but they are no tag table.
    assert not set(RESPONSE_CODES) <= set(tags)
    # A table shaped like the EMV work's (tag -> object with a name) is read, masking kept.
    class Tag:
        def __init__(self, name: str) -> None:
            self.name = name
    table = {t: Tag(f"tag {t}") for t in ("9F26", "9F27", "9F36", "95", "5A", "57")}
    found = wireshark._tag_table(table)
    assert found["9F26"] == ("tag 9F26", False) and found["5A"] == ("tag 5A", True)
    assert wireshark._tag_table(RESPONSE_CODES) == {}


@needs_tshark
def test_tshark_decodes_batch_upload_records_masked(tmp_path: Path) -> None:
    """A 0320 batch upload (F48 records with PANs) and its end, split over two TCP segments
    the way a slow line delivers them: reassembled, decoded, PANs masked."""
    from host.pcap import ACK, PSH, encode_pcap_header, encode_segment
    from specs.composite import UploadRecord, encode_upload_end, encode_upload_records
    from specs.framing import Header, Tpdu, encode_frame_tcp
    from specs.messages import encode_message

    pans = ["6222021234567890128", "4761739001010010"]
    records = encode_upload_records([UploadRecord(f"00000{i + 1}", pan, 100 * (i + 1), "00")
                                     for i, pan in enumerate(pans)])
    head = Tpdu().to_bytes() + Header().to_bytes()
    upload = {"t": "0320", "11": "000009", "41": TID, "42": MID, "48": records,
              "60": "00000001201"}
    end = {**upload, "11": "000010", "48": encode_upload_end(2), "60": "00000001202"}
    data = b"".join(encode_frame_tcp(head + encode_message(d)) for d in (upload, end))
    client, server = ("127.0.0.1", 40000), ("127.0.0.1", 5000)
    pcap = tmp_path / "upload.pcap"
    pcap.write_bytes(encode_pcap_header()
                     + encode_segment(1.0, client, server, 1, 1, PSH | ACK, data[:30])
                     + encode_segment(1.1, client, server, 31, 1, PSH | ACK, data[30:]))
    out = tshark("-X", f"lua_script:{lua_file(tmp_path)}", "-r", str(pcap), "-T", "json",
                 "--no-duplicate-keys", "-J", "cuppos")
    layers = [flatten(layer, {}) for layer in cuppos_layers(out)]
    assert len(layers) == 2
    got = layers[0]
    assert got["cuppos.kind"] == ["batch upload records"]
    assert got["cuppos.f48.record_count"] == ["02"]
    assert got["cuppos.f48.record.trace"] == ["000001", "000002"]
    assert got["cuppos.f48.record.amount"] == ["000000000100", "000000000200"]
    assert got["cuppos.f48.record.pan"] == [mask_pan(p) for p in pans]
    assert layers[1]["cuppos.kind"] == ["batch upload end"]
    assert layers[1]["cuppos.f48.upload_total"] == ["0002"]
    text = tshark("-X", f"lua_script:{lua_file(tmp_path)}", "-r", str(pcap), "-V")
    assert pans[0] not in text and pans[1] not in text and "Malformed" not in text


@needs_tshark
def test_tshark_decodes_f55_tags(tmp_path: Path) -> None:
    """F55 as BER-TLV: each tag with its length and value; PAN and track 2 tags masked."""
    from host.pcap import ACK, PSH, encode_pcap_header, encode_segment
    from specs.framing import Header, Tpdu, encode_frame_tcp
    from specs.messages import encode_message

    tlv = ("9F2608" "1122334455667788" "9F2701" "80" "5A08" "6222021234567890"
           "9F3602" "0001" "9F1012" + "06010A03A00000" + "00" * 11)
    doc = {"t": "0200", "3": "000000", "4": "000000000100", "11": "000005", "22": "051",
           "23": "001", "25": "00", "41": TID, "42": MID, "49": "156", "55": tlv.upper(),
           "60": "22000001000"}
    payload = Tpdu().to_bytes() + Header().to_bytes() + encode_message(doc)
    pcap = tmp_path / "chip.pcap"
    pcap.write_bytes(encode_pcap_header() + encode_segment(
        1.0, ("127.0.0.1", 40000), ("127.0.0.1", 5000), 1, 1, PSH | ACK,
        encode_frame_tcp(payload)))
    lua = lua_file(tmp_path)
    for reveal in (False, True):
        out = tshark("-X", f"lua_script:{lua}", "-o",
                     f"cuppos.show_secrets:{str(reveal).upper()}", "-r", str(pcap), "-T",
                     "json", "--no-duplicate-keys", "-J", "cuppos")
        (layer,) = [flatten(x, {}) for x in cuppos_layers(out)]
        assert layer["cuppos.f55.tag"] == ["9F26", "9F27", "5A", "9F36", "9F10"]
        assert layer["cuppos.f55.length"] == ["8", "1", "8", "2", "18"]
        values = layer["cuppos.f55.value"]
        assert values[3] == "0001"
        # specs.emv marks the cryptogram and the PAN tag secret: shown only on request
        assert (values[0] == "1122334455667788") == reveal
        assert (values[2] == "6222021234567890") == reveal
        assert layer["cuppos.kind"] == ["sale"]
    text = tshark("-X", f"lua_script:{lua}", "-r", str(pcap), "-V")
    assert "6222021234567890" not in text and "Malformed" not in text
