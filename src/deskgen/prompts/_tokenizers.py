"""Tokenizers for counting: the packaged real CLIP vocabulary, T5/Llama from a folder or the
Hugging Face cache, or any tokenizer object the caller hands in. Counting never loads a model.

The Hub is contacted only for a hub id the caller names, and only after a quick check that it
answers: a family name (``"t5"``) or a backend's declared tokenizers come from the local cache
alone, so counting answers in seconds without a network (no minute of download retries).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._exceptions import ConfigError, MissingDependencyError, ModelNotFoundError
from .._hub import is_local, offline

if TYPE_CHECKING:
    from ._report import TextEncoderSpec

__all__ = [
    "DEFAULT_TOKENIZERS",
    "EncoderFamily",
    "TemplatedTokenizer",
    "Token",
    "clip_tokenizer_dir",
    "count_tokens",
    "encoder_tokenizers",
    "packaged_clip_tokenizer",
    "resolve_tokenizer",
    "tokenize",
]

TOKENIZER_LOCK = threading.RLock()
"""Held around every tokenizer call: fast tokenizers raise "Already borrowed" when shared
between threads (diffusers#9362)."""


class EncoderFamily(str, Enum):
    """Text encoder families deskgen knows the token rules of."""

    CLIP = "clip"
    T5 = "t5"
    LLAMA = "llama"
    QWEN = "qwen"
    """Qwen2/Qwen2.5-VL language models as text encoders (Qwen-Image, Qwen-Image-Edit)."""


DEFAULT_TOKENIZERS: dict[EncoderFamily, str] = {
    EncoderFamily.T5: "google/t5-v1_1-xxl",
    EncoderFamily.LLAMA: "meta-llama/Llama-3.1-8B-Instruct",
    EncoderFamily.QWEN: "Qwen/Qwen2.5-VL-7B-Instruct",
}
"""Hub ids whose tokenizers stand for a family when no tokenizer is given (HiDream's T5-XXL and
Llama-3.1-8B-Instruct); they load from the local Hugging Face cache only."""
HUB_PROBE_SECONDS = 3.0
"""How long the Hub may take to answer before a named hub tokenizer is given up on."""


@dataclass(frozen=True)
class Token:
    """One token of a text, with the span of the original text it came from."""

    id: int
    piece: str
    start: int
    end: int


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            "Counting tokens", extra="local", missing=["transformers"]
        ) from exc


def clip_tokenizer_dir() -> Path:
    """The real CLIP BPE vocabulary shipped inside deskgen (MIT, OpenAI), as a folder path."""
    return Path(str(resources.files("deskgen") / "_data" / "clip"))


@functools.cache
def packaged_clip_tokenizer(pad_token: str = "<|endoftext|>") -> Any:
    """The real CLIP tokenizer from the vocabulary shipped with deskgen (MIT, OpenAI).

    SD 1.x/2.x and both SDXL encoders tokenize with this vocabulary; SDXL's second encoder pads
    with ``"!"`` instead of ``"<|endoftext|>"``, which changes no count.
    """
    _require_transformers()
    from transformers import CLIPTokenizer

    folder = clip_tokenizer_dir()
    return CLIPTokenizer(
        str(folder / "vocab.json"),
        str(folder / "merges.txt"),
        model_max_length=77,
        pad_token=pad_token,
    )


def _split_source(source: str) -> tuple[str, str]:
    """``REPO`` or ``REPO/SUBFOLDER`` as (repo id, subfolder)."""
    parts = source.strip("/").split("/")
    return "/".join(parts[:2]), "/".join(parts[2:])


def download_hint(source: str) -> str:
    """The ``hf download`` command that puts ``source``'s tokenizer into the cache."""
    repo, sub = _split_source(source)
    if sub:
        return f"`hf download {repo} --include '{sub}/*'`"
    return (
        f"`hf download {repo} --include 'tokenizer*' 'special_tokens_map.json' '*.model' "
        "'config.json'`"
    )


def _hub_unreachable(timeout: float = HUB_PROBE_SECONDS) -> str | None:
    """Why the Hub can't be reached within ``timeout`` seconds, or ``None`` when it answers.

    A plain HEAD request (proxies from the environment apply), in a thread so that a hanging
    name lookup is bounded too: without it, huggingface_hub retries for most of a minute."""
    import urllib.error
    import urllib.request

    try:
        from huggingface_hub import constants

        endpoint = str(constants.ENDPOINT)
    except ImportError:  # pragma: no cover - comes with transformers
        endpoint = "https://huggingface.co"
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            request = urllib.request.Request(endpoint, method="HEAD")  # noqa: S310 - the hub's
            with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310
                pass
            outcome.append(None)
        except urllib.error.HTTPError:  # an answer, even an error status: reachable
            outcome.append(None)
        except BaseException as exc:  # any failure means "not reachable" (a thread: no ^C)
            outcome.append(str(getattr(exc, "reason", exc)) or type(exc).__name__)

    thread = threading.Thread(target=probe, name="deskgen-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer from {endpoint} within {timeout:g} s"


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "spiece.model", "tokenizer.model")
"""Files of which one is in the cache when a tokenizer was downloaded."""


def _cached_folder(repo: str, subfolder: str) -> Path | None:
    """The local Hugging Face cache's folder of ``repo``'s tokenizer files, if it holds some
    (a quick look: no network, and no transformers import when there are none)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - comes with transformers
        return None
    for file in TOKENIZER_FILES:
        try:
            found = try_to_load_from_cache(repo, f"{subfolder}/{file}" if subfolder else file)
        except ValueError:  # not a valid repo id
            return None
        if isinstance(found, str):
            return Path(found).parent
    return None


def _auto_tokenizer() -> Any:
    from transformers import AutoTokenizer  # here: importing it takes seconds (torch)

    return AutoTokenizer


@functools.cache
def _load_tokenizer(name: str, download: bool = True) -> Any:
    """A tokenizer from a folder, or from a hub source (``REPO`` or ``REPO/SUBFOLDER``): the
    local cache first; the Hub only with ``download`` and when it answers quickly."""
    _require_transformers()
    folder = Path(os.path.expanduser(name))
    if folder.is_dir():
        try:
            return _auto_tokenizer().from_pretrained(
                str(folder), trust_remote_code=False, local_files_only=True
            )
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"No tokenizer could be loaded from the folder {name!r} ({exc}): give a folder "
                "with the tokenizer files (tokenizer.json or *.model, tokenizer_config.json)."
            ) from exc
    if is_local(name, subfolder=True):  # a path with no folder there, or no hub id shape
        raise ModelNotFoundError(
            f"No tokenizer folder {name!r}: give a folder with the tokenizer files, or a hub id."
        )
    repo, sub = _split_source(name)
    cached_error: Exception | None = None
    cached = _cached_folder(repo, sub)
    if cached is not None:  # loaded as a folder: transformers then asks the Hub for nothing
        try:
            return _auto_tokenizer().from_pretrained(
                str(cached), trust_remote_code=False, local_files_only=True
            )
        except (OSError, ValueError) as exc:  # part of it cached: fetch the rest, if asked
            cached_error = exc
    get = f"download it once: {download_hint(name)}"
    if not download:
        raise ModelNotFoundError(
            f"The tokenizer {name!r} is not in the local Hugging Face cache. Pass "
            f"encoder=<a tokenizer object or folder>, or {get}."
        ) from cached_error
    if offline():
        raise ModelNotFoundError(
            f"No tokenizer could be loaded from {name!r}: not a folder, not in the local Hugging "
            f"Face cache, and HF_HUB_OFFLINE is set. Give a folder, or {get} with network."
        ) from cached_error
    reason = _hub_unreachable()
    if reason is not None:
        raise ModelNotFoundError(
            f"No tokenizer could be loaded from {name!r}: not a folder, not in the local Hugging "
            f"Face cache, and the Hub can't be reached ({reason}). Give a folder, or {get} "
            "where there is network."
        ) from cached_error
    try:
        return _auto_tokenizer().from_pretrained(repo, subfolder=sub, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"No tokenizer could be loaded from {name!r} (not a folder with tokenizer files, and "
            f"not on the Hub as {repo!r}{f' with a {sub!r} folder' if sub else ''}: {exc}). Pass "
            "a tokenizer object or folder (gated repos: accept the licence and `hf auth login` "
            f"first), or {get}."
        ) from exc


def resolve_tokenizer(encoder: EncoderFamily | str | Any) -> tuple[Any, EncoderFamily | None]:
    """A tokenizer and its family from a family name, a folder or hub id, or a tokenizer.

    A family's tokenizer (`DEFAULT_TOKENIZERS`) comes from the local cache only; a hub id given
    by name is downloaded when it is not cached (after a quick check that the Hub answers)."""
    if isinstance(encoder, EncoderFamily) or encoder in {f.value for f in EncoderFamily}:
        family = EncoderFamily(encoder)
        if family is EncoderFamily.CLIP:
            return packaged_clip_tokenizer(), family
        return _load_tokenizer(DEFAULT_TOKENIZERS[family], download=False), family
    if isinstance(encoder, (str, os.PathLike)):
        return _load_tokenizer(os.fspath(encoder)), None
    if callable(getattr(encoder, "encode", None)) or callable(encoder):
        return encoder, None
    raise ConfigError(
        f"encoder={encoder!r} is not an encoder family ('clip', 't5', 'llama'), a tokenizer "
        "folder or hub id, or a tokenizer object."
    )


def encoder_tokenizers(
    backend: str,
    specs: Sequence[TextEncoderSpec],
    given: Mapping[str, Any] | None = None,
) -> list[tuple[TextEncoderSpec, Any]]:
    """The tokenizer of each of a backend's text encoders, for counting without the model.

    ``given`` maps an encoder's name (``"text_encoder_3"``) or family (``"t5"``) to a tokenizer
    folder, a hub id (downloaded when not cached) or a tokenizer object; the others come from
    the packaged CLIP vocabulary or the local Hugging Face cache (the spec's ``tokenizers``, else
    the family's). Nothing waits on the network unless a hub id is given.

    Raises:
        ConfigError: a key of ``given`` that is no encoder or family of the backend.
        ModelNotFoundError: encoders whose tokenizer is neither given nor cached; the message
            names each and says what to pass.
    """
    given = dict(given or {})
    names = [spec.name for spec in specs]
    families = sorted({spec.family.value for spec in specs})
    for key in given:
        if key not in names and key not in families:
            raise ConfigError(
                f"The {backend!r} backend has no text encoder {key!r}: name one of "
                f"{', '.join(names) or '(none)'}, or a family ({', '.join(families) or 'none'})."
            )
    pairs: list[tuple[TextEncoderSpec, Any]] = []
    missing: list[tuple[TextEncoderSpec, tuple[str, ...]]] = []
    for spec in specs:
        choice = given.get(spec.name, given.get(spec.family.value))
        if choice is not None:
            pairs.append((spec, resolve_tokenizer(choice)[0]))
            continue
        if spec.family is EncoderFamily.CLIP and not spec.tokenizers:
            pairs.append((spec, packaged_clip_tokenizer()))
            continue
        sources = spec.tokenizers or (DEFAULT_TOKENIZERS[spec.family],)
        found = None
        for source in sources:
            try:
                found = _load_tokenizer(source, download=False)
            except ModelNotFoundError:
                continue
            break
        if found is None:
            missing.append((spec, sources))
        else:
            pairs.append((spec, found))
    if missing:
        listed = "; ".join(
            f"{spec.name} ({spec.family.value}: {' or '.join(sources)})"
            for spec, sources in missing
        )
        keys = [spec.name for spec, _ in missing]
        mapping = ", ".join(f"{key!r}: FOLDER" for key in keys)
        flags = " ".join(f"--tokenizer {key}=PATH" for key in keys)
        hints = ", ".join(download_hint(sources[0]) for _, sources in missing)
        raise ModelNotFoundError(
            f"Counting tokens for the {backend!r} backend needs tokenizers that are not in the "
            f"local Hugging Face cache: {listed}. Give each as a folder, a hub id to download "
            f"or a tokenizer object (tokenizers={{{mapping}}}; on the command line {flags}), "
            f"or download them once: {hints} (gated repos: accept the licence and "
            "`hf auth login` first)."
        )
    return pairs


def tokenize(tokenizer: Any, text: str, *, offset: int = 0) -> list[Token]:
    """Content tokens of ``text`` (no special tokens), with their spans in the original text."""
    if not text:
        return []
    with TOKENIZER_LOCK:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        pieces = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    return [
        Token(id=int(i), piece=str(p), start=offset + int(s), end=offset + int(e))
        for i, p, (s, e) in zip(enc["input_ids"], pieces, enc["offset_mapping"], strict=True)
    ]


def token_count(tokenizer: Any, text: str, *, special: bool = True) -> int:
    """Tokens ``tokenizer`` makes of ``text`` (uncut, no over-length warning), under the lock."""
    with TOKENIZER_LOCK:
        return len(tokenizer(text, add_special_tokens=special, verbose=False)["input_ids"])


def special_token_count(tokenizer: Any) -> int:
    """How many special tokens the tokenizer adds to a text (CLIP: BOS + EOS = 2)."""
    return token_count(tokenizer, "")


def count_tokens(
    text: str, *, encoder: EncoderFamily | str | Any = EncoderFamily.CLIP, special: bool = True
) -> int:
    """Tokens an encoder sees for ``text``, uncut, before any model is loaded.

    Args:
        text: the prompt.
        encoder: ``"clip"`` (exact, from the packaged vocabulary), ``"t5"`` or ``"llama"`` (their
            tokenizers from the local Hugging Face cache only), a tokenizer folder or hub id
            (downloaded when not cached), or a tokenizer object (e.g. ``pipe.tokenizer``).
        special: include the special tokens the encoder adds (CLIP's BOS and EOS), as the
            encoder's limit counts them: the seed's long prompt is 128 with them, 126 without.
    """
    tokenizer, _ = resolve_tokenizer(encoder)
    return token_count(tokenizer, text, special=special)


class TemplatedTokenizer:
    """A tokenizer as a pipeline's text encoder sees the prompt: inside a chat template, of
    which the pipeline keeps all but the first ``drop`` tokens (Qwen-Image's system prompt).
    The kept template tokens count as the "special tokens" of every text, so the prompt
    builder's counts, limits and cuts are those of the encoder's real sequence. The template
    holds ``{}`` where the prompt goes; prefix, prompt and suffix are tokenized apart (the
    pre-tokenizers of chat models split at the template's newlines and markers)."""

    def __init__(self, tokenizer: Any, *, template: str, drop: int = 0) -> None:
        prefix, _, suffix = template.partition("{}")
        self.tokenizer = tokenizer
        self.template = template
        self.drop = drop
        with TOKENIZER_LOCK:
            self._prefix = list(tokenizer(prefix, add_special_tokens=False)["input_ids"])
            self._suffix = list(tokenizer(suffix, add_special_tokens=False)["input_ids"])
        self.model_max_length: int = int(getattr(tokenizer, "model_max_length", 10**6))

    def __call__(
        self,
        text: str,
        *,
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
        verbose: bool = False,
    ) -> dict[str, Any]:
        encoded = self.tokenizer(
            text,
            add_special_tokens=False,
            return_offsets_mapping=return_offsets_mapping,
            verbose=verbose,
        )
        if not add_special_tokens:
            return dict(encoded)
        ids = [*self._prefix, *encoded["input_ids"], *self._suffix][self.drop :]
        return {"input_ids": ids}

    def convert_ids_to_tokens(self, ids: Any) -> Any:
        return self.tokenizer.convert_ids_to_tokens(ids)
