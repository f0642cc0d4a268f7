"""A lab certificate authority for the TLS links (``poshost tls make-lab-ca DIR``), made with
the ``openssl`` command so that the recipe works offline and adds no Python dependency.

Writes, in DIR: ``ca.pem``/``ca.key`` (the lab CA), ``server.pem``/``server.key`` (host and
hsm-sim: SAN 127.0.0.1 and localhost, usable as a client certificate too, e.g. the host
towards a mutual-TLS HSM) and ``terminal.pem``/``terminal.key`` (a terminal: CN = its TID, so
that certificates can later be bound to TIDs). Keys are ECDSA P-256, files mode 0600. LAB USE
ONLY: the CA key sits next to the certificates.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

from host.errors import ConfigError

CA_DAYS = 3650
"""Validity of the lab CA in days."""
LEAF_DAYS = 825
"""Validity of the server and terminal certificates in days."""
OPENSSL_TIMEOUT = 30.0
"""Seconds one openssl invocation may take."""
DEFAULT_TID = "12345678"
"""The demo terminal's TID (host/demo.py): CN of the terminal certificate by default."""
FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "terminal.pem", "terminal.key")
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
_SERVER_EXT = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
               "extendedKeyUsage=serverAuth,clientAuth\nsubjectKeyIdentifier=hash\n"
               "authorityKeyIdentifier=keyid\nsubjectAltName={san}\n")
_CLIENT_EXT = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
               "extendedKeyUsage=clientAuth\nsubjectKeyIdentifier=hash\n"
               "authorityKeyIdentifier=keyid\n")


def _openssl(*args: str) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise ConfigError("the openssl command is needed to make a lab CA"
                          " (Debian: apt-get install openssl)")
    try:
        subprocess.run([exe, *args], check=True, capture_output=True, timeout=OPENSSL_TIMEOUT)
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip().splitlines()
        raise ConfigError(f"openssl {args[0]} failed: {detail[-1] if detail else exc}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"openssl {args[0]} did not finish in {OPENSSL_TIMEOUT} s") from None


def _leaf(out: Path, work: Path, name: str, subject: str, extensions: str) -> None:
    csr, ext = work / f"{name}.csr", work / f"{name}.ext"
    ext.write_text(extensions)
    _openssl("req", "-new", *_KEY, "-keyout", str(out / f"{name}.key"), "-out", str(csr),
             "-subj", subject)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(out / "ca.pem"),
             "-CAkey", str(out / "ca.key"), "-set_serial", str(secrets.randbits(63)),
             "-days", str(LEAF_DAYS), "-sha256", "-extfile", str(ext),
             "-out", str(out / f"{name}.pem"))


def make_lab_ca(directory: Path, tid: str = DEFAULT_TID, *, hosts: tuple[str, ...] = (),
                force: bool = False) -> list[Path]:
    """Write the lab CA and its two leaf certificates into ``directory``; returns the files.
    ``hosts``: more names or addresses for the server certificate's SAN. Refuses to overwrite
    an existing CA unless ``force``."""
    if not tid or len(tid) > 8 or not tid.isascii() or not tid.isprintable() or "/" in tid:
        raise ConfigError(f"TID must be 1-8 printable ASCII characters, not {tid!r}")
    directory.mkdir(parents=True, exist_ok=True)
    if not force and (directory / "ca.key").exists():
        raise ConfigError(f"{directory} already holds a lab CA (ca.key): use another"
                          " directory or --force")
    san = ["IP:127.0.0.1", "DNS:localhost"]
    for name in hosts:
        entry = f"IP:{name}" if name.replace(".", "").isdigit() or ":" in name else f"DNS:{name}"
        san.append(entry)
    old_umask = os.umask(0o077)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            _openssl("req", "-x509", *_KEY, "-keyout", str(directory / "ca.key"),
                     "-out", str(directory / "ca.pem"), "-days", str(CA_DAYS), "-sha256",
                     "-subj", "/O=poshost lab/CN=poshost lab CA",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign")
            _leaf(directory, work, "server", "/O=poshost lab/CN=localhost",
                  _SERVER_EXT.format(san=",".join(san)))
            _leaf(directory, work, "terminal", f"/O=poshost lab/CN={tid}", _CLIENT_EXT)
    finally:
        os.umask(old_umask)
    files = [directory / name for name in FILES]
    for path in files:
        path.chmod(0o600)
    return files
