"""More real faces for the demo, from a registry package, fetched once and cached.

`face_recognition`'s source distribution (MIT licence) ships official portraits of Barack Obama and Joe Biden in
its tests (works of the US federal government: public domain). The built wheel leaves them out, so the sdist is
downloaded once with pip (`make setup` does it, so the demo then builds offline), checked against its sha256,
and the two JPEGs are kept in the cache (`$VOICEFACE_CACHE`, else `~/.cache/voiceface`).

`blend` makes a further, synthetic face: two portraits aligned on dlib's 5 landmarks and averaged, a face that is
neither of them (dlib places it about 0.4-0.5 from each). With scikit-image's and matplotlib's portraits these are
all the real people found in registry packages here; the demo's other identities are such blends.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .synth import Photo

SDIST = "face_recognition==1.3.0"
SDIST_FILE = "face_recognition-1.3.0.tar.gz"
SDIST_SHA256 = "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec"
PHOTOS = {  # cached name: (member of the sdist, face box found by dlib's HOG detector, upsample 1)
    "obama.jpg": ("face_recognition-1.3.0/tests/test_images/obama.jpg", (349, 142, 617, 409)),
    "biden.jpg": ("face_recognition-1.3.0/tests/test_images/biden.jpg", (419, 241, 740, 562)),
}


def cache_dir() -> Path:
    return Path(os.environ.get("VOICEFACE_CACHE") or Path.home() / ".cache" / "voiceface") / "photos"


def fetch_photos() -> Path:
    """The portraits in the cache, downloading the sdist with pip if they are not there yet."""
    d = cache_dir()
    if all((d / name).is_file() for name in PHOTOS):
        return d
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp, SDIST]
        subprocess.run(cmd, check=True)
        data = (Path(tmp) / SDIST_FILE).read_bytes()
        if hashlib.sha256(data).hexdigest() != SDIST_SHA256:
            raise RuntimeError(f"{SDIST_FILE}: sha256 mismatch")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for name, (member, _) in PHOTOS.items():
                part = d / f"{name}.partial"
                part.write_bytes(tar.extractfile(member).read())
                part.replace(d / name)
    return d


def _photo(name: str, label: str) -> Photo:
    img = np.asarray(Image.open(fetch_photos() / name).convert("RGB"))
    return Photo(img, PHOTOS[name][1], label)


def obama() -> Photo:
    """Barack Obama, official portrait (public domain), from face_recognition's sdist."""
    return _photo("obama.jpg", "obama")


def biden() -> Photo:
    """Joe Biden, official portrait (public domain), from face_recognition's sdist."""
    return _photo("biden.jpg", "biden")


def _chip(photo: Photo, size: int, padding: float) -> np.ndarray:
    from ..faces import DlibModels

    m = DlibModels.get()
    shape = m.predictor(photo.image, m.dlib.rectangle(*photo.face_box))
    return np.asarray(m.dlib.get_face_chip(photo.image, shape, size=size, padding=padding))


def blend(a: Photo, b: Photo, name: str, size: int = 400) -> Photo:
    """The average of two portraits aligned on their 5 landmarks: a synthetic face that is neither."""
    import dlib

    mix = (_chip(a, size, 0.9).astype(np.float32) + _chip(b, size, 0.9).astype(np.float32)) / 2
    img = np.ascontiguousarray(mix.round().astype(np.uint8))
    found = dlib.get_frontal_face_detector()(img, 1)
    if not found:
        raise RuntimeError(f"no face found in the blend {name}")
    r = max(found, key=lambda r: r.width())
    return Photo(img, (r.left(), r.top(), r.right(), r.bottom()), name)


if __name__ == "__main__":
    print(fetch_photos())
