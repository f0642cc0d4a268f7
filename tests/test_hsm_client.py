"""HsmClient over both transports, and the trio TCP server under concurrent and hostile clients."""

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from hsm_sim import crypto
from hsm_sim.client import HsmClient, KeyUnderLmk
from hsm_sim.commands import HsmEngine, encode_frame
from hsm_sim.errors import HsmError, HsmUnavailable
from hsm_sim.lmk import generate_lmk_file
from hsm_sim.server import CONNECTION_IDLE_TIMEOUT, FRAME_READ_TIMEOUT, receive_exact, serve_hsm

h = bytes.fromhex
PIK = "0B681FC20E62C7340B681FC20E62C734"
TMK = "CA5D92598DCA48CE8A4C76361A9269E9"
X919_KEY = "0123456789ABCDEFFEDCBA9876543210"
PAN = "6222021234567890128"
ENGINE = HsmEngine.test()


@pytest.fixture
async def tcp_port(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(serve_hsm, ENGINE, "127.0.0.1", 0, 4)
    return listeners[0].socket.getsockname()[1]


@pytest.fixture(params=["in-process", "tcp"])
async def client(request: pytest.FixtureRequest, nursery: trio.Nursery) -> AsyncIterator[HsmClient]:
    if request.param == "in-process":
        hsm = HsmClient.in_process(ENGINE)
    else:
        listeners = await nursery.start(serve_hsm, ENGINE, "127.0.0.1", 0, 4)
        hsm = HsmClient.tcp("127.0.0.1", listeners[0].socket.getsockname()[1])
    yield hsm
    await hsm.aclose()


async def test_lmk_check_value_and_generate_key(client: HsmClient) -> None:
    assert await client.lmk_check_value() == ENGINE.lmk.check_value
    key = await client.generate_key("002")
    assert key.key.startswith("U") and len(key.key) == 33 and len(key.kcv) == 6
    clear = ENGINE.lmk.decrypt_key("002", key.key)
    assert key.kcv == crypto.generate_kcv(clear).hex().upper()
    assert (
        await client.key_check_value("02", key.key) == crypto.generate_kcv(clear, 8).hex().upper()
    )


async def test_sign_on_keys_unwrap_at_the_terminal(client: HsmClient) -> None:
    tmk = await client.import_clear_key("002", TMK)
    keys = await client.generate_terminal_keys(tmk.key)
    assert len(keys.field62()) == 40
    pik = crypto.unwrap_key_tmk(h(TMK), keys.pik_under_tmk, keys.pik_cv)
    mak = crypto.unwrap_key_tmk(h(TMK), keys.mak_under_tmk, keys.mak_cv)
    assert ENGINE.lmk.decrypt_key("002", keys.pik_lmk) == pik
    assert ENGINE.lmk.decrypt_key("003", keys.mak_lmk) == mak
    # the terminal MACs with the clear MAK, the host verifies through the HSM
    message = bytes(range(200))
    mac = crypto.generate_mac_x919(mak, message)
    assert await client.verify_mac(keys.mak_lmk, message, mac, "x919")
    assert await client.generate_mac(keys.mak_lmk, message, "x919") == mac


async def test_mac_vectors(client: HsmClient) -> None:
    tak = await client.import_clear_key("003", X919_KEY)
    data = b"Now is the time for all "
    assert await client.generate_mac(tak.key, data, "x919") == h("A1C72E74EA3FA9B6")
    assert await client.verify_mac(tak.key, data, h("A1C72E74EA3FA9B6"), "x919")
    assert not await client.verify_mac(tak.key, data, h("A1C72E74EA3FA9B7"), "x919")
    assert not await client.verify_mac(tak.key, data, b"short", "x919")
    cup = await client.import_clear_key("003", "2222222222222222" * 2)
    block = h("1234567890ABCDEFABCDEF1234567890")
    assert await client.generate_mac(cup.key, block, "cup-ecb") == b"E267B6E2"
    assert await client.verify_mac(cup.key, block, b"E267B6E2", "cup-ecb")
    assert not await client.verify_mac(cup.key, block, b"E267B6E3", "cup-ecb")
    assert not await client.verify_mac(cup.key, block, b"\xff" * 8, "cup-ecb")
    with pytest.raises(HsmError):
        await client.generate_mac(tak.key, data, "md5")


async def test_pvv_and_pin_translation(client: HsmClient) -> None:
    pvk = await client.generate_key("002")
    tpk = await client.import_clear_key("002", PIK)
    zpk = await client.generate_key("001")
    pvv = await client.generate_pvv(pvk.key, PAN, "1234")
    clear_pvk = ENGINE.lmk.decrypt_key("002", pvk.key)
    assert pvv == crypto.generate_visa_pvv(clear_pvk, "1", "1234", PAN)
    block = h("1B96E39DDF2F5140")
    assert await client.verify_pin_pvv(tpk.key, pvk.key, block, PAN, pvv)
    assert not await client.verify_pin_pvv(
        tpk.key, pvk.key, block, PAN, "0000" if pvv != "0000" else "1111"
    )
    with pytest.raises(HsmError) as err:
        await client.verify_pin_pvv(tpk.key, pvk.key, block, PAN, pvv, pinblock_format="99")
    assert err.value.code == "23"
    out = await client.translate_pin(tpk.key, zpk.key, block, PAN)
    clear_zpk = ENGINE.lmk.decrypt_key("001", zpk.key)
    assert (
        crypto.decipher_pinblock(clear_zpk, out, crypto.extract_account_number(PAN), "01") == "1234"
    )


async def test_components(client: HsmClient) -> None:
    key, parts = await client.generate_key_components("002")
    assert len(parts) == 2 and all(len(p) == 32 for p in parts)
    again = await client.import_clear_components("002", parts)
    assert again == key and isinstance(again, KeyUnderLmk)


async def test_clear_key_import_refused_under_live_lmk(tmp_path: object) -> None:
    live = HsmClient.in_process(HsmEngine(generate_lmk_file(f"{tmp_path}/lmk")))
    with pytest.raises(HsmError) as err:
        await live.import_clear_key("002", TMK)
    assert err.value.code == "17"


async def test_unknown_command_is_error_40() -> None:
    with pytest.raises(HsmError) as err:
        await HsmClient.in_process(ENGINE).call("QQ")
    assert err.value.code == "40"


# --------------------------------------------------------------------------- TCP behaviour


async def test_many_concurrent_clients(tcp_port: int) -> None:
    results: list[str] = []

    async def worker() -> None:
        hsm = HsmClient.tcp("127.0.0.1", tcp_port)
        for _ in range(5):
            results.append(await hsm.lmk_check_value())
        await hsm.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(worker)
    assert results == [ENGINE.lmk.check_value] * 100


async def test_shared_client_serialises_concurrent_calls(tcp_port: int) -> None:
    hsm = HsmClient.tcp("127.0.0.1", tcp_port)
    tak = await hsm.import_clear_key("003", X919_KEY)
    macs: list[bytes] = []

    async def one(i: int) -> None:
        macs.append(await hsm.generate_mac(tak.key, bytes([i]) * 50, "x919"))

    async with trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(one, i)
    await hsm.aclose()
    assert len(set(macs)) == 30


async def _exchange(port: int, frame: bytes, *, eof: bool = False) -> bytes | None:
    """The response to a raw frame, or None when the server closed (or reset) the connection."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        try:
            await stream.send_all(frame)
            if eof:
                await stream.send_eof()
            prefix = await receive_exact(stream, 2)
            if prefix is None:
                return None
            return await receive_exact(stream, int.from_bytes(prefix, "big"))
        except trio.BrokenResourceError:  # closed with our bytes unread: a reset
            return None


async def test_hostile_input_affects_only_its_connection(tcp_port: int) -> None:
    good = HsmClient.tcp("127.0.0.1", tcp_port)
    assert await good.lmk_check_value()
    assert await _exchange(tcp_port, b"\xff\xff" + b"A" * 100) is None  # over 32 KiB: closed
    assert await _exchange(tcp_port, encode_frame(b"\x00\xffgarbage\x80")) is not None
    assert await _exchange(tcp_port, encode_frame(b"")) == b"ZZ15"
    assert await _exchange(tcp_port, b"\x00\x0a0000N", eof=True) is None  # half a frame, then EOF
    assert await _exchange(tcp_port, encode_frame(b"0000NC" + b"x" * 30000)) == b"0000ND15"
    assert await good.lmk_check_value() == ENGINE.lmk.check_value  # the kept connection lives
    await good.aclose()


async def test_silent_client_is_dropped_after_idle_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    listeners = await nursery.start(serve_hsm, ENGINE, "127.0.0.1", 0, 4)
    port = listeners[0].socket.getsockname()[1]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    start = trio.current_time()
    assert await stream.receive_some(10) == b""
    assert trio.current_time() - start >= CONNECTION_IDLE_TIMEOUT
    await stream.aclose()


async def test_unreachable_hsm_raises_clear_error() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    hsm = HsmClient.tcp("127.0.0.1", port)
    with pytest.raises(HsmUnavailable, match="cannot connect to the HSM"):
        await hsm.lmk_check_value()


async def test_call_timeout_when_hsm_is_silent(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async def mute(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, mute, 0)
    port = listeners[0].socket.getsockname()[1]
    hsm = HsmClient.tcp("127.0.0.1", port, timeout=2.0)
    with pytest.raises(HsmUnavailable, match=r"did not answer within 2\.0 s"):
        await hsm.lmk_check_value()
    await hsm.aclose()


async def test_reconnects_once_when_the_kept_connection_broke(nursery: trio.Nursery) -> None:
    async def one_answer_then_close(stream: trio.SocketStream) -> None:
        async with stream:
            prefix = await receive_exact(stream, 2)
            assert prefix is not None
            body = await receive_exact(stream, int.from_bytes(prefix, "big"))
            assert body is not None
            await stream.send_all(encode_frame(ENGINE.handle(body)))

    listeners = await nursery.start(trio.serve_tcp, one_answer_then_close, 0)
    port = listeners[0].socket.getsockname()[1]
    hsm = HsmClient.tcp("127.0.0.1", port)
    for _ in range(3):
        assert await hsm.lmk_check_value() == ENGINE.lmk.check_value
    await hsm.aclose()


async def test_stalled_half_frame_is_dropped_after_frame_timeout(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    listeners = await nursery.start(serve_hsm, ENGINE, "127.0.0.1", 0, 4)
    port = listeners[0].socket.getsockname()[1]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"\x00\x100000")
    start = trio.current_time()
    assert await stream.receive_some(10) == b""
    assert FRAME_READ_TIMEOUT <= trio.current_time() - start < CONNECTION_IDLE_TIMEOUT
    await stream.aclose()
