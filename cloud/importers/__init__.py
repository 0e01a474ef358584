"""Import files into the catalog and export datasets.

``import_path`` handles a single image, a folder (recursive), a video (frame
sampling + near-duplicate removal), a COCO JSON, a YOLO folder, a Label Studio
JSON export and zip archives of these, with an optional ``path,label`` CSV.
It is all-or-nothing per call; see :mod:`cloud.importers._import` for the rules.
``export_dataset`` writes COCO, YOLO or CSV.

Errors (from :mod:`cloud.errors`)::

    CitybrainError
    ├── InvalidInput      corrupt/unsupported explicit file, CSV naming missing
    │   │                 files, undecodable video, malformed label file
    │   └── UnsafeArchive zip member with ../ or an absolute path, escaping symlink
    ├── NotFound          dataset missing and create=False, unknown task
    ├── Conflict          export target exists and is not empty
    └── PayloadTooLarge   archive unpacking beyond the limit
"""

from __future__ import annotations

from cloud.importers._export import FORMATS, export_dataset
from cloud.importers._import import import_path
from cloud.importers._report import ExportReport, ImportReport, SkippedFile

__all__ = [
    "ExportReport",
    "FORMATS",
    "ImportReport",
    "SkippedFile",
    "export_dataset",
    "import_path",
]
