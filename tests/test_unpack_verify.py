"""verify(): digests in one pass; checksum files shipped with datasets; matching completed
files of watched folders to expected files."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
from support.archives import payload

from acquired.unpack.errors import (
    ChecksumFileInvalid,
    DigestMismatch,
    ExtractCancelled,
    FileMissing,
    InvalidDigest,
    MemberMissing,
    UnsupportedAlgorithm,
)
from acquired.unpack.verify import (
    Candidate,
    hash_file,
    match_completed,
    parse_checksum_text,
    verify,
    verify_checksum_file,
)

DATA = payload(7, 3 * 1024 * 1024 + 17)  # not a multiple of the chunk size


def digests_of(data: bytes) -> dict[str, str]:
    return {a: hashlib.new(a, data).hexdigest() for a in ("sha256", "sha1", "md5", "blake2b")}


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    p = tmp_path / "blob.bin"
    p.write_bytes(DATA)
    return p


def test_all_algorithms_in_one_pass_with_progress(blob: Path) -> None:
    calls: list[tuple[int, int]] = []
    expected = digests_of(DATA)
    got = verify(
        blob, {k: v.upper() for k, v in expected.items()}, lambda d, t: calls.append((d, t))
    )
    assert got == expected
    assert calls[0] == (0, len(DATA)) and calls[-1] == (len(DATA), len(DATA))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_small_chunks_give_the_same_digest(blob: Path) -> None:
    got = hash_file(blob, ["sha256", "md5"], chunk_size=4096)
    assert got["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert got["md5"] == hashlib.md5(DATA).hexdigest()


def test_empty_digests_give_sha256(blob: Path) -> None:
    assert verify(blob, {}) == {"sha256": hashlib.sha256(DATA).hexdigest()}


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    assert verify(p, {"md5": hashlib.md5(b"").hexdigest()})["md5"] == hashlib.md5(b"").hexdigest()


def test_mismatch_names_algorithm_expected_actual_path(blob: Path) -> None:
    good = digests_of(DATA)
    bad_md5 = "0" * 32
    with pytest.raises(DigestMismatch) as info:
        verify(blob, {"sha256": good["sha256"], "md5": bad_md5})
    err = info.value
    assert err.code == "verify.digest_mismatch" and err.retryable
    assert err.details["algorithm"] == "md5"
    assert err.details["expected"] == bad_md5
    assert err.details["actual"] == good["md5"]
    assert err.details["path"] == str(blob)
    assert [m["algorithm"] for m in err.details["mismatches"]] == ["md5"]  # type: ignore[union-attr]


def test_short_blake2b_as_b2sum_l256(blob: Path) -> None:
    short = hashlib.blake2b(DATA, digest_size=32).hexdigest()
    assert verify(blob, {"blake2b": short})["blake2b"] == short


def test_bad_inputs(blob: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedAlgorithm):
        verify(blob, {"crc32": "00000000"})
    with pytest.raises(InvalidDigest):
        verify(blob, {"sha256": "xyz"})
    with pytest.raises(InvalidDigest):
        verify(blob, {"sha256": "ab" * 10})
    with pytest.raises(FileMissing):
        verify(tmp_path / "nope", {"md5": "0" * 32})


def test_cancel(blob: Path) -> None:
    ev = threading.Event()
    ev.set()
    with pytest.raises(ExtractCancelled):
        verify(blob, {"md5": "0" * 32}, cancel=ev)


def test_threads_verify_files_in_parallel(tmp_path: Path) -> None:
    # hashlib releases the GIL: several verifications share the process safely.
    files = []
    for i in range(4):
        p = tmp_path / f"f{i}"
        data = payload(i, 1 << 20)
        p.write_bytes(data)
        files.append((p, hashlib.sha256(data).hexdigest()))
    results: dict[Path, str] = {}

    def work(p: Path, h: str) -> None:
        results[p] = verify(p, {"sha256": h})["sha256"]

    threads = [threading.Thread(target=work, args=f) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == dict(files)


# --- checksum files ---------------------------------------------------------------------


def test_parse_gnu_bsd_and_escapes() -> None:
    h = hashlib.sha256(b"x").hexdigest()
    m = hashlib.md5(b"x").hexdigest()
    text = (
        f"# comment\n\n{h}  a/b.txt\n{h} *bin.dat\r\n"
        f"\\{h}  back\\\\slash\\nnewline\n"
        f"MD5 (c d.txt) = {m}\n"
        f"SHA256 (./e.txt) = {h.upper()}\n"
        f"BLAKE2b-256 (f.txt) = {hashlib.blake2b(b'x', digest_size=32).hexdigest()}\n"
    )
    entries = parse_checksum_text(text, source="SHA256SUMS")
    assert [(e.name, e.algorithm) for e in entries] == [
        ("a/b.txt", "sha256"),
        ("bin.dat", "sha256"),
        ("back\\slash\nnewline", "sha256"),
        ("c d.txt", "md5"),
        ("e.txt", "sha256"),
        ("f.txt", "blake2b"),
    ]


def test_algorithm_from_name_or_length() -> None:
    m = hashlib.md5(b"x").hexdigest()
    assert parse_checksum_text(f"{m}  a\n", source="x/MD5SUMS")[0].algorithm == "md5"
    assert parse_checksum_text(f"{m}  a\n", source="list.txt")[0].algorithm == "md5"
    s512 = hashlib.sha512(b"x").hexdigest()
    assert parse_checksum_text(f"{s512}  a\n", source="SHA512SUMS")[0].algorithm == "sha512"
    with pytest.raises(ChecksumFileInvalid, match="sha512 or blake2b"):
        parse_checksum_text(f"{s512}  a\n", source="sums.txt")


def test_lone_digest_names_the_file_by_the_checksum_file() -> None:
    m = hashlib.md5(b"x").hexdigest()
    (entry,) = parse_checksum_text(f"{m}\n", source="/d/cifar-10-python.tar.gz.md5")
    assert entry.name == "cifar-10-python.tar.gz" and entry.algorithm == "md5"


@pytest.mark.parametrize(
    "line",
    ["not a checksum line", "0123  ../../etc/passwd", "{h}  /etc/passwd", "{h}  ../up"],
)
def test_bad_lines_name_file_and_line(line: str) -> None:
    h = hashlib.sha256(b"").hexdigest()
    with pytest.raises(ChecksumFileInvalid) as info:
        parse_checksum_text(f"{h}  fine\n" + line.format(h=h) + "\n", source="SHA256SUMS")
    assert info.value.details["line"] == 2
    assert "SHA256SUMS:2" in str(info.value)


def test_empty_checksum_file_is_invalid() -> None:
    with pytest.raises(ChecksumFileInvalid):
        parse_checksum_text("# nothing\n", source="SHA256SUMS")


def _dataset(root: Path) -> dict[str, bytes]:
    files = {f"d{i % 3}/f{i}.bin": payload(100 + i, 1000 + i * 517) for i in range(12)}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_checksum_file_checks_every_member(tmp_path: Path) -> None:
    files = _dataset(tmp_path)
    lines = [f"{hashlib.sha256(d).hexdigest()}  {n}" for n, d in files.items()]
    (tmp_path / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    seen: list[tuple[int, int]] = []
    report = verify_checksum_file(
        tmp_path / "SHA256SUMS", progress=lambda d, t: seen.append((d, t))
    )
    total = sum(len(d) for d in files.values())
    assert (report.files, report.bytes, report.algorithms) == (12, total, ("sha256",))
    assert seen[-1] == (total, total)


def test_checksum_file_mismatch_lists_failures(tmp_path: Path) -> None:
    files = _dataset(tmp_path)
    lines = [f"{hashlib.md5(d).hexdigest()}  {n}" for n, d in files.items()]
    (tmp_path / "MD5SUMS").write_text("\n".join(lines) + "\n")
    victim = sorted(files)[4]
    (tmp_path / victim).write_bytes(b"corrupted")
    with pytest.raises(DigestMismatch) as info:
        verify_checksum_file(tmp_path / "MD5SUMS", workers=3)
    d = info.value.details
    assert d["count"] == 1 and d["path"] == str(tmp_path / victim)
    assert d["actual"] == hashlib.md5(b"corrupted").hexdigest()


def test_checksum_file_missing_members(tmp_path: Path) -> None:
    files = _dataset(tmp_path)
    lines = [f"{hashlib.sha1(d).hexdigest()}  {n}" for n, d in files.items()]
    (tmp_path / "sums.sha1").write_text("\n".join(lines) + "\n")
    gone = sorted(files)[0]
    (tmp_path / gone).unlink()
    with pytest.raises(MemberMissing) as info:
        verify_checksum_file(tmp_path / "sums.sha1")
    assert info.value.details["missing"] == [gone]


def test_checksum_file_with_other_base(tmp_path: Path) -> None:
    data_dir = tmp_path / "extracted"
    files = _dataset(data_dir)
    lines = [f"{hashlib.sha256(d).hexdigest()}  {n}" for n, d in files.items()]
    (tmp_path / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    assert verify_checksum_file(tmp_path / "SHA256SUMS", data_dir).files == 12


# --- watched folders --------------------------------------------------------------------


def test_match_completed_by_name_size_digest(blob: Path) -> None:
    d = digests_of(DATA)
    wrong_size = Candidate("job/1", "blob.bin", len(DATA) + 1, {"sha256": d["sha256"]})
    other_name = Candidate("job/2", "other.bin", len(DATA), {"sha256": d["sha256"]})
    other_job = Candidate("old/1", "blob.bin", len(DATA), {"md5": "0" * 32})
    right = Candidate("job/3", "blob.bin", len(DATA), {"sha256": d["sha256"], "md5": d["md5"]})
    assert match_completed(blob, [wrong_size, other_name, other_job, right]) == right
    assert match_completed(blob, [wrong_size, other_name]) is None


def test_match_completed_wrong_digest_is_an_error(blob: Path) -> None:
    c = Candidate("job/1", "blob.bin", None, {"sha256": "0" * 64})
    with pytest.raises(DigestMismatch) as info:
        match_completed(blob, [c])
    assert info.value.details["candidate"] == "job/1"


def test_match_completed_without_digest_trusts_name_and_size(blob: Path) -> None:
    c = Candidate("job/1", "blob.bin", len(DATA))
    assert match_completed(blob, [c]) == c
