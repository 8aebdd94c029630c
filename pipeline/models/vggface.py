"""VGG-Face features (``vggface.npy``): the 4096-D fc7 vector Speech2Face trains its voice encoder to predict.

The network is the original VGG-Face (VGG16, 2622 identities), run in torch from the widely used converted
weights ``vgg_face_dag.pth`` (keys ``conv1_1.weight`` .. ``fc8.bias``). Its input is a 224x224 RGB crop as float,
minus the training set's mean per channel, not scaled. The feature is fc7 after its ReLU, as the Speech2Face
reimplementation used; fc6 and the pre-ReLU values are options.

This is the pipeline's GPU stage. It runs as a pass over finished tars (per-clip tars during a build, or the
final shards afterwards): crops from many tars are gathered into fixed-size batches, decoded by a thread pool
while the GPU runs the previous batch, copied from pinned memory without blocking, and run under bf16/fp16
autocast with channels_last convolutions (``torch.compile`` optional). Without CUDA it runs on the CPU in fp32,
slowly but with the same results.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..config import VGGFACE_WEIGHTS_ENV, VGGFaceConfig, resolve_weights  # noqa: F401 (re-exported)
from ..enrich import MEMBER, crop_digest, read_sidecar, sidecar_path
from ..progress import Progress
from ..tars import read_samples, tar_mtime, write_samples

INPUT_SIZE = 224
MEAN_RGB = (129.186279296875, 104.76238250732422, 93.59396362304688)  # the converted model's meta['mean'], RGB
FEATURE_DIM = 4096
N_CLASSES = 2622
STAGE_OFF = f"vggface stage off: set {VGGFACE_WEIGHTS_ENV} or vggface.weights"

# VGG16's convolution blocks, named as in vgg_face_dag.pth: 3x3 convs (padding 1) + ReLU, then a 2x2 max pool.
BLOCKS: tuple[tuple[tuple[str, int, int], ...], ...] = (
    (("conv1_1", 3, 64), ("conv1_2", 64, 64)),
    (("conv2_1", 64, 128), ("conv2_2", 128, 128)),
    (("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256)),
    (("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512)),
    (("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)),
)


class VGGFace(nn.Module):
    """VGG-Face with the layer names of ``vgg_face_dag.pth``. ``forward`` takes preprocessed float
    (N, 3, 224, 224) input (see ``preprocess``) and returns (N, 4096) fc7 or fc6 features."""

    def __init__(self, layer: str = "fc7", relu: bool = True):
        super().__init__()
        if layer not in ("fc6", "fc7"):
            raise ValueError(f"layer must be fc6 or fc7, not {layer!r}")
        self.layer, self.relu = layer, relu
        for block in BLOCKS:
            for name, cin, cout in block:
                setattr(self, name, nn.Conv2d(cin, cout, 3, padding=1))
        self.fc6 = nn.Linear(512 * 7 * 7, FEATURE_DIM)
        self.fc7 = nn.Linear(FEATURE_DIM, FEATURE_DIM)
        self.fc8 = nn.Linear(FEATURE_DIM, N_CLASSES)  # the identity classifier: loaded, never run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in BLOCKS:
            for name, _, _ in block:
                x = F.relu(getattr(self, name)(x), inplace=True)
            x = F.max_pool2d(x, 2, 2)
        x = torch.flatten(x, 1)  # (C, H, W) order whatever the memory format, as the converted fc6 expects
        x = self.fc6(x)
        if self.layer == "fc7":
            x = self.fc7(F.relu(x, inplace=True))
        return F.relu(x) if self.relu else x


def init_random_(model: VGGFace, seed: int = 0) -> VGGFace:
    """He-normal weights and zero biases, so activations keep their scale through all 16 layers as trained ones
    do: stands in for the real weights in tests and the benchmark (speed does not depend on the values)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                m.bias.zero_()
    return model


def read_dag_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a ``vgg_face_dag.pth`` file as float32, fc weights as Linear matrices: conversions
    store fc6 either as (4096, 25088) or conv-shaped (4096, 512, 7, 7); both flatten in (C, H, W) order."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    with torch.device("meta"):
        expected = VGGFace().state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: not vgg_face_dag weights (missing {missing[:4]}, unexpected {unexpected[:4]})")
    out = {}
    for key, ref in expected.items():
        value = state[key].float()
        if value.shape != ref.shape and key.startswith("fc") and value.numel() == ref.numel():
            value = value.reshape(ref.shape)
        if value.shape != ref.shape:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}")
        out[key] = value.contiguous()
    return out


def load_vggface(path: str | os.PathLike, device: str | torch.device = "cpu", layer: str = "fc7", relu: bool = True):
    """A VGGFace in eval mode with the weights of ``vgg_face_dag.pth`` at ``path``, on ``device``, no gradients."""
    with torch.device("meta"):  # no random init of 138M parameters that are overwritten at once
        model = VGGFace(layer, relu)
    model.load_state_dict(read_dag_weights(path), assign=True)
    return model.requires_grad_(False).eval().to(device)


def mean_tensor(device: str | torch.device = "cpu") -> torch.Tensor:
    return torch.tensor(MEAN_RGB, dtype=torch.float32, device=device).view(1, 3, 1, 1)


def preprocess(crops: np.ndarray | torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (N, 224, 224, 3) RGB crops -> float32 (N, 3, 224, 224) = pixel - MEAN_RGB, unscaled, as the network
    was trained. Runs on the crops' device (pass ``mean_tensor`` made there once: building it from a list is a
    blocking copy, which would stall a GPU pipeline); the result is an NCHW view with channels_last strides."""
    x = torch.as_tensor(crops)
    if x.dtype != torch.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(f"expected uint8 (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) RGB crops, got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float() - (mean_tensor(x.device) if mean is None else mean)


def decode_crop(jpg: bytes) -> np.ndarray:
    """A sample's jpg as uint8 (224, 224, 3) RGB; crops of another size are resized (bilinear)."""
    img = Image.open(io.BytesIO(jpg)).convert("RGB")
    if img.size != (INPUT_SIZE, INPUT_SIZE):
        img = img.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
    return np.array(img)  # writable, so torch can wrap it without a warning


def npy_bytes(feature: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(feature, dtype=np.float16))
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# weights and the batched extractor
# ----------------------------------------------------------------------------------------------------------------


_digests: dict[tuple[str, int, int], str] = {}


def weights_digest(path: str | os.PathLike) -> str:
    """First 12 hex digits of the file's sha1 (~1 s for the 580 MB file), memoised per path, size and mtime."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha1()
        with open(real, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        _digests[key] = h.hexdigest()[:12]
    return _digests[key]


_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class VGGFaceExtractor:
    """A loaded VGG-Face on its device and the batching around it: uint8 crops in, float16 features out.

    On CUDA, and when compiled, every batch has the full ``batch_size`` (the last one padded), so cuDNN's
    autotuning and ``torch.compile`` see one shape; two pinned input and output buffers let the next batch be
    decoded and copied while the current one runs.
    """

    def __init__(self, cfg: VGGFaceConfig, weights: str | os.PathLike):
        self.cfg = cfg
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("vggface.device is cuda but torch sees no CUDA device")
        cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if cuda else "cpu")
        # the CPU fallback of device auto runs fp32: bf16 is only fast on CPUs with bf16 instructions
        self.precision = "fp32" if not cuda and cfg.device == "auto" else cfg.precision
        self.amp = _AMP[self.precision]
        self.record = {"layer": cfg.layer, "relu": cfg.relu, "weights_sha1": weights_digest(weights)}
        model = load_vggface(weights, "cpu", cfg.layer, cfg.relu)
        if self.amp is not None:
            model = model.to(self.amp)  # cast once, not by autocast in every batch
        model = model.to(self.device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model = model.to(memory_format=self.memory_format)
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed input shape: autotune the convolutions once
        self.model = torch.compile(model) if cfg.compile else model
        self.fixed_shape = cuda or cfg.compile
        self.mean = mean_tensor(self.device)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU (slow)"
        extras = ", channels_last" * self.cfg.channels_last + ", compiled" * self.cfg.compile
        return (
            f"vggface: {self.cfg.layer}{'' if self.cfg.relu else ' pre-ReLU'} on {name}, {self.precision}, "
            f"batch {self.cfg.batch_size}{extras}"
        )

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC crops already on the device -> (N, 4096) features in the compute dtype."""
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            return self.model(preprocess(crops, self.mean).contiguous(memory_format=self.memory_format))

    def stream(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """float16 (n, 4096) features for each uint8 (n <= batch_size, 224, 224, 3) batch, in order.

        Batch i+1 is pulled from ``batches`` (decoded) while batch i runs; the GPU is waited for only when a
        result is handed back. A buffer slot is refilled two batches later, after its result was collected,
        so an asynchronous copy never reads a buffer being overwritten."""
        cuda = self.device.type == "cuda"
        size = self.cfg.batch_size
        shape = (size, INPUT_SIZE, INPUT_SIZE, 3)
        inputs = [torch.zeros(shape, dtype=torch.uint8, pin_memory=cuda) for _ in range(2)]
        outputs = [torch.empty((size, FEATURE_DIM), dtype=torch.float16, pin_memory=cuda) for _ in range(2)]
        inflight: tuple[int, int, torch.cuda.Event | None] | None = None
        for i, batch in enumerate(batches):
            slot, n = i % 2, len(batch)
            if not 0 < n <= size:
                raise ValueError(f"batch of {n} crops; expected 1..{size}")
            inputs[slot][:n].copy_(torch.from_numpy(np.ascontiguousarray(batch)))
            host = inputs[slot] if self.fixed_shape else inputs[slot][:n]
            y = self.forward(host.to(self.device, non_blocking=True))
            outputs[slot][: len(y)].copy_(y.to(torch.float16), non_blocking=True)
            done = None
            if cuda:
                done = torch.cuda.Event()
                done.record()
            if inflight is not None:
                yield self._collect(outputs, *inflight)
            inflight = (slot, n, done)
        if inflight is not None:
            yield self._collect(outputs, *inflight)

    @staticmethod
    def _collect(outputs: list[torch.Tensor], slot: int, n: int, done) -> np.ndarray:
        if done is not None:
            done.synchronize()
        return outputs[slot][:n].numpy().copy()

    def features(self, crops: np.ndarray) -> np.ndarray:
        """float16 (N, 4096) features of uint8 (N, 224, 224, 3) RGB crops."""
        size = self.cfg.batch_size
        chunks = (crops[i : i + size] for i in range(0, len(crops), size))
        out = list(self.stream(chunks))
        return np.concatenate(out) if out else np.empty((0, FEATURE_DIM), np.float16)

    def features_from_jpgs(self, jpgs: Iterable[bytes]) -> Iterator[np.ndarray]:
        """One float16 (4096,) feature per JPEG crop, in order. ``decode_workers`` threads decode the next two
        batches while the current one runs (Pillow releases the GIL while decoding)."""
        it = iter(jpgs)
        with ThreadPoolExecutor(self.cfg.decode_workers, thread_name_prefix="vggface-decode") as pool:
            ahead: deque[list[Future]] = deque()

            def submit_next() -> None:
                if chunk := list(itertools.islice(it, self.cfg.batch_size)):
                    ahead.append([pool.submit(decode_crop, jpg) for jpg in chunk])

            def batches() -> Iterator[np.ndarray]:
                submit_next()
                while ahead:
                    submit_next()
                    yield np.stack([f.result() for f in ahead.popleft()])

            for feats in self.stream(batches()):
                yield from feats


_extractors: dict[tuple, VGGFaceExtractor] = {}
_extractors_lock = threading.Lock()


def get_extractor(cfg: VGGFaceConfig, weights: str | os.PathLike) -> VGGFaceExtractor:
    """One extractor per (settings, weights file) per process: the model is loaded, moved and compiled once."""
    st = os.stat(weights)
    key = (cfg, os.path.realpath(weights), st.st_size, st.st_mtime_ns)
    with _extractors_lock:
        if key not in _extractors:
            _extractors.clear()  # one model in memory at a time
            _extractors[key] = VGGFaceExtractor(cfg, weights)
        return _extractors[key]


# ----------------------------------------------------------------------------------------------------------------
# the pass over tars
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class VGGFaceReport:
    tars: int = 0  # clip tars read
    rewritten: int = 0  # sidecars written with new features
    samples: int = 0  # samples seen
    computed: int = 0  # features computed (the others were in the sidecar already, with the same settings)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        rate = f", {self.computed / self.seconds:.1f} faces/s" if self.computed and self.seconds > 0 else ""
        return (
            f"vggface: {self.computed} features computed for {self.samples} samples in {self.tars} tars "
            f"({self.rewritten} sidecars written), {self.seconds:.1f}s{rate}"
        )


@dataclass
class _Tar:
    path: Path
    keys: list[str]
    features: dict[str, tuple[bytes, dict]]  # the sidecar's entries, old and new
    left: int  # features still to come


def _write(tar: _Tar) -> None:
    """The sidecar, atomically, in the clip tar's order."""
    side = sidecar_path(tar.path)
    side.parent.mkdir(parents=True, exist_ok=True)
    samples = []
    for k in tar.keys:
        npy, info = tar.features[k]
        samples.append({"__key__": k, MEMBER: npy, "vggface.json": json.dumps(info, sort_keys=True).encode()})
    write_samples(side, samples, tar_mtime(tar.path))


def add_vggface(tars: Iterable[Path], extractor: VGGFaceExtractor, force: bool = False) -> VGGFaceReport:
    """Compute ``vggface.npy`` for every sample of each per-clip tar into its sidecar (`sidecar_path`); packing
    merges the sidecars into the shards. The clip tars are only read.

    Crops are batched across tars. Samples whose sidecar entry has the same settings and was computed from the
    same crop are skipped (all of them unless ``force``), and a sidecar with nothing new is not rewritten, so
    a re-run writes nothing."""
    t0 = time.perf_counter()
    report = VGGFaceReport()
    queue: deque[tuple[_Tar, str]] = deque()  # the crops handed to the extractor, in order

    def jpgs() -> Iterator[bytes]:
        for path in tars:
            path = Path(path)
            samples = list(read_samples(path))
            report.tars += 1
            report.samples += len(samples)
            old = read_sidecar(path)
            keys = [s["__key__"] for s in samples]
            todo = []
            for s in samples:
                if "jpg" not in s:
                    raise ValueError(f"{path}: sample {s['__key__']} has no jpg")
                have = old.get(s["__key__"])
                if force or have is None or have[1] != {"record": extractor.record, "jpg_sha1": crop_digest(s["jpg"])}:
                    todo.append(s)
            tar = _Tar(path, keys, {k: v for k, v in old.items() if k in set(keys)}, len(todo))
            if not todo and set(old) != set(keys):
                _write(tar)  # samples left the clip: the sidecar follows
                report.rewritten += 1
            for s in todo:
                queue.append((tar, s["__key__"]))
                tar.features[s["__key__"]] = (b"", {"record": extractor.record, "jpg_sha1": crop_digest(s["jpg"])})
                yield s["jpg"]

    total = len(tars) if hasattr(tars, "__len__") else 0
    with Progress(total, "vggface", "clips") as progress:
        for feature in extractor.features_from_jpgs(jpgs()):
            tar, key = queue.popleft()
            tar.features[key] = (npy_bytes(feature), tar.features[key][1])
            report.computed += 1
            tar.left -= 1
            if tar.left == 0:
                _write(tar)
                report.rewritten += 1
                progress.advance()
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def add_vggface_to_build(out: Path, extractor: VGGFaceExtractor, force: bool = False) -> VGGFaceReport:
    """The standalone pass over a finished build in ``out``: a sidecar for every finished clip tar in
    ``out/.work/clips``; the caller repacks the shards (no media work) so that they carry the features."""
    clip_dir = Path(out) / ".work" / "clips"
    tars = sorted(clip_dir.glob("*.tar")) if clip_dir.is_dir() else []
    if not tars:
        raise FileNotFoundError(f"no finished clip tars in {clip_dir}: build {out} first")
    return add_vggface(tars, extractor, force)
