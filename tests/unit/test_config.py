"""Settings: embedded defaults, precedence of sources, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from stoker.config import load_settings
from stoker.errors import ConfigError
from stoker.storage import open_storage


def test_nothing_configured_means_everything_embedded_under_data_dir(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path)
    assert s.broker_url == f"sqla+sqlite:///{tmp_path}/broker.sqlite"
    assert s.state_url == f"sqlite:///{tmp_path}/jobs.sqlite"
    assert s.storage_url == f"file://{tmp_path}/outputs"
    assert s.embedded_broker


def test_a_plain_folder_as_storage_url_is_a_local_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(storage_url="out dir")
    assert settings.storage_url == (tmp_path / "out dir").as_uri()
    open_storage(settings).put_bytes("a/b.txt", b"hi")
    assert (tmp_path / "out dir" / "a" / "b.txt").read_bytes() == b"hi"
    assert load_settings(storage_url=str(tmp_path)).storage_url == tmp_path.as_uri()
    # A URL with another scheme is left for open_storage to refuse by name
    assert load_settings(storage_url="s3:/bucket").storage_url == "s3:/bucket"


def test_a_redis_broker_also_holds_the_job_records(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path, broker_url="redis://h:6379/2")
    assert s.state_url == "redis://h:6379/2" and not s.embedded_broker


def test_overrides_beat_environment_beats_toml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "stoker.toml"
    toml.write_text(
        'max_text_bytes = 10\nspeak_chunk_chars = 300\ndefault_voice = "from-toml"\n'
        '[budgets]\ncpu = "1GiB"\n[models.mine]\nbackend = "piper"\npath = "/m/v.onnx"\n'
    )
    monkeypatch.setenv("STOKER_SPEAK_CHUNK_CHARS", "400")
    monkeypatch.setenv("STOKER_DEFAULT_VOICE", "from-env")
    s = load_settings(toml, data_dir=tmp_path, default_voice="from-override")
    assert s.max_text_bytes == 10  # only in the file
    assert s.speak_chunk_chars == 400  # env beats file
    assert s.default_voice == "from-override"  # explicit beats env
    assert s.budgets["cpu"] == 2**30
    assert s.models["mine"].path == Path("/m/v.onnx")


def test_invalid_values_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="speak_chunk_chars"):
        load_settings(data_dir=tmp_path, speak_chunk_chars=10)
    with pytest.raises(ConfigError, match=r"budgets\.cpu"):
        load_settings(data_dir=tmp_path, budgets={"cpu": "lots"})


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; check --config"):
        load_settings(tmp_path / "nope.toml")
