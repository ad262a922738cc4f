"""Smoke test of the benchmark report (``python -m fusedoptim.bench``): tiny sizes, one or
two samples, the JSON is complete and valid.  No timing is asserted, ever."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from fusedoptim import bench as fb

# tiny everything: the point is that every code path runs and reports
TINY = ["--workloads", "3x50,1x1", "--repeat", "2", "--warmup", "1", "--min-time", "0",
        "--roofline-sizes", "1K"]


def _finite_pos(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.parametrize("key", list(fb.OPTIMIZERS))
def test_naive_numpy_matches_fusedoptim(key):
    """The NumPy baseline does the same update as fusedoptim (else the speedups lie).
    8 steps cover RAdam's switch to the rectified update (rho_t > 5 from step 6)."""
    cfg = fb.OPTIMIZERS[key]
    params, grads = fb.make_data(fb.parse_workload("f64-3x37"), seed=1)
    a = [p.copy() for p in params]
    b = [p.copy() for p in params]
    opt = cfg.cls(a, **cfg.kwargs)
    naive = fb.NaiveNumPy(cfg.naive, b, opt.param_groups[0])
    for _ in range(8):
        opt.step(grads)
        naive.step(grads)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
    assert all(not g.flags.writeable for g in grads)   # nobody may write the shared grads


def test_parse_workload():
    assert fb.parse_workload("1x1M").shapes == ((1 << 20,),)
    assert fb.parse_workload("1x1").n_elements == 1
    assert fb.parse_workload("1x16M").n_elements == 1 << 24
    wl = fb.parse_workload("100x10K")
    assert (wl.n_tensors, wl.n_elements) == (100, 1_024_000)
    assert fb.parse_workload("200x327").n_elements == 65_400
    assert fb.parse_workload("f64-1x1M").dtype == "float64"
    model = fb.parse_workload("gpt-4L-d256")
    assert 1_000_000 <= model.n_elements <= 5_000_000 and model.n_tensors > 10
    assert set(fb.WORKLOADS) >= {"1x1M", "1x16M", "100x10K", "200x327", "f64-1x1M", "1x1"}
    for bad in ("", "x5", "3x", "0x5", "2x3G", "f16-1x1"):
        with pytest.raises(ValueError):
            fb.parse_workload(bad)


def _check_report(d, optimizers, workloads, torch_expected):
    assert d["schema"] == "fusedoptim.bench/1"
    m = d["machine"]
    for key in ("cpu_model", "cpu_count", "numpy", "torch", "fusedoptim_threads", "simd", "platform"):
        assert key in m
    assert m["numpy"] == np.__version__
    assert (m["torch"] is not None) == torch_expected
    assert d["config"]["threads"] == m["fusedoptim_threads"] >= 1
    assert {r["k"] for r in d["roofline"]} == {2, 3, 4, 5, 6}
    assert all(_finite_pos(r["gb_s"]) for r in d["roofline"])
    assert [(r["optimizer"], r["workload"]) for r in d["results"]] == \
        [(o, w) for w in workloads for o in optimizers]
    for r in d["results"]:
        assert r["k"] == 2 + {"sgd": 0, "adam": 2, "adam-amsgrad": 3, "nadam": 2}[r["optimizer"]]
        wl = fb.parse_workload(r["workload"])
        assert r["bytes_per_step"] == wl.itemsize * (2 * r["k"] - 1) * wl.n_elements
        for key in ("step_s", "gelem_s", "gb_s", "roofline_gb_s", "pct_roofline", "speedup_vs_numpy"):
            assert _finite_pos(r[key]), (key, r)
        for name in ("fusedoptim", "stream", "numpy"):
            c = r["contenders"][name]
            assert len(c["samples_s"]) == d["config"]["repeat"]
            assert c["min_s"] <= c["median_s"] <= c["max_s"]
        fused = fb.OPTIMIZERS[r["optimizer"]].torch_fused
        assert ("torch_foreach" in r["contenders"]) == torch_expected
        assert ("torch_fused" in r["contenders"]) == (torch_expected and fused)
        assert (r["speedup_vs_torch_fused"] is not None) == (torch_expected and fused)


def test_cli_json_without_torch(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)      # import torch -> ImportError
    out = tmp_path / "r.json"
    assert fb.main(["--optimizers", "sgd,adam-amsgrad"] + TINY + ["--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "== 3x50: 3 tensors, 150 float32 elements ==" in text and "%roof" in text
    d = json.loads(out.read_text())
    _check_report(d, ["sgd", "adam-amsgrad"], ["3x50", "1x1"], torch_expected=False)
    assert d["results"][0]["skipped"]["torch_foreach"] == "torch not importable"


def test_cli_json_with_torch(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    saved = torch.get_num_threads()
    out = tmp_path / "r.json"
    try:
        assert fb.main(["--optimizers", "adam,nadam", "--threads", "1"] + TINY + ["--json", str(out)]) == 0
    finally:
        torch.set_num_threads(saved)
        fb._kernels.set_num_threads(0)
    d = json.loads(out.read_text())
    _check_report(d, ["adam", "nadam"], ["3x50", "1x1"], torch_expected=True)
    assert d["config"]["threads"] == d["config"]["torch_threads"] == 1
    assert "torch.set_num_threads(1)" in capsys.readouterr().out


def test_memory_check_figures():
    m = fb.memory_check(steps=3, n_tensors=4, size=5)
    assert m["steps"] == 3 and m["iterations_after"] == 4      # one state-allocating step + 3
    for key in ("tracemalloc_current_delta", "tracemalloc_peak_delta", "tracemalloc_overhead",
                "rss_before", "rss_after", "rss_delta"):
        assert key in m


def test_module_entry_point_lists():
    r = subprocess.run([sys.executable, "-m", "fusedoptim.bench", "--list"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for name in list(fb.OPTIMIZERS) + list(fb.WORKLOADS):
        assert name in r.stdout


def test_bad_arguments():
    with pytest.raises(SystemExit):
        fb.main(["--optimizers", "adamm"])
    with pytest.raises(SystemExit):
        fb.main(["--workloads", "1xQ"])
