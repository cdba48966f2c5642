"""The chat model: grounded answers from the knowledge base, optionally written by a T5 generator.

The image models implement :class:`inference.backends.base.Backend`; chat has a different
shape, so it has its own small contract, :class:`ChatModel`. The shared
:class:`~inference.manager.ModelManager` still loads it (once, lazily, with state shown by
``/api/ready``) through the :class:`~inference.manager.BackendKind` that :func:`chat_kind` builds.

* Without a generator the answer is the best-matching passages, trimmed to their relevant
  sentences, each with its title and source URL; below a relevance threshold it says that
  nothing matched well enough instead of forcing an answer.
* With a generator (any local T5 / mT5 / AraT5 / Flan-T5 folder, or a Hub id when
  ``DOCTORAI_ALLOW_NETWORK=1``) the retrieved passages go into the prompt and the answer
  streams from a worker thread (``TextIteratorStreamer``), so one user's generation never
  blocks another's. Sources are listed either way.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inference.backends.base import DevicePolicy
from inference.chat_text import DISCLAIMER, Language, Turn
from inference.errors import DoctorAIError, InferenceError, ModelLoadFailed, ModelNotInstalled
from inference.kb import Hit, KnowledgeBase, ensure_index, relevant_sentences, resolve_kb_dir
from inference.manager import BackendKind
from inference.registry import ModelSpec

if TYPE_CHECKING:
    from settings import Settings

log = logging.getLogger(__name__)

INSTALL_KB = "python -m inference.kb fetch medquad"  # or: build --source FILE.jsonl.gz (a local copy)
Mode = Literal["retrieval", "generator", "no_match", "unsupported_language"]

# The documented settings of the original araT5 chat model (see models.md, "Chat").
DEFAULT_TEMPLATES = {
    "en": "Medical question: {question}\nContext: {context}",
    "ar": "سؤال طبي: {question}\nالسياق: {context}",
}
DEFAULT_GENERATION: dict[str, Any] = {
    "min_new_tokens": 15,
    "num_beams": 4,
    "do_sample": True,
    "temperature": 1.1,
    "top_p": 0.85,
    "repetition_penalty": 1.8,
    "no_repeat_ngram_size": 4,
}

_NO_MATCH = {
    "en": (
        "I could not find a good match for that question in the knowledge base ({kb}), so I will not "
        "guess. Try naming the condition or test, e.g. “What are the symptoms of glaucoma?”."
    ),
    "ar": (
        "لم أجد في قاعدة المعرفة ({kb}) ما يطابق هذا السؤال بدرجة كافية، لذلك لن أخمّن. "
        "جرّب ذكر اسم المرض أو الفحص بوضوح."
    ),
}
_ARABIC_UNSUPPORTED = (
    "عذرًا، قاعدة المعرفة المتاحة ({kb}) باللغة الإنجليزية فقط، ولا يوجد نموذج توليد يدعم العربية مثبّت حاليًا، "
    "لذلك لا أستطيع الإجابة عن الأسئلة العربية بعد. يُرجى طرح السؤال بالإنجليزية.\n\n"
    "Sorry: the knowledge base ({kb}) is English only and no Arabic-capable generator is installed, "
    "so I cannot answer Arabic questions yet. Please ask in English."
)
_ARABIC_SOURCES_NOTE = "ملاحظة: المصادر المتاحة باللغة الإنجليزية."
_ARABIC_NO_SOURCES_NOTE = "ملاحظة: لم أجد مصدرًا مطابقًا في قاعدة المعرفة؛ هذه الإجابة مولّدة دون مصادر."
_ARABIC_SAMPLE = "ما هي أعراض مرض السكري وكيف يعالج"


class ChatOptions(BaseModel):
    """The ``options`` of the chat spec in ``assets/models.yaml`` (every field has a default)."""

    model_config = ConfigDict(extra="forbid")

    kb_dir: str = Field("kb", description="index folder, relative to DOCTORAI_DATA_DIR (DOCTORAI_KB_DIR overrides)")
    kb_name: str = "MedQuAD"
    top_k: int = Field(3, ge=1, le=20, description="passages shown, and given to the generator")
    candidates: int = Field(100, ge=1, description="candidates per retriever before fusion")
    rrf_k: int = Field(60, ge=1)
    min_score: float = Field(0.45, ge=-1.0, le=1.0, description="cosine below which nothing matched well enough")
    max_sentences: int = Field(3, ge=1)
    max_passage_chars: int = Field(700, ge=80)
    generator: str | None = Field(None, description="local T5-family folder (under DOCTORAI_MODEL_DIR) or Hub id")
    generator_languages: list[Language] | None = Field(None, description="default: probe the tokenizer")
    templates: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    generation: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_GENERATION))
    max_input_tokens: int = Field(512, ge=16)
    max_output_tokens: int = Field(200, ge=1)
    stream_timeout_s: float = Field(120.0, gt=0)
    answer_without_context: bool = Field(False, description="let the generator answer with no matching passage")
    device: DevicePolicy = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"

    @field_validator("templates")
    @classmethod
    def _templates_have_question(cls, value: dict[str, str]) -> dict[str, str]:
        for lang, template in value.items():
            if "{question}" not in template:
                raise ValueError(f"template {lang!r} has no {{question}} placeholder")
        if "en" not in value:
            raise ValueError("an 'en' template is required (it is the fallback)")
        return value


# ------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Source:
    """A passage an answer rests on."""

    title: str
    url: str
    score: float  # cosine similarity of the passage to the question


@dataclass
class ChatAnswer:
    """A complete answer, the same for the tab, the REST API and gradio_client."""

    response: str
    sources: list[Source]
    language: Language
    disclaimer: str
    model_version: str
    mode: Mode
    matched: bool
    sources_in_text: bool = False  # the extractive answer already links its sources
    timing_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatChunk:
    """A piece of a streamed answer; the last chunk carries the whole :class:`ChatAnswer`."""

    delta: str = ""
    answer: ChatAnswer | None = None


class ChatModel(ABC):
    """Contract of a loaded chat model. One instance per process, shared by every user."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @abstractmethod
    def respond(
        self,
        question: str,
        *,
        language: Language,
        history: Sequence[Turn] = (),
        note: str | None = None,
        stream: bool = True,
    ) -> Iterator[ChatChunk]:
        """Answer ``question`` (already validated): text deltas, then a final chunk with the answer.

        ``note`` is extra context for the generator prompt (e.g. an image result). ``stream=False``
        may use settings that cannot stream (beam search) and yields the text in one piece.
        """

    def answer(
        self, question: str, *, language: Language, history: Sequence[Turn] = (), note: str | None = None
    ) -> ChatAnswer:
        """The complete answer, without streaming."""
        for chunk in self.respond(question, language=language, history=history, note=note, stream=False):
            if chunk.answer is not None:
                return chunk.answer
        raise InferenceError("the chat model returned no answer")

    @property
    @abstractmethod
    def model_version(self) -> str:
        """Spec version plus what it answers from (knowledge base hash, generator)."""

    @property
    def detail(self) -> str:
        """One line for status displays."""
        return ""

    def warm_up(self) -> None:
        return None

    def memory_bytes(self) -> int:
        return 0

    def close(self) -> None:
        return None


# ------------------------------------------------------------------------------ devices
def resolve_device(policy: DevicePolicy) -> str:
    """``cuda`` when a GPU is allowed and present, else ``cpu``."""
    import torch

    if policy == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if policy == "gpu":
        log.warning("a GPU was requested for chat but none is available; using the CPU")
    return "cpu"


def set_torch_threads(n: int) -> None:
    """Limit torch's intra-op CPU threads (process-wide).

    One thread per request is the fast setting for a shared server: measured on a busy 2-core
    machine, MedQuAD answer latency was p50 38 ms / p95 64 ms with 1 thread and p50 542 ms /
    p95 972 ms with torch's default 2 (its threads spin against the other load).
    """
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
        log.info("torch CPU threads set to %d (DOCTORAI_TORCH_THREADS)", n)


def resolve_dtype(dtype: str, device: str) -> Any:
    """bf16 on GPU, fp32 on CPU unless the spec says otherwise."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


# ------------------------------------------------------------------------------ generator
class Seq2SeqGenerator:
    """A T5-family encoder-decoder with prompt fitting, full and streamed generation."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str, device: str, options: ChatOptions) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = device
        self.options = options
        self._tok_lock = threading.Lock()  # fast tokenizers must not be shared across threads mid-call
        self.languages: list[Language] = list(options.generator_languages or self._probe_languages())

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(
        cls, checkpoint: str, model_dir: Path, options: ChatOptions, *, device: str, allow_network: bool
    ) -> Seq2SeqGenerator:
        """Load a local folder (absolute, or under ``model_dir``) or a Hub repo id."""
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

        where, local = resolve_checkpoint(checkpoint, model_dir)
        offline = local or not allow_network
        try:
            config = AutoConfig.from_pretrained(where, local_files_only=offline)
        except OSError as exc:
            if local:
                raise ModelLoadFailed(f"generator folder {where} is not a transformers checkpoint: {exc}") from exc
            raise ModelNotInstalled(
                f"generator {checkpoint!r} is not in the local Hugging Face cache; set DOCTORAI_ALLOW_NETWORK=1 "
                f"to download it, or put the checkpoint folder in {model_dir}"
                if not allow_network
                else f"generator {checkpoint!r} could not be downloaded: {exc}"
            ) from exc
        if not getattr(config, "is_encoder_decoder", False):
            raise ModelLoadFailed(f"{checkpoint} is a {config.model_type} model, not a T5-family encoder-decoder")
        dtype = resolve_dtype(options.dtype, device)
        t0 = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=offline)
        model = AutoModelForSeq2SeqLM.from_pretrained(where, dtype=dtype, local_files_only=offline)
        model.to(device).eval()
        log.info("loaded generator %s (%s, %s) in %.1fs", checkpoint, device, dtype, time.perf_counter() - t0)
        gen = cls(model, tokenizer, name=Path(str(checkpoint)).name or str(checkpoint), device=device, options=options)
        gen.generation_kwargs(streaming=False)  # unknown generation settings fail at load, not per request
        return gen

    def _probe_languages(self) -> list[Language]:
        """Arabic-capable when Arabic text encodes without unknown tokens."""
        unk = getattr(self.tokenizer, "unk_token_id", None)
        ids = self.tokenizer(_ARABIC_SAMPLE, add_special_tokens=False)["input_ids"]
        arabic_ok = bool(ids) and (unk is None or ids.count(unk) == 0)
        return ["en", "ar"] if arabic_ok else ["en"]

    def memory_bytes(self) -> int:
        return int(sum(p.numel() * p.element_size() for p in self.model.parameters()))

    # ---------------------------------------------------------------- prompts
    def count_tokens(self, text: str) -> int:
        with self._tok_lock:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _truncate(self, text: str, n_tokens: int) -> str:
        with self._tok_lock:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][: max(0, n_tokens)]
            return str(self.tokenizer.decode(ids, skip_special_tokens=True)).strip()

    def fit_prompt(self, template: str, question: str, passages: Sequence[str]) -> str:
        """``template`` filled with the question and as many passages as fit ``max_input_tokens``.

        The question is kept whole when possible; context is cut first (the last passage that
        does not fit is truncated, later ones dropped).
        """
        budget = self.options.max_input_tokens - 2  # room for the end-of-sequence token
        base_tokens = self.count_tokens(template.format(question=question, context=""))
        if base_tokens > budget:  # the question alone is too long: keep its start
            q_tokens = self.count_tokens(question)
            question = self._truncate(question, q_tokens - (base_tokens - budget))
            return template.format(question=question, context="")
        remaining = budget - base_tokens
        parts: list[str] = []
        for passage in passages:
            n = self.count_tokens(passage) + 1
            if n <= remaining:
                parts.append(passage)
                remaining -= n
                continue
            if remaining > 8:
                parts.append(self._truncate(passage, remaining - 1))
            break
        return template.format(question=question, context="\n".join(parts))

    def encode(self, prompt: str) -> dict[str, Any]:
        with self._tok_lock:
            batch = self.tokenizer(
                prompt, return_tensors="pt", truncation=True, max_length=self.options.max_input_tokens
            )
        return {k: v.to(self.device) for k, v in batch.items()}

    def generation_kwargs(self, *, streaming: bool) -> dict[str, Any]:
        """The spec's generation settings; streaming forces ``num_beams=1`` (transformers cannot
        stream beam search), sampling settings are dropped when not sampling."""
        import copy

        gen = dict(self.options.generation)
        gen.setdefault("max_new_tokens", self.options.max_output_tokens)
        gen["max_new_tokens"] = min(int(gen["max_new_tokens"]), self.options.max_output_tokens)
        if "min_new_tokens" in gen:
            gen["min_new_tokens"] = min(int(gen["min_new_tokens"]), gen["max_new_tokens"])
        if streaming:
            gen["num_beams"] = 1
        if not gen.get("do_sample"):
            for key in ("temperature", "top_p", "top_k"):
                gen.pop(key, None)
        unused = copy.deepcopy(self.model.generation_config).update(**gen)
        if unused:
            raise ModelLoadFailed(f"unknown generation settings in the chat spec: {sorted(unused)}")
        return gen

    # ---------------------------------------------------------------- generation
    def generate(self, prompt: str) -> str:
        """The whole answer with the spec's settings (beam search included)."""
        import torch

        inputs = self.encode(prompt)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self.generation_kwargs(streaming=False))
        with self._tok_lock:
            return str(self.tokenizer.decode(out[0], skip_special_tokens=True)).strip()

    def stream(self, prompt: str) -> Generator[str, None, None]:
        """Text pieces as they are generated. ``generate`` runs in a worker thread; closing the
        iterator (the user went away) stops it at the next token."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        cancel = threading.Event()

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        inputs = self.encode(prompt)
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.options.stream_timeout_s
        )
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(
                        **inputs,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                        **self.generation_kwargs(streaming=True),
                    )
            except BaseException as exc:  # reported to the consumer below
                errors.append(exc)
                streamer.end()

        worker = threading.Thread(target=work, name="doctorai-generate", daemon=True)
        worker.start()
        try:
            for text in streamer:
                if text:
                    yield text
        except queue.Empty:
            raise InferenceError(f"the generator produced nothing for {self.options.stream_timeout_s:.0f} s") from None
        finally:
            cancel.set()
        worker.join(timeout=5)
        if errors:
            log.error("generation failed: %r", errors[0])
            raise InferenceError(f"the generator failed: {type(errors[0]).__name__}: {errors[0]}")


def resolve_checkpoint(checkpoint: str, model_dir: Path) -> tuple[str, bool]:
    """(where, is_local): an existing folder (absolute or under ``model_dir``) or a Hub repo id."""
    path = Path(checkpoint).expanduser()
    for candidate in (path, model_dir / path):
        if candidate.is_dir():
            return str(candidate), True
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", checkpoint) and not path.is_absolute():
        return checkpoint, False
    raise ModelNotInstalled(
        f"generator checkpoint {checkpoint!r} not found: put a T5-family model folder (config.json, weights, "
        f"tokenizer) in {model_dir} or give a Hub repo id with DOCTORAI_ALLOW_NETWORK=1"
    )


# ------------------------------------------------------------------------------ the model
class RetrievalChatModel(ChatModel):
    """Knowledge-base retrieval, with an optional generator on top."""

    def __init__(
        self,
        spec: ModelSpec,
        options: ChatOptions,
        kb: KnowledgeBase,
        generator: Seq2SeqGenerator | None = None,
        generator_error: str | None = None,
    ) -> None:
        super().__init__(spec)
        self.options = options
        self.kb = kb
        self.generator = generator
        self.generator_error = generator_error

    @classmethod
    def load(cls, spec: ModelSpec, model_dir: Path, device: DevicePolicy, settings: Settings) -> RetrievalChatModel:
        """Ensure the index (building it if missing/stale and a corpus is configured), load it and
        the generator, if any. A generator that fails to load leaves retrieval-only answers."""
        options = parse_options(spec)
        kb_dir = resolve_kb_dir(settings.kb_dir, settings.data_dir, options.kb_dir)
        run_on = resolve_device(options.device if options.device != "auto" else device)
        if run_on == "cpu" and settings.torch_threads:
            set_torch_threads(settings.torch_threads)
        status = ensure_index(kb_dir, settings.kb_source, device=run_on, rebuild=settings.kb_auto_build)
        if not status.usable:
            raise ModelNotInstalled(f"{status.detail}; fetch it with `{INSTALL_KB}` or set DOCTORAI_KB_SOURCE")
        if status.state == "stale":
            log.warning("using a stale knowledge base: %s", status.detail)
        kb = KnowledgeBase.load(kb_dir, device=run_on)
        generator, error = None, None
        checkpoint = settings.chat_generator or options.generator
        if checkpoint:
            try:
                generator = Seq2SeqGenerator.load(
                    checkpoint, Path(model_dir), options, device=run_on, allow_network=settings.allow_network
                )
            except Exception as exc:  # retrieval still works; the tab and status say why
                error = exc.message if isinstance(exc, DoctorAIError) else f"{type(exc).__name__}: {exc}"
                log.error("chat generator %s not loaded: %s", checkpoint, error)
        return cls(spec, options, kb, generator, error)

    # ---------------------------------------------------------------- facts
    @property
    def model_version(self) -> str:
        version = f"{self.spec.version}+kb.{self.kb.manifest.source_sha256[:8]}"
        if self.generator is not None:
            version += f"+gen.{re.sub(r'[^A-Za-z0-9_.-]', '-', self.generator.name)}"
        return version

    @property
    def detail(self) -> str:
        m = self.kb.manifest
        gen = (
            f"generator {self.generator.name} on {self.generator.device}"
            if self.generator
            else f"no generator ({self.generator_error})"
            if self.generator_error
            else "no generator (retrieval answers)"
        )
        return f"{m.passages:,} passages from {Path(m.source).name}; {gen}"

    def memory_bytes(self) -> int:
        return self.kb.memory_bytes() + (self.generator.memory_bytes() if self.generator else 0)

    def warm_up(self) -> None:
        self.kb.search("warm up the retrievers", k=1)

    def close(self) -> None:
        self.generator = None

    def speaks(self, language: Language) -> bool:
        """Can this model answer in ``language`` (from the corpus or the generator)?"""
        return language in self.kb.manifest.languages or (
            self.generator is not None and language in self.generator.languages
        )

    # ---------------------------------------------------------------- retrieval
    def retrieve(self, query: str, history: Sequence[Turn] = ()) -> list[Hit]:
        """Hybrid hits for ``query``; a follow-up ("and how is it treated?") that matches badly is
        retried together with the previous user message."""
        o = self.options
        hits = self.kb.search(query, k=o.top_k, candidates=o.candidates, rrf_k=o.rrf_k)
        best = max((h.dense for h in hits), default=-1.0)
        previous = next((t.content for t in reversed(history) if t.role == "user"), None)
        if best < o.min_score and previous:
            retry = self.kb.search(f"{previous} {query}", k=o.top_k, candidates=o.candidates, rrf_k=o.rrf_k)
            if max((h.dense for h in retry), default=-1.0) > best:
                hits = retry
        return [h for h in hits if h.dense >= o.min_score]

    def _sources(self, hits: Sequence[Hit]) -> list[Source]:
        seen: set[str] = set()
        out: list[Source] = []
        for h in hits:
            key = h.passage.url or h.passage.title
            if key in seen:
                continue
            seen.add(key)
            out.append(Source(h.passage.title, h.passage.url, round(h.dense, 4)))
        return out

    def extractive(self, question: str, hits: Sequence[Hit]) -> str:
        """The passages, trimmed to the sentences that answer ``question``, with title and link."""
        o = self.options
        blocks = [f"From {o.kb_name}, the closest matches:"]
        for n, h in enumerate(hits, 1):
            p = h.passage
            text = relevant_sentences(p.text, question, self.kb.idf, o.max_sentences, o.max_passage_chars)
            text = re.sub(r"(^|\s)-\s+", r"\1• ", text)
            link = f"\nSource: <{p.url}> ({_site(p.url)})" if p.url else ""
            blocks.append(f"{n}. **{p.title}**: {text}{link}")
        return "\n\n".join(blocks)

    # ---------------------------------------------------------------- answering
    def respond(
        self,
        question: str,
        *,
        language: Language,
        history: Sequence[Turn] = (),
        note: str | None = None,
        stream: bool = True,
    ) -> Iterator[ChatChunk]:
        t0 = time.perf_counter()
        timing: dict[str, float] = {}

        def final(text: str, sources: list[Source], mode: Mode, *, in_text: bool = False) -> ChatChunk:
            timing["total"] = (time.perf_counter() - t0) * 1e3
            answer = ChatAnswer(
                response=text,
                sources=sources,
                language=language,
                disclaimer=DISCLAIMER[language],
                model_version=self.model_version,
                mode=mode,
                matched=bool(sources),
                sources_in_text=in_text,
                timing_ms={k: round(v, 2) for k, v in timing.items()},
            )
            return ChatChunk(answer=answer)

        kb_name = self.options.kb_name
        if not self.speaks(language):
            text = _ARABIC_UNSUPPORTED.format(kb=kb_name)
            yield ChatChunk(delta=text)
            yield final(text, [], "unsupported_language")
            return
        hits = self.retrieve(question, history)
        timing["retrieve"] = (time.perf_counter() - t0) * 1e3
        sources = self._sources(hits)
        cross_lingual = language not in self.kb.manifest.languages  # e.g. Arabic question, English corpus
        if self.generator is None or language not in self.generator.languages:
            if not hits:
                text = _NO_MATCH[language].format(kb=kb_name)
                yield ChatChunk(delta=text)
                yield final(text, [], "no_match")
                return
            text = self.extractive(question, hits)
            yield ChatChunk(delta=text)
            yield final(text, sources, "retrieval", in_text=True)
            return
        if not hits and not (self.options.answer_without_context or cross_lingual):
            text = _NO_MATCH[language].format(kb=kb_name)
            yield ChatChunk(delta=text)
            yield final(text, [], "no_match")
            return
        template = self.options.templates.get(language, self.options.templates["en"])
        asked = f"{note}\n{question}" if note else question
        passages = [f"{h.passage.title}: {h.passage.text}" for h in hits]
        prompt = self.generator.fit_prompt(template, asked, passages)
        prefix = ""
        if cross_lingual and language == "ar":
            prefix = (_ARABIC_SOURCES_NOTE if hits else _ARABIC_NO_SOURCES_NOTE) + "\n\n"
            yield ChatChunk(delta=prefix)
        t_gen = time.perf_counter()
        pieces: list[str] = []
        if stream:
            for piece in self.generator.stream(prompt):
                pieces.append(piece)
                yield ChatChunk(delta=piece)
        else:
            text = self.generator.generate(prompt)
            pieces.append(text)
            yield ChatChunk(delta=text)
        timing["generate"] = (time.perf_counter() - t_gen) * 1e3
        generated = "".join(pieces).strip()
        if not generated and hits:  # an empty generation: fall back to the passages themselves
            text = self.extractive(question, hits)
            yield ChatChunk(delta=text)
            yield final(text, sources, "retrieval", in_text=True)
            return
        yield final(prefix + generated, sources, "generator")


def _site(url: str) -> str:
    host = urlparse(url).netloc
    return host.removeprefix("www.") or url


def parse_options(spec: ModelSpec) -> ChatOptions:
    """The spec's ``options`` as :class:`ChatOptions`; a bad spec is a load failure with the reason."""
    try:
        return ChatOptions.model_validate(spec.options)
    except ValidationError as exc:
        raise ModelLoadFailed(f"invalid options for {spec.id} in the registry: {exc}") from exc


def chat_kind(settings: Settings) -> BackendKind:
    """The ``chat`` backend kind for the shared manager: installed = an index exists, or a corpus
    to build one from is configured (it is built on first use, never at import)."""

    def is_installed(spec: ModelSpec, model_dir: Path) -> tuple[bool, str | None]:
        try:
            options = parse_options(spec)
        except ModelLoadFailed as exc:
            return False, exc.message
        kb_dir = resolve_kb_dir(settings.kb_dir, settings.data_dir, options.kb_dir)
        if (kb_dir / "manifest.json").exists():
            return True, None
        source = settings.kb_source
        if source is not None and Path(source).exists() and settings.kb_auto_build:
            return True, None
        if source is not None and not Path(source).exists():
            return False, f"the chat corpus {source} (DOCTORAI_KB_SOURCE) does not exist"
        return False, (
            f"no knowledge base index in {kb_dir}: run `{INSTALL_KB}` (downloads MedQuAD from GitHub), "
            "or set DOCTORAI_KB_SOURCE to a local medquad.jsonl.gz (it is then built on first use)"
        )

    def load(spec: ModelSpec, model_dir: Path, device: DevicePolicy) -> RetrievalChatModel:
        return RetrievalChatModel.load(spec, model_dir, device, settings)

    return BackendKind(load=load, is_installed=is_installed)
