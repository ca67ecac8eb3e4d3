"""Prompts from any dataset `datasets` can open: a text field, or a template over fields, sampled with a seed.

Prompts are drawn in a seeded random order and kept when their token length is within
[min_prompt_tokens, max_prompt_tokens], until `num_prompts` are kept; perplexity documents are drawn
from the rows after them in the same order, so the two never overlap.
"""

from __future__ import annotations

import random
import string

from moelab.core.errors import ConfigError
from moelab.core.registry import register
from moelab.workloads._hf_datasets import load_records
from moelab.workloads.base import Encode, Workload


def template_fields(template: str) -> list[str]:
    """The field names a `str.format` template reads ("{question}\\nA:" -> ["question"])."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"workload.template {template!r} is not a valid format string: {e}") from None
    fields = []
    for _, name, _, _ in parsed:
        if name is None:
            continue
        base = name.split(".")[0].split("[")[0]
        if not base or base.isdigit():
            raise ConfigError(f"workload.template {template!r}: every {{}} must name a field, e.g. {{question}}")
        fields.append(base)
    return fields


def render_fn(columns: list[str], field: str | None, template: str | None):
    """A row -> text function, checked against the dataset's columns."""
    if (field is None) == (template is None):
        raise ConfigError("workload=dataset needs exactly one of workload.field (a text column) or "
                          "workload.template (e.g. '{question}\\nA:')")
    allowed = ", ".join(columns)
    if field is not None:
        if field not in columns:
            raise ConfigError(f"workload.field {field!r} is not a field of the dataset; fields: {allowed}")
        return lambda row: "" if row[field] is None else str(row[field])
    missing = [f for f in template_fields(template) if f not in columns]
    if missing:
        raise ConfigError(f"workload.template names field(s) {', '.join(missing)} the dataset does not have; "
                          f"fields: {allowed}")
    return lambda row: template.format_map(row)


@register("workload", "dataset")
class DatasetWorkload(Workload):
    name = "dataset"

    def __init__(
        self,
        path: str | None = None,
        config: str | None = None,
        split: str = "train",
        field: str | None = None,
        template: str | None = None,
        num_prompts: int | None = 16,
        seed: int = 0,
        min_prompt_tokens: int = 1,
        max_prompt_tokens: int | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 1,
        ppl_docs: int = 0,
        ppl_tokens: int = 512,
    ):
        if not path:
            raise ConfigError("workload=dataset needs workload.path: a local jsonl/json/parquet/csv/arrow file, "
                              "a folder or saved dataset, or a hub dataset name (with workload.config, split)")
        if int(min_prompt_tokens) < 1 or (max_prompt_tokens is not None
                                          and int(max_prompt_tokens) < int(min_prompt_tokens)):
            raise ConfigError(f"workload.min_prompt_tokens ({min_prompt_tokens}) must be >= 1 and <= "
                              f"workload.max_prompt_tokens ({max_prompt_tokens})")
        # checked before loading: a bad field or template is reported without touching the data
        if (field is None) == (template is None):
            render_fn([], field, template)
        if template is not None:
            template_fields(template)
        self.source = f"{path}" + (f" ({config})" if config else "") + f" [{split}]"
        self.records = load_records(str(path), config, split)
        self.render = render_fn(list(self.records.column_names), field, template)
        if len(self.records) == 0:
            raise ConfigError(f"dataset {self.source} has no rows")
        self.order = list(range(len(self.records)))
        random.Random(int(seed)).shuffle(self.order)
        # rows are rendered when drawn, so a large dataset costs only the rows a run uses
        super().__init__([self.text(self.order[0]) or "-"], max_new_tokens, batch_size, None, None, ppl_tokens,
                         ppl_docs)
        self.num_prompts = None if num_prompts is None else int(num_prompts)
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ConfigError(f"workload.num_prompts must be >= 1 (or null for all), got {num_prompts}")
        self.min_tokens, self.max_tokens = int(min_prompt_tokens), max_prompt_tokens
        self.used = 0  # rows of `order` consumed by the prompt sample (perplexity documents come after)
        self.prepared = False

    def prepare(self, encode: Encode) -> None:
        if self.prepared:
            return
        kept, used = [], 0
        for i in self.order:
            used += 1
            text = self.text(i)
            length = len(encode(text)) if text.strip() else 0
            if length and length >= self.min_tokens and (self.max_tokens is None or length <= int(self.max_tokens)):
                kept.append(text)
                if len(kept) == self.num_prompts:
                    break
        if not kept:
            raise ConfigError(
                f"dataset {self.source}: no prompt left after filtering ({len(self.order)} rows, none non-empty "
                f"with {self.min_tokens} <= tokens <= {self.max_tokens}); widen workload.min_prompt_tokens/"
                "max_prompt_tokens")
        self.prompts, self.used, self.prepared = kept, used, True

    def text(self, i: int) -> str:
        return self.render(self.records[i])

    def ppl_texts(self) -> list[str]:
        """The next `ppl_docs` non-empty rows after the prompt sample (the sample itself if it used every row)."""
        rest = self.order[self.used:] if self.used < len(self.order) else self.order
        docs = []
        for i in rest:
            if len(docs) == self.ppl_docs:
                break
            text = self.text(i)
            if text.strip():
                docs.append(text)
        return docs

    def describe(self) -> dict[str, str]:
        return {"workload_source": self.source}
