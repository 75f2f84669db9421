"""Compiler passes. Each pass is a function ``Graph -> Graph`` that returns a modified copy."""

from .fold import (CANONICAL_TYPES, canonicalize, check_canonical, fold_avgpool, fold_batchnorm, fold_norms,
                   fold_scales)
from .quantize import quantize_fixed_point, scale_domains

__all__ = ["fold_batchnorm", "fold_avgpool", "fold_scales", "fold_norms", "canonicalize", "check_canonical",
           "quantize_fixed_point", "scale_domains", "CANONICAL_TYPES"]
