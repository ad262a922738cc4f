"""The ``.npz`` container of checkpoints and ZeRO shard files: atomic writes, reads that
check before they allocate.

``write_archive(path, meta, arrays)`` stores a JSON document (the ``__meta__`` entry, a
uint8 array) and numeric arrays with ``np.savez`` (uncompressed), adding to the document
an ``"arrays"`` table (:func:`fusedoptim.codec.describe_arrays`).  The file is written to
``.<name>.<pid>.<hex>.tmp`` next to the target, flushed, ``fsync``-ed and moved over the
target with ``os.replace``; the directory is ``fsync``-ed.  On an error the temporary file
is removed; a process killed mid-write (SIGKILL, power loss) can't remove it, so each
write first deletes the temporaries of the same target left by processes that no longer
exist on this machine.

``read_archive(path, check_meta)`` trusts nothing in the file:

1. the zip central directory is read (no entry data): every entry must be a stored
   (uncompressed, unencrypted) ``.npy`` whose size fits in the file, names unique;
2. each entry's ``.npy`` header (not its data) is parsed: a pickled object is refused
   here, before anything is unpickled or allocated;
3. the ``__meta__`` document is parsed and handed to ``check_meta`` (format, version),
   which says whether the format declares its arrays;
4. the set of entries must equal the set of arrays the document refers to, and each
   entry's dtype and shape must equal the ``"arrays"`` table's and fill exactly the
   entry's stored bytes;
5. only then is data read, at most what was declared.

Arrays come back in this machine's byte order: an entry stored in the other one (a file
written on a big-endian machine, which ``np.savez`` writes in its native order) is
byte-swapped in place as it is read, a lossless conversion, so nothing downstream sees a
non-native array.  (The dtypes in the document are compared with the entries' headers
as written, and with the parameters' dtypes regardless of byte order.)

So memory use is bounded by the file's size and every failure is a ``CheckpointError``.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import zipfile
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from .codec import StateFormatError, array_refs, describe_arrays, read_array_table, storable_dtype

__all__ = ["CheckpointError", "write_archive", "read_archive", "META"]

META = "__meta__"
_NPY_MAGIC = b"\x93NUMPY"
_MAX_HEADER = 10000  # numpy's own limit on a .npy header (np.lib.format)


class CheckpointError(StateFormatError):
    """The file is not a valid fusedoptim checkpoint, or doesn't fit the given objects."""


_PICKLE_MSG = ("refusing to load {what}: it contains a pickled Python object; fusedoptim checkpoints never "
               "contain pickles (the file is not a fusedoptim checkpoint, or it was tampered with). "
               "Nothing was unpickled.")


# ====================================================================== write
def _tmp_pattern(base: str) -> "re.Pattern[str]":
    return re.compile(r"\." + re.escape(base) + r"\.(\d+)\.[0-9a-f]{12}\.tmp")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # never ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # alive under another user, or not a pid we can ask about: leave it
    return True


def remove_stale_temporaries(path: str) -> list:
    """Delete ``.<name>.<pid>.<hex>.tmp`` files of ``path`` whose process is gone (a save
    killed mid-write); return their paths.  Temporaries of live processes are kept."""
    d, base = os.path.split(os.path.abspath(path))
    pat = _tmp_pattern(base)
    removed = []
    try:
        names = os.listdir(d)
    except OSError:
        return removed
    for name in names:
        m = pat.fullmatch(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(d, name))
                removed.append(os.path.join(d, name))
            except OSError:
                pass
    return removed


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows can't open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse
        pass
    finally:
        os.close(fd)


def write_archive(path, meta: dict, arrays: Dict[str, np.ndarray]) -> None:
    """Atomically write ``meta`` (JSON-able, ``"arrays"`` is added) and ``arrays`` to ``path``."""
    path = os.fspath(path)
    if META in arrays or "arrays" in meta:
        raise ValueError(f"{META!r} and the 'arrays' key are reserved")
    doc = json.dumps(dict(meta, arrays=describe_arrays(arrays)), allow_nan=False,
                     separators=(",", ":")).encode("utf-8")
    entries = {META: np.frombuffer(doc, dtype=np.uint8)}
    entries.update(arrays)
    d = os.path.dirname(os.path.abspath(path))
    remove_stale_temporaries(path)
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **entries)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(d)


# ======================================================================= read
def _npy_dtype(fh) -> Optional[np.dtype]:
    """The dtype in a .npy file's header, or None if it has no readable header."""
    fmt = np.lib.format
    fh.seek(0)
    try:
        version = fmt.read_magic(fh)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        return read(fh, max_header_size=_MAX_HEADER)[2]
    except Exception:  # numpy parses headers with ast: any of its errors means "malformed"
        return None


def _not_an_archive(head: bytes, path: str, fh) -> CheckpointError:
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return CheckpointError(_PICKLE_MSG.format(what=repr(path)))
    if head.startswith(_NPY_MAGIC):
        dtype = _npy_dtype(fh)
        if dtype is not None and dtype.hasobject:
            return CheckpointError(_PICKLE_MSG.format(what=repr(path)))
        return CheckpointError(f"{path!r} is not a fusedoptim checkpoint: it holds a single .npy array, not an "
                               ".npz archive")
    what = "it is empty" if not head else f"it starts with {head[:8]!r}"
    return CheckpointError(f"{path!r} is not a fusedoptim checkpoint: not a zip (.npz) archive ({what})")


def _header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> Tuple[np.dtype, tuple, bool, int]:
    """(dtype, shape, fortran_order, data offset) from an entry's .npy header, data unread."""
    fmt = np.lib.format
    with zf.open(info) as f:
        try:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f, max_header_size=_MAX_HEADER)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = fmt.read_array_header_2_0(f, max_header_size=_MAX_HEADER)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except CheckpointError:
            raise
        except Exception as e:  # numpy parses headers with ast: any of its errors means "malformed"
            raise CheckpointError(f"{what} has no valid .npy header ({type(e).__name__}: {e})") from None
        offset = f.tell()
    if dtype.hasobject:
        raise CheckpointError(_PICKLE_MSG.format(what=what))
    if not storable_dtype(dtype) or dtype.itemsize == 0:
        raise CheckpointError(f"{what} has dtype {dtype}, not a plain numeric dtype")
    return dtype, tuple(shape), bool(fortran), offset


def _read_data(zf: zipfile.ZipFile, info: zipfile.ZipInfo, header, what: str) -> np.ndarray:
    dtype, shape, fortran, offset = header
    nbytes = info.file_size - offset
    buf = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(buf)
    with zf.open(info) as f:
        f.read(offset)
        got = 0
        while got < nbytes:
            n = f.readinto(view[got:])
            if not n:
                raise CheckpointError(f"{what} is truncated ({got} of {nbytes} bytes)")
            got += n
        if f.read(1):  # also makes zipfile check the CRC
            raise CheckpointError(f"{what} holds more data than its size says")
    a = buf.view(dtype).reshape(shape, order="F" if fortran else "C")
    if not dtype.isnative:     # written on a machine of the other byte order: swap in place
        a = a.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return a


def _parse_meta(raw: np.ndarray, path: str) -> dict:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path!r}: {META!r} must be a 1-d uint8 array, got {raw.dtype} with shape {raw.shape}")

    def reject(c):
        raise CheckpointError(f"{path!r}: metadata contains the non-standard JSON constant {c}")

    try:
        meta = json.loads(raw.tobytes().decode("utf-8"), parse_constant=reject)
    except RecursionError:
        raise CheckpointError(f"{path!r}: the metadata is nested too deeply to parse") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path!r}: the metadata is not valid UTF-8 JSON: {e}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path!r}: the metadata is a JSON {type(meta).__name__}, not an object")
    return meta


def _read(fh, path: str, check_meta: Callable[[dict], bool]) -> Tuple[dict, Dict[str, np.ndarray]]:
    head = fh.read(8)
    if not head.startswith(b"PK\x03\x04"):
        raise _not_an_archive(head, path, fh)
    size = os.fstat(fh.fileno()).st_size
    fh.seek(0)
    zf = zipfile.ZipFile(fh)
    entries: Dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        name = info.filename
        what = f"entry {name!r} of {path!r}"
        if not name.endswith(".npy") or name[:-4] in entries:
            raise CheckpointError(f"{what}: not a uniquely named .npy entry")
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{what} is encrypted")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{what} is compressed (method {info.compress_type}); checkpoint entries are "
                                  "stored uncompressed, so their size is bounded by the file's")
        if info.file_size != info.compress_size or info.compress_size > size or info.header_offset > size:
            raise CheckpointError(f"{what} claims {info.file_size} bytes, more than the {size}-byte file holds")
        entries[name[:-4]] = info
    headers = {k: _header(zf, info, f"entry {k!r} of {path!r}") for k, info in entries.items()}
    for k, (dtype, shape, _, offset) in headers.items():
        have = entries[k].file_size - offset
        need = math.prod(shape) * dtype.itemsize
        if need != have:
            raise CheckpointError(f"entry {k!r} of {path!r}: its header claims {dtype} {shape} ({need} bytes), the "
                                  f"entry holds {have} bytes")
    if META not in entries:
        raise CheckpointError(f"{path!r} is not a fusedoptim checkpoint: it has no {META!r} entry")
    meta = _parse_meta(_read_data(zf, entries[META], headers[META], f"{META!r} of {path!r}"), path)
    declares = check_meta(meta)
    refs = array_refs(meta)
    unknown = sorted(set(entries) - refs - {META})
    if unknown:
        raise CheckpointError(f"{path!r}: the archive has entries the metadata doesn't mention: {unknown[:5]}")
    missing = sorted(refs - set(entries))
    if missing:
        raise CheckpointError(f"{path!r}: the metadata refers to array entry {missing[0]!r}, which the archive "
                              "doesn't have")
    if "arrays" in meta or declares:
        table = read_array_table(meta.get("arrays"))
        if set(table) != refs:
            raise CheckpointError(f"{path!r}: the metadata's array table lists {sorted(set(table) ^ refs)[:5]} "
                                  "differently from its references")
        for k, (dtype, shape) in table.items():
            hd, hs = headers[k][:2]
            if (hd, hs) != (dtype, shape):
                raise CheckpointError(f"entry {k!r} of {path!r} holds {hd} {hs}, the metadata declares {dtype} "
                                      f"{shape}")
    arrays = {k: _read_data(zf, entries[k], headers[k], f"entry {k!r} of {path!r}") for k in sorted(refs)}
    return meta, arrays


def read_archive(path, check_meta: Callable[[dict], bool]) -> Tuple[dict, Dict[str, np.ndarray]]:
    """``(meta, arrays)`` of an archive, checked as the module docstring says.

    ``check_meta(meta)`` raises ``CheckpointError`` for a wrong format or version and
    returns whether this format must carry an ``"arrays"`` table.  A missing file raises
    ``FileNotFoundError``; anything else wrong with the file, ``CheckpointError``."""
    path = os.fspath(path)
    with open(path, "rb") as fh:
        try:
            return _read(fh, path, check_meta)
        except CheckpointError:
            raise
        except StateFormatError as e:
            raise CheckpointError(f"{path!r}: {e}") from None
        except RecursionError:
            raise CheckpointError(f"{path!r}: nested too deeply to read") from None
        except Exception as e:  # zipfile and numpy raise many types for a damaged file
            raise CheckpointError(f"{path!r} is damaged or not a fusedoptim checkpoint ({type(e).__name__}: "
                                  f"{e})") from None
