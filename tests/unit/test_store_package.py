"""Keys, package building and every package refusal of issue 3."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest

import algorithm_store as st
from algorithm_store.testing import repack, tiny_classifier_onnx, tiny_package_kwargs
from edge_agent.protocol import (
    HashMismatch,
    SignatureInvalid,
    UnsafePath,
    extract_package_archive,
    key_id,
    verify_package_dir,
)


@pytest.fixture
def key(tmp_path: Path):
    return st.load_private_key(st.keygen(tmp_path / "keys"))


@pytest.fixture
def pub(key) -> bytes:
    return st.public_key_raw(key)


def _build(tmp_path: Path, key, version: str = "1.0.0", seed: int = 0, **kw) -> st.BuiltPackage:
    model = tiny_classifier_onnx(tmp_path / f"src-{version}-{seed}" / "model.onnx", seed=seed)
    return st.build_package(
        model,
        id="cars",
        version=version,
        private_key=key,
        out_dir=tmp_path / "out",
        **tiny_package_kwargs(**kw),
    )


# -- keys -------------------------------------------------------------------------


def test_keygen_writes_private_0600_and_raw_public_and_never_overwrites(tmp_path: Path) -> None:
    path = st.keygen(tmp_path / "k")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    pub = st.public_key_path(path).read_bytes()
    assert len(pub) == 32
    assert st.public_key_raw(st.load_private_key(path)) == pub
    before = path.read_bytes()
    with pytest.raises(st.KeyProblem, match="refusing to overwrite"):
        st.keygen(tmp_path / "k")
    assert path.read_bytes() == before


def test_sign_manifest_uses_key_id(tmp_path: Path, key, pub) -> None:
    b = _build(tmp_path, key)
    assert b.manifest.signature is not None
    assert b.manifest.signature.key_id == key_id(pub)


# -- building ---------------------------------------------------------------------


def test_build_infers_input_and_records_golden_cost_and_hashes(tmp_path: Path, key, pub) -> None:
    b = _build(tmp_path, key)
    m = b.manifest
    assert m.input.name == "input" and m.input.shape == ["N", 3, 8, 8]
    assert m.input.preprocess.resize == (8, 8)
    assert m.cost["cpu-x86"].measured and m.cost["cpu-x86"].ms_per_frame > 0
    assert set(m.files) == {"model.onnx", "golden/input.npy", "golden/output.npy"}
    assert b.archive.name == "cars-1.0.0.tar"
    unpacked = tmp_path / "unpacked"
    extract_package_archive(b.archive, unpacked)
    assert verify_package_dir(unpacked, pub).version == "1.0.0"
    x = np.load(unpacked / "golden/input.npy")
    y = np.load(unpacked / "golden/output.npy")
    assert x.shape == (1, 3, 8, 8) and y.shape == (1, 3)
    # deterministic: the same seed gives the same golden input
    b2 = _build(tmp_path, key, version="1.0.1")
    assert b2.manifest.files["golden/input.npy"] == m.files["golden/input.npy"]
    assert st.verify_archive(b.archive, pub).id == "cars"


def test_build_with_given_real_sample_and_external_data(tmp_path: Path, key, pub) -> None:
    model = tiny_classifier_onnx(tmp_path / "m" / "model.onnx", external_data="weights.bin")
    sample = np.full((2, 3, 8, 8), 0.5, np.float32)
    np.save(tmp_path / "sample.npy", sample)
    b = st.build_package(
        model,
        id="ext",
        version="0.1.0",
        private_key=key,
        out_dir=tmp_path / "out",
        golden_input=tmp_path / "sample.npy",
        **tiny_package_kwargs(),
    )
    assert "weights.bin" in b.manifest.files
    d = tmp_path / "x"
    extract_package_archive(b.archive, d)
    assert np.array_equal(np.load(d / "golden/input.npy"), sample)
    assert st.verify_archive(b.archive, pub).id == "ext"


def test_build_refuses_existing_archive_and_bad_fields(tmp_path: Path, key) -> None:
    b = _build(tmp_path, key)
    before = b.archive.read_bytes()
    with pytest.raises(st.PackageRejected, match="refusing to overwrite"):
        _build(tmp_path, key)
    assert b.archive.read_bytes() == before
    with pytest.raises(st.PackageRejected, match="unknown labels"):
        _build(
            tmp_path,
            key,
            version="2.0.0",
            event_rules=[{"event": "x", "labels": ["dragon"]}],
        )
    with pytest.raises(st.PackageRejected, match="golden_input: shape"):
        _build(tmp_path, key, version="2.0.1", golden_input=np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(st.PackageRejected, match="input.dtype"):
        _build(
            tmp_path,
            key,
            version="2.0.2",
            input={
                "name": "input",
                "dtype": "uint8",
                "shape": ["N", 3, 8, 8],
                "preprocess": {"resize": [8, 8]},
            },
        )


def test_build_refuses_model_failing_onnx_checker(tmp_path: Path, key) -> None:
    model = tiny_classifier_onnx(tmp_path / "m" / "model.onnx")
    proto = onnx.load(str(model))
    proto.graph.node[0].op_type = "NoSuchOp"
    onnx.save(proto, str(model))
    with pytest.raises(st.OnnxInvalid, match="onnx.checker"):
        st.build_package(
            model,
            id="bad",
            version="1.0.0",
            private_key=key,
            out_dir=tmp_path / "o",
            **tiny_package_kwargs(),
        )
    assert not (tmp_path / "o" / "bad-1.0.0.tar").exists()


def _escape_model(tmp_path: Path) -> Path:
    model = tiny_classifier_onnx(tmp_path / "m" / "model.onnx", external_data="weights.bin")
    (tmp_path / "m" / "weights.bin").rename(tmp_path / "outside.bin")
    proto = onnx.load(str(model), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.bin"
    onnx.save(proto, str(model))
    return model


def test_build_refuses_external_data_escaping_the_package(tmp_path: Path, key) -> None:
    model = _escape_model(tmp_path)
    with pytest.raises(st.ExternalDataEscapes, match=r"\.\./outside\.bin"):
        st.build_package(
            model,
            id="esc",
            version="1.0.0",
            private_key=key,
            out_dir=tmp_path / "o",
            **tiny_package_kwargs(),
        )


def test_build_refuses_symlinked_external_data_outside(tmp_path: Path, key) -> None:
    model = tiny_classifier_onnx(tmp_path / "m" / "model.onnx", external_data="weights.bin")
    (tmp_path / "m" / "weights.bin").rename(tmp_path / "real.bin")
    (tmp_path / "m" / "weights.bin").symlink_to(tmp_path / "real.bin")
    with pytest.raises(st.ExternalDataEscapes, match="outside the package"):
        st.build_package(
            model,
            id="esc",
            version="1.0.0",
            private_key=key,
            out_dir=tmp_path / "o",
            **tiny_package_kwargs(),
        )


# -- verification refusals (publish runs the same verify_archive) ---------------


def test_unsigned_package_refused(tmp_path: Path, key, pub) -> None:
    b = _build(tmp_path, key)
    bad = repack(b.archive, tmp_path / "unsigned.tar", manifest_update={"signature": None})
    with pytest.raises(st.PackageRejected, match="not signed") as ei:
        st.verify_archive(bad, pub)
    assert isinstance(ei.value.__cause__, SignatureInvalid)


def test_package_signed_by_another_key_refused(tmp_path: Path, key, pub) -> None:
    other = st.load_private_key(st.keygen(tmp_path / "other"))
    b = _build(tmp_path, key)
    bad = repack(b.archive, tmp_path / "other.tar", resign_key=other)
    with pytest.raises(st.PackageRejected, match="pinned key"):
        st.verify_archive(bad, pub)


def test_tampered_manifest_fails_signature(tmp_path: Path, key, pub) -> None:
    b = _build(tmp_path, key)
    bad = repack(b.archive, tmp_path / "t.tar", manifest_update={"metrics": {"accuracy": 0.99}})
    with pytest.raises(st.PackageRejected, match="signature does not verify"):
        st.verify_archive(bad, pub)


def test_file_not_matching_its_hash_refused(tmp_path: Path, key, pub) -> None:
    b = _build(tmp_path, key)

    def flip(root: Path) -> None:
        data = bytearray((root / "model.onnx").read_bytes())
        data[-1] ^= 0xFF
        (root / "model.onnx").write_bytes(bytes(data))

    bad = repack(b.archive, tmp_path / "h.tar", flip)
    with pytest.raises(st.PackageRejected, match="model.onnx: sha256 differs") as ei:
        st.verify_archive(bad, pub)
    assert isinstance(ei.value.__cause__, HashMismatch)


def test_unlisted_extra_file_refused(tmp_path: Path, key, pub) -> None:
    b = _build(tmp_path, key)
    bad = repack(b.archive, tmp_path / "e.tar", lambda r: (r / "extra.py").write_text("x"))
    with pytest.raises(st.PackageRejected, match="extra.py"):
        st.verify_archive(bad, pub)


def test_mix_and_match_file_from_another_version_refused(tmp_path: Path, key, pub) -> None:
    """TUF mix-and-match: per-file hashes are inside the signed manifest, so a
    model file taken from another (validly signed) version does not fit."""
    v1 = _build(tmp_path, key, version="1.0.0", seed=1)
    v2 = _build(tmp_path, key, version="2.0.0", seed=2)
    d1 = tmp_path / "d1"
    extract_package_archive(v1.archive, d1)

    def swap(root: Path) -> None:
        (root / "model.onnx").write_bytes((d1 / "model.onnx").read_bytes())
        (root / "golden/output.npy").write_bytes((d1 / "golden/output.npy").read_bytes())

    mixed = repack(v2.archive, tmp_path / "mixed.tar", swap)
    with pytest.raises(st.PackageRejected, match="sha256 differs") as ei:
        st.verify_archive(mixed, pub)
    assert isinstance(ei.value.__cause__, HashMismatch)
    # and the manifest of one version with the files of another
    d2 = tmp_path / "d2"
    extract_package_archive(v2.archive, d2)
    mixed2 = repack(
        v1.archive,
        tmp_path / "mixed2.tar",
        lambda r: (r / "manifest.json").write_bytes((d2 / "manifest.json").read_bytes()),
    )
    with pytest.raises(st.PackageRejected, match="differs"):
        st.verify_archive(mixed2, pub)


def test_signed_package_with_model_failing_checker_refused(tmp_path: Path, key, pub) -> None:
    b = _build(tmp_path, key)

    def break_model(root: Path) -> None:
        proto = onnx.load(str(root / "model.onnx"))
        proto.graph.node[0].op_type = "NoSuchOp"
        onnx.save(proto, str(root / "model.onnx"))

    bad = repack(b.archive, tmp_path / "c.tar", break_model, rehash=True, resign_key=key)
    with pytest.raises(st.OnnxInvalid, match="onnx.checker"):
        st.verify_archive(bad, pub)


def test_signed_package_with_external_data_escaping_refused(tmp_path: Path, key, pub) -> None:
    b = _build(tmp_path, key)

    def escape(root: Path) -> None:
        proto = onnx.load(str(root / "model.onnx"))
        init = proto.graph.initializer[0]
        onnx.external_data_helper.set_external_data(init, location="/etc/passwd")
        init.data_location = onnx.TensorProto.EXTERNAL
        init.ClearField("raw_data")
        init.ClearField("float_data")
        onnx.save(proto, str(root / "model.onnx"))

    bad = repack(b.archive, tmp_path / "x.tar", escape, rehash=True, resign_key=key)
    with pytest.raises(st.ExternalDataEscapes, match="/etc/passwd"):
        st.verify_archive(bad, pub)


def test_signed_package_failing_golden_check_refused(tmp_path: Path, key, pub) -> None:
    b = _build(tmp_path, key)

    def wrong_golden(root: Path) -> None:
        y = np.load(root / "golden/output.npy")
        np.save(root / "golden/output.npy", y + 1.0)

    bad = repack(b.archive, tmp_path / "g.tar", wrong_golden, rehash=True, resign_key=key)
    with pytest.raises(st.GoldenMismatch, match="differs from the golden output"):
        st.verify_archive(bad, pub)


def test_archive_member_escaping_root_refused(tmp_path: Path, pub) -> None:
    bad = tmp_path / "evil.tar"
    with tarfile.open(bad, "w") as tar:
        data = json.dumps({"x": 1}).encode()
        info = tarfile.TarInfo("../evil.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(st.PackageRejected, match="unsafe path") as ei:
        st.verify_archive(bad, pub)
    assert isinstance(ei.value.__cause__, UnsafePath)
    assert not (tmp_path / "evil.json").exists()


def test_not_an_archive_refused(tmp_path: Path, pub) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(st.PackageRejected):
        st.verify_archive(junk, pub)
