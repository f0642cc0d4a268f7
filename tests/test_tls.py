"""TLS on the terminal and HSM links, over real TCP (port 0) with a lab CA made by
``poshost tls make-lab-ca``: a TLS and a plain terminal side by side on one host, mutual TLS,
the host reaching hsm-sim over TLS, and hostile handshakes (no certificate, an untrusted CA,
plain bytes on the TLS port, silence) that cost only their own connection."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from host import server as host_server
from host.app import HostConfig, TlsListen, run_host
from host.cli import main as poshost
from host.hsm import open_hsm
from hsm_sim.commands import HsmEngine
from hsm_sim.errors import HsmUnavailable
from hsm_sim.server import serve_hsm
from specs.framing import encode_frame_tcp
from specs.tls import server_context
from terminal.cards import Card
from terminal.errors import ConnectFailed, NoResponse
from terminal.session import Terminal
from terminal.state import Config, Store
from terminal.transport import TcpTransport, tls_context
from tests.conftest import MID, TMK, provision

TLS_TID = "TLS00001"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab CA and its certificates, made through the CLI as the README says."""
    out = tmp_path_factory.mktemp("lab")
    result = CliRunner().invoke(poshost, ["tls", "make-lab-ca", str(out), "--tid", TLS_TID])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def other_lab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated lab CA (its certificates are untrusted by the first)."""
    out = tmp_path_factory.mktemp("other")
    result = CliRunner().invoke(poshost, ["tls", "make-lab-ca", str(out)])
    assert result.exit_code == 0, result.output
    return out


async def start_host(nursery: trio.Nursery, db_path: Path, lab: Path, *, mutual: bool,
                     hsm: str = "embedded", pcap: Path | None = None,
                     bind_tid: bool = False, allow_peers: tuple[str, ...] = ()
                     ) -> tuple[int, int]:
    """A host with a plain and a TLS listener; (plain port, TLS port)."""
    tls = TlsListen("127.0.0.1", 0, lab / "server.pem", lab / "server.key",
                    lab / "ca.pem" if mutual else None, bind_tid)
    config = HostConfig(listen_port=0, db_path=db_path, hsm=hsm, tls=tls, pcap=pcap,
                        allow_peers=allow_peers)
    _, port = await nursery.start(run_host, config)
    assert tls.bound is not None
    return port, tls.bound[1]


async def provisioned(db_path: Path, hsm: str = "embedded", lmk: str = "test") -> Card:
    from host.provision import add_terminal
    async with open_hsm(hsm, lmk, authorise=None) as (client, _):
        cards = await provision(db_path, client)
        await add_terminal(db_path, client, TLS_TID, MID, tmk_hex=TMK)
    return Card.from_track2(cards["good"].track2)


def terminal(path: Path, tid: str, port: int, context: Any = None) -> Terminal:
    store = Store(path)
    files = ("", "", "")
    store.initialise(Config(tid, MID, "127.0.0.1", port, timeout=5.0, backoff=0.01,
                            attempts=2, tls=context is not None, tls_ca=files[0]),
                     bytes.fromhex(TMK))
    return Terminal(store, TcpTransport("127.0.0.1", port, ssl_context=context))


async def sign_on_and_sell(t: Terminal, card: Card, amount: int) -> str:
    assert (await t.sign_on()).status == "approved"
    sale = await t.sale(card, amount, "1234")
    assert sale.status == "approved", sale
    await t.transport.aclose()
    return sale.details["rrn"]


async def test_tls_and_plain_terminals_side_by_side_with_mutual_tls(
        tmp_path: Path, lab: Path, nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "host.db"
    card = await provisioned(db)
    pcap = tmp_path / "cap.pcap"
    plain_port, tls_port = await start_host(nursery, db, lab, mutual=True, pcap=pcap)
    context = tls_context(str(lab / "ca.pem"), str(lab / "terminal.pem"),
                          str(lab / "terminal.key"))
    plain = terminal(tmp_path / "plain.db", "12345678", plain_port)
    secure = terminal(tmp_path / "tls.db", TLS_TID, tls_port, context)
    rrns: list[str] = []

    async def run(t: Terminal, amount: int) -> None:
        rrns.append(await sign_on_and_sell(t, card, amount))

    async with trio.open_nursery() as both:
        both.start_soon(run, plain, 100)
        both.start_soon(run, secure, 200)
    assert len(set(rrns)) == 2
    # serve --pcap holds both connections' frames, the TLS one decrypted.
    from tests.test_wireshark import pcap_payloads
    sign_ons = {port for port, payload in pcap_payloads(pcap) if payload[13:15] == b"\x08\x10"}
    assert sign_ons == {plain_port, tls_port}

    # Mutual TLS: a terminal without a certificate is refused, with a clear line on each side.
    caplog.set_level(logging.INFO)
    bare = terminal(tmp_path / "bare.db", TLS_TID, tls_port, tls_context(str(lab / "ca.pem")))
    with pytest.raises((NoResponse, ConnectFailed)) as refused:
        await bare.sign_on()
    assert "certificate" in str(refused.value)
    await bare.transport.aclose()
    with trio.fail_after(5):
        while "sent no client certificate" not in caplog.text:
            await trio.sleep(0.01)
    # ... and the host keeps serving both kinds of terminal.
    await sign_on_and_sell(plain, card, 300)
    await sign_on_and_sell(secure, card, 400)


async def test_a_terminal_certificate_is_bound_to_its_tid(
        tmp_path: Path, lab: Path, nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    """The attack: a terminal with a valid certificate (CN TLS00001) signs on, or settles, as
    another terminal. With --tls-bind-tid the connection is closed unanswered. (With an
    allow-list too, and a capture: the peer address comes from the socket under TLS.)"""
    db = tmp_path / "host.db"
    card = await provisioned(db)
    _, tls_port = await start_host(nursery, db, lab, mutual=True, bind_tid=True,
                                   allow_peers=("127.0.0.0/8",), pcap=tmp_path / "w.pcap")
    context = tls_context(str(lab / "ca.pem"), str(lab / "terminal.pem"),
                          str(lab / "terminal.key"))
    caplog.set_level(logging.WARNING)
    impostor = terminal(tmp_path / "imp.db", "12345678", tls_port, context)
    with pytest.raises(NoResponse):
        await impostor.sign_on()
    await impostor.transport.aclose()
    assert "ALERT tid=12345678 sign_on on a TLS connection whose certificate names" \
           " 'TLS00001': refused" in caplog.text
    owner = terminal(tmp_path / "own.db", TLS_TID, tls_port, context)
    await sign_on_and_sell(owner, card, 100)


async def test_hostile_handshakes_cost_only_their_connection(
        tmp_path: Path, lab: Path, other_lab: Path, nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_server, "TLS_HANDSHAKE_TIMEOUT", 0.5)
    caplog.set_level(logging.INFO)
    db = tmp_path / "host.db"
    card = await provisioned(db)
    _, tls_port = await start_host(nursery, db, lab, mutual=False)

    # Silence on the TLS port: closed after the handshake timeout.
    silent = await trio.open_tcp_stream("127.0.0.1", tls_port)
    # Plain cup-pos bytes on the TLS port: closed at once.
    plain = await trio.open_tcp_stream("127.0.0.1", tls_port)
    await plain.send_all(encode_frame_tcp(bytes.fromhex("6000030000603100310000") + b"\0" * 10))
    with trio.fail_after(5):
        assert await plain.receive_some(100) == b""
    # A host certificate from an untrusted CA: the terminal refuses it.
    stranger = TcpTransport("127.0.0.1", tls_port,
                            ssl_context=tls_context(str(other_lab / "ca.pem")))
    with pytest.raises(ConnectFailed, match="certificate refused"):
        await stranger.connect()
    # Meanwhile a good TLS terminal transacts.
    good = terminal(tmp_path / "t.db", TLS_TID, tls_port, tls_context(str(lab / "ca.pem")))
    await sign_on_and_sell(good, card, 100)
    with trio.fail_after(5):
        assert await silent.receive_some(100) == b""
    await silent.aclose()
    await plain.aclose()
    text = caplog.text
    assert "not TLS (plain bytes on a TLS port?)" in text
    assert "TLS handshake not complete within 0.5 s" in text
    assert "the peer closed the connection during TLS" in text


async def test_host_reaches_hsm_over_mutual_tls(tmp_path: Path, lab: Path,
                                                nursery: trio.Nursery,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    context = server_context(lab / "server.pem", lab / "server.key", lab / "ca.pem")
    listeners = await nursery.start(
        lambda task_status: serve_hsm(HsmEngine.test(), "127.0.0.1", 0, 4,
                                      task_status=task_status, ssl_context=context))
    port = listeners[0].socket.getsockname()[1]
    base = f"tls://127.0.0.1:{port}?ca={lab / 'ca.pem'}"
    hsm = f"{base}&cert={lab / 'server.pem'}&key={lab / 'server.key'}"

    # Without a client certificate the mutual-TLS HSM is unreachable, and says why.
    async with open_hsm(base, "test") as (client, info):
        assert "TLS" in info.description
        with pytest.raises(HsmUnavailable, match="certificate"):
            await client.lmk_check_value()

    # A plain client on the TLS port is closed, not answered; hsm-sim says why.
    async with open_hsm(f"tcp://127.0.0.1:{port}", "test") as (client, _):
        with pytest.raises(HsmUnavailable):
            await client.lmk_check_value()

    db = tmp_path / "host.db"
    card = await provisioned(db, hsm)
    _, tls_port = await start_host(nursery, db, lab, mutual=False, hsm=hsm)
    t = terminal(tmp_path / "t.db", TLS_TID, tls_port, tls_context(str(lab / "ca.pem")))
    await sign_on_and_sell(t, card, 100)
    assert "not TLS (plain bytes on a TLS port?)" in caplog.text
    assert "the peer sent no client certificate" in caplog.text


def test_posterm_init_tls_keeps_the_files(tmp_path: Path, lab: Path) -> None:
    from terminal.cli import main as posterm
    state = tmp_path / "t.db"
    args = ["init", "--tid", TLS_TID, "--mid", MID, "--tmk", TMK, "--host", "127.0.0.1:5443",
            "--tls", "--ca", str(lab / "ca.pem"), "--cert", str(lab / "terminal.pem"),
            "--key", str(lab / "terminal.key"), "--state", str(state)]
    result = CliRunner().invoke(posterm, args)
    assert result.exit_code == 0, result.output
    assert "tls://127.0.0.1:5443" in result.output
    config = Store(state).config()
    assert config.tls and config.tls_cert == str(lab / "terminal.pem")
    bad = CliRunner().invoke(posterm, [*args[:9], "--ca", str(lab / "ca.pem"),
                                       "--state", str(state)])
    assert bad.exit_code == 2 and "go with --tls" in bad.output
    wrong = CliRunner().invoke(posterm, [*args[:10], "--ca", str(lab / "ca.pem"), "--cert",
                                         str(lab / "terminal.pem"), "--key",
                                         str(lab / "server.key"), "--state", str(state)])
    assert wrong.exit_code == 2 and "cannot use certificate" in wrong.output


def expired_certificate(lab: Path, out: Path, name: str) -> tuple[Path, Path]:
    """A certificate of the lab CA whose validity ended yesterday (openssl -days -1)."""
    import subprocess
    key, csr, pem = out / f"{name}.key", out / f"{name}.csr", out / f"{name}.pem"
    ext = out / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key), "-out", str(csr),
                    "-subj", f"/CN={name}"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(lab / "ca.pem"),
                    "-CAkey", str(lab / "ca.key"), "-set_serial", "7", "-days", "-1",
                    "-extfile", str(ext), "-out", str(pem)], check=True, capture_output=True)
    return pem, key


async def test_expired_certificates_are_refused_on_both_sides(
        tmp_path: Path, lab: Path, nursery: trio.Nursery,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    db = tmp_path / "host.db"
    card = await provisioned(db)
    _, tls_port = await start_host(nursery, db, lab, mutual=True)
    # A terminal whose certificate has expired: the host refuses it and says why.
    pem, key = expired_certificate(lab, tmp_path, TLS_TID)
    old = terminal(tmp_path / "old.db", TLS_TID, tls_port,
                   tls_context(str(lab / "ca.pem"), str(pem), str(key)))
    with pytest.raises((NoResponse, ConnectFailed)):
        await old.sign_on()
    await old.transport.aclose()
    with trio.fail_after(5):
        while "certificate refused: certificate has expired" not in caplog.text:
            await trio.sleep(0.01)
    # A host whose certificate has expired: the terminal refuses it and says why.
    host_pem, host_key = expired_certificate(lab, tmp_path, "stale-host")
    stale = TlsListen("127.0.0.1", 0, host_pem, host_key)
    await nursery.start(run_host, HostConfig(listen_port=0, db_path=db, tls=stale))
    assert stale.bound is not None
    transport = TcpTransport("127.0.0.1", stale.bound[1],
                             ssl_context=tls_context(str(lab / "ca.pem")))
    with pytest.raises(ConnectFailed, match="certificate has expired"):
        await transport.connect()
    # The good terminal still transacts on the first host.
    good = terminal(tmp_path / "t.db", TLS_TID, tls_port,
                    tls_context(str(lab / "ca.pem"), str(lab / "terminal.pem"),
                                str(lab / "terminal.key")))
    await sign_on_and_sell(good, card, 100)


async def test_tls_with_worker_processes(tmp_path: Path, lab: Path,
                                         nursery: trio.Nursery) -> None:
    """--workers 2: every worker serves the TLS listener too (mutual TLS), beside plain."""
    db = tmp_path / "host.db"
    card = await provisioned(db)
    tls = TlsListen("127.0.0.1", 0, lab / "server.pem", lab / "server.key", lab / "ca.pem")
    _, plain_port = await nursery.start(
        run_host, HostConfig(listen_port=0, db_path=db, tls=tls, workers=2))
    assert tls.bound is not None
    context = tls_context(str(lab / "ca.pem"), str(lab / "terminal.pem"),
                          str(lab / "terminal.key"))
    secure = terminal(tmp_path / "tls.db", TLS_TID, tls.bound[1], context)
    plain = terminal(tmp_path / "plain.db", "12345678", plain_port)
    for _ in range(3):  # fresh connections, spread over the workers by the kernel
        await sign_on_and_sell(secure, card, 100)
        await sign_on_and_sell(plain, card, 100)
    bare = terminal(tmp_path / "bare.db", TLS_TID, tls.bound[1], tls_context(str(lab / "ca.pem")))
    with pytest.raises((NoResponse, ConnectFailed)):
        await bare.sign_on()
    await bare.transport.aclose()
