"""Files: find the input files of a command, and write files and folders atomically.

:func:`expand_inputs` turns files, folders and glob patterns into image paths (hidden files skipped, each
file once). Writers never leave a half-written file under the final name: they write a temporary file
beside it and rename it (``os.replace``, atomic on POSIX and Windows). Written files get the usual
permissions (``0o666`` less the umask, like any file the process creates), not the ``0o600`` of
``tempfile.mkstemp``. A process killed mid-write leaves at most a hidden ``.polypseg-tmp-*.tmp`` file, which
:func:`remove_stale_temporaries` clears; a writer holds a lock on its temporary file (POSIX), so files
still being written by a live process are left alone. :func:`atomic_write_folder` does the same for a
folder whose files must stay a consistent set (``best/``: weights and config).
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from polypseg.images import IMAGE_SUFFIXES

try:
    import fcntl
except ImportError:  # Windows: no flock; an open file cannot be deleted there anyway
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_csv",
    "atomic_write_folder",
    "atomic_write_text",
    "csv_text",
    "expand_inputs",
    "recover_folder",
    "refuse_existing",
    "remove_stale_temporaries",
]


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


def refuse_existing(paths: Iterable[str | Path], overwrite: bool) -> None:
    """The ``--overwrite`` rule: raise :class:`FileExistsError` naming the first of ``paths`` that exists.

    Does nothing when ``overwrite`` is True.
    """
    if overwrite:
        return
    for path in paths:
        if Path(path).exists():
            raise FileExistsError(f"{path}: exists; pass --overwrite to replace it")


def csv_text(columns: Sequence[str], rows: Iterable[dict[str, object]]) -> str:
    """A CSV file's text: a header of ``columns`` and one line per row (``csv.DictWriter``'s dialect)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def atomic_write_csv(
    path: str | Path, columns: Sequence[str], rows: Iterable[dict[str, object]], durable: bool = False
) -> None:
    """Write :func:`csv_text` atomically (see :func:`atomic_write`)."""
    atomic_write_text(path, csv_text(columns, rows), durable=durable)


def _is_visible_image(path: Path, folder: Path) -> bool:
    """An image file not hidden under ``folder`` (no ``.DS_Store``, ``._x.jpg`` or ``.cache/`` entries)."""
    hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
    return not hidden and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _resolved(path: Path) -> Path:
    """The absolute path without symbolic links, ``.`` or ``..``: one name per file."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symbolic-link loop
        return Path(os.path.abspath(path))


def expand_inputs(inputs: Iterable[str | Path], exclude: str | Path | None = None) -> tuple[list[Path], list[str]]:
    """Files, folders and glob patterns -> image paths, and problems.

    A folder is searched recursively for files with an image suffix; hidden files and folders (names
    starting with ".", such as macOS ``._IMG.jpg`` resource forks) are skipped. Files named explicitly
    are always used. A file given several times, under any names (relative, absolute, ``x/../x``, a
    symbolic link), is used once, under the first name given.

    Args:
        inputs: Files, folders and glob patterns.
        exclude: A folder whose files are never inputs, such as the output folder of ``predict``: when it
            lies inside an input folder it is skipped, and a file or folder given inside it is reported.

    Returns:
        The paths in a stable order (duplicates removed) and one-line messages for inputs that match nothing.
    """
    excluded = _resolved(Path(exclude)) if exclude is not None else None

    def inside_excluded(resolved: Path) -> bool:
        return excluded is not None and resolved.is_relative_to(excluded)

    found_paths: dict[Path, Path] = {}  # resolved -> as given
    problems: list[str] = []

    def add(candidates: Iterable[Path]) -> int:
        """Add the paths outside the excluded folder; return how many that were."""
        kept = 0
        for candidate in candidates:
            resolved = _resolved(candidate)
            if not inside_excluded(resolved):
                found_paths.setdefault(resolved, candidate)
                kept += 1
        return kept

    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.exists() and inside_excluded(_resolved(path)):
            problems.append(f"{path}: is the output folder or inside it; its files are not read as inputs")
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if _is_visible_image(p, path))
            if not found:
                problems.append(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            elif not add(found):
                problems.append(f"{path}: folder holds no images outside the output folder")
        elif path.exists():
            add([path])
        elif glob.has_magic(text):
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not add(found):
                problems.append(f"{text}: pattern matches no files" + (" outside the output folder" if found else ""))
        else:
            problems.append(f"{path}: file not found")
    return list(found_paths.values()), problems
