"""Op tables: how the propagation pass classifies functions and methods met in a traced graph.

Names are the function's ``__name__`` (leading underscores stripped) or the method's name, as
returned by :func:`fn_name`. Modules are not listed here: they have handlers
(:mod:`compressor.graph.handlers`).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

#: One tensor in, same channels out (activations, casts, dropout, pointwise maths).
UNARY = {
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_",
    "sigmoid", "sigmoid_", "tanh", "tanh_", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "mish",
    "softplus", "hardtanh", "hardtanh_", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "abs", "neg", "exp",
    "log", "sqrt", "rsqrt", "square", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to", "type",
    "type_as", "cpu", "cuda", "erf", "sign", "reciprocal", "logsigmoid", "softsign", "sin", "cos", "floor", "ceil",
    "round", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "nan_to_num",
    "requires_grad_", "logical_not", "bernoulli", "bernoulli_", "fill_", "zero_", "pow", "mish_",
    "rrelu", "threshold", "stochastic_depth", "tanhshrink", "hardshrink", "softshrink", "log_sigmoid", "expm1", "log1p",
}  # fmt: skip
#: Elementwise with several operands: the labels they combine are united (broadcasting followed).
BINARY = {
    "add", "add_", "iadd", "sub", "sub_", "isub", "rsub", "mul", "mul_", "imul", "div", "div_", "truediv",
    "itruediv", "true_divide", "maximum", "minimum", "where", "gt", "lt", "ge", "le", "eq", "ne", "masked_fill",
    "masked_fill_", "addcmul", "lerp", "floordiv", "fmod", "remainder", "mod", "atan2", "hypot",
}  # fmt: skip
#: Shape ops: applied to the id tensors themselves.
SHAPE = {
    "flatten", "view", "reshape", "permute", "transpose", "squeeze", "unsqueeze", "expand", "expand_as", "t",
    "swapaxes", "swapdims", "movedim", "moveaxis", "unflatten", "view_as", "reshape_as", "repeat", "tile",
}  # fmt: skip
#: Shape ops whose sizes can be literal ints (a literal channel count cannot shrink).
LITERAL_SIZE_OPS = {"view", "reshape", "expand", "unflatten", "tile"}
CAT = {"cat", "concat", "concatenate", "stack"}
SPLIT = {"chunk", "split", "tensor_split", "unbind", "split_with_sizes"}
REDUCE = {"mean", "sum", "amax", "amin", "prod", "std", "var", "logsumexp", "nansum", "nanmean"}
SOFTMAX = {"softmax", "log_softmax", "_softmax"}
#: Matrix products over the last two dimensions (``a @ b``).
MATMUL = {"matmul", "bmm"}
#: Functions acting on each channel separately (pooling, resizing).
SPATIAL_FN: set[Any] = {
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d,
    F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d,
    F.max_pool2d, F.max_pool3d, F.lp_pool1d, F.lp_pool2d, F.interpolate, F.upsample, F.upsample_nearest,
    F.upsample_bilinear, torch.adaptive_avg_pool1d, torch.avg_pool1d, torch.max_pool1d, torch.max_pool2d,
    torch.max_pool3d,
}  # fmt: skip
#: Ops that cannot multiply matrices: the FLOP counter is not run on them.
NO_FLOPS = (
    UNARY | BINARY | SHAPE | CAT | SPLIT | REDUCE | SOFTMAX | {"getitem", "getattr", "size", "dim", "pad"}
)


def fn_name(node: fx.Node) -> str:
    """The name the op tables use for ``node``'s target."""
    t = node.target
    if isinstance(t, str):
        return t
    return getattr(t, "__name__", str(t)).lstrip("_") if t is not operator.getitem else "getitem"


def arg(node: fx.Node, index: int, key: str, default: Any = None) -> Any:
    """``node``'s argument ``index`` if passed positionally, else its keyword ``key``, else ``default``."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(key, default)
