"""One clip from source to samples: resolve → probe → audio → speech windows → frames → faces.

`run_clip` is the one place where a clip's failure is caught and turned into a status row, so one bad
clip never stops a run; everything below it raises.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import PIPELINE_VERSION, quality
from .avsync import AVSyncTracker
from .config import SAMPLE_RATE, Config
from .cuts import detect_cuts, shot_of, windows_across_cuts
from .faces import Face, SpeakerTracker, embed_faces
from .features import log_mel, speech2face_stft, tile_to
from .media import decode_audio, decode_frames_on_grid, probe
from .models import neural_vad
from .reasons import ClipError, Reason, is_final
from .records import Clip, ClipStatus, samples_to_seconds
from .shards import atomic_write_bytes, write_clip_tar
from .sources import Source, resolve_source
from .speech import speech_windows, voiced, wav_bytes
from .splits import split_for_identity


@dataclass(frozen=True)
class BuildContext:
    """What every clip of a build shares. Plain data, so it pickles to remote workers."""

    out: Path
    cfg: Config
    mirror: Path | None = None
    base_dir: Path | None = None  # the manifest's directory, for relative paths

    @property
    def work(self) -> Path:
        return self.out / ".work"

    def clip_tar(self, clip_id: str) -> Path:
        return self.work / "clips" / f"{clip_id}.tar"

    def clip_status_path(self, clip_id: str) -> Path:
        return self.work / "clips" / f"{clip_id}.json"

    def download_dir(self, clip_id: str) -> Path:
        return self.work / "sources" / clip_id

    @property
    def cache_key(self) -> str:
        return f"{PIPELINE_VERSION}:{self.cfg.clip_hash()}"


def split_of(clip: Clip, ctx: BuildContext) -> str:
    return clip.split or split_for_identity(clip.identity, ctx.cfg.shards)


def cached_status(clip: Clip, ctx: BuildContext) -> ClipStatus | None:
    """The finished status of an earlier run with the same settings, if the clip needs no work."""
    status = read_status(ctx, clip.clip_id)
    if status is None:
        return None
    if status.cache_key != ctx.cache_key or not is_final(status.status, status.reason):
        return None
    if status.status == "ok" and not ctx.clip_tar(clip.clip_id).exists():
        return None
    return status


def run_clip(clip: Clip, ctx: BuildContext, download_gate: Callable[[], None] | None = None) -> ClipStatus:
    """Process one clip and record its status. A bad clip becomes a rejected/failed status; a bug raises
    (the orchestrator records it with `record_crash` and goes on with the other clips).

    `download_gate` is called before each download attempt (the flow passes a rate limiter)."""
    t0 = time.perf_counter()
    try:
        status = process_clip(clip, ctx, download_gate)
    except ClipError as err:
        status = _status(clip, ctx, err.status, str(err.reason), err.detail, **err.extra)
    finally:
        if not ctx.cfg.download.keep_sources:
            shutil.rmtree(ctx.download_dir(clip.clip_id), ignore_errors=True)
    return _record(status, ctx, t0)


def record_crash(clip: Clip, ctx: BuildContext, exc: BaseException, seconds: float = 0.0) -> ClipStatus:
    """The status of a clip whose processing crashed on a bug: failed / internal_error, redone on a re-run."""
    detail = f"{type(exc).__name__}: {exc}"
    return _record(_status(clip, ctx, "failed", str(Reason.INTERNAL_ERROR), detail), ctx, time.perf_counter() - seconds)


def _status(clip: Clip, ctx: BuildContext, status: str, reason: str | None, detail: str, **extra) -> ClipStatus:
    return ClipStatus(
        id=clip.clip_id, line=clip.line, identity=clip.identity, split=split_of(clip, ctx),
        status=status, reason=reason, detail=detail, **extra,
    )  # fmt: skip


def _record(status: ClipStatus, ctx: BuildContext, t0: float) -> ClipStatus:
    status.cache_key = ctx.cache_key
    status.seconds = round(time.perf_counter() - t0, 3)
    path = ctx.clip_status_path(status.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the status file is written last: it is the clip's completion marker
    atomic_write_bytes(path, json.dumps(status.to_dict(), sort_keys=True).encode())
    return status


def read_status(ctx: BuildContext, clip_id: str) -> ClipStatus | None:
    path = ctx.clip_status_path(clip_id)
    return ClipStatus.from_dict(json.loads(path.read_text())) if path.exists() else None


def process_clip(clip: Clip, ctx: BuildContext, download_gate: Callable[[], None] | None = None) -> ClipStatus:
    """Resolve, decode and cut one clip, writing its samples to the clip tar. Raises ClipError."""
    cfg = ctx.cfg
    src = resolve_source(clip, cfg.download, ctx.work / "sources", ctx.mirror, ctx.base_dir, gate=download_gate)
    info = probe(src.path)
    if not info.has_video:
        raise ClipError(Reason.NO_VIDEO, f"{src.path.name} has no video stream")
    if not info.has_audio:
        raise ClipError(Reason.NO_AUDIO, f"{src.path.name} has no audio stream")

    # the clip on the file's own timeline (a downloaded segment starts at the segment's start)
    clip_start = clip.start or 0
    file_start_s = samples_to_seconds(clip_start - src.offset) if clip.start is not None else 0.0
    if file_start_s < 0 or file_start_s >= info.duration:
        raise ClipError(
            Reason.SEGMENT_OUT_OF_RANGE,
            f"start {samples_to_seconds(clip_start):.3f}s is past the video's end",
        )
    duration_s = samples_to_seconds(clip.end - clip_start) if clip.end is not None else None
    audio = decode_audio(src.path, file_start_s, duration_s)
    expected_s = min(duration_s or float("inf"), info.duration - file_start_s)
    got_s = len(audio) / SAMPLE_RATE
    if expected_s - got_s > max(0.5, 0.1 * expected_s):
        raise ClipError(Reason.CORRUPT_MEDIA, f"decoded {got_s:.2f}s of audio where {expected_s:.2f}s were expected")

    W = cfg.speech.window_samples
    clip_audio = audio  # the audio as the video has it (before any tiling), for the AV-sync score
    windows, n_cut = speech_windows(audio, cfg.speech)
    tiled_from = None
    if n_cut == 0 and cfg.extras.tile_short and len(audio) >= W // 16:
        tiled_from = len(audio)  # Speech2Face's reference tiles a short clip to its 6 s
        audio = tile_to(audio, W)
        windows, n_cut = speech_windows(audio, cfg.speech)
    if n_cut == 0:
        raise ClipError(Reason.TOO_SHORT, f"{got_s:.2f}s of audio is shorter than one {W}-sample window")
    rejections: Counter[str] = Counter({str(Reason.NO_SPEECH): n_cut - len(windows)} if n_cut > len(windows) else {})
    measures: dict[int, dict] = {}  # window index -> what the filters measured
    clean = []
    shares = neural_vad.speech_shares(audio, [w.start for w in windows], W) if cfg.filters.music_noise else None
    for i, w in enumerate(windows):
        chunk = audio[w.start : w.start + W]
        m = measures[w.index] = {"clipping": quality.clipping(chunk), "snr_db": quality.snr_db(chunk)}
        if shares is not None:
            m["neural_speech"] = round(float(shares[i]), 3)
        if reason := quality.speech_reason(m["clipping"], m["snr_db"], cfg.filters, m.get("neural_speech")):
            rejections[str(reason)] += 1
        else:
            clean.append(w)
    if not clean:
        detail = f"none of {n_cut} windows has speech ratio >= {cfg.speech.min_speech_ratio}"
        reason = Reason.NO_SPEECH
        if windows:
            reason = Reason(max((r for r in rejections if r != Reason.NO_SPEECH), key=rejections.get))
            detail = f"no window passed the speech filters: {dict(rejections)}"
        raise ClipError(reason, detail, windows_total=n_cut, window_rejections=dict(rejections))
    windows = clean
    # shot cuts (filters.shot_cuts): windows whose audio straddles a cut are dropped; the tracker restarts after one
    cuts: list[float] = []
    if cfg.filters.shot_cuts:
        cuts = [
            t - file_start_s for t in detect_cuts(src.path, info, file_start_s, duration_s, cfg.filters.cut_threshold)
        ]
        across = windows_across_cuts([w.start for w in windows], W, cuts, SAMPLE_RATE)
        if across:
            rejections[str(Reason.SHOT_CUT)] += len(across)
            windows = [w for i, w in enumerate(windows) if i not in across]

    split = split_of(clip, ctx)
    tracker = SpeakerTracker(cfg.faces, clip.hint)
    by_index = {w.index: w for w in windows}
    period_s = W / SAMPLE_RATE
    choices: Counter[str] = Counter()
    seen: set[int] = set()  # windows whose frame(s) were decoded
    done: set[int] = set()  # ... and that have a face passing the filters
    last_reason: dict[int, str] = {}
    flags: Counter[str] = Counter()  # written windows that carry a flag (av_unsynced)
    ex = cfg.extras
    if ex.first_good_face:  # frames every step over the window's first span; the first good face is used
        step, first = ex.first_face_step_s, 1e-3  # a grid time just after 0 selects the window's first frame
        n_frames = int(round(n_cut * period_s / step))
    else:  # the frame at the window's centre
        step, first, n_frames = period_s, period_s / 2, n_cut

    av = None
    if cfg.filters.av_sync:
        av = AVSyncTracker(cfg.filters, clip_audio, file_start_s, tracker.models.landmarks68)

    def synced(ready):
        """Face items whose AV-sync score is in: measures added; rejected when so configured."""
        for item, score in ready:
            item[3].update(score)  # the window's measures
            if score["av_unsynced"] and cfg.filters.reject_av_unsynced:
                rejections[str(Reason.AV_UNSYNCED)] += 1
                continue
            yield item

    def faces():
        shot = 0
        f = cfg.filters
        context = (f.av_sync_span_s, f.av_sync_step_s) if av else (0.0, 0.0)
        frames = decode_frames_on_grid(src.path, info, file_start_s, first, step, n_frames, *context)
        for frame in frames:
            if not frame.on_grid:  # a grey context frame, for the AV-sync score only
                yield from synced(av.push(frame.time, frame.rgb))  # type: ignore[union-attr]
                continue
            if ex.first_good_face:
                t = frame.index * step
                k = int(round(t * SAMPLE_RATE)) // W
                if t - k * period_s > ex.first_face_span_s + 1e-6:
                    continue
            else:
                k = frame.index
            win = by_index.get(k)
            if win is None or k in done or (k in seen and not ex.first_good_face):
                continue
            seen.add(k)
            if cuts and tracker.prev is not None and shot_of(frame.time - file_start_s, cuts) != shot:
                tracker.prev = None  # a new shot: search the whole frame again
            shot = shot_of(frame.time - file_start_s, cuts) if cuts else 0
            face = tracker(frame.rgb)
            if not isinstance(face, Face):
                last_reason[k] = str(face)
                continue
            m = quality.face_measures(face, (frame.rgb.shape[1], frame.rgb.shape[0]))
            if reason := quality.face_reason(face.det_score, m, cfg.filters):
                last_reason[k] = str(reason)
                continue
            done.add(k)
            choices[face.choice] += 1
            item = (win, frame.time, face, {**measures[k], **m})
            if av:
                av.start(item, frame.time, face.bbox)
            else:
                yield item
        if av:
            yield from synced(av.finish())

    def samples():
        pending: list[tuple] = []  # faces wait here to be embedded in one batch
        for item in faces():
            pending.append(item)
            if len(pending) >= cfg.faces.embed_batch:
                yield from flush(pending)
        yield from flush(pending)

    def flush(pending: list[tuple]):
        embed_faces([face for _, _, face, _ in pending], cfg.faces)
        for win, frame_time, face, m in pending:
            sample = make_sample(clip, src, split, win, audio, frame_time, face, ctx, m, file_start_s, tiled_from)
            yield sample, face.embedding
        pending.clear()

    def checked():
        """The samples, less the identity outliers when embeddings are on (the clip is held in memory for it)."""
        if not cfg.faces.embeddings:
            yield from (sample for sample, _ in samples())
            return
        made = list(samples())
        if len(made) < cfg.filters.min_identity_windows:
            yield from (sample for sample, _ in made)
            return
        dist = quality.medoid_distances(np.stack([v for _, v in made]))
        for (sample, _), d in zip(made, dist, strict=True):
            if d > cfg.filters.max_identity_distance:
                rejections[str(Reason.IDENTITY_MISMATCH)] += 1
                continue
            meta = json.loads(sample["json"])
            meta["clip_identity_distance"] = round(float(d), 4)
            sample["json"] = json.dumps(meta, sort_keys=True).encode()
            yield sample

    ctx.clip_tar(clip.clip_id).parent.mkdir(parents=True, exist_ok=True)
    sync_scores: list[float] = []

    def flagged(samples):
        """Count the written samples that carry a flag, and gather their AV-sync scores."""
        for sample in samples:
            if av:
                meta = json.loads(sample["json"])
                if meta["av_sync"] is not None:
                    sync_scores.append(meta["av_sync"])
                if meta["av_unsynced"]:
                    flags[str(Reason.AV_UNSYNCED)] += 1
            yield sample

    written = write_clip_tar(ctx.clip_tar(clip.clip_id), flagged(checked()), cfg.shards.mtime)
    for k in seen - done:
        rejections[last_reason[k]] += 1
    missing = len(windows) - len(seen)
    if missing:
        rejections[str(Reason.FRAME_MISSING)] += missing
    choice = "hint" if choices["hint"] else "largest" if choices["largest"] else None
    status = ClipStatus(
        id=clip.clip_id,
        status="ok",
        line=clip.line,
        identity=clip.identity,
        split=split,
        windows_written=written,
        windows_total=n_cut,
        window_rejections=dict(sorted(rejections.items())),
        window_flags=dict(sorted(flags.items())),
        av_sync=round(float(np.median(sync_scores)), 3) if sync_scores else None,
        speaker_choice=choice,
        detail=f"{written} of {n_cut} windows written ({src.kind} source)",
    )
    if written == 0:
        face_reasons = {k: v for k, v in rejections.items() if k != Reason.NO_SPEECH}
        reason = max(face_reasons, key=face_reasons.get) if face_reasons else str(Reason.NO_SPEECH)
        status.status, status.reason = "rejected", reason
        status.detail = f"no window kept: {dict(rejections)}"
        ctx.clip_tar(clip.clip_id).unlink(missing_ok=True)
    return status


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _jpg(rgb: np.ndarray, quality_: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "JPEG", quality=quality_)
    return buf.getvalue()


def augment_starts(key: str, centre: int, n_audio: int, cfg: Config) -> np.ndarray:
    """Wav2Pix's augmentation: `augment` window starts drawn uniformly from the context around `centre`
    (clip samples), seeded by (seed, key), so a rebuild draws the same windows."""
    W, half = cfg.speech.window_samples, int(cfg.extras.augment_context_s * SAMPLE_RATE) // 2
    hi_max = max(0, n_audio - W)
    lo, hi = min(max(0, centre - half), hi_max), min(max(0, centre + half - W), hi_max)
    seed = int.from_bytes(hashlib.sha1(f"{cfg.extras.seed}:{key}".encode()).digest()[:8], "little")
    return np.random.default_rng(seed).integers(lo, max(lo, hi) + 1, cfg.extras.augment)


def make_sample(
    clip, src: Source, split, win, audio, frame_time_file_s, face: Face, ctx: BuildContext,
    measures: dict | None = None, file_start_s: float = 0.0, tiled_from: int | None = None,
) -> dict:  # fmt: skip
    """One WebDataset sample (all members already bytes) for a speech window and its face, with the extra
    members the config asks for (cfg.extras)."""
    cfg = ctx.cfg
    W = cfg.speech.window_samples
    clip_start = clip.start or 0
    offset_s = samples_to_seconds(src.offset)
    meta = {
        "clip_id": clip.clip_id,
        "identity": clip.identity,
        "source": clip.source,
        "split": split,
        "window_index": win.index,
        "window_start": round(samples_to_seconds(clip_start + win.start), 6),
        "window_end": round(samples_to_seconds(clip_start + win.start + W), 6),
        "frame_time": round(offset_s + frame_time_file_s, 6),
        "sample_rate": SAMPLE_RATE,
        "window_samples": W,
        "bbox": list(face.bbox),
        "landmarks5": face.landmarks5,
        "det_score": face.det_score,
        "face_px": face.width,
        "faces_seen": face.n_faces,
        "speaker_choice": face.choice,
        "speech_ratio": win.speech_ratio,
        "rms_dbfs": win.rms_dbfs,
        "crop_size": cfg.faces.crop_size,
        "pipeline_version": PIPELINE_VERSION,
        **(measures or {}),
    }
    if clip.gender:
        meta["gender"] = clip.gender
    key = f"{clip.clip_id}-{win.index:05d}"
    chunk = audio[win.start : win.start + W]
    sample = {"__key__": key, "wav": wav_bytes(chunk), "jpg": _jpg(face.crop, cfg.faces.jpeg_quality)}
    if tiled_from is not None:
        meta["tiled_from"] = tiled_from  # samples of real audio the window repeats
        meta["window_end"] = round(samples_to_seconds(clip_start + win.start + min(W, tiled_from)), 6)
    ex = cfg.extras
    for size in ex.face_sizes:
        small = np.asarray(Image.fromarray(face.crop, "RGB").resize((size, size), Image.LANCZOS))
        sample[f"face{size}.jpg"] = _jpg(small, cfg.faces.jpeg_quality)
    if ex.augment:
        centre = int(round((frame_time_file_s - file_start_s) * SAMPLE_RATE))
        starts = augment_starts(key, centre, len(audio), cfg)
        sample["aug.npy"] = _npy(np.stack([audio[s : s + W] for s in starts]).astype(np.int16))
        meta["aug_starts"] = [round(samples_to_seconds(clip_start + int(s)), 6) for s in starts]
    if ex.stft:
        sample["stft.npy"] = _npy(speech2face_stft(chunk))
    if ex.mel:
        speech = voiced(chunk, cfg.speech)
        speech = speech if len(speech) >= 400 else chunk  # too little VAD speech: the whole window
        sample["mel.npy"] = _npy(log_mel(speech))
        meta["mel_samples"] = len(speech)
    sample["json"] = json.dumps(meta, sort_keys=True).encode()
    if face.embedding is not None:
        sample["dlib.npy"] = _npy(face.embedding.astype(np.float32))
    return sample
