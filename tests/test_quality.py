"""Low-precision state in the demo (``fusedoptim demo --state-dtype``) and the quality
benchmark (``python -m fusedoptim.bench.quality``): the plumbing, with a few epochs.

These check structure and real values (every state dtype runs from the same start, the
state arrays really are bfloat16 / uint8, the loss goes down, the summary's statistics
and spread verdicts are right on hand-made runs); whether bfloat16 and int8 state train
*as well as* float32 is the benchmark's question, answered by running it (bench/README.md),
not asserted here.
"""
import json
import math
import os

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim.__main__ import main
from fusedoptim.bench import quality
from fusedoptim.demo import _util, choices, report

HAVE_MPL = _util.optional("matplotlib") is not None
README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
# the demo's MLP 64-128-10: W1 64x128 = 8192 elements (>= min_8bit_size 4096), the rest
# (b1 128, W2 1280, b2 10) below it
DEMO_ELEMENTS, DEMO_BIG = 64 * 128 + 128 + 128 * 10 + 10, 64 * 128


def _needs(*modules):
    for m in modules:
        pytest.importorskip(m)


# ---------------------------------------------------------------- state_storage
def test_state_storage_counts_elements_by_the_dtype_of_their_state():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((80, 64)).astype(np.float32)      # 5120 elements
    b = np.zeros(64, np.float32)
    opt = fo.Adam([W, b], lr=1e-3, state_dtype="int8")
    opt.step([np.ones_like(W), np.ones_like(b)])
    assert opt.state[W]["exp_avg"].dtype == np.uint8
    assert report.state_storage(opt, [W, b]) == {"int8": 5120, "float32": 64}
    opt = fo.Adam([W, b], lr=1e-3, state_dtype="int8", min_8bit_size=0)
    opt.step([np.ones_like(W), np.ones_like(b)])
    assert report.state_storage(opt, [W, b]) == {"int8": 5184}
    opt = fo.SGD([W, b], lr=1e-3)                             # no momentum: no element-wise state
    opt.step([np.ones_like(W), np.ones_like(b)])
    assert report.state_storage(opt, [W, b]) == {"none": 5184}
    assert report.state_storage(object(), [W]) == {"unknown": 5120}
    assert report.storage_text({"int8": 3, "float32": 1}) == "int8 3 (75.0%), float32 1 (25.0%)"


def test_state_storage_sees_bfloat16():
    ml = pytest.importorskip("ml_dtypes")
    W = np.ones((10, 10), np.float32)
    opt = fo.Adam([W], lr=1e-3, state_dtype="bfloat16")
    opt.step([np.ones_like(W)])
    assert opt.state[W]["exp_avg"].dtype == np.dtype(ml.bfloat16)
    assert report.state_storage(opt, [W]) == {"bfloat16": 100}


def test_with_state_dtype_keys_labels_and_wrappers():
    adam = choices.demo_optimizers()["adam"]
    s = choices.with_state_dtype(adam, "int8", 0)
    assert (s.key, s.label, s.state_dtype) == ("adam@int8", "Adam [int8]", "int8")
    assert s.kwargs["min_8bit_size"] == 0 and s.lr == adam.lr
    f = choices.with_state_dtype(adam, "float32")
    assert "state_dtype" not in f.kwargs and f.state_dtype == "float32" and f.label == "Adam [float32]"
    la = choices.with_state_dtype(choices.lookahead(adam), "int8")
    assert la.inner.kwargs["state_dtype"] == "int8" and "min_8bit_size" not in la.inner.kwargs
    assert la.state_dtype == "int8" and la.label == "Lookahead(Adam) [int8]"
    assert choices.probe(la) is None


# ---------------------------------------------------------------- the demo
def test_demo_state_dtypes_side_by_side(tmp_path, capsys):
    _needs("sklearn", "ml_dtypes")
    out = tmp_path / "out"
    assert main(["demo", "--state-dtype", "float32,bfloat16,int8", "--epochs", "2", "--no-progress",
                 "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    doc = json.load(open(out / "demo_digits.json", encoding="utf-8"))
    runs = {r["state_dtype"]: r for r in doc["runs"]}
    assert [r["label"] for r in doc["runs"]] == ["Adam [float32]", "Adam [bfloat16]", "Adam [int8]"]
    assert doc["config"]["state_dtypes"] == ["float32", "bfloat16", "int8"]
    # the state really is stored in each dtype; int8 only for the tensor >= min_8bit_size
    assert runs["float32"]["state_storage"] == {"float32": DEMO_ELEMENTS}
    assert runs["bfloat16"]["state_storage"] == {"bfloat16": DEMO_ELEMENTS}
    assert runs["int8"]["state_storage"] == {"int8": DEMO_BIG, "float32": DEMO_ELEMENTS - DEMO_BIG}
    assert f"Adam [int8]: int8 {DEMO_BIG} (85.2%), float32 {DEMO_ELEMENTS - DEMO_BIG} (14.8%)" in stdout
    assert "min_8bit_size=4096" in stdout
    # the same start for every state dtype, and each one learns
    assert len({(r["history"]["test_loss"][0], r["history"]["train_loss"][0]) for r in runs.values()}) == 1
    for r in runs.values():
        h = r["history"]["test_loss"]
        assert len(h) == 3 and h[-1] < 0.7 * h[0], (r["label"], h)
        assert r["final"]["test_acc"] > 0.8
    # storage changes the numbers (a different run, not a relabelled float32 run)
    assert len({r["final"]["test_loss"] for r in runs.values()}) == 3
    # the table and the comparison line after it
    for label in ("Adam [float32]", "Adam [bfloat16]", "Adam [int8]"):
        assert f"\n{label} " in stdout
    f32, i8 = runs["float32"]["final"], runs["int8"]["final"]
    assert (f"int8 {i8['test_acc']:.4f} / {i8['test_loss']:.4f} ({i8['test_acc'] - f32['test_acc']:+.4f}, "
            f"loss {i8['test_loss'] - f32['test_loss']:+.4f} vs float32)") in stdout
    if HAVE_MPL:
        with open(out / "demo_digits.png", "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_demo_single_state_dtype_and_min_8bit_size(tmp_path, capsys):
    _needs("sklearn")
    assert main(["demo", "--state-dtype", "int8", "--min-8bit-size", "0", "--optimizers", "sgdm,lion",
                 "--epochs", "1", "--no-progress", "--no-plot", "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    doc = json.load(open(tmp_path / "demo_digits.json", encoding="utf-8"))
    assert [r["label"] for r in doc["runs"]] == ["SGD+momentum [int8]", "Lion [int8]"]
    for r in doc["runs"]:
        assert r["state_storage"] == {"int8": DEMO_ELEMENTS}
        assert r["history"]["test_loss"][-1] < r["history"]["test_loss"][0]
    assert doc["config"]["min_8bit_size"] == 0 and "min_8bit_size=0" in stdout
    assert "vs float32" not in stdout                         # nothing to compare with


def test_demo_state_dtype_refused_combinations_are_left_out(tmp_path, capsys):
    _needs("sklearn")
    # Adafactor keeps float32 state (its momentum stage); LBFGS has no state_dtype option
    assert main(["demo", "--state-dtype", "float32,int8", "--optimizers", "sgd,adafactor,lbfgs", "--epochs", "1",
                 "--no-progress", "--no-plot", "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    assert ("note: Adafactor [int8] is left out of this comparison: ValueError: state_dtype='int8' is not "
            "supported by Adafactor") in stdout
    assert "note: LBFGS [int8] is left out of this comparison: TypeError: " in stdout
    doc = json.load(open(tmp_path / "demo_digits.json", encoding="utf-8"))
    assert [r["label"] for r in doc["runs"]] == ["SGD [float32]", "SGD [int8]", "Adafactor [float32]",
                                                 "LBFGS [float32]"]
    assert doc["runs"][3]["state_storage"] == {"unknown": DEMO_ELEMENTS}  # LBFGS: one state dict of its own
    assert doc["runs"][1]["state_storage"] == {"none": DEMO_ELEMENTS}     # plain SGD keeps no state


@pytest.mark.parametrize("task_name,seed,min_8bit_size", [("digits", 0, 0), ("regression", 3, 4096)])
def test_adam_with_int8_state_does_not_blow_up(task_name, seed, min_8bit_size):
    """digits with every tensor 8-bit; the regression with the default min_8bit_size (its
    128x64 matrix 8-bit), seed 3: with a second moment allowed to read back as 0, 2 epochs
    took the test loss from ~2 to ~7 (Adam's m / (sqrt(v) + eps) with v = 0; q8.h now keeps
    a positive v at least the unsigned map's smallest code)."""
    if task_name == "digits":
        _needs("sklearn")
    task = quality.make_task(task_name)
    r = quality.train(task, "adam", "int8", seed=seed, epochs=2, min_8bit_size=min_8bit_size)
    assert "int8" in r["state_storage"]
    assert r["test_loss"] < 0.5 * r["curve"]["test_loss"][0]


@pytest.mark.parametrize("argv,match", [
    (["--state-dtype", "float16"], "--state-dtype: unknown state dtype 'float16'"),
    (["--state-dtype", ","], "--state-dtype is empty"),
    (["--state-dtype", "int8", "--min-8bit-size", "-1"], "--min-8bit-size must be >= 0"),
    (["--state-dtype", "int8", "--optimizers", "adafactor"], "none of the optimizers can run with these options: "
                                                        "Adafactor [int8]"),
])
def test_demo_state_dtype_bad_options(argv, match, tmp_path, capsys):
    assert main(["demo", *argv, "--epochs", "1", "--no-progress", "--out", str(tmp_path)]) == 2
    assert match in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "demo_digits.json")


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib not installed")
def test_state_dtype_figure_colours_by_optimizer_and_dashes_by_dtype():
    def run(label, dt):
        return {"label": f"{label} [{dt}]", "state_dtype": dt, "diverged": False, "epochs_to_target": None,
                "time_to_target_s": None, "final": {"test_acc": 0.9},
                "history": {"epoch": [0, 1], "time_s": [0, 1], "train_loss": [1, 0.5], "test_loss": [1, 0.6],
                            "test_acc": [0.1, 0.9]}}
    results = [run("Adam", "float32"), run("Adam", "int8"), run("SGD", "float32"), run("SGD", "int8")]
    plt = _util.pyplot()
    fig = report.curves_figure(plt, results, "t", by_state_dtype=True)
    try:
        lines = {ln.get_label(): ln for ln in fig.axes[1].get_lines()}
        assert lines["Adam [float32]"].get_color() == lines["Adam [int8]"].get_color()
        assert lines["Adam [float32]"].get_color() != lines["SGD [float32]"].get_color()
        assert lines["Adam [float32]"].get_linestyle() == lines["SGD [float32]"].get_linestyle() == "-"
        assert lines["Adam [int8]"].get_linestyle() != "-"
        assert fig.legends[0].get_title().get_text() == "optimizer [state dtype]"
    finally:
        plt.close(fig)
    fig = report.curves_figure(plt, results[:2], "t", by_state_dtype=True)    # one optimizer: colour by dtype
    try:
        lines = {ln.get_label(): ln for ln in fig.axes[1].get_lines()}
        assert lines["Adam [float32]"].get_color() != lines["Adam [int8]"].get_color()
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- the quality benchmark
@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16", "int8"])
def test_quality_regression_run_learns_with_each_state_dtype(state_dtype):
    if state_dtype == "bfloat16":
        _needs("ml_dtypes")
    task = quality.make_task("regression")
    r = quality.train(task, "adam", state_dtype, seed=0, epochs=2)
    n = sum(a * b + b for a, b in zip(task.sizes, task.sizes[1:]))
    # int8: the 128x64 matrix (>= min_8bit_size 4096); the others keep float32 state
    assert r["state_storage"] == ({"int8": 128 * 64, "float32": n - 128 * 64} if state_dtype == "int8"
                                  else {state_dtype: n})
    c = r["curve"]
    assert len(c["test_loss"]) == len(c["metric"]) == 3
    assert c["test_loss"][-1] < 0.5 * c["test_loss"][0]
    assert r["test_loss"] == c["test_loss"][-1] and math.isclose(r["metric"], 1 - r["test_loss"] / np.var(task.y_test),
                                                                 rel_tol=1e-6)
    assert 0.3 < r["metric"] < 1 and r["train_loss"] < c["train_loss"][0]


def test_quality_digits_and_sgdm():
    _needs("sklearn")
    task = quality.make_task("digits")
    assert task.sizes == [64, 128, 10] and task.epochs == 20 and quality.make_task("digits", long=True).epochs == 60
    r = quality.train(task, "sgdm", "int8", seed=0, epochs=2, min_8bit_size=4096)
    assert r["state_storage"] == {"int8": DEMO_BIG, "float32": DEMO_ELEMENTS - DEMO_BIG}
    assert r["label"] == "SGD+momentum" and r["metric"] > 0.8 and r["test_loss"] < 0.5 * r["curve"]["test_loss"][0]


def _fake(task, dt, seed, loss, metric):
    return {"task": task, "optimizer": "adam", "label": "Adam", "state_dtype": dt, "seed": seed, "epochs": 1,
            "train_loss": loss / 2, "test_loss": loss, "metric": metric, "curve": {}, "state_storage": {dt: 10}}


def test_summarize_statistics_and_spread_verdicts():
    f32 = [(0.10, 0.95), (0.12, 0.96), (0.14, 0.97)]
    bf = [(0.11, 0.96), (0.13, 0.955), (0.15, 0.97)]      # loss mean 0.13 in 0.10..0.14, one run outside
    i8 = [(0.20, 0.90), (0.22, 0.91), (0.13, 0.96)]       # loss mean 0.1833 outside, acc mean 0.9233 outside
    results = ([_fake("t", "float32", s, *v) for s, v in enumerate(f32)]
               + [_fake("t", "bfloat16", s, *v) for s, v in enumerate(bf)]
               + [_fake("t", "int8", s, *v) for s, v in enumerate(i8)])
    rows = quality.summarize(results)
    assert [r["state_dtype"] for r in rows] == ["float32", "bfloat16", "int8"]
    base, b, i = rows
    assert base["within"] is None and base["n"] == 3
    assert math.isclose(base["test_loss"]["mean"], 0.12) and math.isclose(base["test_loss"]["std"], 0.02)
    assert (base["test_loss"]["min"], base["test_loss"]["max"]) == (0.10, 0.14)
    assert math.isclose(base["train_loss"]["mean"], 0.06)
    assert b["within"] == {"train_loss": True, "test_loss": True, "metric": True}
    assert b["runs_within"] == {"train_loss": 2, "test_loss": 2, "metric": 3}
    assert i["within"] == {"train_loss": False, "test_loss": False, "metric": False}
    assert i["runs_within"] == {"train_loss": 1, "test_loss": 1, "metric": 1}
    text = quality.format_report(rows)
    assert "loss yes 2/3; acc yes 3/3" in text and "loss NO 1/3; acc NO 1/3" in text
    assert "0.1200 ± 0.0200" in text and "reference" in text
    assert "within the float32 spread (test loss and accuracy/R²): 1 of 2 low-precision configurations; " \
           "outside: t Adam int8" in text
    assert "t Adam int8: int8 10 (100.0%)" in text


def test_quality_cli_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "q.json", tmp_path / "q.png"
    argv = ["--tasks", "regression", "--optimizers", "lion", "--state-dtypes", "int8", "--seeds", "2",
            "--epochs", "1", "--json", str(js)] + (["--plot", str(png)] if HAVE_MPL else [])
    assert quality.main(argv) == 0
    out = capsys.readouterr().out
    assert "regression Lion         int8     seed 1:" in out and "4 runs in" in out
    doc = json.load(open(js, encoding="utf-8"))
    assert doc["config"]["spread"] == "float32 min..max over the seeds" and doc["config"]["min_8bit_size"] == 4096
    assert [(r["state_dtype"], r["seed"]) for r in doc["runs"]] == [("float32", 0), ("float32", 1), ("int8", 0),
                                                                    ("int8", 1)]
    assert [r["state_dtype"] for r in doc["summary"]] == ["float32", "int8"]
    assert doc["summary"][1]["test_loss"]["values"] == [r["test_loss"] for r in doc["runs"][2:]]
    if HAVE_MPL:
        with open(png, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        quality.main(["--state-dtypes", "float16"])
    with pytest.raises(SystemExit):
        quality.main(["--seeds", "0"])


def test_readme_quality_snippet(capsys):
    text = open(README, encoding="utf-8").read()
    section = text.split("### Does low-precision state train as well?", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    exec(compile(code, "README quality snippet", "exec"), {})
    out = capsys.readouterr().out
    assert "\nregression  Adam       int8    " in out and "in f32 spread" in out
