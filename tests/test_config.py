"""Configuration layering: profile < file < environment < overrides; clear errors."""

from __future__ import annotations

import pytest

from visagent.config import load_config
from visagent.errors import UsageError


def test_profiles():
    assert load_config(environ={}).models["detect"].checkpoint == "IDEA-Research/grounding-dino-tiny"
    tiny = load_config(profile="tiny", environ={})
    assert tiny.profile == "tiny" and tiny.models["segment"].checkpoint == "tiny:sam"
    with pytest.raises(UsageError, match="unknown profile 'huge'; available: default, tiny"):
        load_config(profile="huge", environ={})


def test_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("profile: tiny\nlimits: {max_steps: 4, max_pixels: 100}\nmodels:\n  detect: {backend: official}\n")
    env = {"VISAGENT__limits__max_steps": "6", "VISAGENT_DEVICE": "cpu"}
    cfg = load_config(f, environ=env)
    assert cfg.profile == "tiny" and cfg.limits.max_steps == 6 and cfg.limits.max_pixels == 100
    assert cfg.models["detect"].backend == "official" and cfg.models["detect"].checkpoint == "tiny:grounding-dino"
    assert cfg.device == "cpu"
    cfg = load_config(f, environ=env, overrides={"limits": {"max_steps": 9}})
    assert cfg.limits.max_steps == 9
    assert load_config(environ={"VISAGENT_CONFIG": str(f)}).limits.max_pixels == 100


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("limits: [1, 2", "not valid YAML (line"),
        ("- a\n- b\n", "must hold a mapping"),
        ("limits: {max_steps: many}", "invalid configuration (")  ,
        ("models: {detect: {checkpoint: x, colour: red}}", "models.detect.colour"),
    ],
)
def test_bad_files(tmp_path, text, fragment):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(UsageError) as exc:
        load_config(f, environ={})
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_missing_file_and_unknown_family(tmp_path):
    with pytest.raises(UsageError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(UsageError, match="no model configured for 'nope'"):
        load_config(environ={}).model("nope")
