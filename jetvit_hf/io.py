"""Files: crash-safe writes (a saved model, checkpoint, JSON or figure is either the old one or the complete new one,
never half of each, with ordinary permissions), reads that name a broken file instead of failing deep inside a
library, and a lock that keeps two runs out of one output directory."""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import JetViTUserError


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; when the block ends without error it becomes `path`.

    An existing non-empty `path` is an error unless `overwrite`; it is then swapped out and deleted only after the new
    directory is in place. On error the temporary directory is removed and `path` is left untouched.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(staging, 0o777 & ~_umask())  # an ordinary directory, not mkdtemp's private 0700
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _ordinary_permissions(staging)
    retired = None
    if path.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, retired / path.name)
    os.replace(staging, path)
    if retired is not None:
        shutil.rmtree(retired, ignore_errors=True)


def _ordinary_permissions(root: Path) -> None:
    """Give every file under `root` the permissions of an ordinary new file (writers such as safetensors create
    private 0600 files); executables stay executable."""
    umask = _umask()
    for file in root.rglob("*"):
        if file.is_file() and not file.is_symlink():
            os.chmod(file, (0o777 if file.stat().st_mode & 0o100 else 0o666) & ~umask)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write a file to; when the block ends without error the file is synced
    to disk, given ordinary permissions (not mkstemp's private 0600) and renamed to `path` (`os.replace`), so readers
    never see a partial file. On error the temporary file is removed and `path` is left untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    staging = Path(name)
    try:
        yield staging
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(staging, 0o666 & ~_umask())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def exclusive_use(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a directory, which need not exist yet) for the block: a second process asking
    for it meanwhile gets a `JetViTUserError` naming the holder's process id, instead of the two runs deleting each
    other's temporary files. The lock is `flock` on the file `.<name>.lock` beside `path` (beside, so that clearing
    `path` cannot take it away); the system releases it when the holder exits, however it exits, so a crash never
    leaves `path` locked. Where `fcntl` does not exist (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise JetViTUserError(f"{path} is in use by another {what} (process {holder}); wait for it to finish, or "
                                  "choose another directory") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write_json(path: str | os.PathLike, data, **json_kwargs) -> None:
    """Write JSON through `atomic_file`."""
    with atomic_file(path) as staging, open(staging, "w") as handle:
        json.dump(data, handle, **{"indent": 2, **json_kwargs})
        handle.write("\n")


def atomic_save_figure(figure, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Save a matplotlib figure through `atomic_file`, in the format its suffix names (PNG without one)."""
    path = Path(path)
    with atomic_file(path) as staging:
        figure.savefig(staging, format=path.suffix.lstrip(".").lower() or "png", **savefig_kwargs)
    return path


def read_json(path: str | os.PathLike):
    """The content of a JSON file; a missing file or one that is not valid UTF-8 JSON is a `JetViTUserError` naming
    it."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise JetViTUserError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise JetViTUserError(f"{path}: not valid JSON ({error})") from error


def check_safetensors(files) -> None:
    """Read the header of each safetensors file in `files`: an empty, truncated or corrupt one is a `JetViTUserError`
    naming it (safetensors checks that the header is whole and that the tensors cover the file exactly)."""
    from safetensors import SafetensorError, safe_open

    for file in files:
        try:
            with safe_open(file, framework="pt"):
                pass
        except SafetensorError as error:
            raise JetViTUserError(
                f"{file}: not a complete safetensors file ({error}); it is truncated or corrupt, save or download it "
                "again"
            ) from error
