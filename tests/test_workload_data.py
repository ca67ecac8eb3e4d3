"""Workloads from `datasets` (every local format, templates, seeded samples, length filters, the offline hub),
held-out code prompts, and perplexity over documents; bad input fails before any weight is read."""

from __future__ import annotations

import json
import math
import time

import datasets
import hydra
import pytest
import torch
import torch.nn.functional as F

from moelab import runner
from moelab.core.errors import ConfigError
from moelab.metrics.perplexity import corpus_perplexity
from moelab.models.tokenizer import ByteTokenizer
from moelab.workloads.code_heldout import CodeHeldoutWorkload, heldout_texts
from moelab.workloads.dataset import DatasetWorkload
from tests.conftest import ROOT, offloaded_copy, tiny_hf_model

ROWS = [{"question": f"What is {i} plus {i}?", "answer": str(2 * i), "id": i} for i in range(30)]
ENCODE = ByteTokenizer(512).encode  # one token per byte: lengths are easy to reason about


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def _write(tmp_path, fmt: str):
    ds = datasets.Dataset.from_list(ROWS)
    if fmt == "saved":
        ds.save_to_disk(str(tmp_path / "saved"))
        return tmp_path / "saved"
    path = tmp_path / f"rows.{fmt}"
    {"csv": ds.to_csv, "parquet": ds.to_parquet, "json": lambda p: ds.to_json(p, lines=False)}[fmt](str(path))
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet", "json", "saved"])
def test_every_local_format_gives_the_same_prompts(tmp_path, jsonl, fmt):
    want = DatasetWorkload(path=str(jsonl), field="question", num_prompts=5)
    got = DatasetWorkload(path=str(_write(tmp_path, fmt)), field="question", num_prompts=5)
    want.prepare(ENCODE), got.prepare(ENCODE)
    assert got.prompts == want.prompts and len(got.prompts) == 5


def test_template_seeded_sample_length_filter_and_ppl_docs(jsonl):
    w = DatasetWorkload(path=str(jsonl), template="Q: {question}\nA:", num_prompts=4, seed=1,
                        min_prompt_tokens=25, max_prompt_tokens=25, ppl_docs=3)
    w.prepare(ENCODE)
    assert len(w.prompts) == 4 and all(p.startswith("Q: What is ") and len(ENCODE(p)) == 25 for p in w.prompts)
    # 25 bytes: two-digit numbers only; a seeded random sample, not the first rows
    assert all(int(p.split()[3]) >= 10 for p in w.prompts)
    again = DatasetWorkload(path=str(jsonl), template="Q: {question}\nA:", num_prompts=4, seed=1,
                            min_prompt_tokens=25, max_prompt_tokens=25)
    again.prepare(ENCODE)
    other = DatasetWorkload(path=str(jsonl), template="Q: {question}\nA:", num_prompts=4, seed=2)
    other.prepare(ENCODE)
    assert again.prompts == w.prompts and other.prompts != w.prompts
    docs = w.ppl_texts()
    assert len(docs) == 3 and not set(docs) & set(w.prompts)  # perplexity documents are other rows


def _cfg(tmp_path, *overrides: str):
    with hydra.initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra.compose("config", overrides=[
            "model=tiny", "device=cpu", f"results_dir={tmp_path / 'results'}", "progress=false",
            "logger.console=false", "model.seed=4242",  # a model no other test holds: reaching the loader would load it
            *overrides])


@pytest.mark.parametrize("overrides, says", [
    (["workload.field=qestion"], "'qestion' is not a field of the dataset; fields: question, answer, id"),
    (["workload.template='{question} {topic}'"], "names field(s) topic the dataset does not have"),
    (["workload.field=question", "workload.min_prompt_tokens=500"], "no prompt left after filtering"),
    (["workload.field=question", "workload.path=nobody/no_such_dataset"], "is not cached and the Hugging Face hub"),
])
def test_bad_dataset_input_fails_before_any_weight_loads(tmp_path, jsonl, overrides, says):
    loads = runner.MODELS.loads
    cfg = _cfg(tmp_path, "workload=dataset", f"workload.path={jsonl}", *overrides)
    with pytest.raises(ConfigError) as e:
        runner.run(cfg)
    assert says in str(e.value) and "\n" not in str(e.value)
    assert runner.MODELS.loads == loads


def test_unreachable_hub_switches_datasets_offline_and_fails_at_once(monkeypatch):
    """No offline flag set and the hub endpoint refuses connections: the probe turns `datasets` offline, so a
    dataset that is not cached fails in one line instead of being retried for minutes."""
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        DatasetWorkload(path="someone/absent", field="text")
    assert time.monotonic() - t0 < 30
    assert str(e.value).startswith("dataset 'someone/absent' is not cached and the Hugging Face hub is unreachable")
    assert "workload.path=data.jsonl" in str(e.value) and "\n" not in str(e.value)
    assert datasets.config.HF_HUB_OFFLINE and huggingface_hub.constants.HF_HUB_OFFLINE
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # leave the process offline, as conftest set it


def test_code_heldout_prompts_come_from_held_out_files_deterministically():
    w = CodeHeldoutWorkload(num_prompts=3, ppl_docs=2, prompt_lines=6)
    assert len(w.prompts) == 3 and len(w.ppl_texts()) == 2
    assert all(f.is_val(10) for f in w.sources)  # the trainer's held-out split (same hash, same share)
    texts = [f.path.read_text() for f in w.sources]
    assert all(any(p in t for t in texts) for p in w.prompts)
    assert not set(w.ppl_texts()) & set(texts)  # perplexity documents are other held-out files
    heldout_texts.cache_clear()  # a fresh scan of the installed sources picks the same prompts
    assert CodeHeldoutWorkload(num_prompts=3, ppl_docs=2, prompt_lines=6).prompts == w.prompts
    # split=train: the trainer's own files (what the committed predictors learned from), never a held-out one
    train = CodeHeldoutWorkload(num_prompts=3, ppl_docs=0, prompt_lines=6, split="train")
    assert len(train.prompts) == 3 and not any(f.is_val(10) for f in train.sources)
    with pytest.raises(ConfigError, match="split must be one of heldout, train"):
        CodeHeldoutWorkload(split="val")


def test_corpus_perplexity_weights_documents_by_their_tokens():
    model = tiny_hf_model("mixtral")
    om = offloaded_copy(model)
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randint(3, 100, (n,), generator=g).tolist() for n in (9, 21))
    with torch.no_grad():  # total NLL of both documents under the plain transformers model
        nll = sum(F.cross_entropy(model(torch.tensor([d])).logits[0, :-1], torch.tensor(d[1:]), reduction="sum")
                  for d in (a, b))
    assert corpus_perplexity(om, [a, b]) == pytest.approx(math.exp(float(nll) / 28), rel=1e-5)
    assert corpus_perplexity(om, [a]) != pytest.approx(corpus_perplexity(om, [a, b]), rel=1e-3)
    assert math.isnan(corpus_perplexity(om, [[5]]))
