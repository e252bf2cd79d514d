"""BenchConfig from Python and from YAML, TOML and JSON files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from deskgen import ConfigError, MissingDependencyError
from deskgen.bench import BenchConfig, BenchEntry, load_bench_config

YAML = """
prompt: a tidy desk
image: desk.png
request: {steps: 20, strength: 0.7}
repeats: 2
runs:
  - backend: sdxl
    options: {preset: balanced}
  - backend: sdxl
    label: sdxl int8
    options:
      quantization: {method: quanto, weights: int8}
    request: {steps: 10}
"""

TOML = """
prompt = "a tidy desk"
image = "desk.png"
repeats = 2
[request]
steps = 20
strength = 0.7
[[runs]]
backend = "sdxl"
options = { preset = "balanced" }
[[runs]]
backend = "sdxl"
label = "sdxl int8"
options = { quantization = { method = "quanto", weights = "int8" } }
request = { steps = 10 }
"""


def test_the_three_formats_read_the_same(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(YAML)
    (tmp_path / "b.toml").write_text(TOML)
    from_yaml = load_bench_config(tmp_path / "b.yaml")
    (tmp_path / "b.json").write_text(json.dumps(from_yaml.model_dump()))
    assert load_bench_config(tmp_path / "b.toml") == from_yaml
    assert load_bench_config(tmp_path / "b.json") == from_yaml
    assert [e.name for e in from_yaml.runs] == ["sdxl (balanced)", "sdxl int8"]
    request = from_yaml.request_for(from_yaml.runs[1])
    assert (request.steps, request.strength, request.seed) == (10, 0.7, 0)
    assert request.image == "desk.png"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("prompt: a desk\nruns: []\n", "runs"),
        ("prompt: a desk\nruns: [{backend: sd, request: {stepz: 3}}]\n", "unknown request"),
        ("prompt: a desk\nruns: [{backend: sd, request: {steps: 0}}]\n", "steps"),
        ("prompt: a desk\nruns: [{backend: sd}, {backend: sd}]\n", "distinct label"),
        ("prompt: [unclosed\n", "not valid YAML"),
        ("- just a list\n", "no mapping"),
    ],
)
def test_bad_configs_say_where(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_bench_config(path)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "b.ini").write_text("x")
    with pytest.raises(ConfigError, match=r"yaml, \.toml or \.json"):
        load_bench_config(tmp_path / "b.ini")
    with pytest.raises(ConfigError, match="Can't read"):
        load_bench_config(tmp_path / "nope.yaml")


def test_yaml_without_pyyaml_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "b.yaml").write_text(YAML)
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(MissingDependencyError, match=r"deskgen\[bench\]"):
        load_bench_config(tmp_path / "b.yaml")


def test_reports_mask_secrets_and_local_paths(tmp_path: Path) -> None:
    from pydantic import SecretStr

    config = BenchConfig(
        prompt="a desk",
        image=str(tmp_path / "photos" / "desk.png"),
        runs=[
            BenchEntry(backend="openai", options={"api_key": "sk-secret", "quality": "low"}),
            BenchEntry(backend="sd", model=str(tmp_path / "models" / "sd15")),
            BenchEntry(backend="sd", label="x", options={"token": SecretStr("hf_abc")}),
        ],
    )
    public = json.dumps(config.public())
    assert "sk-secret" not in public and "hf_abc" not in public and str(tmp_path) not in public
    assert config.public()["runs"][0]["options"] == {"api_key": "***", "quality": "low"}
    assert config.public()["runs"][1]["model"] == "sd15"
    assert config.public()["image"] == "desk.png"


def test_entries_keep_their_own_fields_out_of_options() -> None:
    with pytest.raises(ValueError, match="options may not set device, model"):
        BenchEntry(backend="sd", options={"model": "x", "device": "cpu"})
    with pytest.raises(ValueError, match="timeout_s stops isolated runs only"):
        BenchConfig(prompt="p", isolate=False, timeout_s=5, runs=[BenchEntry(backend="sd")])


def test_use_photo_false_runs_txt2img_beside_img2img() -> None:
    config = BenchConfig(
        prompt="p",
        image="desk.png",
        runs=[BenchEntry(backend="sdxl"), BenchEntry(backend="hidream", use_photo=False)],
    )
    assert config.request_for(config.runs[0]).mode == "img2img"
    assert config.request_for(config.runs[1]).mode == "txt2img"


def test_paths_and_nested_secrets_in_options_are_masked(tmp_path: Path) -> None:
    from deskgen import LoraSpec

    lora = tmp_path / "loras" / "desk-style.safetensors"
    entry = BenchEntry(
        backend="sdxl",
        model=str(tmp_path / "models" / "sdxl"),
        options={
            "loras": [str(lora), LoraSpec(path=str(lora), weight=0.5)],
            "distill_lora": str(tmp_path / "lcm.safetensors"),
            "service": {"auth_token": "abc123", "url": "https://example.invalid"},
        },
    )
    masked = entry.public_options()
    assert masked["loras"][0] == "desk-style.safetensors"
    assert masked["loras"][1]["path"] == "desk-style.safetensors"
    assert masked["loras"][1]["weight"] == 0.5
    assert masked["distill_lora"] == "lcm.safetensors"
    assert masked["service"] == {"auth_token": "***", "url": "https://example.invalid"}
    config = BenchConfig(prompt="a desk at ~/home", runs=[entry])
    assert config.public()["prompt"] == "a desk at ~/home"  # texts are not paths
    paths = config.local_paths()
    assert paths[str(lora)] == "desk-style.safetensors"
    assert paths[str(tmp_path / "models" / "sdxl")] == "sdxl"
    assert str(tmp_path) not in json.dumps(config.public())
