"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) re-implemented in torch.

Why: ``dlib.face_recognition_model_v1.compute_face_descriptor`` is the embedding stored as ``dlib.npy`` in our
dataset, but the prebuilt dlib has no BLAS and spends ~75 ms per face on one CPU thread. This module reads the
*same* weights from dlib's own model file (a small pure-Python reader of dlib's serialization format, no C++)
and runs the *same* network in torch, batched, a few ms per face, giving the same 128-D vectors up to float
rounding (see ``tests/test_dlib_resnet.py``).

The network (dlib's ``examples/dnn_face_recognition_ex.cpp``, ``anet_type``), in forward order::

    input 150x150 RGB: (pixel - mean_rgb) / 256, mean_rgb = (122.782, 117.001, 104.298) as stored in the file
    con 32 7x7 /2 (no padding) -> affine -> relu -> max_pool 3x3 /2 (no padding)            150 -> 72 -> 35
    3 x res 32                                                                              35
    res_down 64,  3 x res 64                                                                17
    res_down 128, 2 x res 128                                                               8
    res_down 256, 2 x res 256                                                               4
    res_down 256                                                                            2
    global average pool -> fc 128 (no bias)  = the descriptor (loss_metric does not normalise it)

    res N      = relu(x + affine(con3x3(relu(affine(con3x3(x))))))          3x3 convs: stride 1, padding 1
    res_down N = relu(avg_pool2x2/2(x) (+) affine(con3x3(relu(affine(con3x3/2(x))))))

The first 3x3 con of a ``res_down`` has stride 2 and *no* padding (dlib's default padding is ``k/2`` only for
stride 1). ``(+)`` is dlib's ``add_prev``: the output takes the larger channel count and the larger height and
width of the two inputs, and each input is zero-padded at the end (extra channels; bottom rows, right columns).
That matters twice: the shortcut has half the branch's channels in the first three ``res_down``, and at 8x8 -> 4x4
and 4x4 -> 2x2 the unpadded stride-2 con gives 3x3 and 1x1 while the 2x2 average pool gives 4x4 and 2x2.
``affine`` is a per-channel ``gamma * x + beta`` (batch norm frozen at training time); it is folded into the
preceding con's weights and bias here, which changes only the rounding.

Parsing the 22 MB file takes ~20-30 ms (its tensors are raw little-endian float32), so the parsed weights are
memoised in memory only (per path, size and mtime) and nothing is cached on disk. Speed on one CPU thread
(AMD EPYC, AVX2): ~5.3 ms per face in batches of 32, ~9 ms for a single face, vs ~73 ms in dlib. The model runs
eagerly with channels_last weights and input; TorchScript freeze/optimize_for_inference was measured at most ~5%
faster and is deprecated in this torch, so it is not used.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHIP_SIZE = 150  # dlib's input_rgb_image_sized<150>; chips come from dlib.get_face_chip(img, shape, 150, 0.25)
EMBED_DIM = 128

# Forward-order residual blocks of anet_type: (channels, downsample).
BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3
    + ((64, True),)
    + ((64, False),) * 3
    + ((128, True),)
    + ((128, False),) * 2
    + ((256, True),)
    + ((256, False),) * 2
    + ((256, True),)
)


# ----------------------------------------------------------------------------------------------------------------
# dlib serialization reader
# ----------------------------------------------------------------------------------------------------------------


class DlibFormatError(ValueError):
    """The file is not a serialized dlib ``anet_type`` (the face-recognition ResNet) as expected."""


class _Reader:
    """Sequential reader for dlib's ``serialize()`` primitives (dlib/serialize.h, dlib/cuda/tensor.h)."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def eof(self) -> bool:
        return self.pos >= len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise DlibFormatError("unexpected end of file")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise DlibFormatError("unexpected end of file")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def integer(self) -> int:
        """dlib's variable-length integer: a control byte (low 4 bits = byte count, 0x80 = negative), then the
        magnitude, little-endian. Used for every integer type (int, long, size_t, int64, ...)."""
        ctrl = self.byte()
        size = ctrl & 0x0F
        if size == 0 or size > 8 or ctrl & 0x70:
            raise DlibFormatError(f"bad integer control byte 0x{ctrl:02x} at offset {self.pos - 1}")
        value = int.from_bytes(self.take(size), "little")
        return -value if ctrl & 0x80 else value

    def floating(self) -> float:
        """dlib's float_details: integer mantissa and exponent, value = mantissa * 2**exponent."""
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise DlibFormatError("old ASCII float format is not supported")
        mantissa, exponent = self.integer(), self.integer()
        if exponent == 32000:
            return math.inf
        if exponent == 32001:
            return -math.inf
        if exponent == 32002:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def boolean(self) -> bool:
        ch = self.byte()
        if ch not in (ord("0"), ord("1")):
            raise DlibFormatError(f"bad bool byte 0x{ch:02x} at offset {self.pos - 1}")
        return ch == ord("1")

    def string(self) -> str:
        return bytes(self.take(self.integer())).decode("latin-1")

    def version(self, expected: set[int], what: str) -> int:
        v = self.integer()
        if v not in expected:
            raise DlibFormatError(f"unexpected version {v} for {what} at offset {self.pos}")
        return v

    def tensor(self) -> np.ndarray:
        """resizable_tensor: version 2, num_samples, k, nr, nc, then raw little-endian float32 values."""
        self.version({2}, "tensor")
        shape = tuple(self.integer() for _ in range(4))
        n = math.prod(shape)
        return np.frombuffer(self.take(4 * n), dtype="<f4").astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        """alias_tensor: version 1 and a shape (the layer's view into its params tensor)."""
        self.version({1}, "alias_tensor")
        return tuple(self.integer() for _ in range(4))  # type: ignore[return-value]


@dataclass
class Layer:
    """One computational layer's details as read from the file (``kind`` is dlib's name without ``_N``)."""

    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, fc
    params: dict = field(default_factory=dict)


@dataclass
class DlibNet:
    """The parsed network: input normalisation, the layers in forward order, the metric loss' settings."""

    mean_rgb: tuple[float, float, float]
    layers: list[Layer]
    loss: dict


def _read_details(r: _Reader) -> Layer:
    """One layer's ``details`` object (dlib/dnn/layers.h: con_, affine_, relu_, max_pool_, avg_pool_,
    add_prev_, fc_)."""
    name = r.string()
    if name in ("con_4", "con_5", "con_6"):
        params = r.tensor().ravel()
        num_filters = r.integer()
        nr, nc, stride_y, stride_x, pad_y, pad_x = (r.integer() for _ in range(6))
        filters, biases = r.alias_tensor(), r.alias_tensor()
        for _ in range(4):  # learning-rate / weight-decay multipliers
            r.floating()
        use_bias = r.boolean() if name != "con_4" else True
        use_relu = r.boolean() if name == "con_6" else False
        nf = math.prod(filters)
        if filters[0] != num_filters or filters[2:] != (nr, nc) or params.size != nf + (num_filters if use_bias else 0):
            raise DlibFormatError(f"inconsistent con_ shapes: {filters} {biases} {params.size}")
        return Layer(
            "con",
            dict(
                weight=params[:nf].reshape(filters),
                bias=params[nf:] if use_bias else None,
                stride=(stride_y, stride_x),
                padding=(pad_y, pad_x),
                relu=use_relu,
            ),
        )
    if name in ("affine_", "affine_2"):
        params = r.tensor().ravel()
        gamma, beta = r.alias_tensor(), r.alias_tensor()
        mode = r.integer()  # 0 = CONV_MODE (per channel), 1 = FC_MODE (per element)
        disabled = r.boolean() if name == "affine_2" else False
        n = math.prod(gamma)
        if mode != 0 or disabled or gamma != beta or params.size != 2 * n:
            raise DlibFormatError(f"unsupported affine_ (mode={mode}, disabled={disabled}, {gamma}, {params.size})")
        return Layer("affine", dict(gamma=params[:n], beta=params[n:]))
    if name in ("relu_", "relu_2"):
        disabled = r.boolean() if name == "relu_2" else False
        return Layer("relu", dict(disabled=disabled))
    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc, stride_y, stride_x, pad_y, pad_x = (r.integer() for _ in range(6))
        return Layer(name[:-2], dict(size=(nr, nc), stride=(stride_y, stride_x), padding=(pad_y, pad_x)))
    if name == "add_prev_":
        return Layer("add_prev")
    if name in ("fc_2", "fc_3"):
        num_outputs, num_inputs = r.integer(), r.integer()
        params = r.tensor().ravel()
        weights, _biases = r.alias_tensor(), r.alias_tensor()
        bias_mode = r.integer()  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
        for _ in range(4):
            r.floating()
        use_bias = (r.boolean() if name == "fc_3" else True) and bias_mode == 0
        nw = num_inputs * num_outputs
        if weights[:2] != (num_inputs, num_outputs) or params.size != nw + (num_outputs if use_bias else 0):
            raise DlibFormatError(f"inconsistent fc_ shapes: {weights} {params.size}")
        # dlib computes output = input @ W with W stored (num_inputs, num_outputs)
        return Layer(
            "fc", dict(weight=params[:nw].reshape(num_inputs, num_outputs), bias=params[nw:] if use_bias else None)
        )
    raise DlibFormatError(f"unsupported layer type {name!r} at offset {r.pos}")


def _expected_layout() -> tuple[list[str], list[str]]:
    """From anet_type: the wrappers from the top (loss side) down, as serialized in the nested header
    (``layer`` = add_layer, ``tag``/``skip`` = add_tag_layer/add_skip_layer), and the add_layers' kinds in
    forward order."""
    res = ["con", "affine", "relu", "con", "affine", "add_prev", "relu"]
    res_down = ["con", "affine", "relu", "con", "affine", "avg_pool", "add_prev", "relu"]
    forward: list[str] = ["con", "affine", "relu", "max_pool"]
    wrappers_up: list[str] = ["layer"] * 4  # bottom-up order, reversed at the end
    for _, down in BLOCKS:
        if down:  # relu<add_prev2<avg_pool<skip1<tag2<affine<con<relu<affine<con<tag1<x>>>>>>>>>>>
            forward += res_down
            wrappers_up += ["tag"] + ["layer"] * 5 + ["tag", "skip"] + ["layer"] * 3
        else:  # relu<add_prev1<affine<con<relu<affine<con<tag1<x>>>>>>>>
            forward += res
            wrappers_up += ["tag"] + ["layer"] * 7
    forward += ["avg_pool", "fc"]
    wrappers_up += ["layer", "layer"]
    return wrappers_up[::-1], forward


def parse_dlib_net(data: bytes) -> DlibNet:
    """Parse a serialized ``anet_type`` (``dlib::serialize(net)``) into numpy parameters.

    Layout (dlib/dnn/core.h): ``add_loss_layer`` = version, loss details, subnetwork. Every ``add_layer`` writes
    its version, then its subnetwork, then its own details and some training state, so the file holds all the
    wrappers' version numbers first (top to bottom), then the input layer, then the layers' details bottom-up,
    i.e. in forward order. Tag and skip layers are just a version number.
    """
    r = _Reader(data)
    r.version({1}, "add_loss_layer")
    loss_name = r.string()
    if loss_name == "loss_metric_2":
        loss = dict(margin=r.floating(), distance_threshold=r.floating())
    elif loss_name == "loss_metric_":
        loss = dict(margin=0.1, distance_threshold=0.75)
    else:
        raise DlibFormatError(f"expected loss_metric_, found {loss_name!r}")

    wrappers, forward = _expected_layout()
    versions: list[int] = []  # add_layer versions, top-down
    for i, w in enumerate(wrappers):
        if w == "layer":
            # the add_layer directly above the input layer is a different specialisation (versions 2-3)
            versions.append(r.version({2, 3} if i == len(wrappers) - 1 else {1, 2}, "add_layer"))
        else:
            r.version({1}, f"add_{w}_layer")
    versions.reverse()

    input_name = r.string()
    if input_name not in ("input_rgb_image_sized", "input_rgb_image"):
        raise DlibFormatError(f"expected input_rgb_image_sized, found {input_name!r}")
    mean_rgb = (r.floating(), r.floating(), r.floating())
    if input_name == "input_rgb_image_sized" and (r.integer(), r.integer()) != (CHIP_SIZE, CHIP_SIZE):
        raise DlibFormatError("expected a 150x150 input layer")

    layers: list[Layer] = []
    for i, kind in enumerate(forward):
        layer = _read_details(r)
        if layer.kind != kind:
            raise DlibFormatError(f"layer {i}: expected {kind}, found {layer.kind}")
        layers.append(layer)
        for _ in range(3):  # this_layer_setup_called, gradient_input_is_stale, get_output_and_gradient_input_disabled
            r.boolean()
        r.tensor()  # x_grad
        r.tensor()  # cached_output
        if i == 0:
            r.tensor()  # grad_final
            if versions[0] >= 3:
                r.integer()  # _sample_expansion_factor
        elif versions[i] >= 2:
            r.tensor()  # params_grad
    if not r.eof():
        raise DlibFormatError(f"{len(r.data) - r.pos} trailing bytes after the network")
    return DlibNet(mean_rgb=mean_rgb, layers=layers, loss=loss)


# ----------------------------------------------------------------------------------------------------------------
# torch model
# ----------------------------------------------------------------------------------------------------------------


def _conv(layer: Layer, affine: Layer) -> nn.Conv2d:
    """A dlib con_ and the affine_ after it, folded into one Conv2d: gamma * (w * x + b) + beta."""
    p, a = layer.params, affine.params
    if p["relu"]:
        raise DlibFormatError("con_ with a fused relu is not expected in this network")
    weight = torch.tensor(p["weight"])
    out_ch, in_ch, kh, kw = weight.shape
    gamma, beta = torch.tensor(a["gamma"]), torch.tensor(a["beta"])
    bias = torch.tensor(p["bias"]) if p["bias"] is not None else torch.zeros(out_ch)
    conv = nn.Conv2d(in_ch, out_ch, (kh, kw), stride=p["stride"], padding=p["padding"])
    conv.weight = nn.Parameter(weight * gamma.view(-1, 1, 1, 1), requires_grad=False)
    conv.bias = nn.Parameter(bias * gamma + beta, requires_grad=False)
    return conv


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the sum of two NCHW tensors whose channels/height/width may differ, each zero-padded at
    the end of every dimension up to the larger size."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    a = F.pad(a, (0, w - a.shape[3], 0, h - a.shape[2], 0, c - a.shape[1]))
    b = F.pad(b, (0, w - b.shape[3], 0, h - b.shape[2], 0, c - b.shape[1]))
    return a + b


class _ResBlock(nn.Module):
    """dlib's ``ares`` / ``ares_down``: relu(shortcut (+) affine(con(relu(affine(con(x))))))."""

    def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, down: bool):
        super().__init__()
        self.conv1, self.conv2, self.down = conv1, conv2, down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        if self.down:
            return F.relu(add_prev(F.avg_pool2d(x, 2, 2), y))
        return F.relu(x + y)


def _check_pool(layer: Layer, size: tuple[int, int], stride: tuple[int, int]) -> None:
    p = layer.params
    if p["size"] != size or p["stride"] != stride or p["padding"] != (0, 0):
        raise DlibFormatError(f"unexpected {layer.kind} {p}")


class DlibFaceResNet(nn.Module):
    """dlib's ``dlib_face_recognition_resnet_model_v1`` in torch, built from a parsed ``DlibNet``.

    ``forward`` takes float (N, 3, 150, 150) input normalised as dlib's input layer does (``normalize``) and
    returns the (N, 128) descriptors. ``embed_chips`` wraps both for uint8 RGB chips.
    """

    def __init__(self, net: DlibNet):
        super().__init__()
        layers = iter(net.layers)

        def take(kind: str) -> Layer:
            layer = next(layers)
            if layer.kind != kind:
                raise DlibFormatError(f"expected {kind}, found {layer.kind}")
            if kind == "relu" and layer.params["disabled"]:
                raise DlibFormatError("disabled relu_ is not expected in this network")
            return layer

        self.register_buffer("mean", torch.tensor(net.mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        self.stem = _conv(take("con"), take("affine"))
        take("relu")
        _check_pool(take("max_pool"), (3, 3), (2, 2))
        blocks = []
        for _, down in BLOCKS:
            conv1 = _conv(take("con"), take("affine"))
            take("relu")
            conv2 = _conv(take("con"), take("affine"))
            if down:
                _check_pool(take("avg_pool"), (2, 2), (2, 2))
            take("add_prev")
            take("relu")
            blocks.append(_ResBlock(conv1, conv2, down))
        self.blocks = nn.Sequential(*blocks)
        _check_pool(take("avg_pool"), (0, 0), (1, 1))  # 0x0 window = the whole image (avg_pool_everything)
        fc = take("fc").params
        if fc["bias"] is not None:
            raise DlibFormatError("expected fc_no_bias")
        self.fc = nn.Linear(*fc["weight"].shape, bias=False)
        self.fc.weight = nn.Parameter(torch.tensor(fc["weight"].T), requires_grad=False)

    def normalize(self, chips: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 150, 150, 3) RGB -> float (N, 3, 150, 150) = (pixel - mean) / 256, as dlib's
        input_rgb_image does (an NCHW view with channels_last strides; * 2**-8 is exact, like dlib's / 256)."""
        return (chips.permute(0, 3, 1, 2).float() - self.mean) * (1.0 / 256.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


# ----------------------------------------------------------------------------------------------------------------
# loading and embedding
# ----------------------------------------------------------------------------------------------------------------

_parsed: dict[tuple[str, int, int], DlibNet] = {}
_parsed_lock = threading.Lock()


def default_model_path() -> str:
    """face_recognition_models' ``dlib_face_recognition_resnet_model_v1.dat`` (what dlib's encoder loads)."""
    import face_recognition_models

    return face_recognition_models.face_recognition_model_location()


def read_dlib_net(path: str | os.PathLike | None = None) -> DlibNet:
    """Parse the model file (~20 ms), memoised in memory per (path, size, mtime)."""
    path = os.path.realpath(path if path is not None else default_model_path())
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    with _parsed_lock:
        if key not in _parsed:
            with open(path, "rb") as f:
                _parsed[key] = parse_dlib_net(f.read())
        return _parsed[key]


def load_dlib_resnet(path: str | os.PathLike | None = None) -> DlibFaceResNet:
    """A new ``DlibFaceResNet`` (eval mode, float32, channels_last weights, no gradients) with the weights of
    dlib's model file ``path`` (default: face_recognition_models'). Safe to share between threads for inference."""
    model = DlibFaceResNet(read_dlib_net(path)).eval()
    return model.to(memory_format=torch.channels_last)


def embed_chips(model: DlibFaceResNet, chips: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 (N, 150, 150, 3) RGB face chips (from ``dlib.get_face_chip(img, shape, 150, 0.25)``) -> (N, 128)
    float32 descriptors, equal to ``compute_face_descriptor(chip)`` (num_jitters=0) up to float rounding."""
    chips = np.asarray(chips)
    if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"expected uint8 (N, {CHIP_SIZE}, {CHIP_SIZE}, 3) RGB chips, got {chips.dtype} {chips.shape}")
    out = np.empty((len(chips), EMBED_DIM), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(chips), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(chips[i : i + batch_size]))
            x = model.normalize(batch).contiguous(memory_format=torch.channels_last)
            out[i : i + len(batch)] = model(x).numpy()
    return out
