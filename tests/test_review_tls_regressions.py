"""A reviewer's findings on forward mode's CONNECT tunnels and TLS interception (the local
CA, the intercepted tunnel, the `cacheproxy ca` command).

Each test failed on the code it was written against (commit 1694657); its docstring says
what happened, what should happen and why, and how severe it is. Real servers and
processes on 127.0.0.1, as elsewhere."""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from processes import clean_env, free_port

from cacheproxy.tls.ca import KEY_FILE, CAError, LocalCA


async def serve_exit(env: dict[str, str], cwd: Path, seconds: float = 10
                     ) -> tuple[int | None, str]:
    """`cacheproxy serve` on a free port: its exit status and stderr if it stops within
    `seconds`, else (None, "") once it was killed."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cacheproxy", "serve", "--listen", f"127.0.0.1:{free_port()}",
        "--upstream", f"http://127.0.0.1:{free_port()}", cwd=cwd, env=clean_env(**env),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), seconds)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        return None, ""
    return proc.returncode, err.decode(errors="replace")


async def test_a_ca_that_cannot_be_used_stops_the_start_naming_forward_ca_dir(
        tmp_path: Path) -> None:
    """With forward.intercept_tls on, the local CA was first read at the first CONNECT: a
    CA directory whose key others can read (or a garbled, expired or half-deleted CA) let
    `cacheproxy serve` start and report ready, and then every https request through it got
    a 502 ("no certificate for the host") with one ERROR line per CONNECT, the CA read
    again each time. proxy.upstream_ca_file, the other TLS file, is checked at start, and
    DESIGN.md says config mistakes stop the start with a message naming the key: `serve`
    should refuse to start, exit 2, and name forward.ca_dir and the file, as
    `cacheproxy ca` does. Severity: medium (a proxy that looks healthy fails every https
    request; the operator learns it only from the first browser)."""
    ca_dir = tmp_path / "ca"
    LocalCA.load_or_create(ca_dir)
    os.chmod(ca_dir / KEY_FILE, 0o644)
    status, err = await serve_exit({"CACHEPROXY_FORWARD_ENABLED": "true",
                                    "CACHEPROXY_FORWARD_INTERCEPT_TLS": "true",
                                    "CACHEPROXY_FORWARD_CA_DIR": str(ca_dir)}, tmp_path)
    assert status == 2, "serve started with a CA it cannot use"
    lines = err.strip().splitlines()
    assert lines[-1].startswith("cacheproxy: config error: forward.ca_dir: "), err
    assert str(ca_dir / KEY_FILE) in lines[-1]
    assert "Traceback" not in err


def test_a_leaf_is_valid_no_more_than_398_days_counted_as_browsers_count(tmp_path: Path
                                                                         ) -> None:
    """A leaf ran from now - 1 day (BACKDATE) to now + 397 days: 398 days between the two
    dates, and RFC 5280 §4.1.2.5 (and the CA/Browser Forum Baseline Requirements §6.3.2,
    whose limit the code's own comment cites) count the validity period from notBefore
    through notAfter *inclusive*: 398 days and one second, over the 398-day limit that
    Apple's and Chromium's verifiers enforce for public CAs (README says "valid 397
    days"). Counted inclusively it must be at most 398 days (397, as the README says, with
    the backdating inside it). Severity: low (the limit is enforced for publicly trusted
    roots; a user-added CA is exempt today, and a policy change would break every host)."""
    ca = LocalCA.load_or_create(tmp_path / "ca")
    leaf = ca.leaf("example.com")
    inclusive = leaf.not_valid_after_utc - leaf.not_valid_before_utc \
        + datetime.timedelta(seconds=1)
    assert inclusive <= datetime.timedelta(days=398)
    assert inclusive <= datetime.timedelta(days=397, seconds=1)  # README: valid 397 days


def _own_ca(directory: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *,
            key_usage: x509.KeyUsage | None = None,
            starts: datetime.timedelta = datetime.timedelta(days=-1)) -> None:
    """A CA of the user's own in `directory`, with `key` (the loader takes an ECDSA or RSA
    key and its CA certificate found there), valid from now + `starts`."""
    directory.mkdir()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "my own CA")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now + starts)
               .not_valid_after(now + datetime.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True))
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    certificate = builder.sign(key, hashes.SHA256())
    (directory / "ca-cert.pem").write_bytes(certificate.public_bytes(
        serialization.Encoding.PEM))
    fd = os.open(directory / KEY_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))


def test_a_ca_key_too_small_to_sign_with_is_refused_by_cacheproxy_ca(tmp_path: Path
                                                                     ) -> None:
    """`cacheproxy ca` accepted a CA whose key is RSA-1024 (openssl req -newkey rsa:1024,
    or an old company CA) and printed its fingerprint as usable; but OpenSSL's default
    security level (2: RSA 2048 bits at least) refuses it, so every intercepted CONNECT then
    failed (SSLError CA_KEY_TOO_SMALL when the leaf's context is made: 502 "no certificate
    for the host"), and a browser would refuse such a chain too (Chromium, like the CA/B
    Forum BR §6.1.5, wants RSA 2048 or more). The command that checks the CA should refuse
    it in one line naming the file and the size, exit 1. Severity: low."""
    ca_dir = tmp_path / "ca"
    _own_ca(ca_dir, rsa.generate_private_key(public_exponent=65537, key_size=1024))
    result = subprocess.run([sys.executable, "-m", "cacheproxy", "ca"], cwd=tmp_path,
                            env=clean_env(CACHEPROXY_FORWARD_CA_DIR=str(ca_dir)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cacheproxy: ca: {ca_dir / KEY_FILE}: ")
    assert "1024" in lines[0]


def _read_only(directory: Path, command: str) -> subprocess.CompletedProcess[str]:
    """`command` (sh) run with `directory` read-only: chmod for a user, or, for root (whom
    modes do not stop), a read-only bind mount in a mount namespace of its own (the
    directory stays writable for everyone else)."""
    if os.geteuid() != 0:
        directory.chmod(0o500)
        argv = ["sh", "-c", command]
    else:
        argv = ["unshare", "-m", "sh", "-c",
                f"mount --bind -o ro '{directory}' '{directory}' && {command}"]
    try:
        return subprocess.run(argv, env=clean_env(CACHEPROXY_FORWARD_CA_DIR=str(directory)),
                              capture_output=True, text=True, timeout=60)
    finally:
        directory.chmod(0o700)


def test_a_ca_in_a_read_only_directory_is_used(tmp_path: Path) -> None:
    """A complete CA (key, certificate, leaf key) in a directory the proxy may not write
    (a Kubernetes secret or a compose volume mounted `:ro`, the README's ./config mount,
    a CA made by `cacheproxy ca` as another user) could not be used at all: every load
    opened `.lock` for writing first ("Read-only file system": `cacheproxy ca` exit 1,
    every intercepted CONNECT a 502), and each new host's certificate chain went through
    a temporary file written in that directory. Nothing needs writing when the files are
    there; mitmproxy and Squid's ssl-bump read an existing CA from wherever it is.
    Severity: medium (interception cannot be deployed with its CA as a read-only secret)."""
    ca_dir = tmp_path / "ca"
    made = LocalCA.load_or_create(ca_dir)
    check = (f"{sys.executable} -c \"from cacheproxy.tls.ca import LocalCA; "
             f"LocalCA.load_or_create('{ca_dir}').server_context('example.com'); "
             "print('context made')\"")
    shown = _read_only(ca_dir, f"{sys.executable} -m cacheproxy ca")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == f"certificate: {made.cert_path}"
    used = _read_only(ca_dir, check)
    assert used.returncode == 0, used.stderr
    assert used.stdout.strip() == "context made"


@pytest.mark.parametrize("problem", ["keyUsage without keyCertSign", "not valid yet"])
def test_a_ca_certificate_clients_refuse_as_an_issuer_is_refused_when_loaded(
        tmp_path: Path, problem: str) -> None:
    """The loader checks that the CA certificate says CA:TRUE and has not expired, but took
    one whose keyUsage leaves out keyCertSign (RFC 5280 §4.2.1.3: its key may then not
    verify certificate signatures; OpenSSL says "invalid CA certificate") and one whose
    notBefore is still to come (made on a machine whose clock runs ahead): `cacheproxy ca`
    printed it as good, and every client then refused every intercepted host. Both should
    be refused in one line naming ca-cert.pem, as an expired CA is. Severity: low."""
    ca_dir = tmp_path / "ca"
    key = ec.generate_private_key(ec.SECP256R1())
    if problem == "not valid yet":
        _own_ca(ca_dir, key, starts=datetime.timedelta(days=3))
    else:
        _own_ca(ca_dir, key, key_usage=x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False))
    with pytest.raises(CAError) as refused:
        LocalCA.load_or_create(ca_dir)
    assert refused.value.path == ca_dir / "ca-cert.pem"
