"""Real faces and voices from ../shared/data (Wav2Pix "Youtubers" test crops and their 1 s speech), composed
into talking-head videos the way the other tests compose public-domain photos. Skipped without the data."""

import io
import json
import subprocess
import wave

import numpy as np
import pytest
from PIL import Image

from pipeline.clip import BuildContext, run_clip
from pipeline.config import Config
from pipeline.records import Clip
from pipeline.tars import read_samples
from tests.conftest import SHARED_DATA, read_wav, requires_shared_data

pytestmark = [pytest.mark.realdata, requires_shared_data]
IDENTITIES = ("jaimealtozano", "javiermuniz")


def frames_of(identity: str) -> list[int]:
    src = SHARED_DATA / "wav2pix-sample" / identity
    return sorted(
        int(p.stem.split("_")[1]) for p in src.glob("face_*.jpg") if (src / f"audio_{p.stem[5:]}.wav").exists()
    )


def compose(identity: str, out_dir, shots: list[tuple[str, int]] | None = None):
    """A video showing each face crop for 1 s over its own 1 s of speech; returns (mp4, audio, n).
    `shots` ((identity, frame number) per second) shows those faces instead, each over its own speech."""
    if shots is None:
        shots = [(identity, n) for n in frames_of(identity)]
    work = out_dir / identity
    work.mkdir()
    chunks = []
    for i, (who, n) in enumerate(shots):
        src = SHARED_DATA / "wav2pix-sample" / who
        face = np.asarray(Image.open(src / f"face_{n}.jpg").convert("RGB"))[..., ::-1]  # the dataset stored BGR
        canvas = Image.new("RGB", (640, 360), (58, 68, 80))
        face_img = Image.fromarray(np.ascontiguousarray(face)).resize((200, 200))
        canvas.paste(face_img, (220, 80))
        canvas.save(work / f"f{i:03d}.png")
        chunks.append(read_wav(src / f"audio_{n}.wav"))
    frames = shots
    audio = np.concatenate(chunks)
    wav = work / "speech.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(audio.tobytes())
    mp4 = out_dir / f"{identity}.mp4"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-y", "-v", "error", "-framerate", "1", "-i", str(work / "f%03d.png"), "-i", str(wav),
         "-c:v", "libx264", "-r", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k", "-shortest",
         "-movflags", "+faststart", str(mp4)],
        check=True,
    )  # fmt: skip
    return mp4, audio, len(frames)


def test_real_faces_and_voices(tmp_path):
    ctx = BuildContext(out=tmp_path / "out", cfg=Config())
    embeddings, kept = {}, {}
    for identity in IDENTITIES:
        mp4, audio, n = compose(identity, tmp_path)
        status = run_clip(Clip(identity, str(mp4), identity, 1), ctx)
        assert status.status == "ok", status
        samples = list(read_samples(ctx.clip_tar(identity)))
        kept[identity] = len(samples) / status.windows_total
        embeddings[identity] = np.stack([np.load(io.BytesIO(s["dlib.npy"])) for s in samples])
        for s in samples:
            k = json.loads(s["json"])["window_index"]
            window = read_wav(s["wav"]).astype(np.float64)
            ref = audio[k * 16000 : (k + 1) * 16000].astype(np.float64)
            # each window is the speech that went with its face (AAC is lossy: correlation, not bytes)
            assert np.corrcoef(window, ref)[0, 1] > 0.9
    # real speech passes the VAD and real faces the detector, in most windows
    assert all(share >= 0.7 for share in kept.values()), kept
    # dlib embeddings separate the two people: every face is nearer its own centroid
    centroids = {k: v.mean(0) for k, v in embeddings.items()}
    for identity, emb in embeddings.items():
        other = next(i for i in IDENTITIES if i != identity)
        own = np.linalg.norm(emb - centroids[identity], axis=1)
        cross = np.linalg.norm(emb - centroids[other], axis=1)
        assert (own < cross).mean() >= 0.95


def test_cutaways_to_another_real_person_are_removed_and_the_speaker_kept(tmp_path):
    """Each speaker's clip cuts away to the other person for a few seconds. Of the windows that reach the identity
    check (those the other filters keep), the check must drop >= 95 % of the other person's and keep >= 95 % of
    the speaker's."""
    for identity in IDENTITIES:
        other = next(i for i in IDENTITIES if i != identity)
        own, theirs = frames_of(identity), frames_of(other)
        shots = [(identity, n) for n in own[:8]] + [(other, n) for n in theirs[:3]]
        shots += [(identity, n) for n in own[8:16]] + [(other, n) for n in theirs[3:6]]
        shots += [(identity, n) for n in own[16:]]
        mp4, _, _ = compose(f"{identity}-cut", tmp_path, shots)
        kept = {}
        for name, filters in (("unchecked", {"max_identity_distance": 10.0}), ("checked", {})):
            ctx = BuildContext(out=tmp_path / name, cfg=Config.from_dict({"filters": filters}))
            status = run_clip(Clip(f"{identity}-cut", str(mp4), identity, 1), ctx)
            assert status.status == "ok", status
            samples = read_samples(ctx.clip_tar(f"{identity}-cut"))
            kept[name] = {json.loads(s["json"])["window_index"] for s in samples}
        speaker = [k for k in kept["unchecked"] if shots[k][0] == identity]
        cutaway = [k for k in kept["unchecked"] if shots[k][0] == other]
        assert len(speaker) >= 20 and len(cutaway) >= 4
        kept_speaker = sum(k in kept["checked"] for k in speaker) / len(speaker)
        removed_cutaway = sum(k not in kept["checked"] for k in cutaway) / len(cutaway)
        assert kept_speaker >= 0.95 and removed_cutaway >= 0.95, (identity, kept_speaker, removed_cutaway)


def test_real_voices_pass_the_vad():
    from pipeline.config import FilterConfig, SpeechConfig
    from pipeline.models.neural_vad import speech_shares
    from pipeline.speech import speech_windows

    shares = []
    for wav in sorted((SHARED_DATA / "voices").glob("*.wav")):
        audio = read_wav(wav)
        kept, n = speech_windows(audio, SpeechConfig())
        assert n >= 3 and len(kept) >= n - 1, wav.name
        shares += list(speech_shares(audio, [w.start for w in kept], 16000))
    # the neural VAD (music and noise rejection) calls real voices speech
    assert np.mean(np.array(shares) >= FilterConfig().min_neural_speech) >= 0.95, shares


def test_the_music_noise_filter_keeps_real_speech_and_drops_music_and_noise():
    """Real voices (a child, a loud restaurant, an interview, VoxCeleb): at most 5 % of the speech windows webrtcvad
    keeps are rejected as music_or_noise; music and steady noise all are (benchmarks/bench_speech_real.py)."""
    from benchmarks.bench_speech_real import NEGATIVES, lavfi, real_windows
    from pipeline.config import FilterConfig
    from pipeline.models.neural_vad import speech_shares

    threshold = FilterConfig().min_neural_speech
    shares = np.concatenate([speech_shares(a, s, 16000) for _, a, s in real_windows() if s])
    assert len(shares) >= 90 and np.mean(shares < threshold) <= 0.05, np.round(shares, 2)
    for expr in NEGATIVES.values():
        noise = lavfi(expr)
        assert speech_shares(noise, range(0, len(noise) - 16000 + 1, 16000), 16000).max() < threshold


REALVIDS = SHARED_DATA / "realvids"


def cut_video(out, first: str, first_s: float, second: str) -> tuple:
    """`first` for first_s seconds, then a cut to `second` (another person), both on a 1280x720 frame at 25 fps."""
    fit = "scale=1280:720:force_original_aspect_ratio=decrease,pad=1280:720:-1:-1,setsar=1,fps=25,format=yuv420p"
    head = f"[0:v]trim=0:{first_s},setpts=PTS-STARTPTS,{fit}[a];[0:a]atrim=0:{first_s},asetpts=PTS-STARTPTS,"
    graph = head + f"aresample=44100[x];[1:v]{fit}[b];[1:a]aresample=44100[y];[a][x][b][y]concat=n=2:v=1:a=1[v][au]"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", "-i", str(REALVIDS / f"{first}.mp4"), "-i",
                    str(REALVIDS / f"{second}.mp4"), "-filter_complex", graph, "-map", "[v]", "-map", "[au]",
                    "-c:v", "libx264", "-preset", "veryfast", str(out)], check=True)  # fmt: skip
    return out, first_s


def test_shot_cuts_are_found_on_real_video_and_none_within_a_shot(tmp_path):
    from pipeline.cuts import detect_cuts
    from pipeline.media import probe

    thr = Config().filters.cut_threshold
    for p in sorted(REALVIDS.glob("*.mp4")):  # real talking heads, no cut
        assert detect_cuts(p, probe(p), 0.0, None, thr) == [], p.name
    path, at = cut_video(tmp_path / "cut.mp4", "vretalk_2", 3.3, "vretalk_5")  # two men framed alike
    cuts = detect_cuts(path, probe(path), 0.0, None, thr)
    assert len(cuts) == 1 and abs(cuts[0] - at) <= 0.04, cuts


def test_no_window_straddles_a_cut_and_the_other_person_stays_out(tmp_path):
    path, at = cut_video(tmp_path / "cut.mp4", "visualvoice_noisy_restaurant", 6.5, "vretalk_5")
    ctx = BuildContext(out=tmp_path / "out", cfg=Config.from_dict({"filters": {"shot_cuts": True}}))
    status = run_clip(Clip("cut", str(path), "restaurant_man", 1), ctx)
    assert status.status == "ok", status
    assert status.window_rejections.get("shot_cut") == 1  # the window [6, 7) s holds the cut
    metas = [json.loads(s["json"]) for s in read_samples(ctx.clip_tar("cut"))]
    assert metas and all(m["window_end"] <= at + 1e-6 or m["window_start"] >= at - 1e-6 for m in metas)
    # the woman after the cut is another person: her windows are dropped (identity_mismatch), none is written
    assert all(m["frame_time"] < at for m in metas), [m["frame_time"] for m in metas]
