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


def test_every_default_and_preset_passes_its_own_checks():
    import dataclasses
    import typing

    from pipeline.config import PRESETS, check_value

    for preset in [None, *PRESETS]:
        cfg = Config.from_dict({}, preset)
        for section in dataclasses.fields(cfg):
            stage = getattr(cfg, section.name)
            if not dataclasses.is_dataclass(stage):
                continue
            hints = typing.get_type_hints(type(stage))
            for f in dataclasses.fields(stage):
                check_value(f"{section.name}.{f.name}", getattr(stage, f.name), hints[f.name])


@pytest.mark.parametrize(
    "text, message",
    [
        ('speech:\n  window_samples: "abc"\n', "speech.window_samples: expected an integer, got 'abc' (str)"),
        ("speech:\n  window_samples: 16000.5\n", "speech.window_samples: expected an integer"),
        ("speech:\n  vad_aggressiveness: 7\n", "speech.vad_aggressiveness: must be between 0 and 3, got 7"),
        ("speech:\n  vad_frame_ms: 25\n", "speech.vad_frame_ms: must be one of 10, 20, 30"),
        ("faces:\n  embeddings: yes please\n", "faces.embeddings: expected true or false"),
        ("faces:\n  embedder: cuda\n", "faces.embedder: must be one of torch, dlib"),
        ("faces:\n  min_face_px: -5\n", "faces.min_face_px: must be >= 0, got -5"),
        ("faces:\n  crop_size: null\n", "faces.crop_size: a value is required"),
        ("extras:\n  face_sizes: [64, big]\n", "extras.face_sizes: expected an integer, got 'big'"),
        ("filters:\n  min_snr_db: .nan\n", "filters.min_snr_db: must be a finite number"),
        ("shards:\n  val_fraction: 0.6\n  test_fraction: 0.5\n", "val_fraction + shards.test_fraction must be below 1"),
        ("vggface:\n  layer: fc9\n", "vggface.layer must be one of"),
        ("speech: 3\n", "config section 'speech' must be a mapping"),
        ("speech:\n  window_samples: [1\n", "line 3: not valid YAML"),
    ],
)
def test_config_values_are_checked_at_load_naming_the_key(tmp_path, text, message):
    from pipeline.config import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert message in str(err.value) and str(p) in str(err.value) and "\n" not in str(err.value)


def test_a_float_setting_takes_an_integer_and_a_missing_file_is_one_line(tmp_path):
    from pipeline.config import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text("filters:\n  min_snr_db: 10\n  min_av_sync: -0.5\n")
    assert load_config(p).filters.min_snr_db == 10
    with pytest.raises(ConfigError, match=r"nope\.yaml: No such file or directory"):
        load_config(tmp_path / "nope.yaml")


def test_exponent_numbers_read_as_numbers_as_in_yaml_1_2(tmp_path):
    from pipeline.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("filters:\n  min_sharpness: 1e9\n  max_yaw_deg: 4.5e1\nspeech:\n  window_samples: 16384\n")
    cfg = load_config(path)
    assert (cfg.filters.min_sharpness, cfg.filters.max_yaw_deg, cfg.speech.window_samples) == (1e9, 45.0, 16384)
    assert isinstance(cfg.speech.window_samples, int)
