"""A tiny PEP 503 package index on disk, with minimal valid wheels, for pip tests."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path


def build_wheel(name: str, version: str) -> tuple[str, bytes]:
    """A minimal valid pure-Python wheel."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 1\n",
        f"{dist}/METADATA": (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()),
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: acquired-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return f"{name}-{version}-py3-none-any.whl", buf.getvalue()


def make_index(root: Path, wheels: dict[str, list[tuple[str, bytes]]]) -> Path:
    """A PEP 503 simple index in a folder: simple/<project>/index.html -> packages/."""
    (root / "packages").mkdir(parents=True)
    links = []
    for project, files in wheels.items():
        page = ["<!DOCTYPE html><html><body>"]
        for filename, data in files:
            (root / "packages" / filename).write_bytes(data)
            sha = hashlib.sha256(data).hexdigest()
            page.append(f'<a href="../../packages/{filename}#sha256={sha}">{filename}</a><br/>')
        page.append("</body></html>")
        (root / "simple" / project).mkdir(parents=True)
        (root / "simple" / project / "index.html").write_text("\n".join(page))
        links.append(f'<a href="{project}/">{project}</a>')
    (root / "simple" / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>")
    return root
