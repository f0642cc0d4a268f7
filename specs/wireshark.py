"""A Wireshark Lua dissector for the cup-pos framing, generated from the data in specs/
(``poshost spec --wireshark > cup-pos.lua``; ``wireshark -X lua_script:cup-pos.lua``).

It decodes the TCP length prefix, TPDU, the 6-byte header, MTI, bitmap and every field by its
format in :data:`specs.fields.FIELDS` (BCD digits, ASCII, binary, LL/LLL BCD prefixes), the
sub-fields of 48, 54, 60, 61 and 62 (layouts below, checked against specs.composite by the
tests), F55 as BER-TLV named from the EMV tag table in specs/ when there is one, and names the
message kind from :data:`specs.catalog.KINDS` and the response code from specs.codes. It
registers on a TCP port (preference, default 5000) and heuristically on any TCP port. PAN,
expiry, track 2, PIN block, key data and sensitive EMV tags are masked unless the preference
"Show card data and keys" is set.

>>> "dissect_tcp_pdus" in render_dissector()
True
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Iterable, Mapping
from typing import Any

from specs.catalog import KINDS
from specs.codes import RESPONSE_CODES
from specs.composite import KEY_DATA_BYTES, TOTALS_DIGITS, UPLOAD_RECORD_DIGITS
from specs.emv import SENSITIVE_TAGS
from specs.fields import FIELDS
from specs.framing import (
    BITMAP_LENGTH,
    HEADER_LENGTH,
    LENGTH_PREFIX,
    MAX_FRAME_LENGTH,
    MIN_FRAME_LENGTH,
    TPDU_ID,
    TPDU_LENGTH,
)

DEFAULT_PORT = 5000
"""The port the dissector registers on unless its preference says otherwise (serve's
default --listen port)."""

Layout = tuple[tuple[str, str, int], ...]
"""(key, name, digits) of consecutive sub-fields; 0 digits: the rest of the field."""

FIELD60: Layout = (("1", "60.1 message type code", 2), ("2", "60.2 batch number", 6),
                   ("3", "60.3 network management code", 3), ("4", "60.4 further data", 0))
FIELD61: Layout = (("1", "61.1 original batch", 6), ("2", "61.2 original trace", 6),
                   ("3", "61.3 original date MMDD", 4))
TOTALS_HALF: Layout = (("debit_amount", "debit amount", 12), ("debit_count", "debit count", 3),
                       ("credit_amount", "credit amount", 12),
                       ("credit_count", "credit count", 3), ("result", "result", 1))
"""One half (domestic, then foreign) of the 0500/0510 F48 totals."""
UPLOAD_RECORD: Layout = (("organisation", "organisation", 2), ("trace", "trace", 6),
                         ("pan", "PAN", 20), ("amount", "amount", 12))
"""One 40-digit batch-upload record of a 0320 F48 (after the n2 record count)."""
UPLOAD_END_DIGITS = 4
BALANCE: Layout = (("account_type", "account type", 2), ("amount_type", "amount type", 2),
                   ("currency", "currency", 3), ("sign", "sign C/D", 1),
                   ("amount", "balance", 12))
KEY_DATA: Layout = (("pik", "PIK under TMK", 32), ("pik_cv", "PIK check value", 8),
                    ("mak", "MAK under TMK", 32), ("mak_cv", "MAK check value", 8))
"""F62 of a sign-on response, in hex digits."""
WELL_KNOWN_TAGS = frozenset({"82", "95", "9A", "9C", "5F2A", "9F02", "9F10", "9F1A", "9F26",
                             "9F27", "9F36", "9F37"})
"""Tags of every ARQC: a mapping is taken for the EMV tag table only if it holds at least
MIN_KNOWN_TAGS of them (response codes, say, also have hex-looking keys)."""
MIN_KNOWN_TAGS = 3


def find_emv_tags(package: str = "specs") -> dict[str, tuple[str, bool]]:
    """tag (upper hex) -> (name, sensitive), from the largest tag table in ``package``, or {}
    when there is none. A table is a module-level mapping whose keys are hex tags ("9F26")
    and whose values are names or objects with a ``name`` (and maybe ``secret``)."""
    best: dict[str, tuple[str, bool]] = {}
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name in ("wireshark", "__main__"):
            continue
        try:
            module = importlib.import_module(f"{package}.{info.name}")
        except Exception:  # a module that cannot be imported here has no table for us
            continue
        for value in vars(module).values():
            table = _tag_table(value)
            if len(table) > len(best):
                best = table
    return best


def _tag_table(value: Any) -> dict[str, tuple[str, bool]]:
    if not isinstance(value, Mapping) or len(value) < 5:
        return {}
    out: dict[str, tuple[str, bool]] = {}
    for key, entry in value.items():
        tag = key.hex().upper() if isinstance(key, bytes) else key
        if isinstance(key, int) and not isinstance(key, bool):
            tag = f"{key:X}"
        if not isinstance(tag, str) or not 2 <= len(tag) <= 6 or len(tag) % 2:
            return {}
        try:
            int(tag, 16)
        except ValueError:
            return {}
        name = entry if isinstance(entry, str) else getattr(entry, "name", None)
        if not isinstance(name, str):
            return {}
        secret = bool(getattr(entry, "secret", False) or getattr(entry, "sensitive", False))
        out[tag.upper()] = (name, secret or tag.upper() in SENSITIVE_TAGS)
    if len(WELL_KNOWN_TAGS & set(out)) < MIN_KNOWN_TAGS:
        return {}
    return out


def _lua(value: Any) -> str:
    """A Lua literal for strings, numbers, booleans, lists and dicts (string keys)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Iterable):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    raise TypeError(f"no Lua literal for {value!r}")


def _layout(layout: Layout) -> list[dict[str, Any]]:
    return [{"key": k, "name": n, "digits": d} for k, n, d in layout]


def _tables() -> str:
    fields = {
        f.number: {"name": f.name, "fmt": f.fmt, "len": f.length,
                   "prefix": {"": 0, "LL": 1, "LLL": 2}[f.prefix],
                   "left": bool(f.prefix) or f.left_justified, "secret": f.secret}
        for f in FIELDS.values()
    }
    kinds = [{"mti": k.mti, "pc": k.processing_code or "", "nc": k.network_code,
              "financial": k.financial, "title": k.title} for k in KINDS.values()]
    emv = {tag: {"name": name, "secret": secret}
           for tag, (name, secret) in sorted(find_emv_tags().items())}
    sensitive = {tag: True for tag in sorted(SENSITIVE_TAGS)}
    rows = [
        f"local FIELDS = {_lua(fields)}",
        f"local KINDS = {_lua(kinds)}",
        f"local CODES = {_lua(RESPONSE_CODES)}",
        f"local EMV_TAGS = {_lua(emv)}",
        f"local SENSITIVE_TAGS = {_lua(sensitive)}",
        f"local F60 = {_lua(_layout(FIELD60))}",
        f"local F61 = {_lua(_layout(FIELD61))}",
        f"local TOTALS_HALF = {_lua(_layout(TOTALS_HALF))}",
        f"local UPLOAD_RECORD = {_lua(_layout(UPLOAD_RECORD))}",
        f"local BALANCE = {_lua(_layout(BALANCE))}",
        f"local KEY_DATA = {_lua(_layout(KEY_DATA))}",
        f"local TOTALS_DIGITS = {TOTALS_DIGITS}",
        f"local UPLOAD_RECORD_DIGITS = {UPLOAD_RECORD_DIGITS}",
        f"local UPLOAD_END_DIGITS = {UPLOAD_END_DIGITS}",
        f"local KEY_DATA_DIGITS = {KEY_DATA_BYTES * 2}",
        f"local LENGTH_PREFIX = {LENGTH_PREFIX}",
        f"local TPDU_LENGTH = {TPDU_LENGTH}",
        f"local TPDU_ID = {TPDU_ID}",
        f"local HEADER_LENGTH = {HEADER_LENGTH}",
        f"local BITMAP_LENGTH = {BITMAP_LENGTH}",
        f"local MIN_FRAME = {MIN_FRAME_LENGTH}",
        f"local MAX_FRAME = {MAX_FRAME_LENGTH}",
        f"local DEFAULT_PORT = {DEFAULT_PORT}",
    ]
    return "\n".join(rows) + "\n"


def render_dissector() -> str:
    """The Lua source of the dissector."""
    return _HEAD + _tables() + _BODY


_HEAD = """\
-- cup-pos.lua: Wireshark dissector for the cup-pos ISO 8583 dialect (UnionPay POS framing:
-- 2-byte length, TPDU, 6-byte BCD header, BCD MTI, bitmap, fields).
-- GENERATED by `poshost spec --wireshark` from specs/ -- do not edit, regenerate.
-- Use: wireshark -X lua_script:cup-pos.lua capture.pcap   (or copy into the plugins folder)
-- Preferences (Protocols > CUPPOS): TCP port, heuristic detection, show card data and keys.

"""

_BODY = r"""
local cup = Proto("cuppos", "CUP POS ISO 8583 (cup-pos)")
cup.prefs.port = Pref.uint("TCP port", DEFAULT_PORT, "TCP port of the acquiring host")
cup.prefs.heuristic = Pref.bool("Heuristic detection", true,
    "Also recognise cup-pos frames on other TCP ports")
cup.prefs.show_secrets = Pref.bool("Show card data and keys", false,
    "Show PAN, expiry, track 2, PIN block, key data and sensitive EMV tags in the clear")

local pf = {
  length = ProtoField.uint16("cuppos.length", "Length", base.DEC),
  tpdu = ProtoField.bytes("cuppos.tpdu", "TPDU"),
  tpdu_id = ProtoField.uint8("cuppos.tpdu.id", "TPDU id", base.HEX),
  tpdu_dst = ProtoField.string("cuppos.tpdu.destination", "Destination NII"),
  tpdu_src = ProtoField.string("cuppos.tpdu.source", "Source NII"),
  header = ProtoField.bytes("cuppos.header", "Header"),
  hdr_app = ProtoField.string("cuppos.header.application", "Application category"),
  hdr_ver = ProtoField.string("cuppos.header.version", "Version"),
  hdr_status = ProtoField.uint8("cuppos.header.terminal_status", "Terminal status", base.DEC),
  hdr_req = ProtoField.uint8("cuppos.header.processing_requirement",
                             "Processing requirement", base.DEC),
  hdr_sub = ProtoField.string("cuppos.header.sub_version", "Sub-version"),
  mti = ProtoField.string("cuppos.mti", "MTI"),
  kind = ProtoField.string("cuppos.kind", "Message kind"),
  bitmap = ProtoField.bytes("cuppos.bitmap", "Bitmap"),
  present = ProtoField.string("cuppos.bitmap.fields", "Fields present"),
  varlen = ProtoField.uint16("cuppos.varlen", "Length prefix", base.DEC),
  code_text = ProtoField.string("cuppos.f39.meaning", "Response code meaning"),
  tlv_tag = ProtoField.string("cuppos.f55.tag", "Tag"),
  tlv_len = ProtoField.uint16("cuppos.f55.length", "Length", base.DEC),
  tlv_value = ProtoField.string("cuppos.f55.value", "Value"),
}
local field_pf, sub_pf = {}, {}
for n, f in pairs(FIELDS) do
  field_pf[n] = ProtoField.string("cuppos.f" .. n, string.format("F%d %s", n, f.name))
  pf["f" .. n] = field_pf[n]
end
local function sub_field(abbrev, name)
  local p = ProtoField.string("cuppos." .. abbrev, name)
  sub_pf[abbrev] = p
  pf[abbrev] = p
  return p
end
for _, s in ipairs(F60) do sub_field("f60." .. s.key, s.name) end
for _, s in ipairs(F61) do sub_field("f61." .. s.key, s.name) end
for _, s in ipairs(BALANCE) do sub_field("f54." .. s.key, "54 " .. s.name) end
for _, s in ipairs(KEY_DATA) do sub_field("f62." .. s.key, "62 " .. s.name) end
for _, side in ipairs({"domestic", "foreign"}) do
  for _, s in ipairs(TOTALS_HALF) do
    sub_field("f48." .. side .. "." .. s.key, "48 " .. side .. " " .. s.name)
  end
end
sub_field("f48.record_count", "48 record count")
for _, s in ipairs(UPLOAD_RECORD) do sub_field("f48.record." .. s.key, "48 record " .. s.name) end
sub_field("f48.upload_total", "48 records uploaded in total")
local list = {}
for _, p in pairs(pf) do table.insert(list, p) end
cup.fields = list

local ef_malformed = ProtoExpert.new("cuppos.malformed", "Malformed cup-pos frame",
                                     expert.group.MALFORMED, expert.severity.ERROR)
cup.experts = { ef_malformed }

local function hex(range) return string.upper(range:bytes():tohex()) end

local function mask_pan(pan)
  if #pan <= 10 then return string.rep("*", math.max(#pan - 4, 0)) .. pan:sub(-4) end
  return pan:sub(1, 6) .. string.rep("*", #pan - 10) .. pan:sub(-4)
end

local function shown(secret, value, what)
  -- The text shown for a secret value, masked unless the preference says otherwise.
  if cup.prefs.show_secrets or secret == "" or secret == "mac" then
    return value
  end
  if secret == "emv" then
    return string.format("[EMV data, %d bytes, tags below]", math.floor(#value / 2))
  end
  if secret == "pan" and what == 2 then return mask_pan(value) end
  if secret == "pan" then return "****" end
  if secret == "track2" then
    local pan = value:match("^(%d+)") or ""
    return string.format("[track 2, %d digits, PAN %s]", #value, mask_pan(pan))
  end
  local label = ({pinblock = "PIN block", keys = "key data"})[secret] or secret
  return string.format("[%s, %d bytes, masked]", label, math.floor(#value / 2))
end

local function layout_tree(tree, range, digits, layout, prefix, secret_keys)
  -- Consecutive digit sub-fields of a BCD field; digits is the field's digit string.
  local pos = 0
  for _, s in ipairs(layout) do
    local n = s.digits
    if n == 0 then n = #digits - pos end
    if n <= 0 or pos + n > #digits then break end
    local value = digits:sub(pos + 1, pos + n)
    if secret_keys and secret_keys[s.key] and not cup.prefs.show_secrets then
      value = mask_pan((value:gsub("^0+", "")))
    end
    local first = math.floor(pos / 2)
    local last = math.floor((pos + n - 1) / 2)
    tree:add(sub_pf[prefix .. s.key], range(first, last - first + 1), value)
    pos = pos + n
  end
end

local function hex_layout_tree(tree, range, digits, layout, prefix)
  local pos = 0
  for _, s in ipairs(layout) do
    local value = digits:sub(pos + 1, pos + s.digits)
    if s.key == "pik" or s.key == "mak" then value = shown("keys", value) end
    tree:add(sub_pf[prefix .. s.key], range(pos / 2, s.digits / 2), value)
    pos = pos + s.digits
  end
end

local function f48_tree(tree, range, digits)
  if #digits == TOTALS_DIGITS then
    layout_tree(tree, range, digits:sub(1, 31), TOTALS_HALF, "f48.domestic.")
    layout_tree(tree, range(15), digits:sub(32), TOTALS_HALF, "f48.foreign.")
    -- the foreign half starts at digit 31, mid-byte: its first nibble shares byte 15
  elseif #digits == UPLOAD_END_DIGITS then
    tree:add(sub_pf["f48.upload_total"], range, digits)
  elseif #digits >= 2 and (#digits - 2) % UPLOAD_RECORD_DIGITS == 0 then
    tree:add(sub_pf["f48.record_count"], range(0, 1), digits:sub(1, 2))
    local count = (#digits - 2) / UPLOAD_RECORD_DIGITS
    for i = 0, count - 1 do
      local start = 2 + i * UPLOAD_RECORD_DIGITS
      local record = digits:sub(start + 1, start + UPLOAD_RECORD_DIGITS)
      local rec_tree = tree:add(cup, range(start / 2, UPLOAD_RECORD_DIGITS / 2),
                                string.format("Record %d", i + 1))
      layout_tree(rec_tree, range(start / 2, UPLOAD_RECORD_DIGITS / 2), record,
                  UPLOAD_RECORD, "f48.record.", {pan = true})
    end
  end
end

local function f48_display(digits)
  -- Upload records carry PANs: masked like the host's logs unless secrets are shown.
  if cup.prefs.show_secrets or #digits == TOTALS_DIGITS or #digits == UPLOAD_END_DIGITS then
    return digits
  end
  if #digits < 2 or (#digits - 2) % UPLOAD_RECORD_DIGITS ~= 0 then
    return string.format("[%d digits, masked]", #digits)
  end
  local shown_records = {}
  for i = 0, (#digits - 2) / UPLOAD_RECORD_DIGITS - 1 do
    local r = digits:sub(3 + i * UPLOAD_RECORD_DIGITS, 2 + (i + 1) * UPLOAD_RECORD_DIGITS)
    local pan = r:sub(9, 28):gsub("^0+", "")
    table.insert(shown_records, string.format("%s/%s/%s", r:sub(3, 8), mask_pan(pan),
                                              r:sub(29, 40)))
  end
  return string.format("%s records: %s", digits:sub(1, 2), table.concat(shown_records, ", "))
end

local function read_tlv_tag(range, pos)
  local first = range(pos, 1):uint()
  local len = 1
  if first % 32 == 31 then
    while pos + len < range:len() and range(pos + len, 1):uint() >= 128 do len = len + 1 end
    len = len + 1
  end
  return len
end

local function f55_tree(tree, range, pinfo)
  local pos = 0
  local total = range:len()
  while pos < total do
    local tag_len = read_tlv_tag(range, pos)
    if pos + tag_len >= total then break end
    local tag = hex(range(pos, tag_len))
    local len_pos = pos + tag_len
    local length = range(len_pos, 1):uint()
    local len_len = 1
    if length > 127 then
      len_len = 1 + (length - 128)
      if len_pos + len_len > total then break end
      length = range(len_pos + 1, len_len - 1):uint()
    end
    local value_pos = len_pos + len_len
    if value_pos + length > total then
      tree:add_proto_expert_info(ef_malformed, "F55 tag " .. tag .. " runs past the field")
      return
    end
    local info = EMV_TAGS[tag]
    local name = info and info.name or "unknown tag"
    local value = length > 0 and hex(range(value_pos, length)) or ""
    local secret = (info and info.secret) or SENSITIVE_TAGS[tag]
    if secret and not cup.prefs.show_secrets then
      value = string.format("[%d bytes, masked]", length)
    end
    local t = tree:add(cup, range(pos, value_pos + length - pos),
                       string.format("%s %s: %s", tag, name, value))
    t:add(pf.tlv_tag, range(pos, tag_len), tag)
    t:add(pf.tlv_len, range(len_pos, len_len), length)
    if length > 0 then t:add(pf.tlv_value, range(value_pos, length), value) end
    pos = value_pos + length
  end
end

local function decode_field(n, f, tvb, off)
  -- Returns value, next offset, range of the data, or nil and an error text.
  local units = f.len
  local data_off = off
  if f.prefix > 0 then
    if off + f.prefix > tvb:len() then return nil, "length prefix past the end" end
    units = tonumber(hex(tvb(off, f.prefix)))
    if not units then return nil, "length prefix is not BCD" end
    data_off = off + f.prefix
  elseif f.fmt == "b" then
    units = f.len / 8
  end
  local nbytes = units
  if f.fmt == "n" or f.fmt == "z" then nbytes = math.floor((units + 1) / 2) end
  if data_off + nbytes > tvb:len() then return nil, "data past the end of the frame" end
  if nbytes == 0 then return "", data_off, nil end
  local range = tvb(data_off, nbytes)
  local value
  if f.fmt == "n" or f.fmt == "z" then
    value = hex(range)
    if #value > units then
      if f.left then value = value:sub(1, units) else value = value:sub(2) end
    end
  elseif f.fmt == "b" then
    value = hex(range)
  else
    value = range:string()
  end
  return value, data_off + nbytes, range
end

local function kind_of(mti, values)
  local request_mti = mti
  local response = tonumber(mti:sub(3, 3)) and tonumber(mti:sub(3, 3)) % 2 == 1
  if response then request_mti = string.format("%04d", tonumber(mti) - 10) end
  local nc = values[60] and values[60]:sub(9, 11) or ""
  for _, k in ipairs(KINDS) do
    if k.mti == request_mti then
      if (k.financial and (k.pc == "" or k.pc == values[3])) or
         (not k.financial and k.nc == nc) then
        return k.title .. (response and " response" or "")
      end
    end
  end
  if request_mti == "0200" or request_mti == "0220" or request_mti == "0400" then
    return "financial message" .. (response and " response" or "")
  end
  return "unknown"
end

local info_packet = -1
local function dissect_pdu(tvb, pinfo, root)
  local total = tvb:len()
  pinfo.cols.protocol = "CUP-POS"
  local tree = root:add(cup, tvb(), "CUP POS ISO 8583 (cup-pos)")
  local length = tvb(0, LENGTH_PREFIX):uint()
  tree:add(pf.length, tvb(0, LENGTH_PREFIX))
  local off = LENGTH_PREFIX
  if length < MIN_FRAME or length > MAX_FRAME or total < LENGTH_PREFIX + MIN_FRAME then
    tree:add_proto_expert_info(ef_malformed, "frame length out of range")
    return total
  end
  local tpdu = tree:add(pf.tpdu, tvb(off, TPDU_LENGTH))
  tpdu:add(pf.tpdu_id, tvb(off, 1))
  tpdu:add(pf.tpdu_dst, tvb(off + 1, 2), hex(tvb(off + 1, 2)))
  tpdu:add(pf.tpdu_src, tvb(off + 3, 2), hex(tvb(off + 3, 2)))
  if tvb(off, 1):uint() ~= TPDU_ID then
    tpdu:add_proto_expert_info(ef_malformed, "TPDU does not start 60")
  end
  off = off + TPDU_LENGTH
  local h = hex(tvb(off, HEADER_LENGTH))
  local header = tree:add(pf.header, tvb(off, HEADER_LENGTH))
  header:add(pf.hdr_app, tvb(off, 1), h:sub(1, 2))
  header:add(pf.hdr_ver, tvb(off + 1, 1), h:sub(3, 4))
  local status_byte = tvb(off + 2, 1):uint()
  header:add(pf.hdr_status, tvb(off + 2, 1), math.floor(status_byte / 16))
  header:add(pf.hdr_req, tvb(off + 2, 1), status_byte % 16)
  header:add(pf.hdr_sub, tvb(off + 3, 3), h:sub(7, 12))
  off = off + HEADER_LENGTH
  local mti = hex(tvb(off, 2))
  local mti_item = tree:add(pf.mti, tvb(off, 2), mti)
  off = off + 2
  local bitmap = tvb(off, BITMAP_LENGTH)
  local bm_item = tree:add(pf.bitmap, bitmap)
  local present = {}
  for byte = 0, BITMAP_LENGTH - 1 do
    local b = bitmap(byte, 1):uint()
    for bit = 0, 7 do
      local weight = 2 ^ (7 - bit)
      if math.floor(b / weight) % 2 == 1 then table.insert(present, byte * 8 + bit + 1) end
    end
  end
  bm_item:add(pf.present, bitmap, table.concat(present, " "))
  off = off + BITMAP_LENGTH
  local values = {}
  for _, n in ipairs(present) do
    local f = FIELDS[n]
    if not f then
      tree:add_proto_expert_info(ef_malformed, string.format("field %d is not in the dialect", n))
      return total
    end
    local value, next_off, range = decode_field(n, f, tvb, off)
    if not value then
      tree:add_proto_expert_info(ef_malformed, string.format("field %d: %s", n, next_off))
      return total
    end
    values[n] = value
    local text = shown(f.secret, value, n)
    if n == 48 then text = f48_display(value) end
    local item = tree:add(field_pf[n], tvb(off, next_off - off), text)
    if f.prefix > 0 then
      item:add(pf.varlen, tvb(off, f.prefix), tonumber(hex(tvb(off, f.prefix))))
    end
    if range then
      if n == 39 then item:add(pf.code_text, range, CODES[value] or "unknown response code")
      elseif n == 60 then layout_tree(item, range, value, F60, "f60.")
      elseif n == 61 then layout_tree(item, range, value, F61, "f61.")
      elseif n == 48 then f48_tree(item, range, value)
      elseif n == 54 and #value == 20 then
        local pos = 0
        for _, s in ipairs(BALANCE) do
          local part = value:sub(pos + 1, pos + s.digits)
          item:add(sub_pf["f54." .. s.key], range(pos, s.digits), part)
          pos = pos + s.digits
        end
      elseif n == 62 and #value == KEY_DATA_DIGITS then
        hex_layout_tree(item, range, value, KEY_DATA, "f62.")
      elseif n == 55 then f55_tree(item, range, pinfo)
      end
    end
    off = next_off
  end
  if off ~= LENGTH_PREFIX + length then
    tree:add_proto_expert_info(ef_malformed, "fields do not fill the frame")
  end
  local kind = kind_of(mti, values)
  tree:add(pf.kind, tvb(LENGTH_PREFIX + TPDU_LENGTH + HEADER_LENGTH, 2), kind)
  mti_item:append_text(" (" .. kind .. ")")
  local info = mti .. " " .. kind
  if values[11] then info = info .. " stan=" .. values[11] end
  if values[41] then info = info .. " tid=" .. values[41] end
  if values[39] then info = info .. " rc=" .. values[39] end
  if info_packet == pinfo.number then
    pinfo.cols.info:append(" | " .. info)  -- more than one frame in this segment
  else
    pinfo.cols.info:set(info)
    info_packet = pinfo.number
  end
  return total
end

local function pdu_length(tvb, pinfo, off)
  return tvb(off, LENGTH_PREFIX):uint() + LENGTH_PREFIX
end

local function dissect(tvb, pinfo, tree)
  dissect_tcp_pdus(tvb, tree, LENGTH_PREFIX, pdu_length, dissect_pdu, true)
  return tvb:len()
end
cup.dissector = dissect

local function looks_like_cup(tvb)
  if tvb:len() < LENGTH_PREFIX + MIN_FRAME then return false end
  local length = tvb(0, LENGTH_PREFIX):uint()
  if length < MIN_FRAME or length > MAX_FRAME then return false end
  if tvb(LENGTH_PREFIX, 1):uint() ~= TPDU_ID then return false end
  local mti = hex(tvb(LENGTH_PREFIX + TPDU_LENGTH + HEADER_LENGTH, 2))
  return mti:match("^0[1-9][0-9][0-9]$") ~= nil
end

local function heuristic(tvb, pinfo, tree)
  if not cup.prefs.heuristic or not looks_like_cup(tvb) then return false end
  dissect(tvb, pinfo, tree)
  return true
end
cup:register_heuristic("tcp", heuristic)

local registered_port = 0
local function register_port()
  local tcp = DissectorTable.get("tcp.port")
  if registered_port ~= 0 then tcp:remove(registered_port, cup) end
  registered_port = cup.prefs.port
  if registered_port ~= 0 then tcp:add(registered_port, cup) end
end
function cup.prefs_changed() register_port() end
register_port()
"""
