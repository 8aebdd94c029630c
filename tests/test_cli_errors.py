"""Everyday mistakes get one line on stderr and exit status 2, never a traceback (the real console script)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

VOICEFACE = str(Path(sys.executable).with_name("voiceface"))


def run(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([VOICEFACE, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def assert_one_line_error(p: subprocess.CompletedProcess, *fragments: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture
def manifest(media, tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(f"source,id\n{media.moving},a\n")
    return m


def test_wrong_manifest_path(tmp_path):
    assert_one_line_error(run("build", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")), "nope.csv", "no such")


def test_unknown_manifest_column(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("source,speaker\nx.mp4,a\n")
    assert_one_line_error(run("build", str(m), "--out", str(tmp_path / "o")), "unknown column(s) ['speaker']")


def test_missing_mirror(manifest, tmp_path):
    p = run("build", str(manifest), "--out", str(tmp_path / "o"), "--mirror", str(tmp_path / "nomirror"))
    assert_one_line_error(p, "mirror", "no such directory")


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("faces:\n  size: 3\n", ["unknown key(s) ['size']", "'faces'"]),
        ('speech:\n  window_samples: "abc"\n', ["speech.window_samples", "expected an integer", "'abc'"]),
        ("speech:\n  vad_aggressiveness: 9\n", ["speech.vad_aggressiveness", "between 0 and 3"]),
    ],
)
def test_config_mistakes_are_caught_before_any_work(manifest, tmp_path, text, fragments):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    out = tmp_path / "o"
    assert_one_line_error(run("build", str(manifest), "--out", str(out), "--config", str(config)), *fragments)
    assert not (out / "clips.jsonl").exists()  # nothing ran: no clip marked internal_error


def test_missing_config_file(manifest, tmp_path):
    p = run("build", str(manifest), "--out", str(tmp_path / "o"), "--config", str(tmp_path / "nope.yaml"))
    assert_one_line_error(p, "nope.yaml", "No such file")


def test_no_ffmpeg_on_path(manifest, tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    assert_one_line_error(run("build", str(manifest), "--out", str(tmp_path / "o"), env=env), "ffmpeg", "not found")
    assert_one_line_error(run("demo", "--out", str(tmp_path / "d"), env=env), "ffmpeg", "not found")


def test_train_and_eval_without_shards_or_checkpoint(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run("train", "--model", "wav2pix", "--shards", str(empty), "--run", str(tmp_path / "r"), "--config", "tiny")
    assert_one_line_error(p, "no train-*.tar shards", "build them first")
    p = run("train", "--model", "wav2pix", "--shards", str(tmp_path / "none"), "--run", str(tmp_path / "r"))
    assert_one_line_error(p, "does not exist")
    p = run("eval", "--run", str(tmp_path / "r"), "--shards", str(empty))
    assert_one_line_error(p, "checkpoint.pt", "train first")
