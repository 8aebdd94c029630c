"""Evaluate a run on a split (val by default) with the seeds' metrics → RUN/eval.json and RUN/eval.html.

Wav2Pix: `landmark_detection_rate` of the generated faces (and of the real crops at the same size, for scale),
`identity_top1` / `identity_top5`: the speaker among the split's identities by dlib-embedding distance to each
identity's centroid of real `dlib.npy`. Our splits are identity-disjoint, so val speakers were never seen in
training: a harder test than Wav2Pix's, whose test split shared its speakers with training.
Speech2Face: `recall_at_k` of the true face feature among all the split's, and identity top-1 / top-5 of the
predicted feature against the identities' centroids of true features; no face is generated, so no landmark rate.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import torch

from trainer import metrics as M
from trainer.common import autocast, grid, load_checkpoint, loss_plot_svg, pick_device, read_metrics, to_uint8
from trainer.data import Decoder, collate, eval_samples

# The papers' figures, each printed only beside a metric measured the same way (`comparable`).
SEEDS = {
    # Wav2Pix's landmark rate is the same measure (dlib's 68 landmarks on generated faces); its identity top-1 was
    # measured on speakers seen in training, ours on held-out ones: not comparable.
    "wav2pix": {"landmark_detection_rate": 0.9025, "identity_top1": 0.5008},
    # a reimplementation's recall on 600 test faces, with the VGG-Face fc7 target only
    "speech2face": {"recall_at_k": {"1": 0.51, "10": 0.66}},
    "voice2face": {},
    "cae": {},
}


def comparable(model: str, metric: str, result: dict) -> bool:
    """Whether the paper's figure for `metric` was measured as ours is."""
    if model == "wav2pix":
        return metric == "landmark_detection_rate"
    if model == "speech2face":
        return metric == "recall_at_k" and result.get("face_target") == "vggface"
    return False


BATCH = 64


def _batches(it, n: int, limit: int | None = None):
    """Batches of n decoded samples, with progress over at most `limit` samples (the split may hold fewer)."""
    from pipeline.progress import Progress

    buf = []
    with Progress(limit or 0, "evaluating", "samples") as progress:
        for s in it:
            buf.append(s)
            progress.advance()
            if len(buf) == n:
                yield collate(buf)
                buf = []
    if buf:
        yield collate(buf)


def _png(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _eval_wav2pix(ck, shards, split, limit, device):
    from trainer.wav2pix.model import Wav2Pix, Wav2PixArgs

    args = Wav2PixArgs(**ck["model_args"])
    model = Wav2Pix(args).to(device)
    model.load_state_dict(ck["state"])
    model.eval()
    dec = Decoder(ck["labels"], ("w2p_window", "face", "dlib"), face_size=args.image_size, wav_len=args.wav_len)
    real, fake, dl, ids = [], [], [], []
    with torch.no_grad():
        for b in _batches(eval_samples(shards, dec, split, limit), BATCH, limit):
            with autocast(device):
                out = model(b["wav"].to(device))
            fake.append(to_uint8(out))
            real.append(b["face"].permute(0, 2, 3, 1).numpy())
            dl.append(b["dlib"].numpy())
            ids += b["identity"]
    real, fake, dl = np.concatenate(real), np.concatenate(fake), np.concatenate(dl)
    names, centroids = M.identity_centroids(dl, ids)
    top = M.identity_topk(M.embed_faces(fake), ids, names, centroids)
    result = dict(
        landmark_detection_rate=M.landmark_detection_rate(fake),
        landmark_detection_rate_real=M.landmark_detection_rate(real),
        identity_top1=top[1],
        identity_top5=top[5],
    )
    rows = [(real[:16], "real"), (fake[:16], "generated from the voice")]
    return result, len(ids), len(names), rows


def _eval_speech2face(ck, shards, split, limit, device):
    from trainer.speech2face.model import VoiceEncoder, VoiceEncoderArgs

    args = VoiceEncoderArgs(**ck["model_args"])
    model = VoiceEncoder(args).to(device)
    model.load_state_dict(ck["state"])
    model.eval()
    target = ck.get("target") or ("vggface" if args.out_dim == 4096 else "dlib")
    dec = Decoder(ck["labels"], (args.feature, "feature", "face"), face_size=64, target=target)
    pred, true, faces, ids = [], [], [], []
    with torch.no_grad():
        for b in _batches(eval_samples(shards, dec, split, limit), BATCH, limit):
            with autocast(device):
                pred.append(model(b[args.feature].to(device)).float().cpu().numpy())
            true.append(b["feature"].numpy())
            faces.append(b["face"].permute(0, 2, 3, 1).numpy())
            ids += b["identity"]
    pred, true, faces = np.concatenate(pred), np.concatenate(true), np.concatenate(faces)
    unit = true / (np.linalg.norm(true, axis=1, keepdims=True) + 1e-12)
    names, centroids = M.identity_centroids(unit, ids)
    top = M.identity_topk(pred / (np.linalg.norm(pred, axis=1, keepdims=True) + 1e-12), ids, names, centroids)
    recall = M.recall_at_k(pred, true, ks=(1, 5, 10))
    result = dict(
        face_target=target,
        landmark_detection_rate=None,  # no face is generated
        identity_top1=top[1],
        identity_top5=top[5],
        recall_at_k={str(k): v for k, v in recall.items()},
    )
    nearest = (pred @ true.T).argmax(1) if len(pred) else np.zeros(0, int)
    rows = [(faces[:16], "the speaker"), (faces[nearest[:16]], "the face feature nearest to the voice's prediction")]
    return result, len(ids), len(names), rows


def _eval_generator(ck, shards, split, limit, device):
    """voice2face and CAE: faces generated from each val sample's utterance (CAE: with the face of another val
    speaker as the proposal), scored as Wav2Pix's are."""
    import random

    if ck["model"] == "voice2face":
        from trainer.voice2face.train import load_model
    else:
        from trainer.cae.train import load_model
    model, _ = load_model(None, device, ck=ck)
    frames = ck["config"]["nframe_range"][1]
    dec = Decoder(ck["labels"], ("utt", "face", "dlib"), face_size=64, utt_frames=frames)
    random.seed(0)  # the utterance crops
    real, fake, dl, ids = [], [], [], []
    with torch.no_grad():
        for b in _batches(eval_samples(shards, dec, split, limit), BATCH, limit):
            with autocast(device):
                if ck["model"] == "voice2face":
                    out = model(b["utt"].to(device))
                else:
                    from trainer.cae.train import proposals

                    names = sorted(set(b["identity"]))
                    pick, _ = proposals(torch.tensor([names.index(i) for i in b["identity"]]))
                    face = b["face"].to(device).float() / 127.5 - 1
                    out = model(face[pick.to(device)], b["utt"].to(device))
            fake.append(to_uint8(out))
            real.append(b["face"].permute(0, 2, 3, 1).numpy())
            dl.append(b["dlib"].numpy())
            ids += b["identity"]
    real, fake, dl = np.concatenate(real), np.concatenate(fake), np.concatenate(dl)
    names, centroids = M.identity_centroids(dl, ids)
    top = M.identity_topk(M.embed_faces(fake), ids, names, centroids)
    result = dict(
        landmark_detection_rate=M.landmark_detection_rate(fake),
        landmark_detection_rate_real=M.landmark_detection_rate(real),
        identity_top1=top[1],
        identity_top5=top[5],
    )
    rows = [(real[:16], "real"), (fake[:16], "generated from the voice")]
    return result, len(ids), len(names), rows


def chance_levels(result: dict, n_ids: int, n: int) -> dict:
    """Each metric's chance level: top-k of n identities guessed at random is min(k, n)/n; recall@K among n faces
    is K/n; the landmark rate of noise is 0 (measured: noise images score 0)."""
    out = {}
    if result.get("landmark_detection_rate") is not None:
        out["landmark_detection_rate"] = 0.0
    for k in (1, 5):
        if f"identity_top{k}" in result and n_ids:
            out[f"identity_top{k}"] = min(k, n_ids) / n_ids
    if "recall_at_k" in result and n:
        out["recall_at_k"] = {k: min(int(k), n) / n for k in result["recall_at_k"]}
    return out


def report_lines(result: dict) -> list[str]:
    """One line per metric: value, chance level, and the paper's figure only where it was measured the same way."""
    lines = []
    for name, chance in result["chance"].items():
        value = result[name]
        paper = result["seeds_reported"].get(name) if comparable(result["model"], name, result) else None
        line = f"{name}: {json.dumps(value)} (chance {json.dumps(chance)})"
        lines.append(line + (f"; paper: {json.dumps(paper)}" if paper is not None else ""))
    return lines


def evaluate(run, shards, split: str = "val", limit: int | None = 2000, device: str = "auto") -> dict:
    """Write RUN/eval.json and RUN/eval.html; return the metrics."""
    run = Path(run)
    device = pick_device(device)
    ck = load_checkpoint(run / "checkpoint.pt", device)
    fn = {"wav2pix": _eval_wav2pix, "speech2face": _eval_speech2face}.get(ck["model"], _eval_generator)
    result, n, n_ids, rows = fn(ck, shards, split, limit, device)
    result = dict(
        model=ck["model"], step=ck["step"], split=split, samples=n, identities=n_ids,
        chance_top1=1 / n_ids if n_ids else None, **result, chance=chance_levels(result, n_ids, n),
    )  # fmt: skip
    result["seeds_reported"] = {k: v for k, v in SEEDS[ck["model"]].items() if comparable(ck["model"], k, result)}
    if n_ids < 2:
        print(f"warning: the {split} split has {n_ids} identities: identity metrics are at chance 1.0")
    for line in report_lines(result):
        print(line)
    (run / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    figures = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>" for k, v in result.items()
    )
    metrics = run / "metrics.csv"
    losses = loss_plot_svg(read_metrics(metrics)) if metrics.exists() else "<p>no metrics.csv in the run</p>"
    grids = "".join(
        f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{_png(grid(images))}'>"
        for images, title in rows
        if len(images)
    )
    page = (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(ck['model'])} eval</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 12px;text-align:left}"
        "img{image-rendering:pixelated;width:640px}</style>"
        f"<h1>{html.escape(ck['model'])}, step {ck['step']}, {html.escape(split)} split</h1>"
        f"<table>{figures}</table><h2>Training losses</h2>{losses}{grids}"
    )
    (run / "eval.html").write_text(page)
    return result
