"""The clip runner: one clip from source to samples through the stages of pipeline/stages
(source → decode → speech → cuts → faces → avsync → identity → extras).

`run_clip` is the one place where a clip's failure is caught and turned into a status row, so one bad clip
never stops a run; every stage below it raises. The clip's counts (window rejections, flags, the speaker
choice) are derived from the records the stages emit. Its kept samples go to `.work/clips/<id>.tar`, and every
rejected window to `.work/rejected/<id>.jsonl` (reason, measures, times), with the sample it would have made
in `.work/rejected/<id>.tar` where a face was found, so a reviewer can rescue it.
"""

from __future__ import annotations

import functools
import json
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import PIPELINE_VERSION, interrupt
from .config import SAMPLE_RATE, Config
from .reasons import ClipError, Reason, is_final
from .records import Clip, ClipStatus, FaceHit, SpeakerChoice, Verdict, samples_to_seconds, window_key
from .splits import split_for_identity
from .stages.avsync import AVSyncStage
from .stages.cuts import ShotCuts
from .stages.decode import FrameGrid, decode_clip_audio, decode_frames
from .stages.extras import SampleMaker
from .stages.faces import FaceStage
from .stages.identity import IdentityStage
from .stages.source import SourceStage
from .stages.speech import SpeechStage
from .tars import atomic_write_bytes, write_samples


def rejected_dir(out: Path) -> Path:
    """OUT/.work/rejected: each clip's rejected windows (<id>.jsonl) and the samples of those with a face (<id>.tar)."""
    return Path(out) / ".work" / "rejected"


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

    def rejected_tar(self, clip_id: str) -> Path:
        return rejected_dir(self.out) / f"{clip_id}.tar"

    def rejected_log(self, clip_id: str) -> Path:
        return rejected_dir(self.out) / f"{clip_id}.jsonl"

    def download_dir(self, clip_id: str) -> Path:
        return self.work / "sources" / clip_id

    @functools.cached_property
    def cache_key(self) -> str:
        # once per context (the config is frozen): hashing it for each of a million clips costs a millisecond each
        return f"{PIPELINE_VERSION}:{self.cfg.clip_hash()}"


def split_of(clip: Clip, ctx: BuildContext) -> str:
    return clip.split or split_for_identity(clip.identity, ctx.cfg.shards)


def cached_status(clip: Clip, ctx: BuildContext) -> ClipStatus | None:
    """The finished status of an earlier run with the same settings, if the clip needs no work."""
    status = read_status(ctx, clip.clip_id)
    return status if status is not None and is_cached(status, ctx) else None


def is_cached(status: ClipStatus, ctx: BuildContext) -> bool:
    """Whether a clip's recorded status is final under these settings (the clip needs no work)."""
    if status.cache_key != ctx.cache_key or not is_final(status.status, status.reason):
        return False
    return status.status != "ok" or ctx.clip_tar(status.id).exists()


def run_clip(clip: Clip, ctx: BuildContext, download_gate: Callable[[], None] | None = None) -> ClipStatus:
    """Process one clip and record its status. A bad clip becomes a rejected/failed status; a bug raises
    (the orchestrator records it with `record_crash` and goes on with the other clips).

    `download_gate` is called before each download attempt (the flow passes a rate limiter)."""
    t0 = time.perf_counter()
    try:
        try:
            status = process_clip(clip, ctx, download_gate)
        except ClipError as err:
            status = _status(clip, ctx, err.status, str(err.reason), err.detail, **err.extra)
        finally:
            if not ctx.cfg.download.keep_sources:
                shutil.rmtree(ctx.download_dir(clip.clip_id), ignore_errors=True)
        return _record(status, ctx, t0)
    except OSError as err:  # a full disk is the run's problem, not the clip's: no status, the run stops
        if err.errno in interrupt.DISK_FULL_ERRNOS and not isinstance(err, interrupt.DiskFull):
            raise interrupt.DiskFull(err.errno, interrupt.disk_full_message(err)) from err
        raise


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
    # the status file is written last: it is the clip's completion marker. It is renamed into place but not
    # fsynced (the clip tar it vouches for is): after a power cut a lost or empty status only means a redo
    atomic_write_bytes(path, json.dumps(status.to_dict(), sort_keys=True).encode(), sync=False)
    return status


def read_status(ctx: BuildContext, clip_id: str) -> ClipStatus | None:
    """The clip's recorded status; None when there is none, or when it is unreadable (the clip is redone)."""
    try:
        return ClipStatus.from_dict(json.loads(ctx.clip_status_path(clip_id).read_bytes()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # empty or torn by a power cut: not a result
        return None


def process_clip(clip: Clip, ctx: BuildContext, download_gate: Callable[[], None] | None = None) -> ClipStatus:
    """Chain the stages over one clip, writing its samples and its rejected windows. Raises ClipError."""
    cfg = ctx.cfg
    interrupt.check()
    media = SourceStage(cfg.download, ctx.work / "sources", ctx.mirror, ctx.base_dir)(clip, download_gate)
    audio = decode_clip_audio(media, cfg)
    windows, rejected = SpeechStage(cfg.speech, cfg.filters)(audio)
    n_cut = len(windows) + len(rejected)
    W = cfg.speech.window_samples
    if n_cut == 0:
        got_s = len(audio.original) / SAMPLE_RATE
        raise ClipError(Reason.TOO_SHORT, f"{got_s:.2f}s of audio is shorter than one {W}-sample window")
    split = split_of(clip, ctx)
    make = SampleMaker(media, audio, split, cfg)
    if not windows:
        counts = window_counts(rejected)
        detail = f"none of {n_cut} windows has speech ratio >= {cfg.speech.min_speech_ratio}"
        reason = Reason.NO_SPEECH
        if any(v.reason != Reason.NO_SPEECH for v in rejected):
            reason = Reason(max((r for r in counts if r != Reason.NO_SPEECH), key=counts.get))
            detail = f"no window passed the speech filters: {counts_text(counts)}"
        write_rejected(ctx, clip, rejected, make)
        raise ClipError(reason, detail, windows_total=n_cut, window_rejections=dict(counts))

    cuts = ShotCuts.detect(media, cfg)
    if cuts is not None:
        windows, straddling = cuts.split(windows)
        rejected += straddling
    grid = FrameGrid.for_clip(cfg, n_cut)
    faces = FaceStage(cfg.faces, cfg.filters, windows, grid, clip.hint, shot_of=cuts.shot if cuts else None)
    faces.tracker.candidates = cfg.faces.active_speaker and cfg.filters.av_sync  # several faces: AV sync chooses
    av = None
    if cfg.filters.av_sync:
        av = AVSyncStage(cfg.filters, audio, media.file_start_s, faces.models, media.info.fps or 25.0,
                         grid.step_s, cuts.shot if cuts else None)  # fmt: skip
    identity = IdentityStage(cfg.faces, cfg.filters)
    choices: Counter[str] = Counter()  # how each face that passed the face filters was chosen
    hits: list[FaceHit] = []  # faces that passed every stage so far, in the order they are written

    def take(out: Iterable[FaceHit | Verdict]) -> None:
        for o in out:
            (rejected if isinstance(o, Verdict) else hits).append(o)

    for frame in decode_frames(media, grid, *(av.context if av else (0.0, 0.0))):
        interrupt.check()  # a stopping run abandons the clip here (the decoder is stopped, no status is written)
        if not frame.on_grid:  # a grey context frame, for the AV-sync score only
            take(av.push(frame))  # type: ignore[union-attr]
            continue
        if (hit := faces(frame)) is None:
            continue
        choices[hit.face.choice] += 1
        if av:
            av.start(hit)
        else:
            hits.append(hit)
    if av:
        take(av.finish())
    kept, mismatched = identity(identity.embed(hits))
    rejected += mismatched + faces.finish()

    ctx.clip_tar(clip.clip_id).parent.mkdir(parents=True, exist_ok=True)
    written = write_samples(ctx.clip_tar(clip.clip_id), (make(h).encoded() for h in kept), cfg.shards.mtime)
    write_rejected(ctx, clip, rejected, make, identity)
    rejections = window_counts(rejected)
    scores = [h.measures["av_sync"] for h in kept if h.measures.get("av_sync") is not None]
    offsets = [h.measures["av_offset_s"] for h in kept if h.measures.get("av_offset_s") is not None]
    confidences = [h.measures["av_confidence"] for h in kept if h.measures.get("av_confidence") is not None]
    flags = Counter(str(Reason.AV_UNSYNCED) for h in kept if h.measures.get("av_unsynced"))
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
        av_sync=round(float(statistics.median(scores)), 3) if scores else None,
        av_offset_s=round(float(statistics.median(offsets)), 3) if offsets else None,
        av_confidence=round(float(statistics.median(confidences)), 3) if confidences else None,
        speaker_choice=speaker_choice(choices),
        detail=f"{written} of {n_cut} windows written ({media.source.kind} source)",
    )
    if written == 0:
        face_reasons = {k: v for k, v in rejections.items() if k != Reason.NO_SPEECH}
        reason = max(face_reasons, key=face_reasons.get) if face_reasons else str(Reason.NO_SPEECH)
        status.status, status.reason = "rejected", reason
        status.detail = f"no window kept: {counts_text(rejections)}"
        ctx.clip_tar(clip.clip_id).unlink(missing_ok=True)
    return status


def window_counts(rejected: list[Verdict]) -> Counter[str]:
    """Rejected windows by reason: windows without speech first, then in the order the stages rejected them."""
    counts: Counter[str] = Counter()
    for v in sorted(rejected, key=lambda v: v.reason != Reason.NO_SPEECH):
        counts[str(v.reason)] += 1
    return counts


def counts_text(counts: dict[str, int]) -> str:
    """Reason counts as a person reads them: "no_face 5, blurry 2"."""
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def speaker_choice(choices: Counter[str]) -> str | None:
    """ "hint", "sync" or "largest" when the speaker was picked among several faces at least once."""
    for choice in (SpeakerChoice.HINT, SpeakerChoice.SYNC, SpeakerChoice.LARGEST):
        if choices[choice]:
            return str(choice)
    return None


def rejected_record(clip: Clip, v: Verdict, has_sample: bool) -> dict:
    """One line of `<id>.rejected.jsonl`: what was measured on a rejected window, and why it went."""
    w, start = v.window, clip.start or 0
    rec = {
        "key": window_key(clip.clip_id, w.index),
        "clip_id": clip.clip_id,
        "identity": clip.identity,
        "window_index": w.index,
        "reason": str(v.reason),
        "detail": v.detail,
        "window_start": round(samples_to_seconds(start + w.start), 6),
        "window_end": round(samples_to_seconds(start + w.start + w.length), 6),
        "speech_ratio": w.speech_ratio,
        "rms_dbfs": w.rms_dbfs,
        "measures": v.measures,
        "sample": has_sample,  # its sample (face crop and all) is in <id>.rejected.tar
    }
    if v.hit is not None:
        rec["frame_time"] = v.hit.frame_time
        rec["bbox"] = list(v.hit.face.bbox)
        rec["det_score"] = v.hit.face.det_score
    return rec


def write_rejected(
    ctx: BuildContext, clip: Clip, rejected: list[Verdict], make: SampleMaker, identity: IdentityStage | None = None
) -> None:
    """Every rejected window of the clip, as data: `rejected/<id>.jsonl`, and `rejected/<id>.tar` with the samples
    of those where a face was found (embedded, so a rescued window is a whole sample)."""
    rejected = sorted(rejected, key=lambda v: v.window.index)
    with_face = [v for v in rejected if v.hit is not None]
    tar, log = ctx.rejected_tar(clip.clip_id), ctx.rejected_log(clip.clip_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    if with_face:
        hits = [v.hit for v in with_face]
        if identity is not None:
            hits = identity.embed(hits)  # type: ignore[arg-type]
        write_samples(tar, (make(h).encoded() for h in hits), ctx.cfg.shards.mtime)  # type: ignore[arg-type]
    else:
        tar.unlink(missing_ok=True)
    lines = [json.dumps(rejected_record(clip, v, v.hit is not None), sort_keys=True) for v in rejected]
    atomic_write_bytes(log, "".join(line + "\n" for line in lines).encode())
