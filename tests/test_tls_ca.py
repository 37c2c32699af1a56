"""The local CA (cacheproxy.tls.ca) and the upstream TLS context: checked with real TLS
handshakes, the openssl command line and headless Chromium, never by inspection alone."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from browser import chromium
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from cacheproxy.tls.ca import (
    CERT_FILE,
    KEY_FILE,
    LEAF_KEY_FILE,
    CAError,
    LocalCA,
    fingerprint_sha256,
    leaf_host,
    spki_sha256,
)
from cacheproxy.tls.upstream import upstream_ssl_context

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ca(tmp_path: Path) -> LocalCA:
    return LocalCA.load_or_create(tmp_path / "ca")


def openssl(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=stdin, capture_output=True,
                          check=True).stdout


# --- made on first use, loaded after ------------------------------------------------------------


def test_created_on_first_use_with_a_private_key(tmp_path: Path) -> None:
    directory = tmp_path / "data" / "cacheproxy"  # parents are made too
    ca = LocalCA.load_or_create(directory)
    assert ca.created
    assert ca.cert_path == directory / CERT_FILE
    assert stat.S_IMODE((directory / KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / LEAF_KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    again = LocalCA.load_or_create(directory)
    assert not again.created
    assert again.certificate == ca.certificate
    assert not list(directory.glob("*.tmp"))


def test_the_ca_certificate_signs_leaves_only(ca: LocalCA) -> None:
    cert = ca.certificate
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.issuer == cert.subject
    assert "cacheproxy CA" in cert.subject.rfc4514_string()
    text = openssl("x509", "-noout", "-text", "-in", str(ca.cert_path)).decode()
    assert "CA:TRUE, pathlen:0" in text


def test_fingerprint_and_spki_hash_agree_with_openssl(ca: LocalCA) -> None:
    shown = openssl("x509", "-noout", "-fingerprint", "-sha256", "-in", str(ca.cert_path))
    assert shown.decode().strip().split("=", 1)[1] == fingerprint_sha256(ca.certificate)
    # The recipe Chromium's documentation gives for --ignore-certificate-errors-spki-list.
    public = openssl("x509", "-noout", "-pubkey", "-in", str(ca.cert_path))
    der = openssl("pkey", "-pubin", "-outform", "der", stdin=public)
    digest = openssl("dgst", "-sha256", "-binary", stdin=der)
    assert openssl("enc", "-base64", stdin=digest).decode().strip() == spki_sha256(
        ca.certificate)


def test_processes_starting_together_make_one_ca(tmp_path: Path) -> None:
    script = ("import sys; from cacheproxy.tls.ca import LocalCA, fingerprint_sha256; "
              "print(fingerprint_sha256(LocalCA.load_or_create(sys.argv[1]).certificate))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "ca")], env=env,
                              stdout=subprocess.PIPE) for _ in range(4)]
    prints = {proc.communicate(timeout=60)[0] for proc in procs}
    assert all(proc.returncode == 0 for proc in procs)
    assert len(prints) == 1
    assert prints.pop().decode().strip() == fingerprint_sha256(
        LocalCA.load_or_create(tmp_path / "ca").certificate)


# --- what is refused ----------------------------------------------------------------------------


def test_a_key_without_its_certificate_is_not_overwritten(ca: LocalCA) -> None:
    key = (ca.directory / KEY_FILE).read_bytes()
    ca.cert_path.unlink()
    with pytest.raises(CAError) as info:
        LocalCA.load_or_create(ca.directory)
    assert info.value.path == ca.cert_path and "missing" in info.value.reason
    assert (ca.directory / KEY_FILE).read_bytes() == key


def test_a_key_others_can_read_is_refused(ca: LocalCA) -> None:
    os.chmod(ca.directory / KEY_FILE, 0o644)
    with pytest.raises(CAError, match="chmod 600"):
        LocalCA.load_or_create(ca.directory)


def test_a_certificate_of_another_key_is_refused(ca: LocalCA, tmp_path: Path) -> None:
    other = LocalCA.load_or_create(tmp_path / "other")
    ca.cert_path.write_bytes(other.cert_path.read_bytes())
    with pytest.raises(CAError, match="does not belong"):
        LocalCA.load_or_create(ca.directory)


def test_an_expired_ca_is_refused(ca: LocalCA) -> None:
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3651)
    with pytest.raises(CAError, match="expired"):
        LocalCA.load_or_create(ca.directory, now=later)


# --- leaf certificates --------------------------------------------------------------------------


def test_a_leaf_names_its_host_and_is_signed_by_the_ca(ca: LocalCA) -> None:
    leaf = ca.leaf("WWW.Example.com.")
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["www.example.com"]
    leaf.verify_directly_issued_by(ca.certificate)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime <= datetime.timedelta(days=398)


@pytest.mark.parametrize(("host", "address"), [("127.0.0.1", "127.0.0.1"), ("[::1]", "::1"),
                                               ("::FFFF:10.0.0.1", "::ffff:a00:1")])
def test_a_leaf_for_an_ip_address(ca: LocalCA, host: str, address: str) -> None:
    names = ca.leaf(host).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(address)]


def test_international_and_long_names(ca: LocalCA) -> None:
    idn = ca.leaf("bücher.example").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert idn.get_values_for_type(x509.DNSName) == ["xn--bcher-kva.example"]
    long_host = ".".join(["a" * 40] * 3)  # over the CN's 64 characters: SAN only
    leaf = ca.leaf(long_host)
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.DNSName) == [long_host]


@pytest.mark.parametrize("host", ["", "a b.example", "a..example", "x" * 64 + ".example"])
def test_no_leaf_for_what_is_no_host(ca: LocalCA, host: str) -> None:
    with pytest.raises(ValueError):
        ca.leaf(host)


def test_leaf_host_is_the_cache_key() -> None:
    assert leaf_host("Example.COM.") == leaf_host("example.com") == "example.com"
    assert leaf_host("[::1]") == leaf_host("0:0::1") == "::1"


def test_a_repeat_does_not_sign(ca: LocalCA) -> None:
    first = ca.leaf("a.example")
    assert ca.signed == 1
    assert ca.leaf("A.example.") is first
    assert ca.server_context("a.example") is ca.server_context("a.example")
    assert ca.signed == 1


def test_the_lru_forgets_the_least_recently_used(tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(tmp_path / "ca", leaves=2)
    ca.leaf("a.example")
    ca.leaf("b.example")
    ca.leaf("a.example")  # b is now the least recently used
    ca.leaf("c.example")
    assert ca.signed == 3
    ca.leaf("a.example")
    assert ca.signed == 3
    ca.leaf("b.example")
    assert ca.signed == 4


def test_a_leaf_near_its_end_is_signed_again(ca: LocalCA) -> None:
    first = ca.leaf("a.example")
    later = first.not_valid_after_utc - datetime.timedelta(hours=1)
    renewed = ca.leaf("a.example", now=later)
    assert ca.signed == 2
    assert renewed.not_valid_after_utc > first.not_valid_after_utc


def test_openssl_verifies_a_leaf_strictly(ca: LocalCA, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(ca.leaf("shop.example").public_bytes(Encoding.PEM))
    out = openssl("verify", "-x509_strict", "-purpose", "sslserver", "-verify_hostname",
                  "shop.example", "-CAfile", str(ca.cert_path), str(leaf))
    assert out.decode().strip().endswith(": OK")


# --- server contexts in real handshakes ---------------------------------------------------------


async def handshake(context: ssl.SSLContext, server_name: str, trust: ssl.SSLContext
                    ) -> tuple[bytes, str | None]:
    """A TLS server on 127.0.0.1 with `context`, a client trusting `trust` naming
    `server_name`: what the server sent, and the protocol ALPN chose."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello over TLS")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trust,
                                                       server_hostname=server_name)
        alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        data = await reader.read()
        writer.close()
        return data, alpn
    finally:
        server.close()
        await server.wait_closed()


def trusting(ca: LocalCA) -> ssl.SSLContext:
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    client.verify_flags |= ssl.VERIFY_X509_STRICT  # Python 3.13's default
    client.set_alpn_protocols(["h2", "http/1.1"])
    return client


@pytest.mark.parametrize("host", ["shop.example", "127.0.0.1"])
async def test_a_client_trusting_the_ca_accepts_the_server(ca: LocalCA, host: str) -> None:
    data, alpn = await handshake(ca.server_context(host), host, trusting(ca))
    assert data == b"hello over TLS"
    assert alpn == "http/1.1"  # never h2: the proxy speaks HTTP/1.1 in the tunnel


async def test_a_certificate_for_another_host_is_refused(ca: LocalCA) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match=r"match|mismatch"):
        await handshake(ca.server_context("shop.example"), "bank.example", trusting(ca))


async def test_a_client_not_trusting_the_ca_refuses(ca: LocalCA) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(ca.server_context("shop.example"), "shop.example",
                        ssl.create_default_context())


# --- Chromium takes the SPKI hash ---------------------------------------------------------------


async def https_site(context: ssl.SSLContext) -> web.AppRunner:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<title>through the local CA</title>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
    return runner


async def test_chromium_trusts_the_ca_by_its_spki_hash(ca: LocalCA) -> None:
    runner = await https_site(ca.server_context("127.0.0.1"))
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        flag = f"--ignore-certificate-errors-spki-list={spki_sha256(ca.certificate)}"
        async with chromium(flag) as browser:
            page = await browser.new_page()
            response = await page.goto(url)
            assert response is not None and response.status == 200
            assert await page.title() == "through the local CA"
        async with chromium() as browser:  # without the flag: the CA is nobody's
            page = await browser.new_page()
            with pytest.raises(Exception, match="ERR_CERT_AUTHORITY_INVALID"):
                await page.goto(url)
    finally:
        await runner.cleanup()


# --- proxy.upstream_ca_file ---------------------------------------------------------------------


async def test_upstream_context_adds_the_ca_file_to_the_system_cas(ca: LocalCA) -> None:
    runner = await https_site(ca.server_context("127.0.0.1"))
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        context = upstream_ssl_context(str(ca.cert_path))
        assert len(context.get_ca_certs()) > 1  # the system's are still there
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=context) as resp:
                assert resp.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(url, ssl=upstream_ssl_context(""))
    finally:
        await runner.cleanup()


async def test_the_proxy_verifies_an_https_upstream_with_upstream_ca_file(
        ca: LocalCA, proxy) -> None:
    runner = await https_site(ca.server_context("127.0.0.1"))
    upstream = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        trusted = await proxy(upstream, proxy={"upstream_ca_file": str(ca.cert_path)})
        resp = await trusted.get("/")
        assert resp.status == 200
        assert "through the local CA" in await resp.text()
        untrusted = await proxy(upstream)
        assert (await untrusted.get("/")).status == 502
    finally:
        await runner.cleanup()
