"""Text in and out of the engine: tokenizers, chat templates, incremental detokenization and stop strings.

Only fast tokenizers (a `tokenizer.json` for the `tokenizers` library) are
supported, so the engine needs neither transformers nor sentencepiece.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .gguf_file import is_gguf

_REPLACEMENT = "\ufffd"  # what a decoder emits for bytes that are not (yet) a whole UTF-8 character


@runtime_checkable
class Tokenizer(Protocol):
    """What the engine needs from a tokenizer."""

    eos_token_id: int | None
    bos_token_id: int | None
    vocab_size: int
    all_special_ids: frozenset[int]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text; it already holds the template's special tokens (BOS), so encode it with
        `add_special_tokens=False`."""
        ...

    def is_special(self, token_id: int) -> bool: ...


class HFTokenizer:
    """A `tokenizers`-library tokenizer plus the tokenizer_config.json facts transformers adds to it.

    Built from a Hugging Face model directory (`from_directory`) or from a GGUF
    file's metadata (batchserve.gguf_tokenizer); `source` names it in errors.
    """

    def __init__(self, tokenizer: Any, config: dict, source: Path, chat_template: str | None) -> None:
        self.path = source
        self._tok = tokenizer
        self.bos_token = _token_content(config.get("bos_token"))
        self.eos_token = _token_content(config.get("eos_token"))
        self.bos_token_id = self._tok.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_token_id = self._tok.token_to_id(self.eos_token) if self.eos_token else None
        self.add_bos_token: bool | None = config.get("add_bos_token")
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.all_special_ids = frozenset(
            i for i, tok in self._tok.get_added_tokens_decoder().items() if tok.special
        ) | frozenset(i for i in (self.bos_token_id, self.eos_token_id) if i is not None)
        self.chat_template = chat_template

    @classmethod
    def from_directory(cls, path: str | os.PathLike) -> HFTokenizer:
        """The directory's tokenizer.json, tokenizer_config.json and chat template."""
        from tokenizers import Tokenizer as _FastTokenizer

        path = Path(path)
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(
                f"{tokenizer_file} not found: batchserve supports only fast tokenizers (tokenizer.json); "
                "convert a slow/sentencepiece tokenizer with transformers and save it with save_pretrained"
            )
        try:
            fast = _FastTokenizer.from_file(str(tokenizer_file))
            config = _read_json(path / "tokenizer_config.json")
        except Exception as e:  # tokenizers raises a bare Exception on a damaged file
            raise ValueError(f"cannot load the tokenizer {tokenizer_file}: {e}") from None
        return cls(fast, config, path, _find_chat_template(path, config))

    @property
    def backend_tokenizer(self) -> Any:
        """The `tokenizers.Tokenizer` underneath (transformers' name), for libraries that read the whole vocabulary."""
        return self._tok

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if not add_special_tokens or self.bos_token_id is None or self.add_bos_token is None:
            return ids
        # add_bos_token overrides the post-processor, as transformers does when it rebuilds one.
        has_bos = bool(ids) and ids[0] == self.bos_token_id
        if self.add_bos_token and not has_bos:
            return [self.bos_token_id, *ids]
        if not self.add_bos_token and has_bos and not text.startswith(self.bos_token or ""):
            return ids[1:]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def is_special(self, token_id: int) -> bool:
        return token_id in self.all_special_ids

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """Render the model's Jinja chat template; extra kwargs (tools, documents, ...) reach the template."""
        if self.chat_template is None:
            raise ValueError(
                f"the model at {self.path} has no chat template (none in tokenizer_config.json or "
                "chat_template.jinja); send a plain prompt instead of chat messages"
            )
        return _render_chat_template(
            self.chat_template,
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **kwargs,
        )


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_content(token: str | dict | None) -> str | None:
    """tokenizer_config.json spells special tokens as strings or as AddedToken dicts."""
    return token.get("content") if isinstance(token, dict) else token


def _find_chat_template(path: Path, config: dict) -> str | None:
    template = config.get("chat_template")
    if template is None and (path / "chat_template.jinja").is_file():  # where newer transformers save it
        template = (path / "chat_template.jinja").read_text(encoding="utf-8")
    if template is None:
        template = _read_json(path / "chat_template.json").get("chat_template")
    if isinstance(template, list):  # named templates: chat uses "default"
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def _render_chat_template(template: str, **variables: Any) -> str:
    return _compile_template(template).render(**variables)


@functools.lru_cache(maxsize=16)
def _compile_template(template: str) -> Any:
    return _jinja_env().from_string(template)


@functools.cache
def _jinja_env() -> Any:
    """A sandboxed environment shaped like the one chat templates are written for (HF's settings)."""
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; here a no-op."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        # Jinja's own tojson escapes HTML characters, which would change prompts.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationTag]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ByteTokenizer:
    """The built-in `tiny` model's tokenizer: one id per UTF-8 byte plus BOS, EOS and PAD."""

    BOS, EOS, PAD = 256, 257, 258
    SPECIAL_TOKENS = {BOS: "<|bos|>", EOS: "<|eos|>", PAD: "<|pad|>"}
    vocab_size = 259
    bos_token_id: int | None = BOS
    eos_token_id: int | None = EOS
    all_special_ids = frozenset(SPECIAL_TOKENS)
    _SPECIAL_IDS = {text: i for i, text in SPECIAL_TOKENS.items()}
    _SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in _SPECIAL_IDS) + ")")

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # Special-token strings in the text become their ids, as added tokens do in HF tokenizers;
        # that is how the chat template's "<|bos|>" reaches the model.
        ids = [self.BOS] if add_special_tokens else []
        for part in self._SPECIAL_RE.split(text):
            special = self._SPECIAL_IDS.get(part)
            ids.extend([special] if special is not None else part.encode("utf-8"))
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        out: list[str] = []
        run = bytearray()
        for i in ids:
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run.clear()
            if not skip_special_tokens:
                out.append(self.SPECIAL_TOKENS.get(i, ""))
        out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)

    def is_special(self, token_id: int) -> bool:
        return token_id in self.all_special_ids

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs: Any) -> str:
        turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        return self.SPECIAL_TOKENS[self.BOS] + turns + ("<|assistant|>\n" if add_generation_prompt else "")


def load_tokenizer(model: str | os.PathLike) -> Tokenizer:
    """`tiny` gives the built-in byte tokenizer; a directory its fast tokenizer; a .gguf file the one it describes."""
    if str(model) == "tiny":
        return ByteTokenizer()
    if is_gguf(model):
        from .gguf_tokenizer import gguf_tokenizer

        return gguf_tokenizer(model)
    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} not found (or use the built-in model 'tiny')")
    return HFTokenizer.from_directory(path)


def chat_prompt_ids(
    tokenizer: Tokenizer, messages: list[dict], *, add_generation_prompt: bool = True,
    continue_final_message: bool = False, add_special_tokens: bool = False, **template_kwargs: Any,
) -> list[int]:
    """A conversation as prompt token ids, ready for the assistant's turn (or to continue the last message).

    The rendered template already holds its special tokens (BOS), so by default the text is
    encoded without adding them again: one place for that rule, for every front end.
    `continue_final_message` cuts the rendering right after the last message's content, so the
    model continues that message instead of closing it (as transformers does).
    """
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **template_kwargs)
    if continue_final_message:
        final = str(messages[-1].get("content") or "").strip()
        end = text.rfind(final) if final else -1
        if end < 0:
            raise ValueError("continue_final_message: the chat template does not render the last message's "
                             "content verbatim, so it cannot be continued")
        text = text[: end + len(final)]
    return tokenizer.encode(text, add_special_tokens=add_special_tokens)


class IncrementalDetokenizer:
    """Turns a growing list of output token ids into text deltas without ever splitting a multi-byte character.

    Decoding tokens one by one loses the spaces sentencepiece folds into the
    next token and breaks characters split across byte tokens, so each step
    decodes a short window: the tokens already shown since `prefix_offset`,
    with and without the new ones, and emits the difference once it no longer
    ends in an incomplete character. The window starts with a few prompt
    tokens, so the first output token is decoded in its real left context.
    """

    _CONTEXT_TOKENS = 5
    _MAX_CONTEXT_TOKENS = 24

    def __init__(self, tokenizer: Tokenizer, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids = self._prompt_context(list(prompt_token_ids))
        self._num_context = len(self._ids)
        self._prefix_offset = 0  # the window decoded as context starts here...
        self._read_offset = len(self._ids)  # ...and ends here; tokens after it are not yet shown
        self._text = ""

    @property
    def text(self) -> str:
        """All output text emitted so far."""
        return self._text

    @property
    def output_token_ids(self) -> list[int]:
        return self._ids[self._num_context:]

    def add(self, token_ids: Sequence[int]) -> str:
        """Append new output tokens; return the text they complete ("" while a character is incomplete)."""
        self._ids.extend(token_ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """Emit whatever is held back (incomplete bytes become U+FFFD), so `text` equals the full decode."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        decode, skip = self.tokenizer.decode, self.skip_special_tokens
        prefix_text = decode(self._ids[self._prefix_offset:self._read_offset], skip_special_tokens=skip)
        new_text = decode(self._ids[self._prefix_offset:], skip_special_tokens=skip)
        if len(new_text) <= len(prefix_text) or (new_text.endswith(_REPLACEMENT) and not final):
            return ""
        delta = new_text[len(prefix_text):]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._text += delta
        return delta

    def _prompt_context(self, prompt: list[int]) -> list[int]:
        """The shortest prompt tail of at least a few tokens that starts on a whole character."""
        shortest = min(self._CONTEXT_TOKENS, len(prompt))
        for n in range(shortest, min(self._MAX_CONTEXT_TOKENS, len(prompt)) + 1):
            tail = prompt[len(prompt) - n:]
            if _REPLACEMENT not in self.tokenizer.decode(tail, skip_special_tokens=self.skip_special_tokens):
                return tail
        return prompt[len(prompt) - shortest:]


class StopChecker:
    """Stop strings that may span token boundaries."""

    def __init__(self, stop: Sequence[str], include_stop_str_in_output: bool = False) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.stop = list(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self.matched: str | None = None
        """The stop string the last successful `check` found (vLLM's `stop_reason`)."""

    def check(self, text: str, new_text_len: int) -> int | None:
        """The length `text` must be cut to if a stop string ends in its last `new_text_len` characters, else None.

        With several matches the one that ends first wins (where generation would have stopped had
        the text come a character at a time); among those, the one that starts first.
        """
        if not new_text_len or not self.stop:
            return None
        old_len = len(text) - new_text_len
        best: tuple[int, int, str] | None = None  # (end, start, stop string)
        for s in self.stop:
            start = text.find(s, max(0, old_len - len(s) + 1))  # only matches ending in the new text
            if start >= 0 and (best is None or (start + len(s), start) < best[:2]):
                best = (start + len(s), start, s)
        if best is None:
            return None
        self.matched = best[2]
        return best[0] if self.include_stop_str_in_output else best[1]

    def hold_back(self, text: str) -> int:
        """Trailing characters not to stream yet: they may be the start of a stop string that would be cut.

        Zero when stop strings are kept in the output: then nothing emitted can be taken back.
        """
        if self.include_stop_str_in_output:
            return 0
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:k]):
                    longest = k
                    break
        return longest
