"""``acquirectl add``: a manifest, or what aria2c and Transmission users type instead.

    acquirectl add cifar10.toml                     # a manifest, as if dropped in the inbox
    acquirectl add https://a/x.tar.gz https://b/x.tar.gz --sha256 HEX --unpack
    acquirectl add 'magnet:?xt=urn:btih:...&dn=x.tar'
    acquirectl add 5d6d0df7ed81efd49ca99ea4737e0ae5e3a5f2e5 --path val.tar
    acquirectl add ./x.torrent --dest imagenet

Several URLs are mirrors of one file; a URL and a torrent together are one file with
both sources. The manifest built from them (TOML) is what the daemon receives: it keeps
it in its state folder like any other, and ``--print`` shows it without submitting.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from acquired.common.redact import redact_url
from acquired.daemon.errors import DaemonError
from acquired.daemon.manifest import ARCHIVE_SUFFIXES

_HEX = re.compile(r"^(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$")
_AT_PAGE = re.compile(r"academictorrents\.com/details/([0-9a-fA-F]{40,64})", re.IGNORECASE)
_NAME_BAD = re.compile(r"[^A-Za-z0-9._-]+")


class BadAddArgument(DaemonError):
    """An ``add`` argument that is none of the accepted kinds, or options that clash."""

    code = "cli.bad_add"
    hint = (
        "Give a manifest file, one or more http(s) URLs (mirrors of one file), a magnet "
        "link, an Academic Torrents infohash or a .torrent file (`acquirectl add --help`)."
    )


@dataclass
class Sources:
    """What the positional arguments of ``add`` name."""

    manifest: Path | None = None
    mirrors: list[str] = field(default_factory=list)
    torrent: dict[str, str] | None = None
    torrent_files: list[tuple[str, int]] = field(default_factory=list)
    torrent_name: str | None = None


def classify(args: list[str]) -> Sources:
    """Sort ``args`` into a manifest, mirrors and at most one torrent."""
    found = Sources()
    for arg in args:
        lower = arg.lower()
        if lower.startswith("magnet:"):
            _set_torrent(found, {"magnet": arg}, arg)
            dn = parse_qs(urlsplit(arg).query).get("dn")
            found.torrent_name = dn[0] if dn else None
        elif (m := _AT_PAGE.search(arg)) or _HEX.match(arg):
            _set_torrent(found, {"academic_torrents": m.group(1) if m else arg.lower()}, arg)
        elif lower.startswith(("http://", "https://")):
            if urlsplit(arg).path.lower().endswith(".torrent"):
                _set_torrent(found, {"url": arg}, arg)
            else:
                found.mirrors.append(arg)
        elif "://" in arg:
            raise BadAddArgument(f"{redact_url(arg)}: only http and https URLs can be fetched")
        else:
            path = Path(arg).expanduser()
            if not path.is_file():
                raise BadAddArgument(f"{arg}: no such file, and not a URL, magnet or infohash")
            if _is_torrent(path):
                _set_torrent(found, {"path": str(path.absolute())}, arg)
                found.torrent_files, found.torrent_name = _torrent_contents(path)
            else:
                if found.manifest is not None or len(args) > 1:
                    raise BadAddArgument(
                        f"{arg}: a manifest is submitted on its own, without URLs or torrents"
                    )
                found.manifest = path
    return found


def _set_torrent(found: Sources, spec: dict[str, str], arg: str) -> None:
    if found.torrent is not None:
        raise BadAddArgument(f"{redact_url(arg)}: give at most one torrent per file")
    found.torrent = spec


def _is_torrent(path: Path) -> bool:
    if path.suffix.lower() == ".torrent":
        return True
    with path.open("rb") as f:
        head = f.read(11)
    return head.startswith((b"d8:announce", b"d4:info", b"d13:announce-list"))


def _torrent_contents(path: Path) -> tuple[list[tuple[str, int]], str]:
    """(path in torrent, size) of each file, and the torrent's name."""
    from acquired.sources.torrent.errors import InvalidTorrent
    from acquired.sources.torrent.resolve import _parse, torrent_files

    try:
        info = _parse(path.read_bytes(), str(path))
    except InvalidTorrent as exc:
        raise BadAddArgument(str(exc), path=str(path)) from None
    return [(name, size) for _, name, size in torrent_files(info)], str(info.name())


def _file_name(found: Sources) -> str | None:
    for url in found.mirrors:
        name = PurePosixPath(unquote(urlsplit(url).path)).name
        if name:
            return name
    return found.torrent_name


def job_name(text: str) -> str:
    """A job id from a file name: its stem without archive suffixes, made safe."""
    base = PurePosixPath(text).name
    for suffix, _ in ARCHIVE_SUFFIXES:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
            break
    else:
        base = base.rsplit(".", 1)[0] if "." in base[1:] else base
    name = _NAME_BAD.sub("-", base).strip("-._")[:128]
    return name or "download"


def build_manifest(found: Sources, options: argparse.Namespace) -> dict[str, Any]:
    """The manifest (as a dict) for URLs and/or a torrent with ``add``'s options."""
    files: list[dict[str, Any]] = []
    torrent = dict(found.torrent or {})
    if found.torrent_files and not found.mirrors and not options.path:
        # a .torrent file: every file it holds, under the names it gives them
        for name, size in found.torrent_files:
            files.append({"path": name, "size": size, "torrent": {**torrent, "file": name}})
    else:
        path = options.path or _file_name(found)
        if not path:
            raise BadAddArgument(
                "cannot tell the file's name from an infohash: give --path NAME "
                "(the file inside the torrent)"
            )
        entry: dict[str, Any] = {"path": path}
        if found.torrent_files:
            sizes = dict(found.torrent_files)
            if path in sizes:
                entry["size"] = sizes[path]
        if found.mirrors:
            entry["mirrors"] = found.mirrors
        if torrent:
            entry["torrent"] = torrent
        files.append(entry)
    if (options.sha256 or options.md5) and len(files) > 1:
        raise BadAddArgument("--sha256/--md5 name one file; this torrent holds several")
    for entry in files:
        if options.sha256:
            entry["sha256"] = options.sha256.lower()
        if options.md5:
            entry["md5"] = options.md5.lower()
        if options.unpack:
            entry["unpack"] = [{"format": options.unpack, "into": "."}]
    name = options.name or job_name(found.torrent_name or files[0]["path"])
    return {
        "manifest_version": 1,
        "name": name,
        "destination": options.dest or name,
        "files": files,
    }


def _toml(value: Any) -> str:
    # JSON strings, numbers and arrays are valid TOML values
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def manifest_toml(manifest: dict[str, Any]) -> str:
    """The manifest as TOML, the way a person would write it."""
    lines = [
        "# written by acquirectl add",
        f"manifest_version = {manifest['manifest_version']}",
        f"name = {_toml(manifest['name'])}",
        f"destination = {_toml(manifest['destination'])}",
    ]
    for entry in manifest["files"]:
        lines += ["", "[[files]]"]
        for key, value in entry.items():
            if key == "mirrors":
                lines.append(f"sources.mirrors = {_toml(value)}")
            elif key == "torrent":
                lines.append(f"sources.torrent = {_toml(value)}")
            else:
                lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def cmd_add(args: argparse.Namespace) -> int:
    """Submit a manifest, or one built from URLs, a magnet, an infohash or a .torrent."""
    from acquired.daemon.cli import call

    found = classify(args.sources)
    if found.manifest is not None:
        if args.print or _builder_options(args):
            raise BadAddArgument(
                "--dest, --path, --name, --sha256, --md5, --unpack and --print build a "
                "manifest from URLs or a torrent; a manifest file is submitted as it is"
            )
        try:
            text = found.manifest.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise BadAddArgument(
                f"{found.manifest} is neither a manifest (TOML or JSON text) nor a .torrent file"
            ) from None
        except OSError as exc:
            raise BadAddArgument(f"cannot read {found.manifest}: {exc.strerror}") from None
        name = found.manifest.name
    else:
        manifest = build_manifest(found, args)
        text = manifest_toml(manifest)
        if args.print:
            sys.stdout.write(text)
            return 0
        name = f"{manifest['name']}.toml"
    result = call(args, {"cmd": "add", "name": name, "text": text, "replace": args.replace})
    print(f"{result['job']}: {result['message']}")
    if result.get("created"):
        job = call(args, {"cmd": "show", "job": result["job"]})
        print(f"  manifest kept as {job.get('manifest')}; data goes to {job.get('destination')}")
    return 0


def _builder_options(args: argparse.Namespace) -> bool:
    return any(getattr(args, k) for k in ("dest", "path", "name", "sha256", "md5", "unpack"))


def register(subparsers: Any) -> None:
    """Add ``add`` to acquirectl's parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "add",
        help="submit a manifest, URLs (mirrors of one file), a magnet, an infohash or a .torrent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="manifest, URL, magnet, ...")
    p.add_argument("--replace", action="store_true", help="replace an active job of that name")
    p.add_argument("--dest", help="folder under the data root (default: the job's name)")
    p.add_argument("--path", help="the file's name in the destination (default: from the URL)")
    p.add_argument("--name", help="the job's name (default: from the file's name)")
    p.add_argument("--sha256", help="the file's SHA-256, checked after the download")
    p.add_argument("--md5", help="the file's MD5, checked after the download")
    p.add_argument(
        "--unpack",
        nargs="?",
        const="auto",
        metavar="FORMAT",
        help="extract the file into the destination once verified (format: auto by default)",
    )
    p.add_argument(
        "--print", action="store_true", help="print the manifest it would submit, and stop"
    )
    p.set_defaults(func=cmd_add)
