"""Identity stage: embed the clip's faces (dlib's 128-D ResNet, in batches) and drop the windows whose face is
far from the clip's medoid face: a cutaway or another person (identity_mismatch)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .. import quality
from ..config import FaceConfig, FilterConfig
from ..faces import embed_faces
from ..reasons import Reason
from ..records import FaceHit, Verdict


@dataclass(frozen=True)
class IdentityStage:
    faces: FaceConfig
    filters: FilterConfig

    def embed(self, hits: list[FaceHit]) -> list[FaceHit]:
        """The hits with their faces embedded, `faces.embed_batch` at a time, in order."""
        if not self.faces.embeddings:
            return list(hits)
        out: list[FaceHit] = []
        b = self.faces.embed_batch
        for lo in range(0, len(hits), b):
            batch = hits[lo : lo + b]
            faces = embed_faces([h.face for h in batch], self.faces)
            out += [replace(h, face=f) for h, f in zip(batch, faces, strict=True)]
        return out

    def __call__(self, hits: list[FaceHit]) -> tuple[list[FaceHit], list[Verdict]]:
        """(hits kept, with their distance to the medoid as `clip_identity_distance`; identity mismatches).
        Clips with fewer than `filters.min_identity_windows` embedded faces are not checked."""
        if not self.faces.embeddings or len(hits) < self.filters.min_identity_windows:
            return list(hits), []
        dist = quality.medoid_distances(np.stack([h.face.embedding for h in hits]))
        kept, rejected = [], []
        for hit, d in zip(hits, dist, strict=True):
            hit = hit.with_measures(clip_identity_distance=round(float(d), 4))
            if d > self.filters.max_identity_distance:
                detail = f"{d:.2f} from the clip's medoid face > {self.filters.max_identity_distance}"
                rejected.append(Verdict.reject(hit.window, Reason.IDENTITY_MISMATCH, hit, detail))
            else:
                kept.append(hit)
        return kept, rejected
