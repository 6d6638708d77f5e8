"""`lmscope models`: the bundled models, installed or not, with their sizes, licences and cache state."""

from __future__ import annotations

HELP = "list the bundled models (installed or not) with sizes, licences and how to install them"


def add_arguments(parser) -> None:
    pass  # no options: the list is short and complete


def status(model, cache_dir=None) -> str:
    """'converted' (ready in the cache), 'installed' (converted on first load) or 'not installed'."""
    from ..model.loading import bundled_cache_folder

    if model.missing_packages():
        return "not installed"
    folder = bundled_cache_folder(model, cache_dir)
    return "converted" if folder is not None and (folder / "config.json").exists() else "installed"


def table(cache_dir=None) -> list[dict]:
    """One row per bundled model: what `lmscope models` prints, as numbers."""
    from ..model.bundled import BUNDLED

    return [
        {
            "name": m.name,
            "architecture": m.architecture,
            "layers": m.n_layers,
            "d_model": m.d_model,
            "params": m.n_params,
            "file_bytes": m.file_bytes,
            "licence": m.licence,
            "status": status(m, cache_dir),
            "install": m.install_command,
        }
        for m in BUNDLED.values()
    ]


def run(args) -> None:
    from ..model import cache_root
    from ..model.loading import BUNDLED_NAME

    rows = table()
    header = ("model", "architecture", "layers", "d_model", "params", "file", "licence", "status")
    lines = [header]
    for r in rows:
        default = " (default)" if r["name"] == BUNDLED_NAME else ""
        lines.append(
            (
                r["name"] + default,
                r["architecture"],
                str(r["layers"]),
                str(r["d_model"]),
                f"{r['params'] / 1e6:.0f}M",
                f"{r['file_bytes'] / 2**20:.0f} MiB",
                r["licence"],
                r["status"],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    missing = [r for r in rows if r["status"] == "not installed"]
    for r in missing:
        print(f"\nto install {r['name']}:  {r['install']}")
    print(
        f"\nload one with ls.load(NAME) or --model NAME; converted models are cached in {cache_root() / 'models'}"
    )
    print("params: weights in the GGUF file (an untied output matrix counts); file: the quantised GGUF file")
