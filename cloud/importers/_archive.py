"""Safe extraction of zip archives (no member may land outside the root)."""

from __future__ import annotations

import posixpath
import shutil
import stat
import zipfile
from pathlib import Path

from cloud.errors import InvalidInput, PayloadTooLarge, UnsafeArchive
from cloud.importers._report import SkippedFile


def _member_path(archive: str, name: str) -> str:
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise UnsafeArchive(f"{archive}: member {name!r} has an absolute path", field="file")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{archive}: member {name!r} escapes the archive root", field="file")
    return "/".join(parts)


def extract_zip(path: Path, dest: Path, *, max_bytes: int) -> list[SkippedFile]:
    """Check every member, then extract regular files into ``dest``.

    ``../`` members, absolute paths and symlinks pointing outside the archive
    raise ``UnsafeArchive`` before anything is extracted; symlinks that stay
    inside are not followed and are reported as skipped.
    """
    archive = path.name
    skipped: list[SkippedFile] = []
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InvalidInput(f"{archive}: not a readable zip archive ({e})", field="file") from None
    with zf:
        plan: list[tuple[zipfile.ZipInfo, str]] = []
        total = 0
        for info in zf.infolist():
            rel = _member_path(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "replace")
                joined = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
                if target.startswith("/") or joined == ".." or joined.startswith("../"):
                    raise UnsafeArchive(
                        f"{archive}: symlink {info.filename!r} points outside the archive "
                        f"({target!r})",
                        field="file",
                    )
                skipped.append(SkippedFile(file=f"{archive}/{rel}", reason="symlink not followed"))
                continue
            if info.is_dir() or not rel:
                continue
            total += info.file_size
            if total > max_bytes:
                raise PayloadTooLarge(
                    f"{archive}: unpacks to more than {max_bytes // (1 << 20)} MiB", field="file"
                )
            plan.append((info, rel))
        written = 0
        for info, rel in plan:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > max_bytes:
                            raise PayloadTooLarge(
                                f"{archive}: unpacks to more than {max_bytes // (1 << 20)} MiB",
                                field="file",
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
                raise InvalidInput(
                    f"{archive}: member {info.filename!r} cannot be extracted ({e})", field="file"
                ) from None
    return skipped


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
