"""What a new user hits first (issue 15, sections 4, 5, 8 and the import side of 6): the learning rate actually
used, no silent adoption of unknown arrays by apply_gradients, and the small things
(messages, dir(fusedoptim), a README snippet that runs on its own)."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

import fusedoptim as fo
from fusedoptim import schedules

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


# ------------------------------------------------------------ get_last_lr
def test_get_last_lr_is_the_value_each_group_used():
    W, b = np.zeros(3), np.zeros(2)
    sched = schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    opt = fo.SGD([{"params": [W], "lr": sched}, {"params": [b], "lr": 0.01}])
    assert opt.get_last_lr() == [0.1, 0.01]                 # before the first step: what it will use
    for t in range(3):
        opt.step([np.ones(3), np.ones(2)])
        assert opt.get_last_lr() == [0.1 * 0.5 ** t, 0.01]
    np.testing.assert_allclose(W, -(0.1 + 0.05 + 0.025))
    opt.param_groups[1]["lr"] = 0.5                         # a change shows after the next step
    assert opt.get_last_lr()[1] == 0.01
    opt.step([None, np.ones(2)])
    assert opt.get_last_lr() == [0.1 * 0.5 ** 3, 0.5]


def test_get_last_lr_ignores_calls_that_apply_nothing():
    p = np.zeros(2)
    opt = fo.SGD([p], lr=lambda it: 1.0 / (it + 1), gradient_accumulation_steps=2)
    opt.step([np.ones(2)])                                  # accumulates only
    assert opt.get_last_lr() == [1.0] and not opt.last_step_applied
    opt.step([np.ones(2)])
    assert opt.get_last_lr() == [1.0] and opt.last_step_applied
    opt.step([np.ones(2)])
    opt.step([np.ones(2)])
    assert opt.get_last_lr() == [0.5]


# ------------------------------------------------------- no silent adoption
def test_apply_gradients_refuses_an_unknown_array_when_built_with_params():
    W, b = np.ones((2, 2)), np.ones(2)
    opt = fo.Adam([W, b], lr=0.1)
    stranger = np.ones(3)
    before = W.copy()
    with pytest.raises(ValueError, match=r"grads_and_vars\[1\]: the variable \(shape \(3,\), dtype float64\) is "
                                         r"not one of the optimizer's parameters"):
        opt.apply_gradients([(np.ones((2, 2)), W), (np.ones(3), stranger)])
    assert np.array_equal(W, before) and opt.iterations == 0 and len(opt.params) == 2
    opt.step([np.ones((2, 2)), np.ones(2)])                 # the optimizer is intact
    assert opt.iterations == 1


def test_keras_style_still_learns_its_variables():
    opt = fo.Adam(lr=0.1)
    v = np.ones(3)
    opt.apply_gradients([(np.ones(3), v)])
    w = np.ones(2)
    opt.apply_gradients([(np.ones(3), v), (np.ones(2), w)])
    assert [p.shape for p in opt.params] == [(3,), (2,)] and opt.state[w]["step"] == 1


# ------------------------------------------------------------ small things
def test_dir_lists_the_lazily_loaded_names():
    names = dir(fo)
    for n in ("save", "load", "schedules", "nn", "ParamArena", "Adam", "clip_grad_norm"):
        assert n in names


def test_a_torch_tensor_is_taken_in_place_and_one_that_requires_grad_gets_a_hint():
    """Section 6 replaced section 8's ``.numpy()`` hint: a CPU tensor is viewed zero-copy
    (more in test_torch_interop.py); one that requires grad is refused with the way out."""
    torch = pytest.importorskip("torch")
    p = np.zeros(3, np.float32)
    opt = fo.SGD([p], lr=0.1)
    opt.step([torch.ones(3)])
    assert np.allclose(p, -0.1)
    with pytest.raises(TypeError, match=r"requires grad; .*Pass t\.detach\(\) .*or use fusedoptim\.torch"):
        fo.SGD([torch.zeros(3, requires_grad=True)])


def test_importing_fusedoptim_never_imports_torch():
    """torch stays optional: a fresh interpreter that imports fusedoptim (and takes a step
    with its optimizers, the lazily loaded names included) has no torch module loaded."""
    import subprocess
    import sys
    code = ("import sys, numpy as np, fusedoptim as fo\n"
            "import fusedoptim.optim, fusedoptim._arrays, fusedoptim.schedules, fusedoptim.nn, fusedoptim.checkpoint\n"
            "p = np.zeros(3); fo.Adam([p]).step([np.ones(3)])\n"
            "fo.SGD([p]).step([memoryview(np.ones(3))])\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_checkpoint_messages_use_the_right_article(tmp_path):
    path = str(tmp_path / "c.npz")
    fo.save(path, fo.Adam([np.zeros(2)]))
    with pytest.raises(fo.checkpoint.CheckpointError, match=r"holds an Adam optimizer, not SGD"):
        fo.load(path, fo.SGD([np.zeros(2)]))
    with pytest.raises(TypeError, match=r"extra\['f'\]: cannot store the callable .*store plain data"):
        fo.save(path, fo.SGD([np.zeros(2)]), extra={"f": lambda x: x})
    from fusedoptim.codec import article
    assert [article(w) for w in ("Adam", "SGD", "RMSprop", "Lion", "StepLR", "ASGD")] == \
        ["an", "an", "an", "a", "a", "an"]


def test_readme_torch_scheduler_snippet_runs_on_its_own():
    text = open(README, encoding="utf-8").read()
    start = text.index("**torch style**")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README torch-style snippet", "exec"), scope)
    assert scope["opt"].iterations == 100
