"""Where corpus text comes from: local man pages and source code, users' files, Hugging Face datasets.

A :class:`Source` yields unsplit :class:`~lmscope.data.corpus.Document` s for one or more labels, in a seeded
random order so that taking the first N gives a spread sample. Built-in sources read what Debian and Python
ship (no network); each knows the Debian packages that provide it, so a missing one can say how to install it.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .document import Document, clean_text, doc_digest

MAN_ROOTS = ("/usr/share/man", "/usr/local/share/man")
# label -> (man folder language codes, Debian packages). English pages live in man1..man9 directly.
MAN_LANGUAGES = {
    "english": ((), ("manpages", "manpages-dev")),
    "french": (("fr",), ("manpages-fr", "manpages-fr-dev")),
    "german": (("de",), ("manpages-de", "manpages-de-dev")),
    "spanish": (("es",), ("manpages-es", "manpages-es-dev")),
    "italian": (("it",), ("manpages-it", "manpages-it-dev")),
    "dutch": (("nl",), ("manpages-nl", "manpages-nl-dev")),
    "polish": (("pl",), ("manpages-pl", "manpages-pl-dev")),
    "russian": (("ru",), ("manpages-ru", "manpages-ru-dev")),
    "portuguese": (("pt", "pt_BR"), ("manpages-pt-br", "manpages-pt-br-dev")),
}
CODE_LANGUAGES = ("python", "c", "perl", "shell", "javascript")
# groff options: a very long line (paragraphs come out as one line each), no hyphenation, ragged right,
# and no overstrike bold/underline, so the output is plain text. -k -K runs preconv for UTF-8 input.
_GROFF = ["groff", "-k", "-Kutf-8", "-t", "-Tutf8", "-man", "-rLL=2000n", "-rHY=0", "-dAD=l", "-P-cbou"]
_SHELL_SHEBANG = re.compile(rb"^#!\s*/(usr/)?bin/(env\s+)?(ba|da|k|z)?sh\b")


@dataclass
class Source:
    """One origin of documents.

    name: shown in manifests ("man/french", "python-stdlib", "text:/path").
    labels: the labels it yields; empty when the labels come from the data (JSONL, a dataset).
    read: read(max_chars=..., seed=..., workers=...) -> iterator of Documents (split "").
    missing: why it cannot be used here ("" = available); packages: the Debian packages that provide it.
    """

    name: str
    labels: tuple[str, ...]
    read: Callable[..., Iterator[Document]]
    missing: str = ""
    packages: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return not self.missing

    @property
    def install(self) -> str:
        """The command that makes a missing source available ("" when there is none to run)."""
        return apt_command(self.packages) if self.missing and self.packages else ""


def apt_command(packages: Iterable[str]) -> str:
    return "sudo apt-get install -y " + " ".join(packages)


def _truncate(text: str, max_chars: int | None) -> str:
    """Cut at the last line break before max_chars (at max_chars when a single line is longer)."""
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = text.rfind("\n", 0, max_chars + 1)
    return text[: cut if cut > max_chars // 2 else max_chars].rstrip()


def _document(text: str, label: str, source: str) -> Document:
    return Document(text=text, label=label, source=source, id=f"{label}/{doc_digest(text)[:12]}")


def _shuffled(paths: Iterable[Path], seed: int) -> list[Path]:
    paths = sorted(set(paths))
    random.Random(seed).shuffle(paths)
    return paths


def _files(roots: Iterable[str | os.PathLike], match: Callable[[str], bool]) -> list[Path]:
    """Regular files (no symlinks: they duplicate their target) under `roots` whose name matches."""
    found = []
    for root in roots:
        for folder, _, names in os.walk(root):
            found += [Path(folder, n) for n in names if match(n) and not os.path.islink(Path(folder, n))]
    return found


def _parallel(paths: list[Path], fn: Callable[[Path], str | None], workers: int) -> Iterator[str | None]:
    """fn over paths in order, `workers` at a time, computing at most a few ahead of the consumer."""
    if workers <= 1:
        yield from map(fn, paths)
        return
    with ThreadPoolExecutor(workers) as pool:
        chunk = 4 * workers
        for i in range(0, len(paths), chunk):
            yield from pool.map(fn, paths[i : i + chunk])


# ---- man pages ------------------------------------------------------------------------------------------
def _man_files(roots: Iterable[str | os.PathLike], codes: tuple[str, ...]) -> list[Path]:
    """Page files of one language: man{1-9}* under each root (English) or under root/<code>[._]*/."""
    folders = []
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if not codes and re.fullmatch(r"man\d\w*", child.name):
                folders.append(child)
            elif codes and any(re.fullmatch(rf"{re.escape(c)}([._@].*)?", child.name) for c in codes):
                folders += [d for d in sorted(child.iterdir()) if re.fullmatch(r"man\d\w*", d.name)]
    return _files(folders, lambda n: bool(re.search(r"\.\d\w*(\.gz)?$", n)))


def render_man_page(path: str | os.PathLike, max_chars: int | None = None) -> str | None:
    """A man page file (.gz or plain roff) as plain text; None for a `.so` redirect or a failed render.

    Each paragraph comes out as one line (no hyphenation, no justification, no indentation); the running
    header and footer lines are dropped.
    """
    raw = Path(path).read_bytes()
    if str(path).endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            return None
    if raw.lstrip().startswith(b".so ") and raw.count(b"\n") <= 2:
        return None  # a redirect to another page, which is sampled on its own
    env = {**os.environ, "LC_ALL": "C.UTF-8", "GROFF_NO_SGR": "1"}
    try:
        run = subprocess.run(_GROFF, input=raw, capture_output=True, env=env, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    if run.returncode != 0:
        return None
    text = re.sub(r".\x08", "", run.stdout.decode("utf-8", "replace"))  # any overstrike left
    lines = [re.sub(r"[ \t]{2,}", " ", line.strip()) for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return _truncate(clean_text("\n".join(lines[1:-1])), max_chars)  # drop header and footer


def man_pages(label: str, roots: Iterable[str | os.PathLike] = MAN_ROOTS) -> Source:
    """Man pages of one natural language (a key of MAN_LANGUAGES), rendered with groff."""
    if label not in MAN_LANGUAGES:
        raise ValueError(f"no man pages known for {label!r}; known: {', '.join(MAN_LANGUAGES)}")
    codes, packages = MAN_LANGUAGES[label]
    roots = [str(r) for r in roots]
    where = " or ".join(f"{r}/{codes[0]}*" if codes else f"{r}/man*" for r in roots)
    files = _man_files(roots, codes)
    missing = ""
    if shutil.which("groff") is None:
        missing, packages = "groff is not installed (it renders man pages)", ("groff-base", *packages)
    elif not files:
        missing = f"no man pages under {where}"

    def read(max_chars: int | None = None, seed: int = 0, workers: int = 2) -> Iterator[Document]:
        paths = _shuffled(files, seed)
        for path, text in zip(paths, _parallel(paths, lambda p: render_man_page(p, max_chars), workers)):
            if text:
                yield _document(text, label, f"man:{path}")

    return Source(f"man/{label}", (label,), read, missing, packages)


# ---- source code ----------------------------------------------------------------------------------------
def _read_code(path: Path, max_chars: int | None, strip_pod: bool = False) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if b"\0" in raw[:4096]:
        return None  # binary
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if strip_pod:  # Perl's embedded documentation is English prose, not Perl
        text = re.sub(r"(?ms)^=[a-zA-Z]\w*.*?(^=cut\b[^\n]*\n?|\Z)", "", text)
    lines = text.splitlines()
    if lines and max(map(len, lines)) > 1000:
        return None  # minified or generated
    return _truncate(clean_text(text), max_chars)


def _is_shell_script(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return bool(_SHELL_SHEBANG.match(f.read(64)))
    except OSError:
        return False


# label -> (default roots, file-name test, Debian packages, description)
_CODE = {
    "python": ([sysconfig.get_paths()["stdlib"]], lambda n: n.endswith(".py"), ("python3",), "Python stdlib"),
    "c": (["/usr/include"], lambda n: n.endswith(".h"), ("libc6-dev",), "C headers"),
    "perl": (
        ["/usr/share/perl*", "/usr/lib/*/perl*"],
        lambda n: n.endswith(".pm"),
        ("perl",),
        "Perl modules",
    ),
    "shell": (
        ["/usr/lib", "/usr/libexec", "/usr/share", "/etc"],
        lambda n: n.endswith(".sh"),
        ("bash",),
        "shell scripts",
    ),
    "javascript": (
        ["/usr/lib/node_modules", "/usr/local/lib/node_modules", "/usr/share/nodejs"],
        lambda n: n.endswith(".js") and not n.endswith(".min.js"),
        ("nodejs", "npm"),
        "JavaScript from npm packages",
    ),
}
# Scripts without a .sh name are found by their #! line, only in these folders (reading the first bytes of
# every file under /usr would take long).
_SCRIPT_FOLDERS = ("/usr/bin", "/usr/sbin", "/etc/init.d")


def code_files(label: str, roots: Iterable[str | os.PathLike] | None = None) -> Source:
    """Source files of one programming language (a key of CODE_LANGUAGES) from their usual local places.

    roots: folders to search instead of the usual ones (globs allowed). Python skips site-packages, Perl
    modules lose their POD documentation, minified JavaScript is skipped.
    """
    if label not in _CODE:
        raise ValueError(f"no code source known for {label!r}; known: {', '.join(_CODE)}")
    default_roots, match_name, packages, description = _CODE[label]
    patterns = [str(r) for r in (default_roots if roots is None else roots)]
    folders = sorted({f for pat in patterns for f in glob.glob(pat) if os.path.isdir(f)})

    files = [p for p in _files(folders, match_name) if "-packages" not in str(p)]
    if label == "shell":
        scripts = _files([f for f in _SCRIPT_FOLDERS if roots is None and os.path.isdir(f)], lambda n: True)
        files += [p for p in scripts if p.suffix != ".sh" and _is_shell_script(p)]

    def read(max_chars: int | None = None, seed: int = 0, workers: int = 1) -> Iterator[Document]:
        for path in _shuffled(files, seed):
            text = _read_code(path, max_chars, strip_pod=label == "perl")
            if text:
                yield _document(text, label, f"{label}:{path}")

    missing = "" if files else f"no {description} under {', '.join(patterns)}"
    return Source(f"code/{label}", (label,), read, missing, packages)


def builtin_sources(
    labels: Iterable[str] | None = None, man_roots: Iterable[str | os.PathLike] = MAN_ROOTS
) -> list[Source]:
    """The built-in sources of `labels` (None = all): man pages per natural language, code per language."""
    known = [*MAN_LANGUAGES, *CODE_LANGUAGES]
    wanted = known if labels is None else list(labels)
    unknown = [label for label in wanted if label not in known]
    if unknown:
        raise ValueError(f"no built-in source for {unknown}; built-in labels: {', '.join(known)}")
    return [man_pages(label, man_roots) if label in MAN_LANGUAGES else code_files(label) for label in wanted]


# ---- users' own text ------------------------------------------------------------------------------------
def text_files(folder: str | os.PathLike, label: str, pattern: str = "*.txt") -> Source:
    """Every file matching `pattern` under `folder` (recursively), one document each, all with `label`."""
    folder = Path(folder)
    paths = sorted(folder.rglob(pattern)) if folder.is_dir() else []
    missing = "" if paths else f"no files matching {pattern!r} under {folder}"

    def read(max_chars: int | None = None, seed: int = 0, workers: int = 1) -> Iterator[Document]:
        for path in _shuffled(paths, seed):
            text = _truncate(clean_text(path.read_text(encoding="utf-8", errors="replace")), max_chars)
            if text:
                yield _document(text, label, f"file:{path}")

    return Source(f"text:{folder}", (label,), read, missing)


def jsonl_file(
    path: str | os.PathLike, text_field: str = "text", label_field: str = "label", label: str | None = None
) -> Source:
    """A JSON-lines file of {"text": ..., "label": ...} records (`label` overrides every record's label)."""
    path = Path(path)
    missing = "" if path.is_file() else f"no file at {path}"

    def read(max_chars: int | None = None, seed: int = 0, workers: int = 1) -> Iterator[Document]:
        with path.open(encoding="utf-8") as f:
            records = [(i, line) for i, line in enumerate(f, 1) if line.strip()]
        random.Random(seed).shuffle(records)
        for lineno, line in records:
            rec = json.loads(line)
            if (
                not isinstance(rec, dict)
                or text_field not in rec
                or (label is None and label_field not in rec)
            ):
                want = f'"{text_field}"' + ("" if label else f' and "{label_field}"')
                raise ValueError(f"{path}:{lineno}: expected a JSON object with {want}, got {line[:80]!r}")
            text = _truncate(clean_text(str(rec[text_field])), max_chars)
            if text:
                yield _document(text, str(label or rec[label_field]), f"jsonl:{path}:{lineno}")

    return Source(f"jsonl:{path}", (label,) if label else (), read, missing)


def hf_dataset(
    name: str,
    label: str | None = None,
    label_field: str | None = None,
    text_field: str = "text",
    split: str = "train",
    config: str | None = None,
    max_docs: int | None = 10_000,
) -> Source:
    """A Hugging Face dataset (needs `pip install datasets` and a network), streamed.

    Give `label` (one label for every record) or `label_field` (a column holding it; class-label ids are
    turned into their names). Reads at most `max_docs` records; the order is the dataset's own.
    """
    if (label is None) == (label_field is None):
        raise ValueError("give exactly one of label='...' (same for every record) or label_field='column'")

    def read(max_chars: int | None = None, seed: int = 0, workers: int = 1) -> Iterator[Document]:
        try:
            import datasets
        except ImportError as err:
            raise ImportError("hf_dataset needs the `datasets` package: pip install datasets") from err
        data = datasets.load_dataset(name, config, split=split, streaming=True)
        names = getattr((data.features or {}).get(label_field), "names", None) if label_field else None
        for i, rec in enumerate(data):
            if max_docs is not None and i >= max_docs:
                break
            value = label if label is not None else rec[label_field]
            text = _truncate(clean_text(str(rec[text_field])), max_chars)
            if text:
                yield _document(text, str(names[value] if names else value), f"hf:{name}:{split}:{i}")

    return Source(f"hf:{name}", (label,) if label else (), read)
