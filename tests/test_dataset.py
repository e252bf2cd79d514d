"""Dataset generation: plan, imagefolder layout, resume, failures (on the fake backend), and
one real run on the tiny SDXL with a LoRA that `datasets` reads back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from deskgen import (
    ContentPolicyError,
    DatasetPlan,
    DeskGenerator,
    DeskGrid,
    DeskSpec,
    LoraSpec,
    generate_dataset,
    read_record,
)
from deskgen._dataset import read_metadata

from .fakes import FakeBackend  # noqa: F401  (registers "fake")

PLAN = DatasetPlan(
    prompts=["a walnut desk", DeskSpec(style="industrial", add=["a desk lamp"])],
    grid=DeskGrid(vary={"style": ["scandinavian", "japandi"], "lighting": ["daylight", "dusk"]}),
    images_per_prompt=2,
    seed=10,
    request={"steps": 2},
    caption_prefix="dskgn style",
)


def test_plan_items() -> None:
    items = PLAN.items(backend="sdxl")
    assert len(items) == (2 + 4) * 2
    assert len({item.key for item in items}) == len(items)
    assert [item.seed for item in items[:4]] == [10, 11, 10, 11]
    assert items[0].caption == "dskgn style, a walnut desk"
    assert items[0].negative_prompt is None
    spec_item = items[2]
    assert "industrial style" in spec_item.prompt and spec_item.negative_prompt  # rendered
    assert {i.prompt for i in items[4:]} == {
        s.render(backend="sdxl").prompt
        for s in PLAN.grid.specs()  # type: ignore[union-attr]
    }
    # a key is what makes the image: the same in another plan that holds the same prompt
    again = DatasetPlan(
        prompts=["a walnut desk"], images_per_prompt=1, seed=10, request={"steps": 2}
    )
    assert again.items(backend="sdxl")[0].key == items[0].key


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"request": {"seed": 1}}, "can't be shared"),
        ({"request": {"stepz": 1}}, "not GenerationRequest field"),
        ({"request": {"steps": 0}}, "greater than or equal to 1"),
        ({"grid": {"vary": {"colour": ["red"]}}}, "not DeskSpec field"),
        ({}, "give prompts, a grid, or both"),
    ],
)
def test_bad_plans(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DatasetPlan(**fields)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_layout_resume_and_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "data"
    with DeskGenerator("fake") as gen:
        real = gen.generate

        def generate(**fields: Any) -> Any:
            if "japandi" in fields["prompt"] and fields["seed"] == 11:
                raise ContentPolicyError("refused by the service")
            return real(**fields)

        monkeypatch.setattr(gen, "generate", generate)
        seen: list[str] = []

        def interrupt_after_five(item: Any, error: Exception | None) -> None:
            seen.append(item.key)
            if len(seen) == 5:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            generate_dataset(gen, PLAN, out, progress=False, on_item=interrupt_after_five)
        assert len(read_metadata(out)) == 5
        # as if the process died while appending a line, and after writing an image
        with (out / "train" / "metadata.jsonl").open("a") as fh:
            fh.write('{"file_name": "cut-sh')
        items = PLAN.items_for(gen)
        orphan = out / "train" / f"{items[5].key}.png"
        Image.new("RGB", (4, 4)).save(orphan)

        report = generate_dataset(gen, PLAN, out, progress=False)
    assert (report.planned, report.skipped, report.generated) == (12, 5, 5)
    assert [f.error for f in report.failures] == ["ContentPolicyError"] * 2
    assert not report.complete
    rows = read_metadata(out)
    assert len(rows) == 10 and len({r["file_name"] for r in rows}) == 10
    assert {r["file_name"] for r in rows} == {
        f"{i.key}.png" for i in items if not ("japandi" in i.prompt and i.seed == 11)
    }
    with Image.open(orphan) as image:
        assert image.size != (4, 4)  # redone: it had no metadata line
    row = next(r for r in rows if r["prompt"] == "a walnut desk" and r["seed"] == 11)
    assert row["caption"] == "dskgn style, a walnut desk"
    record = json.loads(row["record"])
    assert record["request"]["seed"] == 11 and record["request"]["steps"] == 2
    assert read_record(out / "train" / row["file_name"]).prompt == "a walnut desk"
    failures = _lines(out / "failures.jsonl")
    assert [f["message"] for f in failures] == ["refused by the service"] * 2
    [run] = json.loads((out / "dataset.json").read_text())["runs"][1:]
    assert run["backend"] == "fake" and run["plan"]["images_per_prompt"] == 2
    assert not list(out.rglob("*.tmp"))

    # the failed items are retried by the next run
    with DeskGenerator("fake") as gen:
        report = generate_dataset(gen, PLAN, out, progress=False)
    assert (report.skipped, report.generated, report.failures) == (10, 2, [])
    assert report.complete
    assert (out / "failures.jsonl").read_text() == ""  # nothing missing any more
    assert len(json.loads((out / "dataset.json").read_text())["runs"]) == 3


def test_what_makes_an_image_decides_what_is_done(tmp_path: Path) -> None:
    out = tmp_path / "data"
    plan = DatasetPlan(prompts=["a desk", "a desk", "a lamp"], request={"steps": 1})
    with DeskGenerator("fake") as gen:
        assert len(plan.items_for(gen)) == 2  # the same prompt twice: its image once
        assert generate_dataset(gen, plan, out, progress=False).generated == 2
    with DeskGenerator("fake", model="fake/other") as other:
        report = generate_dataset(other, plan, out, progress=False)
    assert (report.skipped, report.generated) == (0, 2)  # another model: its own images
    assert len(read_metadata(out)) == 4


def test_metadata_cannot_point_outside_the_dataset(tmp_path: Path) -> None:
    out = tmp_path / "data"
    (out / "train").mkdir(parents=True)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(secret)
    Image.new("RGB", (4, 4)).save(out / "train" / "ok.png")
    rows = [
        {"file_name": "../../secret.png", "caption": "x"},
        {"file_name": str(secret), "caption": "x"},
        {"file_name": "ok.png", "caption": "y"},
    ]
    (out / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["file_name"] for r in read_metadata(out)] == ["ok.png"]


def test_tiny_sdxl_with_a_lora_reads_as_an_imagefolder(
    tmp_path: Path, tiny_sdxl_path: Path
) -> None:
    from deskgen.testing import make_tiny_lora

    lora = make_tiny_lora(tiny_sdxl_path, tmp_path / "topview.safetensors", trigger_words=("tv",))
    plan = DatasetPlan(
        prompts=["a desk seen from above", "a corner desk"],
        images_per_prompt=2,
        request={"steps": 2, "loras": {"topview": 0.8}},
        caption_prefix="dskgn",
    )
    out = tmp_path / "data"
    with DeskGenerator(
        "sdxl", model=str(tiny_sdxl_path), device="cpu", loras=[LoraSpec(path=str(lora))]
    ) as gen:
        report = generate_dataset(gen, plan, out, progress=False)
    assert report.complete and report.generated == 4
    rows = read_metadata(out)
    record = json.loads(rows[0]["record"])
    assert record["loras"][0]["name"] == "topview" and record["loras"][0]["weight"] == 0.8
    assert record["prompt_report"]["prompt"].startswith("tv, ")  # the LoRA's trigger word
    assert rows[0]["caption"] == "dskgn, a desk seen from above"  # not the generating LoRA's

    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert loaded.num_rows == 4
    assert sorted(loaded["caption"]) == sorted(r["caption"] for r in rows)
    assert loaded[0]["image"].size == (64, 64)


def test_openai_backend_through_the_fake_service(tmp_path: Path) -> None:
    """The seed's first source of images: OpenAI's model, a refused prompt recorded."""
    pytest.importorskip("openai")
    from deskgen.testing import FakeAnswer, FakeOpenAIServer

    plan = DatasetPlan(
        prompts=["a walnut desk", DeskSpec(style="japandi", add=["a paper lamp"])],
        request={"width": 1024, "height": 1024},
        caption_prefix="dskgn",
    )
    with FakeOpenAIServer() as server:
        blocked = {"error": {"message": "blocked", "code": "moderation_blocked"}}
        server.answers += [FakeAnswer(200), FakeAnswer(400, blocked)]
        with DeskGenerator(
            "openai", model="gpt-image-1", api_key="sk-test", base_url=server.base_url
        ) as gen:
            report = generate_dataset(gen, plan, tmp_path / "data", progress=False)
            assert (report.generated, [f.error for f in report.failures]) == (
                1,
                ["ContentPolicyError"],
            )
            report = generate_dataset(gen, plan, tmp_path / "data", progress=False)
            assert (report.skipped, report.generated, report.complete) == (1, 1, True)
        sent = [r.json for r in server.received if r.json]
    assert sent[0]["prompt"] == "a walnut desk"
    assert "japandi style" in sent[-1]["prompt"]  # the spec rendered for the openai backend
    rows = read_metadata(tmp_path / "data")
    assert sorted(r["caption"].split(", ")[0] for r in rows) == ["dskgn", "dskgn"]
    assert json.loads(rows[0]["record"])["backend"] == "openai"


def test_a_cut_last_metadata_line_is_repaired_for_datasets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk full or a power loss while appending a line: the resume rewrites the file without
    the cut line and makes its image again, so `datasets` reads every row."""
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "data"
    plan = DatasetPlan(prompts=["a walnut desk", "a glass desk"], images_per_prompt=2)
    with DeskGenerator("fake") as gen:
        assert generate_dataset(gen, plan, out, progress=False).complete
        metadata = out / "train" / "metadata.jsonl"
        data = metadata.read_bytes()
        last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
        cut_name = json.loads(last)["file_name"]
        metadata.write_bytes(data[: len(data) - len(last) // 2 - 1])  # its first half stays
        with caplog.at_level("WARNING", logger="deskgen"):
            report = generate_dataset(gen, plan, out, progress=False)
    assert (report.skipped, report.generated, report.complete) == (3, 1, True)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert loaded.num_rows == 4
    lines = metadata.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)
    assert sorted(loaded["caption"]) == sorted(json.loads(line)["caption"] for line in lines)
    assert cut_name in {json.loads(line)["file_name"] for line in lines}  # its image made again
    assert "dropped 1 line" in caplog.text
    assert not list(out.rglob("*.tmp"))
