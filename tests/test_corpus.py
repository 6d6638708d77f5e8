"""Corpus building (fake man pages, users' files, JSONL), splitting, loading, and token packing."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import pytest
import torch

from lmscope.cli import main
from lmscope.data.corpus import Document, build_corpus, load_corpus
from lmscope.data.sources import jsonl_file, man_pages, render_man_page, text_files
from lmscope.data.tokens import TokenDataset, tokenize_corpus

from .conftest import word_tokenizer

needs_groff = pytest.mark.skipif(shutil.which("groff") is None, reason="groff renders man pages")

PAGE = r""".TH {name} 1 "2024" "fake 1.0" "Fake Manual"
.SH NAME
{name} \- {summary}
.SH DESCRIPTION
.B {name}
{body}
.PP
.I Second
paragraph of the page.
"""


def _page(name: str, summary: str, body: str) -> bytes:
    return PAGE.format(name=name, summary=summary, body=body).encode("utf-8")


@pytest.fixture
def man_root(tmp_path):
    """English pages in man1 (one gzipped, one a .so redirect, one a symlink, one a duplicate), French in fr/."""
    root = tmp_path / "man"
    (root / "man1").mkdir(parents=True)
    (root / "fr" / "man1").mkdir(parents=True)
    for i in range(4):
        body = f"prints the number {i} and then explains at some length why the number {i} matters. " * 3
        (root / "man1" / f"tool{i}.1").write_bytes(_page(f"tool{i}", "a fake tool", body))
    (root / "man1" / "zipped.1.gz").write_bytes(
        gzip.compress(_page("zipped", "compressed", "reads gzip. " * 20))
    )
    (root / "man1" / "copy.1").write_bytes((root / "man1" / "tool0.1").read_bytes().replace(b"Fake", b"FAKE"))
    (root / "man1" / "alias.1").write_bytes(b".so man1/tool1.1\n")
    os.symlink(root / "man1" / "tool2.1", root / "man1" / "link.1")
    for i in range(3):
        body = f"affiche le nombre {i} et explique longuement pourquoi le nombre {i} compte. " * 3
        (root / "fr" / "man1" / f"outil{i}.1").write_bytes(_page(f"outil{i}", "un faux outil", body))
    return root


@needs_groff
def test_render_man_page_gives_plain_paragraphs(man_root):
    text = render_man_page(man_root / "man1" / "tool1.1")
    assert text.startswith("NAME\ntool1 - a fake tool\n\nDESCRIPTION\ntool1 prints the number 1")
    assert "Second paragraph of the page." in text
    assert "\\f" not in text and ".TH" not in text and "Fake Manual" not in text  # header/footer dropped
    line = next(s for s in text.splitlines() if s.startswith("tool1 prints"))
    assert len(line) > 200  # a paragraph is one line: no wrapping, no hyphenation
    assert "reads gzip." in render_man_page(man_root / "man1" / "zipped.1.gz")
    assert render_man_page(man_root / "man1" / "alias.1") is None


@needs_groff
def test_build_from_fake_man_pages(man_root, tmp_path):
    sources = [man_pages("english", [man_root]), man_pages("french", [man_root])]
    out = build_corpus(
        tmp_path / "c",
        max_docs_per_label=10,
        test_fraction=0.25,
        sources=sources,
        min_chars=50,
        progress=False,
    )
    docs = load_corpus(out)
    english = sorted(d.source.rsplit("/", 1)[1] for d in docs if d.label == "english")
    # 4 tools + zipped; the redirect, the symlink and the case-only duplicate are left out
    assert len(english) == 5 and {"alias.1", "link.1"}.isdisjoint(english)
    assert len([n for n in english if n in ("tool0.1", "copy.1")]) == 1
    french = [d for d in docs if d.label == "french"]
    assert len(french) == 3 and all("nombre" in d.text for d in french)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"]["english"] == {
        "train": 4,
        "test": 1,
        "chars": sum(len(d.text) for d in docs if d.label == "english"),
    }
    assert manifest["labels"]["french"]["test"] == 1  # round(0.75) = 1
    assert json.loads((out / "run.json").read_text())["kind"] == "corpus"
    assert "french" in (out / "report.html").read_text()


def test_missing_source_names_the_install_command(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    german = man_pages("german", [empty])
    assert not german.available and "manpages-de" in german.install
    with pytest.raises(ValueError, match="apt-get install -y .*manpages-de"):
        build_corpus(tmp_path / "c", labels=["german"], sources=[german], progress=False)
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "a.txt").write_text("some text of my own, long enough to keep. " * 3)
    out = build_corpus(
        tmp_path / "c", sources=[german, text_files(tmp_path / "txt", "mine")], min_chars=10, progress=False
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["missing"][0]["name"] == "man/german" and "manpages-de" in manifest["install"]
    assert list(manifest["labels"]) == ["mine"]


@pytest.fixture
def own_text(tmp_path):
    """Two labels from a folder of .txt files and a JSONL file, with one text present in both."""
    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(10):
        (folder / f"n{i}.txt").write_text(
            f"note number {i}: " + "words of my own " * (5 + i) + "\r\n\n\n\nend\n"
        )
    lines = [json.dumps({"text": f"record {i} " + "lorem ipsum " * 8, "label": "jsonl"}) for i in range(12)]
    lines.append(json.dumps({"text": (folder / "n3.txt").read_text(), "label": "jsonl"}))  # a duplicate
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    return [text_files(folder, "notes"), jsonl_file(tmp_path / "data.jsonl")]


def test_own_files_dedup_split_and_load(own_text, tmp_path):
    def build(folder: str, seed: int = 1, **kwargs):
        settings = dict(max_chars=150, test_fraction=0.2, sources=own_text, min_chars=20, progress=False)
        return build_corpus(tmp_path / folder, seed=seed, **{**settings, **kwargs})

    out = build("a")
    docs = load_corpus(out)
    assert sorted(d.label for d in docs).count("notes") == 10
    assert sum(d.label == "jsonl" for d in docs) == 12  # the copy of n3.txt was dropped
    assert all(len(d.text) <= 150 for d in docs) and "\r" not in docs[0].text and "\n\n\n" not in docs[0].text
    test = load_corpus(out, split="test")
    assert sorted(d.label for d in test) == ["jsonl"] * 2 + ["notes"] * 2  # round(0.2 * n) per label
    assert {d.id for d in test}.isdisjoint(d.id for d in load_corpus(out, split="train"))
    assert [d.label for d in load_corpus(out, labels=["notes"])] == ["notes"] * 10
    # Same seed, same corpus; another seed, another split.
    again = build("b")
    assert (again / "docs.jsonl").read_bytes() == (out / "docs.jsonl").read_bytes()
    other = build("c", seed=2)
    assert {d.id for d in load_corpus(other, split="test")} != {d.id for d in test}
    capped = build("d", max_docs_per_label=3)
    assert len(load_corpus(capped)) == 6
    with pytest.raises(ValueError, match="not in the corpus"):
        load_corpus(out, labels=["klingon"])
    with pytest.raises(ValueError, match="split"):
        load_corpus(out, split="validation")


def test_cli_builds_from_own_files(own_text, tmp_path, capsys):
    notes = tmp_path / "notes"
    code = main(
        [
            "corpus",
            "build",
            "--no-builtin",
            "--text",
            f"notes={notes}",
            "--out",
            str(tmp_path / "cli"),
            "--max-docs",
            "2",
        ]
    )
    assert code == 0 and "notes" in capsys.readouterr().out
    assert len(load_corpus(tmp_path / "cli")) == 2
    assert main(["corpus", "build", "--no-builtin", "--text", str(notes), "--out", str(tmp_path / "x")]) == 2


# ---- tokens ---------------------------------------------------------------------------------------------
# word_tokenizer ids: <pad> 0, <bos> 1, the 2, cat 3, sat 4, on 5, mat 6, a 7, dog 8, ran 9, to 10, home 11
DOCS = [Document("the cat sat", "x", "", "d0"), Document("a dog ran to home", "y", "", "d1")]


def test_pack_by_hand():
    ds = tokenize_corpus(word_tokenizer(), DOCS, ctx_len=6)
    assert ds.tokens.tolist() == [[1, 2, 3, 4, 1, 7], [1, 8, 9, 10, 11, 0]]
    assert ds.labels.tolist() == [[-1, 0, 0, 0, -1, 1], [-1, 1, 1, 1, 1, -1]]
    assert ds.doc_ids.tolist() == [[-1, 0, 0, 0, -1, 1], [-1, 1, 1, 1, 1, -1]]
    assert ds.positions.tolist() == [[-1, 0, 1, 2, -1, 0], [-1, 1, 2, 3, 4, -1]]
    assert ds.attention_mask.tolist() == [[1] * 6, [1] * 5 + [0]]
    assert ds.label_names == ["x", "y"] and ds.doc_keys == ["d0", "d1"] and ds.n_tokens == 11
    # No room for BOS + a token at the end of a context: it is padded and the document starts afresh.
    ds = tokenize_corpus(word_tokenizer(), DOCS, ctx_len=5)
    assert ds.tokens.tolist() == [[1, 2, 3, 4, 0], [1, 7, 8, 9, 10], [1, 11, 0, 0, 0]]
    assert ds.positions.tolist() == [[-1, 0, 1, 2, -1], [-1, 0, 1, 2, 3], [-1, 4, -1, -1, -1]]


def test_unpacked_no_bos_and_label_names():
    ds = tokenize_corpus(word_tokenizer(), DOCS, ctx_len=4, pack=False)
    assert ds.tokens.tolist() == [[1, 2, 3, 4], [1, 7, 8, 9]]  # one document per context, cut
    assert ds.positions.tolist() == [[-1, 0, 1, 2], [-1, 0, 1, 2]]
    ds = tokenize_corpus(word_tokenizer(), DOCS, ctx_len=4, bos=False)
    assert ds.tokens.tolist() == [[2, 3, 4, 7], [8, 9, 10, 11]]
    assert ds.doc_ids.tolist() == [[0, 0, 0, 1], [1, 1, 1, 1]]
    assert ds.positions.tolist() == [[0, 1, 2, 0], [1, 2, 3, 4]]
    ds = tokenize_corpus(word_tokenizer(), DOCS, ctx_len=6, label_names=["y", "z", "x"])
    assert ds.labels[0, 1:4].tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="not in label_names"):
        tokenize_corpus(word_tokenizer(), DOCS, label_names=["x"])
    assert len(tokenize_corpus(word_tokenizer(), DOCS * 10, ctx_len=4, max_contexts=3)) == 3


def test_token_dataset_save_load_batches(tmp_path, tiny_llama):
    ds = tokenize_corpus(tiny_llama, DOCS * 3, ctx_len=5)
    ds.save(tmp_path / "ds.safetensors")
    back = TokenDataset.load(tmp_path / "ds.safetensors")
    for name in ("tokens", "labels", "doc_ids", "positions", "attention_mask"):
        assert torch.equal(getattr(back, name), getattr(ds, name))
    assert back.label_names == ds.label_names and back.doc_keys == ds.doc_keys and back.meta == ds.meta
    assert back.fingerprint() == ds.fingerprint()
    batches = list(ds.batches(3))
    assert len(ds) == 8 and [len(b["input_ids"]) for b in batches] == [3, 3, 2]
    assert torch.equal(torch.cat([b["labels"] for b in batches]), ds.labels)
    logits = tiny_llama(batches[0])  # a batch goes to the model as it is
    assert logits.shape[:2] == (3, 5)
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        tokenize_corpus(tiny_llama, DOCS, ctx_len=65)


@pytest.mark.integration
@needs_groff
def test_small_real_build(tmp_path):
    from lmscope.data.sources import builtin_sources

    sources = [s for s in builtin_sources(["english", "french", "python"]) if s.available]
    if len(sources) < 3:
        pytest.skip(
            "needs English and French man pages and the Python stdlib (scripts/setup.sh installs them)"
        )
    out = build_corpus(tmp_path, max_docs_per_label=6, sources=sources, progress=False)
    docs = load_corpus(out)
    assert sorted({d.label for d in docs}) == ["english", "french", "python"]
    assert all(sum(d.label == label for d in docs) == 6 for label in ("english", "french", "python"))
    french = " ".join(d.text for d in docs if d.label == "french")
    assert french.count(" de ") + french.count(" le ") + french.count(" la ") > 20
    python = " ".join(d.text for d in docs if d.label == "python")
    assert "def " in python or "import " in python
