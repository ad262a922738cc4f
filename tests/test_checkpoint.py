"""Checkpoints: bit-exact resume, no pickle, atomic writes, validation before any change.

The resume tests run 50 steps, save, load into freshly built objects, run 50 more, and
compare with 100 uninterrupted steps bit for bit (params, every state buffer, group
hyperparameters, scheduler state).  50 steps cross the warmups, milestones and phase
changes of the schedules used, so a lost or shifted step count would show.
"""
import copy
import json
import os
import pickle
import stat
import zipfile

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import checkpoint as C
from fusedoptim import schedules as S
from fusedoptim.checkpoint import CheckpointError


# ----------------------------------------------------------------------- helpers
def make_params(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {"W": rng.standard_normal((7, 3)).astype(dtype), "b": rng.standard_normal(4099).astype(dtype)}


def grads_at(step, params):
    rng = np.random.default_rng(1000 + step)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def loss_at(step):
    return 1.0 / (1 + step // 8) + 0.01 * ((step * 7919) % 5)


def train(opt, scheds, params, start, stop):
    ps = list(params.values())
    for t in range(start, stop):
        opt.step(grads_at(t, ps))
        for s in scheds:
            s.step(loss_at(t)) if isinstance(s, S.ReduceLROnPlateau) else s.step()


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same_optimizer(o1, o2):
    sd1, sd2 = o1.state_dict(), o2.state_dict()
    assert sd1["kind"] == sd2["kind"] and sd1["iterations"] == sd2["iterations"]
    assert sd1["param_groups"] == sd2["param_groups"]
    assert sd1["state"].keys() == sd2["state"].keys()
    for i in sd1["state"]:
        s1, s2 = sd1["state"][i], sd2["state"][i]
        assert s1.keys() == s2.keys()
        for k in s1:
            if isinstance(s1[k], np.ndarray):
                assert same_bits(s1[k], s2[k]), (i, k)
            else:
                assert s1[k] == s2[k] and type(s1[k]) is type(s2[k]), (i, k)


def two_groups(cls, **kw):
    def build(ps):
        return cls([{"params": ps[:1]}, {"params": ps[1:], "lr": 3e-3, "weight_decay": 1e-2}], **kw)
    return build


# (id, build optimizer from [W, b], build schedulers from optimizer, lr for the fresh optimizer)
RESUME_CASES = [
    ("Adam", lambda ps: fo.Adam(ps, lr=1e-2), lambda o: [], None),
    ("Adam-keras-schedule", lambda ps: fo.Adam(ps, lr=S.CosineDecay(0.0, 60, warmup_target=1e-2, warmup_steps=10)),
     lambda o: [], 0.5),
    ("Adam-amsgrad-onecycle", lambda ps: fo.Adam(ps, lr=1e-2, amsgrad=True),
     lambda o: [S.OneCycleLR(o, max_lr=2e-2, total_steps=100)], None),
    ("Adam-cosine-scheduler", lambda ps: fo.Adam(ps, lr=1e-2), lambda o: [S.CosineAnnealingLR(o, T_max=30)], None),
    ("SGD-momentum", lambda ps: fo.SGD(ps, lr=0.05, momentum=0.9), lambda o: [], None),
    ("SGD-momentum-keras-schedule",
     lambda ps: fo.SGD(ps, lr=S.LinearWarmup(5, S.PiecewiseConstantDecay([30, 70], [0.05, 0.02, 0.01])),
                       momentum=0.9),
     lambda o: [], 0.5),
    ("SGD-nesterov-sequential", lambda ps: fo.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
     lambda o: [S.SequentialLR(o, [S.LinearLR(o, 0.1, 1.0, 10), S.CosineAnnealingLR(o, 80)], milestones=[10])],
     None),
    ("SGD-momentum-onecycle", lambda ps: fo.SGD(ps, lr=0.05, momentum=0.9),
     lambda o: [S.OneCycleLR(o, max_lr=0.1, total_steps=100, three_phase=True)], None),
    ("SGD-plateau-and-step", lambda ps: fo.SGD(ps, lr=0.05, momentum=0.5, dampening=0.5),
     lambda o: [S.StepLR(o, step_size=20, gamma=0.5), S.ReduceLROnPlateau(o, patience=3, factor=0.5)], None),
    ("NAdam-exponential", lambda ps: fo.NAdam(ps, lr=S.ExponentialDecay(2e-3, 10, 0.9)), lambda o: [], 1.0),
    ("AdamW-two-groups", two_groups(fo.AdamW, lr=1e-2), lambda o: [S.MultiStepLR(o, [20, 40, 60, 80])], None),
    ("RMSprop-centered-lambda", lambda ps: fo.RMSprop(ps, lr=1e-3, centered=True, momentum=0.5),
     lambda o: [S.LambdaLR(o, lambda e: 0.98 ** e)], None),
]


@pytest.mark.parametrize("name,build_opt,build_scheds,fresh_lr", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_resume_is_bit_exact(tmp_path, name, build_opt, build_scheds, fresh_lr):
    # uninterrupted reference: 100 steps
    ref_params = make_params()
    ref_opt = build_opt(list(ref_params.values()))
    ref_scheds = build_scheds(ref_opt)
    train(ref_opt, ref_scheds, ref_params, 0, 100)

    # 50 steps, save
    params = make_params()
    opt = build_opt(list(params.values()))
    scheds = build_scheds(opt)
    train(opt, scheds, params, 0, 50)
    path = tmp_path / "ckpt.npz"
    C.save(path, opt, params=params, extra={"step": 50, "note": name}, schedulers=scheds)
    del opt, scheds

    # fresh objects (garbage params; a different lr where the file must restore a schedule)
    new = {k: np.full_like(v, np.nan) for k, v in make_params().items()}
    opt2 = build_opt(list(new.values()))
    if fresh_lr is not None:
        for g in opt2.param_groups:
            g["lr"] = fresh_lr
    scheds2 = build_scheds(opt2)
    out = C.load(path, opt2, params=new, schedulers=scheds2)
    assert out["extra"] == {"step": 50, "note": name} and out["iterations"] == 50
    train(opt2, scheds2, new, 50, 100)

    for k in ref_params:
        assert same_bits(new[k], ref_params[k]), k
    assert_same_optimizer(opt2, ref_opt)
    for s2, s_ref in zip(scheds2, ref_scheds):
        assert s2.state_dict() == s_ref.state_dict()
    for g2, g_ref in zip(opt2.param_groups, ref_opt.param_groups):
        assert {k: v for k, v in g2.items() if k != "params"} == {k: v for k, v in g_ref.items() if k != "params"}


def test_float64_params_and_list_form(tmp_path):
    p = make_params(np.float64)
    ps = list(p.values())
    opt = fo.Adagrad(ps, lr=0.1)
    train(opt, [], p, 0, 7)
    C.save(tmp_path / "c", opt, params=ps)
    q = [np.zeros_like(a) for a in ps]
    opt2 = fo.Adagrad(q, lr=0.1)
    out = C.load(tmp_path / "c", opt2, params=q)
    assert all(same_bits(a, b) for a, b in zip(q, ps)) and isinstance(out["params"], list)
    assert_same_optimizer(opt2, opt)


def test_optimizer_without_steps_and_without_params(tmp_path):
    opt = fo.Adam([np.zeros(3, np.float32)], lr=S.OneCycle(0.1, 50))
    C.save(tmp_path / "c.npz", opt)
    opt2 = fo.Adam([np.ones(3, np.float32)], lr=0.1)
    out = C.load(tmp_path / "c.npz", opt2)
    assert out["params"] is None and out["extra"] == {} and opt2.iterations == 0 and len(opt2.state) == 0
    assert opt2.param_groups[0]["lr"] == S.OneCycle(0.1, 50)


def test_load_without_objects_returns_contents(tmp_path):
    params = make_params()
    opt = fo.SGD(list(params.values()), lr=0.1, momentum=0.9)
    sched = S.StepLR(opt, 3)
    train(opt, [sched], params, 0, 5)
    C.save(tmp_path / "c.npz", opt, params=params, schedulers=[sched], extra={"epoch": 5})
    out = C.load(tmp_path / "c.npz")
    # an optimizer without parameter names is written as version 2 (version 3 adds "names")
    assert out["optimizer_kind"] == "SGD" and out["iterations"] == 5 and out["version"] == 2
    assert out["optimizer"]["param_groups"][0]["lr"] == opt.param_groups[0]["lr"]
    assert same_bits(out["optimizer"]["state"][1]["momentum_buffer"], opt.state[params["b"]]["momentum_buffer"])
    assert list(out["params"]) == ["W", "b"] and same_bits(out["params"]["b"], params["b"])
    assert out["schedulers"] == [sched.state_dict()] and out["extra"] == {"epoch": 5}
    assert out["library_version"] == fo.__version__


def test_extra_round_trips_every_supported_type(tmp_path):
    extra = {
        "int": 3, "big": 2 ** 100, "float": 0.1, "neg0": -0.0, "inf": float("inf"), "ninf": -np.inf,
        "nan": float("nan"), "str": "pi ≈ 3.14", "none": None, "bool": True,
        "np_scalars": [np.float32(0.5), np.int64(7), np.bool_(False)],
        "tuple": (1, (2.5, "x")), "nested": {"a": [1, {"b": [None, 2.0]}]},
        "tag_lookalike": {"__array__": "not an array"}, "other_tag": {"__float__": 1},
        "arr_f32": np.arange(5, dtype=np.float32), "arr_i8": np.array([[-1, 2]], np.int8), "arr0d": np.array(3.5),
        "arr_bool": np.array([True, False]), "arr_c": np.array([1 + 2j]), "arr_empty": np.zeros((0, 3)),
        "in_list": [np.ones(2), {"deep": np.full(3, 7, np.uint16)}],
        "rng": np.random.default_rng(5).bit_generator.state,
    }
    C.save(tmp_path / "c.npz", None, extra=extra)
    got = C.load(tmp_path / "c.npz")["extra"]
    assert got.keys() == extra.keys()
    assert np.isnan(got.pop("nan")) and str(got["neg0"]) == "-0.0"
    assert got["np_scalars"] == [0.5, 7, False] and got["tuple"] == (1, (2.5, "x"))
    assert got["tag_lookalike"] == {"__array__": "not an array"} and got["other_tag"] == {"__float__": 1}
    for k in ("arr_f32", "arr_i8", "arr0d", "arr_bool", "arr_c", "arr_empty"):
        assert same_bits(got[k], extra[k]), k
    assert same_bits(got["in_list"][1]["deep"], extra["in_list"][1]["deep"])
    rng = np.random.default_rng()
    rng.bit_generator.state = got["rng"]
    assert rng.random() == np.random.default_rng(5).random()
    for k in ("int", "big", "float", "inf", "ninf", "str", "none", "bool", "nested"):
        assert got[k] == extra[k] and type(got[k]) is type(extra[k]), k


# ----------------------------------------------------------------------- format
def test_file_is_a_plain_npz_with_json_metadata(tmp_path):
    params = make_params()
    opt = fo.NAdam(list(params.values()), lr=S.LinearWarmup(3, S.CosineDecay(1e-3, 10)))
    sched_opt = fo.SGD([np.zeros(2)], lr=0.1)
    sched = S.ReduceLROnPlateau(sched_opt)  # best = inf: needs the __float__ tag
    train(opt, [], params, 0, 3)
    path = tmp_path / "c.npz"
    C.save(path, opt, params=params, extra={"a": np.arange(3)}, schedulers=[sched])
    assert zipfile.is_zipfile(path)
    assert all(n.endswith(".npy") for n in zipfile.ZipFile(path).namelist())
    with np.load(path, allow_pickle=False) as z:
        entries = {k: z[k] for k in z.files}
    assert all(a.dtype.kind in "biufc" for a in entries.values())
    meta_arr = entries["__meta__"]
    assert meta_arr.dtype == np.uint8 and meta_arr.ndim == 1
    meta = json.loads(meta_arr.tobytes().decode("utf-8"))  # standard JSON (no NaN/Infinity literals)
    assert meta["format"] == "fusedoptim.checkpoint" and meta["version"] == 2
    assert meta["arrays"] == {k: {"dtype": a.dtype.str, "shape": list(a.shape)}
                              for k, a in entries.items() if k != "__meta__"}
    om = meta["optimizer"]
    assert om["kind"] == "NAdam" and om["iterations"] == 3
    assert om["param_groups"][0]["lr"]["__schedule__"]["class_name"] == "LinearWarmup"
    assert om["param_groups"][0]["betas"] == {"__tuple__": [0.9, 0.999]}
    assert om["params"] == [{"shape": [7, 3], "dtype": "<f4"}, {"shape": [4099], "dtype": "<f4"}]
    st0 = om["state"]["0"]
    assert st0["step"] == 3 and isinstance(st0["mu_product"], float)
    assert st0["exp_avg"] == {"__array__": "optimizer/state/0/exp_avg"}
    assert same_bits(entries["optimizer/state/0/exp_avg"], opt.state[params["W"]]["exp_avg"])
    assert meta["params"] == {"kind": "dict", "names": ["W", "b"],
                              "arrays": [{"__array__": "params/0"}, {"__array__": "params/1"}]}
    assert meta["schedulers"][0]["kind"] == "ReduceLROnPlateau"
    assert meta["schedulers"][0]["state"]["best"] == {"__float__": "inf"}
    assert meta["extra"] == {"a": {"__array__": "extra/0"}}


class _Bomb:
    """Unpickling it creates a directory: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _entries(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _write(path, entries, **kw):
    with open(path, "wb") as f:
        np.savez(f, **entries, **kw)


def _good_checkpoint(tmp_path):
    params = make_params()
    opt = fo.Adam(list(params.values()), lr=1e-3)
    train(opt, [], params, 0, 2)
    path = tmp_path / "good.npz"
    C.save(path, opt, params=params, extra={"x": np.arange(3)})
    return path


@pytest.mark.parametrize("where", ["extra/0", "params/0", "__meta__", "new_entry"])
def test_pickled_object_array_is_refused_without_running_code(tmp_path, where):
    path = _good_checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    entries = _entries(path)
    entries[where] = np.array([_Bomb(marker), 1], dtype=object)
    evil = tmp_path / "evil.npz"
    _write(evil, entries, allow_pickle=True)
    params = make_params()
    opt = fo.Adam(list(params.values()), lr=1e-3)
    before = copy.deepcopy(params)
    with pytest.raises(CheckpointError, match="pickled Python object.*Nothing was unpickled"):
        C.load(evil, opt, params=params)
    assert not marker.exists()
    assert all(same_bits(params[k], before[k]) for k in params) and opt.iterations == 0
    # the bomb is live: numpy with allow_pickle=True would have run it
    with np.load(evil, allow_pickle=True) as z:
        z[where]
    assert marker.exists()


def test_raw_pickle_and_object_npy_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Bomb(marker)))
    with pytest.raises(CheckpointError, match="pickled"):
        C.load(raw)
    npy = tmp_path / "obj.npy"
    np.save(npy, np.array([_Bomb(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="pickled"):
        C.load(npy)
    assert not marker.exists()


def test_save_never_pickles(tmp_path):
    with pytest.raises(TypeError, match="dtype object"):
        C.save(tmp_path / "c.npz", None, extra={"a": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(TypeError, match="cannot store a set"):
        C.save(tmp_path / "c.npz", None, extra={"a": {1, 2}})
    with pytest.raises(TypeError, match="keys must be strings"):
        C.save(tmp_path / "c.npz", None, extra={1: 2})
    with pytest.raises(TypeError, match="extra must be a dict"):
        C.save(tmp_path / "c.npz", None, extra=[1, 2])
    opt = fo.SGD([np.zeros(2)], lr=lambda step: 0.1)
    with pytest.raises(TypeError, match="cannot store the callable"):
        C.save(tmp_path / "c.npz", opt)
    with pytest.raises(TypeError, match="params"):
        C.save(tmp_path / "c.npz", None, params={"a": [1.0, 2.0]})
    assert os.listdir(tmp_path) == []  # nothing written, not even a temp file


# ----------------------------------------------------------------------- atomic
def _v1(tmp_path):
    params = make_params()
    opt = fo.SGD(list(params.values()), lr=0.1, momentum=0.9)
    train(opt, [], params, 0, 3)
    path = tmp_path / "ckpt.npz"
    C.save(path, opt, params=params, extra={"version": 1})
    return path, opt, params


@pytest.mark.parametrize("exc", [OSError("No space left on device"), KeyboardInterrupt()], ids=["oserror", "ctrl-c"])
def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, exc):
    path, opt, params = _v1(tmp_path)
    old_bytes = path.read_bytes()
    real_savez = np.savez

    def half_then_crash(file, *args, **kwargs):
        import io
        buf = io.BytesIO()
        real_savez(buf, *args, **kwargs)
        file.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise exc

    monkeypatch.setattr(np, "savez", half_then_crash)
    train(opt, [], params, 3, 6)
    with pytest.raises(type(exc)):
        C.save(path, opt, params=params, extra={"version": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temp file left behind
    assert path.read_bytes() == old_bytes
    assert C.load(path)["extra"] == {"version": 1}


def test_failed_replace_keeps_previous_and_cleans_up(tmp_path, monkeypatch):
    path, opt, params = _v1(tmp_path)
    seen = []

    def broken_replace(src, dst):
        seen.append((os.fspath(src), os.fspath(dst)))
        raise PermissionError("nope")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(PermissionError):
        C.save(path, opt, params=params, extra={"version": 2})
    monkeypatch.undo()
    (src, dst), = seen
    assert os.path.dirname(src) == str(tmp_path) and dst == str(path)  # temp file in the same directory
    assert os.listdir(tmp_path) == ["ckpt.npz"] and C.load(path)["extra"] == {"version": 1}


def test_save_fsyncs_the_file_and_the_directory(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync

    def spy(fd):
        calls.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    C.save(tmp_path / "c.npz", None, extra={"a": 1})
    assert calls == [False, True]  # the data file first, then the directory after the rename


def test_overwrite_and_pathlike(tmp_path):
    path, opt, params = _v1(tmp_path)
    C.save(str(path), opt, extra={"version": 2})
    assert C.load(path)["extra"] == {"version": 2} and os.listdir(tmp_path) == ["ckpt.npz"]
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode & 0o600 == 0o600  # the umask decides, not a private temp-file mode
    with pytest.raises(FileNotFoundError):
        C.load(tmp_path / "missing.npz")


# ------------------------------------------------------------------- validation
def _target(dtype=np.float32, opt_cls=fo.Adam, shapes=None, groups=1, **kw):
    rng = np.random.default_rng(99)
    shapes = shapes or {"W": (7, 3), "b": (4099,)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    ps = list(params.values())
    if groups == 2:
        opt = opt_cls([{"params": ps[:1]}, {"params": ps[1:]}], lr=1e-3, **kw)
    else:
        opt = opt_cls(ps, lr=1e-3, **kw)
    scheds = [S.StepLR(opt, step_size=4, gamma=0.5)]
    train(opt, scheds, params, 0, 3)
    return opt, params, scheds


def _saved(tmp_path):
    opt, params, scheds = _target()
    train(opt, scheds, params, 3, 5)  # so the file differs from a fresh _target() in every value
    path = tmp_path / "c.npz"
    C.save(path, opt, params=params, schedulers=scheds, extra={"e": 1})
    return path


def _rewrite(src, dst, fn):
    entries = _entries(src)
    orig = entries["__meta__"]
    meta = json.loads(orig.tobytes().decode())
    fn(entries, meta)
    if "arrays" in meta:  # keep the file self-consistent: what fn put in is what the table declares
        meta["arrays"] = {k: {"dtype": a.dtype.str, "shape": list(a.shape)} for k, a in entries.items()
                          if k != "__meta__"}
    if entries.get("__meta__") is orig:  # (unless fn replaced or removed the entry itself)
        entries["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    _write(dst, entries)


def _set(path_keys, value):
    def fn(entries, meta):
        d = meta
        for k in path_keys[:-1]:
            d = d[k]
        d[path_keys[-1]] = value
    return fn


# (id, target builder kwargs or override, load kwargs transform, file rewrite, error match)
MISMATCH_CASES = [
    ("kind", dict(opt_cls=fo.SGD), None, r"holds an Adam optimizer, not SGD"),
    ("groups", dict(groups=2), None, r"has 1 param groups, this optimizer has 2"),
    ("nparams", dict(shapes={"W": (7, 3)}), None, r"optimizer has 2 parameters, this optimizer has 1"),
    ("shape", dict(shapes={"W": (3, 7), "b": (4099,)}), None,
     r"parameter 0: shape \(7, 3\) in the checkpoint, \(3, 7\)"),
    ("dtype", dict(dtype=np.float64), None, r"parameter 0: dtype float32 in the checkpoint, float64"),
    ("params-missing", {}, lambda kw: dict(kw, params={"W": kw["params"]["W"]}), r"missing \['b'\]"),
    ("params-unexpected", {}, lambda kw: dict(kw, params=dict(kw["params"], c=np.zeros(1, np.float32))),
     r"not in the checkpoint \['c'\]"),
    ("params-list", {}, lambda kw: dict(kw, params=list(kw["params"].values())), r"pass a dict"),
    ("params-shape", {}, lambda kw: dict(kw, params=dict(kw["params"], b=np.zeros(4098, np.float32))),
     r"params\['b'\]: shape \(4099,\) in the checkpoint, \(4098,\) given"),
    ("params-readonly", {}, lambda kw: dict(kw, params=dict(kw["params"], W=_readonly(kw["params"]["W"]))),
     r"read-only"),
    ("sched-count", {}, lambda kw: dict(kw, schedulers=kw["schedulers"] * 2), r"1 scheduler states, 2 schedulers"),
    ("sched-kind", {}, lambda kw: dict(kw, schedulers=[S.ExponentialLR(kw["optimizer"], 0.9)]),
     r"holds a StepLR, got an ExponentialLR"),
]


def _readonly(a):
    a = a.copy()
    a.flags.writeable = False
    return a


FILE_CASES = [
    ("format", _set(["format"], "something.else"), r"not a fusedoptim checkpoint \(format 'something.else'"),
    ("version", _set(["version"], 99), r"newer fusedoptim \(format version 99"),
    ("version-bad", _set(["version"], "1"), r"bad format version"),
    ("no-meta", lambda e, m: e.pop("__meta__"), r"no '__meta__' entry"),
    ("meta-dtype", lambda e, m: e.__setitem__("__meta__", np.zeros(3)), r"must be a 1-d uint8 array"),
    ("missing-array", lambda e, m: e.pop("optimizer/state/1/exp_avg"), r"doesn't have"),
    ("unexpected-entry", lambda e, m: e.__setitem__("junk", np.zeros(2)), r"entries the metadata doesn't mention"),
    ("state-shape", lambda e, m: e.__setitem__("optimizer/state/0/exp_avg", np.zeros((3, 7), np.float32)),
     r"'exp_avg' has shape \(3, 7\), the parameter has shape \(7, 3\)"),
    ("state-dtype", lambda e, m: e.__setitem__("optimizer/state/0/exp_avg", np.zeros((7, 3))),
     r"'exp_avg' has dtype float64"),
    ("state-index", _set(["optimizer", "state", "5"], {"step": 1}), r"entry for parameter '5'"),
    ("bad-lr", _set(["optimizer", "param_groups", 0, "lr"], -1.0), r"optimizer refused the checkpoint's state"),
    ("bad-schedule", _set(["optimizer", "param_groups", 0, "lr"], {"__schedule__": {"class_name": "Nope"}}),
     r"can't rebuild the schedule"),
    ("sched-state", _set(["schedulers", 0, "state", "gamma"], -1.0), r"schedulers\[0\] \(StepLR\).*gamma"),
    ("iterations", _set(["optimizer", "iterations"], -3), r"iterations must be a non-negative integer"),
    ("no-optimizer", lambda e, m: [_set(["optimizer"], None)(e, m)] + [e.pop(k) for k in list(e)
                                                                       if k.startswith("optimizer/")],
     r"holds no optimizer state"),
]


def _snapshot(opt, params, scheds):
    sd = opt.state_dict()
    return (copy.deepcopy(sd), {k: v.copy() for k, v in params.items()}, [s.state_dict() for s in scheds],
            [dict(g) for g in opt.param_groups])


def _assert_unchanged(snap, opt, params, scheds):
    sd, ps, ss, groups = snap
    now = opt.state_dict()
    assert now["iterations"] == sd["iterations"] and now["param_groups"] == sd["param_groups"]
    for i in sd["state"]:
        for k, v in sd["state"][i].items():
            assert same_bits(v, now["state"][i][k]) if isinstance(v, np.ndarray) else v == now["state"][i][k]
    assert all(same_bits(params[k], ps[k]) for k in ps)
    assert [s.state_dict() for s in scheds] == ss
    assert [dict(g) for g in opt.param_groups] == groups


@pytest.mark.parametrize("name,target_kw,load_kw,match", MISMATCH_CASES, ids=[c[0] for c in MISMATCH_CASES])
def test_load_validates_objects_before_changing_anything(tmp_path, name, target_kw, load_kw, match):
    path = _saved(tmp_path)
    opt, params, scheds = _target(**target_kw)
    kw = dict(optimizer=opt, params=params, schedulers=scheds)
    if load_kw is not None:
        kw = load_kw(kw)
    snap = _snapshot(opt, params, scheds)
    with pytest.raises(CheckpointError, match=match):
        C.load(path, **kw)
    _assert_unchanged(snap, opt, params, scheds)


@pytest.mark.parametrize("name,rewrite,match", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_load_validates_the_file_before_changing_anything(tmp_path, name, rewrite, match):
    bad = tmp_path / "bad.npz"
    _rewrite(_saved(tmp_path), bad, rewrite)
    opt, params, scheds = _target()
    snap = _snapshot(opt, params, scheds)
    with pytest.raises(CheckpointError, match=match):
        C.load(bad, opt, params=params, schedulers=scheds)
    _assert_unchanged(snap, opt, params, scheds)


@pytest.mark.parametrize("name,make", [
    ("truncated", lambda good: good.read_bytes()[: len(good.read_bytes()) // 2]),
    ("text", lambda good: b"hello, I am not a checkpoint\n"),
    ("empty", lambda good: b""),
    ("json-garbage", None),
    ("nan-literal", None),
])
def test_load_refuses_damaged_files(tmp_path, name, make):
    good = _saved(tmp_path)
    bad = tmp_path / "bad.npz"
    if make is not None:
        bad.write_bytes(make(good))
    else:
        doc = b"{not json" if name == "json-garbage" else b'{"format":"fusedoptim.checkpoint","version":NaN}'
        entries = _entries(good)
        entries["__meta__"] = np.frombuffer(doc, np.uint8)
        _write(bad, entries)
    opt, params, scheds = _target()
    snap = _snapshot(opt, params, scheds)
    with pytest.raises(CheckpointError):
        C.load(bad, opt, params=params, schedulers=scheds)
    _assert_unchanged(snap, opt, params, scheds)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
