"""The runtime's options are declared once (`EdgeConfig`) and reach the command line and the TOML file alike."""

import argparse
import dataclasses
from pathlib import Path

import pytest
from marsseg.edge.cli import parse_args
from marsseg.edge.config import ConfigError, EdgeConfig, add_flags, load_toml, validate


def test_every_flag_is_a_field_and_every_field_a_flag_or_a_toml_key():
    p = argparse.ArgumentParser()
    add_flags(p)
    dests = {a.dest for a in p._actions if a.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(EdgeConfig)}
    assert dests == {n for n, f in fields.items() if f.metadata.get("flag", True)}
    assert all(f.metadata.get("help") for f in fields.values())  # each says what it does


def test_a_toml_file_and_flags_build_the_same_config(tmp_path):
    toml = tmp_path / "edge.toml"
    toml.write_text('source = "demo"\noverlap = 0.5\nmask-size = "model"\nno_such = 1\n')
    with pytest.raises(ConfigError, match="unknown keys \\['no_such'\\]"):
        load_toml(toml)
    toml.write_text('source = "demo"\noverlap = 0.5\nmask-size = "model"\ndrop = true\nnpz_compress = false\n')
    from_file = parse_args(["--config", str(toml)])
    from_flags = parse_args(["--source", "demo", "--overlap", "0.5", "--mask-size", "model", "--drop",
                             "--no-npz-compress"])
    assert from_file == from_flags
    assert parse_args(["--config", str(toml), "--overlap", "0.25"]).overlap == 0.25  # a flag overrides the file


@pytest.mark.parametrize(("values", "words"), [
    ({"overlap": 1.0}, r"--overlap must be in \[0, 1\)"),
    ({"mask_size": "big"}, "--mask-size must be one of input, model"),
    ({"log_level": "LOUD"}, "--log-level must be one of"),
    ({"baud": "fast"}, "--baud must be int"),
    ({"resize": "640by480"}, "--resize expects WxH"),
    ({"costs": {"sand": "high"}}, "costs.sand must be a number"),
])
def test_bad_values_are_one_line_naming_the_option(values, words):
    with pytest.raises(ConfigError, match=words) as e:
        validate(EdgeConfig(source="demo", **values))
    assert "\n" not in str(e.value)


def test_bad_toml_value_names_the_file_and_key(tmp_path, capsys):
    toml = tmp_path / "edge.toml"
    toml.write_text('source = "demo"\noverlapp = 0.5\n')
    with pytest.raises(SystemExit):
        parse_args(["--config", str(toml)])
    assert "did you mean 'overlap'?" in capsys.readouterr().err
    toml.write_text('source = "demo"\nmap_rate = 0\n')
    with pytest.raises(SystemExit):
        parse_args(["--config", str(toml)])
    err = capsys.readouterr().err
    assert f"config {toml}: map_rate must be in (0, 1000]" in err and "--map-rate" not in err


def test_the_shipped_example_config_is_valid():
    """deploy/edge.toml is what an operator copies: parsing it checks every key is known and every value in range."""
    toml = Path(__file__).parents[1] / "deploy" / "edge.toml"
    cfg = parse_args(["--config", str(toml)])
    assert cfg.camera == "/dev/video0" and cfg.fov == 45.0 and cfg.flip_average is False
