"""The run report: a funnel, rejections with examples, per-identity counts, histograms and face mosaics,
collected with bounded memory while a build finishes and written as one self-contained HTML file."""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .reasons import Reason
from .records import ClipStatus

MANIFEST_REASONS = {Reason.BAD_ROW, Reason.DUPLICATE_ID, Reason.OPTED_OUT}
SOURCE_REASONS = {
    Reason.FILE_NOT_FOUND, Reason.VIDEO_UNAVAILABLE, Reason.PRIVATE_VIDEO, Reason.AGE_RESTRICTED, Reason.BOT_CHECK,
    Reason.RATE_LIMITED, Reason.NETWORK_ERROR, Reason.UNSUPPORTED_URL, Reason.DOWNLOAD_ERROR, Reason.INTERNAL_ERROR,
}  # fmt: skip
DECODE_REASONS = {
    Reason.CORRUPT_MEDIA, Reason.NO_AUDIO, Reason.NO_VIDEO, Reason.SEGMENT_OUT_OF_RANGE, Reason.DECODER_KILLED
}  # fmt: skip
FACE_WINDOW_REASONS = {Reason.NO_FACE, Reason.FACE_TOO_SMALL, Reason.SPEAKER_NOT_FOUND, Reason.FRAME_MISSING}
# the window funnel after the speech windows: each stage, and the window rejections that end there
WINDOW_STAGES = [
    ("clean audio", {Reason.CLIPPING, Reason.LOW_SNR, Reason.MUSIC_OR_NOISE, Reason.SHOT_CUT}),
    ("faces", FACE_WINDOW_REASONS),
    ("good faces", {Reason.LOW_FACE_SCORE, Reason.BLURRY, Reason.BAD_POSE, Reason.FACE_OUT_OF_FRAME}),
    ("same identity", {Reason.IDENTITY_MISMATCH}),
    ("in sync", {Reason.AV_UNSYNCED}),  # only when filters.reject_av_unsynced; otherwise flagged and kept
]
SPEECH_BINS = 10  # speech ratio histogram over [0, 1]
SYNC_BINS = 10  # AV-sync score histogram over [-1, 1]
FACE_BIN_PX = 32  # face width histogram bin
THUMB_PX = 64


@dataclass
class RunReport:
    """Accumulates what the report shows; memory is bounded by the limits below, not by the run's size."""

    max_identities_shown: int = 200  # rows of the per-identity table
    max_mosaics: int = 40  # identities with a face mosaic
    thumbs_per_identity: int = 12
    examples_per_reason: int = 5
    funnel: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    window_reasons: Counter = field(default_factory=Counter)
    window_flags: Counter = field(default_factory=Counter)  # written windows flagged (kept)
    examples: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    window_examples: dict[str, list[tuple[str, str, bytes]]] = field(default_factory=dict)  # crops of rejections
    identities: dict[str, list] = field(default_factory=dict)  # identity -> [split, clips ok, samples, seconds]
    speech_hist: Counter = field(default_factory=Counter)
    face_hist: Counter = field(default_factory=Counter)
    sync_hist: Counter = field(default_factory=Counter)
    thumbs: dict[str, list[bytes]] = field(default_factory=dict)
    max_leakage_identities: int = 20000  # identities per split whose mean face enters the leakage check
    faces: dict[str, dict[str, list]] = field(default_factory=dict)  # split -> identity -> [sum of embeddings, n]
    leakage: dict | None = None

    def add_status(self, s: ClipStatus) -> None:
        """Count one clips.jsonl row into the funnel and the rejection tables."""
        self.funnel["manifest rows"] += 1
        if s.reason:
            self.reasons[s.reason] += 1
            ex = self.examples.setdefault(s.reason, [])
            if len(ex) < self.examples_per_reason:
                ex.append((s.id, s.detail))
        if s.reason in MANIFEST_REASONS:
            return
        self.funnel["clips"] += 1
        if s.reason in SOURCE_REASONS:
            return
        self.funnel["resolved"] += 1
        if s.reason in DECODE_REASONS:
            return
        self.funnel["decoded"] += 1
        self.window_reasons.update(s.window_rejections)
        self.window_flags.update(s.window_flags)
        left = s.windows_total - s.window_rejections.get(Reason.NO_SPEECH, 0)
        self.funnel["windows"] += s.windows_total
        self.funnel["speech windows"] += left
        for stage, reasons in WINDOW_STAGES:
            left -= sum(s.window_rejections.get(r, 0) for r in reasons)
            self.funnel[stage] += left
        self.funnel["written"] += s.windows_written
        if s.status == "ok" and s.identity is not None:
            row = self.identities.setdefault(s.identity, [s.split, 0, 0, 0.0])
            row[1] += 1

    def wants_window_examples(self, s: ClipStatus) -> bool:
        """Whether this clip has window rejections of a reason that still lacks example crops."""
        return any(len(self.window_examples.get(r, [])) < self.examples_per_reason for r in s.window_rejections)

    def add_rejected_window(self, record: dict, jpg: bytes) -> None:
        """A rejected window's crop (from .work/rejected) as an example of its reason."""
        ex = self.window_examples.setdefault(record["reason"], [])
        if len(ex) < self.examples_per_reason:
            ex.append((record["key"], record.get("detail") or "", _thumbnail(jpg)))

    def add_sample(self, meta: dict, jpg: bytes) -> None:
        """Count one written sample into the histograms, the identity table and the mosaics."""
        identity = meta["identity"]
        row = self.identities.setdefault(identity, [meta.get("split"), 0, 0, 0.0])
        row[2] += 1
        row[3] += meta["window_end"] - meta["window_start"]
        self.speech_hist[min(int(meta["speech_ratio"] * SPEECH_BINS), SPEECH_BINS - 1)] += 1
        self.face_hist[int(meta["face_px"]) // FACE_BIN_PX] += 1
        if meta.get("av_sync") is not None:
            self.sync_hist[min(int((meta["av_sync"] + 1) / 2 * SYNC_BINS), SYNC_BINS - 1)] += 1
        thumbs = self.thumbs.get(identity)
        if thumbs is None and len(self.thumbs) < self.max_mosaics:
            thumbs = self.thumbs[identity] = []
        if thumbs is not None and len(thumbs) < self.thumbs_per_identity:
            thumbs.append(_thumbnail(jpg))

    def add_embedding(self, meta: dict, npy: bytes | None) -> None:
        """Add one written sample's dlib embedding to its identity's mean face (for the leakage check)."""
        if npy is None:
            return
        ids = self.faces.setdefault(str(meta.get("split")), {})
        row = ids.get(meta["identity"])
        if row is None:
            if len(ids) >= self.max_leakage_identities:
                return
            row = ids[meta["identity"]] = [np.zeros(128, np.float64), 0]
        row[0] += np.load(io.BytesIO(npy)).astype(np.float64)
        row[1] += 1

    def check_leakage(self, threshold: float, examples: int = 10) -> dict:
        """Near-duplicate faces across splits: pairs of identities in different splits whose mean faces lie
        closer than `threshold` (dlib distance), with the closest pairs as examples. Sets self.leakage."""
        means = {
            split: (list(ids), np.stack([v / n for v, n in ids.values()]).astype(np.float32))
            for split, ids in sorted(self.faces.items())
            if ids
        }
        pairs, found = 0, []
        names = list(means)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                (ia, va), (ib, vb) = means[a], means[b]
                sb = (vb**2).sum(1)
                for lo in range(0, len(va), 256):
                    chunk = va[lo : lo + 256]
                    d = np.sqrt(np.maximum((chunk**2).sum(1)[:, None] + sb[None, :] - 2 * chunk @ vb.T, 0))
                    hit = np.argwhere(d < threshold)
                    pairs += len(hit)
                    found += [(float(d[r, c]), a, ia[lo + r], b, ib[c]) for r, c in hit]
                    found = sorted(found)[:examples]
        self.leakage = {
            "threshold": threshold,
            "identities_checked": {split: len(ids) for split, (ids, _) in means.items()},
            "pairs": pairs,
            "examples": [
                {"distance": round(dist, 4), "a": [sa, ia], "b": [sb_, ib]} for dist, sa, ia, sb_, ib in found
            ],
        }
        return self.leakage

    def sample_state(self) -> dict:
        """What add_sample gathered, as JSON: kept with the shards so an unchanged re-run need not re-read them."""
        return {
            "speech_hist": dict(self.speech_hist),
            "face_hist": dict(self.face_hist),
            "sync_hist": dict(self.sync_hist),
            "samples": {i: [v[0], v[2], v[3]] for i, v in self.identities.items() if v[2]},
            "thumbs": {i: [base64.b64encode(t).decode() for t in ts] for i, ts in self.thumbs.items()},
            "leakage": self.leakage,
        }

    def restore_sample_state(self, state: dict) -> None:
        self.speech_hist.update({int(k): v for k, v in state["speech_hist"].items()})
        self.face_hist.update({int(k): v for k, v in state["face_hist"].items()})
        self.sync_hist.update({int(k): v for k, v in state.get("sync_hist", {}).items()})
        for identity, (split, n, seconds) in state["samples"].items():
            row = self.identities.setdefault(identity, [split, 0, 0, 0.0])
            row[2] += n
            row[3] += seconds
        self.thumbs = {i: [base64.b64decode(t) for t in ts] for i, ts in state["thumbs"].items()}
        self.leakage = state.get("leakage")

    def funnel_rows(self) -> list[tuple[str, int]]:
        stages = ["manifest rows", "clips", "resolved", "decoded", "windows", "speech windows"]
        stages += [stage for stage, _ in WINDOW_STAGES] + ["written"]
        return [(stage, self.funnel[stage]) for stage in stages]

    def _leakage_html(self) -> str:
        return _leakage_html(self)

    def markdown(self, summary: dict) -> str:
        """A short summary with the funnel (a Prefect markdown artifact)."""
        lines = ["# voiceface build", "", "| stage | count |", "|---|---|"]
        lines += [f"| {stage} | {n} |" for stage, n in self.funnel_rows()]
        lines += [f"| flagged {flag} (kept) | {n} |" for flag, n in self.window_flags.most_common()]
        lines += ["", "| rejection reason | clips |", "|---|---|"]
        lines += [f"| {r} | {n} |" for r, n in self.reasons.most_common()]
        lines += ["", f"samples: {summary['samples']}, shards: {summary['shards']}, seconds: {summary['seconds']}"]
        return "\n".join(lines)

    def html(self, summary: dict, title: str = "voiceface build report") -> str:
        """The whole report as one HTML page with inline CSS and images (opens offline)."""
        e = html.escape
        funnel = self.funnel_rows()
        # clips and windows are counted on scales of their own: a bar is a share of its group's first stage
        group_top: dict[str, int] = {}
        for stage, n in funnel:
            group_top.setdefault(_unit(stage), max(n, 1))
        funnel_rows = "".join(
            f"<tr><td>{e(stage)}</td><td class=n>{n}</td><td class=unit>{_unit(stage)}</td><td>"
            f"<div class='bar {_unit(stage)}' style='width:{100 * min(1.0, n / group_top[_unit(stage)]):.1f}%'>"
            f"</div></td></tr>"
            for stage, n in funnel
        )
        reason_rows = (
            "".join(
                f"<tr><td><code>{e(r)}</code></td><td class=n>{n}</td><td>"
                + "<br>".join(f"<code>{e(i)}</code>: {e(d)}" for i, d in self.examples.get(r, []))
                + "</td></tr>"
                for r, n in self.reasons.most_common()
            )
            or "<tr><td colspan=3>none</td></tr>"
        )
        window_rows = (
            "".join(
                f"<tr><td><code>{e(r)}</code></td><td class=n>{n}</td><td class=examples>"
                + "".join(
                    f"<img alt='{e(k)}' title='{e(k)}: {e(d)}' src='{_data_uri(t)}'>"
                    for k, d, t in self.window_examples.get(r, [])
                )
                + "</td></tr>"
                for r, n in self.window_reasons.most_common()
            )
            or "<tr><td colspan=3>none</td></tr>"
        )
        flag_rows = _count_rows(self.window_flags)
        ids = sorted(self.identities.items(), key=lambda kv: (-kv[1][2], kv[0]))
        id_rows = (
            "".join(
                f"<tr><td>{e(str(i))}</td><td>{e(str(v[0]))}</td><td class=n>{v[1]}</td><td class=n>{v[2]}</td>"
                f"<td class=n>{v[3]:.1f}</td></tr>"
                for i, v in ids[: self.max_identities_shown]
            )
            or "<tr><td colspan=5>none</td></tr>"
        )
        more = len(ids) - self.max_identities_shown
        more_note = f"<p>… and {more} more identities (see clips.jsonl).</p>" if more > 0 else ""
        speech_labels = [f"{i / SPEECH_BINS:.1f}" for i in range(SPEECH_BINS)]
        speech_svg = _histogram([self.speech_hist[i] for i in range(SPEECH_BINS)], speech_labels)
        face_max = max(self.face_hist, default=0)
        face_svg = _histogram(
            [self.face_hist[i] for i in range(face_max + 1)], [str(i * FACE_BIN_PX) for i in range(face_max + 1)]
        )
        sync_labels = [f"{-1 + 2 * i / SYNC_BINS:.1f}" for i in range(SYNC_BINS)]
        sync_svg = _histogram([self.sync_hist[i] for i in range(SYNC_BINS)], sync_labels)
        mosaics = (
            "".join(
                f"<div class=mosaic><h3>{e(str(i))}</h3>"
                + "".join(f"<img alt='' src='data:image/jpeg;base64,{base64.b64encode(t).decode()}'>" for t in thumbs)
                + "</div>"
                for i, thumbs in self.thumbs.items()
            )
            or "<p>no faces written</p>"
        )
        shards = ", ".join(f"{e(k)}: {v}" for k, v in summary.get("shards", {}).items()) or "none"
        return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{e(title)}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}}
table{{border-collapse:collapse;margin:8px 0 20px}} td,th{{border-bottom:1px solid #ddd;padding:4px 10px;
text-align:left;vertical-align:top}} td.n{{text-align:right;font-variant-numeric:tabular-nums}}
.bar{{background:#4a78b5;height:12px;min-width:1px}} .bar.clips{{background:#b5814a}} td.unit{{color:#777}}
td:last-child{{min-width:260px}}
.mosaic{{display:inline-block;margin:0 16px 16px 0;vertical-align:top;max-width:{6 * (THUMB_PX + 4)}px}}
.mosaic h3{{font-size:13px;margin:4px 0}} .mosaic img{{width:{THUMB_PX}px;height:{THUMB_PX}px;margin:2px}}
.examples img{{width:{THUMB_PX}px;height:{THUMB_PX}px;margin:2px}}
.hist{{display:inline-block;margin-right:40px}} code{{background:#f3f3f3;padding:0 3px}}
</style></head><body>
<h1>{e(title)}</h1>
<p>{summary.get("manifest_rows", 0)} manifest rows: {summary.get("clips_ok", 0)} ok,
{summary.get("clips_rejected", 0)} rejected, {summary.get("clips_failed", 0)} failed.
New {summary.get("clips_new", 0)}, cached {summary.get("clips_cached", 0)}, redone {summary.get("clips_redone", 0)}.
{summary.get("samples", 0)} samples in shards ({shards}); {summary.get("seconds", 0)} s.</p>
<h2>Funnel</h2>
<p>Clip stages and window stages have scales of their own: each bar is a share of its group's first row.</p>
<table><tr><th>stage</th><th>count</th><th>of</th><th></th></tr>{funnel_rows}</table>
<h2>Clip rejections and failures</h2>
<table><tr><th>reason</th><th>clips</th><th>examples</th></tr>{reason_rows}</table>
<h2>Window rejections</h2>
<p>Every rejected window is kept in <code>.work/rejected/</code> with its measures; those with a face can be queued
for review (<code>voiceface queue OUT --reason REASON</code>).</p>
<table><tr><th>reason</th><th>windows</th><th>example crops</th></tr>{window_rows}</table>
<h2>Written windows flagged for a person or a trainer to weigh</h2>
<table><tr><th>flag</th><th>windows</th></tr>{flag_rows}</table>
<h2>Distributions of written windows</h2>
<div class=hist><h3>speech ratio</h3>{speech_svg}</div><div class=hist><h3>face width (px)</h3>{face_svg}</div>
<div class=hist><h3>AV-sync score</h3>{sync_svg}</div>
{self._leakage_html()}
<h2>Identities</h2>
<table><tr><th>identity</th><th>split</th><th>clips</th><th>samples</th><th>seconds</th></tr>{id_rows}</table>
{more_note}
<h2>Faces per identity</h2>{mosaics}
</body></html>
"""


def _leakage_html(report: RunReport) -> str:
    lk = report.leakage
    if not lk:
        return ""
    e = html.escape
    rows = "".join(
        f"<tr><td class=n>{x['distance']:.3f}</td><td>{e(x['a'][0])}: {e(str(x['a'][1]))}</td>"
        f"<td>{e(x['b'][0])}: {e(str(x['b'][1]))}</td></tr>"
        for x in lk["examples"]
    )
    checked = ", ".join(f"{e(k)}: {v}" for k, v in lk["identities_checked"].items())
    return (
        f"<h2>Leakage across splits</h2><p>{lk['pairs']} pairs of identities in different splits have mean faces "
        f"closer than {lk['threshold']} (identities checked: {checked or 'none'}).</p>"
        + (f"<table><tr><th>distance</th><th>a</th><th>b</th></tr>{rows}</table>" if rows else "")
    )


def _data_uri(jpg: bytes) -> str:
    return f"data:image/jpeg;base64,{base64.b64encode(jpg).decode()}"


def _thumbnail(jpg: bytes) -> bytes:
    img = Image.open(io.BytesIO(jpg)).convert("RGB")
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _count_rows(counts: Counter) -> str:
    """Table rows of (code, count), most common first."""
    rows = "".join(
        f"<tr><td><code>{html.escape(r)}</code></td><td class=n>{n}</td></tr>" for r, n in counts.most_common()
    )
    return rows or "<tr><td colspan=2>none</td></tr>"


def _histogram(counts: list[int], labels: list[str], width: int = 380, height: int = 150, unit: str = "windows") -> str:
    """Inline SVG bars with both axes: the bins below, counts of `unit` on a y-axis with three ticks."""
    if not counts or not any(counts):
        return "<p>no data</p>"
    top = max(counts)
    left, bottom, head = 44, 22, 10  # room for the y-axis labels, the x labels, the top tick
    plot_w, plot_h = width - left, height - bottom - head
    bw = plot_w / len(counts)
    y = lambda c: head + plot_h - plot_h * c / top  # noqa: E731
    bars = "".join(
        f"<rect x='{left + i * bw + 1:.1f}' y='{y(c):.1f}' width='{bw - 2:.1f}' height='{plot_h * c / top:.1f}' "
        f"fill='#4a78b5'><title>{html.escape(lab)}: {c}</title></rect>"
        for i, (c, lab) in enumerate(zip(counts, labels, strict=True))
    )
    step = max(1, len(labels) // 6)
    xticks = "".join(
        f"<text x='{left + i * bw:.1f}' y='{height - 6}' font-size='10'>{html.escape(lab)}</text>"
        for i, lab in enumerate(labels)
        if i % step == 0
    )
    yticks = "".join(
        f"<line x1='{left - 4}' x2='{width}' y1='{y(v):.1f}' y2='{y(v):.1f}' stroke='#ddd'/>"
        f"<text x='{left - 6}' y='{y(v) + 3:.1f}' font-size='10' text-anchor='end'>{v}</text>"
        for v in sorted({0, top // 2, top})
    )
    axes = (
        f"<line x1='{left}' x2='{left}' y1='{head}' y2='{head + plot_h}' stroke='#888'/>"
        f"<line x1='{left}' x2='{width}' y1='{head + plot_h}' y2='{head + plot_h}' stroke='#888'/>"
        f"<text x='2' y='{head - 1}' font-size='10' fill='#555'>{html.escape(unit)}</text>"
    )
    return f"<svg width='{width}' height='{height}' role=img>{yticks}{bars}{axes}{xticks}</svg>"


CLIP_STAGES = {"manifest rows", "clips", "resolved", "decoded"}


def _unit(stage: str) -> str:
    return "clips" if stage in CLIP_STAGES else "windows"
