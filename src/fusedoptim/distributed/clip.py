"""Global gradient norm and clipping for data-parallel training: the functions of
:mod:`fusedoptim.pipeline` (the one module with clipping code).  They run on the reduced
gradient, which has the same bits on every rank, with a summation order fixed by the data
layout (never by threads or ranks), so every rank takes the same decision.  The clip
factor is the optimizers' ``global_clipnorm`` one (Keras): ``g * c / max(norm, c)``.
"""
from ..pipeline import clip_by_global_norm, global_norm, keras_clip_coef as clip_coefficient, scale_, sum_of_squares

__all__ = ["clip_by_global_norm", "global_norm", "sum_of_squares", "clip_coefficient", "scale_"]
