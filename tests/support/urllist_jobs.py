"""URL-list jobs through the daemon: a small Pillow-made corpus on a loopback
``ImageServer``, its input file in every format, a manifest, and the checks every test
makes on the output (each row accounted once, tar members match the parquet rows)."""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from support.image_server import ImageServer, Route
from support.images import encode, picture


@dataclass
class Corpus:
    """URLs in input order, what each should become, and the paths of the flaky ones."""

    urls: list[str] = field(default_factory=list)
    expect: list[str] = field(default_factory=list)
    """ok, http_4xx, http_5xx, filtered_small, duplicate."""
    flaky: list[str] = field(default_factory=list)
    bodies: dict[str, bytes] = field(default_factory=dict)

    def heal(self, server: ImageServer) -> None:
        """The flaky URLs answer with their image from now on."""
        for path in self.flaky:
            server.add(path, self.bodies[path])


def build(server: ImageServer, good: int = 60, *, flaky: int = 3, slow: float = 0.0) -> Corpus:
    """Good images of mixed sizes (JPEG and PNG), a few small ones, 404s, flaky 503s,
    an exact and a near duplicate of earlier images. ``slow``: seconds each good image
    waits before it is served (to catch the daemon in the middle of a shard)."""
    c = Corpus()

    def add(path: str, body: bytes, expect: str, ctype: str = "image/jpeg") -> None:
        c.urls.append(server.route(path, Route(body=body, content_type=ctype, delay=slow)))
        c.expect.append(expect)
        c.bodies[path] = body

    for i in range(good):
        w, h = 110 + (i * 37) % 200, 110 + (i * 53) % 180
        pic = picture(100 + i, w, h)
        if i % 4 == 0:
            add(f"/img/{i}.png", encode(pic, "PNG"), "ok", "image/png")
        else:
            add(f"/img/{i}.jpg", encode(pic, "JPEG", quality=85), "ok")
    for i in range(3):
        add(f"/small/{i}.jpg", encode(picture(900 + i, 40, 150), "JPEG"), "filtered_small")
    for i in range(3):
        c.urls.append(server.url(f"/missing/{i}"))
        c.expect.append("http_4xx")
    for i in range(flaky):
        path = f"/flaky/{i}.jpg"
        c.bodies[path] = encode(picture(700 + i, 200, 160), "JPEG")
        c.urls.append(server.status(path, 503))
        c.expect.append("http_5xx")
        c.flaky.append(path)
    # An exact copy at another URL, and a near duplicate (re-encoded at low quality).
    add("/copy/1.jpg", c.bodies["/img/1.jpg"], "duplicate")
    near = encode(picture(100 + 2, 110 + 74, 110 + 106), "JPEG", quality=40)
    add("/near/2.jpg", near, "duplicate")
    return c


def write_input(folder: Path, fmt: str, corpus: Corpus) -> str:
    """The corpus as ``urls.<fmt>`` under ``folder`` (columns url, caption, n)."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"urls.{fmt}"
    rows = [{"url": u, "caption": f"caption {i}", "n": i} for i, u in enumerate(corpus.urls)]
    path = folder / name
    if fmt == "txt":
        path.write_text("".join(r["url"] + "\n" for r in rows))
    elif fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        lines = [sep.join(["url", "caption", "n"])]
        lines += [sep.join([r["url"], r["caption"], str(r["n"])]) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=16)
    return name


def manifest(name: str, input_name: str, *, fmt: str, shard_size: int = 16, **extra: Any) -> str:
    """A kind = "urllist" manifest for the corpus."""
    lines = [
        "manifest_version = 1",
        'kind = "urllist"',
        f'name = "{name}"',
        f'destination = "{name}"',
        "",
        "[urllist]",
        f'input = "{input_name}"',
        f"shard_size = {shard_size}",
        "timeout = 30",
        "retries = 0",
    ]
    if fmt != "txt":
        lines += ['url_column = "url"', 'caption_column = "caption"', 'keep_columns = ["n"]']
    extra.setdefault("per_host_connections", 4)
    for key, value in extra.items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines += [
        "",
        "[urllist.filters]",
        "min_side = 100",
        "",
        "[urllist.dedupe]",
        "exact = true",
        'perceptual = { hash = "phash", max_distance = 4 }',
    ]
    return "\n".join(lines) + "\n"


def read_output(folder: Path) -> dict[int, dict[str, Any]]:
    """Every row of every shard's parquet, by row index (the latest shard wins: a retry
    shard replaces what an earlier one said about a row); each tar's members checked
    against its parquet."""
    rows: dict[int, dict[str, Any]] = {}
    for stats in sorted(folder.glob("*_stats.json")):
        stem = stats.name[: -len("_stats.json")]
        table = pq.read_table(folder / f"{stem}.parquet").to_pylist()
        with tarfile.open(folder / f"{stem}.tar") as tar:
            members = Counter(m.name.split(".", 1)[0] for m in tar.getmembers())
            for m in tar.getmembers():
                if m.name.endswith((".jpg", ".png", ".webp")):
                    data = tar.extractfile(m)
                    assert data is not None and len(data.read()) > 0
        kept = {r["key"] for r in table if r["status"] == "ok"}
        assert set(members) == kept, f"{stem}: tar members differ from the ok parquet rows"
        for r in table:
            rows[r["row_index"]] = r
    return rows


def no_partial_files(folder: Path) -> list[str]:
    """Temporary or incomplete shard files left under the output folder."""
    stems = {p.name[: -len("_stats.json")] for p in folder.glob("*_stats.json")}
    bad = [p.name for p in folder.iterdir() if p.name.startswith(".") and "tmp" in p.name]
    for p in folder.glob("*.tar"):
        if p.stem not in stems:
            bad.append(p.name)
    return bad


def tar_bytes(path: Path) -> bytes:
    """All member bytes of a tar, for comparing two runs."""
    out = io.BytesIO()
    with tarfile.open(path) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            f = tar.extractfile(m)
            out.write(m.name.encode() + (f.read() if f else b""))
    return out.getvalue()
