"""The labels of an architecture graph's nodes (archloop.archgraph): which calls make a node, and its
wiring family and op label.

    module_kind(layer)                          (wiring, op) of a built-in layer, None for a
                                                shape-only one (Identity, Flatten, dropout, padding)
    function_kind(name, args, kwargs, computed) (wiring, op) of a torch function or tensor method
                                                ('relu', 'add', 'conv2d', …), None for one that makes
                                                no node; `computed`: how many distinct tensors it took
                                                that come from the input
    SHAPE_ONLY, NO_SOURCE, MERGES               the names the recorder treats apart

A functional call is labelled as its layer (`F.relu` → `ReLU`, `F.max_pool2d(x, 2)` →
`MaxPool2d(k2,s2)`, `F.batch_norm` → `BatchNorm`), a lazy layer as its eager twin, a depthwise
convolution (groups = input channels) as `dwconv`.
"""

from __future__ import annotations

import re
from typing import Any

from archloop.rewrite import EAGER_OF_LAZY

CONTAINERS = {"Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict"}
_PASS_MODULES = {"Identity", "Flatten", "Unflatten", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
                 "AlphaDropout", "FeatureAlphaDropout", "ZeroPad1d", "ZeroPad2d", "ZeroPad3d",
                 "ConstantPad1d", "ConstantPad2d", "ConstantPad3d", "ReflectionPad1d", "ReflectionPad2d",
                 "ReplicationPad1d", "ReplicationPad2d", "CircularPad2d"}  # fmt: skip
_ACTIVATIONS = {
    "relu": "ReLU", "relu6": "ReLU6", "gelu": "GELU", "silu": "SiLU", "sigmoid": "Sigmoid", "tanh": "Tanh",
    "hardswish": "Hardswish", "hardsigmoid": "Hardsigmoid", "mish": "Mish", "elu": "ELU", "selu": "SELU",
    "celu": "CELU", "leaky_relu": "LeakyReLU", "softplus": "Softplus", "hardtanh": "Hardtanh",
    "prelu": "PReLU", "glu": "GLU", "logsigmoid": "LogSigmoid", "softsign": "Softsign",
    "tanhshrink": "Tanhshrink",
    "threshold": "Threshold", "rrelu": "RReLU", "hardshrink": "Hardshrink", "softshrink": "Softshrink",
}  # fmt: skip
_MODULE_ACTIVATIONS = set(_ACTIVATIONS.values())
_FUNCTION_FAMILIES = {
    **{name: "softmax" for name in ("softmax", "log_softmax", "softmin")},
    **{name: "norm" for name in ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm",
                                 "local_response_norm", "normalize")},
    **{name: "pool" for name in ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d",
                                 "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
                                 "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
                                 "adaptive_max_pool3d", "lp_pool1d", "lp_pool2d", "max_pool2d_with_indices",
                                 "adaptive_max_pool2d_with_indices", "mean", "sum", "amax", "amin",
                                 "logsumexp", "max", "min", "std", "var", "prod", "norm")},
    **{name: "linear" for name in ("linear", "bilinear")},
    **{name: "resample" for name in ("interpolate", "upsample", "upsample_bilinear", "upsample_nearest",
                                     "pixel_shuffle", "pixel_unshuffle", "grid_sample", "unfold", "fold")},
    **{name: "attention" for name in ("scaled_dot_product_attention", "multi_head_attention_forward")},
    **{name: "embedding" for name in ("embedding", "embedding_bag")},
    **{name: "elementwise" for name in ("abs", "exp", "log", "pow", "sqrt", "rsqrt", "neg", "clamp", "clip",
                                        "square", "reciprocal", "sign", "erf", "sin", "cos", "floor", "round",
                                        "where", "maximum", "minimum", "masked_fill", "cumsum", "sort",
                                        "topk", "argmax", "argmin")},
}  # fmt: skip
MERGES = {"add": "add", "sub": "add", "rsub": "add", "mul": "mul", "div": "mul", "truediv": "mul",
           "rtruediv": "mul", "true_divide": "mul", "floordiv": "mul", "addcmul": "mul", "cat": "cat",
           "concat": "cat", "concatenate": "cat", "stack": "cat", "hstack": "cat", "vstack": "cat",
           "dstack": "cat", "matmul": "matmul", "rmatmul": "matmul", "bmm": "matmul", "mm": "matmul",
           "einsum": "matmul", "baddbmm": "matmul", "addmm": "matmul", "setitem": "cat"}  # fmt: skip
SHAPE_ONLY = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "t", "contiguous",
               "squeeze", "unsqueeze", "expand", "expand_as", "repeat", "getitem", "narrow", "select",
               "chunk", "split", "tensor_split", "unbind", "clone", "detach", "to", "type", "float", "double",
               "half", "bfloat16", "cpu", "cuda", "view_as", "reshape_as", "movedim", "moveaxis", "swapaxes",
               "swapdims", "flip", "roll", "pad", "dropout", "dropout1d", "dropout2d", "dropout3d",
               "alpha_dropout", "feature_alpha_dropout", "requires_grad_", "type_as", "repeat_interleave",
               "tile", "broadcast_to", "identity", "pos", "channel_shuffle", "native_channel_shuffle",
               "T", "mT", "H", "data", "requires_grad"}  # fmt: skip
NO_SOURCE = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like",
              "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor", "size", "dim",
              "numel"}  # fmt: skip


def _pair(value: Any) -> str:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return "x".join(str(int(v)) for v in values) if values and len(set(values)) > 1 else str(int(values[0]))


def module_kind(module: Any) -> tuple[str, str] | None:
    """(wiring, op) of a built-in layer; None for a shape-only one."""
    name = EAGER_OF_LAZY.get(type(module).__name__, type(module).__name__)
    if name in _PASS_MODULES:
        return None
    if "Conv" in name:
        groups, channels = getattr(module, "groups", 1), getattr(module, "in_channels", 0)
        family = "dwconv" if groups > 1 and groups == channels else "conv"
        group = ",g" if groups > 1 and family == "conv" else ""
        return family, f"{name}(k{_pair(module.kernel_size)},s{_pair(module.stride)}{group})"
    if "Pool" in name:
        kernel, stride = getattr(module, "kernel_size", None), getattr(module, "stride", None)
        return "pool", name if kernel is None else f"{name}(k{_pair(kernel)},s{_pair(stride or kernel)})"
    if "Norm" in name:
        return "norm", _norm_label(name)
    if name in _MODULE_ACTIVATIONS:
        return "act", name
    if name in ("Softmax", "LogSoftmax", "Softmin", "Softmax2d"):
        return "softmax", name
    if name in ("Linear", "Bilinear"):
        return "linear", name
    if "Attention" in name or name.startswith("Transformer"):
        return "attention", name
    if name in ("Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle", "PixelUnshuffle"):
        return "resample", name
    if name.startswith("Embedding"):
        return "embedding", name
    return name.lower(), name


def function_kind(name: str, args: tuple, kwargs: dict, computed: int) -> tuple[str, str] | None:
    """(wiring, op) of a torch function or tensor method; None for one that makes no node."""
    if name in SHAPE_ONLY:
        return None
    if name in MERGES:
        merge = MERGES[name]
        if computed >= 2:
            return merge, merge
        return ("linear", "matmul") if merge == "matmul" else None  # x @ W is a linear layer
    if name in _ACTIVATIONS:
        return "act", _ACTIVATIONS[name]
    if name.startswith("conv"):
        return _conv_kind(name, args, kwargs)
    family: str | None = _FUNCTION_FAMILIES.get(name)
    if family == "pool" and "pool" in name:  # F.max_pool2d(x, 2) as nn.MaxPool2d(2)
        layer = "".join(part.capitalize() for part in name.replace("_with_indices", "").split("_"))
        kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size", kwargs.get("output_size"))
        if name.startswith("adaptive") or kernel is None:
            return family, layer
        stride = args[2] if len(args) > 2 and args[2] is not None else kwargs.get("stride") or kernel
        return family, f"{layer}(k{_pair(kernel)},s{_pair(stride)})"
    if family == "norm":
        return family, _norm_label(name)
    if family is not None:
        return family, name
    return name, name


def _norm_label(name: str) -> str:
    """'BatchNorm' for nn.BatchNorm2d, nn.LazyBatchNorm1d and F.batch_norm alike."""
    if "_" in name or name.islower():
        return "".join(part.capitalize() for part in name.split("_")).replace("Rms", "RMS")
    return re.sub(r"\dd$", "", name)


def _conv_kind(name: str, args: tuple, kwargs: dict) -> tuple[str, str]:
    """`F.conv2d(x, w, b, stride, padding, dilation, groups)` as a layer would be labelled."""
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    stride = args[3] if len(args) > 3 else kwargs.get("stride", 1)
    groups = int(args[6] if len(args) > 6 else kwargs.get("groups", 1))
    kernel = tuple(weight.shape[2:]) if weight is not None else ()
    channels = int(weight.shape[1]) * groups if weight is not None else 0
    family = "dwconv" if groups > 1 and groups == channels else "conv"
    layer = {"conv1d": "Conv1d", "conv2d": "Conv2d", "conv3d": "Conv3d"}.get(name, name)
    group = ",g" if family == "conv" and groups > 1 else ""
    return family, f"{layer}(k{_pair(kernel) if kernel else '?'},s{_pair(stride)}{group})"
