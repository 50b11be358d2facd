"""MkDocs hooks: pictures from text sources, and the changelog from the repository's root.

Each `docs/diagrams/NAME.dot` (Graphviz) becomes `diagrams/NAME.svg` in the built site, made
by `dot` at build time, so the picture and its source never disagree; `CHANGELOG.md` becomes
the page `changelog.md`. A missing `dot` fails the build with the fix.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


def on_files(files: Files, config) -> Files:
    dot = shutil.which("dot")
    for source in sorted((ROOT / "docs" / "diagrams").glob("*.dot")):
        if dot is None:
            raise PluginError(f"{source.name}: Graphviz's `dot` is not installed "
                              "(apt-get install graphviz; scripts/setup.sh does it)")
        proc = subprocess.run([dot, "-Tsvg", str(source)], capture_output=True)
        if proc.returncode != 0:
            raise PluginError(f"{source.name}: {proc.stderr.decode(errors='replace')}")
        files.append(File.generated(config, f"diagrams/{source.stem}.svg", content=proc.stdout))
    changelog = (ROOT / "CHANGELOG.md").read_text()
    files.append(File.generated(config, "changelog.md", content=changelog))
    return files
