"""Ed25519 keys and signed notes: what a station signs its audit checkpoints with, and what a quality
unit signs an approved spec with.

Keys are PEM files (PKCS#8 private key, SubjectPublicKeyInfo public key), which ``openssl`` reads
too. A private key is written 0600 and refused on load when anyone but its owner may read it
(as ssh does): a station key that others can read proves nothing.

Signatures use the C2SP signed-note format (https://c2sp.org/signed-note), the one transparency
logs sign their checkpoints in: a UTF-8 text ending in a newline, a blank line, then one line per
signature ``— NAME BASE64(key_id || signature)``, where ``key_id`` is the first 4 bytes of
SHA-256(NAME || "\\n" || 0x01 || public key). So a signature says which key made it, and a note
signed by another key is named as such rather than reported as merely "invalid".
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from mscvision.core.errors import ConfigError

PRIVATE_NAME, PUBLIC_NAME = "station.key", "station.pub"
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space open every signature line (C2SP signed-note)
ED25519_ALGORITHM = b"\x01"  # the signed-note signature type byte for Ed25519
KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # no spaces, no "+": a key name sits in one line


class SigningError(ConfigError):
    """A key that cannot be used (missing, wrong type, readable by others), or a malformed note."""


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes  # 4 bytes
    signature: bytes  # 64 bytes for Ed25519


def check_key_name(name: str, what: str = "station id") -> str:
    if not isinstance(name, str) or not KEY_NAME.fullmatch(name):
        raise SigningError(f"{what} {name!r}: use 1-64 letters, digits, '.', '_' or '-' (it names the signing key "
                           "in every checkpoint, one word per line).")
    return name


# --- keys --------------------------------------------------------------------------------------------

def generate_keypair(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """A new Ed25519 key pair as ``DIR/station.key`` (0600) and ``DIR/station.pub``; never overwrites."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / PRIVATE_NAME, out / PUBLIC_NAME
    present = [str(p) for p in (private, public) if p.exists()]
    if present:
        raise SigningError(f"{', '.join(present)} already exist(s); a station key is never overwritten (the log's "
                           "checkpoints were signed with it). Fix: choose another --out folder.")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    _write_new(private, pem, 0o600)
    _write_new(public, public_pem(key.public_key()), 0o644)
    return private, public


def public_pem(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the mode asked for, whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_private_key(path: str | os.PathLike):
    """The Ed25519 private key in PEM file ``path``; ``SigningError`` says what is wrong and the fix."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    data = _read_key_file(path, "private")
    mode = stat.S_IMODE(path.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        raise SigningError(f"{path}: the private key is readable by others (mode {mode:04o}); a key others can "
                           f"read signs nothing. Fix: chmod 600 {path}.")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SigningError(f"{path}: the private key is passphrase-protected, which this station does not support. "
                           "Fix: keep the key unencrypted with mode 0600 on the station's own disk.") from None
    except ValueError:
        if b"PUBLIC KEY" in data:
            raise SigningError(f"{path}: this is a public key; signing needs the private key "
                               f"({PRIVATE_NAME}).") from None
        raise SigningError(f"{path}: not a PEM private key. Fix: make one with `mscvision audit keygen "
                           "--out DIR`.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: a {type(key).__name__.lstrip('_')} key; the station signs with Ed25519. Fix: "
                           "make one with `mscvision audit keygen --out DIR`.")
    return key


def load_public_key(path: str | os.PathLike):
    """The Ed25519 public key in PEM file ``path``; ``SigningError`` otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    data = _read_key_file(path, "public")
    if b"PRIVATE KEY" in data:
        raise SigningError(f"{path}: this is a private key; pass the public key ({PUBLIC_NAME}), and keep the "
                           "private one on the station.")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise SigningError(f"{path}: not a PEM public key. Fix: pass the {PUBLIC_NAME} written by `mscvision audit "
                           "keygen`.") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: a {type(key).__name__.lstrip('_')} key, not Ed25519.")
    return key


def _read_key_file(path: Path, kind: str) -> bytes:
    if not path.is_file():
        raise SigningError(f"{path}: no such {kind} key file. Fix: make a key pair with `mscvision audit keygen "
                           "--out DIR`, or give the right path.")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc


def raw_public(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_from_raw(raw: bytes):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(raw)


def fingerprint(public_key) -> str:
    """SHA-256 of the raw 32-byte public key, hex: how a person compares two keys."""
    return hashlib.sha256(raw_public(public_key)).hexdigest()


# --- signed notes (C2SP signed-note) -----------------------------------------------------------------

def key_id(name: str, public_key) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519_ALGORITHM + raw_public(public_key)).digest()[:4]


def sign_note(body: str, name: str, private_key) -> str:
    """``body`` (lines ending in a newline, no blank line) signed by ``private_key`` under ``name``."""
    check_note_body(body)
    check_key_name(name, "key name")
    signature = private_key.sign(body.encode("utf-8"))
    token = base64.b64encode(key_id(name, private_key.public_key()) + signature).decode("ascii")
    return f"{body}\n{SIGNATURE_PREFIX}{name} {token}\n"


def check_note_body(body: str) -> None:
    if not body.endswith("\n") or "\n\n" in body or body.startswith("\n"):
        raise SigningError("a note body is non-empty lines, each ending in a newline, with no blank line")


def parse_note(text: str) -> tuple[str, list[NoteSignature]]:
    """(body, signatures); ``SigningError`` for a text that is not a signed note."""
    body, sep, rest = text.partition("\n\n")
    if not sep or not rest.endswith("\n"):
        raise SigningError("not a signed note (a body, a blank line, then signature lines)")
    signatures = []
    for line in rest[:-1].split("\n"):
        if not line.startswith(SIGNATURE_PREFIX):
            raise SigningError(f"signature line {line[:40]!r} does not start with an em dash")
        name, _, token = line[len(SIGNATURE_PREFIX):].partition(" ")
        try:
            blob = base64.b64decode(token, validate=True)
        except ValueError:
            raise SigningError(f"signature of {name!r} is not base64") from None
        if len(blob) != 4 + 64:
            raise SigningError(f"signature of {name!r} holds {len(blob)} bytes, not 4 + 64 (Ed25519)")
        signatures.append(NoteSignature(name, blob[:4], blob[4:]))
    return body + "\n", signatures


def note_problem(body: str, signatures: list[NoteSignature], public_key) -> str | None:
    """None when ``public_key`` signed ``body`` (one of ``signatures``, found by key id and verified);
    otherwise why not: signed by another key, or a signature of this key that does not verify (the
    note was edited after signing)."""
    from cryptography.exceptions import InvalidSignature

    ours = [s for s in signatures if s.key_id == key_id(s.name, public_key)]
    if not ours:
        others = ", ".join(f"{s.name} (key id {s.key_id.hex()})" for s in signatures) or "nobody"
        return (f"signed by another key: {others}; the expected key (fingerprint {fingerprint(public_key)[:16]}…) "
                "made no signature on it")
    for sig in ours:
        try:
            public_key.verify(sig.signature, body.encode("utf-8"))
            return None
        except InvalidSignature:
            continue
    return f"the signature of key id {ours[0].key_id.hex()} does not verify: the text was changed after signing"
