"""The chat knowledge base: build, hash-based rebuild, hybrid retrieval, the no-match threshold."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from inference.backends.chat import RetrievalChatModel, parse_options
from inference.kb import (
    KnowledgeBase,
    Manifest,
    analyze,
    chunk_text,
    ensure_index,
    index_status,
    main,
    relevant_sentences,
    split_sentences,
)
from inference.registry import ModelSpec
from tests.conftest import KB_RECORDS, chat_spec_dict, write_kb_corpus


@pytest.fixture(scope="module")
def kb(kb_index: Path) -> KnowledgeBase:
    return KnowledgeBase.load(kb_index)


def rank_of(hits: list, title: str) -> int | None:
    ranks = [i for i, h in enumerate(hits, 1) if h.passage.title == title]
    return ranks[0] if ranks else None


def test_text_analysis_and_chunking() -> None:
    assert analyze("What are the Symptoms of Tay-Sachs disease?") == ["symptom", "tay", "sach", "disease"]
    assert split_sentences("Key Points - First item. - Second item. Third sentence.") == [
        "Key Points",
        "- First item.",
        "- Second item.",
        "Third sentence.",
    ]
    long = " ".join(f"Sentence {i} has exactly seven words here." for i in range(100))
    chunks = chunk_text(long)
    assert len(chunks) > 2
    assert all(len(c.split()) <= 260 for c in chunks)
    assert " ".join(chunks) == long  # nothing lost, whole sentences only
    assert all(c.endswith(".") for c in chunks)


def test_build_writes_a_complete_index(kb_index: Path, kb_corpus: Path, kb: KnowledgeBase) -> None:
    m = Manifest.read(kb_index)
    assert m is not None
    assert m.records == len(KB_RECORDS)
    assert m.passages == len(kb) > len(KB_RECORDS)  # the long answer was split into passages
    assert m.languages == ["en"]
    assert m.source == str(kb_corpus.resolve())
    for name in ("passages.jsonl", "embeddings.npy", "idf.json", "bm25"):
        assert (kb_index / name).exists()
    assert kb.embeddings.shape == (m.passages, m.embed_dim)
    long_parts = [p for p in kb.passages if p.title == "Long answer disorder"]
    assert len(long_parts) >= 2
    assert {p.url for p in long_parts} == {"https://example.org/long-answer"}
    top = kb.search("How is glaucoma treated?", k=3)
    assert top[0].passage.title == "Glaucoma"
    assert top[0].passage.url == "https://example.org/glaucoma/treatment"
    assert top[0].passage.question == "What are the treatments for Glaucoma ?"
    assert 0.0 < top[0].dense <= 1.0


def test_hash_based_rebuild(tmp_path: Path, kb_index: Path) -> None:
    corpus = write_kb_corpus(tmp_path / "corpus.jsonl", KB_RECORDS[:6])
    kb_dir = tmp_path / "kb"
    assert index_status(kb_dir, corpus).state == "missing"
    assert index_status(kb_dir, None).state == "no_source"
    assert main(["build", "--source", str(corpus), "--kb-dir", str(kb_dir)]) == 0
    first = Manifest.read(kb_dir)
    assert first is not None
    assert first.records == 6
    assert index_status(kb_dir, corpus).state == "fresh"
    # the same bytes with a new mtime: the hash says nothing changed, no rebuild
    os.utime(corpus, ns=(first.source_mtime_ns + 10**9, first.source_mtime_ns + 10**9))
    assert index_status(kb_dir, corpus).state == "fresh"
    assert ensure_index(kb_dir, corpus).manifest.built_at == first.built_at  # type: ignore[union-attr]
    # new content: stale, and rebuilt by ensure_index (what the chat model does on load)
    write_kb_corpus(corpus, KB_RECORDS[:8])
    assert index_status(kb_dir, corpus).state == "stale"
    status = ensure_index(kb_dir, corpus)
    assert status.state == "fresh"
    assert status.manifest is not None
    assert status.manifest.records == 8
    assert status.manifest.source_sha256 != first.source_sha256
    assert KnowledgeBase.load(kb_dir).manifest.records == 8
    assert not list(tmp_path.glob(".kb.tmp-*"))  # the build swapped its temp folder in
    # up to date: the CLI does nothing without --force
    assert main(["build", "--source", str(corpus), "--kb-dir", str(kb_dir)]) == 0
    assert Manifest.read(kb_dir).built_at == status.manifest.built_at  # type: ignore[union-attr]
    # an index from an older DoctorAI (other analyzer or chunking) is rebuilt too
    old = Manifest.read(kb_dir)
    assert old is not None
    old.format_version -= 1
    old.write(kb_dir)
    stale = index_status(kb_dir, corpus)
    assert stale.state == "stale"
    assert not stale.usable
    assert ensure_index(kb_dir, corpus).state == "fresh"


def test_a_half_built_index_is_not_used(tmp_path: Path, kb_index: Path, kb_corpus: Path) -> None:
    kb_dir = tmp_path / "kb"
    shutil.copytree(kb_index, kb_dir)
    (kb_dir / "manifest.json").unlink()  # a build that died before its last step
    assert index_status(kb_dir, kb_corpus).state == "missing"
    with pytest.raises(FileNotFoundError):
        KnowledgeBase.load(kb_dir)


def test_hybrid_beats_bm25_only_on_a_synonym(kb: KnowledgeBase) -> None:
    # The lay question shares no word with the clinical passage ("myocardial infarction"),
    # while other passages share "heart", "attack" and "warning" with it.
    query = "warning signs of a heart attack"
    bm25 = kb.search(query, k=5, mode="bm25")
    hybrid = kb.search(query, k=3, mode="hybrid")
    assert rank_of(bm25, "Myocardial infarction") is None
    assert bm25[0].passage.title in {"Heart valve disease", "Panic disorder"}
    assert rank_of(hybrid, "Myocardial infarction") is not None
    assert rank_of(kb.search(query, k=1, mode="dense"), "Myocardial infarction") == 1


def test_relevant_sentences_keep_the_answering_ones(kb: KnowledgeBase) -> None:
    text = KB_RECORDS[1]["answer"]
    out = relevant_sentences(text, "Do eye drops help?", kb.idf, max_sentences=1)
    assert out == "Eye drops lower the pressure in the eye."
    assert relevant_sentences(text, "zzz", kb.idf, max_sentences=1).startswith("Glaucoma treatments include")


def test_below_threshold_says_no_good_match(kb: KnowledgeBase) -> None:
    spec = ModelSpec.model_validate(chat_spec_dict())
    model = RetrievalChatModel(spec, parse_options(spec), kb)
    off = model.answer("How do I bake sourdough bread at home?", language="en")
    assert off.mode == "no_match"
    assert not off.matched
    assert off.sources == []
    assert "could not find a good match" in off.response
    on = model.answer("What are the symptoms of glaucoma?", language="en")
    assert on.mode == "retrieval"
    assert on.matched
    assert on.sources[0].url == "https://example.org/glaucoma/symptoms"
    assert on.sources[0].score >= parse_options(spec).min_score
    assert "**Glaucoma**" in on.response
    assert "<https://example.org/glaucoma/symptoms>" in on.response
    assert on.model_version.startswith(f"{spec.version}+kb.")
    assert "not medical advice" in on.disclaimer
