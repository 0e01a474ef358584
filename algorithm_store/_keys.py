"""ed25519 store keys: generation, loading, signing manifests and announcements."""

from __future__ import annotations

import base64
import os
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.protocol import Announcement, Manifest, Signature, key_id, utcnow

from ._errors import KeyProblem

PRIVATE_KEY_NAME = "key"
PUBLIC_SUFFIX = ".pub"


def public_key_path(private_key_path: Path) -> Path:
    """Where the raw public key of a private key file lives (``<key>.pub``)."""
    p = Path(private_key_path)
    return p.with_name(p.name + PUBLIC_SUFFIX)


def keygen(directory: Path, *, name: str = PRIVATE_KEY_NAME, force: bool = False) -> Path:
    """Write a new ed25519 private key (PEM, mode 0600) and its raw 32-byte
    public key (``<name>.pub``) into ``directory``. Returns the private key path.

    An existing key is never overwritten unless ``force``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    priv_path = directory / name
    pub_path = public_key_path(priv_path)
    if not force and (priv_path.exists() or pub_path.exists()):
        raise KeyProblem(
            f"{priv_path}: a store key already exists; refusing to overwrite it "
            "(packages signed with it would no longer verify)",
            field="key",
        )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    raw_pub = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    tmp = priv_path.with_name(f".{name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(tmp, 0o600)
    os.replace(tmp, priv_path)
    pub_path.write_bytes(raw_pub)
    return priv_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a PEM ed25519 private key written by :func:`keygen`."""
    path = Path(path)
    if not path.is_file():
        raise KeyProblem(
            f"{path}: no store key; create one with `citybrain store keygen`", field="key"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise KeyProblem(f"{path}: not a PEM private key ({e})", field="key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyProblem(f"{path}: not an ed25519 key", field="key")
    return key


def public_key_raw(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``key``."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_key(path: Path) -> bytes:
    """Read a raw public key file (32 bytes), or derive it from a private PEM."""
    path = Path(path)
    if not path.is_file():
        raise KeyProblem(f"{path}: no public key file", field="key")
    data = path.read_bytes()
    if len(data) == 32:
        return data
    if data.startswith(b"-----BEGIN"):
        return public_key_raw(load_private_key(path))
    raise KeyProblem(f"{path}: not a raw 32-byte ed25519 public key", field="key")


def _sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode()


def sign_manifest(manifest: Manifest, private_key: Ed25519PrivateKey) -> Manifest:
    """A copy of ``manifest`` carrying an ed25519 signature over its canonical bytes."""
    unsigned = manifest.model_copy(update={"signature": None})
    value = _sign(private_key, unsigned.signing_bytes())
    sig = Signature(key_id=key_id(public_key_raw(private_key)), value=value)
    return unsigned.model_copy(update={"signature": sig})


def sign_announcement(announcement: Announcement, private_key: Ed25519PrivateKey) -> Announcement:
    """A copy of ``announcement`` with its ``signature`` set."""
    unsigned = announcement.model_copy(update={"signature": None})
    return unsigned.model_copy(update={"signature": _sign(private_key, unsigned.signing_bytes())})


def make_announcement(
    algorithm: str,
    channels: dict[str, str],
    artifacts: dict,
    private_key: Ed25519PrivateKey,
    *,
    ttl: timedelta = timedelta(days=1),
) -> Announcement:
    """A signed announcement valid for ``ttl`` from now."""
    now = utcnow()
    ann = Announcement(
        algorithm=algorithm,
        channels=channels,
        artifacts=artifacts,
        issued_at=now,
        expires_at=now + ttl,
    )
    return sign_announcement(ann, private_key)
