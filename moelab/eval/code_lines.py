"""The code-line completion task's data: a few source lines, and the next line the model is to write.

The cut between context and target falls where a byte-level BPE pre-tokenizer splits the text itself: a
newline and all but the last space of the next line's indentation end the context, the target starts with
that last space and the code (" return x"). Cutting after the bare newline would leave the context ending in
a token the model never saw before indented code, and exact match would score near zero even without
offloading. An unindented line right after a blank one has no such cut (the two newlines split apart only
before code), so it is never a target.

Cut from held-out Python sources (the split the trainer never saw), one example per file, in hash order.
`python -m moelab.eval.code_lines OUT.jsonl [--n N] [--val-permille P] [--all-packages]` writes a fresh
file; the shipped task_configs/code_lines.jsonl holds standard-library files only, so it is the same on every
machine with the same Python.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from moelab.train.corpus import list_sources, read_split


def code_line_examples(n: int, val_permille: int = 10, context_lines: int = 8, stdlib_only: bool = True,
                       max_line_chars: int = 80, per_file: int = 3) -> list[dict[str, str]]:
    """`n` examples {"context", "target", "source"}: the target is a non-blank line of at most
    `max_line_chars` characters (from its indentation's last space on), the context the `context_lines`
    lines before it and the rest of the indentation;
    up to `per_file` examples per file, at positions drawn from the file's own hash."""
    out = []
    files = [f for f in list_sources() if not stdlib_only or f.rel.startswith("stdlib/")]
    for f, text in read_split(files, True, val_permille, max_bytes=1 << 62):
        lines = text.splitlines()
        ends = [i for i in range(context_lines, len(lines))
                if lines[i].strip() and len(lines[i]) <= max_line_chars and not lines[i].lstrip().startswith("#")
                and (lines[i][0].isspace() or lines[i - 1].strip())]  # unindented after a blank: no clean cut
        if not ends:
            continue
        for i in sorted(random.Random(f.digest).sample(ends, min(per_file, len(ends)))):
            cut = max(0, len(lines[i]) - len(lines[i].lstrip()) - 1)  # keep the indentation's last space
            out.append({"context": "\n".join(lines[i - context_lines : i]) + "\n" + lines[i][:cut],
                        "target": lines[i][cut:], "source": f.rel})
            if len(out) == n:
                return out
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--val-permille", type=int, default=10)
    p.add_argument("--all-packages", action="store_true", help="also held-out files of installed packages")
    a = p.parse_args()
    rows = code_line_examples(a.n, a.val_permille, stdlib_only=not a.all_packages)
    tmp = a.out.with_name(a.out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(a.out)
    print(f"wrote {len(rows)} examples to {a.out}")


if __name__ == "__main__":
    main()
