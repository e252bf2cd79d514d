from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deskgen import read_record
from deskgen.cli import main


def test_backends(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "sdxl" in out and "installed" in out
    assert main(["backends", "--json"]) == 0
    names = {b["name"] for b in json.loads(capsys.readouterr().out)}
    assert {"sd", "sdxl"} <= names


def test_generate_writes_png_with_record(
    tiny_sdxl_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = tmp_path / "desk.png"
    from .conftest import draw_desk

    draw_desk((96, 72)).save(photo)
    out = tmp_path / "result.png"
    code = main(
        [
            "generate",
            "a tidy desk",
            "--model",
            str(tiny_sdxl_path),
            "--device",
            "cpu",
            "--image",
            str(photo),
            "--strength",
            "0.5",
            "--steps",
            "4",
            "--seed",
            "7",
            "--negative-prompt",
            "clutter",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "Seed: 7" in captured.out and "Denoising strength: 0.5" in captured.out
    request = read_record(out)
    assert (request.seed, request.steps, request.negative_prompt) == (7, 4, "clutter")

    assert main(["record", str(out)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["mode"] == "img2img" and record["backend"] == "sdxl"
    assert main(["record", str(out), "--parameters"]) == 0
    assert capsys.readouterr().out.startswith("a tidy desk\nNegative prompt: clutter")


def test_generate_json_and_several_images(
    tiny_sd_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "generate",
            "a desk",
            "--backend",
            "sd",
            "--model",
            str(tiny_sd_path),
            "--device",
            "cpu",
            "--steps",
            "2",
            "--num-images",
            "2",
            "--seed",
            "1",
            "--json",
            "--out",
            str(tmp_path / "many.png"),
            "--no-progress",
        ]
    )
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["batch_seeds"] == [1, 2]
    assert (tmp_path / "many-0.png").is_file() and (tmp_path / "many-1.png").is_file()


def test_errors_exit_1_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "x", "--model", str(tmp_path / "missing"), "--device", "cpu"]) == 1
    assert "No model folder" in capsys.readouterr().err
    assert main(["generate", "x", "--backend", "nope"]) == 1
    assert "Known backends" in capsys.readouterr().err
    plain = tmp_path / "plain.png"
    from PIL import Image

    Image.new("RGB", (4, 4)).save(plain)
    assert main(["record", str(plain)]) == 1
    assert "no deskgen record" in capsys.readouterr().err


def test_non_png_output_fails_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", "x", "--model", str(tmp_path / "nope"), "--out", "x.jpg"])
    assert code == 1
    err = capsys.readouterr().err
    assert "Use a .png path" in err
    assert "Loading" not in err


def test_unwritable_output_fails_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["generate", "x", "--model", str(tmp_path), "--out", str(blocker / "o.png")])
    assert code == 1
    err = capsys.readouterr().err
    assert "not a writable folder" in err
    assert "Loading" not in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "-1"], "Invalid request: steps: Input should be greater than or equal to 1"),
        (["--num-images", "99"], "Invalid request: num_images"),
        (["--control-scale", "3"], "control scale 3.0 is outside 0..2"),
        (["--option", "nope=1"], "Invalid options for the 'sdxl' backend: nope"),
        (["--option", "offload=sideways"], "Invalid options for the 'sdxl' backend: offload"),
        (["--image", "missing-photo.jpg"], "missing-photo.jpg"),
        (["--backend", "hidream", "--option", "max_sequence_length=9999"], "max_sequence_length"),
    ],
)
def test_requests_and_options_are_checked_before_loading(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a real model folder: the check must come first, not the load's own errors
    code = main(["generate", "a desk", "--model", str(tmp_path), "--out", str(tmp_path / "o.png")])
    assert code == 1 and "Loading" in capsys.readouterr().err  # (the folder is no model)
    argv = [
        "generate",
        "a desk",
        "--model",
        str(tmp_path / "model"),
        "--out",
        str(tmp_path / "o.png"),
    ]
    assert main([*argv, *flags]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert "Loading" not in err and "denoising" not in err


def test_option_text_is_typed_by_the_backend(tmp_path: Path) -> None:
    from deskgen.cli import _checked_options

    typed = _checked_options(
        "sdxl", str(tmp_path), "cpu", "auto", {"local_files_only": "true", "variant": "fp16"}
    )
    assert typed == {"local_files_only": True, "variant": "fp16"}


def test_demo_with_an_unknown_backend(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--backend", "nope"]) == 1
    assert "Unknown backend 'nope'" in capsys.readouterr().err


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        main(["generate"])
    assert info.value.code == 2


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            "generate",
            [
                "--image",
                "--negative-prompt",
                "--strength",
                "--steps",
                "--guidance-scale",
                "--seed",
                "--num-images",
                "--width",
                "--height",
                "--backend",
                "--model",
                "--device",
                "--dtype",
                "--variant",
                "--vae",
                "--cache-dir",
                "--local-files-only",
                "--allow-pickle",
                "--long-prompt",
                "--trigger-word",
                "--remove-word",
                "--out",
                "--no-progress",
                "--json",
            ],
        ),
        ("demo", ["--backend", "--model", "--out", "--image", "--prompt", "20 on the tiny model"]),
        ("record", ["--parameters"]),
        ("dataset", ["--plan", "--prompts-file", "--caption-prefix", "--lora", "--out"]),
        ("train-lora", ["--config", "--rank", "--mixed-precision", "--no-resume", "--data"]),
        ("generate", ["--lora", "PATH[:WEIGHT]", "--fuse-loras"]),
        ("bench", ["--run", "--repeats", "--warmup", "--clip-model", "--no-isolate", "--out"]),
        ("compare", ["--from", "--tile", "--columns", "--run"]),
    ],
)
def test_help_is_complete(
    command: str, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    for option in expected:
        assert option in text


def test_help_says_what_each_command_does(capsys: pytest.CaptureFixture[str]) -> None:
    def help_of(command: str) -> str:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        return " ".join(capsys.readouterr().out.split())  # argparse's line breaks joined

    demo = help_of("demo")
    assert "omit for txt2img" not in demo and "default: random" not in demo  # generate's
    assert "instead of the sample one" in demo and "(default: 42)" in demo
    assert "default: preset:photo_default" in demo and "sdxl-controlnet" in demo
    generate = help_of("generate")
    assert "omit for txt2img" in generate and "(default: random)" in generate
    assert "--from" not in help_of("bench")  # compare's flag
    assert "with --from: where to write" in help_of("compare")


def test_library_bars_and_chatter_are_off_even_when_imported_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import huggingface_hub.utils
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from deskgen.cli import _quiet_libraries

    for name in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    # as if imported without the variable (the tests' conftest sets it before importing)
    monkeypatch.setattr(
        sys.modules["huggingface_hub.utils.tqdm"], "HF_HUB_DISABLE_PROGRESS_BARS", None
    )
    levels = (diffusers_logging.get_verbosity(), transformers_logging.get_verbosity())
    try:
        huggingface_hub.utils.enable_progress_bars()
        transformers_logging.enable_progress_bar()
        diffusers_logging.enable_progress_bar()
        _quiet_libraries()  # the libraries were imported before: their variables were read
        assert huggingface_hub.utils.are_progress_bars_disabled()
        assert not transformers_logging.is_progress_bar_enabled()
        assert not diffusers_logging.is_progress_bar_enabled()
        assert transformers_logging.get_verbosity() == transformers_logging.ERROR
    finally:
        huggingface_hub.utils.enable_progress_bars()
        transformers_logging.enable_progress_bar()
        diffusers_logging.enable_progress_bar()
        diffusers_logging.set_verbosity(levels[0])
        transformers_logging.set_verbosity(levels[1])


@pytest.mark.slow
def test_prompt_command_imports_no_pipeline_library() -> None:
    code = (
        "import sys; from deskgen.cli import main; code = main(['prompt', 'a desk']); "
        "print(code, 'diffusers' in sys.modules, 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split()[-3:] == ["0", "False", "False"], proc.stderr


def test_progress_bar_is_shown(
    tiny_sd_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(
        [
            "generate",
            "a desk",
            "--backend",
            "sd",
            "--model",
            str(tiny_sd_path),
            "--device",
            "cpu",
            "--steps",
            "3",
            "--out",
            str(tmp_path / "p.png"),
        ]
    )
    captured = capsys.readouterr()
    err = captured.err
    assert "denoising" in err and "4/4" in err  # PNDM: 3 steps + PLMS's repeated one
    assert "denoising: 0step" not in err  # no empty bar before the first step
    assert len([line for line in err.split("\n") if "denoising" in line]) == 1  # one bar
    # the summary's total is the request's, the load apart
    assert re.search(r": total \d+\.\d\d s \(\+ load \d+\.\d\d s\): encode ", captured.out)


def test_demo_on_the_sd_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DESKGEN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sd-demo.png"
    code = main(["demo", "--backend", "sd", "--device", "cpu", "--steps", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "sd img2img" in capsys.readouterr().out
    assert (tmp_path / "cache" / "tiny-sd-demo" / "model_index.json").is_file()


def test_demo_on_the_controlnet_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DESKGEN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cn-demo.png"
    argv = ["demo", "--backend", "sdxl-controlnet", "--device", "cpu", "--steps", "3"]
    code = main([*argv, "--out", str(out), "--save-controls"])
    assert code == 0, capsys.readouterr().err
    assert "sdxl-controlnet img2img" in capsys.readouterr().out
    assert (tmp_path / "cn-demo-control-1-depth.png").is_file()
    code = main([*argv, "--out", str(out), "--option", "control=canny", "--save-controls"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "cn-demo-control-0-canny.png").is_file()


@pytest.mark.slow
def test_demo_on_the_qwen_image_edit_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DESKGEN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "qwen-demo.png"
    argv = ["demo", "--backend", "qwen-image-edit", "--device", "cpu", "--steps", "2"]
    code = main([*argv, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "qwen-image-edit edit" in capsys.readouterr().out
    assert (tmp_path / "cache" / "tiny-qwen-image-edit-demo" / "model_index.json").is_file()


def test_demo_on_the_flux_kontext_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DESKGEN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "kontext-demo.png"
    argv = ["demo", "--backend", "flux-kontext", "--device", "cpu", "--steps", "2"]
    code = main([*argv, "--out", str(out), "--width", "64", "--height", "48"])
    assert code == 0, capsys.readouterr().err
    assert "flux-kontext edit" in capsys.readouterr().out
    assert out.is_file()


def test_generate_passes_true_cfg_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DESKGEN_CACHE", str(tmp_path / "cache"))
    argv = ["demo", "--backend", "flux-kontext", "--device", "cpu", "--steps", "1"]
    argv += ["--width", "64", "--height", "48", "--true-cfg-scale", "2", "--out"]
    code = main([*argv, str(tmp_path / "guided.png")])
    assert code == 0, capsys.readouterr().err
    assert '"true_cfg_scale": 2.0' in capsys.readouterr().out


def test_demo_of_a_backend_without_a_tiny_model(capsys: pytest.CaptureFixture[str]) -> None:
    from . import fakes  # noqa: F401  (registers "fake")

    assert main(["demo", "--backend", "fake"]) == 1
    assert "pass --model" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_offline_in_a_fresh_process(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DESKGEN_CACHE": str(tmp_path / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    out = tmp_path / "demo.png"
    proc = subprocess.run(
        [sys.executable, "-m", "deskgen", "demo", "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert '"seed": 42' in proc.stdout  # the demo prints the record
    assert (tmp_path / "cache" / "tiny-sdxl-demo" / "model_index.json").is_file()
    request = read_record(out)
    assert request.prompt.startswith("A clean, modern desk setup")
    # what the libraries print on their own while the demo imports and loads them
    from .test_quiet import NOISE

    assert not [line for line in NOISE if line in proc.stderr], proc.stderr


def test_prompt_command_reports_per_encoder(capsys: pytest.CaptureFixture[str]) -> None:
    import json as _json

    seed = _json.loads((Path(__file__).parent / "data" / "seed_prompts.json").read_text())
    assert main(["prompt", seed["long_description"], "--backend", "sdxl"]) == 0
    out = capsys.readouterr().out
    assert "text_encoder: 128/77 tokens, 2 chunks" in out
    assert "text_encoder_2: 128/77 tokens, 2 chunks" in out
    assert main(["prompt", "a desk", "--negative-prompt", "preset:default", "--json"]) == 0
    report = _json.loads(capsys.readouterr().out)
    assert report["negative_preset"] == "sdxl_default"
    assert main(["prompt", seed["long_description"], "--long-prompt", "error"]) == 1
    assert "long_prompt='chunk'" in capsys.readouterr().err


def test_generate_prints_the_prompt_report(
    tiny_sd_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "generate",
            "3D 0ff1c3, a desk",
            "--backend",
            "sd",
            "--model",
            str(tiny_sd_path),
            "--device",
            "cpu",
            "--steps",
            "2",
            "--remove-word",
            "3D 0ff1c3",
            "--trigger-word",
            "desk topview",
            "--long-prompt",
            "fit",
            "--out",
            str(tmp_path / "r.png"),
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "prompt mode fit (sd)" in out
    assert "words removed: ['3D 0ff1c3']" in out
    assert "trigger words added: ['desk topview']" in out


class TestOpenAIFromTheCLI:
    @pytest.fixture
    def server(self, monkeypatch: pytest.MonkeyPatch) -> Any:
        from deskgen.testing import FakeOpenAIServer

        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-cli")
        with FakeOpenAIServer() as server:
            yield server

    def test_generate_with_options(
        self, server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "o.png"
        code = main(
            [
                "generate",
                "a tidy desk",
                "--backend",
                "openai",
                "--model",
                "dall-e-3",
                "--option",
                f"base_url={server.base_url}",
                "--option",
                "quality=hd",
                "--option",
                "max_retries=0",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        assert code == 0, capsys.readouterr().err
        assert server.received[0].json["quality"] == "hd"
        assert out.is_file()
        assert "steps" not in capsys.readouterr().out  # no defaults sent as if asked for

    def test_describe(self, server: Any, capsys: pytest.CaptureFixture[str]) -> None:
        from deskgen.demo import sample_desk_photo

        photo = str(sample_desk_photo())
        args = ["describe", photo, "--option", f"base_url={server.base_url}"]
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "clutter: high" in out
        assert "makeover prompt for sdxl: a realistic photo of a tidy" in out
        assert main([*args, "--json"]) == 0
        assert '"clutter": "high"' in capsys.readouterr().out

    def test_bad_option(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["describe", "x.jpg", "--option", "novalue"]) == 1
        assert "KEY=VALUE" in capsys.readouterr().err
        assert main(["describe", "x.jpg", "--option", "model=dall-e-3"]) == 1
        assert "use --model" in capsys.readouterr().err

    def test_options_are_typed_by_the_backend(self, server: Any) -> None:
        from deskgen.demo import sample_desk_photo

        args = ["--option", "api_key=123", "--option", f"base_url={server.base_url}"]
        assert main(["describe", str(sample_desk_photo()), *args, "--json"]) == 0
        assert server.received[0].headers["authorization"] == "Bearer 123"

    def test_describe_on_a_backend_that_cannot(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        code = main(["describe", "x.jpg", "--backend", "sdxl", "--model", str(tmp_path / "no")])
        assert code == 1
        assert "can't describe" in capsys.readouterr().err  # refused before loading


def test_controlnet_from_the_cli_saves_the_control_images(
    tiny_sdxl_path: Path,
    tiny_control_paths: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from .conftest import draw_desk

    photo = tmp_path / "desk.png"
    draw_desk((96, 72)).save(photo)
    depth = tmp_path / "depth.png"
    draw_desk((96, 72)).convert("L").save(depth)
    out = tmp_path / "cn.png"
    nets = f"{tiny_control_paths['canny']},{tiny_control_paths['depth']}"
    code = main(
        [
            "generate",
            "a tidy desk",
            "--backend",
            "sdxl-controlnet",
            "--model",
            str(tiny_sdxl_path),
            "--device",
            "cpu",
            "--option",
            f"controlnet={nets}",
            "--option",
            "control=canny,depth",
            "--option",
            f"depth_model={tiny_control_paths['depth_model']}",
            "--image",
            str(photo),
            "--control-image",
            "auto",
            "--control-image",
            str(depth),
            "--control-scale",
            "0.4",
            "--steps",
            "3",
            "--seed",
            "1",
            "--out",
            str(out),
            "--no-progress",
            "--save-controls",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "ControlNet 1:" in captured.out and "Weight: 0.4" in captured.out
    assert "control " in captured.out  # the control phase in the timings line
    for name in ("cn-control-0-canny.png", "cn-control-1-depth.png"):
        assert (tmp_path / name).is_file(), captured.err
        assert f"wrote {tmp_path / name}" in captured.err
    request = read_record(out)
    assert request.control_scale == [0.4, 0.4]
    assert request.control_image_sha256 is not None and request.control_image_sha256[0] is None


def test_lora_flag(
    tiny_sdxl_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deskgen.testing import make_tiny_lora

    lora = make_tiny_lora(tiny_sdxl_path, tmp_path / "desk top-view.safetensors")
    out = tmp_path / "o.png"
    argv = ["generate", "a desk", "--model", str(tiny_sdxl_path), "--device", "cpu"]
    argv += ["--steps", "2", "--seed", "1", "--out", str(out), "--no-progress"]
    assert main([*argv, "--lora", f"{lora}:0.6"]) == 0
    text = capsys.readouterr().out
    assert "<lora:desk top-view:0.6>" in text and "Lora hashes:" in text
    assert read_record(out).loras == {"desk_top-view": 0.6}
    assert main([*argv, "--lora", str(tmp_path / "missing.safetensors")]) == 1
    assert "No LoRA file or folder" in capsys.readouterr().err


def test_lora_specs_from_the_flag() -> None:
    from deskgen.cli import _lora_specs

    local, hub, plain = _lora_specs(
        ["./a.safetensors:0.5", "user/repo/desk.safetensors:-1", "b.safetensors"],
        allow_pickle=False,
    )
    assert (local.path, local.weight) == ("./a.safetensors", 0.5)
    assert (hub.path, hub.weight_name, hub.weight) == ("user/repo", "desk.safetensors", -1.0)
    assert (plain.path, plain.weight) == ("b.safetensors", 1.0)


@pytest.mark.slow
def test_dataset_then_train_lora(
    tiny_sdxl_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "data", tmp_path / "lora"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a walnut desk\n\na corner desk with a lamp\n")
    argv = ["dataset", "--model", str(tiny_sdxl_path), "--device", "cpu", "--out", str(data)]
    argv += ["--prompts-file", str(prompts), "--images-per-prompt", "2", "--steps", "2"]
    argv += ["--caption-prefix", "dskgn", "--no-progress"]
    assert main(argv) == 0
    assert "4 generated, 0 already there, 0 failed, of 4" in capsys.readouterr().out
    assert main(argv) == 0
    assert "0 generated, 4 already there" in capsys.readouterr().out

    config = tmp_path / "train.json"
    config.write_text(json.dumps({"rank": 4, "learning_rate": 1e-3, "batch_size": 2}))
    argv = ["train-lora", "--config", str(config), "--model", str(tiny_sdxl_path)]
    argv += ["--data", str(data), "--out", str(out), "--max-steps", "3", "--device", "cpu"]
    argv += ["--trigger-word", "dskgn", "--name", "mine", "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "3 steps on 4 images" in text and "mine.safetensors" in text
    assert (out / "mine.safetensors").is_file()
    assert main([*argv, "--rank", "8"]) == 1  # the checkpoint was made with rank 4
    assert "other settings" in capsys.readouterr().err
    assert main(["train-lora", "--model", "x", "--data", str(data)]) == 1  # no --out
    assert "out: Field required" in capsys.readouterr().err


def test_bench_then_compare_from_the_folder(
    tiny_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from .conftest import draw_desk

    photo = tmp_path / "desk.png"
    draw_desk().save(photo)
    out = tmp_path / "bench"
    args = [
        "bench",
        "--run", f"sdxl,model={tiny_paths['sdxl']},label=xl,steps=3",
        "--run", f"sd,model={tiny_paths['sd']},preset=balanced",
        "--prompt", "a tidy desk",
        "--image", str(photo),
        "--steps", "4", "--warmup", "0", "--repeats", "2",
        "--device", "cpu", "--no-isolate", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "[1/2] xl: " in captured.err and "[2/2] sd (balanced): " in captured.err
    # progress as it goes: each configuration's load and each repeat, before its row
    for line in (
        "[1/2] xl: loading...",
        "[1/2] xl: loaded in ",
        "[2/2] sd (balanced): repeat 2/2: ",
    ):
        assert line in captured.err
    assert captured.err.index("[1/2] xl: repeat 2/2") < captured.err.index(" per image")
    table = captured.out.splitlines()
    assert table[0].startswith("| run | model | resolution |")
    assert table[2].startswith("| xl | tiny-sdxl |") and "| img2img | 1 |" in table[2]
    assert table[3].startswith("| sd (balanced) | tiny-sd |") and "| img2img | 2 |" in table[3]
    assert {p.name for p in out.iterdir()} >= {"bench.md", "bench.csv", "bench.json", "xl.png"}
    assert main(["compare", "--from", str(out), "--tile", "64"]) == 0
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.size == (3 * 64 + 4 * 8, 28 + 64 + 54 + 16)
    assert "<!DOCTYPE html>" in (out / "report.html").read_text()


def test_compare_runs_a_config_file(
    tiny_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bench.toml"
    config.write_text(
        'prompt = "a desk"\nwarmup = 0\nrepeats = 1\ndevice = "cpu"\nisolate = false\n'
        f'[request]\nsteps = 2\n[[runs]]\nbackend = "sdxl"\nmodel = "{tiny_paths["sdxl"]}"\n'
    )
    out = tmp_path / "out"
    assert main(["compare", str(config), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"][0]["mode"] == "txt2img" and report["rows"][0]["steps"] == 2
    assert (out / "sheet.png").is_file() and (out / "report.html").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "--out", "x", "--prompt", "p"], "Nothing to run"),
        (["bench", "--out", "x", "--run", "sd"], "Give the prompt"),
        (["bench", "--out", "x", "--prompt", "p", "--run", "model=x"], "start with the backend"),
        (["bench", "--out", "x", "--prompt", "p", "--run", "sd,steps"], "KEY=VALUE"),
        (["bench", "--prompt", "p", "--run", "sd"], "--out"),
        (["compare", "--from", "nowhere"], "No bench.json"),
        (["compare", "--out", "x", "--prompt", "p", "--run", "sd", "--tile", "8"], "--tile"),
    ],
)
def test_bench_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 1
    assert message in capsys.readouterr().err


def test_a_failed_configuration_exits_1(
    tiny_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "bench", "--run", f"sd,model={tiny_paths['sd']},compile_mode=fastest",
        "--prompt", "p", "--repeats", "1", "--warmup", "0", "--device", "cpu",
        "--no-isolate", "--out", str(tmp_path),
    ]  # fmt: skip
    assert main(args) == 1
    assert "failed: ConfigError" in capsys.readouterr().out


def test_run_specs_split_at_keys_not_inside_json() -> None:
    from deskgen.cli import _run_spec

    spec = _run_spec(
        'sdxl,label=int8,quantization={"method": "quanto", "weights": "int8"},steps=20,'
        'loras=["a.safetensors", "b.safetensors"],use_photo=false,compile=true'
    )
    assert spec == {
        "backend": "sdxl",
        "label": "int8",
        "use_photo": False,
        "options": {
            "quantization": {"method": "quanto", "weights": "int8"},
            "loras": ["a.safetensors", "b.safetensors"],
            "compile": True,
        },
        "request": {"steps": 20},  # typed: requests are strict
    }


def test_mask_command_writes_what_would_change(
    tiny_segformer_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from deskgen.testing import make_desk_photo

    photo, _ = make_desk_photo(seed=5)
    photo.save(tmp_path / "desk.png")
    out, overlay = tmp_path / "mask.png", tmp_path / "overlay.png"
    argv = ["mask", str(tmp_path / "desk.png"), "--model", str(tiny_segformer_path)]
    code = main([*argv, "--out", str(out), "--overlay", str(overlay), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert "of the photo would change (desk " in capsys.readouterr().out
    with Image.open(out) as mask, Image.open(overlay) as tinted:
        assert mask.mode == "L" and mask.size == tinted.size == photo.size
    assert main([*argv, "--target", "sofa", "--device", "cpu"]) == 1
    assert "sofa" in capsys.readouterr().err


def test_generate_with_a_mask_saves_it(
    tiny_sd_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image, ImageDraw

    from .conftest import draw_desk

    draw_desk((96, 72)).save(tmp_path / "desk.png")
    mask = Image.new("L", (96, 72), 0)
    ImageDraw.Draw(mask).rectangle([20, 40, 80, 72], fill=255)
    mask.save(tmp_path / "mask.png")
    out = tmp_path / "inpainted.png"
    argv = ["generate", "a tidy desk", "--backend", "sd", "--model", str(tiny_sd_path)]
    argv += ["--device", "cpu", "--image", str(tmp_path / "desk.png"), "--steps", "2"]
    argv += ["--seed", "1", "--no-progress", "--out", str(out)]
    code = main([*argv, "--mask", str(tmp_path / "mask.png"), "--save-mask"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "sd inpaint" in printed and "Inpaint area: Whole picture" in printed
    assert (tmp_path / "inpainted.mask.png").is_file()
    assert read_record(out).mask_sha256 is not None
    assert main([*argv, "--mask", str(tmp_path / "mask.png"), "--mask-grow", "4"]) == 1
    assert "with --mask auto" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_with_an_auto_mask_runs_offline(
    tmp_path: Path,
    demo_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DESKGEN_CACHE", str(demo_cache))
    out = tmp_path / "masked-demo.png"
    argv = ["demo", "--backend", "sd", "--device", "cpu", "--steps", "2", "--mask", "auto"]
    code = main([*argv, "--save-mask", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "sd inpaint" in printed and '"desk_mask"' in printed
    assert (tmp_path / "masked-demo.mask.png").is_file()
