"""Moving a staged extraction into place without following links, and the rule that no
placed symlink resolves outside the destination.

Each archive's own check (:func:`.safety.check_symlinks_resolve_inside`) sees only its
staging folder. Links of *several* archives placed into one destination can still combine
into an escape: ``A.tar`` places ``s1 -> s2/..`` and ``train -> s1`` (``s2`` is missing, so
both look harmless), ``B.tar`` places ``s2 -> .``, and now ``train`` is the data root. So
once an archive is placed, every symlink it placed — and every symlink placed earlier into
the same destination, listed in ``.acquired/links.json`` — is resolved again against the
real tree, and the placement is undone if one:

* leaves the destination at any step of its resolution, or
* goes *through* a missing component (``s2/..`` with no ``s2``): the kernel would refuse it
  today, but whatever is placed at ``s2`` later would decide where it leads.

A link whose *last* component is missing is allowed (a dangling link, as some datasets
ship): whatever is placed there later is itself checked before it stays.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from acquired.common import safepath

from .errors import LinkEscape

MAX_HOPS = 40


def link_problem(root: str, link: str) -> str | None:
    """Why the symlink at ``link`` (absolute, below ``root``) is not safe once placed, or
    ``None`` when it resolves inside ``root`` through existing components only (its last
    component may be missing)."""
    real_root = os.path.realpath(root)
    current = os.path.realpath(os.path.dirname(link))
    if not _inside(real_root, current):
        return f"lies in {current}, outside the destination"
    try:
        pending = _split(os.readlink(link))
        if os.readlink(link).startswith("/"):
            current = "/"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    hops = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            current = os.path.dirname(current)
        else:
            nxt = os.path.join(current, part)
            try:
                mode = os.lstat(nxt).st_mode
            except FileNotFoundError:
                if pending:
                    return (
                        f"goes through {os.path.relpath(nxt, real_root)!r}, which does not "
                        "exist: what is put there later would decide where it leads"
                    )
                current = nxt
                break
            except OSError as exc:
                return f"cannot be resolved ({exc.strerror})"
            if stat.S_ISLNK(mode):
                hops += 1
                if hops > MAX_HOPS:
                    return "is a loop of links"
                target = os.readlink(nxt)
                pending = _split(target) + pending
                if target.startswith("/"):
                    current = "/"
                continue
            current = nxt
        if not _inside(real_root, current):
            return f"leads to {current}, outside the destination"
    return None


def _split(target: str) -> list[str]:
    return [p for p in target.split("/") if p not in ("", ".")]


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@contextlib.contextmanager
def _locked(path: Path, anchor: Path | None) -> Iterator[None]:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    if anchor is not None:
        fd = safepath.open_beneath(anchor, safepath.relative_to(anchor, path), flags, 0o644)
    else:
        fd = os.open(path, flags, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_links(root: Path, meta: Path, placed: Iterable[str], anchor: Path | None = None) -> None:
    """Check the links just placed (paths relative to ``root``) and every link placed
    earlier into ``root`` (the index ``meta/links.json``); raise :class:`LinkEscape` for the
    first that is not safe, else add the new ones to the index. ``anchor``: a trusted
    folder above ``meta``; the index is then written without following links."""
    new = list(placed)
    index = meta / "links.json"
    with _locked(meta / "links.lock", anchor):
        try:
            known = [str(x) for x in json.loads(index.read_text("utf-8"))]
        except (OSError, ValueError, TypeError):
            known = []
        if not new and not known:
            return
        for rel in dict.fromkeys([*new, *known]):
            path = root / rel
            if not path.is_symlink():
                continue
            why = link_problem(str(root), str(path))
            if why is not None:
                raise LinkEscape(
                    f"{rel!r} (-> {os.readlink(path)!r}) {why}; the archive's files were not "
                    "placed",
                    member=rel,
                    target=os.readlink(path),
                    reason=why,
                )
        alive = [rel for rel in dict.fromkeys([*known, *new]) if (root / rel).is_symlink()]
        data = json.dumps(alive).encode()
        if anchor is not None:
            safepath.write_beneath(anchor, safepath.relative_to(anchor, index), data)
        else:
            tmp = index.with_name(f".links.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, index)


def same_folder(fd: int, root: Path, rel: str) -> None:
    """Refuse (``PathEscapes``) when ``root/rel`` is no longer the folder ``fd`` was opened
    on: it was swapped for a link or moved away since."""
    now = safepath.open_dir_beneath(root, rel)
    try:
        a, b = os.fstat(now), os.fstat(fd)
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            raise safepath.PathEscapes(
                f"{root / rel} was replaced while the archive was being extracted; nothing "
                "was placed",
                path=str(root / rel),
            )
    finally:
        os.close(now)


def move_into_place(staging_fd: int, target_fd: int, rels: Iterable[str]) -> None:
    """Rename each ``staging/rel`` to ``target/rel``; the folders on the way are resolved
    without following links on both sides, once per folder (a merge moves many entries
    into the same one). An ``OSError`` names the ``rel`` that failed as its filename."""
    folders: dict[str, tuple[int, int]] = {}
    try:
        for rel in rels:
            parent, _, name = rel.rpartition("/")
            try:
                if parent not in folders:
                    src = safepath.open_dir_beneath(staging_fd, parent)
                    try:
                        dst = safepath.open_dir_beneath(target_fd, parent)
                    except BaseException:
                        os.close(src)
                        raise
                    folders[parent] = (src, dst)
                src, dst = folders[parent]
                os.replace(name, name, src_dir_fd=src, dst_dir_fd=dst)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, rel) from None
    finally:
        for src, dst in folders.values():
            os.close(src)
            os.close(dst)


def remove_beneath(root_fd: int, rel: str) -> None:
    """Remove ``root/rel`` (a folder with its content) without following any link."""
    parts = safepath.parts_of(rel)
    if not parts:
        return
    try:
        parent = safepath.open_dir_beneath(root_fd, "/".join(parts[:-1]))
    except (FileNotFoundError, safepath.UnsafePath):
        return
    try:
        mode = os.lstat(parts[-1], dir_fd=parent).st_mode
        if stat.S_ISDIR(mode):
            shutil.rmtree(parts[-1], dir_fd=parent)
        else:
            os.unlink(parts[-1], dir_fd=parent)
    except FileNotFoundError:
        pass
    finally:
        os.close(parent)
