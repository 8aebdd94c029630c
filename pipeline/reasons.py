"""The one list of status reason codes. Tests assert these exact strings."""

from enum import StrEnum


class Reason(StrEnum):
    # manifest rows
    BAD_ROW = "bad_row"  # a row that cannot be parsed or fails validation
    DUPLICATE_ID = "duplicate_id"
    OPTED_OUT = "opted_out"
    # source resolution / download
    FILE_NOT_FOUND = "file_not_found"
    VIDEO_UNAVAILABLE = "video_unavailable"
    PRIVATE_VIDEO = "private_video"
    AGE_RESTRICTED = "age_restricted"
    BOT_CHECK = "bot_check"
    RATE_LIMITED = "rate_limited"
    NETWORK_ERROR = "network_error"
    UNSUPPORTED_URL = "unsupported_url"
    DOWNLOAD_ERROR = "download_error"
    # media
    CORRUPT_MEDIA = "corrupt_media"
    NO_AUDIO = "no_audio"
    NO_VIDEO = "no_video"
    SEGMENT_OUT_OF_RANGE = "segment_out_of_range"
    DECODER_KILLED = "decoder_killed"  # an ffmpeg child ended by a signal (OOM killer, kill, Ctrl-C): redone
    # speech
    TOO_SHORT = "too_short"
    NO_SPEECH = "no_speech"
    CLIPPING = "clipping"  # too many samples at full scale
    LOW_SNR = "low_snr"  # the frame-energy SNR estimate is too low
    MUSIC_OR_NOISE = "music_or_noise"  # webrtcvad heard speech, the neural VAD (Silero) did not
    SHOT_CUT = "shot_cut"  # the window's audio straddles a shot cut (filters.shot_cuts)
    # faces (per window; a clip with no surviving window takes the most common one)
    NO_FACE = "no_face"
    FACE_TOO_SMALL = "face_too_small"
    SPEAKER_NOT_FOUND = "speaker_not_found"  # faces found, none near the x,y hint
    FRAME_MISSING = "frame_missing"  # the video ended before the window's centre
    # face quality filters (per window)
    LOW_FACE_SCORE = "low_face_score"
    BLURRY = "blurry"
    BAD_POSE = "bad_pose"  # yaw or pitch from the 5 landmarks too large
    FACE_OUT_OF_FRAME = "face_out_of_frame"
    IDENTITY_MISMATCH = "identity_mismatch"  # far from the clip's medoid face: a cutaway or another person
    AV_UNSYNCED = "av_unsynced"  # the mouth does not move with the speech (only with filters.reject_av_unsynced)
    # a bug: caught once, in the clip runner, so one clip never stops a run
    INTERNAL_ERROR = "internal_error"
    # review (an ok clip none of whose windows is in the shards after review)
    REVIEW_REJECTED = "review_rejected"  # reviewers rejected them
    REVIEW_PENDING = "review_pending"  # they wait in the queue (review.include_unreviewed is off)


# Failures that may pass on a later attempt: retried with backoff, and redone on re-run.
TRANSIENT = frozenset({Reason.RATE_LIMITED, Reason.NETWORK_ERROR})
# Failures a re-run does not redo: the video is gone for good. Other failures (transient ones, a missing
# local file that may have been added, a bug that may have been fixed) are redone.
PERMANENT = frozenset({Reason.VIDEO_UNAVAILABLE, Reason.PRIVATE_VIDEO, Reason.AGE_RESTRICTED, Reason.UNSUPPORTED_URL})


def is_final(status: str, reason: str | None) -> bool:
    """Whether a recorded clip status stands on a re-run with the same settings."""
    return status in ("ok", "rejected") or (status == "failed" and reason in PERMANENT)


class InputError(ValueError):
    """A mistake in what the user gave (a path, a config value, a manifest header, a missing tool): the commands
    print its message on one line, without a traceback, and exit 2."""


class ClipError(Exception):
    """A clip cannot go on: carries the reason code, a detail and whether it is a failure or a rejection."""

    def __init__(self, reason: Reason, detail: str = "", status: str = "rejected", **extra):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.status = status
        self.extra = extra  # more ClipStatus fields (e.g. windows_total) known when the clip stopped


class QueueReason(StrEnum):
    """Why a kept window waits in the review queue for a person to accept or reject it."""

    LOW_FACE_SCORE = "low_face_score"
    SMALL_FACE = "small_face"
    BLURRY = "blurry"
    LOW_SPEECH_RATIO = "low_speech_ratio"
    IDENTITY_OUTLIER = "identity_outlier"  # far from the identity's medoid embedding: maybe someone else
    AV_UNSYNCED = "av_unsynced"  # flagged by the AV-sync score: maybe not the speaker (review.queue_av_unsynced)
    REQUESTED = "requested"  # a reviewer queued its clip or identity
