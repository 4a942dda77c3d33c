"""``polypseg data download``: a local HTTP server stands in for datasets.simula.no."""

from __future__ import annotations

import hashlib
import io
import stat
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polypseg.apps.cli import main
from polypseg.apps.download import download_kvasir_seg, safe_extract
from polypseg.data import find_pairs
from polypseg.errors import InputError

NAMES = ("cju0a", "cju0b", "cju0c")


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(top: str = "Kvasir-SEG/", extra: dict[str, bytes] | None = None, bboxes: bool = True) -> bytes:
    """A Kvasir-SEG-like archive: ``TOP images/*.jpg``, ``TOP masks/*.jpg`` (tiny), ``TOP kavsir_bboxes.json``."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in NAMES:
            image = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
            mask = np.zeros((12, 16), dtype=np.uint8)
            mask[3:9, 4:12] = 255
            archive.writestr(f"{top}images/{name}.jpg", _png(image))
            archive.writestr(f"{top}masks/{name}.jpg", _png(mask))
        if bboxes:
            archive.writestr(f"{top}kavsir_bboxes.json", "{}")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


class ArchiveServer:
    """Serves ``self.data`` at ``/kvasir-seg.zip``; honours ``Range`` unless ``ranges`` is false."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ranges = True
        self.cut_after: int | None = None  # send only this many bytes (a dropped connection)
        self.requests: list[dict[str, object]] = []
        server_state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                server_state.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/kvasir-seg.zip"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.path != "/kvasir-seg.zip":
            handler.send_error(404)
            return
        requested = handler.headers.get("Range")
        start = int(requested.removeprefix("bytes=").rstrip("-")) if requested and self.ranges else 0
        if start >= len(self.data) and requested and self.ranges:
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(self.data)}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            self.requests.append({"range": requested, "status": 416, "sent": 0})
            return
        body = self.data[start:]
        status = 206 if start else 200
        handler.send_response(status)
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        sent = body if self.cut_after is None else body[: self.cut_after]
        handler.wfile.write(sent)
        handler.close_connection = True
        self.requests.append({"range": requested, "status": status, "sent": len(sent)})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def archive_server():
    server = ArchiveServer(make_zip())
    yield server
    server.close()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _leftovers(dest: Path) -> list[str]:
    return sorted(path.name for path in dest.iterdir() if path.name != "kvasir-seg")


def test_download_verifies_and_unpacks(archive_server, tmp_path):
    dest = tmp_path / "datasets"
    result = download_kvasir_seg(dest, url=archive_server.url, sha256=_sha256(archive_server.data), progress=False)
    assert result.path == dest / "kvasir-seg" and result.pairs == 3 and result.verified
    assert [sample.name for sample in find_pairs(dest / "kvasir-seg")] == list(NAMES)
    assert (dest / "kvasir-seg" / "kavsir_bboxes.json").exists()
    assert _leftovers(dest) == []  # no part file, no staging folder


def test_wrong_checksum_extracts_nothing(archive_server, tmp_path):
    dest = tmp_path / "datasets"
    with pytest.raises(ValueError, match="SHA-256 mismatch.*download was deleted"):
        download_kvasir_seg(dest, url=archive_server.url, sha256="0" * 64, progress=False)
    assert list(dest.iterdir()) == []


def test_interrupted_download_resumes_with_range(archive_server, tmp_path):
    dest = tmp_path / "datasets"
    half = len(archive_server.data) // 2
    archive_server.cut_after = half
    with pytest.raises(OSError, match="incomplete .* run again to resume"):
        download_kvasir_seg(dest, url=archive_server.url, progress=False)
    assert (dest / ".kvasir-seg.zip.part").stat().st_size == half
    archive_server.cut_after = None
    result = download_kvasir_seg(dest, url=archive_server.url, sha256=_sha256(archive_server.data), progress=False)
    assert result.pairs == 3
    assert archive_server.requests[-1] == {
        "range": f"bytes={half}-",
        "status": 206,
        "sent": len(archive_server.data) - half,
    }


def test_server_without_range_support_restarts(archive_server, tmp_path):
    dest = tmp_path / "datasets"
    dest.mkdir()
    (dest / ".kvasir-seg.zip.part").write_bytes(archive_server.data[:100])
    archive_server.ranges = False
    result = download_kvasir_seg(dest, url=archive_server.url, sha256=_sha256(archive_server.data), progress=False)
    assert result.pairs == 3
    assert archive_server.requests == [{"range": "bytes=100-", "status": 200, "sent": len(archive_server.data)}]


def test_complete_part_file_is_not_downloaded_again(archive_server, tmp_path):
    dest = tmp_path / "datasets"
    dest.mkdir()
    (dest / ".kvasir-seg.zip.part").write_bytes(archive_server.data)
    assert download_kvasir_seg(dest, url=archive_server.url, progress=False).pairs == 3
    assert archive_server.requests == [{"range": f"bytes={len(archive_server.data)}-", "status": 416, "sent": 0}]


def test_corrupt_part_file_is_deleted_and_reported(archive_server, tmp_path):
    dest = tmp_path / "datasets"
    dest.mkdir()
    part = dest / ".kvasir-seg.zip.part"
    part.write_bytes(b"garbage from another file" * 10)
    with pytest.raises(ValueError, match="download was deleted"):
        download_kvasir_seg(dest, url=archive_server.url, sha256=_sha256(archive_server.data), progress=False)
    assert not part.exists() and not (dest / "kvasir-seg").exists()
    assert download_kvasir_seg(dest, url=archive_server.url, progress=False).pairs == 3  # the next run starts over


@pytest.mark.parametrize("top", ["Kvasir-SEG/", "", "kvasir-seg-v2/inner/"], ids=["official", "flat", "nested"])
def test_layout_is_normalised(tmp_path, top):
    server = ArchiveServer(make_zip(top=top, bboxes=False))
    try:
        result = download_kvasir_seg(tmp_path, url=server.url, progress=False)
    finally:
        server.close()
    assert result.path == tmp_path / "kvasir-seg"
    assert sorted(path.name for path in result.path.iterdir()) == ["images", "masks"]
    assert len(find_pairs(result.path)) == 3


def _symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("Kvasir-SEG/images/link.jpg")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    "member, problem",
    [
        ("../evil.txt", "'..' in its path"),
        ("Kvasir-SEG/../../evil.txt", "'..' in its path"),
        ("/tmp/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
        (None, "symbolic link"),
    ],
)
def test_unsafe_archive_is_refused_and_nothing_is_written(tmp_path, member, problem):
    data = io.BytesIO(make_zip())
    with zipfile.ZipFile(data, "a") as archive:
        if member is None:
            archive.writestr(_symlink_member(), "/etc/passwd")
        else:
            archive.writestr(member, "evil")
    server = ArchiveServer(data.getvalue())
    dest = tmp_path / "inner" / "datasets"
    try:
        with pytest.raises(ValueError, match=f"unsafe archive member .*{problem}.*nothing was extracted"):
            download_kvasir_seg(dest, url=server.url, progress=False)
    finally:
        server.close()
    assert list(dest.iterdir()) == []
    assert not list(tmp_path.rglob("evil*"))


def test_safe_extract_checks_before_writing(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("fine.txt", "ok")
        handle.writestr("sub/../../evil.txt", "evil")
    with pytest.raises(ValueError, match="evil.txt"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "fine.txt").exists()


def test_archive_without_images_and_masks(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("readme.txt", "no data here")
    server = ArchiveServer(buffer.getvalue())
    try:
        with pytest.raises(ValueError, match="no folder with images/ and masks/"):
            download_kvasir_seg(tmp_path, url=server.url, progress=False)
    finally:
        server.close()
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_needs_force(archive_server, tmp_path):
    (tmp_path / "kvasir-seg").mkdir()
    (tmp_path / "kvasir-seg" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="--force"):
        download_kvasir_seg(tmp_path, url=archive_server.url, progress=False)
    assert archive_server.requests == []  # refused before downloading anything
    result = download_kvasir_seg(tmp_path, url=archive_server.url, force=True, progress=False)
    assert result.pairs == 3 and not (result.path / "mine.txt").exists()
    assert _leftovers(tmp_path) == []


def test_cli_download(archive_server, tmp_path, capsys):
    dest = tmp_path / "datasets"
    args = ["data", "download", "kvasir-seg", "--dest", str(dest), "--url", archive_server.url]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"3 image/mask pairs in {dest / 'kvasir-seg'}" in out
    assert (
        f"not checksum-verified (pass --sha256 to verify); the archive's SHA-256 was {_sha256(archive_server.data)}"
        in out
    )
    assert "research and educational purposes only" in out and "10.1007/978-3-030-37734-2_37" in out

    assert main(args) == 2  # exists
    err = capsys.readouterr().err.strip()
    assert err.startswith("polypseg data: error:") and "--force" in err and len(err.splitlines()) == 1

    assert main([*args, "--force", "--sha256", _sha256(archive_server.data)]) == 0
    assert "not checksum-verified" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sha256", "1" * 64], "SHA-256 mismatch"),
        (["--sha256", "xyz"], "--sha256 must be 64 hexadecimal digits"),
        (["--url", "http://127.0.0.1:1/nothing.zip"], "http://127.0.0.1:1/nothing.zip: "),
    ],
)
def test_cli_download_errors_are_one_line(archive_server, tmp_path, capsys, extra, message):
    args = ["data", "download", "kvasir-seg", "--dest", str(tmp_path), "--url", archive_server.url, *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "kvasir-seg").exists()


def test_cli_download_404(archive_server, tmp_path, capsys):
    url = archive_server.url.replace("kvasir-seg.zip", "missing.zip")
    assert main(["data", "download", "kvasir-seg", "--dest", str(tmp_path), "--url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "404" in err


# --- zip bombs and what killed runs leave behind ------------------------------------------------------


def test_zip_bomb_is_refused_from_the_directory(tmp_path):
    data = io.BytesIO(make_zip())
    with zipfile.ZipFile(data, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("Kvasir-SEG/images/zeros.bin", b"\0" * (4 << 20))  # 4 MiB in ~4 KB: 1000:1
    server = ArchiveServer(data.getvalue())
    dest = tmp_path / "datasets"
    try:
        with pytest.raises(ValueError, match=r"zeros.bin.*compressed \d+:1.*zip bomb.*nothing was extracted"):
            download_kvasir_seg(dest, url=server.url, progress=False)
    finally:
        server.close()
    assert list(dest.iterdir()) == []


def test_total_unpacked_size_is_capped(archive_server, tmp_path, capsys):
    dest = tmp_path / "datasets"
    with pytest.raises(ValueError, match="more than the limit of 1,000 bytes.*nothing was extracted"):
        download_kvasir_seg(dest, url=archive_server.url, progress=False, max_extracted_bytes=1000)
    assert list(dest.iterdir()) == []
    args = ["data", "download", "kvasir-seg", "--dest", str(dest), "--url", archive_server.url]
    assert main([*args, "--max-size-gb", "0.000001"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "zip bomb" in err, err
    assert main(args) == 0  # the default limit is far above Kvasir-SEG's size


def test_stale_staging_folders_are_removed_by_the_next_run(archive_server, tmp_path):
    import os

    dest = tmp_path / "datasets"
    dead, legacy, alive = (
        dest / ".kvasir-seg.extract-999999999-abc",
        dest / ".kvasir-seg.extract-xyz",
        dest / f".kvasir-seg.extract-{os.getppid()}-def",
    )
    for folder in (dead, legacy, alive):
        (folder / "Kvasir-SEG" / "images").mkdir(parents=True)
        (folder / "Kvasir-SEG" / "images" / "half.jpg").write_bytes(b"\xff\xd8")
    result = download_kvasir_seg(dest, url=archive_server.url, progress=False)
    assert result.pairs == 3
    assert not dead.exists() and not legacy.exists() and alive.exists()  # a running process keeps its folder

    # Killed between moving the old dataset aside and renaming the new one in: the old one comes back.
    (dest / "kvasir-seg").rename(dest / ".kvasir-seg.old-999999999")
    with pytest.raises(FileExistsError, match="--force"):
        download_kvasir_seg(dest, url=archive_server.url, progress=False)
    assert len(find_pairs(dest / "kvasir-seg")) == 3
    assert not (dest / ".kvasir-seg.old-999999999").exists()


# --- damaged archives and URLs that are not URLs: one line, never a traceback --------------------------


def _damaged_zip(compression: int) -> bytes:
    """An archive whose first member's data are overwritten (its directory and headers stay intact)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        archive.writestr("Kvasir-SEG/images/a.bin", bytes(range(256)) * 64)
    data = bytearray(buffer.getvalue())
    start = 30 + len("Kvasir-SEG/images/a.bin")  # the local header, then the member's data
    data[start + 4 : start + 40] = b"\xff" * 36
    return bytes(data)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_LZMA])
def test_damaged_archive_data_is_one_line_and_deleted(tmp_path, capsys, compression):
    server = ArchiveServer(_damaged_zip(compression))
    try:
        assert main(["data", "download", "kvasir-seg", "--dest", str(tmp_path), "--url", server.url]) == 2
    finally:
        server.close()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "corrupt zip archive" in err and "the download was deleted" in err, err
    assert list(tmp_path.iterdir()) == []


def test_encrypted_member_is_refused_before_extracting(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as handle:
        handle.writestr("secret.txt", "data")
    data = bytearray(buffer.getvalue())
    for flags in (6, data.index(b"PK\x01\x02") + 8):  # the local header's and the directory's general flags
        data[flags] |= 0x1  # "encrypted": zipfile would raise RuntimeError when reading the member
    archive = tmp_path / "a.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(InputError, match="secret.txt.*encrypted"):
        safe_extract(archive, tmp_path / "out")


@pytest.mark.parametrize("url", ["not a url", "ftp//x/kvasir-seg.zip", "http://127.0.0.1:port/kvasir-seg.zip"])
def test_a_url_that_is_not_one_is_one_line(tmp_path, capsys, url):
    assert main(["data", "download", "kvasir-seg", "--dest", str(tmp_path), "--url", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"polypseg data: error: --url {url}: ") and len(err.splitlines()) == 1, err
