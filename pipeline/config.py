"""Stage configs: one frozen dataclass per stage, loaded from one optional YAML file.

The YAML file has one mapping per stage, for example::

    preset: wav2pix          # optional: a named bundle of settings (PRESETS), the base the sections override
    speech:
      window_samples: 16384
    faces:
      embeddings: false
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .reasons import InputError

SAMPLE_RATE = 16000  # every window is 16 kHz mono int16; this is not a setting


class ConfigError(InputError):
    """A config mistake; the message names the key."""


@dataclass(frozen=True)
class DownloadConfig:
    max_height: int = 480  # the smallest usable format: faces need ~80 px, not HD
    retries: int = 3  # attempts after the first, for transient errors only
    backoff_s: float = 2.0  # first retry delay; doubles each attempt, with jitter
    socket_timeout_s: float = 30.0
    cookies: str | None = None  # Netscape cookies.txt, for videos YouTube hides from bots
    sleep_interval_s: float = 0.0  # yt-dlp sleep before each download ...
    max_sleep_interval_s: float = 0.0  # ... randomised up to this
    download_archive: str | None = None  # yt-dlp archive file, used for whole-video downloads
    keep_sources: bool = True  # keep downloaded segments in OUT/.work/sources, so a settings change re-decodes
    # without downloading again; turn off to save disk at AVSpeech scale
    youtube_rate_per_s: float = 0.5  # Prefect rate limit "youtube": downloads started per second, all workers
    youtube_burst: int = 2  # ... and at most this many at once


@dataclass(frozen=True)
class SpeechConfig:
    window_samples: int = 16000  # 1 s at 16 kHz; 16384 for the Wav2Pix paper's encoder
    vad_aggressiveness: int = 2  # webrtcvad mode 0 (lenient) .. 3 (strict)
    vad_frame_ms: int = 30  # webrtcvad accepts 10, 20 or 30 ms frames
    min_speech_ratio: float = 0.5  # share of VAD frames in a window that must be speech


@dataclass(frozen=True)
class FaceConfig:
    crop_size: int = 224  # aligned RGB crop, the VGG-Face / Speech2Face input size
    crop_padding: float = 0.25  # dlib get_face_chip padding around the 5-point landmarks
    min_face_px: int = 64  # faces narrower than this in the source frame are rejected
    max_upsample: int = 1  # HOG upsampling tried when nothing is found (finds faces down to ~40 px)
    detect_face_px: int = 84  # faces are rescaled to about this width before HOG (its window is 80 px)
    roi_margins: tuple[float, ...] = (0.5, 1.5)  # face widths searched around the previous face, tight first
    hint_max_dist: float = 1.0  # the x,y hint must lie within this many face widths of a face's centre
    active_speaker: bool = True  # several faces and no hint: each window keeps the face whose mouth moves with the
    # voice (the best av_sync of up to max_candidates faces; needs filters.av_sync), not the largest
    max_candidates: int = 3  # the largest faces of a frame that are candidates
    embeddings: bool = True  # write dlib.npy (the 128-D ResNet embedding)
    embed_batch: int = 16  # faces embedded per batch
    embedder: str = "torch"  # "torch": dlib's weights run in torch (same vectors, ~14x faster); "dlib": dlib itself
    torch_threads: int = 1  # intra-op threads for the torch embedder (0 = torch's default); clips run in parallel
    jpeg_quality: int = 95


@dataclass(frozen=True)
class ExtrasConfig:
    """Members added to each sample for the seed systems (the presets turn them on); all off by default."""

    face_sizes: tuple[int, ...] = ()  # extra face crops, e.g. (64, 128) -> face64.jpg, face128.jpg
    augment: int = 0  # wav2pix: this many extra random windows from the context around the face frame (aug.npy)
    augment_context_s: float = 4.0  # ... drawn from this many seconds centred on the face frame
    seed: int = 0  # the augmentation's windows are a function of (seed, sample key): deterministic
    stft: bool = False  # speech2face: stft.npy, the compressed complex STFT of the window (598, 257, 2) for 6 s
    tile_short: bool = False  # speech2face: a clip shorter than one window is tiled to a window, not too_short
    first_good_face: bool = False  # speech2face: the face of the window's first frame that passes the filters
    first_face_step_s: float = 0.2  # ... frames tried at this step from the window start ...
    first_face_span_s: float = 1.0  # ... over this many seconds
    mel: bool = False  # voice2face / cae: mel.npy, 64-band normalised log-mel of the window's VAD speech frames
    utterance: bool = False  # voice2face / cae: utt.npy, a (frames, 64) mel over all the clip's speech (utterance.py)
    utterance_features: str = "original"  # original: voice2face's own preprocessing, exactly; voiceface: as mel.npy
    utterance_max_s: float = 30.0  # ... over at most this many seconds of the clip's speech (the first ones)
    labels: bool = False  # integer identity labels (json identity_label), kept stable in OUT/labels.json
    cae_index: bool = False  # OUT/cae_index.json: each split's samples by identity, for triplet sampling

    def __post_init__(self):
        if self.utterance_features not in ("original", "voiceface"):
            raise ValueError(
                f"extras.utterance_features must be original or voiceface, not {self.utterance_features!r}"
            )


@dataclass(frozen=True)
class FilterConfig:
    """Quality filters: each rejects a window with its own reason code (counted in the report)."""

    min_det_score: float = 0.05  # dlib HOG score below this: low_face_score (the detector keeps scores > 0)
    min_sharpness: float = 4.0  # variance of the Laplacian of the grey crop's centre below this: blurry
    max_yaw_deg: float = 50.0  # |yaw| estimated from the 5 landmarks above this: bad_pose
    max_pitch_deg: float = 40.0  # |pitch| likewise
    max_out_of_frame: float = 0.2  # share of the face box outside the frame above this: face_out_of_frame
    max_clipping: float = 0.01  # share of samples at full scale above this: clipping
    min_snr_db: float = 8.0  # frame-energy SNR estimate (95th vs 10th percentile) below this: low_snr
    music_noise: bool = True  # score each window with Silero VAD (pipeline/neural_vad.py), ~1 ms a window ...
    min_neural_speech: float = 0.1  # ... share of its 32 ms chunks it calls speech below this: music_or_noise (music
    # and steady noise score 0.00; of 100 real speech windows 3 score under 0.1, 8 under 0.3: bench_speech_real.py)
    shot_cuts: bool = False  # detect shot cuts (pipeline/cuts.py): a second, light decode pass (64x36 frames) ...
    cut_threshold: float = 0.25  # ... ffmpeg scene score above this is a cut; windows across one: shot_cut, and the
    # face tracker starts afresh after one (real talking heads: <= 0.08 within a shot, 0.50 at a cut between two)
    max_identity_distance: float = 0.6  # dlib distance to the clip medoid above this: identity_mismatch (dlib's own
    # same-person tolerance; on real YouTube faces one person's windows stayed under 0.58, another person's over 0.74)
    min_identity_windows: int = 3  # clips with fewer embedded windows get no identity check
    leakage_distance: float = 0.4  # identities of two splits whose mean faces are closer: reported as leakage
    av_sync: bool = True  # AV sync (pipeline/avsync.py): the mouth on every context frame (the decoder sends
    # the grey frames of the whole clip, one every av_sync_step_s) against the audio's level in 4 bands ...
    av_sync_span_s: float = 6.0  # ... over this span centred on each window (within its shot) ...
    av_sync_step_s: float = 0.0  # ... one mouth measure every this many seconds (0: every frame; every 2nd frame,
    # 0.08 at 25 fps, halves the cost and flagged 54 % of in-sync real windows against 18 %) ...
    av_sync_mouth: str = "pixels"  # ... the mouth as "pixels" (a 16x12 grey patch of the mouth on every frame,
    # placed from the face frame's 5 points, following the nose) or "lips" (dlib's 20 lip points on every frame,
    # ~1.2 ms each): on the real clips pixels flagged 7 % of in-sync windows, 92 % of dubbed ones and 94 % of
    # 0.4 s-late ones at ~6 CPU-ms a window, and picked the speaking face of the interview where lips did not ...
    av_sync_max_lag_s: float = 0.6  # ... at audio offsets up to this either way (±15 frames at 25 fps)
    av_sync_tolerance_s: float = 0.12  # a best offset farther from 0 than this (3 frames at 25 fps) flags the window
    min_av_sync: float = 0.05  # av_unsynced, as does av_sync (the best score within the tolerance less the median
    # score) below this; on the real clips (pixels) nearly every flag comes from the best offset alone: thresholds
    # from 0 to 0.06 flag the same windows, 0.1 flags 15 % of in-sync ones
    min_mouth_motion: float = 0.005  # std of the mouth opening (in eye distances) below this: a still mouth, score 0
    # ("lips"; "pixels" has its own floor, avsync.MIN_PATCH_MOTION)
    reject_av_unsynced: bool = False  # flagged windows are kept (marked in their json) unless this is on


@dataclass(frozen=True)
class ShardConfig:
    maxcount: int = 1000  # samples per shard
    maxsize: int = 500_000_000  # bytes per shard
    mtime: int = 0  # fixed tar mtime, so that shards are byte-reproducible; whole seconds: a float mtime makes
    # tarfile write a pax header before every member, which doubles a reader's header parsing
    val_fraction: float = 0.1  # share of identities in val (by a stable hash of the identity)
    test_fraction: float = 0.1
    split_salt: str = "voiceface"  # change it to draw a different identity split


VGGFACE_WEIGHTS_ENV = "VGGFACE_WEIGHTS"


@dataclass(frozen=True)
class VGGFaceConfig:
    weights: str | None = None  # vgg_face_dag.pth; None: $VGGFACE_WEIGHTS; neither: the stage is off
    layer: str = "fc7"  # fc7 (Speech2Face's target) or fc6
    relu: bool = True  # the layer after its ReLU, as Speech2Face used; false: before it
    batch_size: int = 128  # crops per forward pass, gathered across clips
    precision: str = "bf16"  # bf16 | fp16 | fp32 autocast on CUDA; the CPU fallback of device auto runs fp32
    device: str = "auto"  # auto (CUDA if there is one, else the CPU, slowly) | cuda | cpu
    compile: bool = False  # torch.compile: a minute of warm-up, worth it over millions of faces
    channels_last: bool = True  # NHWC convolutions, the fast layout for tensor cores
    decode_workers: int = 8  # threads decoding JPEG crops (~2,500 a second each) while the GPU runs a batch

    def __post_init__(self):
        for name, valid in (("layer", ("fc6", "fc7")), ("precision", ("bf16", "fp16", "fp32")),
                            ("device", ("auto", "cuda", "cpu"))):  # fmt: skip
            if getattr(self, name) not in valid:
                raise ValueError(f"vggface.{name} must be one of {valid}, not {getattr(self, name)!r}")
        if self.batch_size < 1 or self.decode_workers < 1:
            raise ValueError("vggface.batch_size and vggface.decode_workers must be >= 1")


@dataclass(frozen=True)
class ReviewConfig:
    """The curation queue: which kept windows wait for a person, and what shards do until they decide."""

    queue_on_build: bool = True  # a build fills the queue (OUT/review/review.db) with the windows flagged below
    include_unreviewed: bool = False  # queued windows nobody has accepted yet are left out of the shards
    # the bands below are deliberately narrow: only windows a person should really look at are held back
    min_det_score: float = 0.2  # dlib HOG score; detections this weak are often not a face (low_face_score)
    min_face_px: int = 80  # narrower faces pass faces.min_face_px but are upscaled ~3x to the crop (small_face)
    min_sharpness: float = 13.0  # variance of the Laplacian of the grey crop's centre; below: blurry. It grows with
    # the face's contrast. Unblurred real faces (8 realvids clips) 16.8-664, the lowest (16.8-24) soft, low-contrast
    # faces that look sharp (a 172 px face upscaled to the crop, a soft studio video); blurred at the source (ffmpeg
    # gblur, re-encoded) by sigma 2.2-2.7 px of the 224 crop, faces of ordinary contrast 4.1-13.1 (most <= 10.1): the
    # band sits at their geometric middle, sqrt(10.1 x 16.8). The two highest-contrast faces stay at 12-20 up to
    # sigma 3: the relative measure below holds those (benchmarks/README.md, "Yield on real talking heads")
    min_relative_sharpness: float = 0.015  # the same over the variance of the same pixels (contrast cancels out);
    # below: blurry. Unblurred real faces >= 0.023 (the child and the restaurant 0.023-0.045, the others >= 0.034);
    # every face blurred at the source by sigma ~3 px of the crop <= 0.0144 (at sigma 2.1-2.3 the two highest-contrast
    # faces score 0.012-0.022: the re-encode's noise keeps it from falling as fast as the blur alone would)
    min_speech_ratio: float = 0.6  # the build keeps >= speech.min_speech_ratio; the band up to this is borderline
    max_identity_distance: float = 0.6  # dlib distance to the identity's medoid (dlib's same-person tolerance)
    min_identity_windows: int = 5  # identities with fewer embedded windows get no outlier check
    queue_av_unsynced: bool = False  # queue windows flagged av_unsynced (off: on in-the-wild video most would be)
    page_size: int = 50  # cards per page


# Each seed system's data, as config overrides applied under the YAML file's own sections (see README).
PRESETS: dict[str, dict[str, dict]] = {
    "wav2pix": {
        "speech": {"window_samples": 16384},
        "extras": {"face_sizes": (64, 128), "augment": 5},
    },
    "speech2face": {
        "speech": {"window_samples": 96000},
        "faces": {"crop_size": 224},
        "extras": {"stft": True, "tile_short": True, "first_good_face": True},
    },
    "voice2face": {
        "extras": {"mel": True, "utterance": True, "face_sizes": (64,), "labels": True},
    },
    "cae": {
        "extras": {"mel": True, "utterance": True, "face_sizes": (64,), "labels": True, "cae_index": True},
    },
}


@dataclass(frozen=True)
class Config:
    download: DownloadConfig = field(default_factory=DownloadConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    faces: FaceConfig = field(default_factory=FaceConfig)
    shards: ShardConfig = field(default_factory=ShardConfig)
    vggface: VGGFaceConfig = field(default_factory=VGGFaceConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    extras: ExtrasConfig = field(default_factory=ExtrasConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    preset: str | None = None  # the PRESETS entry the sections were applied over

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None, preset: str | None = None) -> Config:
        """Sections from `data`, over the preset's (the `preset` argument, else data's `preset` key)."""
        data = dict(data or {})
        preset = preset or data.pop("preset", None)
        data.pop("preset", None)
        sections = {f.name: f.type for f in dataclasses.fields(cls) if f.name != "preset"}
        unknown = set(data) - set(sections)
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; valid: {sorted(sections)}, preset")
        if preset is not None and preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; valid: {', '.join(sorted(PRESETS))}")
        base = PRESETS.get(preset, {}) if preset else {}
        kwargs: dict = {"preset": preset}
        for f in dataclasses.fields(cls):
            if f.name == "preset":
                continue
            stage_cls = f.default_factory  # type: ignore[misc]
            if not isinstance(data.get(f.name) or {}, dict):
                raise ConfigError(f"config section {f.name!r} must be a mapping of keys, not {data[f.name]!r}")
            values = {**base.get(f.name, {}), **(data.get(f.name) or {})}
            valid = {sf.name for sf in dataclasses.fields(stage_cls)}
            bad = set(values) - valid
            if bad:
                raise ConfigError(f"unknown key(s) {sorted(bad)} in config section {f.name!r}; valid: {sorted(valid)}")
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}  # frozen: no lists
            hints = typing.get_type_hints(stage_cls)
            for key, value in values.items():
                check_value(f"{f.name}.{key}", value, hints[key])
            try:
                kwargs[f.name] = stage_cls(**values)
            except ValueError as err:  # a stage's own cross-field checks
                raise ConfigError(str(err)) from None
        sh = kwargs["shards"]
        if sh.val_fraction + sh.test_fraction >= 1:
            raise ConfigError("shards.val_fraction + shards.test_fraction must be below 1 (the rest is train)")
        return cls(**kwargs)

    def clip_hash(self) -> str:
        """Hash of the settings that change a clip's samples (not how shards are packed or reviewed).

        VGG-Face settings are left out: its features are added to finished clip tars by a pass that checks each
        sample's own record of them, so turning the stage on or changing it never redoes a clip's media work."""
        relevant = {k: v for k, v in self.to_dict().items() if k not in ("shards", "vggface", "review")}
        relevant["download"] = {"max_height": self.download.max_height}
        for packing_only in ("labels", "cae_index"):  # set when shards are packed
            relevant["extras"].pop(packing_only)
        relevant["filters"].pop("leakage_distance")
        return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does: `1e9` and `1.0e9` are floats (YAML 1.1 asks for
    `1.0e+9` and reads the others as strings)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:\d[\d_]*\.?\d*|\.\d+)[eE][-+]?\d+$|^[-+]?(?:\d[\d_]*\.\d*|\.\d+)$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def load_config(path: str | Path | None, preset: str | None = None) -> Config:
    """Read a YAML config file (None: the defaults) over a preset (this argument wins over the file's key).
    Every mistake (no such file, bad YAML, an unknown key, a value of the wrong type or out of range) is a
    ConfigError that names the file and the key."""
    if path is None:
        return Config.from_dict({}, preset)
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_YamlLoader)
    except OSError as err:
        raise ConfigError(f"config file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(
            f"config file {path}{where}: not valid YAML ({getattr(err, 'problem', None) or err})"
        ) from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of stage sections")
    try:
        return Config.from_dict(data, preset)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def resolve_weights(cfg: VGGFaceConfig) -> str | None:
    """The weights file: ``vggface.weights``, else $VGGFACE_WEIGHTS; None means the stage is off.
    A path that is given but missing is an error, raised before any work is done."""
    path, source = (cfg.weights, "vggface.weights") if cfg.weights else (os.environ.get(VGGFACE_WEIGHTS_ENV), "env")
    if not path:
        return None
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        where = f"${VGGFACE_WEIGHTS_ENV}" if source == "env" else source
        raise FileNotFoundError(f"VGG-Face weights {path} (from {where}) not found")
    return path


# Allowed ranges (inclusive) of numeric settings; every other number must be finite and >= 0.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "download.max_height": (1, None),
    "speech.window_samples": (400, None),  # at least one 25 ms analysis frame
    "speech.vad_aggressiveness": (0, 3),
    "speech.min_speech_ratio": (0, 1),
    "faces.crop_size": (16, None),
    "faces.embed_batch": (1, None),
    "faces.max_candidates": (1, None),
    "faces.jpeg_quality": (1, 100),
    "faces.max_upsample": (0, 4),
    "faces.detect_face_px": (20, None),
    "filters.max_out_of_frame": (0, 1),
    "filters.max_clipping": (0, 1),
    "filters.min_neural_speech": (0, 1),
    "filters.min_av_sync": (-1, 1),
    "filters.max_yaw_deg": (0, 180),
    "filters.max_pitch_deg": (0, 180),
    "filters.min_snr_db": (None, None),  # a negative floor turns the filter off
    "filters.min_det_score": (None, None),  # HOG scores can be negative: a negative floor keeps every detection
    "review.min_det_score": (None, None),
    "shards.maxcount": (1, None),
    "shards.maxsize": (1, None),
    "shards.val_fraction": (0, 1),
    "shards.test_fraction": (0, 1),
    "review.min_speech_ratio": (0, 1),
    "review.page_size": (1, None),
    "vggface.batch_size": (1, None),
}
CHOICES: dict[str, tuple] = {
    "filters.av_sync_mouth": ("lips", "pixels"),
    "speech.vad_frame_ms": (10, 20, 30),  # what webrtcvad accepts
    "faces.embedder": ("torch", "dlib"),
}


def check_value(key: str, value, hint) -> None:
    """Raise a ConfigError naming `key` unless `value` has the type of `hint` and lies in the key's range."""
    kinds = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) not in kinds:
            raise ConfigError(f"config {key}: a value is required, not null")
        return
    kind = next(k for k in kinds if k is not type(None))
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        if not isinstance(value, tuple):
            raise ConfigError(f"config {key}: expected a list of {item.__name__}s, got {value!r}")
        for v in value:
            check_value(key, v, item)
        return
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(kind, True)
    if not ok:
        raise ConfigError(f"config {key}: expected {names[kind]}, got {value!r} ({type(value).__name__})")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"config {key}: must be one of {', '.join(map(str, CHOICES[key]))}, not {value!r}")
    if kind in (int, float):
        if not math.isfinite(value):
            raise ConfigError(f"config {key}: must be a finite number, not {value!r}")
        lo, hi = RANGES.get(key, (0, None))
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = (
                f"between {lo} and {hi}"
                if hi is not None and lo is not None
                else f">= {lo}"
                if lo is not None
                else f"<= {hi}"
            )
            raise ConfigError(f"config {key}: must be {span}, got {value!r}")
