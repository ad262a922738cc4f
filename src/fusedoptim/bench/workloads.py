"""Workloads of the benchmark: lists of parameter shapes, their names, their data."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

__all__ = ["KI", "MI", "Workload", "gpt_block_shapes", "MODEL_WORKLOADS", "WORKLOADS",
           "QUICK_WORKLOADS", "parse_workload", "parse_size", "make_data", "resnet18_shapes"]

KI = 1 << 10
MI = 1 << 20


@dataclass(frozen=True)
class Workload:
    """A list of parameter shapes of one dtype."""

    name: str
    shapes: Tuple[Tuple[int, ...], ...]
    dtype: str = "float32"
    note: str = ""

    @property
    def n_tensors(self) -> int:
        return len(self.shapes)

    @property
    def n_elements(self) -> int:
        return int(sum(math.prod(s) for s in self.shapes))

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize


def gpt_block_shapes(vocab: int = 2048, ctx: int = 256, d: int = 256, layers: int = 4,
                     mlp: int = 4) -> List[Tuple[int, ...]]:
    """Parameter shapes of a small GPT-2-style decoder (tied output head): token and
    position embeddings, then per layer LayerNorm, fused QKV projection, output
    projection, LayerNorm, MLP up and down projections (weights and biases), then the
    final LayerNorm.  Defaults: 52 tensors, 3,749,376 elements, sizes 256 .. 524,288."""
    shapes: List[Tuple[int, ...]] = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,),                 # ln_1 weight, bias
                   (d, 3 * d), (3 * d,),       # attn.c_attn (QKV)
                   (d, d), (d,),               # attn.c_proj
                   (d,), (d,),                 # ln_2 weight, bias
                   (d, mlp * d), (mlp * d,),   # mlp.c_fc
                   (mlp * d, d), (d,)]         # mlp.c_proj
    shapes += [(d,), (d,)]                     # ln_f
    return shapes


def resnet18_shapes(classes: int = 1000) -> List[Tuple[int, ...]]:
    """Parameter shapes of torchvision's ResNet-18: 62 tensors, 11,689,512 elements
    (conv weights, BatchNorm weights and biases, the classifier)."""
    shapes: List[Tuple[int, ...]] = [(64, 3, 7, 7), (64,), (64,)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            shapes += [(cout, cin if block == 0 else cout, 3, 3), (cout,), (cout,),
                       (cout, cout, 3, 3), (cout,), (cout,)]
            if block == 0 and (stride != 1 or cin != cout):
                shapes += [(cout, cin, 1, 1), (cout,), (cout,)]      # downsample
        cin = cout
    return shapes + [(classes, 512), (classes,)]


MODEL_WORKLOADS = {
    "gpt-4L-d256": Workload("gpt-4L-d256", tuple(gpt_block_shapes()), "float32",
                            "GPT-2-style decoder, 4 layers, d=256, vocab 2048, ctx 256: "
                            "52 tensors, 3.75M elements (weights, biases, LayerNorms)"),
    "resnet18": Workload("resnet18", tuple(resnet18_shapes()), "float32",
                         "torchvision ResNet-18: 62 tensors, 11.7M elements"),
}

#: Workloads of the full report, in print order.
WORKLOADS = ("1x1M", "1x16M", "100x10K", "200x327", "f64-1x1M", "gpt-4L-d256", "1x1")
#: ``--quick`` drops the 16M workload.
QUICK_WORKLOADS = ("1x1M", "100x10K", "200x327", "f64-1x1M", "gpt-4L-d256", "1x1")

_SUFFIX = {"": 1, "K": KI, "M": MI}
_SPEC = re.compile(r"(?:(f32|f64)-)?(\d+)x(\d+)([KM]?)")
_SIZE = re.compile(r"(\d+)([KM]?)")


def parse_workload(name: str) -> Workload:
    """``"NxS"``: N tensors of S elements (suffix K = 2**10, M = 2**20), float32, or
    float64 with the prefix ``f64-``; or a model name from ``MODEL_WORKLOADS``.
    ``"100x10K"`` is 100 tensors of 10,240 elements (1,024,000 in total)."""
    if name in MODEL_WORKLOADS:
        return MODEL_WORKLOADS[name]
    m = _SPEC.fullmatch(name)
    if m is None:
        raise ValueError(f"unknown workload {name!r}: use NxS (e.g. 1x1M, 200x327, f64-1x1M) "
                         f"or one of {sorted(MODEL_WORKLOADS)}")
    prefix, n, s, suffix = m.groups()
    n, s = int(n), int(s) * _SUFFIX[suffix]
    if n < 1 or s < 1:
        raise ValueError(f"workload {name!r}: tensor count and size must be >= 1")
    return Workload(name, tuple([(s,)] * n), "float64" if prefix == "f64" else "float32")


def parse_size(s: str) -> int:
    """An element count: ``"65536"``, ``"64K"`` (K = 2**10), ``"16M"`` (M = 2**20)."""
    m = _SIZE.fullmatch(s.strip())
    if not m:
        raise ValueError(f"bad size {s!r} (e.g. 65536, 64K, 16M)")
    return int(m.group(1)) * _SUFFIX[m.group(2)]


def make_data(wl: Workload, seed: int = 0):
    """Initial parameters and gradients (standard normal) for ``wl``.  The gradients
    are read-only: fusedoptim and the NumPy baselines share them and never write them."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(wl.dtype)
    params = [rng.standard_normal(s, dtype=dt) for s in wl.shapes]
    grads = [rng.standard_normal(s, dtype=dt) for s in wl.shapes]
    for g in grads:
        g.flags.writeable = False
    return params, grads
