"""The local certificate authority that forward.intercept_tls signs its certificates with.

It lives in forward.ca_dir and is made there on first use: an ECDSA P-256 key
(`ca-key.pem`, mode 0600), its self-signed certificate (`ca-cert.pem`, what a browser is
told to trust; `cacheproxy ca` prints where it is) and one more key (`leaf-key.pem`, 0600)
that every host's certificate carries. Reusing one leaf key, as mitmproxy does, means a
new host costs a signature, not a key generation; the key never leaves the directory.

Leaf certificates name their host in subjectAltName (browsers ignore the CN), are signed
once per host and kept in an LRU with their ssl.SSLContext, so a repeat does not sign.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import os
import platform
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

try:
    import fcntl
except ImportError:  # not on POSIX: creation is not guarded against a second process
    fcntl = None  # type: ignore[assignment]

CERT_FILE = "ca-cert.pem"
KEY_FILE = "ca-key.pem"
LEAF_KEY_FILE = "leaf-key.pem"
LEAVES = 1024  # hosts whose certificate and context are kept

CA_LIFETIME = datetime.timedelta(days=3650)
# CA/Browser Forum Baseline Requirements §6.3.2: a server certificate is valid 398 days at
# most (397 advised), counted from notBefore through notAfter inclusive (RFC 5280
# §4.1.2.5); Apple's and Chromium's verifiers enforce it. 397 days with BACKDATE in them.
LEAF_LIFETIME = datetime.timedelta(days=396)
BACKDATE = datetime.timedelta(days=1)  # a client whose clock is behind accepts it too
RENEW_BEFORE = datetime.timedelta(days=1)  # a cached leaf this close to expiry is redone
# CA/B Forum BR §6.1.5 and OpenSSL's default security level 2 (112-bit security).
MIN_RSA_BITS, MIN_EC_BITS = 2048, 256

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CAError(Exception):
    """The CA cannot be made or used: `path` names the file, `reason` what is wrong."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def fingerprint_sha256(certificate: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as browsers and `openssl x509 -fingerprint -sha256`
    show it: upper-case hex bytes joined by colons."""
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def spki_sha256(certificate: x509.Certificate) -> str:
    """base64 of SHA-256 of the DER SubjectPublicKeyInfo (RFC 7469 §2.4's pin): the value
    Chromium's --ignore-certificate-errors-spki-list takes."""
    der = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


def leaf_host(host: str) -> str:
    """The name a leaf is made and cached for: lowercase, IDNA, without IPv6 brackets or a
    trailing dot; an IP address in its canonical form. ValueError for what is no host."""
    name = host.strip().lower().removesuffix(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(name).compressed
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"not a valid host name: {host!r}") from None
    labels = name.split(".")
    if not name or any(not label or len(label) > 63 for label in labels) or len(name) > 253 \
            or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"not a valid host name: {host!r}")
    return name


@dataclass(slots=True)
class _Leaf:
    certificate: x509.Certificate
    chain_pem: bytes  # the leaf, then the CA: what the server sends
    context: ssl.SSLContext | None = None


class LocalCA:
    """A CA loaded from (or made in) a directory, signing leaf certificates on demand."""

    def __init__(self, directory: Path, key: SigningKey, certificate: x509.Certificate,
                 leaf_key: ec.EllipticCurvePrivateKey, *, created: bool = False,
                 leaves: int = LEAVES) -> None:
        self.directory = directory
        self.certificate = certificate
        self.created = created  # made by this load_or_create, not found there
        self.signed = 0  # leaf certificates signed so far: a cached host does not add one
        self._key = key
        self._leaf_key = leaf_key
        self._leaves: LRUCache[str, _Leaf] = LRUCache(maxsize=leaves)
        self._ca_pem = certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_FILE

    @classmethod
    def load_or_create(cls, directory: Path | str, *, leaves: int = LEAVES,
                       now: datetime.datetime | None = None) -> LocalCA:
        """The CA in `directory`, made there first if it holds none. Raises CAError (a key
        without its certificate, a key others can read, an expired CA ...) and OSError."""
        directory = Path(directory)
        now = now or datetime.datetime.now(datetime.UTC)
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise CAError(directory, f"cannot create the directory: {exc.strerror or exc}"
                          ) from None
        key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
        files = (key_path, cert_path, directory / LEAF_KEY_FILE)
        # Two workers starting at once make one CA, not two. A CA that is all there is only
        # read (each file was renamed into place whole): its directory may be read-only.
        whole = all(path.exists() for path in files)
        with contextlib.nullcontext() if whole else _locked(directory):
            created = not key_path.exists() and not cert_path.exists()
            if created:
                key = ec.generate_private_key(ec.SECP256R1())
                _write_new(key_path, _private_pem(key), 0o600)
                _write_new(cert_path, _ca_certificate(key, now).public_bytes(
                    serialization.Encoding.PEM), 0o644)
            key, certificate = _load_ca(key_path, cert_path, now)
            leaf_key = _load_or_create_leaf_key(directory / LEAF_KEY_FILE)
        return cls(directory, key, certificate, leaf_key, created=created, leaves=leaves)

    def leaf(self, host: str, now: datetime.datetime | None = None) -> x509.Certificate:
        """The certificate for `host` (a name or IP address), signed now or taken from the
        LRU. ValueError when `host` is no host name."""
        return self._entry(host, now).certificate

    def server_context(self, host: str, now: datetime.datetime | None = None) -> ssl.SSLContext:
        """A server-side TLS context presenting `host`'s certificate and the CA after it,
        HTTP/1.1 by ALPN; one per host, kept in the LRU beside its certificate."""
        entry = self._entry(host, now)
        if entry.context is None:
            entry.context = self._context(entry.chain_pem)
        return entry.context

    def _entry(self, host: str, now: datetime.datetime | None) -> _Leaf:
        name = leaf_host(host)
        now = now or datetime.datetime.now(datetime.UTC)
        entry = self._leaves.get(name)
        if entry is None or entry.certificate.not_valid_after_utc - now < RENEW_BEFORE:
            certificate = self._sign(name, now)
            entry = _Leaf(certificate, certificate.public_bytes(serialization.Encoding.PEM)
                          + self._ca_pem)
            self._leaves[name] = entry
        return entry

    def _sign(self, name: str, now: datetime.datetime) -> x509.Certificate:
        try:
            alt_name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            alt_name = x509.DNSName(name)
        # X.520's ub-common-name is 64: a longer host is named by subjectAltName alone.
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]
                            if len(name) <= 64 else [])
        public = self._leaf_key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + LEAF_LIFETIME, self.certificate.not_valid_after_utc))
            # RFC 5280 §4.2.1.6: with an empty subject the names are critical.
            .add_extension(x509.SubjectAlternativeName([alt_name]), critical=not len(subject))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.signed += 1
        return certificate

    def _context(self, chain_pem: bytes) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])  # what the proxy speaks inside the tunnel
        # ssl loads certificates from files only: the chain (public) goes through a
        # short-lived file in the temporary directory (the CA's may be read-only).
        fd, chain_file = tempfile.mkstemp(prefix="cacheproxy-chain-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(chain_pem)
            context.load_cert_chain(chain_file, self.directory / LEAF_KEY_FILE)
        finally:
            os.unlink(chain_file)
        return context


# --- the files ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Written whole under a temporary name, then renamed: never a half key on disk. The
    mode is set at creation, so a key is never readable by others, not even briefly. The
    name is known in advance (the pid): whatever stands there is removed and the file
    made anew (O_EXCL, O_NOFOLLOW), so that a link planted in a directory others can write
    (a forward.ca_dir set to one) never has the private key written into a file of
    theirs, whose mode it would keep (CWE-59)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _private_pem(key: SigningKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _read_key(path: Path) -> object:
    if os.name == "posix" and path.stat().st_mode & 0o077:
        raise CAError(path, f"a private key others can read; run: chmod 600 {path}")
    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except TypeError:
        raise CAError(path, "the key is encrypted; cacheproxy needs it unencrypted") from None
    except ValueError as exc:
        raise CAError(path, f"not a PEM private key ({exc})") from None


def _load_ca(key_path: Path, cert_path: Path,
             now: datetime.datetime) -> tuple[SigningKey, x509.Certificate]:
    for path, other in ((key_path, cert_path), (cert_path, key_path)):
        if not path.exists():
            raise CAError(path, f"missing, while {other.name} is there; restore it, or "
                                "remove both to make a new CA")
    key = _read_key(key_path)
    if not isinstance(key, SigningKey):
        raise CAError(key_path, "the CA key must be ECDSA or RSA")
    if key.key_size < (MIN_RSA_BITS if isinstance(key, rsa.RSAPrivateKey) else MIN_EC_BITS):
        # OpenSSL's default security level, and browsers, refuse a chain signed with it
        raise CAError(key_path, f"a {key.key_size}-bit {_type_name(key)} key is too small to "
                                f"sign with (at least {MIN_RSA_BITS}-bit RSA or "
                                f"{MIN_EC_BITS}-bit ECDSA); remove both files to make a new CA")
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError as exc:
        raise CAError(cert_path, f"not a PEM certificate ({exc})") from None
    if certificate.public_key().public_numbers() != key.public_key().public_numbers():
        raise CAError(cert_path, f"does not belong to the key in {key_path.name}")
    try:
        is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CAError(cert_path, "not a CA certificate (basicConstraints CA:TRUE)")
    try:
        usage: x509.KeyUsage | None = certificate.extensions.get_extension_for_class(
            x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None  # (none: the key's use is not restricted)
    if usage is not None and not usage.key_cert_sign:  # RFC 5280 §4.2.1.3
        raise CAError(cert_path, "its keyUsage leaves out keyCertSign: clients refuse the "
                                 "certificates it signs")
    if certificate.not_valid_before_utc > now:  # made by a clock ahead (or this one behind)
        raise CAError(cert_path, "the CA is valid only from "
                                 f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check "
                                 "this machine's clock, or remove both files to make a new one")
    if certificate.not_valid_after_utc <= now:
        raise CAError(cert_path, f"the CA expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
                                 "; remove both files to make a new one (and trust it again)")
    return key, certificate


def _type_name(key: SigningKey) -> str:
    return "RSA" if isinstance(key, rsa.RSAPrivateKey) else "ECDSA"


def _load_or_create_leaf_key(path: Path) -> ec.EllipticCurvePrivateKey:
    if not path.exists():
        _write_new(path, _private_pem(ec.generate_private_key(ec.SECP256R1())), 0o600)
    key = _read_key(path)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(path, "the leaf key must be ECDSA; remove it and one is made")
    return key


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    # Named for the machine and day, so two such CAs in one trust store can be told apart.
    common_name = f"cacheproxy CA {platform.node()[:32]} {now:%Y-%m-%d}".replace("  ", " ")
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cacheproxy"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        # RFC 5280 §4.2.1.9: it signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
