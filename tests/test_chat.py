"""The chat model: generator path (templates, truncation, streaming, concurrency), REST and gradio_client.

The generator is a tiny random T5 built here with ByT5's byte tokenizer (no vocabulary file,
nothing downloaded). Its text is gibberish; what is tested is the plumbing around it.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from inference.backends.chat import ChatOptions, RetrievalChatModel, Seq2SeqGenerator, parse_options
from inference.chat_service import ImageContext
from inference.kb import KnowledgeBase
from inference.registry import ModelSpec
from settings import Settings
from tests.conftest import chat_spec_dict, login, token_headers

# ByT5 ids are byte + 3: keep only space, "a" and "b" (and </s>) so the streamer, which emits text
# up to the last space, gets many pieces; no_repeat_ngram_size would dead-end such a tiny alphabet.
ALLOWED = {1, 32 + 3, ord("a") + 3, ord("b") + 3}
TEST_GENERATION = {
    "do_sample": True,
    "temperature": 1.1,
    "top_p": 0.85,
    "num_beams": 4,
    "repetition_penalty": 1.8,
    "min_new_tokens": 30,
    "max_new_tokens": 48,
    "suppress_tokens": [i for i in range(384) if i not in ALLOWED],
}
EN_Q = "What are the symptoms of glaucoma?"
AR_Q = "ما هي أعراض مرض الزرق؟"


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import ByT5Tokenizer, T5Config, T5ForConditionalGeneration

    folder = tmp_path_factory.mktemp("models") / "tiny-t5"
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=384,
        d_model=32,
        d_ff=64,
        d_kv=16,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=0,
        eos_token_id=1,
    )
    config.decoder_start_token_id = 0
    T5ForConditionalGeneration(config).save_pretrained(folder)
    ByT5Tokenizer().save_pretrained(folder)
    return folder


def options(**overrides: Any) -> ChatOptions:
    return ChatOptions.model_validate({"generation": TEST_GENERATION, **overrides})


@pytest.fixture(scope="module")
def generator(t5_dir: Path) -> Seq2SeqGenerator:
    return Seq2SeqGenerator.load(str(t5_dir), t5_dir.parent, options(), device="cpu", allow_network=False)


@pytest.fixture(scope="module")
def kb(kb_index: Path) -> KnowledgeBase:
    return KnowledgeBase.load(kb_index)


def chat_model(kb: KnowledgeBase, generator: Seq2SeqGenerator | None, **opts: Any) -> RetrievalChatModel:
    spec = ModelSpec.model_validate(chat_spec_dict(**opts))
    return RetrievalChatModel(spec, parse_options(spec), kb, generator)


class SlowForward:
    """Wraps the model's forward: counts calls and sleeps a little (releasing the GIL) in each."""

    def __init__(self, model: Any, delay: float) -> None:
        self.model = model
        self.original = model.forward
        self.delay = delay
        self.calls = 0

    def __enter__(self) -> SlowForward:
        def forward(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            time.sleep(self.delay)
            return self.original(*args, **kwargs)

        self.model.forward = forward
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.forward = self.original


# ------------------------------------------------------------------------------ generator
def test_generator_loads_offline_with_the_cpu_policy(generator: Seq2SeqGenerator) -> None:
    import torch

    assert generator.device == "cpu"
    assert next(generator.model.parameters()).dtype == torch.float32  # fp32 on CPU, bf16 only on GPU
    assert generator.languages == ["en", "ar"]  # bytes cover Arabic: no unknown tokens
    assert generator.generation_kwargs(streaming=False)["num_beams"] == 4
    assert generator.generation_kwargs(streaming=True)["num_beams"] == 1  # beam search cannot stream


def test_templates_follow_the_question_language(kb: KnowledgeBase, generator: Seq2SeqGenerator) -> None:
    model = chat_model(kb, generator)
    prompts: list[str] = []
    real_stream = generator.stream

    def spy(prompt: str) -> Generator[str, None, None]:
        prompts.append(prompt)
        yield from real_stream(prompt)

    generator.stream = spy  # type: ignore[method-assign]
    try:
        chunks = list(model.respond(EN_Q, language="en"))
        ar_chunks = list(model.respond(AR_Q, language="ar"))
    finally:
        generator.stream = real_stream  # type: ignore[method-assign]
    assert prompts[0].startswith(f"Medical question: {EN_Q}\nContext: Glaucoma: ")
    assert prompts[1].startswith(f"سؤال طبي: {AR_Q}\nالسياق:")
    en = chunks[-1].answer
    assert en is not None
    assert en.mode == "generator"
    assert en.sources[0].url.startswith("https://example.org/glaucoma")
    assert not en.sources_in_text
    assert len(chunks) > 3  # streamed
    ar = ar_chunks[-1].answer
    assert ar is not None
    assert ar.language == "ar"
    assert ar.mode == "generator"
    assert ar.response.startswith("ملاحظة:")  # says the knowledge base is not Arabic
    assert "ليست نصيحة طبية" in ar.disclaimer


def test_arabic_without_an_arabic_capable_model_says_so(kb: KnowledgeBase, t5_dir: Path) -> None:
    english_only = Seq2SeqGenerator.load(
        str(t5_dir), t5_dir.parent, options(generator_languages=["en"]), device="cpu", allow_network=False
    )
    for model in (chat_model(kb, None), chat_model(kb, english_only)):
        answer = model.answer(AR_Q, language="ar")
        assert answer.mode == "unsupported_language"
        assert answer.sources == []
        assert "English only" in answer.response
        assert "الإنجليزية فقط" in answer.response


def test_prompt_truncation_keeps_the_question(t5_dir: Path) -> None:
    gen = Seq2SeqGenerator.load(
        str(t5_dir), t5_dir.parent, options(max_input_tokens=96), device="cpu", allow_network=False
    )
    template = options().templates["en"]
    passages = ["Glaucoma: " + "the optic nerve is damaged by pressure. " * 5, "Asthma: airways narrow. " * 5]
    prompt = gen.fit_prompt(template, "Is glaucoma painful?", passages)
    assert prompt.startswith("Medical question: Is glaucoma painful?\nContext: Glaucoma: the optic nerve")
    assert "Asthma" not in prompt  # no room left for the second passage
    assert gen.count_tokens(prompt) <= 96
    short = gen.fit_prompt(template, "Is glaucoma painful?", ["Glaucoma: short.", "Asthma: short."])
    assert short.endswith("Context: Glaucoma: short.\nAsthma: short.")  # both fit: nothing cut
    long_question = "why " * 60
    cut = gen.fit_prompt(template, long_question, passages)
    assert cut.startswith("Medical question: why why")
    assert gen.count_tokens(cut) <= 96
    assert gen.encode(prompt + " extra" * 50)["input_ids"].shape[1] <= 96  # the tokenizer's safety net


def test_streaming_yields_several_chunks(generator: Seq2SeqGenerator) -> None:
    chunks = list(generator.stream("Medical question: what is glaucoma?\nContext: none"))
    assert len(chunks) >= 3
    assert all(chunks)
    assert set("".join(chunks)) <= {"a", "b", " "}
    full = generator.generate("Medical question: what is glaucoma?\nContext: none")  # 4 beams, no stream
    assert isinstance(full, str)


def test_two_streams_interleave(generator: Seq2SeqGenerator) -> None:
    events: list[tuple[str, float]] = []
    lock = threading.Lock()
    start = threading.Barrier(2)

    def consume(name: str) -> None:
        start.wait()
        for _ in generator.stream(f"Medical question: stream {name}?"):
            with lock:
                events.append((name, time.perf_counter()))

    with SlowForward(generator.model, delay=0.01):
        threads = [threading.Thread(target=consume, args=(n,)) for n in ("A", "B")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    order = [name for name, _ in events]
    assert order.count("A") >= 3
    assert order.count("B") >= 3
    switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
    assert switches >= 2, order  # neither stream waited for the other to finish


def test_closing_a_stream_stops_its_generation(generator: Seq2SeqGenerator) -> None:
    with SlowForward(generator.model, delay=0.02) as slow:
        stream = generator.stream("Medical question: stop early?")
        next(stream)
        stream.close()  # the user went away
        time.sleep(0.2)
        calls = slow.calls
        time.sleep(0.3)
        assert slow.calls == calls
        assert calls < 45


def test_a_broken_generator_leaves_retrieval_answers(tmp_path: Path, kb_index: Path) -> None:
    spec = ModelSpec.model_validate(chat_spec_dict())
    settings = Settings(data_dir=tmp_path, kb_dir=kb_index, chat_generator="no/such-model")
    model = RetrievalChatModel.load(spec, tmp_path, "cpu", settings)
    assert model.generator is None
    assert model.generator_error is not None
    assert "DOCTORAI_ALLOW_NETWORK" in model.generator_error
    assert "no generator" in model.detail
    assert model.answer(EN_Q, language="en").mode == "retrieval"


def test_image_context_becomes_a_question() -> None:
    from types import SimpleNamespace

    def spec(**extra: Any) -> ModelSpec:
        return ModelSpec.model_validate(
            {
                "id": "tumor",
                "display_name": "Brain tumour MRI",
                "modality": "MRI",
                "backend": "keras_image",
                "head": "softmax",
                "classes": [
                    {"id": "glioma", "name": "Glioma", "description": "Tumour arising from glial cells."},
                    {"id": "meningioma", "name": "Meningioma", "description": "Tumour of the meninges."},
                    {"id": "notumor", "name": "No tumour", "description": ""},
                ],
                "version": "1.2.0",
                **extra,
            }
        )

    probs = {"glioma": 0.7, "meningioma": 0.2, "notumor": 0.1}
    ctx = ImageContext.from_result(
        SimpleNamespace(spec=spec(), label="glioma", label_name="Glioma", probabilities=probs)
    )
    assert ctx is not None
    assert (
        ctx.summary()
        == "The Brain tumour MRI model (v1.2.0) predicted Glioma (Glioma 70%, Meningioma 20%, No tumour 10%)."
    )
    assert ctx.question() == "What is Glioma (Tumour arising from glial cells), and what should I know about it?"
    hash(ctx)  # Gradio's State hashes it
    # a negative result asks about the condition it rules out, not about "No tumour"
    probs = {"glioma": 0.1, "meningioma": 0.3, "notumor": 0.6}
    neg = ImageContext.from_result(
        SimpleNamespace(spec=spec(), label="notumor", label_name="No tumour", probabilities=probs)
    )
    assert neg is not None
    assert neg.question() == (
        "My image was classified as No tumour. What is Meningioma (Tumour of the meninges), and how is it diagnosed?"
    )
    assert ImageContext.from_result(None) is None


# ------------------------------------------------------------------------------ REST
@pytest.fixture
def settings(settings: Settings, chat_registry_file: Path, kb_index: Path) -> Settings:
    """This module's apps have the chat model, answering from the session's small index."""
    return settings.model_copy(update={"registry_file": chat_registry_file, "kb_dir": kb_index, "chat_max_chars": 300})


def test_rest_chat_round_trip(client: Any) -> None:
    assert client.get("/api/ready").json()["models"]["chat"]["state"] == "not_loaded"
    r = client.post("/api/chat", json={"message": "  What are the symptoms of glaucoma?  "})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"response", "sources", "language", "disclaimer", "model_version"}
    assert body["language"] == "en"
    assert body["mode"] == "retrieval"
    assert body["matched"] is True
    assert body["sources"][0] == {
        "title": "Glaucoma",
        "url": "https://example.org/glaucoma/symptoms",
        "score": pytest.approx(body["sources"][0]["score"]),
    }
    assert 0.45 <= body["sources"][0]["score"] <= 1.0
    assert "peripheral, or side, vision" in body["response"]
    assert "not medical advice" in body["disclaimer"]
    assert body["model_version"].startswith("0.1.0+kb.")
    assert client.get("/api/ready").json()["models"]["chat"]["state"] == "ready"
    assert client.post("/api/chatbot", json={"message": "glaucoma symptoms"}).json()["matched"]  # original path
    # a follow-up that names nothing is retried with the previous question
    follow = client.post(
        "/api/chat",
        json={
            "message": "and how is it treated?",
            "history": [{"role": "user", "content": "glaucoma"}, {"role": "assistant", "content": body["response"]}],
        },
    )
    assert follow.status_code == 200
    assert follow.json()["sources"][0]["title"] == "Glaucoma"


def test_rest_chat_no_match_and_arabic(client: Any) -> None:
    off = client.post("/api/chat", json={"message": "How do I bake sourdough bread?"}).json()
    assert off["matched"] is False
    assert off["mode"] == "no_match"
    assert off["sources"] == []
    ar = client.post("/api/chat", json={"message": AR_Q}).json()
    assert ar["language"] == "ar"
    assert ar["mode"] == "unsupported_language"
    assert "English only" in ar["response"]


BAD_INPUT: list[tuple[dict[str, Any], int, str]] = [
    ({"message": ""}, 400, "empty"),
    ({"message": " \n\t "}, 400, "empty"),
    ({"message": "?!?! ..."}, 400, "no words"),
    ({"message": "x" * 301}, 413, "limit is 300"),
    ({"message": "x" * 5000}, 413, "limit is 300"),
    ({"message": "tell me \x1b[31mred\x1b[0m"}, 400, "control characters (U+001B)"),
    ({"message": "a\x00b"}, 400, "binary data"),
    ({"message": bytes(range(256)).decode("latin-1")}, 400, "binary data"),
    ({"message": "".join(chr(0xE000 + i) for i in range(20)) + "ok"}, 400, "binary data"),
    ({"message": "ok?", "history": [{"role": "user", "content": "\x07"}]}, 400, "history[0] content"),
    ({}, 422, "message"),
    ({"message": 5}, 422, "message"),
    ({"message": "ok?", "history": [{"role": "system", "content": "hi"}]}, 422, "role"),
]


def test_rest_chat_rejects_bad_input(client: Any) -> None:
    for payload, status, needle in BAD_INPUT:
        r = client.post("/api/chat", json=payload)
        assert r.status_code == status, (payload, r.text)
        assert needle in r.text, (payload, r.text)
    for raw in (b"\xff\xfe\x00junk", b"{not json"):  # not JSON at all: FastAPI's own 4xx
        r = client.post("/api/chat", content=raw, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
    assert client.post("/api/chat", content=b"message=hi").status_code == 422
    assert client.get("/api/health").status_code == 200  # and nothing crashed


def test_rest_chat_without_a_knowledge_base_says_how_to_build_one(tmp_path: Path, settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from app import create_app

    bare = settings.model_copy(update={"kb_dir": tmp_path / "no-kb", "kb_source": None})
    with TestClient(create_app(bare)) as c:
        c.headers.update(login(c))
        st = c.get("/api/ready").json()["models"]["chat"]
        assert st["state"] == "not_installed"
        assert "python -m inference.kb fetch medquad" in st["detail"]
        assert "DOCTORAI_KB_SOURCE" in st["detail"]  # or a local copy
        assert "knowledge_base" not in c.get("/api/ready").json()  # auto-fetch is off here
        r = c.post("/api/chat", json={"message": EN_Q})
        assert r.status_code == 503
        assert "python -m inference.kb fetch medquad" in r.json()["detail"]


# ------------------------------------------------------------------------------ gradio_client
def test_gradio_client_chat_round_trip(chat_live_server: str) -> None:
    import httpx
    from gradio_client import Client

    headers = token_headers(chat_live_server)
    client = Client(chat_live_server, verbose=False, headers=headers)
    out = client.predict(EN_Q, api_name="/chat")  # builds the index on first use (DOCTORAI_KB_SOURCE)
    assert out["language"] == "en"
    assert out["sources"][0]["url"] == "https://example.org/glaucoma/symptoms"
    assert "not medical advice" in out["disclaimer"]
    assert "**Glaucoma**" in out["response"]
    with pytest.raises(Exception, match="empty"):
        client.predict("   ", api_name="/chat")
    models = httpx.get(f"{chat_live_server}/api/ready", timeout=10, headers=headers).json()["models"]
    assert models["chat"]["state"] == "ready"
