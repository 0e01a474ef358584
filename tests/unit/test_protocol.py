"""The wire contract: message decoding, schema versions, manifest signing and
package verification."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_agent import protocol as p


def _keypair() -> tuple[Ed25519PrivateKey, bytes]:
    k = Ed25519PrivateKey.generate()
    return k, k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _package(tmp: Path, key: Ed25519PrivateKey, pub: bytes) -> tuple[Path, p.Manifest]:
    root = tmp / "pkg"
    (root / "golden").mkdir(parents=True)
    files = {"model.onnx": b"onnx-bytes", "golden/input.npy": b"in", "golden/output.npy": b"out"}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    import hashlib

    m = p.Manifest(
        id="manhole_missing",
        version="1.2.0",
        task=p.Task.CLASSIFY,
        labels=["ok", "missing"],
        input=p.InputSpec(shape=["N", 3, 32, 32], preprocess=p.Preprocess(resize=(32, 32))),
        postprocess=p.Postprocess(output="logits"),
        event_rules=[p.EventRule(event="manhole_cover_missing", labels=["missing"])],
        files={
            rel: p.FileEntry(sha256=hashlib.sha256(d).hexdigest(), size=len(d))
            for rel, d in files.items()
        },
    )
    sig = key.sign(m.signing_bytes())
    m.signature = p.Signature(key_id=p.key_id(pub), value=base64.b64encode(sig).decode())
    (root / p.MANIFEST_NAME).write_text(m.model_dump_json(by_alias=True))
    return root, m


def test_topics_and_device_of() -> None:
    assert p.Topics.desired("edge-01") == "cb/v1/dev/edge-01/desired"
    assert p.Topics.announce("manhole") == "cb/v1/store/announce/manhole"
    assert p.Topics.device_of("cb/v1/dev/edge-01/hard") == "edge-01"
    with pytest.raises(ValueError, match="device id"):
        p.Topics.desired("a/+/b")
    with pytest.raises(p.MessageInvalid):
        p.Topics.device_of("cb/v1/store/announce/x")


def test_decode_rejects_bad_json_unknown_schema_and_bad_fields() -> None:
    with pytest.raises(p.MessageInvalid, match="not JSON"):
        p.decode(b"{nope", p.DesiredState)
    with pytest.raises(p.SchemaVersionError, match="citybrain.desired/2"):
        p.decode(json.dumps({"schema": "citybrain.desired/2"}), p.DesiredState)
    with pytest.raises(p.MessageInvalid, match="revision"):
        p.decode(
            json.dumps({"schema": "citybrain.desired/1", "device": "d1", "revision": -1}),
            p.DesiredState,
        )
    with pytest.raises(p.MessageInvalid, match="Extra inputs"):
        p.decode(
            json.dumps({"schema": "citybrain.desired/1", "device": "d1", "revision": 1, "x": 1}),
            p.DesiredState,
        )


def test_round_trip_and_reason_codes() -> None:
    d = p.DesiredState(device="d1", revision=3)
    assert p.decode(p.encode(d), p.DesiredState) == d
    assert p.reason_code_for(p.SchemaVersionError("x")) == p.ReasonCode.PAYLOAD_FORMAT_INVALID
    assert p.reason_code_for(p.SignatureInvalid("x")) == p.ReasonCode.NOT_AUTHORIZED
    assert p.reason_code_for(RuntimeError("x")) == p.ReasonCode.UNSPECIFIED_ERROR


def test_hard_sample_needs_exactly_one_payload() -> None:
    base = dict(
        id="abcdefgh1",
        device="d1",
        stream="cam1",
        algorithm="a",
        model_version="1.0.0",
        selector="entropy",
        reason="high entropy",
    )
    with pytest.raises(ValueError, match="exactly one"):
        p.HardSample(**base)
    assert p.HardSample(**base, image_jpeg_b64="AAAA").image_jpeg_b64 == "AAAA"


def test_semver_ordering() -> None:
    versions = ["1.0.0", "1.0.0-rc.1", "0.9.9", "1.10.0", "1.2.0"]
    assert sorted(versions, key=p.semver_key) == ["0.9.9", "1.0.0-rc.1", "1.0.0", "1.2.0", "1.10.0"]


def test_manifest_rejects_unknown_keys_unlisted_files_and_bad_rules() -> None:
    with pytest.raises(ValueError, match="not listed"):
        p.Manifest(
            id="a",
            version="1.0.0",
            task="classify",
            labels=["x"],
            input=p.InputSpec(shape=[1, 3, 8, 8], preprocess=p.Preprocess(resize=(8, 8))),
            postprocess=p.Postprocess(output="logits"),
            files={},
        )
    with pytest.raises(ValueError, match="unsafe path"):
        p.check_member_path("../etc/passwd")
    p.EventRule(event="e", labels=["nope"])  # valid alone, not inside a manifest lacking "nope"
    with pytest.raises(ValueError, match="unknown labels"):
        p.Manifest(
            id="a",
            version="1.0.0",
            task="classify",
            labels=["x"],
            input=p.InputSpec(shape=[1, 3, 8, 8], preprocess=p.Preprocess(resize=(8, 8))),
            postprocess=p.Postprocess(output="logits"),
            event_rules=[p.EventRule(event="e", labels=["nope"])],
            files={
                "model.onnx": {"sha256": "0" * 64, "size": 1},
                "golden/input.npy": {"sha256": "0" * 64, "size": 1},
                "golden/output.npy": {"sha256": "0" * 64, "size": 1},
            },
        )


def test_signed_package_verifies_and_every_tamper_is_refused(tmp_path: Path) -> None:
    key, pub = _keypair()
    root, m = _package(tmp_path, key, pub)
    assert p.verify_package_dir(root, pub).version == "1.2.0"

    other_key, other_pub = _keypair()
    with pytest.raises(p.SignatureInvalid, match="pinned key"):
        p.verify_package_dir(root, other_pub)

    (root / "model.onnx").write_bytes(b"onnx-bytez")  # same size, other bytes
    with pytest.raises(p.HashMismatch, match="model.onnx"):
        p.verify_package_dir(root, pub)
    (root / "model.onnx").write_bytes(b"onnx-bytes")

    (root / "extra.bin").write_bytes(b"x")
    with pytest.raises(p.HashMismatch, match="not listed"):
        p.verify_package_dir(root, pub)
    (root / "extra.bin").unlink()

    doc = json.loads((root / p.MANIFEST_NAME).read_text())
    doc["labels"] = ["ok", "missing_cover"]  # edited after signing
    doc["event_rules"][0]["labels"] = ["missing_cover"]
    (root / p.MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(p.SignatureInvalid, match="does not verify"):
        p.verify_package_dir(root, pub)

    doc.pop("signature")
    (root / p.MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(p.SignatureInvalid, match="not signed"):
        p.verify_package_dir(root, pub)


def test_archive_round_trip_and_unsafe_members(tmp_path: Path) -> None:
    key, pub = _keypair()
    root, _ = _package(tmp_path, key, pub)
    arc = tmp_path / "pkg.tar"
    p.write_package_archive(root, arc)
    first = arc.read_bytes()
    p.write_package_archive(root, arc)
    assert arc.read_bytes() == first  # deterministic
    out = tmp_path / "out"
    p.extract_package_archive(arc, out)
    assert p.verify_package_dir(out, pub).id == "manhole_missing"

    for name, kind in [("../evil", tarfile.REGTYPE), ("link", tarfile.SYMTYPE)]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(p.UnsafePath):
            p.extract_package_archive(buf.getvalue(), tmp_path / f"bad-{kind!r}")
        assert not (tmp_path / "evil").exists()

    with pytest.raises(p.PackageInvalid, match="unreadable"):
        p.extract_package_archive(b"not a tar" * 100, tmp_path / "garbage")
