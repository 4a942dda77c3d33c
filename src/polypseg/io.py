"""Reading images and masks, and writing files and folders atomically.

Every reader raises :class:`InputError` with a one-line message that names the file and the problem, and
nothing else: whatever Pillow raises on a damaged or hostile file becomes an :class:`InputError`.

Writers never leave a half-written file under the final name: they write a temporary file beside it and
rename it (``os.replace``, atomic on POSIX and Windows). Written files get the usual permissions
(``0o666`` less the umask, like any file the process creates), not the ``0o600`` of ``tempfile.mkstemp``.
A process killed mid-write leaves at most a hidden ``.polypseg-tmp-*.tmp`` file, which
:func:`remove_stale_temporaries` clears; a writer holds a lock on its temporary file (POSIX), so files
still being written by a live process are left alone. :func:`atomic_write_folder` does the same for a
folder whose files must stay a consistent set (``best/``: weights and config).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:
    import fcntl
except ImportError:  # Windows: no flock; an open file cannot be deleted there anyway
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "IMAGE_SUFFIXES",
    "InputError",
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_folder",
    "atomic_write_text",
    "read_image",
    "read_mask",
    "recover_folder",
    "remove_stale_temporaries",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
#: Larger images are refused before they are decoded (decompression-bomb guard). Pillow refuses images
#: over twice its ``MAX_IMAGE_PIXELS`` itself and only warns between 1x and 2x; :func:`read_image` makes
#: the whole range above the limit an :class:`InputError` (Pillow may still print its warning once).
MAX_IMAGE_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class InputError(ValueError):
    """A file that cannot be used; ``str(error)`` is a one-line message naming it."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        shown = str(path)
        # A file name may hold a newline or other control characters; the message stays one line.
        super().__init__(f"{shown if shown.isprintable() else ascii(shown)}: {problem}")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{image.width}x{image.height} = {image.width * image.height:,}")
            image.load()
            return ImageOps.exif_transpose(image)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, not an image") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except UnidentifiedImageError:
        raise InputError(path, "not an image file Pillow can read") from None
    except Image.DecompressionBombError as error:
        raise InputError(path, f"image larger than {MAX_IMAGE_PIXELS:,} pixels, refused ({_one_line(error)})") from None
    except Exception as error:  # Pillow's decoders raise many types on damaged files
        raise InputError(path, f"cannot decode image ({_one_line(error)})") from None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB.

    EXIF orientation is applied; alpha is dropped; grayscale, palette, CMYK and 16-bit are converted.
    """
    path = Path(path)
    image = _open(path)
    if image.mode == "F":
        image = Image.fromarray(_float_to_uint8(path, np.asarray(image, dtype=np.float64)))
    try:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            scaled = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if scaled.max(initial=0) > 255 else 255.0
            image = Image.fromarray(np.clip(scaled / peak * 255, 0, 255).round().astype(np.uint8))
        array = np.asarray(image.convert("RGB"))
    except Exception as error:  # exotic modes Pillow cannot convert
        raise InputError(path, f"cannot convert image to RGB ({_one_line(error)})") from None
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(path, "image has no pixels")
    return array


def _float_to_uint8(path: Path, values: np.ndarray) -> np.ndarray:
    """A float image to uint8: values in [0, 1] are scaled to 0-255, values in [0, 255] kept; else refused."""
    if not np.isfinite(values).all():
        raise InputError(path, "floating-point image holds NaN or infinite values")
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if low < 0 or high > 255:
        raise InputError(path, f"floating-point image with values {low:g} to {high:g}; expected 0-1 or 0-255")
    scale = 255.0 if high <= 1 else 1.0
    return np.clip(values * scale, 0, 255).round().astype(np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask as (H, W) uint8 grayscale (0-255); binarize it with :func:`polypseg.classes.binarize_mask`.

    A colour mask (RGB, palette, CMYK...) gives the largest of its red, green and blue values, so any clearly
    non-black colour (a pure red polyp on black, for instance) is a polyp; for grey masks stored as RGB, such
    as Kvasir-SEG's JPEGs, that is their grey value. Alpha is ignored.
    """
    path = Path(path)
    image = _open(path)
    try:
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            mask = (
                np.where(values > 0, 255, 0).astype(np.uint8)
                if values.max(initial=0) <= 1
                else (np.clip(values / max(values.max(), 1) * 255, 0, 255).astype(np.uint8))
            )
        elif image.mode == "1":
            mask = np.asarray(image, dtype=np.uint8) * 255
        elif image.mode in ("L", "LA", "La"):
            mask = np.asarray(image.convert("L"))
        else:  # colour: the brightest channel, so that a red or green mask is not read as dark grey
            mask = np.asarray(image.convert("RGB")).max(axis=2)
    except Exception as error:  # exotic modes Pillow cannot convert
        raise InputError(path, f"cannot convert mask to grayscale ({_one_line(error)})") from None
    if mask.shape[0] < 1 or mask.shape[1] < 1:
        raise InputError(path, "mask has no pixels")
    return mask


def _fsync_folder(folder: Path) -> None:
    if os.name == "nt":  # Windows cannot open a folder for fsync; its renames are journaled
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


#: Temporary files of :func:`atomic_write` are named ``.polypseg-tmp-RANDOM.NAME.tmp``.
TEMPORARY_PREFIX = ".polypseg-tmp-"
_TEMPORARY_NAME = re.compile(re.escape(TEMPORARY_PREFIX) + r"[0-9a-f]{16}\..*\.tmp", re.DOTALL)


def _create_temporary(path: Path) -> tuple[Path, int]:
    """Create an empty temporary file beside ``path``; return it and an open descriptor.

    Unlike ``tempfile.mkstemp`` (always ``0o600``), the file is created with mode ``0o666`` less the umask,
    so the renamed result has the permissions of any other file the process writes.
    """
    # The final name is kept only for recognition by people; at most 100 bytes of it (names are limited to 255).
    shown = os.fsdecode(os.fsencode(path.name)[:100])
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        temporary = path.parent / f"{TEMPORARY_PREFIX}{secrets.token_hex(8)}.{shown}.tmp"
        try:
            return temporary, os.open(temporary, flags, 0o666)
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: cannot create a temporary file for {path.name}")


@contextmanager
def atomic_write(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary file is locked (``flock``, POSIX) while the block runs, which tells
    :func:`remove_stale_temporaries` that its writer is alive.

    Args:
        path: The final file.
        durable: Also flush the file and its folder to disk (``fsync``) before and after the rename, so
            the new file survives a power cut, not only a killed process. Costs a disk flush.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary_path, descriptor = _create_temporary(path)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # a file system without locks: the file is only unprotected from cleaning
                pass
        else:  # Windows cannot rename a file that is open
            os.close(descriptor)
            descriptor = -1
        yield temporary_path
        if durable:
            with temporary_path.open("rb+") as written:
                os.fsync(written.fileno())
        os.replace(temporary_path, path)
        if durable:
            _fsync_folder(path.parent)
    finally:
        temporary_path.unlink(missing_ok=True)
        if descriptor >= 0:
            os.close(descriptor)  # releases the lock


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_write(path, durable=durable) as temporary:
        temporary.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, durable: bool = False) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


def atomic_save(path: str | Path, save: Callable[[Path], None], durable: bool = False) -> None:
    """Call ``save(temporary_path)`` and rename the result to ``path``."""
    with atomic_write(path, durable=durable) as temporary:
        save(temporary)


def _staging(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.new")


def _retired(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.old")


@contextmanager
def atomic_write_folder(folder: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds, it replaces ``folder`` as a whole.

    The files of ``folder`` therefore always come from one write: a reader never sees new weights with
    an old config. Steps: write ``.NAME.new/`` (each file flushed to disk), rename ``NAME`` to
    ``.NAME.old``, rename ``.NAME.new`` to ``NAME``, delete ``.NAME.old``. A process killed between the
    two renames leaves no ``NAME`` but two complete copies; :func:`recover_folder` (called here first,
    and by training on resume) finishes the swap with the new one.
    """
    folder = Path(folder)
    recover_folder(folder)
    staging, retired = _staging(folder), _retired(folder)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        for path in staging.iterdir():
            if path.is_file():
                with path.open("rb+") as written:
                    os.fsync(written.fileno())
        _fsync_folder(staging)
        if folder.exists():
            os.replace(folder, retired)
        os.replace(staging, folder)
        _fsync_folder(folder.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        recover_folder(folder)  # deletes the old copy, or puts it back if the swap failed


def recover_folder(folder: str | Path) -> None:
    """Finish or undo an :func:`atomic_write_folder` that a killed process left behind.

    ``NAME`` present: leftovers are deleted. ``NAME`` missing: the complete new copy (``.NAME.new``,
    which is renamed only after it was fully written) becomes ``NAME``, else the old one (``.NAME.old``).
    """
    folder = Path(folder)
    staging, retired = _staging(folder), _retired(folder)
    if not folder.exists():
        if staging.is_dir() and retired.is_dir():
            os.replace(staging, folder)
        elif retired.is_dir():
            os.replace(retired, folder)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(retired, ignore_errors=True)


def _is_abandoned(path: Path) -> bool:
    """True when no live process holds the lock of :func:`atomic_write` on the temporary file ``path``."""
    if fcntl is None:
        return True  # Windows: a file still being written is open and cannot be deleted
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by a live writer, or no locks on this file system: leave it alone
        return False
    finally:
        os.close(descriptor)
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` leaves in ``folder`` when its process is killed.

    Only files named like ours (``.polypseg-tmp-RANDOM.NAME.tmp``, regular files) whose writer is gone are
    deleted: files that a running process is still writing are kept, and so is everything else.
    Returns the deleted paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = []
    for path in sorted(folder.iterdir()):
        if _TEMPORARY_NAME.fullmatch(path.name) and not path.is_symlink() and path.is_file() and _is_abandoned(path):
            try:
                path.unlink()
            except OSError:  # gone meanwhile, or (Windows) still open
                continue
            stale.append(path)
    return stale
