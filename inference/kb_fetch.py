"""Fetch the MedQuAD corpus from its public repository and build the chat index from it.

``python -m inference.kb fetch medquad`` (and, on first start in development, the app itself, in
the background) does: download the repository archive (``abachaa/MedQuAD`` at a pinned commit,
CC BY 4.0) -> verify it (size bounds, sha256 against ``DOCTORAI_KB_FETCH_SHA256`` when pinned,
recorded in the index manifest either way) -> read its XML question-answer documents with
``defusedxml`` (no DTDs, no entities) inside zip-bomb limits -> write the corpus as
``DATA_DIR/corpora/medquad.jsonl.gz`` in the format :mod:`inference.kb` reads -> build the index.

The three MedlinePlus subsets whose answers were removed upstream (A.D.A.M. encyclopedia, drugs,
herbs and supplements) are skipped and counted. Progress goes to a :class:`FetchProgress` that
the chat tab shows; a failure (no network, a rejected archive) ends there as one line saying
what to run later. Nothing here runs at import time.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from inference.errors import DoctorAIError

log = logging.getLogger(__name__)

MEDQUAD_REPO = "abachaa/MedQuAD"
MEDQUAD_COMMIT = "577bd37b96c02d1833b2c9eed2de9f96964e96cb"  # 2023-10-17, the one the shared copy came from
MEDQUAD_URL = f"https://github.com/{MEDQUAD_REPO}/archive/{MEDQUAD_COMMIT}.zip"
FETCH_COMMAND = "python -m inference.kb fetch medquad"
CORPUS_NAME = "medquad.jsonl.gz"
MEDQUAD_CITATION = (
    "MedQuAD: Ben Abacha A, Demner-Fushman D. A question-entailment approach to question answering. "
    "BMC Bioinformatics 2019;20:511. https://doi.org/10.1186/s12859-019-3119-4"
)
MEDQUAD_LICENCE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
# Answers removed upstream to respect the MedlinePlus copyright: questions only, nothing to retrieve.
ANSWERLESS_SUBSETS = frozenset({"10_MPlus_ADAM_QA", "11_MPlusDrugs_QA", "12_MPlusHerbsSupplements_QA"})
_COLLECTION_RE = re.compile(r"^\d+_[A-Za-z][\w-]*$")

Phase = Literal["idle", "download", "parse", "index", "load", "done", "failed"]


class FetchFailed(DoctorAIError):
    """The corpus could not be downloaded (no network, HTTP error, timeout)."""

    status_code = 502


class ArchiveRejected(DoctorAIError):
    """The download is not an acceptable MedQuAD archive (size, sha256, zip bomb, hostile XML)."""

    status_code = 422


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what is downloaded and unpacked. The real archive (11,280 XML files, a few tens
    of MB at most, each file a few hundred KB at most) sits well inside them; anything outside
    is refused, not cut."""

    min_bytes: int = 1024
    max_bytes: int = 200 * 2**20
    max_members: int = 50_000
    max_member_bytes: int = 16 * 2**20
    max_total_bytes: int = 1 * 2**30
    max_ratio: float = 200.0  # uncompressed / compressed per member; XML compresses ~5-20x


# --------------------------------------------------------------------------- progress
@dataclass
class FetchProgress:
    """Where a fetch stands; updated by the worker, read by the UI and ``/api/ready``. Thread-safe."""

    phase: Phase = "idle"
    done: int = 0
    total: int | None = None
    message: str = ""
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def update(self, phase: Phase, done: int = 0, total: int | None = None, message: str | None = None) -> None:
        with self._lock:
            if self.started_at is None:
                self.started_at = time.monotonic()
            self.phase, self.done, self.total = phase, done, total
            if message is not None:
                self.message = message
            if phase in ("done", "failed"):
                self.finished_at = time.monotonic()

    def fail(self, message: str) -> None:
        with self._lock:
            self.error = message
        self.update("failed", message=message)

    @property
    def running(self) -> bool:
        return self.phase in ("download", "parse", "index", "load")

    def fraction(self) -> float | None:
        with self._lock:
            if not self.total:
                return None
            return min(1.0, self.done / self.total)

    def snapshot(self) -> dict[str, Any]:
        """JSON-friendly state for ``/api/ready`` and tests."""
        with self._lock:
            out: dict[str, Any] = {"phase": self.phase, "done": self.done, "total": self.total}
            out["message"] = self.message
            if self.error:
                out["error"] = self.error
            return out

    def line(self) -> str:
        """One human line, e.g. ``Downloading MedQuAD: 12.3 of 20.1 MB (61%)``."""
        with self._lock:
            phase, done, total, message = self.phase, self.done, self.total, self.message
        pct = f" ({done / total:.0%})" if total else ""
        if phase == "download":
            got = f"{done / 2**20:.1f}" + (f" of {total / 2**20:.1f}" if total else "")
            return f"Downloading MedQuAD: {got} MB{pct}"
        if phase == "parse":
            return f"Reading the MedQuAD documents: {done:,} of {total or 0:,} files{pct}"
        if phase == "index":
            return f"Building the knowledge base: {message or 'indexing'} {done:,} of {total or 0:,}{pct}"
        if phase == "load":
            return "Loading the knowledge base"
        return message


# --------------------------------------------------------------------------- download
def download(
    url: str,
    dest: Path,
    *,
    limits: ArchiveLimits = ArchiveLimits(),
    expected_sha256: str | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
    timeout_s: float = 60.0,
) -> tuple[str, int]:
    """Stream ``url`` into ``dest``; return (sha256, size). Refuses more than ``limits.max_bytes``
    (by header or by count), a body shorter than announced, and a sha256 mismatch; a partial
    file never stays behind."""
    import httpx

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    size = 0
    try:
        with (
            httpx.stream("GET", url, follow_redirects=True, timeout=timeout_s) as r,
            part.open("wb") as fh,
        ):
            if r.status_code != 200:
                raise FetchFailed(f"{url} answered HTTP {r.status_code}")
            announced = int(r.headers.get("content-length") or 0) or None
            if r.headers.get("content-encoding") not in (None, "identity"):
                announced = None  # the header counts compressed bytes; we count decoded ones
            if announced and announced > limits.max_bytes:
                raise ArchiveRejected(f"{url} is {announced:,} bytes, over the {limits.max_bytes:,}-byte limit")
            for block in r.iter_bytes(1 << 16):
                size += len(block)
                if size > limits.max_bytes:
                    raise ArchiveRejected(f"{url} sent more than the {limits.max_bytes:,}-byte limit")
                h.update(block)
                fh.write(block)
                if on_progress is not None:
                    on_progress(size, announced)
            if announced and size != announced:
                raise ArchiveRejected(f"truncated download: {size:,} of {announced:,} bytes")
    except httpx.HTTPError as exc:  # DNS, refused, timeout, connection cut mid-body
        part.unlink(missing_ok=True)
        raise FetchFailed(f"could not download {url}: {type(exc).__name__}: {exc}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    digest = h.hexdigest()
    if size < limits.min_bytes:
        part.unlink(missing_ok=True)
        raise ArchiveRejected(f"{url} sent only {size} bytes; not a MedQuAD archive")
    if expected_sha256 and digest != expected_sha256.lower():
        part.unlink(missing_ok=True)
        raise ArchiveRejected(
            f"sha256 mismatch for {url}: got {digest}, expected {expected_sha256} (DOCTORAI_KB_FETCH_SHA256)"
        )
    part.replace(dest)
    log.info("downloaded %s: %d bytes, sha256 %s", url, size, digest)
    return digest, size


# --------------------------------------------------------------------------- parse
@dataclass
class ParseCounts:
    """What an archive held and what was kept; recorded in the index manifest."""

    files: int = 0
    pairs: int = 0
    kept: int = 0
    empty_answers: int = 0
    duplicates: int = 0
    unreadable_files: int = 0
    skipped_subsets: dict[str, int] = field(default_factory=dict)  # subset -> files skipped
    per_source: dict[str, int] = field(default_factory=dict)  # subset -> records kept


def _local(tag: object) -> str:
    return str(tag).rsplit("}", 1)[-1].lower() if isinstance(tag, str) else ""


def _text(el: Any) -> str:
    return " ".join("".join(el.itertext()).split()) if el is not None else ""


def _first(root: Any, *names: str) -> Any:
    for el in root.iter():
        if _local(el.tag) in names:
            return el
    return None


def parse_document(data: bytes, source: str, stem: str) -> list[dict[str, Any]]:
    """The QA pairs of one MedQuAD XML file (any of its layouts: ``Document/QAPairs/QAPair``,
    ``DiseaseFile``, lower-case ``doc/pair``), empty answers included (the caller counts them).

    Raises ``ArchiveRejected`` for a DTD or entity declaration (billion laughs, external
    entities): MedQuAD files have none, so one is a sign of a tampered archive."""
    from xml.etree.ElementTree import ParseError

    import defusedxml.ElementTree as SafeET
    from defusedxml import DefusedXmlException

    try:
        root = SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as exc:
        raise ArchiveRejected(
            f"{source}/{stem}.xml declares a DTD or entities ({type(exc).__name__}); refused"
        ) from exc
    except ParseError:
        raise
    attrs = {k.lower(): v for k, v in root.attrib.items()}
    url = attrs.get("url", "")
    doc_id = attrs.get("id", stem)
    focus = _text(_first(root, "focus")) or None
    out: list[dict[str, Any]] = []
    pairs = [el for el in root.iter() if _local(el.tag) in ("qapair", "pair")]
    for n, pair in enumerate(pairs, 1):
        q = next((el for el in pair if _local(el.tag) == "question"), None)
        a = next((el for el in pair if _local(el.tag) == "answer"), None)
        pid = {k.lower(): v for k, v in pair.attrib.items()}.get("pid", str(n))
        qattrs = {k.lower(): v for k, v in q.attrib.items()} if q is not None else {}
        out.append(
            {
                "id": f"{source}:{stem}-{pid}",
                "question": _text(q),
                "answer": _text(a),
                "qtype": qattrs.get("qtype", ""),
                "focus": focus,
                "source": source,
                "url": url,
                "doc_id": doc_id,
                "qid": qattrs.get("qid", ""),
            }
        )
    return out


def _collection_of(name: str) -> tuple[str, str] | None:
    """(collection folder, file stem) of an archive member that is a MedQuAD QA file, else None."""
    path = PurePosixPath(name)
    if path.suffix.lower() != ".xml" or len(path.parts) < 2:
        return None
    collection = path.parts[-2]
    if not _COLLECTION_RE.match(collection):
        return None
    return collection, path.stem


def check_archive(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[zipfile.ZipInfo]:
    """The members, after the zip-bomb checks on the central directory (count, sizes, ratios)."""
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise ArchiveRejected(f"the archive has {len(infos):,} entries, over the {limits.max_members:,} limit")
    total = 0
    for info in infos:
        if info.file_size > limits.max_member_bytes:
            raise ArchiveRejected(f"{info.filename} unpacks to {info.file_size:,} bytes; refused")
        if info.file_size > 1 << 16 and info.file_size > limits.max_ratio * max(1, info.compress_size):
            raise ArchiveRejected(
                f"{info.filename} expands {info.file_size / max(1, info.compress_size):.0f}x; refused as a zip bomb"
            )
        total += info.file_size
    if total > limits.max_total_bytes:
        raise ArchiveRejected(f"the archive unpacks to {total:,} bytes, over the {limits.max_total_bytes:,} limit")
    return infos


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ArchiveLimits) -> bytes:
    # The sizes in the directory can lie: read at most one byte past the limit and check.
    with zf.open(info) as fh:
        data = fh.read(limits.max_member_bytes + 1)
    if len(data) > limits.max_member_bytes:
        raise ArchiveRejected(f"{info.filename} unpacks past {limits.max_member_bytes:,} bytes; refused")
    return data


def parse_archive(
    archive: Path, *, limits: ArchiveLimits = ArchiveLimits(), progress: FetchProgress | None = None
) -> tuple[list[dict[str, Any]], ParseCounts]:
    """Records with answers from a MedQuAD repository zip, exact (question, answer) duplicates
    dropped, in collection-number, file-name, pair order; and the counts."""
    from xml.etree.ElementTree import ParseError

    counts = ParseCounts()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveRejected(f"{archive.name} is not a readable zip archive (truncated?): {exc}") from exc
    with zf:
        infos = check_archive(zf, limits)
        members = [(c, info) for info in infos if (c := _collection_of(info.filename)) is not None]
        members.sort(key=lambda m: (int(m[0][0].split("_", 1)[0]), m[0][0], m[0][1]))
        if not members:
            raise ArchiveRejected(f"{archive.name} holds no MedQuAD question-answer XML files")
        seen: set[str] = set()
        records: list[dict[str, Any]] = []
        skipped: Counter[str] = Counter()
        kept: Counter[str] = Counter()
        total_unpacked = 0
        for i, ((source, stem), info) in enumerate(members, 1):
            if progress is not None and (i % 200 == 0 or i == len(members)):
                progress.update("parse", i, len(members))
            if source in ANSWERLESS_SUBSETS:
                skipped[source] += 1
                continue
            try:
                data = _read_member(zf, info, limits)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise ArchiveRejected(f"{info.filename} cannot be unpacked: {exc}") from exc
            total_unpacked += len(data)
            if total_unpacked > limits.max_total_bytes:
                raise ArchiveRejected(f"the archive unpacks past {limits.max_total_bytes:,} bytes; refused")
            counts.files += 1
            try:
                pairs = parse_document(data, source, stem)
            except ParseError as exc:
                counts.unreadable_files += 1
                log.warning("%s is not well-formed XML (%s); skipped", info.filename, exc)
                continue
            for rec in pairs:
                counts.pairs += 1
                if not rec["answer"]:
                    counts.empty_answers += 1
                    continue
                key = hashlib.sha1(f"{rec['question']}\0{rec['answer']}".encode(), usedforsecurity=False).hexdigest()
                if key in seen:
                    counts.duplicates += 1
                    continue
                seen.add(key)
                records.append(rec)
                kept[source] += 1
    counts.kept = len(records)
    counts.skipped_subsets = dict(sorted(skipped.items()))
    counts.per_source = dict(kept)
    if not records:
        raise ArchiveRejected(f"{archive.name} holds no question-answer pairs with answers")
    return records, counts


def write_corpus(records: list[dict[str, Any]], path: Path) -> None:
    """The records as ``.jsonl.gz`` (atomically: a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------- the whole fetch
@dataclass(frozen=True)
class FetchResult:
    corpus: Path
    kb_dir: Path
    archive_sha256: str
    archive_bytes: int
    counts: ParseCounts
    seconds: float


def fetch_medquad(
    data_dir: Path,
    kb_dir: Path,
    *,
    url: str = MEDQUAD_URL,
    expected_sha256: str | None = None,
    limits: ArchiveLimits = ArchiveLimits(),
    progress: FetchProgress | None = None,
    device: str = "cpu",
    show_bars: bool = False,
    embedder: Any = None,
) -> FetchResult:
    """Download, verify and parse MedQuAD, write ``data_dir/corpora/medquad.jsonl.gz`` and build
    the index in ``kb_dir``; the manifest's ``extra.fetched`` records where it came from."""
    from inference.kb import build_index

    progress = progress or FetchProgress()
    t0 = time.perf_counter()
    url_key = hashlib.sha1(url.encode(), usedforsecurity=False).hexdigest()[:10]
    archive = Path(data_dir) / "downloads" / f"medquad-{url_key}.zip"
    progress.update("download", 0, None, "Downloading MedQuAD")
    bar = _bar(show_bars, "download", "B")
    try:

        def on_download(done: int, total: int | None) -> None:
            progress.update("download", done, total)
            if bar is not None:
                bar.total = total
                bar.update(done - bar.n)

        sha, size = download(url, archive, limits=limits, expected_sha256=expected_sha256, on_progress=on_download)
    finally:
        if bar is not None:
            bar.close()
    try:
        records, counts = parse_archive(archive, limits=limits, progress=progress)
    finally:
        archive.unlink(missing_ok=True)  # the corpus keeps what is needed
    skipped = sum(counts.skipped_subsets.values())
    log.info(
        "MedQuAD: kept %d of %d QA pairs from %d files (%d empty answers, %d duplicates); "
        "skipped %d files of the answerless MedlinePlus subsets %s",
        counts.kept,
        counts.pairs,
        counts.files,
        counts.empty_answers,
        counts.duplicates,
        skipped,
        sorted(counts.skipped_subsets),
    )
    corpus = Path(data_dir) / "corpora" / CORPUS_NAME
    write_corpus(records, corpus)

    def on_index(stage: str, done: int, total: int) -> None:
        progress.update("index", done, total, stage)

    fetched = {
        "url": url,
        "archive_sha256": sha,
        "archive_bytes": size,
        "sha256_pinned": bool(expected_sha256),
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files_read": counts.files,
        "qa_pairs": counts.pairs,
        "kept": counts.kept,
        "empty_answers": counts.empty_answers,
        "duplicates": counts.duplicates,
        "unreadable_files": counts.unreadable_files,
        "skipped_subsets": counts.skipped_subsets,
        "per_source": counts.per_source,
        "citation": MEDQUAD_CITATION,
        "licence": MEDQUAD_LICENCE,
    }
    build_index(
        corpus,
        kb_dir,
        device=device,
        progress=show_bars,
        on_progress=on_index,
        extra={"fetched": fetched},
        embedder=embedder,
    )
    return FetchResult(corpus, Path(kb_dir), sha, size, counts, time.perf_counter() - t0)


def _bar(enabled: bool, desc: str, unit: str) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc=desc, unit=unit, unit_scale=True, unit_divisor=1024)


# --------------------------------------------------------------------------- in the app
def offline_message(error: str) -> str:
    """The one line the chat tab shows when the automatic fetch failed."""
    return (
        f"Could not fetch the MedQuAD knowledge base ({error}). When the network is available run "
        f"`{FETCH_COMMAND}`, or point `DOCTORAI_KB_SOURCE` at a local medquad.jsonl.gz and restart."
    )


class CorpusInstaller:
    """Fetches MedQuAD in a background thread when the chat has no index and no corpus configured.

    One per process (the runtime holds it). ``on_done`` runs after a successful build (the
    runtime loads the chat model there, so the first question does not wait for it)."""

    def __init__(
        self,
        data_dir: Path,
        kb_dir: Path,
        *,
        url: str = MEDQUAD_URL,
        expected_sha256: str | None = None,
        limits: ArchiveLimits = ArchiveLimits(),
        device: str = "cpu",
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.kb_dir = Path(kb_dir)
        self.url = url
        self.expected_sha256 = expected_sha256
        self.limits = limits
        self.device = device
        self.on_done = on_done
        self.progress = FetchProgress()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def needed(self) -> bool:
        """No usable index in ``kb_dir`` yet."""
        from inference.kb import index_status

        return not index_status(self.kb_dir).usable

    def start(self, delay_s: float = 0.0) -> threading.Thread | None:
        """Start the fetch (once) if it is needed; the thread is a daemon."""
        with self._lock:
            if self._thread is not None or not self.needed():
                return self._thread
            self.progress.update("download", 0, None, "Waiting to download MedQuAD")
            self._thread = threading.Thread(target=self._run, args=(delay_s,), name="doctorai-kb-fetch", daemon=True)
            self._thread.start()
            return self._thread

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the fetch ends; True when it ended (or never started)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            return not thread.is_alive()
        return True

    def _run(self, delay_s: float) -> None:
        time.sleep(delay_s)
        try:
            result = fetch_medquad(
                self.data_dir,
                self.kb_dir,
                url=self.url,
                expected_sha256=self.expected_sha256,
                limits=self.limits,
                progress=self.progress,
                device=self.device,
            )
        except DoctorAIError as exc:
            log.warning("knowledge base fetch failed: %s", exc.message)
            self.progress.fail(offline_message(exc.message))
            return
        except Exception as exc:  # a broken fetch must not take the server down; the tab says why
            log.exception("knowledge base fetch failed")
            self.progress.fail(offline_message(f"{type(exc).__name__}: {exc}"))
            return
        if self.on_done is not None:
            self.progress.update("load", message="Loading the knowledge base")
            try:
                self.on_done()
            except Exception as exc:  # the index is built; the first question loads it instead
                log.warning("loading the chat model after the fetch failed: %s", exc)
        c = result.counts
        self.progress.update(
            "done",
            message=(
                f"MedQuAD fetched and indexed in {result.seconds:.0f} s: {c.kept:,} answered QA pairs kept "
                f"(skipped {sum(c.skipped_subsets.values()):,} files of the 3 MedlinePlus subsets without answers)."
            ),
        )
