"""Speech stage: cut the clip's audio into windows, keep those webrtcvad calls speech, then apply the speech
filters (clipping, SNR, Silero's music/noise check). Every window comes out: kept, or rejected with its
measures."""

from __future__ import annotations

from dataclasses import dataclass

from .. import quality
from ..config import FilterConfig, SpeechConfig
from ..models import neural_vad
from ..reasons import Reason
from ..records import ClipAudio, Verdict, Window
from ..speech import cut_windows


@dataclass(frozen=True)
class SpeechStage:
    speech: SpeechConfig
    filters: FilterConfig

    def __call__(self, audio: ClipAudio) -> tuple[list[Window], list[Verdict]]:
        """(windows that pass, verdicts of those that do not), both in time order."""
        W = self.speech.window_samples
        kept: list[Window] = []
        rejected: list[Verdict] = []
        voiced: list[Window] = []
        for w in cut_windows(audio.samples, self.speech):
            window = Window(w.index, w.start, W, w.speech_ratio, w.rms_dbfs)
            if w.speech_ratio >= self.speech.min_speech_ratio:
                voiced.append(window)
            else:
                detail = f"speech ratio {w.speech_ratio:.2f} < {self.speech.min_speech_ratio}"
                rejected.append(Verdict.reject(window, Reason.NO_SPEECH, detail=detail))
        shares = None
        if self.filters.music_noise and voiced:
            shares = neural_vad.speech_shares(audio.samples, [w.start for w in voiced], W)
        for i, w in enumerate(voiced):
            chunk = audio.samples[w.start : w.start + W]
            m = {"clipping": quality.clipping(chunk), "snr_db": quality.snr_db(chunk)}
            if shares is not None:
                m["neural_speech"] = round(float(shares[i]), 3)
            w = w.with_measures(**m)
            if reason := quality.speech_reason(m["clipping"], m["snr_db"], self.filters, m.get("neural_speech")):
                rejected.append(Verdict.reject(w, reason))
            else:
                kept.append(w)
        rejected.sort(key=lambda v: v.window.index)
        return kept, rejected
