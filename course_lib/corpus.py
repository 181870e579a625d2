"""The text the bundled GPT-2 was trained on, and how it was split.

The corpus is three dictionaries about computing that Debian ships in the
``dictd`` format (install them with ``apt-get install dict-foldoc dict-jargon
dict-devil``):

========  =========================================  =====================
source    title                                      license
========  =========================================  =====================
foldoc    The Free On-line Dictionary of Computing   GNU FDL 1.1 or later
jargon    The Jargon File 4.4.7                      public domain
devil     The Devil's Dictionary (Ambrose Bierce)    public domain
========  =========================================  =====================

Each dictionary entry becomes one *passage*, its markup removed: a definition
that opens with an article reads as a sentence (``"Cryptography is the practise
and study of encryption ..."``), any other as ``"<headword>: <definition>"``.
Every passage is assigned once and for all to the training split or to the
held-out split by a hash of its source and headword, so the split never depends
on the order of the files or on the machine.

Only ``scripts/train_course_model.py`` and the tests read the dictionaries; the
notebooks use the held-out passages shipped with the package (see
:mod:`course_lib.data`).
"""

from __future__ import annotations

import gzip
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

DICTD_DIR = Path("/usr/share/dictd")
SOURCES: tuple[str, ...] = ("foldoc", "jargon", "devil")
DEBIAN_PACKAGES: dict[str, str] = {
    "foldoc": "dict-foldoc",
    "jargon": "dict-jargon",
    "devil": "dict-devil",
}

#: Share of entries held out, in thousandths (40 -> 4 %).
HELD_OUT_PER_MILLE = 40
#: Entries whose definition is shorter than this are cross-references
#: ("See {foo}.") and carry little language; they are dropped from both splits.
MIN_DEFINITION_CHARS = 40

#: "encryption", "cryptanalysis", "ciphertext", "Cryptographic", ...: about 1 passage in 100.
_CRYPTOGRAPHY_WORD = re.compile(r"crypt|cipher", re.IGNORECASE)

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@dataclass(frozen=True)
class Passage:
    """One dictionary entry turned into plain text."""

    source: str  # "foldoc", "jargon" or "devil"
    headword: str  # the entry's first headword, as the entry spells it
    definition: str  # the entry's definition, markup removed
    text: str  # the passage: headword and definition as one piece of English

    @property
    def held_out(self) -> bool:
        """True when this passage belongs to the held-out (evaluation) split."""
        return is_held_out(self.source, self.headword)

    @property
    def about_cryptography(self) -> bool:
        """True when the passage speaks of cryptography: it names a cipher or something crypt-."""
        return _CRYPTOGRAPHY_WORD.search(self.text) is not None


def is_held_out(source: str, headword: str) -> bool:
    """Decide the split of an entry from a hash of its source and headword."""
    digest = hashlib.sha256(f"{source}\x00{headword}".encode()).hexdigest()
    return int(digest, 16) % 1000 < HELD_OUT_PER_MILLE


def _decode_b64_number(text: str) -> int:
    """dictd indexes store offsets and lengths as base-64 numbers."""
    value = 0
    for char in text:
        value = value * 64 + _B64.index(char)
    return value


def missing_sources(dictd_dir: Path = DICTD_DIR) -> list[str]:
    """Debian packages that must be installed before the corpus can be read."""
    return [
        DEBIAN_PACKAGES[name]
        for name in SOURCES
        if not (dictd_dir / f"{name}.dict.dz").exists() or not (dictd_dir / f"{name}.index").exists()
    ]


_ASCII_PUNCTUATION = str.maketrans({"“": '"', "”": '"', "‘": "'", "’": "'", "–": "-", "—": "-", "·": ""})
_URL_IN_PARENS = re.compile(r"\(\s*(?:https?|ftp|mailto|news|telnet|gopher):[^)\s]*\s*\)")
_BARE_URL = re.compile(r"(?:https?|ftp|gopher|telnet)://\S+")
_CATEGORY_TAG = re.compile(r"<[^<>{}\n]{1,80}>")
_TRAILING_DATE = re.compile(r"\(\d{4}-\d{2}-\d{2}\)\s*$")
_SPACES = re.compile(r"\s+")


def _clean(text: str) -> str:
    """Remove dictd markup and normalise punctuation and white space."""
    text = unicodedata.normalize("NFKC", text).translate(_ASCII_PUNCTUATION)
    text = _URL_IN_PARENS.sub("", text)
    text = _BARE_URL.sub("", text)
    text = _CATEGORY_TAG.sub("", text)
    text = text.replace("{", "").replace("}", "")
    text = _SPACES.sub(" ", text).strip()
    text = _TRAILING_DATE.sub("", text).strip()
    text = text.replace("()", "").replace(" ,", ",").replace(" .", ".")
    return _SPACES.sub(" ", text).strip()


_ARTICLE = re.compile(r"(?:A|An|The) [a-z]")


def _passage_text(headword: str, definition: str) -> str:
    """``"Mouse is a device ..."`` when the definition opens with an article, else ``"mouse: ..."``."""
    if _ARTICLE.match(definition):
        return f"{headword[:1].upper()}{headword[1:]} is {definition[:1].lower()}{definition[1:]}"
    return f"{headword}: {definition}"


def _split_entry(source: str, raw: str) -> tuple[str, str]:
    """Split a raw entry into (definition, headword line) according to the source's layout."""
    lines = raw.strip("\n").split("\n")
    if source == "devil":
        # "BATH, n.  A kind of mystic ceremony ..." : the headword is in the text.
        return "\n".join(lines), lines[0]
    # foldoc and jargon: headword lines start at column 0; jargon then has
    # pronunciation / part-of-speech lines indented by one space; the
    # definition is indented by three (foldoc) or four (jargon) spaces.
    body = [line for line in lines if line.startswith("  ") or not line.strip()]
    return "\n".join(body), lines[0]


def read_passages(dictd_dir: Path = DICTD_DIR) -> list[Passage]:
    """Read the three dictionaries and return every usable entry as a Passage.

    Entries listed under several headwords are read once, under their first
    headword, and a definition that occurs twice is kept once, so the two
    splits can never share a definition. The order is the dictionaries' own.
    """
    missing = missing_sources(dictd_dir)
    if missing:
        raise FileNotFoundError(
            f"The training corpus is not installed in {dictd_dir}: missing {', '.join(missing)}. "
            f"Install it with: apt-get install {' '.join(missing)}"
        )
    passages: list[Passage] = []
    seen_definitions: set[str] = set()
    for source in SOURCES:
        data = gzip.open(dictd_dir / f"{source}.dict.dz").read()
        seen_offsets: set[int] = set()
        for line in (dictd_dir / f"{source}.index").read_text(encoding="utf-8").splitlines():
            headword, offset_b64, length_b64 = line.split("\t")[:3]
            if headword.startswith("00-database") or headword.startswith("00database"):
                continue
            offset = _decode_b64_number(offset_b64)
            if offset in seen_offsets:
                continue
            seen_offsets.add(offset)
            raw = data[offset : offset + _decode_b64_number(length_b64)].decode("utf-8", errors="replace")
            body, first_line = _split_entry(source, raw)
            definition = _clean(body)
            if len(definition) < MIN_DEFINITION_CHARS or definition in seen_definitions:
                continue
            seen_definitions.add(definition)
            # The entry's own first line keeps the headword's capitals ("Glasgow
            # Haskell Compiler"); the index holds it lower-cased.
            name = _clean(first_line.split(",")[0] if source == "devil" else first_line)
            text = definition if source == "devil" else _passage_text(name, definition)
            passages.append(Passage(source=source, headword=name, definition=definition, text=text))
    return passages


def split_passages(passages: list[Passage]) -> tuple[list[Passage], list[Passage]]:
    """Return (training, held_out) passages, keeping the corpus order in each.

    A held-out passage whose definition also appears inside a training passage
    (dictionaries quote each other) is dropped from both splits: the evaluation
    text must be text the model never saw.
    """
    train = [p for p in passages if not p.held_out]
    training_text = "\n".join(p.text for p in train)
    held_out = [p for p in passages if p.held_out and p.definition not in training_text]
    return train, held_out
