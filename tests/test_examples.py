"""The examples and the notebook run offline on tiny models."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "DESKGEN_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_makeover_script(tmp_path: Path) -> None:
    out = tmp_path / "makeover.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "makeover.py"),
            "--backend",
            "sd",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "makeover-0.png").is_file()
    assert (tmp_path / "makeover-1.png").is_file()
    assert "replay seed 43" in proc.stdout


@pytest.mark.slow
def test_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(ROOT / "examples" / "makeover.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    shown = nb.cells[4].outputs[0]["data"]
    assert "text/html" in shown
    assert "data:image/png;base64" in shown["text/html"]


@pytest.mark.slow
def test_prompts_example(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "prompts.py")],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "CLIP tokens: 128" in proc.stdout
    assert "text_encoder: 128/77 tokens, 2 chunks" in proc.stdout
    assert "trigger words added: ['desk topview']" in proc.stdout
    assert "lossless: True" in proc.stdout


@pytest.mark.slow
def test_openai_example_runs_offline(tmp_path: Path) -> None:
    env = {k: v for k, v in _env(tmp_path).items() if k != "OPENAI_API_KEY"}
    out = tmp_path / "openai.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "openai_makeover.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "local stand-in server" in proc.stdout
    assert "clutter: high" in proc.stdout
    assert "img2img" in proc.stdout and "estimated cost:" in proc.stdout
    assert out.is_file()


@pytest.mark.slow
def test_controlnet_example(tmp_path: Path) -> None:
    out = tmp_path / "cn.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "controlnet_makeover.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "edit: img2img, 9 steps" in proc.stdout  # int(12 * 0.8)
    assert "fresh: txt2img, 12 steps" in proc.stdout
    assert "('depth', 0.4, 0.8)" in proc.stdout
    for name in ("cn-edit.png", "cn-fresh.png", "cn-control-canny.png", "cn-control-depth.png"):
        assert (tmp_path / name).is_file()


@pytest.mark.slow
def test_hidream_example(tmp_path: Path) -> None:
    out = tmp_path / "hidream.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "hidream_makeover.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "lossless: True" in proc.stdout
    length = int(proc.stdout.split("max_sequence_length: ")[1].split()[0])
    assert 128 < length <= 218  # fitted to the prompt, over diffusers' default
    assert f"{length}/{length} tokens" in proc.stdout  # the longest count sets it
    assert "'text_encoder_4': 'int8 (" in proc.stdout
    assert "'text_encoder_3': 'int8 (" in proc.stdout
    for name in ("text_encoder_3", "text_encoder_4"):  # "  name: 125 kB -> 77 kB"
        sizes = re.search(rf"  {name}: (\d+) kB -> (\d+) kB", proc.stdout)
        assert sizes is not None and int(sizes[2]) < int(sizes[1]), name
    assert "4 steps, guidance 5.0, 128x128" in proc.stdout
    assert f"wrote {out}" in proc.stdout and out.is_file()


@pytest.mark.slow
def test_describe_then_generate_example(tmp_path: Path) -> None:
    out = tmp_path / "described.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "describe_then_generate.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Janus says:" in proc.stdout and "clutter:" in proc.stdout
    assert "CLIP tokens)" in proc.stdout and "janus drew 16x16" in proc.stdout
    assert "sdxl img2img" in proc.stdout and out.is_file()


@pytest.mark.slow
def test_lora_example(tmp_path: Path) -> None:
    out = tmp_path / "lora.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lora_makeover.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "inspected walnut-desk.safetensors: safetensors, kohya layout, for sdxl, rank 4, "
        "trigger words ['walnut desk', 'warm light']"
    ) in proc.stdout
    assert "loaded walnut-desk at 0.8 into text_encoder, text_encoder_2, unet" in proc.stdout
    assert "prompt as encoded: walnut desk, warm light, a tidy minimalist desk" in proc.stdout
    change = float(proc.stdout.split("mean pixel difference ")[1].split()[0])
    assert change > 2  # the LoRA changes the image; loras={} leaves it out
    assert "stacked: [('walnut-desk', 0.8), ('topview', 0.5)]" in proc.stdout
    assert "custom: [('walnut-desk', 0.4), ('topview', 1.0)]" in proc.stdout
    fused_diff = int(proc.stdout.split("fused vs stacked: max pixel difference ")[1].split()[0])
    assert fused_diff <= 1  # fused = stacked up to float rounding, trigger words alike
    assert "<lora:walnut-desk:0.8> <lora:topview:0.5>" in proc.stdout
    assert "'file': 'walnut-desk.safetensors'" in proc.stdout
    for name in ("styled", "plain", "stacked", "custom", "fused"):
        assert (tmp_path / f"lora-{name}.png").is_file()


@pytest.mark.slow
def test_distill_example(tmp_path: Path) -> None:
    out, work = tmp_path / "distilled.png", tmp_path / "distill"
    argv = [sys.executable, str(ROOT / "examples" / "distill_lora.py")]
    argv += ["--work", str(work), "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "dataset LoRAs: [('office3d', 0.8)]" in proc.stdout
    assert "dataset: 6 generated, 0 already there, 0 failed, of 6" in proc.stdout
    assert "trained 6 steps on 6 images" in proc.stdout
    losses = re.search(r"loss before ([\d.]+) after ([\d.]+)", proc.stdout)
    assert losses is not None and float(losses[2]) < float(losses[1])
    lora = work / "lora" / "dskgn_desk.safetensors"
    assert f"wrote {lora}" in proc.stdout and lora.is_file()
    assert "loaded dskgn_desk: rank 4, trigger words ['dskgn desk']" in proc.stdout
    assert "prompt as encoded: dskgn desk, a tidy desk" in proc.stdout
    change = float(proc.stdout.split("mean pixel difference ")[1].split()[0])
    assert change > 0.5  # our LoRA changes the makeover
    assert f"wrote {out}" in proc.stdout and out.is_file()
    rows = [json.loads(line) for line in (work / "dataset" / "train" / "metadata.jsonl").open()]
    assert all(row["caption"].startswith("dskgn desk, ") for row in rows)

    # a rerun skips the images and resumes training from its last checkpoint (nothing left)
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "dataset: 0 generated, 6 already there" in proc.stdout
    assert "resumed from the checkpoint at step 6" in proc.stdout


@pytest.mark.slow
def test_quantize_example(tmp_path: Path) -> None:
    out, saved = tmp_path / "quantized.png", tmp_path / "saved"
    argv = [sys.executable, str(ROOT / "examples" / "quantize_makeover.py")]
    argv += ["--out", str(out), "--save-to", str(saved)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    for method, smaller in (("quanto", 3.0), ("torchao", 1.4)):  # torchao: linear layers only
        report = re.search(
            rf"unet: [\d.]+ MiB -> [\d.]+ MiB \(int8 \({method}\), ([\d.]+)x smaller\)",
            proc.stdout,
        )
        assert report is not None and float(report[1]) > smaller, method
        assert f"(int8 ({method}), as saved)" in proc.stdout
        assert (saved / method / "unet" / "deskgen_quantization.json").is_file()
        assert (tmp_path / f"quantized-{method}.png").is_file()
    assert proc.stdout.count("identical image after reload: True") == 2
    differences = re.findall(r"mean pixel difference ([\d.]+)", proc.stdout)
    assert len(differences) == 2 and all(0 < float(d) < 10 for d in differences)
    assert (tmp_path / "quantized-full.png").is_file()


@pytest.mark.slow
def test_bench_compare_example(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    argv = [sys.executable, str(ROOT / "examples" / "bench_compare.py"), "--out", str(out)]
    argv += ["--repeats", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    labels = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert labels == ["sdxl", "sdxl quality", "sdxl balanced", "sdxl fast", "sd balanced"]
    steps = {label: int(row.split(" | ")[6]) for label, row in zip(labels, rows, strict=True)}
    # img2img at strength 0.6: 30 steps -> 18, quality 50 -> 30, balanced 25 -> 15, LCM 4 -> 2
    assert steps == {
        "sdxl": 18,
        "sdxl quality": 30,
        "sdxl balanced": 15,
        "sdxl fast": 2,
        "sd balanced": 15,
    }
    for name in ("bench.md", "bench.csv", "bench.json", "sheet.png", "report.html"):
        assert (out / name).is_file(), name


@pytest.mark.slow
def test_qwen_edit_example(tmp_path: Path) -> None:
    out = tmp_path / "qwen.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "qwen_edit_makeover.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("edit (128, 96)")
    assert "references: ['" in proc.stdout
    assert out.is_file()


@pytest.mark.slow
def test_flux_kontext_example(tmp_path: Path) -> None:
    out = tmp_path / "kontext.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "flux_kontext_makeover.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert any(line.startswith("edit (128, 96)") for line in proc.stdout.splitlines())
    assert "true_cfg_scale: 1.5" in proc.stdout
    assert "text_encoder: " in proc.stdout and "of 512 tokens" in proc.stdout
    assert out.is_file()


@pytest.mark.slow
def test_single_file_example(tmp_path: Path) -> None:
    out = tmp_path / "single.png"
    argv = [sys.executable, str(ROOT / "examples" / "single_file_makeover.py"), "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("tiny-sdxl.safetensors: SDXL checkpoint (text_encoder ")
    assert "img2img, 7 steps, seed 42" in proc.stdout  # int(12 * 0.6)
    assert "identical to the diffusers folder: True" in proc.stdout
    assert out.is_file()


@pytest.mark.slow
def test_keep_the_room_example(tmp_path: Path, demo_cache: Path) -> None:
    from PIL import Image

    out = tmp_path / "room"
    argv = [sys.executable, str(ROOT / "examples" / "keep_the_room.py"), "--out", str(out)]
    env = {**_env(tmp_path), "DESKGEN_CACHE": str(demo_cache)}  # the demo's models, once
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("inpaint (768, 576)")
    names = ["makeover.png", "makeover.mask.png", "mask-overlay.png", "before-after.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    with Image.open(out / "before-after.png") as pair:
        assert pair.height == 576 and pair.width > 2 * 768


@pytest.mark.slow
def test_serve_makeover_example(tmp_path: Path, demo_cache: Path) -> None:
    """deskgen serve --demo, and the openai client making over the sample desk through it."""
    pytest.importorskip("fastapi")
    out = tmp_path / "served"
    argv = [sys.executable, str(ROOT / "examples" / "serve_makeover.py"), "--out", str(out)]
    env = {**_env(tmp_path), "DESKGEN_CACHE": str(demo_cache)}  # the demo's models, once
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("images.edit: 768x576 PNG, job job_")
    assert lines[1] == "events: queued started step step step step succeeded"
    assert json.loads(lines[2])["seed"] == 7
    assert sorted(p.name for p in out.iterdir()) == ["job.png", "makeover.png"]
