"""``polypseg data download kvasir-seg``: fetch the official archive, resume, verify, unpack safely.

The archive is streamed to ``DEST/.kvasir-seg.zip.part``; an interrupted download resumes with an HTTP
``Range`` request when the server honours it (206) and starts over when it does not (200). With a
``sha256`` the archive is verified, and a mismatch deletes the part file. Extraction refuses absolute
paths, ``..``, symbolic links and any member that would land outside ``DEST``; it unpacks into a
temporary folder and renames the dataset into place, so ``DEST/kvasir-seg/{images,masks}`` either
appears whole or not at all, whatever the archive's top folder is called.

Zip bombs: the total unpacked size is capped (``max_extracted_bytes``, 2 GiB by default against the
~50 MB Kvasir-SEG archive) and so is each large member's compression ratio (:data:`MAX_COMPRESSION_RATIO`),
judged from the zip directory before anything is written and counted again while writing (the directory
may lie). A process killed while unpacking leaves a hidden staging folder (``.kvasir-seg.extract-PID-*``);
the next run deletes those of processes that no longer run.

No official checksum of the archive is published that this code could check offline: without
``--sha256`` the download is not verified beyond being a readable zip with matching image/mask pairs.
"""

from __future__ import annotations

import hashlib
import http.client
import lzma
import os
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from polypseg.data import DatasetError, find_pairs
from polypseg.errors import InputError, UsageError, one_line

__all__ = [
    "DATASETS",
    "KVASIR_SEG_NOTICE",
    "DownloadResult",
    "download_kvasir_seg",
    "safe_extract",
]

KVASIR_SEG_URL = "https://datasets.simula.no/downloads/kvasir-seg.zip"
#: Datasets ``polypseg data download`` knows: name -> default URL.
DATASETS = {"kvasir-seg": KVASIR_SEG_URL}
KVASIR_SEG_NOTICE = (
    "Kvasir-SEG may be used for research and educational purposes only; publications using it must cite "
    "Jha et al., 'Kvasir-SEG: A Segmented Polyp Dataset', MMM 2020, doi:10.1007/978-3-030-37734-2_37 "
    "(terms: https://datasets.simula.no/kvasir-seg/)."
)
_CHUNK = 1 << 20
#: Largest total size of the unpacked files (Kvasir-SEG unpacks to about 50 MB).
MAX_EXTRACTED_BYTES = 2 << 30
#: Largest compression ratio of a member over :data:`_RATIO_FLOOR` bytes (JPEGs hardly compress; bombs do ~1000:1).
MAX_COMPRESSION_RATIO = 100
_RATIO_FLOOR = 1 << 20
_STAGING_PREFIX = ".kvasir-seg.extract-"
_OLD_PREFIX = ".kvasir-seg.old-"
#: What zipfile and its decompressors raise on damaged data: a bad CRC, a truncated or garbled stream, an
#: unknown compression method.
_DAMAGED_ZIP = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, EOFError, NotImplementedError)


@dataclass
class DownloadResult:
    """What :func:`download_kvasir_seg` produced."""

    path: Path  # DEST/kvasir-seg, holding images/ and masks/
    pairs: int  # image/mask pairs found there
    sha256: str  # of the downloaded archive
    verified: bool  # whether sha256 was checked against an expected value


def download_kvasir_seg(
    dest: str | Path,
    url: str = KVASIR_SEG_URL,
    sha256: str | None = None,
    force: bool = False,
    progress: bool = True,
    timeout: float = 60.0,
    max_extracted_bytes: int = MAX_EXTRACTED_BYTES,
) -> DownloadResult:
    """Download Kvasir-SEG into ``DEST/kvasir-seg`` (``images/``, ``masks/``, ``kavsir_bboxes.json``).

    Args:
        dest: Folder to put ``kvasir-seg/`` in (created).
        url: Archive to fetch (default: the official ``kvasir-seg.zip``).
        sha256: Expected SHA-256 of the archive (hex); ``None`` skips the check (and says so).
        force: Replace an existing ``DEST/kvasir-seg``.
        progress: Show a progress bar on stderr (when it is a terminal).
        timeout: Seconds to wait for the server before giving up.
        max_extracted_bytes: Refuse an archive that unpacks to more than this (a zip bomb).

    Raises:
        FileExistsError: ``DEST/kvasir-seg`` exists and ``force`` is false.
        UsageError: ``url`` is not a URL, or ``sha256`` not 64 hexadecimal digits.
        InputError: Checksum mismatch, not a zip, a corrupt or unsafe member, or no ``images/`` + ``masks/``.
        DatasetError: The archive's ``images/`` + ``masks/`` folder cannot be used (every problem named).
        OSError: The download failed (the part file is kept; running again resumes it).
    """
    dest = Path(dest)
    target = dest / "kvasir-seg"
    _remove_stale(dest, target)
    if target.exists() and not force:
        raise FileExistsError(f"{target}: exists; pass --force to replace it")
    expected = _parse_sha256(sha256)
    dest.mkdir(parents=True, exist_ok=True)
    part = dest / ".kvasir-seg.zip.part"
    _fetch(url, part, progress=progress, timeout=timeout)
    digest = _sha256_of(part)
    try:
        if expected is not None and digest != expected:
            raise InputError(url, f"SHA-256 mismatch (expected {expected}, got {digest})")
        if not zipfile.is_zipfile(part):
            raise InputError(url, "not a zip archive")
        pairs = _extract_dataset(part, dest, target, max_extracted_bytes)
    except InputError as error:
        part.unlink(missing_ok=True)
        raise InputError(error.path, f"{error.problem}; the download was deleted") from None
    except DatasetError as error:
        part.unlink(missing_ok=True)
        raise DatasetError(f"{error}; the download was deleted") from None
    part.unlink()
    return DownloadResult(target, pairs, digest, expected is not None)


def _parse_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise UsageError(f"--sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return value


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, part: Path, progress: bool, timeout: float) -> None:
    """Stream ``url`` into ``part``, resuming from its current size when the server allows it."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "polypseg"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # The part is at least as long as the file: complete if the server's size says so, else start over.
            total = (error.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return
            part.unlink()
            return _fetch(url, part, progress, timeout)
        raise OSError(f"{url}: {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise OSError(f"{url}: {error.reason}") from None
    except (ValueError, http.client.InvalidURL) as error:  # not a URL: "unknown url type", "nonnumeric port"
        raise UsageError(f"--url {url}: {one_line(error)}") from None
    except OSError as error:  # a timeout or a dropped connection before the response
        raise OSError(f"{url}: {error}") from None
    with response:
        if response.status == 206 and _range_start(response) != offset:
            part.unlink()  # a range we did not ask for: start over
            return _fetch(url, part, progress, timeout)
        resumed = response.status == 206
        mode = "ab" if resumed else "wb"
        offset = offset if resumed else 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        written = offset
        with (
            part.open(mode) as handle,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removeprefix(".").removesuffix(".part"),
                disable=None if progress else True,  # None: only on a terminal
                file=sys.stderr,
            ) as bar,
        ):
            try:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    handle.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as error:
                raise OSError(
                    f"{url}: download interrupted after {written} bytes ({error}); run again to resume"
                ) from None
    if total is not None and written != total:
        raise OSError(f"{url}: download incomplete ({written} of {total} bytes); run again to resume")


def _range_start(response: object) -> int | None:
    content_range = response.headers.get("Content-Range", "")  # type: ignore[attr-defined]
    start = content_range.removeprefix("bytes ").partition("-")[0]
    return int(start) if start.isdigit() else None


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or we cannot tell: leave its folder alone
    return True


def _owner_pid(folder: Path, prefix: str) -> int | None:
    head = folder.name.removeprefix(prefix).split("-")[0]
    return int(head) if head.isdigit() else None


def _remove_stale(dest: Path, target: Path) -> None:
    """Delete what killed runs left in ``dest``: staging folders, and an old dataset that was being replaced.

    An old dataset moved aside (``.kvasir-seg.old-PID``) goes back into place if no new one replaced it.
    Folders of processes that still run are left alone.
    """
    if not dest.is_dir():
        return
    for prefix in (_STAGING_PREFIX, _OLD_PREFIX):
        for folder in sorted(dest.glob(f"{prefix}*")):
            pid = _owner_pid(folder, prefix)
            if not folder.is_dir() or (pid is not None and pid != os.getpid() and _pid_running(pid)):
                continue
            if prefix == _OLD_PREFIX and not target.exists():
                folder.rename(target)
            else:
                shutil.rmtree(folder, ignore_errors=True)


def safe_extract(
    archive: str | Path,
    folder: str | Path,
    max_bytes: int = MAX_EXTRACTED_BYTES,
    max_ratio: float = MAX_COMPRESSION_RATIO,
) -> None:
    """Extract a zip into ``folder`` after checking every member; an unsafe archive writes nothing.

    Refused: absolute paths (also Windows drive and backslash forms), ``..`` components, symbolic links,
    any member whose resolved path is not inside ``folder``, and zip bombs: more than ``max_bytes`` in all,
    or a member over 1 MiB compressed more than ``max_ratio``:1, judged from the zip directory first and
    counted again while writing (the files written so far are then deleted).

    Raises:
        InputError: Naming the first unsafe member, or the size that is too large.
    """
    folder = Path(folder).resolve()
    with zipfile.ZipFile(archive) as zip_file:
        members = zip_file.infolist()
        targets = []
        for member in members:
            name = member.filename
            path = PurePosixPath(name.replace("\\", "/"))
            mode = member.external_attr >> 16
            problem = ""
            if path.is_absolute() or (len(name) > 1 and name[1] == ":") or name.startswith("\\"):
                problem = "absolute path"
            elif ".." in path.parts:
                problem = "'..' in its path"
            elif stat.S_ISLNK(mode):
                problem = "symbolic link"
            elif not (folder / path).resolve().is_relative_to(folder):
                problem = "path outside the destination"
            elif member.flag_bits & 0x1:
                problem = "encrypted"
            elif member.file_size > _RATIO_FLOOR and member.file_size > max_ratio * max(member.compress_size, 1):
                ratio = member.file_size / max(member.compress_size, 1)
                problem = f"compressed {ratio:.0f}:1, more than {max_ratio:g}:1: a zip bomb?"
            if problem:
                raise InputError(archive, f"unsafe archive member {name!r} ({problem}); nothing was extracted")
            targets.append(folder / path)
        declared = sum(member.file_size for member in members)
        if declared > max_bytes:
            raise InputError(
                archive,
                f"unpacks to {declared:,} bytes, more than the limit of {max_bytes:,} bytes (a zip bomb?); "
                "nothing was extracted",
            )
        # Counted again while writing: a reader that trusted the data over the directory could be fed more.
        written = 0
        created: list[Path] = []
        try:
            for member, target in zip(members, targets, strict=True):
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                created.append(target)
                with zip_file.open(member) as source, target.open("wb") as sink:
                    for chunk in iter(lambda source=source: source.read(_CHUNK), b""):
                        written += len(chunk)
                        if written > max_bytes:
                            raise InputError(
                                archive,
                                f"unpacks to more than the limit of {max_bytes:,} bytes "
                                f"(at {member.filename!r}; a zip bomb?); extraction stopped",
                            )
                        sink.write(chunk)
        except BaseException:
            for path in created:
                path.unlink(missing_ok=True)
            raise


def _extract_dataset(archive: Path, dest: Path, target: Path, max_bytes: int = MAX_EXTRACTED_BYTES) -> int:
    """Unpack into a temporary folder, find the ``images/`` + ``masks/`` folder, check it, rename it to ``target``."""
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=f"{_STAGING_PREFIX}{os.getpid()}-"))
    try:
        try:
            safe_extract(archive, staging, max_bytes=max_bytes)
        except _DAMAGED_ZIP as error:
            raise InputError(archive, f"corrupt zip archive ({one_line(error)})") from None
        roots = sorted(
            (images.parent for images in staging.rglob("images") if (images.parent / "masks").is_dir()),
            key=lambda root: (len(root.parts), str(root)),
        )
        roots = [root for root in roots if "__MACOSX" not in root.parts]
        if not roots:
            raise InputError(archive, "no folder with images/ and masks/ in the archive")
        root = roots[0]
        pairs = len(find_pairs(root))
        old = None
        if target.exists():
            old = dest / f"{_OLD_PREFIX}{os.getpid()}"
            target.rename(old)
        try:
            root.rename(target)
        except OSError:
            if old is not None:
                old.rename(target)
            raise
        if old is not None:
            shutil.rmtree(old)
        return pairs
    finally:
        shutil.rmtree(staging, ignore_errors=True)
