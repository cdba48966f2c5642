"""Retrieval benchmark for the chat knowledge base on paraphrased MedQuAD questions.

Takes ``--n`` MedQuAD questions (fixed ``--seed``; records without a focus are skipped),
rewrites each into a paraphrase that shares at most half of its content words, and reports:

* the word overlap actually achieved (content words = the BM25 terms: lower-cased word tokens,
  hyphenated names split, stop words removed, plurals/-ing/-ed stemmed; every paraphrase is
  checked to share <= 50 % of the original's terms);
* top-1 / top-5 hit rate: does a top-ranked passage come from a document with the original
  answer's focus (hybrid, and BM25-only / dense-only for comparison);
* p50 / p95 latency of a complete answer without a generator (retrieval + sentence trimming +
  formatting, what ``POST /api/chat`` computes) on this machine's CPU;
* how often the "no good match" threshold fires on paraphrases and on off-topic questions.

Paraphrase rules (all deterministic given the seed): the question template is replaced by a
reworded one with no shared content word (the topic may move to the front: reordering);
"What is (are) X" loses its "what is"; words of the topic are swapped for synonyms, lay terms
or British spellings from the tables below; if more than half of the original terms are still
present, the most common of them (by corpus document frequency) are dropped until at most half
remain. Nothing is looked up in the corpus's own ``synonyms`` field.

    python bench/bench_retrieval.py --source ../shared/datasets/medquad/medquad.jsonl.gz \\
        [--kb-dir /tmp/kb] [--n 300] [--seed 13] [--threads 1]

``--threads`` defaults to the server's setting (DOCTORAI_TORCH_THREADS, 1); ``--threads 0``
leaves torch's default, which on a busy 2-core machine was 15x slower (p95 972 ms).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inference.kb import analyze

log = logging.getLogger("bench")

# (question pattern, reworded templates); {x} is the topic. No template shares a content
# word with the pattern it replaces.
TEMPLATES: list[tuple[str, list[str]]] = [
    (r"what is \(are\) (?P<x>.+?)", ["Could you explain {x} to me", "Give me an overview of {x}", "{x}: the basics"]),
    (r"do you have information about (?P<x>.+?)", ["Could you explain {x} to me", "I'd like to learn about {x}"]),
    (r"what are the symptoms of (?P<x>.+?)", ["How does {x} show itself", "Which signs point to {x}"]),
    (r"what are the treatments for (?P<x>.+?)", ["How do doctors manage {x}", "{x}: which therapies help"]),
    (r"is (?P<x>.+?) inherited", ["Can {x} be passed down in families", "Does {x} run in families"]),
    (r"how many people are affected by (?P<x>.+?)", ["How common is {x}", "{x}: how widespread is it"]),
    (
        r"what are the genetic changes related to (?P<x>.+?)",
        ["Which gene mutations lie behind {x}", "DNA variants behind {x}"],
    ),
    (r"what causes (?P<x>.+?)", ["Why do people develop {x}", "{x}: where does it come from"]),
    (r"how to diagnose (?P<x>.+?)", ["Which tests detect {x}", "How do doctors find out someone has {x}"]),
    (
        r"what research (?:\(or clinical trials\) )?is being done for (?P<x>.+?)",
        ["Which studies are under way on {x}", "Are scientists investigating new approaches to {x}"],
    ),
    (r"what is the outlook for (?P<x>.+?)", ["What prognosis can someone with {x} expect", "{x}: long-term prospects"]),
    (r"what is the prognosis for (?P<x>.+?)", ["What can someone with {x} expect long term", "{x}: future prospects"]),
    (r"who is at risk for (?P<x>.+?)", ["Which people are more likely to get {x}", "Who tends to develop {x}"]),
    (r"what to do for (?P<x>.+?)", ["How should someone cope with {x}", "Self-care tips for {x}"]),
    (r"how to prevent (?P<x>.+?)", ["Ways to avoid {x}", "Can {x} be avoided"]),
    (r"what are the stages of (?P<x>.+?)", ["How is {x} staged", "Which phases does {x} go through"]),
    (
        r"what are the complications of (?P<x>.+?)",
        ["Which problems can {x} lead to", "{x}: possible knock-on problems"],
    ),
    (r"is there any treatment for (?P<x>.+?)", ["Can {x} be cured or managed", "{x}: therapy options"]),
]

# Phrases first (longest match wins), then single words. Lay terms, clinical synonyms, British spellings.
PHRASES = {
    "high blood pressure": "hypertension",
    "heart attack": "myocardial infarction",
    "heart failure": "cardiac insufficiency",
    "urinary tract infection": "bladder infection",
    "intellectual disability": "cognitive impairment",
    "hearing loss": "deafness",
    "vision loss": "sight impairment",
    "short stature": "dwarfism",
    "kidney stones": "renal calculi",
    "kidney disease": "renal illness",
    "kidney failure": "renal insufficiency",
    "breast cancer": "mammary carcinoma",
    "lung cancer": "pulmonary carcinoma",
    "skin cancer": "cutaneous malignancy",
    "brain tumor": "cerebral tumour",
    "brain tumors": "cerebral tumours",
    "blood clots": "thrombi",
    "sleep apnea": "sleep-disordered breathing",
    "multiple sclerosis": "MS",
    "cerebral palsy": "CP",
    "muscular dystrophy": "muscle-wasting disorder",
    "spinal cord injury": "spine trauma",
    "low blood sugar": "hypoglycaemia",
    "chronic kidney disease": "long-term renal illness",
}
WORDS = {
    "syndrome": "disorder",
    "syndromes": "disorders",
    "disease": "illness",
    "diseases": "illnesses",
    "disorder": "condition",
    "disorders": "conditions",
    "cancer": "malignancy",
    "cancers": "malignancies",
    "tumor": "tumour",
    "tumors": "tumours",
    "tumour": "growth",
    "carcinoma": "malignant tumour",
    "leukemia": "leukaemia",
    "leukemias": "leukaemias",
    "anemia": "anaemia",
    "hemophilia": "haemophilia",
    "edema": "oedema",
    "esophageal": "oesophageal",
    "esophagus": "oesophagus",
    "pediatric": "paediatric",
    "hemorrhage": "haemorrhage",
    "hemorrhagic": "haemorrhagic",
    "hemolytic": "haemolytic",
    "hematuria": "haematuria",
    "estrogen": "oestrogen",
    "hypoglycemia": "hypoglycaemia",
    "hyperglycemia": "hyperglycaemia",
    "childhood": "paediatric",
    "children": "kids",
    "child": "kid",
    "adult": "grown-up",
    "adults": "grown-ups",
    "infant": "baby",
    "infants": "babies",
    "neonatal": "newborn",
    "acute": "sudden-onset",
    "chronic": "long-lasting",
    "congenital": "inborn",
    "hereditary": "inherited",
    "familial": "inherited",
    "type": "form",
    "deficiency": "shortage",
    "infection": "infectious illness",
    "infections": "infectious illnesses",
    "kidney": "renal",
    "renal": "kidney",
    "heart": "cardiac",
    "cardiac": "heart",
    "lung": "pulmonary",
    "lungs": "pulmonary",
    "pulmonary": "lung",
    "liver": "hepatic",
    "hepatic": "liver",
    "brain": "cerebral",
    "cerebral": "brain",
    "skin": "cutaneous",
    "cutaneous": "skin",
    "eye": "ocular",
    "eyes": "ocular",
    "ocular": "eye",
    "muscle": "muscular",
    "muscular": "muscle",
    "stomach": "gastric",
    "gastric": "stomach",
    "bowel": "intestinal",
    "intestinal": "bowel",
    "breast": "mammary",
    "bone": "skeletal",
    "bones": "skeletal",
    "nerve": "neural",
    "nerves": "neural",
    "spinal": "spine",
    "dental": "tooth",
    "teeth": "dental",
    "hypertension": "high blood pressure",
    "diabetes": "high blood sugar",
    "obesity": "excess weight",
    "stroke": "brain attack",
    "deafness": "hearing loss",
    "blindness": "sight loss",
    "palsy": "paralysis",
    "paralysis": "palsy",
    "seizures": "fits",
    "seizure": "fit",
    "epilepsy": "seizure disorder",
    "malformation": "abnormality",
    "malformations": "abnormalities",
    "dysplasia": "abnormal development",
    "dystrophy": "degeneration",
    "atrophy": "wasting",
    "insufficiency": "failure",
    "failure": "insufficiency",
    "inflammation": "swelling",
    "cyst": "fluid-filled sac",
    "cysts": "fluid-filled sacs",
    "cystic": "sac-forming",
    "ulcer": "sore",
    "ulcers": "sores",
    "stones": "calculi",
    "pain": "ache",
    "headache": "head pain",
    "headaches": "head pains",
    "fever": "high temperature",
    "bleeding": "haemorrhaging",
    "poisoning": "toxicity",
    "injury": "trauma",
    "injuries": "trauma",
    "fracture": "break",
    "fractures": "breaks",
    "arthritis": "joint inflammation",
    "osteoporosis": "brittle bones",
    "thrombocytopenia": "low platelet count",
    "neutropenia": "low neutrophil count",
    "hypothyroidism": "underactive thyroid",
    "hyperthyroidism": "overactive thyroid",
    "insomnia": "sleeplessness",
    "pneumonia": "lung infection",
    "influenza": "flu",
    "flu": "influenza",
    "shingles": "herpes zoster",
    "chickenpox": "varicella",
    "measles": "rubeola",
    "hives": "urticaria",
    "immune": "immunological",
    "immunodeficiency": "weakened immunity",
    "lymphoma": "lymphatic cancer",
    "melanoma": "pigment-cell skin cancer",
    "dementia": "cognitive decline",
    "depression": "low mood disorder",
    "anxiety": "nervousness",
    "incontinence": "leakage",
    "constipation": "hard stools",
    "diarrhea": "diarrhoea",
    "vomiting": "throwing up",
    "nausea": "queasiness",
    "itching": "pruritus",
    "rash": "skin eruption",
    "bites": "stings",
    "allergy": "hypersensitivity",
    "allergies": "hypersensitivities",
    "allergic": "hypersensitive",
    "mental": "psychological",
    "sleep": "slumber",
    "benign": "non-cancerous",
    "malignant": "cancerous",
    "primary": "first-occurring",
    "progressive": "worsening",
    "recurrent": "returning",
    "severe": "serious",
    "early-onset": "young-onset",
    "late-onset": "adult-onset",
    "x-linked": "X-chromosome-borne",
    "autosomal": "non-sex-chromosome",
    "dominant": "single-copy",
    "recessive": "two-copy",
    "neuropathy": "nerve damage",
    "myopathy": "muscle disease",
    "nephropathy": "kidney damage",
    "cardiomyopathy": "heart-muscle disease",
    "encephalopathy": "brain disease",
    "retinopathy": "retina damage",
    "hypercholesterolemia": "high cholesterol",
    "gastroenteritis": "stomach flu",
    "paresthesia": "pins and needles",
    "cataract": "clouded lens",
    "cataracts": "clouded lenses",
    "hydrocephalus": "water on the brain",
    "migraine": "severe recurring headache",
    "laryngeal": "voice-box",
    "nasal": "nose",
    "cleft": "split",
    "pregnancy": "expecting a baby",
    "seniors": "older people",
    "males": "men",
    "females": "women",
    "1": "I",
    "2": "II",
    "3": "III",
    "4": "IV",
    "5": "V",
    "ii": "2",
    "iii": "3",
    "iv": "4",
}

OFF_TOPIC = [
    "How do I bake sourdough bread at home?",
    "Who won the football world cup in 2018?",
    "What is the best JavaScript framework for a web shop?",
    "How do I change the oil in my car?",
    "Recommend a good science fiction novel",
    "What time zone is Tokyo in?",
    "How can I improve my chess openings?",
    "What is the capital of Australia?",
    "How do I set up a Kubernetes cluster?",
    "Write a poem about autumn leaves",
    "How much does a flight to Paris cost?",
    "Which guitar strings sound brightest?",
    "How do I fix a leaking kitchen tap?",
    "What is the plot of Hamlet?",
    "How do I train my puppy to sit?",
    "What is quantum entanglement?",
    "How do I file my tax return?",
    "Best way to learn Spanish vocabulary",
    "How do solar panels generate electricity?",
    "What are the rules of cricket?",
]


@dataclass
class Row:
    rec: dict[str, Any]
    para: str
    rules: list[str]
    overlap: float
    ranks: dict[str, int] = field(default_factory=dict)  # retriever -> rank of the first hit (0 = none)


def terms(text: str) -> set[str]:
    return set(analyze(text))


def overlap(original: str, paraphrase: str) -> float:
    o = terms(original)
    return len(o & terms(paraphrase)) / len(o) if o else 0.0


def _swap(text: str, forbidden: set[str], rules: list[str]) -> str:
    """Apply phrase then word synonyms whose replacement brings in none of the original terms."""
    for phrase in sorted(PHRASES, key=len, reverse=True):
        alt = PHRASES[phrase]
        pattern = re.compile(rf"\b{re.escape(phrase)}\b", re.IGNORECASE)
        if pattern.search(text) and not (terms(alt) & forbidden):
            text = pattern.sub(alt, text)
            rules.append("phrase")
    out = []
    for word in text.split():
        core = word.strip(",.;:()?").lower()
        key = core.removesuffix("'s").removesuffix("’s")
        swap = WORDS.get(key)
        if swap and not (terms(swap) & forbidden):
            out.append(swap)
            rules.append("synonym" if not _is_spelling(key, swap) else "spelling")
        else:
            out.append(word.strip("()"))
    return " ".join(out)


def _is_spelling(a: str, b: str) -> bool:
    return a.replace("e", "") == b.replace("ae", "").replace("oe", "").replace("e", "").replace("u", "")


def _drop_term(text: str, term: str) -> str:
    """Remove the word, or the part of a compound word ("Tay-Sachs", "22q11.2"), whose term is ``term``."""
    words = text.split()
    for w, word in enumerate(words):
        parts = re.split(r"(\W+)", word)
        for k, part in enumerate(parts):
            if terms(part) == {term}:
                parts[k] = ""
                rest = re.sub(r"^[-./]+|[-./]+$", "", "".join(parts).replace("--", "-"))
                if rest and not re.search(r"\w", rest) and w > 0:  # only punctuation left: keep it
                    words[w - 1] += rest
                    rest = ""
                words[w] = rest
                return " ".join(x for x in words if x)
    for w, word in enumerate(words):  # the term spans the whole word oddly: drop the word
        if term in terms(word):
            words[w] = ""
            return " ".join(x for x in words if x)
    raise ValueError(f"cannot drop {term!r} from {text!r}")


def paraphrase(question: str, rng: random.Random, df: dict[str, int]) -> tuple[str, list[str]]:
    """A paraphrase of ``question`` sharing at most half its content terms, and the rules used."""
    rules: list[str] = []
    q = re.sub(r"\s*\?[\s?]*$", "", question.strip())
    original = terms(question)
    topic: str = q
    template = "{x}"
    for pattern, options in TEMPLATES:
        m = re.fullmatch(pattern, q, flags=re.IGNORECASE)
        if m:
            topic, template = m.group("x"), rng.choice(options)
            rules.append("template")
            if template.startswith("{x}"):
                rules.append("reorder")
            break
    topic = _swap(topic, original, rules)
    text = template.format(x=topic)
    while overlap(question, text) > 0.5:
        shared = sorted(original & terms(text), key=lambda t: (-df.get(t, 0), t))
        text = _drop_term(text, shared[0])
        rules.append("drop")
    return text[:1].upper() + text[1:] + "?", rules


def load_records(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--source", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/medquad/medquad.jsonl.gz"
    )
    ap.add_argument(
        "--kb-dir", type=Path, help="index folder (default: DOCTORAI_DATA_DIR/kb); built if missing or stale"
    )
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument(
        "--threads", type=int, help="torch CPU threads (default DOCTORAI_TORCH_THREADS, 1, as the server; 0 = torch's)"
    )
    ap.add_argument("--show", type=int, default=12, help="print this many example paraphrases")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("bm25s").setLevel(logging.WARNING)

    import torch

    from inference.backends.chat import RetrievalChatModel, parse_options
    from inference.kb import KnowledgeBase, ensure_index, resolve_kb_dir
    from inference.registry import Registry
    from settings import get_settings

    settings = get_settings()
    threads = settings.torch_threads if args.threads is None else args.threads
    if threads:
        torch.set_num_threads(threads)
    spec = Registry.from_yaml(settings.registry_file)["chat"]
    options = parse_options(spec)
    kb_dir = args.kb_dir or resolve_kb_dir(settings.kb_dir, settings.data_dir, options.kb_dir)
    status = ensure_index(kb_dir, args.source)
    log.info("index %s: %s", kb_dir, status.detail)
    kb = KnowledgeBase.load(kb_dir)
    model = RetrievalChatModel(spec, options, kb)
    model.warm_up()

    records = [r for r in load_records(args.source) if r.get("focus") and r.get("question")]
    sample = random.Random(args.seed).sample(records, args.n)
    rng = random.Random(args.seed + 1)
    rows = []
    for r in sample:
        para, rules = paraphrase(r["question"], rng, kb.df)
        rows.append(Row(r, para, rules, overlap(r["question"], para)))

    def norm(focus: str) -> str:
        return re.sub(r"\W+", " ", focus.lower()).strip()

    hits: dict[str, list[int]] = {"hybrid": [], "bm25": [], "dense": []}
    latencies: list[float] = []
    matched = 0
    for row in rows:
        want = norm(row.rec["focus"])
        t0 = time.perf_counter()
        answer = model.answer(row.para, language="en")
        latencies.append((time.perf_counter() - t0) * 1e3)
        matched += answer.matched
        for mode in hits:
            found = kb.search(row.para, k=5, mode=mode, candidates=options.candidates, rrf_k=options.rrf_k)  # type: ignore[arg-type]
            ranks = [i for i, h in enumerate(found) if norm(h.passage.title) == want]
            hits[mode].append(ranks[0] + 1 if ranks else 0)
    refused = sum(not model.answer(q, language="en").matched for q in OFF_TOPIC)

    n = len(rows)
    ov = [row.overlap for row in rows]
    emptied = sum(1 for row in rows if not terms(row.para))
    rule_counts: dict[str, int] = {}
    for row in rows:
        for rule in set(row.rules):
            rule_counts[rule] = rule_counts.get(rule, 0) + 1

    print(
        f"\nMedQuAD paraphrase retrieval: n={n} (seed {args.seed}), {kb.manifest.passages:,} passages, "
        f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs"
    )
    print(
        f"content-word overlap with the original: mean {statistics.mean(ov):.1%}, median {statistics.median(ov):.1%}, "
        f"max {max(ov):.1%} (limit 50%); paraphrases left with no content word: {emptied}"
    )
    print("rules used (queries): " + ", ".join(f"{k} {v}" for k, v in sorted(rule_counts.items())))
    print(f"\n{'retriever':<10} {'top-1':>7} {'top-5':>7}")
    for mode, ranks in hits.items():
        top1 = sum(1 for x in ranks if x == 1) / n
        top5 = sum(1 for x in ranks if x >= 1) / n
        print(f"{mode:<10} {top1:>7.1%} {top5:>7.1%}")
    print(
        f"\nanswer latency without generator: p50 {pct(latencies, 50):.1f} ms, p95 {pct(latencies, 95):.1f} ms, "
        f"max {max(latencies):.1f} ms"
    )
    print(
        f"answered (best cosine >= {options.min_score}): {matched}/{n} paraphrases; "
        f"'no good match' on {refused}/{len(OFF_TOPIC)} off-topic questions"
    )
    print("\nexamples:")
    for row in rows[: args.show]:
        print(f"  {row.overlap:.0%}  {row.rec['question']!r}\n       -> {row.para!r}")
    top5 = sum(1 for x in hits["hybrid"] if x >= 1) / n
    p95 = pct(latencies, 95)
    print(
        f"\nfloors: top-5 >= 85% {'PASS' if top5 >= 0.85 else 'FAIL'} ({top5:.1%}); "
        f"p95 <= 300 ms {'PASS' if p95 <= 300 else 'FAIL'} ({p95:.0f} ms)"
    )


if __name__ == "__main__":
    main()
