"""A URL-list corpus served by ``ImageServer``: good images of mixed sizes and formats,
small and elongated ones, planted exact and near duplicates, broken bodies, a bomb, and
URLs that fail in every way the fetcher knows. Each row says what it should become."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from support.image_server import ImageServer, Route
from support.images import encode, picture, png_bomb

MAX_BYTES = 400_000


@dataclass
class CorpusRow:
    """One input row and what should become of it."""

    url: str
    caption: str
    expect: str | None
    """Failure class, or ``None`` for ok; ``"dup"`` for one of a duplicate pair."""
    attempts: int | None = None


@dataclass
class Corpus:
    """The rows in input order and the planted duplicate pairs (row indices)."""

    rows: list[CorpusRow] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    flaky_paths: list[str] = field(default_factory=list)
    rearm_routes: list[tuple[str, int, dict[str, str], bytes]] = field(default_factory=list)

    def rearm(self, server: ImageServer) -> None:
        """Make the once-failing URLs fail once again (for the next run on this server)."""
        for path, status, headers, then in self.rearm_routes:
            server.status(path, status, headers, times=1, then=then)

    def add(self, url: str, expect: str | None, attempts: int | None = None) -> int:
        """Append a row; returns its index."""
        self.rows.append(CorpusRow(url, f"caption {len(self.rows)}", expect, attempts))
        return len(self.rows) - 1


def build(
    server: ImageServer, good: int = 150, seed: int = 0, slow: bool = True, prefix: str = ""
) -> Corpus:
    """Register the corpus on ``server`` and return its rows (shuffled, pairs recorded).
    ``slow=False`` leaves out the URLs that stall or drip (each costs the fetch timeout)."""
    rng = random.Random(seed)
    entries: list[tuple[str, str | None, int | None, int | None]] = []  # url, expect, tries, pair
    pair_id = 0

    def image(i: int) -> bytes:
        width = rng.randrange(120, 420)
        height = max(110, int(width * rng.uniform(0.6, 1.6)))
        pic = picture(1000 + i, width, height)
        if i % 3 == 0:
            return encode(pic, "PNG")
        return encode(pic, "JPEG", quality=rng.randrange(70, 95))

    for i in range(good):
        entries.append((server.add(prefix + f"/img/{i}", image(i)), None, None, None))
    for i in range(8):
        small = encode(picture(2000 + i, rng.randrange(20, 99), 150), "JPEG")
        entries.append((server.add(prefix + f"/small/{i}", small), "filtered_small", None, None))
    for i in range(6):
        wide = encode(picture(3000 + i, 900, 120), "JPEG")
        entries.append((server.add(prefix + f"/wide/{i}", wide), "filtered_aspect", None, None))
    for i in range(6):  # near duplicates: another quality, or a few pixels smaller
        base = picture(4000 + i, 360, 280)
        a = encode(base, "JPEG", quality=90)
        if i % 2:
            b = encode(base, "JPEG", quality=45)
        else:
            b = encode(base.resize((356, 277)), "JPEG", quality=88)
        entries.append((server.add(prefix + f"/near/{i}/a", a), "dup", None, pair_id))
        entries.append((server.add(prefix + f"/near/{i}/b", b), "dup", None, pair_id))
        pair_id += 1
    for i in range(6):  # exact duplicates at another URL
        body = encode(picture(5000 + i, 300, 200), "JPEG", quality=80)
        entries.append((server.add(prefix + f"/same/{i}/a", body), "dup", None, pair_id))
        entries.append((server.add(prefix + f"/same/{i}/b", body), "dup", None, pair_id))
        pair_id += 1
    good_jpeg = encode(picture(6000, 300, 300), "JPEG")
    entries += [
        (server.add(prefix + "/html", b"<html>hello</html>", "text/html"), "not_image", None, None),
        (server.add(prefix + "/truncated", good_jpeg[: len(good_jpeg) // 2]), "decode", None, None),
        (server.add(prefix + "/bomb", png_bomb(), "image/png"), "too_large", None, None),
        (
            server.add(prefix + "/big", b"\xff\xd8" + b"x" * (MAX_BYTES + 10)),
            "too_large",
            None,
            None,
        ),
        (server.url(prefix + "/missing/1"), "http_4xx", None, None),
        (server.url(prefix + "/missing/2"), "http_4xx", None, None),
        (
            server.route(prefix + "/reset", Route(body=good_jpeg, reset_after=200)),
            "connect",
            2,
            None,
        ),
        (server.redirect(prefix + "/evil", "file:///etc/passwd"), "http_4xx", None, None),
        (server.redirect(prefix + "/moved", server.url(prefix + "/img/1")), "dup", None, None),
        (server.url(prefix + "/busy"), None, 2, None),
        (server.url(prefix + "/flaky"), None, 2, None),
        (server.status(prefix + "/gone", 500), "http_5xx", 2, None),
    ]
    if slow:
        entries += [
            (server.route(prefix + "/stall", Route(stall=True)), "timeout", 2, None),
            (server.route(prefix + "/drip", Route(body=good_jpeg, rate=1000)), "timeout", 2, None),
        ]
    order = list(range(len(entries)))
    rng.shuffle(order)
    corpus = Corpus(flaky_paths=["/busy", "/flaky", "/gone", "/reset", "/stall"])
    corpus.rearm_routes = [
        (prefix + "/busy", 429, {"Retry-After": "1"}, good_jpeg),
        (prefix + "/flaky", 503, {}, encode(picture(7000, 200, 200), "PNG")),
    ]
    corpus.rearm(server)
    where: dict[int, list[int]] = {}
    for index in order:
        url, expect, tries, pair = entries[index]
        row = corpus.add(url, expect, tries)
        if pair is not None:
            where.setdefault(pair, []).append(row)
    corpus.pairs = [(a, b) for a, b in where.values()]
    # The redirect lands on /img/1: it is an exact duplicate of that row.
    img1 = next(i for i, r in enumerate(corpus.rows) if r.url.endswith("/img/1"))
    moved = next(i for i, r in enumerate(corpus.rows) if r.url.endswith("/moved"))
    corpus.pairs.append((img1, moved))
    corpus.rows[img1].expect = "dup"
    return corpus
