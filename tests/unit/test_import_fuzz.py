"""Hostile bytes never crash the decoder: they are a CorruptImage naming the file."""

from __future__ import annotations

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.catalog import CorruptImage, probe_image


def _valid(fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    ok, buf = cv2.imencode(fmt, rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    assert ok
    return buf.tobytes()


JPEG, PNG = _valid(".jpg"), _valid(".png")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    try:
        info = probe_image(data, "fuzz.jpg")
    except CorruptImage as e:
        assert e.message.startswith("fuzz.jpg: ")
    else:
        assert info.width > 0 and info.height > 0


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([JPEG, PNG]),
    st.integers(min_value=0, max_value=4000),
    st.integers(min_value=0, max_value=255),
    st.booleans(),
)
def test_truncated_or_flipped_images(base: bytes, pos: int, byte: int, truncate: bool) -> None:
    pos = pos % len(base)
    data = base[:pos] if truncate else base[:pos] + bytes([byte]) + base[pos + 1 :]
    try:
        info = probe_image(data, "x.img")
    except CorruptImage as e:
        assert "x.img" in e.message
    else:  # a flipped byte in entropy-coded data may still decode; a cut never does
        assert info.width > 0 and info.height > 0
        assert not truncate


def test_every_tail_truncation_is_detected() -> None:
    for base in (JPEG, PNG):
        for k in range(1, 40):
            try:
                probe_image(base[:-k], "cut")
            except CorruptImage:
                continue
            raise AssertionError(f"{k} bytes cut from a {'PNG' if base is PNG else 'JPEG'} passed")
