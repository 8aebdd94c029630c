"""The bundled demo's media (manifests/demo.csv), generated offline on first use."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .photos import biden, blend, obama
from .synth import Placement, astronaut, grace_hopper, no_face, silence_wav, speaking_head, speech_wav, talking_head

W, H = 854, 480


def make_demo_media(media_dir: Path) -> list[Path]:
    """Write the demo videos into media_dir (skipping those already there); returns their paths."""
    media_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        voices: dict[str, Path] = {}

        def voice(name: str) -> Path:
            if name not in voices:
                voices[name] = speech_wav(tmp / f"{name.replace('+', '_')}.wav", voice=name)
            return voices[name]

        a, g = astronaut(), grace_hopper()
        o, b = obama(), biden()
        # (placements, seconds, audio, audio rate, channels, the placement whose mouth moves with the speech)
        specs = {
            # one speaker moving slowly across the frame
            "astronaut-talk": lambda: ([Placement(a, 150, 330, 230, vx=15.0)], 14, voice("en-us+f3"), 44100, 2, 0),
            # a different voice, mono 48 kHz audio
            "hopper-talk": lambda: ([Placement(g, 170, 430, 240)], 12, voice("en-us+f4"), 48000, 1, 0),
            # two faces on screen: the manifest's x,y hint picks the speaker on the right; the other one listens
            "two-faces": lambda: (
                [Placement(a, 130, 210, 240), Placement(g, 140, 620, 240)], 11, voice("en-us+f4"), 44100, 2, 1),
            # more people to learn, each with an espeak-ng voice of its own; the blends are held out (val)
            "obama-talk": lambda: ([Placement(o, 150, 420, 230)], 10, voice("en-us+m1"), 44100, 2, 0),
            "biden-talk": lambda: ([Placement(b, 150, 440, 240)], 10, voice("en-gb+m4"), 44100, 1, 0),
            "blend-ch-talk": lambda: (
                [Placement(blend(a, g, "blend_ch"), 150, 420, 240)], 10, voice("en+f2"), 44100, 2, 0),
            "blend-ob-talk": lambda: (
                [Placement(blend(o, b, "blend_ob"), 150, 430, 240)], 10, voice("en-us+m7"), 44100, 2, 0),
            # rejected: speech, but no face anywhere
            "coffee-talk": lambda: ([Placement(no_face(), 400, W / 2, H / 2)], 6, voice("en-us+m3"), 44100, 2, None),
            # rejected: a face, but silence
            "astronaut-silent": lambda: (
                [Placement(a, 150, 400, 230)], 6, silence_wav(tmp / "sil.wav", 6), 16000, 1, None),
        }  # fmt: skip
        paths = []
        for name, spec in specs.items():
            path = media_dir / f"{name}.mp4"
            if not path.exists():
                placements, seconds, audio, rate, channels, speaker = spec()
                partial = tmp / f"{name}.mp4"
                if speaker is None:
                    talking_head(partial, placements, seconds, audio, size=(W, H), audio_rate=rate, channels=channels)
                else:
                    speaking_head(partial, placements, audio, seconds, speaker, size=(W, H), audio_rate=rate,
                                  channels=channels)  # fmt: skip
                partial.replace(path) if partial.stat().st_dev == media_dir.stat().st_dev else _copy(partial, path)
            paths.append(path)
    return paths


def _copy(src: Path, dst: Path) -> None:
    part = dst.with_name(dst.name + ".partial")
    part.write_bytes(src.read_bytes())
    part.replace(dst)
