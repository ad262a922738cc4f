"""cpu.h's memory side (fo_loop_mem, and the STREAM loop's copy of it) cuts a segment into
pieces: from 1024 elements on, the head up to the parameter's first 64-byte boundary;
from 32768 on, one cache line at a time after prefetches.  Every element must be updated
exactly once, with the same bits as the plain loop.

The reference is the same optimizer over the same values cut into tensors of at most 1000
elements, which run the plain loop.  The large tensors are views at odd element offsets
into larger arrays (and their gradients at other offsets), so the head takes every length
from 0 to 15 and the buffers are aligned differently from each other; sizes sit on both
sides of the two thresholds; two threads split the largest one into two long segments.
"""
import numpy as np
import pytest

import fusedoptim
from fusedoptim import _kernels

SIZES = (1023, 1024, 1029, 32767, 32768, 32768 + 37, 140_001)
PIECE = 1000


def _views(rng, n, off, dtype):
    """n standard normal values at element offset ``off`` of a larger array"""
    base = rng.standard_normal(n + 16).astype(dtype)
    return base[off:off + n]


def _pieces(a):
    return [a[i:i + PIECE].copy() for i in range(0, a.size, PIECE)]


CASES = [
    ("Adam", dict(lr=1e-2)),                                  # k = 4, FO_PLAIN, small lerp
    ("Adam", dict(lr=1e-2, weight_decay=0.1, ema_decay=0.9)),  # coupled decay; the EMA mode
    ("Yogi", dict(lr=1e-2)),
    ("Adan", dict(lr=1e-2)),                                  # k = 6
    ("SGD", dict(lr=1e-2, clipvalue=0.5)),                    # no state buffer, run-time mode
]


@pytest.mark.parametrize("name,kwargs", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_segments_match_small_tensors(name, kwargs, dtype):
    rng = np.random.default_rng(13)
    fusedoptim.set_num_threads(2)
    try:
        for n in SIZES:
            off, goff = int(rng.integers(0, 16)), int(rng.integers(0, 16))
            p = _views(rng, n, off, dtype)
            small = _pieces(p)
            big_opt = getattr(fusedoptim, name)([p], **kwargs)
            small_opt = getattr(fusedoptim, name)(small, **kwargs)
            for _ in range(3):
                g = _views(rng, n, goff, dtype)
                big_opt.step([g])
                small_opt.step(_pieces(g))
            ref = np.concatenate(small)
            assert np.array_equal(p, ref), f"{name} n={n} offset={off}: parameter"
            st, sts = big_opt.state.get(p) or {}, [small_opt.state.get(q) or {} for q in small]
            for k, v in st.items():
                if isinstance(v, np.ndarray) and v.shape == p.shape:
                    assert np.array_equal(v, np.concatenate([s[k] for s in sts])), f"{name} n={n}: state {k!r}"
    finally:
        fusedoptim.set_num_threads(0)


@pytest.mark.parametrize("k", [2, 4, 6])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stream_loop_pieces(k, dtype):
    """The roofline loop with a nonzero multiplier: x += m * (sum of the k buffers), summed
    in order, for every element of every written buffer, the gradient left alone."""
    rng = np.random.default_rng(k)
    m = dtype(0.5)
    for n in SIZES:
        bufs = [_views(rng, n, int(rng.integers(0, 16)), dtype) for _ in range(k)]
        g = bufs[1].copy()
        s = bufs[0] + bufs[1]
        for b in bufs[2:]:
            s = s + b
        want = [b + m * s for b in bufs]
        _kernels.stream(k, [bufs[0]], [bufs[1]], [[b] for b in bufs[2:]], scale=0.5)
        assert np.array_equal(bufs[1], g)
        for i in [0] + list(range(2, k)):
            assert np.array_equal(bufs[i], want[i]), f"k={k} n={n} buffer {i}"
