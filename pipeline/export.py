"""`voiceface export OUT --format wav2pix|speech2face|voice2face DIR`: a build's shards in the original
repositories' own on-disk layouts, so their code runs on our data unchanged (docs/export.md says what each
original loader was checked with).

- wav2pix (imatge-upc/wav2pix): `DIR/<split>/<identity>/cropped_face_frame_<n>.png` with its audio
  `preprocessed_frame_<n>.wav` (16 kHz int16; the loader cuts the centre 16000 samples), one pair per window and
  one per augmentation chunk (`aug.npy`, the same face), plus the lists its `generate_pickle.py` would write
  (`DIR/pickles/{faces,audios}/<split>.pkl`, protocol 2).
- speech2face (saiteja-talluri/Speech2Face): `DIR/preprocess/avspeech_train.csv` (one row per 6 s segment, the
  sample key as its id) and `DIR/preprocess/train/{spectrograms,embeddings}/<id>.pkl`: the (598, 257, 2) STFT and
  the 4096-D VGG-Face fc7 feature. Its loader reads only `train/`, so every split goes there, in the order
  train, val, test (its own split takes the CSV's rows in order). Without `vggface.npy` this is an error.
- voice2face (cmu-mlsp/reconstructing_faces_from_voices): per split `DIR/<split>/fbank/<identity>/<clip>.npy`
  (the clip's utterance, `utt.npy`, (frames, 64) float32), `DIR/<split>/faces/<identity>/<key>.jpg` and
  `DIR/<split>/vox1_meta.csv`. Its dataset asserts 800 frames at least: shorter utterances are tiled to 1000
  frames, as its own get_fbank does at test time (listed in `DIR/export.json`).
"""

from __future__ import annotations

import io
import json
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np

FORMATS = ("wav2pix", "speech2face", "voice2face")
SPLITS = ("train", "val", "test")


def _samples(out: Path, split: str):
    import webdataset as wds

    urls = sorted(str(p) for p in (Path(out) / "shards").glob(f"{split}-*.tar"))
    if not urls:
        return
    yield from wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None)


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data))


def _safe(name: str) -> str:
    """A path component: the identity with anything but [A-Za-z0-9_.-] replaced."""
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in name) or "_"


def export(out: Path, fmt: str, dest: Path) -> dict:
    """Write OUT's shards into DEST in the format's layout; returns counts (also written to DEST/export.json)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    summary = {"format": fmt, "source": str(Path(out).resolve()), **globals()[f"_{fmt}"](Path(out), dest)}
    (dest / "export.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _wav2pix(out: Path, dest: Path) -> dict:
    from PIL import Image

    from .speech import wav_bytes

    counts: dict = {}
    for split in SPLITS:
        faces, audios, n_by_id = [], [], defaultdict(int)
        for s in _samples(out, split):
            identity = _safe(json.loads(s["json"])["identity"])
            d = dest / split / identity
            d.mkdir(parents=True, exist_ok=True)
            png = io.BytesIO()
            Image.open(io.BytesIO(s.get("face128.jpg") or s["jpg"])).convert("RGB").save(png, "PNG")
            chunks = [s["wav"]]
            if "aug.npy" in s:
                chunks += [wav_bytes(a) for a in _npy(s["aug.npy"])]
            for wav in chunks:
                n = n_by_id[identity]
                n_by_id[identity] += 1
                face, audio = d / f"cropped_face_frame_{n}.png", d / f"preprocessed_frame_{n}.wav"
                face.write_bytes(png.getvalue())
                audio.write_bytes(wav)
                faces.append(str(face.resolve()))
                audios.append(str(audio.resolve()))
        if faces:
            for kind, paths in (("faces", faces), ("audios", audios)):
                (dest / "pickles" / kind).mkdir(parents=True, exist_ok=True)
                (dest / "pickles" / kind / f"{split}.pkl").write_bytes(pickle.dumps(paths, protocol=2))
            counts[split] = {"pairs": len(faces), "identities": len(n_by_id)}
    return {"splits": counts}


def _speech2face(out: Path, dest: Path) -> dict:
    from .features import speech2face_stft

    pre = dest / "preprocess"
    (pre / "train" / "spectrograms").mkdir(parents=True, exist_ok=True)
    (pre / "train" / "embeddings").mkdir(parents=True, exist_ok=True)
    rows, counts = [], {}
    for split in SPLITS:
        n = 0
        for s in _samples(out, split):
            if "vggface.npy" not in s:
                raise SystemExit(
                    f"error: sample {s['__key__']} has no vggface.npy; the Speech2Face code regresses the 4096-D "
                    "VGG-Face fc7 feature: add it first with `voiceface vggface OUT --weights vgg_face_dag.pth`"
                )
            key, meta = s["__key__"], json.loads(s["json"])
            if "stft.npy" in s:
                spec = _npy(s["stft.npy"])
            else:
                import wave

                with wave.open(io.BytesIO(s["wav"])) as w:
                    audio = np.frombuffer(w.readframes(w.getnframes()), "<i2")
                spec = speech2face_stft(audio)
            (pre / "train" / "spectrograms" / f"{key}.pkl").write_bytes(pickle.dumps(spec.astype(np.float64)))
            feat = _npy(s["vggface.npy"]).astype(np.float64)
            (pre / "train" / "embeddings" / f"{key}.pkl").write_bytes(pickle.dumps(feat))
            x, y = _centre(meta)
            rows.append(f"{key},{meta['window_start']},{meta['window_end']},{x},{y}")
            n += 1
        if n:
            counts[split] = n
    (pre / "avspeech_train.csv").write_text("\n".join(rows) + "\n")
    return {"segments": counts, "csv_rows_in_order": list(counts)}


def _centre(meta: dict) -> tuple[float, float]:
    """The face box's centre in source pixels (the CSV's x,y are only read as columns by the loader)."""
    left, top, right, bottom = meta["bbox"]
    return round((left + right) / 2, 1), round((top + bottom) / 2, 1)


def _voice2face(out: Path, dest: Path) -> dict:
    from .features import tile_frames

    counts, tiled = {}, []
    for split in SPLITS:
        root, identities, clips, faces = dest / split, set(), set(), 0
        for s in _samples(out, split):
            if "utt.npy" not in s:
                raise SystemExit(
                    f"error: sample {s['__key__']} has no utt.npy: build with --preset voice2face (or cae)"
                )
            meta = json.loads(s["json"])
            identity = _safe(meta["identity"])
            identities.add(identity)
            (root / "faces" / identity).mkdir(parents=True, exist_ok=True)
            (root / "faces" / identity / f"{s['__key__']}.jpg").write_bytes(s.get("face64.jpg") or s["jpg"])
            faces += 1
            if meta["clip_id"] in clips:
                continue  # one utterance per clip
            clips.add(meta["clip_id"])
            utt = _npy(s["utt.npy"]).astype(np.float32)
            if len(utt) < 800:
                utt = tile_frames(utt, 1000)
                tiled.append(meta["clip_id"])
            (root / "fbank" / identity).mkdir(parents=True, exist_ok=True)
            np.save(root / "fbank" / identity / f"{meta['clip_id']}.npy", utt)
        if identities:
            lines = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
            lines += [f"{i}\t{i}\t-\t-\t{split}" for i in sorted(identities)]
            (root / "vox1_meta.csv").write_text("\n".join(lines) + "\n")
            counts[split] = {"identities": len(identities), "utterances": len(clips), "faces": faces}
    return {"splits": counts, "tiled_to_1000_frames": tiled}
