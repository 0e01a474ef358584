"""Content-addressed blob store: images, model artifacts, exports.

A blob is named by the sha256 of its bytes. Writes are atomic (temporary file
in the target directory, fsync, ``os.replace``) and idempotent; reads verify the
hash, so a corrupted file is reported instead of served.

Errors::

    cloud.errors.CitybrainError
    ├── cloud.errors.InvalidInput
    │   └── InvalidBlobId     not a 64-hex-digit sha256
    ├── cloud.errors.NotFound
    │   └── BlobNotFound      no blob with that id
    └── CorruptBlob           stored bytes no longer hash to their id

``FileBlobStore`` is the embedded backend (files under the data dir, paths
``root/ab/cd/<sha256>``); an S3-compatible backend can implement ``BlobStore``.
"""

from __future__ import annotations

from cloud.blobs._store import (
    BlobNotFound,
    BlobStore,
    CorruptBlob,
    FileBlobStore,
    InvalidBlobId,
    sha256_bytes,
    sha256_file,
)

__all__ = [
    "BlobNotFound",
    "BlobStore",
    "CorruptBlob",
    "FileBlobStore",
    "InvalidBlobId",
    "sha256_bytes",
    "sha256_file",
]
