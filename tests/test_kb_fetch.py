"""``python -m inference.kb fetch medquad``: download, verification, safe parsing, indexing.

Every download comes from a real HTTP server on 127.0.0.1 serving an archive the test wrote in
the MedQuAD repository's layout (tests/medquad_archive.py); nothing touches the network.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from inference.kb import KnowledgeBase, Manifest, index_status
from inference.kb import main as kb_main
from inference.kb_fetch import (
    FETCH_COMMAND,
    ArchiveLimits,
    ArchiveRejected,
    CorpusInstaller,
    FetchFailed,
    download,
    fetch_medquad,
    parse_archive,
)
from tests.conftest import KB_RECORDS, free_port
from tests.medquad_archive import EXPECTED_KEPT, TOP, medquad_members, medquad_zip, serve_archive, zip_bytes


def test_parse_keeps_answered_pairs_and_skips_the_answerless_subsets(tmp_path: Path) -> None:
    archive = tmp_path / "m.zip"
    archive.write_bytes(medquad_zip())
    records, counts = parse_archive(archive)
    assert counts.kept == len(records) == EXPECTED_KEPT
    assert counts.skipped_subsets == {"10_MPlus_ADAM_QA": 1, "11_MPlusDrugs_QA": 1}
    assert counts.duplicates == 1  # the NIDDK pair given twice
    assert counts.empty_answers == 0  # the only empty answers sit in the skipped subsets
    by_focus = {r["focus"]: r for r in records}
    glaucoma = next(r for r in records if r["source"] == "1_CancerGov_QA")
    assert glaucoma["id"] == "1_CancerGov_QA:0000000_1-1"
    assert glaucoma["url"] == KB_RECORDS[0]["url"]
    assert "\n" not in glaucoma["answer"]
    assert "  " not in glaucoma["answer"]
    assert glaucoma["answer"] == KB_RECORDS[0]["answer"]
    assert by_focus["Aphasia"]["source"] == "6_NINDS_QA"  # the lower-case <doc>/<pair> layout
    assert by_focus["Aphasia"]["question"] == "What is (are) Aphasia ?"
    assert [r["source"] for r in records] == sorted((r["source"] for r in records), key=lambda s: int(s.split("_")[0]))


def test_fetch_from_a_loopback_server_builds_a_working_index(tmp_path: Path) -> None:
    body = medquad_zip()
    with serve_archive(body) as server:
        result = fetch_medquad(tmp_path / "data", tmp_path / "data" / "kb", url=server.url)
    assert result.archive_sha256 == hashlib.sha256(body).hexdigest()
    assert result.counts.kept == EXPECTED_KEPT
    assert not list((tmp_path / "data" / "downloads").iterdir())  # no zip or .part left
    manifest = Manifest.read(tmp_path / "data" / "kb")
    assert manifest is not None
    fetched = manifest.extra["fetched"]
    assert fetched["archive_sha256"] == result.archive_sha256
    assert fetched["archive_bytes"] == len(body)
    assert fetched["kept"] == EXPECTED_KEPT
    assert fetched["sha256_pinned"] is False
    assert "CC BY 4.0" in fetched["licence"]
    assert "Ben Abacha" in fetched["citation"]
    assert index_status(tmp_path / "data" / "kb").state == "fresh"
    kb = KnowledgeBase.load(tmp_path / "data" / "kb")
    hit = kb.search("what are the symptoms of glaucoma", k=1)[0]
    assert hit.passage.title == "Glaucoma"
    assert hit.passage.url == KB_RECORDS[0]["url"]


def test_a_pinned_sha256_is_checked(tmp_path: Path) -> None:
    body = medquad_zip()
    good = hashlib.sha256(body).hexdigest()
    with serve_archive(body) as server:
        with pytest.raises(ArchiveRejected, match="sha256 mismatch"):
            download(server.url, tmp_path / "a.zip", expected_sha256="0" * 64)
        assert not (tmp_path / "a.zip").exists()
        assert not (tmp_path / "a.zip.part").exists()
        assert download(server.url, tmp_path / "a.zip", expected_sha256=good.upper()) == (good, len(body))


def test_truncated_and_oversized_downloads_are_refused(tmp_path: Path) -> None:
    body = medquad_zip()
    with serve_archive(body) as server:
        server.truncate_to = len(body) // 2
        with pytest.raises((ArchiveRejected, FetchFailed)):
            download(server.url, tmp_path / "a.zip")
        assert not list(tmp_path.iterdir())
        server.truncate_to = None
        with pytest.raises(ArchiveRejected, match="over the"):
            download(server.url, tmp_path / "a.zip", limits=ArchiveLimits(max_bytes=len(body) - 1))
        server.body = b"Not Found"
        server.status = 404
        with pytest.raises(FetchFailed, match="HTTP 404"):
            download(server.url, tmp_path / "a.zip")
    # A zip cut short (say, by a proxy that sent no length) fails when it is opened.
    cut = tmp_path / "cut.zip"
    cut.write_bytes(body[: len(body) // 2])
    with pytest.raises(ArchiveRejected, match="not a readable zip"):
        parse_archive(cut)


def test_zip_bombs_are_refused(tmp_path: Path) -> None:
    members = medquad_members()
    members[f"{TOP}/1_CancerGov_QA/9999999_1.xml"] = b"<Document>" + b" " * (8 * 2**20) + b"</Document>"
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(zip_bytes(members))
    with pytest.raises(ArchiveRejected, match="zip bomb"):
        parse_archive(bomb)
    with pytest.raises(ArchiveRejected, match="unpacks to"):
        parse_archive(bomb, limits=ArchiveLimits(max_member_bytes=2**20, max_ratio=1e9))
    with pytest.raises(ArchiveRejected, match="entries"):
        parse_archive(bomb, limits=ArchiveLimits(max_members=3))
    with pytest.raises(ArchiveRejected, match="unpacks to"):
        parse_archive(bomb, limits=ArchiveLimits(max_total_bytes=2**20, max_ratio=1e9))


def test_xml_entity_expansion_is_refused(tmp_path: Path) -> None:
    laughs = (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">'
        '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;">]>\n'
        '<Document id="1" url="u"><Focus>x</Focus><QAPairs><QAPair pid="1"><Question qid="1-1" qtype="i">q</Question>'
        "<Answer>&lol3;</Answer></QAPair></QAPairs></Document>"
    )
    external = (
        '<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        '<Document id="1" url="u"><QAPairs><QAPair pid="1"><Question>q</Question><Answer>&xxe;</Answer>'
        "</QAPair></QAPairs></Document>"
    )
    for name, xml in (("laughs", laughs), ("xxe", external)):
        members = medquad_members()
        members[f"{TOP}/2_GARD_QA/0000999_1.xml"] = xml.encode()
        archive = tmp_path / f"{name}.zip"
        archive.write_bytes(zip_bytes(members))
        with pytest.raises(ArchiveRejected, match="DTD or entities"):
            parse_archive(archive)


def test_offline_the_installer_says_what_to_run(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    installer = CorpusInstaller(tmp_path, tmp_path / "kb", url=f"http://127.0.0.1:{port}/medquad.zip")
    assert installer.needed()
    installer.start()
    assert installer.wait(30)
    snap = installer.progress.snapshot()
    assert snap["phase"] == "failed"
    assert FETCH_COMMAND in snap["message"]
    assert "DOCTORAI_KB_SOURCE" in snap["message"]
    assert "\n" not in snap["message"]
    assert not (tmp_path / "kb").exists()


def test_cli_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from settings import get_settings

    monkeypatch.setenv("DOCTORAI_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        with serve_archive(medquad_zip()) as server:
            monkeypatch.setenv("DOCTORAI_KB_FETCH_SHA256", "f" * 64)
            get_settings.cache_clear()
            assert kb_main(["fetch", "medquad", "--url", server.url, "--threads", "0"]) == 1  # wrong pin
            assert not (tmp_path / "kb").exists()
            assert (
                kb_main(["fetch", "medquad", "--url", server.url, "--sha256", hashlib.sha256(server.body).hexdigest()])
                == 0
            )
            assert len(server.requests) == 2
            assert kb_main(["fetch", "medquad", "--url", server.url]) == 0  # already there: no download
            assert len(server.requests) == 2
    finally:
        get_settings.cache_clear()
    manifest = json.loads((tmp_path / "kb" / "manifest.json").read_text())
    assert manifest["extra"]["fetched"]["sha256_pinned"] is True
    assert (tmp_path / "corpora" / "medquad.jsonl.gz").exists()
