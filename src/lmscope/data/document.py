"""Document: one labelled text of a corpus, and the normalisation used to de-duplicate texts."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass

SPLITS = ("train", "test")


@dataclass
class Document:
    """One text with one label (a natural or programming language, or the user's own).

    source: where it came from ("man:/usr/share/man/fr/man1/ls.1.gz", "python:/usr/lib/...").
    id: stable within a corpus ("<label>/<12 hex digits of the text's hash>"). split: "train", "test", or
    "" before the corpus is split.
    """

    text: str
    label: str
    source: str
    id: str
    split: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def clean_text(text: str) -> str:
    """Strip trailing spaces, turn tabs and odd line ends into plain ones, keep at most one blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x0c", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def doc_digest(text: str) -> str:
    """sha1 of the text with case and whitespace normalised: equal digests mean duplicate documents."""
    return hashlib.sha1(" ".join(text.lower().split()).encode("utf-8")).hexdigest()
