"""Loader of the code-line tasks' data (lm-eval `custom_dataset`): the jsonl next to this file, as split `test`."""

from pathlib import Path

DATA = Path(__file__).resolve().parent / "code_lines.jsonl"


def load(**_metadata):
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(DATA)})
