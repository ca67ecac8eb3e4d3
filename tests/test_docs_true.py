"""The README, `--help` and the experiment files say what is true (issue 31 item 4): every config group and choice
in the README's table and in `python run.py --help`, which opens with what moelab is; every `python run.py` command
of the README composes (real groups, choices, keys, values); no shell pipe in a command; the transformers release
installed here is one the README says was tested; experiment files do not call the default model tiny; a run's
Hydra run.log holds what it printed."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from importlib.metadata import version

import pytest

from moelab.hydra_errors import compose_error
from tests.conftest import ROOT
from tests.test_cli import QUICK

CONF = ROOT / "conf"
README = (ROOT / "README.md").read_text()
NOT_RUN_GROUPS = {"hydra"}  # Hydra's own (hydra/launcher is checked on its own)


def groups() -> dict[str, list[str]]:
    """Each config group under conf/ (subgroups as a/b) and its choices."""
    out = {}
    for d in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        rel = d.relative_to(CONF).as_posix()
        choices = sorted(p.stem for p in d.glob("*.yaml"))
        if choices and rel.split("/")[0] not in NOT_RUN_GROUPS or rel == "hydra/launcher":
            out[rel] = choices
    return out


def readme_table() -> dict[str, str]:
    """The README's group table: group -> its choices column."""
    start = README.index("| group | what | choices now |")
    rows = {}
    for line in README[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        rows[cells[0].strip("`").lstrip("+")] = cells[-1]
    return rows


def test_every_config_group_and_choice_is_in_the_readme_table():
    table = readme_table()
    for group, choices in groups().items():
        if "/" in group and group != "hydra/launcher":
            continue  # experiment/predictor, ...: named in the experiments' table
        assert group in table, f"README's group table lacks `{group}`"
        missing = [c for c in choices if f"`{c}`" not in table[group]]
        assert not missing, f"README's `{group}` row lacks {missing}"
    assert set(table) <= {g for g in groups()}, set(table) - set(groups())


def test_help_opens_with_what_moelab_is_and_lists_every_group():
    p = subprocess.run([sys.executable, "run.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("moelab: run Mixture-of-Experts language models"), p.stdout[:200]
    listed = dict(ln.split(": ", 1) for ln in p.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
                  .splitlines() if re.match(r"^[\w/]+: ", ln))
    for group, choices in groups().items():
        if group.startswith("hydra/"):
            assert group in p.stdout  # Hydra lists its own groups under --hydra-help; the text names it
            continue
        assert group in listed, f"--help lacks the group {group}"
        assert listed[group].split(", ") == choices


def readme_commands() -> list[str]:
    """Every `python run.py ...` line of the README's code blocks, continuation lines joined, comments cut."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("python run.py"):
                commands.append(line.split("  #")[0].split(" # ")[0].strip())
    return commands


def test_readme_commands_have_no_shell_pipes():
    for cmd in readme_commands():
        assert all(tok != "|" for tok in shlex.split(cmd, comments=True)), cmd


@pytest.mark.parametrize("cmd", readme_commands())
def test_every_readme_run_command_composes(cmd):
    """Groups, choices and keys the README's commands name exist (each sweep choice composed once)."""
    args = shlex.split(cmd)[2:]
    if "..." in args or any("<" in a for a in args):
        pytest.skip("a template, not a command")
    overrides = [a for a in args if not a.startswith("-")]
    error = compose_error(overrides, CONF, "config")
    if error and "pip install" in error and "launcher" in error:
        pytest.skip(f"launcher plugin not installed here: {error}")
    assert error is None, f"{cmd}: {error}"


def test_the_installed_transformers_is_one_the_readme_says_was_tested():
    section = README.split("## Supported versions", 1)[1].split("\n## ", 1)[0]
    installed = ".".join(version("transformers").split(".")[:2])
    tested = re.search(r"Tested: (.*?)\.\s", section.replace("\n", " ")).group(1)
    assert installed in re.findall(r"\d+\.\d+", tested), (installed, tested)


def test_experiment_files_do_not_call_the_default_model_tiny():
    default = re.search(r"- model: (\w+)", (CONF / "config.yaml").read_text()).group(1)
    assert default != "tiny"
    for f in sorted((CONF / "experiment").glob("*.yaml")):
        for line in f.read_text().splitlines():
            m = re.match(r"#\s+(python run\.py .*?)\s+#\s*(.*)", line)
            if m and "model=" not in m.group(1):
                assert "tiny" not in m.group(2), f"{f.name}: {line}"


def test_a_runs_hydra_log_holds_what_it_printed(tmp_path):
    p = subprocess.run([sys.executable, "run.py", *QUICK, "device=cpu", "reference=false", "progress=false",
                        f"results_dir={tmp_path / 'results'}", f"hydra.run.dir={tmp_path / 'out'}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    log = (tmp_path / "out" / "run.log").read_text()
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("run ") and "row in" in last
    assert log.strip().splitlines()[-1].endswith(last) and "[moelab][INFO]" in log


@pytest.mark.parametrize("progress", [False, True])
def test_progress_false_hides_transformers_loading_bar(tmp_path, capsys, progress):
    """The committed draft loads with from_pretrained, whose "Loading weights" bar obeys `progress`."""
    import hydra

    from moelab.command import run_from_hydra

    with hydra.initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = hydra.compose("config", overrides=[
            "decoding=speculative", "workload.max_new_tokens=2", "workload.num_prompts=1", "workload.ppl_tokens=0",
            "device=cpu", "reference=false", f"progress={str(progress).lower()}",
            f"results_dir={tmp_path / 'results'}"])
    run_from_hydra(cfg)
    err = capsys.readouterr().err
    assert ("Loading weights" in err) == progress, err[-2000:]


def test_sweep_merge_and_status_say_what_they_did(tmp_path, capsys):
    from moelab import sweep
    from moelab.results.store import append_row, write_row_file

    exp = tmp_path / "e"
    append_row(exp / "runs.parquet", {"run_id": "a", "experiment": "e", "status": "ok"})
    assert sweep.main(["merge", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"{exp}: no row files to merge; runs.parquet unchanged"
    write_row_file(exp, {"run_id": "b", "experiment": "e", "status": "failed"})
    assert sweep.main(["merge", str(tmp_path), "e"]) == 0
    assert capsys.readouterr().out.strip() == f"{exp}: merged 1 row files into runs.parquet, which now holds 2 rows"
    assert sweep.main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"{tmp_path}: runs by their latest status, per experiment "
                      "(a later ok supersedes an earlier failure)")
    assert out[-1].split() == ["e", "1", "1"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sweep.main(["merge", str(empty)]) == 0 and sweep.main(["status", str(empty)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"no experiments under {empty}: nothing to merge",
                                                   f"no runs under {empty}"]
