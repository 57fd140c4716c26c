"""Files written for one response (exports, downloads), streamed as attachments.

Each export is written into a private temporary directory. The file is opened, the
directory removed (the open file stays readable until the response closes it), and
the file streamed with its size, so nothing is left on disk whatever the client does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from flask import Response, send_file


def written_attachment(
    write: Callable[[Path], Path], media_type: str | Callable[[Path], str], name: str
) -> Response:
    """Run ``write(directory)`` (it returns the file it wrote) and stream that file as ``name`` + its suffix.

    ``media_type`` may depend on the file written (a zip or not).
    """
    directory = tempfile.mkdtemp(prefix="geoharbor-attachment-")
    try:
        path = write(Path(directory))
        handle = open(path, "rb")  # noqa: SIM115 - closed by the response when sent
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    size = os.fstat(handle.fileno()).st_size
    response = send_file(
        handle,
        mimetype=media_type(path) if callable(media_type) else media_type,
        as_attachment=True,
        download_name=f"{name}{path.suffix}",
        conditional=False,
        etag=False,
        max_age=0,
    )
    response.headers["Content-Length"] = str(size)
    return response
