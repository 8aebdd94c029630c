"""Speech filters on real voices: how many real speech windows the music/noise filter (Silero VAD) rejects, and
what music and steady noise score, for a few chunk-probability thresholds.

Real voices: ../shared/data/realvids (a child, a loud restaurant, a split-screen interview, ...) and
../shared/data/voices (VoxCeleb). Windows are the 1 s windows webrtcvad keeps (speech ratio >= 0.5). Negatives:
a chord track, pink, brown and white noise (ffmpeg lavfi), 8 s each.

    .venv/bin/python benchmarks/bench_speech_real.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import FilterConfig, SpeechConfig  # noqa: E402
from pipeline.media import decode_audio  # noqa: E402
from pipeline.models import neural_vad  # noqa: E402
from pipeline.speech import speech_windows  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CHORDS = "0.2*(sin(2*PI*261.6*t)+sin(2*PI*329.6*t)+sin(2*PI*392*t))*(0.5+0.5*sin(2*PI*2*t))"
NEGATIVES = {
    "chords": f"aevalsrc='{CHORDS}':s=16000:d=8",
    "pink noise": "anoisesrc=c=pink:a=0.3:d=8:r=16000",
    "brown noise": "anoisesrc=c=brown:a=0.5:d=8:r=16000",
    "white noise": "anoisesrc=c=white:a=0.1:d=8:r=16000",
}


def lavfi(expr: str) -> np.ndarray:
    cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", expr, "-ac", "1", "-ar", "16000", "-f", "s16le", "-"]
    return np.frombuffer(subprocess.run(cmd, capture_output=True, check=True).stdout, "<i2")


def real_windows() -> list[tuple[str, np.ndarray, list[int]]]:
    """(name, audio, starts of the windows webrtcvad keeps) for every real clip and voice."""
    out = []
    for p in sorted((DATA / "realvids").glob("*.mp4")) + sorted((DATA / "voices").glob("*.wav")):
        audio = decode_audio(p, 0.0, None)
        windows, _ = speech_windows(audio, SpeechConfig())
        out.append((p.stem, audio, [w.start for w in windows]))
    return out


def main() -> int:
    if not DATA.is_dir():
        print(f"{DATA} is absent: nothing to measure")
        return 0
    real = real_windows()
    negatives = {name: lavfi(expr) for name, expr in NEGATIVES.items()}
    min_share = FilterConfig().min_neural_speech
    print(f"real speech windows: {sum(len(s) for _, _, s in real)}; window threshold min_neural_speech = {min_share}")
    print(f"{'chunk p':>8} {'false rejections':>18} {'negatives: highest window share':>34}")
    for prob in (0.5, 0.3, 0.2):
        shares = np.concatenate([neural_vad.speech_shares(a, s, 16000, prob) for _, a, s in real if s])
        neg = {n: neural_vad.speech_shares(a, range(0, len(a) - 16000 + 1, 16000), 16000, prob).max()
               for n, a in negatives.items()}  # fmt: skip
        rejected = int((shares < min_share).sum())
        mark = "  <- default" if prob == neural_vad.SPEECH_PROB else ""
        neg_text = " ".join(f"{n} {v:.2f}" for n, v in neg.items())
        print(f"{prob:>8} {rejected:>5} of {len(shares)} ({rejected / len(shares):.1%}) {neg_text}{mark}")
    print("\nper clip (default chunk p), window shares:")
    for name, a, s in real:
        shares = neural_vad.speech_shares(a, s, 16000)
        print(f"  {name[:30]:30s} {' '.join(f'{v:.2f}' for v in shares)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
