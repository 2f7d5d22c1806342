"""The rules every extracted entry obeys, as pure functions, and the size limits.

Rules (tar and zip alike):

* names are relative: no leading ``/``, no ``..`` component, no NUL; ``./`` and ``//``
  are normalised away (:func:`check_name`);
* nothing is written *through* a symlink made by the same archive (the extractor keeps the
  set of symlinks it made and refuses a member below one), so every file, folder and link
  is created exactly at ``root/name``;
* links (symlink and hardlink) go through :func:`tarfile.data_filter` — the standard
  library's filter — which refuses absolute targets and targets that resolve outside the
  root; zip symlinks are turned into a ``TarInfo`` and go through the same filter. After
  extraction every symlink made is resolved again against the finished tree (a chain such
  as ``a -> x/..`` then ``x -> .`` only escapes once both exist);
* device nodes, FIFOs and sockets are refused;
* modes follow the data filter: setuid/setgid/sticky and group/other write bits cleared,
  owner read/write added for files, executable bits kept only if the owner had one;
  folders get the default mode; the daemon's umask applies on top;
* owners are never restored.

For regular files and folders :func:`filtered_file_mode` computes what
:func:`tarfile.data_filter` would without its per-member ``realpath`` calls (which cost
~60 us a member, a minute and a half of CPU on ImageNet's 1.28 million files): given the
rules above, the path of such a member cannot resolve anywhere but ``root/name``. The
tests check the two agree.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass

from .errors import DiskFull, LinkEscape, PathTraversal, SpecialFile, TooLarge, TooManyEntries


@dataclass(frozen=True)
class Limits:
    """How much one extraction may write (nested archives included).

    Bytes: ``max_bytes`` of file data at most, and at most ``max_ratio`` times the
    archive's size once past ``ratio_floor`` bytes (a 1 KB archive of a 1 MB file of zeros
    is no threat). The ratio is also checked *as the archive is read*: once past
    ``ratio_floor``, output more than ``max_ratio`` times the compressed bytes read so far
    stops the extraction there (a bomb is refused after ``ratio_floor`` bytes, not after
    its whole budget). Output that would eat into ``reserve`` is a full disk.
    Entries (files, folders, links): ``max_entries`` at most, and at most
    one per ``min_bytes_per_entry`` bytes of archive once past ``entries_floor`` — a tar
    spends at least 512 bytes on each entry, a compressed one seldom less than a few dozen,
    but a million empty files compress to about a megabyte. ImageNet's train archive
    (1.28 million files, 147 GB) is far inside both. ``None`` disables a limit.
    """

    max_bytes: int | None = 4 << 40
    max_ratio: float | None = 200.0
    ratio_floor: int = 1 << 30
    max_entries: int | None = 20_000_000
    min_bytes_per_entry: int | None = 32
    entries_floor: int = 100_000
    reserve: int = 0
    """Bytes to keep free on the target's filesystem (the daemon's ``disk_reserve``)."""
    room: int | None = None
    """Bytes that may be written before free space falls to ``reserve``; measured when the
    extraction starts (``None``: not measured)."""

    def allowed_bytes(self, archive_size: int) -> int | None:
        """The byte budget for an archive of ``archive_size`` bytes (``None``: unlimited)."""
        caps: list[int] = []
        if self.max_bytes is not None:
            caps.append(self.max_bytes)
        if self.max_ratio is not None:
            caps.append(max(self.ratio_floor, int(self.max_ratio * max(archive_size, 1))))
        return min(caps) if caps else None

    def allowed_entries(self, archive_size: int) -> int | None:
        """The entry budget for an archive of ``archive_size`` bytes (``None``: unlimited)."""
        caps: list[int] = []
        if self.max_entries is not None:
            caps.append(self.max_entries)
        if self.min_bytes_per_entry:
            caps.append(max(self.entries_floor, archive_size // self.min_bytes_per_entry))
        return min(caps) if caps else None


def check_entries(count: int, allowed: int | None, name: str) -> None:
    """Raise :class:`TooManyEntries` when ``count`` entries exceed ``allowed``."""
    if allowed is not None and count > allowed:
        raise TooManyEntries(f"{name}: more than {allowed} entries", limit=allowed, archive=name)


def check_bytes(total: int, allowed: int | None, limits: Limits, name: str) -> None:
    """Raise :class:`TooLarge` when ``total`` bytes exceed ``allowed``."""
    if allowed is not None and total > allowed:
        by_ratio = limits.max_bytes is None or allowed < limits.max_bytes
        raise TooLarge(
            f"{name}: expands to more than {allowed} bytes"
            + (f" ({limits.max_ratio:g} times the archive)" if by_ratio else ""),
            limit=allowed,
            kind="ratio" if by_ratio else "absolute",
            archive=name,
        )


def check_stream_ratio(written: int, consumed: int, limits: Limits, name: str) -> None:
    """Raise :class:`TooLarge` when ``written`` bytes of output from ``consumed`` bytes of
    archive read so far exceed ``max_ratio`` (past ``ratio_floor``)."""
    if limits.max_ratio is None or written <= limits.ratio_floor:
        return
    if written > limits.max_ratio * max(consumed, 1):
        raise TooLarge(
            f"{name}: {written} bytes from the first {consumed} bytes of the archive — more "
            f"than {limits.max_ratio:g} times; stopped early",
            limit=int(limits.max_ratio * max(consumed, 1)),
            kind="ratio",
            archive=name,
            written=written,
            consumed=consumed,
        )


def check_room(total: int, limits: Limits, name: str) -> None:
    """Raise :class:`DiskFull` when ``total`` bytes would eat into the disk reserve."""
    if limits.room is not None and total > limits.room:
        raise DiskFull(
            f"{name}: extracting more than {limits.room} bytes would fall below the disk "
            f"reserve ({limits.reserve} bytes)",
            limit=limits.room,
            reserve=limits.reserve,
            archive=name,
        )


def check_name(name: str) -> str:
    """The normalised relative path of a member name; raises :class:`PathTraversal`.

    ``""`` stands for the root itself (a member named ``./``).
    """
    if "\x00" in name:
        raise PathTraversal(f"{name!r}: NUL in a member name", member=name, kind="nul")
    if name.startswith("/"):
        raise PathTraversal(f"{name!r}: absolute path", member=name, kind="absolute")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathTraversal(f"{name!r}: '..' in a member name", member=name, kind="dotdot")
    return "/".join(parts)


def check_link_name(member: str, linkname: str) -> str:
    """A hardlink's target (a member name); raises :class:`LinkEscape` for an absolute
    target or one with ``..``."""
    try:
        return check_name(linkname)
    except PathTraversal:
        raise LinkEscape(
            f"{member!r}: hard link to {linkname!r} leaves the archive's folder",
            member=member,
            target=linkname,
        ) from None


def filtered_file_mode(mode: int) -> int:
    """The mode :func:`tarfile.data_filter` gives a regular file of mode ``mode``."""
    mode &= 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


def filter_link(member: tarfile.TarInfo, root: str) -> tarfile.TarInfo:
    """Run :func:`tarfile.data_filter` on a link member, mapping its refusals to our
    errors: :class:`LinkEscape` for link targets, :class:`PathTraversal` for names."""
    try:
        return tarfile.data_filter(member, root)
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError) as exc:
        raise LinkEscape(
            f"{member.name!r}: link to {member.linkname!r} points outside the archive's folder",
            member=member.name,
            target=member.linkname,
            reason=str(exc),
        ) from None
    except (tarfile.AbsolutePathError, tarfile.OutsideDestinationError) as exc:
        raise PathTraversal(f"{member.name!r}: {exc}", member=member.name, kind="outside") from None
    except tarfile.SpecialFileError:
        raise SpecialFile(f"{member.name!r}: special file", member=member.name) from None


def special_file(name: str, kind: str) -> SpecialFile:
    """The error for a device node, FIFO or socket member."""
    return SpecialFile(f"{name!r}: {kind} — datasets hold no special files", member=name, kind=kind)


def inside(root: str, path: str) -> bool:
    """Whether ``path`` (absolute, resolved) is ``root`` or below it."""
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:
        return False


def check_symlinks_resolve_inside(root: str, links: list[str]) -> None:
    """Resolve every symlink made (absolute paths) against the finished tree; raise
    :class:`LinkEscape` for the first one that leads outside ``root``."""
    real_root = os.path.realpath(root)
    for link in links:
        if not os.path.islink(link):
            continue
        resolved = os.path.realpath(link)
        if not inside(real_root, resolved):
            rel = os.path.relpath(link, root)
            raise LinkEscape(
                f"{rel!r} resolves to {resolved}, outside the archive's folder",
                member=rel,
                target=os.readlink(link),
            )
