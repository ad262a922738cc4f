"""Hostile and damaged checkpoints (issue 11, items 6-8): the reader checks the zip
directory, the .npy headers and the metadata before it reads any data and reads no more
than declared; every failure to load is a CheckpointError with an accurate message; a
save killed mid-write leaves a temporary file that the next save to that path removes.

Every crafted file is tiny even where it claims GiBs or TBs, so no test allocates much.
"""
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import checkpoint as C
from fusedoptim.checkpoint import CheckpointError


def _good(tmp_path):
    p = [np.arange(12, dtype=np.float32).reshape(3, 4), np.ones(5, np.float32)]
    opt = fo.Adam(p, lr=1e-3)
    opt.step([np.ones_like(a) for a in p])
    path = tmp_path / "good.npz"
    C.save(path, opt, params=p, extra={"x": np.arange(3)})
    return path


def _target():
    p = [np.zeros((3, 4), np.float32), np.zeros(5, np.float32)]
    return fo.Adam(p, lr=1e-3), p


def _members(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _zip(path, members, compress=None):
    """members: name -> bytes (or (bytes, compress_type))."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            ct = zipfile.ZIP_STORED
            if isinstance(data, tuple):
                data, ct = data
            z.writestr(zipfile.ZipInfo(name), data, compress_type=ct)


def _npy_header(descr, shape, version=1):
    h = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    pad = 64 - (10 + len(h) + 1) % 64
    h = h + b" " * pad + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<H", len(h)) + h


def _meta(path):
    return json.loads(np.lib.format.read_array(io.BytesIO(_members(path)["__meta__.npy"])).tobytes())


def _with_meta(members, meta):
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(meta).encode(), np.uint8))
    return dict(members, **{"__meta__.npy": buf.getvalue()})


@pytest.fixture
def opened(monkeypatch):
    """Names of the zip entries whose data the reader opened."""
    names = []
    real = zipfile.ZipFile.open

    def spy(self, name, *a, **kw):
        names.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return real(self, name, *a, **kw)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    return names


def _refused(path, match, opened=None):
    opt, p = _target()
    if opened is not None:
        opened.clear()  # count only what load opens
    with pytest.raises(CheckpointError, match=match):
        C.load(path, opt, params=p)
    assert opt.iterations == 0 and all((a == 0).all() for a in p)


# ------------------------------------------------------------ item 6: check first
def test_compressed_extra_entry_is_refused_without_decompressing(tmp_path, opened):
    """A deflated entry of 256 MiB of zeros in a file of a few hundred KB."""
    bad = tmp_path / "bomb.npz"
    _zip(bad, _members(_good(tmp_path)))
    with zipfile.ZipFile(bad, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("junk.npy", "w", force_zip64=True) as f:
            f.write(_npy_header("|u1", (256 << 20,)))
            chunk = bytes(1 << 20)
            for _ in range(256):
                f.write(chunk)
    with zipfile.ZipFile(bad) as z:
        assert z.getinfo("junk.npy").file_size > 256 << 20
    assert bad.stat().st_size < 2 << 20
    _refused(bad, r"'junk.npy'.*is compressed", opened)
    assert "junk.npy" not in opened


def test_stored_entry_claiming_more_than_the_file_is_refused(tmp_path, opened):
    members = _members(_good(tmp_path))
    bad = tmp_path / "claim.npz"
    _zip(bad, members)
    raw = bytearray(bad.read_bytes())
    cd = raw.rindex(b"PK\x01\x02")  # the last directory record: patch its uncompressed size to 2 GiB
    struct.pack_into("<I", raw, cd + 24, 2 << 30)
    bad.write_bytes(bytes(raw))
    _refused(bad, r"claims 2147483648 bytes", opened)
    assert opened == []


@pytest.mark.parametrize("declared", [False, True], ids=["undeclared", "declared-too"])
def test_header_claiming_8_tb_is_refused_before_allocating(tmp_path, opened, declared):
    path = _good(tmp_path)
    members = _members(path)
    meta = _meta(path)
    shape = (1 << 40,)  # 8 TB of float64
    members["extra/0.npy"] = _npy_header("<f8", shape) + bytes(24)
    if declared:
        meta["arrays"]["extra/0"] = {"dtype": "<f8", "shape": list(shape)}
    bad = tmp_path / "tb.npz"
    _zip(bad, _with_meta(members, meta))
    _refused(bad, r"'extra/0'.*header claims float64 \(1099511627776,\) \(8796093022208 bytes\), the entry holds 24", opened)
    assert "extra/0.npy" in opened and opened.count("extra/0.npy") == 1  # its header only, never its data


def test_entry_not_matching_the_declared_dtype_and_shape_is_refused_unread(tmp_path, opened):
    path = _good(tmp_path)
    members = _members(path)
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 3), np.float32))  # the metadata declares (3, 4) float32
    members["params/0.npy"] = buf.getvalue()
    bad = tmp_path / "swap.npz"
    _zip(bad, members)
    _refused(bad, r"'params/0'.*holds float32 \(4, 3\), the metadata declares float32 \(3, 4\)", opened)
    assert opened.count("params/0.npy") == 1


def test_unknown_entry_is_refused_unread(tmp_path, opened):
    members = _members(_good(tmp_path))
    members["junk.npy"] = _npy_header("<f4", (4,)) + bytes(16)
    bad = tmp_path / "junk.npz"
    _zip(bad, members)
    _refused(bad, r"entries the metadata doesn't mention: \['junk'\]", opened)
    assert opened.count("junk.npy") == 1  # the header (for a pickle check), not the data


def test_version_1_files_still_load(tmp_path):
    """A version-1 file: the same layout without the array table."""
    path = _good(tmp_path)
    meta = _meta(path)
    del meta["arrays"]
    meta["version"] = 1
    old = tmp_path / "v1.npz"
    _zip(old, _with_meta(_members(path), meta))
    opt, p = _target()
    out = C.load(old, opt, params=p)
    assert out["version"] == 1 and opt.iterations == 1 and (p[1] != 0).all()
    assert (out["extra"]["x"] == np.arange(3)).all()


# ------------------------------------------------- item 7: one error type, true messages
def _edit_meta(tmp_path, fn):
    path = _good(tmp_path)
    meta = _meta(path)
    fn(meta)
    bad = tmp_path / "edited.npz"
    _zip(bad, _with_meta(_members(path), meta))
    return bad


@pytest.mark.parametrize("name,fn,match", [
    ("step-10**400", lambda m: m["optimizer"]["state"]["0"].__setitem__("step", 10 ** 400), r"'step' is out of range"),
    ("iterations-10**400", lambda m: m["optimizer"].__setitem__("iterations", 10 ** 400), r"out of range"),
    ("lr-10**400", lambda m: m["optimizer"]["param_groups"][0].__setitem__("lr", 10 ** 400), r"lr is out of range"),
    ("float-1e400", lambda m: m["extra"].__setitem__("y", "HUGEFLOAT"), r"non-finite float"),
    ("nested-100k", lambda m: m["extra"].__setitem__("y", "NEST"), r"nested too deeply"),
    ("nested-200", lambda m: m["extra"].__setitem__("y", json.loads("[" * 200 + "]" * 200)), r"nested deeper than"),
    ("int-5000-digits", lambda m: m["extra"].__setitem__("y", "BIGINT"), r"not valid UTF-8 JSON"),
    ("schedule-garbage", lambda m: m["optimizer"]["param_groups"][0].__setitem__(
        "lr", {"__schedule__": {"class_name": "CosineDecay", "config": {"decay_steps": [[[]]]}}}),
     r"can't rebuild the schedule"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_corrupt_metadata_raises_checkpoint_error(tmp_path, name, fn, match):
    bad = _edit_meta(tmp_path, fn)
    if name in ("nested-100k", "int-5000-digits", "float-1e400"):  # not expressible through json.dumps of Python values
        members = _members(bad)
        doc = np.lib.format.read_array(io.BytesIO(members["__meta__.npy"])).tobytes()
        doc = doc.replace(b'"NEST"', b"[" * 100000 + b"]" * 100000).replace(b'"BIGINT"', b"9" * 5000)
        doc = doc.replace(b'"HUGEFLOAT"', b"1e400")
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(doc, np.uint8))
        members["__meta__.npy"] = buf.getvalue()
        _zip(bad, members)
    _refused(bad, match)


def _patch_headers(src, dst, local: int, central: int, value: int) -> None:
    """Set a 16-bit field of every local and central zip header (compression method, flags)."""
    raw = bytearray(src.read_bytes())
    for sig, off in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        i = -1
        while (i := raw.find(sig, i + 1)) >= 0:
            struct.pack_into("<H", raw, i + off, value)
    dst.write_bytes(bytes(raw))


def test_damaged_headers_and_zip_features_raise_checkpoint_error(tmp_path):
    members = _members(_good(tmp_path))
    cases = {
        "token": dict(members, **{"extra/0.npy": b"\x93NUMPY\x01\x00" + struct.pack("<H", 20) + b"{'descr': '<f4', (\n"}),
        "magic": dict(members, **{"extra/0.npy": b"\x93NUMPX\x01\x00" + bytes(60)}),
        "version": dict(members, **{"extra/0.npy": b"\x93NUMPY\x09\x00" + bytes(60)}),
        "structured": dict(members, **{"extra/0.npy": _npy_header([("a", "<f4")], (1,)) + bytes(4)}),
    }
    for name, m in cases.items():
        bad = tmp_path / f"{name}.npz"
        _zip(bad, m)
        _refused(bad, r"no valid .npy header|not a plain numeric dtype")
    bad = tmp_path / "method.npz"  # an unknown compression method: zipfile would raise NotImplementedError
    _zip(bad, members)
    _patch_headers(bad, bad, local=8, central=10, value=99)
    _refused(bad, r"is compressed \(method 99\)")
    enc = tmp_path / "encrypted.npz"  # the encryption flag: zipfile would raise RuntimeError
    _patch_headers(tmp_path / "token.npz", enc, local=6, central=8, value=1)
    _refused(enc, r"is encrypted")


def test_corrupt_first_byte_is_not_called_a_pickle(tmp_path):
    path = _good(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as e:
        C.load(path)
    assert "pickle" not in str(e.value) and "not a zip (.npz) archive" in str(e.value)


def test_every_bit_flip_and_truncation_is_refused_or_harmless(tmp_path):
    """200 damaged copies of one small checkpoint: a CheckpointError or a load that
    restores the same shapes; never another exception type."""
    good = _good(tmp_path).read_bytes()
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.npz"
    for k in range(200):
        raw = bytearray(good)
        if k % 4 == 0:
            raw = raw[: int(rng.integers(0, len(raw)))]
        else:
            i = int(rng.integers(0, len(raw)))
            raw[i] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(bytes(raw))
        opt, p = _target()
        try:
            C.load(bad, opt, params=p)
        except CheckpointError:
            pass


# ------------------------------------------------------------- item 8: stale temporaries
def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_save_removes_temporaries_of_dead_processes_only(tmp_path):
    target = tmp_path / "ckpt.npz"
    dead = tmp_path / f".ckpt.npz.{_dead_pid()}.0123456789ab.tmp"
    live = tmp_path / f".ckpt.npz.{os.getppid()}.0123456789ab.tmp"      # a running process's save
    mine = tmp_path / f".ckpt.npz.{os.getpid()}.0123456789ab.tmp"       # another thread of ours
    other = tmp_path / f".other.npz.{_dead_pid()}.0123456789ab.tmp"     # another target's
    for f in (dead, live, mine, other):
        f.write_bytes(b"partial")
    C.save(target, None, extra={"a": 1})
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt.npz", live.name, mine.name, other.name])


_KILLED_SAVER = """
import sys, numpy as np, fusedoptim as fo
p = np.zeros(4_000_000, np.float32)
opt = fo.SGD([p], lr=0.1, momentum=0.9)
opt.step([np.ones_like(p)])
print("ready", flush=True)
while True:
    fo.save(sys.argv[1], opt, params=[p])
"""


def test_sigkill_mid_save_then_next_save_cleans_up(tmp_path):
    target = tmp_path / "big.npz"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVER, str(target)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        while not any(n.endswith(".tmp") for n in os.listdir(tmp_path)):
            assert time.monotonic() < deadline, "the child never started a save"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    left = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert left and all(f".{proc.pid}." in n for n in left)  # the crash leaves its temporary file
    C.save(target, None, extra={"after": True})
    assert os.listdir(tmp_path) == ["big.npz"]
    assert C.load(target)["extra"] == {"after": True}
