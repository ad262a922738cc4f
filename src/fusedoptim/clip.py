"""Standalone gradient clipping (torch.nn.utils semantics, plus Keras' global-norm clip).

The functions live in :mod:`fusedoptim.pipeline`, the one module with clipping code; see
its table for which formula each name uses.  The optimizers' ``global_clipnorm`` /
``clipnorm`` / ``clipvalue`` options fuse clipping into the update kernel; these are for
users who want the norm themselves or clip outside an optimizer.
"""
from .pipeline import clip_by_global_norm, clip_grad_norm, clip_grad_value, global_norm

__all__ = ["clip_grad_norm", "clip_grad_value", "clip_by_global_norm", "global_norm"]
