"""The training corpus every machine has: the Python source of the standard library and installed packages.

Files are listed by path (sorted, deterministic); each goes to the held-out split when the hash of its
relative path falls below `val_permille`/1000, so the split does not depend on which other packages
are installed. Byte caps take files in hash order, an order unrelated to package names.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceFile:
    rel: str  # "stdlib/json/decoder.py", "site/torch/nn/functional.py"
    path: Path

    @property
    def digest(self) -> int:
        return int(hashlib.sha1(self.rel.encode()).hexdigest()[:12], 16)

    def is_val(self, val_permille: int) -> bool:
        return self.digest % 1000 < val_permille


def list_sources(max_file_bytes: int = 500_000) -> list[SourceFile]:
    """Every .py file under the stdlib and site-packages roots, sorted by relative path."""
    paths = sysconfig.get_paths()
    site_roots = {Path(paths[k]).resolve() for k in ("purelib", "platlib")}
    roots = [("stdlib", Path(paths["stdlib"]).resolve())] + [("site", r) for r in sorted(site_roots)]
    seen: set[Path] = set()
    out: list[SourceFile] = []
    for label, root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            if label == "stdlib":  # site-packages inside the stdlib folder is listed under its own root
                dirnames[:] = [x for x in dirnames if (d / x).resolve() not in site_roots and x != "site-packages"]
            dirnames.sort()
            for f in sorted(filenames):
                if not f.endswith(".py"):
                    continue
                p = (d / f).resolve()
                if p in seen:
                    continue
                seen.add(p)
                try:
                    if p.stat().st_size > max_file_bytes:
                        continue
                except OSError:
                    continue
                out.append(SourceFile(f"{label}/{(d / f).relative_to(root)}", p))
    out.sort(key=lambda s: s.rel)
    return out


def read_split(
    files: list[SourceFile], val: bool, val_permille: int, max_bytes: int
) -> Iterator[tuple[SourceFile, str]]:
    """Texts of one split, in hash order, until `max_bytes` of UTF-8 source have been yielded."""
    total = 0
    for f in sorted((f for f in files if f.is_val(val_permille) == val), key=lambda f: f.digest):
        try:
            text = f.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text.strip():
            continue
        total += len(text.encode("utf-8"))
        yield f, text
        if total >= max_bytes:
            return
