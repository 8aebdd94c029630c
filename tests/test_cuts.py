"""Shot cuts on generated video (a cut from one test pattern to another at a known frame) and the window helpers."""

import subprocess

from pipeline.config import FilterConfig
from pipeline.cuts import detect_cuts, shot_of, windows_across_cuts
from pipeline.media import probe


def test_a_cut_is_found_at_its_frame(tmp_path):
    path = tmp_path / "cut.mp4"
    graph = "[0:v][1:v]concat=n=2:v=1[v]"
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-v", "error", "-f", "lavfi", "-i", "testsrc=s=160x120:r=30:d=2.4",
                    "-f", "lavfi", "-i", "mandelbrot=s=160x120:r=30", "-filter_complex", graph, "-map", "[v]",
                    "-t", "4", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)  # fmt: skip
    thr = FilterConfig().cut_threshold
    assert detect_cuts(path, probe(path), 0.0, None, thr) == [2.4]
    assert detect_cuts(path, probe(path), 1.0, 2.0, thr) == [2.4]  # file timeline, also after a seek
    assert detect_cuts(path, probe(path), 2.5, None, thr) == []


def test_windows_across_a_cut_and_shots():
    starts = [0, 16000, 32000, 48000]
    assert windows_across_cuts(starts, 16000, [1.5], 16000) == {1}
    assert windows_across_cuts(starts, 16000, [2.0], 16000) == set()  # on a boundary: no window holds it
    assert [shot_of(t, [1.5, 3.0]) for t in (0.2, 1.49, 1.5, 2.9, 3.2)] == [0, 0, 1, 1, 2]
