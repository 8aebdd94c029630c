"""The clip stages, one file each: source → decode → speech → cuts → faces → avsync → identity → extras.

Each stage is a small configured callable over the records of pipeline/records.py; `pipeline/clip.py` chains
them (the one runner, and the one place a clip's failure becomes a status). Windows a stage rejects come out
as `Verdict`s, so what was dropped, and why, is data like what was kept.
"""
