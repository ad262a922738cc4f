"""The state codec (fusedoptim.codec): state_dict <-> (JSON metadata, arrays), used by
checkpoints, ZeRO shard files and the data-parallel broadcast.  Round trips go through
``json.dumps`` / ``json.loads`` so the metadata is proven to be plain JSON."""
import json

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import codec
from fusedoptim import schedules as S
from fusedoptim.codec import StateFormatError


def trained(cls=fo.Adam, steps=3, **kw):
    rng = np.random.default_rng(0)
    ps = [rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal(7).astype(np.float32)]
    opt = cls([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.02}], **kw)
    for t in range(steps):
        opt.step([np.full_like(p, 0.1 * (t + 1)) for p in ps])
    return opt


def fresh(cls=fo.Adam, **kw):
    ps = [np.zeros((5, 3), np.float32), np.zeros(7, np.float32)]
    return cls([{"params": ps[:1]}, {"params": ps[1:]}], **kw)


def through_json(meta):
    return json.loads(json.dumps(meta, allow_nan=False))


@pytest.mark.parametrize("cls,kw", [
    (fo.Adam, dict(lr=S.CosineDecay(1e-2, 50), betas=(0.8, 0.99), amsgrad=True)),
    (fo.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (fo.NAdam, dict(lr=1e-3)),
    (fo.Rprop, dict(lr=1e-2)),
], ids=["Adam-schedule-amsgrad", "SGD-nesterov", "NAdam", "Rprop"])
def test_round_trip_is_exact(cls, kw):
    opt = trained(cls, **kw)
    meta, arrays = codec.encode(opt)
    assert set(meta["arrays"]) == set(arrays) and all(k.startswith("optimizer/state/") for k in arrays)
    target = fresh(cls, **kw)
    sd = codec.decode(through_json(meta), arrays, target)
    target.load_state_dict(sd)
    a, b = opt.state_dict(), target.state_dict()
    assert a["param_groups"] == b["param_groups"] and a["iterations"] == b["iterations"] == 3
    for i in a["state"]:
        for k, v in a["state"][i].items():
            w = b["state"][i][k]
            assert (v.tobytes() == w.tobytes()) if isinstance(v, np.ndarray) else (v == w and type(v) is type(w))


def test_skip_callables_leaves_the_receivers_own():
    opt = trained(fo.SGD, lr=lambda it: 0.1)
    with pytest.raises(TypeError, match="callable"):
        codec.encode(opt)
    meta, arrays = codec.encode(opt, skip_callables=True)
    assert "lr" not in meta["param_groups"][0] and meta["param_groups"][1]["lr"] == 0.02
    mine = lambda it: 0.5  # noqa: E731
    target = fresh(fo.SGD, lr=mine)
    target.load_state_dict(codec.decode(through_json(meta), arrays, target))
    assert target.param_groups[0]["lr"] is mine and target.iterations == 3


def test_values_round_trip_with_tags():
    enc = codec.Encoder()
    v = {"t": (1, (2.5, "x")), "inf": float("-inf"), "nan": float("nan"), "a": np.arange(3),
         "look": {"__array__": "nope"}, "sched": S.ExponentialDecay(0.1, 10, 0.5)}
    doc = through_json(enc.value(v, "v", prefix="x/"))
    assert codec.array_refs(doc) == {"x/0"}  # the escaped look-alike is not a reference
    used = set()
    got = codec.decode_value(doc, enc.arrays, "v", used)
    assert used == {"x/0"} and got["t"] == (1, (2.5, "x")) and got["inf"] == -np.inf and np.isnan(got["nan"])
    assert got["look"] == {"__array__": "nope"} and got["sched"] == v["sched"]
    assert got["a"] is enc.arrays["x/0"]


def _deep(n):
    d = 0
    for _ in range(n):
        d = [d]
    return d


@pytest.mark.parametrize("name,mutate,match", [
    ("kind", lambda m, a: m.__setitem__("kind", "SGD"), r"holds an SGD optimizer, not Adam"),
    ("missing-array", lambda m, a: a.pop("optimizer/state/0/exp_avg"), r"is missing"),
    ("shape", lambda m, a: (a.__setitem__("optimizer/state/0/exp_avg", np.zeros((3, 5), np.float32)),
                            m["arrays"]["optimizer/state/0/exp_avg"].__setitem__("shape", [3, 5])),
     r"'exp_avg' has shape \(3, 5\)"),
    ("undeclared", lambda m, a: a.__setitem__("junk", np.zeros(1)), r"not referenced or not declared"),
    ("huge-step", lambda m, a: m["state"]["0"].__setitem__("step", 10 ** 400), r"'step' is out of range"),
    ("huge-iterations", lambda m, a: m.__setitem__("iterations", 10 ** 400), r"iterations is out of range"),
    ("huge-lr", lambda m, a: m["param_groups"][0].__setitem__("lr", 10 ** 400), r"lr is out of range"),
    ("bool-step", lambda m, a: m["state"]["0"].__setitem__("step", True), r"'step' must be an array or a number"),
    ("state-key", lambda m, a: m["state"].__setitem__("01", {}), r"entry for parameter '01'"),
    ("groups", lambda m, a: m["param_groups"].pop(), r"has 1 param groups, this optimizer has 2"),
    ("deep", lambda m, a: m["param_groups"][0].__setitem__("betas", _deep(codec.MAX_DEPTH + 5)), r"nested deeper"),
    ("table", lambda m, a: m["arrays"].__setitem__("x", {"dtype": "|O", "shape": []}), r"not a plain numeric"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_decode_refuses_bad_input_with_a_clear_error(name, mutate, match):
    meta, arrays = codec.encode(trained())
    meta = through_json(meta)
    mutate(meta, arrays)
    with pytest.raises(StateFormatError, match=match):
        codec.decode(meta, arrays, fresh())
