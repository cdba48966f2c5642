"""A small archive in the layout of the MedQuAD repository, and a loopback HTTP server for it.

The real archive (``github.com/abachaa/MedQuAD/archive/<commit>.zip``) has one top folder
``MedQuAD-<commit>/`` with ``readme.txt``, ``LICENSE.txt``, the QA test-set zip and 12 collection
folders of XML documents (``<Document id url source>``, ``<Focus>``, ``<QAPairs><QAPair pid>
<Question qid qtype>…<Answer>…``; four NINDS files use lower-case ``<doc>/<pair>``; the three
MedlinePlus subsets 10-12 have empty ``<Answer/>``). This module writes the same shapes from the
test corpus ``KB_RECORDS``; the server sends it, or a broken variant, on 127.0.0.1 only.
"""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from tests.conftest import KB_RECORDS

TOP = "MedQuAD-0123456789abcdef0123456789abcdef01234567"


def document_xml(doc_id: str, source: str, url: str, focus: str, pairs: list[tuple[str, str, str]]) -> str:
    """One ``<Document>`` file: ``pairs`` are (question, qtype, answer)."""
    body = "\n".join(
        f'\t<QAPair pid="{n}">\n\t\t\t<Question qid="{doc_id}-{n}" qtype={quoteattr(qtype)}>{escape(q)}</Question>\n'
        f"\t\t\t<Answer>{escape(a)}</Answer>\n\t</QAPair>"
        for n, (q, qtype, a) in enumerate(pairs, 1)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Document id={quoteattr(doc_id)} source={quoteattr(source)} url={quoteattr(url)}>\n"
        f"<Focus>{escape(focus)}</Focus>\n<FocusAnnotations>\n\t<UMLS>\n\t\t<CUIs>\n\t\t\t<CUI>C0000001</CUI>\n"
        "\t\t</CUIs>\n\t\t<SemanticGroup>Disorders</SemanticGroup>\n\t</UMLS>\n</FocusAnnotations>\n"
        f"<QAPairs>\n{body}\n</QAPairs>\n</Document>\n"
    )


def medquad_members() -> dict[str, bytes]:
    """Archive member name -> bytes: the test corpus spread over three collections, an NINDS file
    in the lower-case layout, answerless ADAM and drug files, a duplicate pair and non-QA files."""
    files: dict[str, bytes] = {
        f"{TOP}/readme.txt": b"MedQuAD test copy. CC BY 4.0.\n",
        f"{TOP}/LICENSE.txt": b"Creative Commons Attribution 4.0 International Public License\n",
        f"{TOP}/QA-TestSet-LiveQA-Med-Qrels-2479-Answers.zip": b"PK\x05\x06" + b"\0" * 18,
    }
    collections = ["1_CancerGov_QA", "2_GARD_QA", "3_GHR_QA"]
    for i, rec in enumerate(KB_RECORDS):
        collection = collections[i % len(collections)]
        # GARD-style text: the answer keeps its line breaks and indentation, flattened on read.
        answer = rec["answer"].replace(". ", ".\n                    ", 1)
        xml = document_xml(
            f"{i:07d}", collection.split("_")[1], rec["url"], rec["focus"], [(rec["question"], "information", answer)]
        )
        files[f"{TOP}/{collection}/{i:07d}_1.xml"] = xml.encode()
    # The same pair twice in one file: the second is an exact duplicate and is dropped.
    dup = (
        "How is Glaucoma detected ?",
        "exams and tests",
        "Glaucoma is detected through a comprehensive dilated eye exam.",
    )
    files[f"{TOP}/5_NIDDK_QA/0000100.xml"] = document_xml(
        "0000100", "NIDDK", "https://example.org/niddk", "Glaucoma", [dup, dup]
    ).encode()
    files[f"{TOP}/6_NINDS_QA/0000200.xml"] = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<doc id="0000200" source="NINDS" url="https://example.org/ninds-aphasia">\n'
        b'<Focus>Aphasia</Focus>\n<qapairs>\n<pair pid="1">\n'
        b'<Question qid="0000200-1" qtype="information">What is (are) Aphasia ?</Question>\n'
        b"<Answer>Aphasia is a neurological disorder caused by damage to the parts of the brain that "
        b"are responsible for language production or processing.</Answer>\n</pair>\n</qapairs>\n</doc>\n"
    )
    for subset, stem in (("10_MPlus_ADAM_QA", "0000001"), ("11_MPlusDrugs_QA", "0000002")):
        files[f"{TOP}/{subset}/{stem}.xml"] = document_xml(
            stem, "ADAM", f"https://example.org/{stem}", "Removed", [("What is (are) Removed ?", "information", "")]
        ).encode()
    return files


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def medquad_zip() -> bytes:
    return zip_bytes(medquad_members())


# Records the archive yields: every KB_RECORDS entry, the NIDDK pair once, the NINDS pair.
EXPECTED_KEPT = len(KB_RECORDS) + 2


@dataclass
class ArchiveServer:
    """What the loopback server sends; change the fields between requests."""

    body: bytes
    status: int = 200
    truncate_to: int | None = None  # send only this many bytes of a body announced in full
    delay_s: float = 0.0  # a slow network: wait this long before answering
    requests: list[str] = field(default_factory=list)
    url: str = ""


@contextmanager
def serve_archive(body: bytes) -> Iterator[ArchiveServer]:
    """A real HTTP server on 127.0.0.1 (random port) answering every GET with ``state.body``."""
    state = ArchiveServer(body)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            time.sleep(state.delay_s)
            data = state.body
            self.send_response(state.status)
            self.send_header("Content-Type", "application/zip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data if state.truncate_to is None else data[: state.truncate_to])
            self.wfile.flush()
            if state.truncate_to is not None:
                self.close_connection = True

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/abachaa/MedQuAD/archive/test.zip"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
