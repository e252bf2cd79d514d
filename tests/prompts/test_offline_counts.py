"""Counting for T5/Llama backends without their models: from the cache, from given tokenizers,
or a prompt error that says what to pass; never a wait on the network nobody asked for."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deskgen import ConfigError, ModelNotFoundError
from deskgen.cli import main
from deskgen.prompts import check_prompt, count_tokens
from deskgen.testing import make_tiny_tokenizer

from .conftest import HubCache

TEXT = "a clean desk with a lamp"


@pytest.fixture(scope="module")
def tiny_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    for kind in ("t5", "llama"):
        make_tiny_tokenizer(kind, root / kind)  # type: ignore[arg-type]
    return {"t5": root / "t5", "llama": root / "llama"}


def _tokens(folder: Path) -> int:
    return count_tokens(TEXT, encoder=str(folder))


def test_backend_tokenizers_come_from_the_cache(
    hub_cache: HubCache, tiny_tokenizers: dict[str, Path]
) -> None:
    hub_cache.add("HiDream-ai/HiDream-I1-Dev", tiny_tokenizers["t5"], subfolder="tokenizer_3")
    hub_cache.add("meta-llama/Llama-3.1-8B-Instruct", tiny_tokenizers["llama"])
    report = check_prompt(TEXT, backend="hidream")  # no network: NetworkUsed otherwise
    counts = {r.encoder: r.tokens for r in report.encoders}
    assert counts["text_encoder_3"] == _tokens(tiny_tokenizers["t5"])
    assert counts["text_encoder_4"] == _tokens(tiny_tokenizers["llama"])


def test_janus_counts_with_its_own_tokenizer(
    hub_cache: HubCache, tiny_tokenizers: dict[str, Path]
) -> None:
    # Llama 3's tokenizer in the cache is not Janus-Pro's: it is not used for Janus
    hub_cache.add("meta-llama/Llama-3.1-8B-Instruct", tiny_tokenizers["t5"])
    with pytest.raises(ModelNotFoundError, match="deepseek-community/Janus-Pro-7B"):
        check_prompt(TEXT, backend="janus")
    hub_cache.add("deepseek-community/Janus-Pro-1B", tiny_tokenizers["llama"])
    report = check_prompt(TEXT, backend="janus")
    assert report.encoders[0].tokens == _tokens(tiny_tokenizers["llama"])


def test_missing_tokenizers_fail_at_once_saying_what_to_pass(hub_cache: HubCache) -> None:
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError) as info:
        check_prompt(TEXT, backend="hidream")
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "text_encoder_3 (t5:" in message and "text_encoder_4 (llama:" in message
    assert "--tokenizer text_encoder_3=PATH --tokenizer text_encoder_4=PATH" in message
    assert "hf download HiDream-ai/HiDream-I1-Full --include 'tokenizer_3/*'" in message


def test_given_tokenizers_by_encoder_or_family(
    hub_cache: HubCache, tiny_tokenizers: dict[str, Path]
) -> None:
    llama = make_tiny_tokenizer("llama")
    given = {"text_encoder_3": str(tiny_tokenizers["t5"]), "llama": llama}
    report = check_prompt(TEXT, backend="hidream", tokenizers=given)
    counts = {r.encoder: r.tokens for r in report.encoders}
    assert counts["text_encoder_3"] == _tokens(tiny_tokenizers["t5"])
    assert counts["text_encoder_4"] == count_tokens(TEXT, encoder=llama)
    with pytest.raises(ConfigError, match="no text encoder 'text_encoder_9'"):
        check_prompt(TEXT, backend="hidream", tokenizers={"text_encoder_9": llama})


def test_a_named_hub_tokenizer_without_network_fails_at_once(
    hub_cache: HubCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="the Hub can't be reached"):
        count_tokens(TEXT, encoder="google/t5-v1_1-xxl")  # asked for: a quick probe, no retries
    assert time.monotonic() - started < 10
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
        count_tokens(TEXT, encoder="google/t5-v1_1-xxl")
    with pytest.raises(ModelNotFoundError, match=r"No tokenizer folder '\./nowhere'"):
        count_tokens(TEXT, encoder="./nowhere")


def test_prompt_command_takes_tokenizers(
    hub_cache: HubCache, tiny_tokenizers: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prompt", TEXT, "--backend", "hidream"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Counting tokens for the 'hidream' backend")
    assert "--tokenizer text_encoder_3=PATH" in err and "Traceback" not in err
    flags = ["--tokenizer", f"text_encoder_3={tiny_tokenizers['t5']}"]
    flags += ["--tokenizer", f"llama={tiny_tokenizers['llama']}"]
    assert main(["prompt", TEXT, "--backend", "hidream", *flags]) == 0
    out = capsys.readouterr().out
    assert f"text_encoder_3: {_tokens(tiny_tokenizers['t5'])}/218 tokens" in out
    # one encoder that needs a tokenizer: the name may be left out
    assert (
        main(["prompt", TEXT, "--backend", "janus", "--tokenizer", str(tiny_tokenizers["llama"])])
        == 0
    )
    assert (
        f"language_model: {_tokens(tiny_tokenizers['llama'])}/4096 tokens"
        in capsys.readouterr().out
    )
    assert main(["prompt", TEXT, "--backend", "hidream", "--tokenizer", "x"]) == 1
    assert "2 encoders that take one (text_encoder_3, text_encoder_4)" in capsys.readouterr().err


@pytest.mark.slow
def test_prompt_command_answers_in_seconds_without_network(tmp_path: Path) -> None:
    """The newcomer's case: no network, HF_HUB_OFFLINE not set (it took ~58 s of retries)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HOME": str(tmp_path)}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens: no network, whatever the box
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "deskgen", "prompt", "a desk", "--backend", "hidream"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    assert "--tokenizer text_encoder_3=PATH" in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 30, f"took {elapsed:.0f} s"
