import pytest

from pipeline.config import Config, load_config


def test_defaults_and_yaml_override(tmp_path):
    assert Config().speech.window_samples == 16000
    p = tmp_path / "c.yaml"
    p.write_text("speech:\n  window_samples: 16384\nfaces:\n  embeddings: false\n")
    cfg = load_config(p)
    assert cfg.speech.window_samples == 16384 and cfg.faces.embeddings is False
    assert cfg.faces.crop_size == 224
    assert cfg.clip_hash() != Config().clip_hash()


def test_shard_settings_do_not_change_the_clip_hash():
    assert Config.from_dict({"shards": {"maxcount": 5}}).clip_hash() == Config().clip_hash()


@pytest.mark.parametrize(
    "text, message", [("speach: {}\n", "unknown config section"), ("faces:\n  size: 3\n", "unknown key")]
)
def test_unknown_keys_are_errors(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(p)
