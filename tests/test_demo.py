"""``fusedoptim demo``: the IDX reader, the digits/MNIST comparison end to end (in-process
and as ``python -m fusedoptim``), the toy2d mode, schedules and clipping wiring, and the
messages for missing packages and bad options.

The demo runs use ``--quick`` (8 epochs of digits: a few seconds of training for every
optimizer), so the tests stay fast on two shared cores; nothing asserts timings.
"""
import gzip
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import fusedoptim
from fusedoptim.__main__ import main
from fusedoptim.demo import _util, choices, data, train
from fusedoptim.demo._util import DemoError

HAVE_SKLEARN = _util.optional("sklearn.datasets") is not None
HAVE_MPL = _util.optional("matplotlib") is not None
needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn not installed (pip install 'fusedoptim[demo]')")
needs_mpl = pytest.mark.skipif(not HAVE_MPL, reason="matplotlib not installed (pip install 'fusedoptim[demo]')")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = [s.label for s in train.OPTIMIZERS.values()]
# every optimizer class fusedoptim exports (Muon, LBFGS and Lookahead included), found
# independently of the demo's list
EXPORTED = sorted(n for n in fusedoptim.optim.__all__ if isinstance(getattr(fusedoptim.optim, n), type))


def load_strict_json(path):
    """json.load that rejects NaN/Infinity, which strict JSON parsers refuse."""
    def bad(c):
        raise ValueError(f"non-standard JSON constant {c}")
    with open(path, encoding="utf-8") as f:
        return json.load(f, parse_constant=bad)


def assert_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    assert os.path.getsize(path) > 10_000


# -------------------------------------------------------------------------------- IDX
IDX_DTYPES = ["u1", "i1", ">i2", ">i4", ">f4", ">f8"]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("dtype", IDX_DTYPES)
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (0, 28, 28)], ids=lambda s: "x".join(map(str, s)))
def test_idx_round_trip(tmp_path, dtype, shape, compress):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal(shape) * 50).astype(np.dtype(dtype).newbyteorder("="))
    path = str(tmp_path / ("a.idx" + (".gz" if compress else "")))
    data.write_idx(path, arr)
    back = data.read_idx(path)
    assert back.dtype == arr.dtype and back.dtype.isnative and back.shape == shape
    np.testing.assert_array_equal(back, arr)


def test_idx_reads_the_format_byte_for_byte(tmp_path):
    """A file written by hand from the format description, not by write_idx."""
    raw = (bytes([0, 0, 0x08, 3]) + (2).to_bytes(4, "big") + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
           + bytes(range(12)))
    (tmp_path / "u8").write_bytes(raw)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / "u8")), np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
    raw = bytes([0, 0, 0x0B, 1]) + (2).to_bytes(4, "big") + (-2).to_bytes(2, "big", signed=True) + (258).to_bytes(2, "big")
    (tmp_path / "i16.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / "i16.gz")), [-2, 258])


@pytest.mark.parametrize("raw,match", [
    (b"", "bad magic"),
    (b"\x01\x00\x08\x01", "bad magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX data type"),
    (b"\x00\x00\x08\x02\x00\x00\x00\x02", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x04\x01\x02\x03", "file has 3"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "file has 2"),
], ids=["empty", "magic", "type", "header", "short-data", "long-data"])
def test_idx_rejects_bad_files(tmp_path, raw, match):
    (tmp_path / "bad").write_bytes(raw)
    with pytest.raises(DemoError, match=match):
        data.read_idx(str(tmp_path / "bad"))


def make_fake_mnist(directory, n_train=400, n_test=100, side=8, seed=0):
    """Four IDX files shaped like MNIST's: 10 learnable classes (one bright square per class)."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)

    def images(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, side, side)).astype(np.uint8)
        for i, c in enumerate(y):
            r, col = divmod(int(c), 4)
            x[i, 2 * r:2 * r + 2, 2 * col:2 * col + 2] = 255
        return x, y

    xtr, ytr = images(n_train)
    xte, yte = images(n_test)
    # the four spellings the loader accepts: plain, .gz, and the "train-images.idx3-ubyte" variant
    data.write_idx(os.path.join(directory, "train-images-idx3-ubyte.gz"), xtr)
    data.write_idx(os.path.join(directory, "train-labels-idx1-ubyte"), ytr)
    data.write_idx(os.path.join(directory, "t10k-images.idx3-ubyte"), xte)
    data.write_idx(os.path.join(directory, "t10k-labels.idx1-ubyte.gz"), yte)
    return xtr, ytr, xte, yte


def test_load_mnist_from_idx_files(tmp_path):
    xtr, ytr, xte, yte = make_fake_mnist(str(tmp_path))
    ds = data.load_mnist(str(tmp_path))
    assert ds.x_train.shape == (400, 64) and ds.x_test.shape == (100, 64)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_allclose(ds.x_train * 255, xtr.reshape(400, -1), atol=1e-4)
    np.testing.assert_array_equal(ds.y_test, yte)
    assert ds.n_classes == 10 and 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0


def test_load_mnist_names_missing_files(tmp_path):
    make_fake_mnist(str(tmp_path))
    os.remove(tmp_path / "t10k-labels.idx1-ubyte.gz")
    with pytest.raises(DemoError, match="missing t10k-labels-idx1-ubyte"):
        data.load_mnist(str(tmp_path))
    with pytest.raises(DemoError, match="no such directory"):
        data.load_mnist(str(tmp_path / "nope"))


def test_make_toy2d_is_seeded_and_noisy():
    x, y = data.make_toy2d(300, seed=0)
    x2, y2 = data.make_toy2d(300, seed=0)
    np.testing.assert_array_equal(x, x2)
    assert x.shape == (300, 2) and y.shape == (300, 1) and x.dtype == y.dtype == np.float32
    inside = (x ** 2).sum(1) < 2
    agree = np.mean(inside == (y[:, 0] > 0.5))
    assert 0.8 < agree < 1.0                       # mostly the circle, some labels flipped by noise
    _, y0 = data.make_toy2d(300, seed=0, noise=0.0)
    np.testing.assert_array_equal(y0[:, 0] > 0.5, inside)


# ------------------------------------------------------------------------ demo (digits)
@needs_sklearn
def test_demo_quick_in_process(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "optimizer" in stdout and "step s" in stdout and "epochs to 0.95" in stdout
    for label in LABELS:
        assert f"\n{label} " in stdout
    assert "left out of this comparison" not in stdout        # every built-in optimizer runs
    doc = load_strict_json(out / "demo_digits.json")
    assert doc["config"]["dataset"] == "digits" and doc["config"]["epochs"] == 8
    runs = {r["optimizer"]: r for r in doc["runs"]}
    assert list(runs) == list(train.OPTIMIZERS)
    for r in runs.values():
        assert len(r["history"]["test_acc"]) == 9            # epoch 0 (the initial model) + 8
        assert 0 <= r["step_s"] <= r["train_s"] <= r["wall_s"]
        assert r["steps"] == 8 * math.ceil(doc["config"]["n_train"] / 32)
    # same initialization and data for every optimizer: identical epoch-0 numbers
    assert len({(r["history"]["test_loss"][0], r["history"]["train_loss"][0]) for r in runs.values()}) == 1
    assert runs["adam"]["final"]["test_acc"] > 0.85
    assert runs["adam"]["epochs_to_target"] is None or 1 <= runs["adam"]["epochs_to_target"] <= 8
    # every optimizer learns with its demo learning rate (10 classes: chance is 0.1)
    for key, r in runs.items():
        assert not r["diverged"] and r["final"]["test_acc"] > 0.8, (key, r["lr"], r["final"])
    # the table lists the runs in the ranking's order and ends with the summary line
    rows = stdout.split("\n------------")[1].split("\n")[1:len(runs) + 2]
    labels = [r["label"] for r in runs.values()]
    assert [next(lab for lab in sorted(labels, key=len, reverse=True) if row.startswith(lab + " "))
            for row in rows[:-1]] == [runs[k]["label"] for k in doc["ranking"]]
    assert rows[-1].startswith("fewest epochs to 0.95: ")
    best = max(r["final"]["test_acc"] for r in runs.values())
    assert doc["summary"]["best_final_test_acc"]["test_acc"] == best
    assert f"best final test accuracy: " in rows[-1] and f"({best:.4f})" in rows[-1]
    if HAVE_MPL:
        assert_png(out / "demo_digits.png")


@needs_sklearn
def test_demo_quick_subprocess(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONWARNINGS="error::RuntimeWarning")
    proc = subprocess.run([sys.executable, "-m", "fusedoptim", "demo", "--quick", "--optimizers", "adam,sgd=0.05",
                           "--epochs", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Adam" in proc.stdout and "SGD" in proc.stdout and "wall s" in proc.stdout
    doc = load_strict_json(out / "demo_digits.json")
    assert [(r["optimizer"], r["lr"]) for r in doc["runs"]] == [("adam", 2e-3), ("sgd", 0.05)]
    if HAVE_MPL:
        assert_png(out / "demo_digits.png")


def test_demo_mnist_from_idx(tmp_path, capsys):
    make_fake_mnist(str(tmp_path / "mnist"))
    out = tmp_path / "out"
    assert main(["demo", "--mnist", str(tmp_path / "mnist"), "--quick", "--epochs", "3", "--hidden", "32",
                 "--optimizers", "adam,rmsprop", "--out", str(out), "--no-progress", "--target-acc", "0.5",
                 "--blas-threads", "0"]) == 0
    doc = load_strict_json(out / "demo_mnist.json")
    assert doc["config"]["sizes"] == [64, 32, 10] and doc["config"]["blas_note"] == "BLAS threads: library default"
    assert doc["runs"][0]["final"]["test_acc"] > 0.5          # the squares are easy to find
    assert "mnist: 400 train / 100 test" in capsys.readouterr().out


@needs_sklearn
def test_demo_divergence_is_reported_and_json_stays_valid(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["demo", "--optimizers", "sgd=1e30", "--epochs", "3", "--out", str(out),
                 "--no-progress", "--no-plot"]) == 0
    doc = load_strict_json(out / "demo_digits.json")
    run = doc["runs"][0]
    assert run["diverged"] and run["epochs_run"] < 3 and run["epochs_to_target"] is None
    assert run["final"]["train_loss"] is None                # NaN written as null
    assert "diverged" in capsys.readouterr().out


# ------------------------------------------------------- schedules and clipping wiring
def _stub_schedules():
    mod = types.ModuleType("fusedoptim.schedules")
    mod.calls = []

    class CosineDecay:
        def __init__(self, initial_learning_rate, decay_steps, alpha=0.0):
            mod.calls.append(("CosineDecay", initial_learning_rate, decay_steps))
            self.lr, self.steps = initial_learning_rate, decay_steps

        def __call__(self, step):
            t = min(step, self.steps) / self.steps
            return self.lr * 0.5 * (1 + math.cos(math.pi * t))

    class ExponentialDecay:
        def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False):
            mod.calls.append(("ExponentialDecay", initial_learning_rate, decay_steps, decay_rate))
            self.lr, self.steps, self.rate = initial_learning_rate, decay_steps, decay_rate

        def __call__(self, step):
            return self.lr * self.rate ** (step / self.steps)

    class PiecewiseConstantDecay:
        def __init__(self, boundaries, values):
            mod.calls.append(("PiecewiseConstantDecay", list(boundaries), list(values)))
            self.b, self.v = boundaries, values

        def __call__(self, step):
            return self.v[sum(step > b for b in self.b)]

    mod.CosineDecay, mod.ExponentialDecay, mod.PiecewiseConstantDecay = CosineDecay, ExponentialDecay, \
        PiecewiseConstantDecay
    return mod


def _stub_clip(grads, max_norm):
    total = math.sqrt(sum(float(np.dot(g.ravel().astype(np.float64), g.ravel())) for g in grads))
    if total > max_norm:
        for g in grads:
            g *= max_norm / (total + 1e-6)
    _stub_clip.calls += 1
    return total


@pytest.fixture
def lib_parts(monkeypatch):
    """The real fusedoptim.schedules / clip_grad_norm when they exist, else stubs with their API."""
    stubs = {}
    if _util.optional("fusedoptim.schedules") is None:
        stubs["schedules"] = _stub_schedules()
        monkeypatch.setitem(sys.modules, "fusedoptim.schedules", stubs["schedules"])
    try:
        _util.clip_function()
    except DemoError:
        _stub_clip.calls = 0
        stubs["clip"] = _stub_clip
        monkeypatch.setattr(fusedoptim, "clip_grad_norm", _stub_clip, raising=False)
    return stubs


@pytest.mark.parametrize("schedule", ["cosine", "exponential", "step"])
def test_demo_schedule_and_clip(tmp_path, lib_parts, schedule):
    make_fake_mnist(str(tmp_path / "mnist"), n_train=128, n_test=64)
    out = tmp_path / "out"
    assert main(["demo", "--mnist", str(tmp_path / "mnist"), "--epochs", "2", "--batch-size", "32",
                 "--optimizers", "adam", "--schedule", schedule, "--clip-norm", "0.5", "--out", str(out),
                 "--no-progress", "--no-plot"]) == 0
    doc = load_strict_json(out / "demo_mnist.json")
    run = doc["runs"][0]
    assert doc["config"]["schedule"] == schedule and doc["config"]["clip_norm"] == 0.5
    norms = run["history"]["grad_norm"]
    lrs = run["history"]["lr"]
    assert lrs[0] == 2e-3 and lrs[-1] < 2e-3                    # the schedule decays
    assert norms[0] is None and all(v > 0 for v in norms[1:])
    if "schedules" in lib_parts:
        total = 2 * 4
        call = lib_parts["schedules"].calls[-1]
        name = call[0]
        assert (call[2][0] if schedule == "step" else call[1]) == 2e-3
        assert {"cosine": "CosineDecay", "exponential": "ExponentialDecay", "step": "PiecewiseConstantDecay"}[schedule] == name
        if schedule != "step":
            assert lib_parts["schedules"].calls[-1][2] == total
    if "clip" in lib_parts:
        assert _stub_clip.calls == 8


def test_make_schedule_none_is_the_float():
    assert _util.make_schedule("none", 0.1, 100) == 0.1


def test_missing_schedules_and_clip_are_clear(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "fusedoptim.schedules", None)
    assert main(["demo", "--schedule", "cosine", "--out", str(tmp_path)]) == 2
    assert "fusedoptim.schedules" in capsys.readouterr().err
    monkeypatch.delattr(fusedoptim, "clip_grad_norm", raising=False)
    monkeypatch.setitem(sys.modules, "fusedoptim.clip", None)
    assert main(["demo", "--clip-norm", "1", "--out", str(tmp_path)]) == 2
    assert "fusedoptim.clip_grad_norm" in capsys.readouterr().err


# ----------------------------------------------------------------------------- toy2d
def test_toy2d_quick(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["demo", "toy2d", "--quick", "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "without L2" in stdout and "L2 0.03" in stdout
    doc = load_strict_json(out / "toy2d.json")
    plain, l2 = doc["runs"]
    assert plain["weight_decay"] == 0 and l2["weight_decay"] == 0.03
    assert l2["weight_sq_norm"] < plain["weight_sq_norm"]      # L2 shrinks the weights
    assert plain["train_acc"] > 0.8 and l2["train_acc"] > 0.8
    if HAVE_MPL:
        assert_png(out / "toy2d.png")


def test_toy2d_weight_decay_spares_biases():
    from fusedoptim.demo import toy2d
    x, y = data.make_toy2d(64, seed=0)
    r = toy2d.train_toy2d(x, y, x, y, lr=0.0, weight_decay=0.5, epochs=1, show_progress=False)
    assert r["decayed"] == ["0.weight", "2.weight"]
    for p, q in zip(r["model"].params(), toy2d.build_model(0).params()):   # lr 0: nothing moves
        np.testing.assert_array_equal(p, q)
    assert toy2d.train_toy2d(x, y, x, y, weight_decay=0.0, epochs=1, show_progress=False)["decayed"] == []


# ------------------------------------------------------------- options and messages
def test_parse_optimizers():
    pairs = train.parse_optimizers("adam=0.01, momentum ,sgd", None)
    assert [(s.key, lr) for s, lr in pairs] == [("adam", 0.01), ("sgdm", 0.02), ("sgd", 0.1)]
    assert len(train.parse_optimizers("all", 0.5)) == len(EXPORTED) + 1      # + SGD with momentum
    assert {lr for _, lr in train.parse_optimizers("all", 0.5)} == {0.5}
    with pytest.raises(DemoError, match="unknown optimizer 'nosuchopt'.*adam"):
        train.parse_optimizers("adam,nosuchopt", None)
    with pytest.raises(DemoError, match="not a learning rate"):
        train.parse_optimizers("adam=fast", None)


def test_every_exported_optimizer_is_in_the_demo():
    """The demo's list is every optimizer class fusedoptim exports (Lion, Rprop and ASGD
    were missing from a hand-written list once; Muon, LBFGS and Lookahead from the
    __all__-based one), each under its lower-case name."""
    specs = train.OPTIMIZERS
    assert sorted(s.cls for s in specs.values() if s.key != "sgdm") == EXPORTED
    assert all(name.lower() in specs for name in EXPORTED)
    assert {"muon", "lbfgs", "lookahead"} <= set(specs)
    assert specs["lookahead"].inner.key == "adam" and specs["lookahead"].label == "Lookahead(Adam)"
    pairs = train.parse_optimizers("lion,rprop,asgd=0.05", None)
    assert [(s.cls, lr) for s, lr in pairs] == [("Lion", choices.DEMO_LR["Lion"]), ("Rprop", choices.DEMO_LR["Rprop"]),
                                                 ("ASGD", 0.05)]


class _SignSGD(fusedoptim.Optimizer):
    """A NumPy optimizer standing in for one added to the package later."""
    buffers = ()

    def __init__(self, params=None, lr=0.25):
        super().__init__(params, dict(lr=lr))

    def update(self, param, grad, state, group):
        param -= group["lr"] * np.sign(grad)


class _ClosureOnly(_SignSGD):
    """An optimizer whose step takes something the comparison cannot give (a closure)."""

    def step(self, closure):
        raise TypeError("step() takes a closure, not gradients")


def _register(monkeypatch, **classes):
    from fusedoptim import optim
    for name, cls in classes.items():
        monkeypatch.setattr(optim, name, cls, raising=False)
    monkeypatch.setattr(optim, "__all__", list(optim.__all__) + list(classes))


def test_an_optimizer_added_to_the_package_joins_the_demo(monkeypatch):
    """Found from fusedoptim.optim.__all__; not in DEMO_LR, so it runs with its own default lr."""
    _register(monkeypatch, SignSGD=_SignSGD)
    specs = choices.demo_optimizers()
    assert specs["signsgd"] == choices.OptSpec("signsgd", "SignSGD", "SignSGD", 0.25, {})
    assert list(specs)[-1] == "signsgd" and "lion" in specs
    monkeypatch.setattr(fusedoptim, "SignSGD", _SignSGD, raising=False)    # OptSpec.build looks it up there
    w = np.ones(3, np.float32)
    specs["signsgd"].build([w], 0.5).step([np.array([1, -1, 0], np.float32)])
    np.testing.assert_array_equal(w, [0.5, 1.5, 1.0])


def test_the_lr_table_and_its_fallback(monkeypatch):
    specs = choices.demo_optimizers()
    for name, lr in choices.DEMO_LR.items():
        assert specs[name.lower()].lr == lr
    monkeypatch.delitem(choices.DEMO_LR, "Lion")
    assert choices.demo_optimizers()["lion"].lr == 1e-4                   # fo.Lion's default lr


def test_an_optimizer_the_demo_cannot_drive(monkeypatch):
    """`all` leaves it out with the reason; naming it is an error with the reason."""
    _register(monkeypatch, ClosureOnly=_ClosureOnly)
    monkeypatch.setattr(fusedoptim, "ClosureOnly", _ClosureOnly, raising=False)
    monkeypatch.setattr(train, "OPTIMIZERS", choices.demo_optimizers())
    skipped = []
    keys = [s.key for s, _ in train.parse_optimizers("all", None, skipped)]
    assert "closureonly" not in keys and "lion" in keys
    assert skipped == [("ClosureOnly", "TypeError: step() takes a closure, not gradients")]
    with pytest.raises(DemoError, match="ClosureOnly cannot run in this comparison.*takes a closure"):
        train.parse_optimizers("closureonly", None)


def _result(label, epochs, t, acc, diverged=False):
    return {"optimizer": label.lower(), "label": label, "lr": 0.1, "wall_s": 1.0, "train_s": 1.0, "step_s": 0.1,
            "diverged": diverged, "epochs_to_target": epochs, "time_to_target_s": t,
            "final": {"train_acc": acc, "test_acc": acc, "train_loss": 0.1, "test_loss": 0.1},
            "history": {"epoch": [0, 1, 2], "time_s": [0.0, 0.5, 1.0], "train_loss": [2.3, 0.5, 0.2],
                        "test_loss": [2.3, 0.6, 0.3], "test_acc": [0.1, 0.9, acc]}}


def test_table_is_sorted_and_ends_with_the_summary():
    from fusedoptim.demo import report
    results = [_result("Slow", None, None, 0.93), _result("Div", None, None, float("nan"), diverged=True),
               _result("B", 3, 0.4, 0.97), _result("A", 3, 0.3, 0.96), _result("C", 2, 0.5, 0.97)]
    text = report.format_table(results, 0.95)
    lines = text.split("\n")
    assert [ln.split()[0] for ln in lines[2:7]] == ["C", "A", "B", "Slow", "Div"]
    assert lines[7] == ("fewest epochs to 0.95: C (2) | least training time to 0.95: A (0.30 s) | "
                        "best final test accuracy: B, C (0.9700)")
    s = report.summary(results, 0.95)
    assert s["best_final_test_acc"] == {"test_acc": 0.97, "optimizers": ["B", "C"]}
    none = report.format_summary([_result("Slow", None, None, 0.5)], 0.95)
    assert none == ("fewest epochs to 0.95: no run reached it | least training time to 0.95: no run reached it | "
                    "best final test accuracy: Slow (0.5000)")


@needs_mpl
def test_chart_labels_legend_target_and_styles():
    from fusedoptim.demo import report
    plt = _util.pyplot()
    results = [_result("Adam", 2, 0.5, 0.97), _result("AdamW", 2, 0.5, 0.97), _result("SGD", None, None, 0.92)]
    fig = report.curves_figure(plt, results, "t", target_acc=0.95)
    try:
        axes = fig.axes
        assert len(axes) == 4 and all(ax.get_ylabel() for ax in axes)               # y-axis labels
        assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in axes)  # one shared legend
        assert [t.get_text() for t in fig.legends[0].get_texts()] == ["Adam", "AdamW", "SGD", "target 0.95"]
        for ax in axes[2:]:                                                          # the accuracy panels
            target = [ln for ln in ax.get_lines() if ln.get_label() == "target 0.95"]
            assert len(target) == 1 and list(target[0].get_ydata()) == [0.95, 0.95]
            lo, hi = ax.get_ylim()
            assert lo < 0.1 and 0.97 < hi < 1                                       # epoch 0 (0.1) to the end
        for ax in axes:
            assert ax.get_xlim()[0] == 0                                            # the first epochs in view
            lines = {ln.get_label(): ln for ln in ax.get_lines()}
            a, w = lines["Adam"], lines["AdamW"]                                    # same curves, told apart
            assert a.get_color() != w.get_color() and a.get_linestyle() != w.get_linestyle()
    finally:
        plt.close(fig)


@pytest.mark.parametrize("argv,match", [
    (["demo", "--optimizers", "nosuchopt"], "unknown optimizer"),
    (["demo", "--target-acc", "2"], "--target-acc"),
    (["demo", "--lr", "nan"], "--lr"),
    (["demo", "--mnist", "/nonexistent/dir"], "no such directory"),
    (["demo", "toy2d", "--optimizer", "nosuchopt"], "unknown optimizer"),
    (["demo", "toy2d", "--weight-decay", "-1"], "--weight-decay"),
])
def test_bad_options_exit_2_with_a_message(argv, match, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    assert match in capsys.readouterr().err


def test_argparse_errors_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--epochs", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0 and "--clip-norm" in capsys.readouterr().out
    assert main([]) == 2 and "demo toy2d" in capsys.readouterr().out
    assert main(["--version"]) == 0 and fusedoptim.__version__ in capsys.readouterr().out
    assert main(["train"]) == 2 and "unknown command" in capsys.readouterr().err


def test_missing_sklearn_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "scikit-learn" in err and "pip install 'fusedoptim[demo]'" in err


def test_missing_matplotlib_still_writes_json(monkeypatch, capsys, tmp_path):
    make_fake_mnist(str(tmp_path / "mnist"), n_train=64, n_test=32)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert main(["demo", "--mnist", str(tmp_path / "mnist"), "--epochs", "1", "--optimizers", "sgd",
                 "--out", str(tmp_path / "out")]) == 0
    assert "pip install 'fusedoptim[demo]'" in capsys.readouterr().err
    assert os.path.exists(tmp_path / "out" / "demo_mnist.json")
    assert not os.path.exists(tmp_path / "out" / "demo_mnist.png")


def test_progress_bar_only_on_a_terminal(monkeypatch):
    class Tty:
        def isatty(self):
            return True

        def write(self, s):
            pass

        def flush(self):
            pass

    assert isinstance(_util.progress(3, "x", "epoch"), _util._NoBar)       # pytest captures stderr
    monkeypatch.setattr(sys, "stderr", Tty())
    bar = _util.progress(3, "x", "epoch")
    assert isinstance(bar, _util._NoBar) != HAVE_TQDM
    bar.update(1)
    bar.close()
    assert isinstance(_util.progress(3, "x", "epoch", enabled=False), _util._NoBar)


HAVE_TQDM = _util.optional("tqdm") is not None


# ------------------------------------------------- every registered optimizer trains
def _blobs(seed=0, n_train=240, n_test=60, features=12, classes=4):
    """A small learnable dataset (Gaussian blobs), so this runs without scikit-learn."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, features)).astype(np.float32) * 2
    def draw(n):
        y = rng.integers(0, classes, n)
        return (centers[y] + rng.standard_normal((n, features)).astype(np.float32)), y.astype(np.int64)
    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return data.Dataset("blobs", xtr, ytr, xte, yte, classes)


@pytest.mark.parametrize("key", list(train.OPTIMIZERS))
def test_every_registered_optimizer_trains(key):
    """The demo's training loop with every optimizer of the registry, driven as its entry
    says (gradients; Muon on the weight matrices with AdamW on the biases; LBFGS with a
    closure per mini-batch; Lookahead around Adam): a few tiny epochs, the full-pass train
    loss goes down (from the same start for all)."""
    spec = train.OPTIMIZERS[key]
    r = train.train_one(spec, spec.lr, _blobs(), hidden=(16,), epochs=4, batch_size=16, show_progress=False)
    start = r["history"]["train_loss"][0]                  # epoch 0: the initial model, a full pass
    assert not r["diverged"] and math.isfinite(r["final"]["train_loss"]), (key, r["final"])
    assert r["final"]["train_loss"] < 0.9 * start, (key, start, r["final"]["train_loss"])
    assert r["steps"] == 4 * math.ceil(240 / 16)


def test_matrix_only_optimizer_gets_the_fallback_for_biases():
    """Muon steps the weight matrices; the AdamW fallback steps the bias vectors."""
    spec = train.OPTIMIZERS["muon"]
    w, b = np.ones((4, 3), np.float32), np.zeros(3, np.float32)
    opt = spec.build([w, b], spec.lr)
    assert isinstance(opt.main, fusedoptim.Muon) and opt.main.params[0] is w
    assert isinstance(opt.fallback, fusedoptim.AdamW) and opt.fallback.params[0] is b
    gw, gb = np.full_like(w, 0.5), np.full_like(b, 0.5)
    ref_w, ref_b = w.copy(), b.copy()
    fusedoptim.Muon([ref_w], lr=spec.lr, **spec.kwargs).step([gw])
    fusedoptim.AdamW([ref_b], lr=choices.FALLBACK[1], **choices.FALLBACK[2]).step([gb])
    opt.step([gw, gb])
    np.testing.assert_array_equal(w, ref_w)
    np.testing.assert_array_equal(b, ref_b)
    assert opt.iterations == 1


def test_lbfgs_closure_sees_the_current_batch():
    """The demo's LBFGS closure recomputes loss and gradients at the parameters L-BFGS
    sets (it is called more than once per step with the line search)."""
    calls = []
    real = train._loss_and_grads

    def counting(*a):
        calls.append(1)
        return real(*a)

    spec = train.OPTIMIZERS["lbfgs"]
    import unittest.mock as um
    with um.patch.object(train, "_loss_and_grads", counting):
        r = train.train_one(spec, spec.lr, _blobs(), hidden=(8,), epochs=1, batch_size=64, show_progress=False)
    assert r["steps"] == 4 and len(calls) > r["steps"]


def test_lookahead_options(tmp_path, capsys):
    pairs = train.parse_optimizers("lookahead-sgd=0.05,lookahead", None)
    assert [(s.key, s.label, s.inner.key, lr) for s, lr in pairs] == [
        ("lookahead-sgd", "Lookahead(SGD)", "sgd", 0.05), ("lookahead", "Lookahead(Adam)", "adam", 2e-3)]
    opt = pairs[0][0].build([np.ones(3, np.float32)], 0.05)
    assert isinstance(opt, fusedoptim.Lookahead) and isinstance(opt.optimizer, fusedoptim.SGD)
    with pytest.raises(DemoError, match="unknown optimizer 'lookahead-nosuch'"):
        train.parse_optimizers("lookahead-nosuch", None)
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--lookahead", "0,0.5"])
    assert train.build_parser().parse_args(["--lookahead", "3,0.25"]).lookahead == (3, 0.25)
    assert train.build_parser().parse_args(["--lookahead", "4"]).lookahead == (4, 0.5)


def test_closure_optimizer_refuses_schedule_and_clip(tmp_path, capsys):
    spec = train.OPTIMIZERS["lbfgs"]
    with pytest.raises(DemoError, match="LBFGS: takes step\\(closure\\).*--schedule"):
        train.train_one(spec, 1.0, _blobs(), epochs=1, schedule="cosine", show_progress=False)
    assert train.unsupported(spec, "none", None, False) is None
    assert "--distributed" in train.unsupported(train.OPTIMIZERS["muon"], "none", None, True)
    assert train.unsupported(train.OPTIMIZERS["adam"], "cosine", 1.0, True) is None
    # from the command line: left out with the reason, the others run
    assert main(["demo", "--optimizers", "lbfgs,sgd", "--epochs", "1", "--clip-norm", "1", "--no-progress",
                 "--no-plot", "--out", str(tmp_path), "--mnist", str(_fake_mnist(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "note: LBFGS is left out of this comparison: takes step(closure)" in out and "[1/1] SGD" in out
    assert main(["demo", "--optimizers", "lbfgs", "--schedule", "cosine", "--no-progress", "--out", str(tmp_path)]) == 2
    assert "none of the optimizers can run with these options: LBFGS" in capsys.readouterr().err


def _fake_mnist(tmp_path):
    make_fake_mnist(str(tmp_path / "mnist"))
    return tmp_path / "mnist"


def test_readme_registry_snippet():
    import re
    text = open(os.path.join(os.path.dirname(__file__), os.pardir, "README.md"), encoding="utf-8").read()
    start = text.index("### The registry: `fusedoptim.optim.registry`")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README registry snippet", "exec"), scope)
    from fusedoptim.optim import registry
    entries = registry.entries()
    assert set(entries) == set(EXPORTED)
    assert {n for n, e in entries.items() if e.step_kind != "grads"} == {"LBFGS", "Lookahead"}
    assert {n for n, e in entries.items() if e.matrix_only} == {"Muon"}
    assert {n for n, e in entries.items() if e.weights_from_state} == {"Ftrl", "ScheduleFreeAdamW", "ScheduleFreeSGD"}
    assert "Muon" not in scope["any_shape"] and "Adam" in scope["any_shape"]
    with pytest.raises(KeyError, match="no optimizer 'Nope' in the registry"):
        registry.entry("Nope")
