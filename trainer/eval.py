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
from trainer.common import autocast, grid, load_checkpoint, pick_device, to_uint8
from trainer.data import Decoder, collate, eval_samples

SEEDS = {
    "wav2pix": {"landmark_detection_rate": 0.9025, "identity_top1": 0.5008},
    "speech2face": {"recall_at_k": {"1": 0.51, "10": 0.66}},  # the reimplementation, 600 test faces
}
BATCH = 64


def _batches(it, n: int):
    buf = []
    for s in it:
        buf.append(s)
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
    dec = Decoder(ck["labels"], ("wav", "face", "dlib"), face_size=args.image_size, wav_len=args.wav_len)
    real, fake, dl, ids = [], [], [], []
    with torch.no_grad():
        for b in _batches(eval_samples(shards, dec, split, limit), BATCH):
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
    dec = Decoder(ck["labels"], (args.feature, "feature", "face"), face_size=64)
    pred, true, faces, ids = [], [], [], []
    with torch.no_grad():
        for b in _batches(eval_samples(shards, dec, split, limit), BATCH):
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
        landmark_detection_rate=None,  # no face is generated
        identity_top1=top[1],
        identity_top5=top[5],
        recall_at_k={str(k): v for k, v in recall.items()},
    )
    nearest = (pred @ true.T).argmax(1) if len(pred) else np.zeros(0, int)
    rows = [(faces[:16], "the speaker"), (faces[nearest[:16]], "the face feature nearest to the voice's prediction")]
    return result, len(ids), len(names), rows


def evaluate(run, shards, split: str = "val", limit: int | None = 2000, device: str = "auto") -> dict:
    """Write RUN/eval.json and RUN/eval.html; return the metrics."""
    run = Path(run)
    device = pick_device(device)
    ck = load_checkpoint(run / "checkpoint.pt", device)
    fn = _eval_wav2pix if ck["model"] == "wav2pix" else _eval_speech2face
    result, n, n_ids, rows = fn(ck, shards, split, limit, device)
    result = dict(
        model=ck["model"], step=ck["step"], split=split, samples=n, identities=n_ids,
        chance_top1=1 / n_ids if n_ids else None, **result, seeds_reported=SEEDS[ck["model"]],
    )  # fmt: skip
    (run / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    figures = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>" for k, v in result.items()
    )
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
        f"<table>{figures}</table>{grids}"
    )
    (run / "eval.html").write_text(page)
    return result
