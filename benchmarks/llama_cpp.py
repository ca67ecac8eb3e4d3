"""llama.cpp (`llama-bench --n-cpu-moe`) on moelab's own weights: the peers table's llama.cpp rows.

llama.cpp is never vendored in this repository: it comes from the llama-cpp-python source archive on the Python
package index, which vendors a recent llama.cpp (`tools/llama-bench` with `--n-cpu-moe`). Four steps:

    python benchmarks/llama_cpp.py prepare            # HERE (needs the package index): download the archive, keep a
                                                      # stripped llama.cpp source tree in build/llama.cpp (~20 MB)
    python benchmarks/llama_cpp.py build              # on the GPU machine: CUDA build (sm_90) of llama-bench and
                                                      # llama-simple in build/llama.cpp-cuda (kept while warm)
    python benchmarks/llama_cpp.py bench --model qwen3_moe --num-layers 24
                                                      # GGUF from moelab's weights (moelab.export.gguf) into
                                                      # /tmp/moelab-gguf, then llama-bench at each --n-cpu-moe
    python benchmarks/llama_cpp.py all --model ...    # build (if not built) + bench, one device command
    python benchmarks/llama_cpp.py tokens --model code_moe   # greedy tokens of llama-simple vs moelab (optional)

The device command (carry `.whl` and `build/llama.cpp`; benchmarks/README.md, "llama.cpp harness"):

    source tools/device_env.sh && python benchmarks/llama_cpp.py all --model qwen3_moe --num-layers 24

`--n-cpu-moe N` keeps the experts of the first N layers in host memory, computed by the CPU; the rest of the model
is on the GPU (`-ngl 99`). The budgets (fractions of the experts on the GPU, as moelab's `budget.fraction`) become
N = layers - round(fraction x layers): 12.5/25/50% of 24 layers = 21/18/12. With 0 (all on the GPU) and all layers
(all experts on the CPU) that is five configurations, one llama-bench process each (a timeout loses one row, not
all). Each row: the machine, llama.cpp's commit, moelab's commit, the shapes, N, the experts' GPU fraction and the
bytes the GPU holds (non-expert weights + the GPU layers' experts, read from the GGUF; llama.cpp's KV cache and
buffers come on top), tokens/s of each test (`pp<p>` prefill, `tg<n>` decode: compare with moelab's decode tok/s),
appended to benchmarks/results/llama_cpp.parquet (moelab.results.store.append_row). A pandas table is printed last.

Defaults match moelab's decode benchmark (the committed traces: prompts of 19-30 tokens, 32 new tokens): `-p 24
-n 32 -r 3`, 16 threads. llama.cpp's speed does not depend on the weights' values, so random weights at a preset's
shapes (`--random-init`, the default for presets) measure what the released model would.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SRC = ROOT / "build" / "llama.cpp"  # the stripped source tree (carried to the GPU machine)
VERSION_FILE = "MOELAB_SOURCE.json"  # what prepare fetched and removed, inside SRC
RESULTS = ROOT / "benchmarks" / "results" / "llama_cpp.parquet"
GGUF_DIR = Path(os.environ.get("MOELAB_GGUF_DIR", "/tmp/moelab-gguf"))
TARGETS = ("llama-bench", "llama-simple")
BUDGETS = (0.125, 0.25, 0.5)

# What the benchmark does not need (relative to the vendored llama.cpp). Kept: the library (src, include), ggml
# with its CPU and CUDA backends, common (llama-bench links it), vendor (header-only deps), cmake, the licenses,
# tools/llama-bench and examples/simple; tools/ and examples/ get a CMakeLists.txt naming only those two.
STRIP = (
    "docs", "models", "tests", "benches", "media", "scripts", "app", "skills", "ci", "conversion", "gguf-py",
    "grammars", "requirements", "prompts", ".github", ".devops", ".git", ".gitmodules", ".gitignore",
    "ggml/.gitignore", "pocs/vdot", "vendor/miniaudio/miniaudio.h",
    "tools/*", "examples/*", *(f"ggml/src/ggml-{b}" for b in (
        "blas", "cann", "et", "hexagon", "hip", "metal", "musa", "opencl", "openvino", "rpc", "sycl", "virtgpu",
        "vulkan", "webgpu", "zdnn", "zendnn")), "*.py", "flake.nix", "build-xcframework.sh", "Makefile",
    "mypy.ini", "pyrightconfig.json", "ty.toml", "pyproject.toml", "poetry.lock", "requirements.txt",
)
KEEP = ("tools/CMakeLists.txt", "tools/llama-bench", "examples/CMakeLists.txt", "examples/simple",
        "ggml/src/ggml-cpu", "ggml/src/ggml-cuda")
TOOLS_CMAKE = "# moelab's stripped tree: only llama-bench (benchmarks/llama_cpp.py)\nadd_subdirectory(llama-bench)\n"
EXAMPLES_CMAKE = "# moelab's stripped tree: only llama-simple (benchmarks/llama_cpp.py)\nadd_subdirectory(simple)\n"


def log(msg: str) -> None:
    print(f"[llama_cpp {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ prepare (here)
def prepare(args: argparse.Namespace) -> Path:
    """Download llama-cpp-python's source archive, keep its llama.cpp stripped to what the benchmark builds."""
    dest = Path(args.dest)
    archive = Path(args.sdist) if args.sdist else None
    if archive is None:
        dl = ROOT / "build" / "sdist"
        dl.mkdir(parents=True, exist_ok=True)
        spec = f"llama-cpp-python=={args.version}" if args.version else "llama-cpp-python"
        found = sorted(dl.glob("llama_cpp_python-*.tar.gz"))
        if not found or args.version and not any(args.version in f.name for f in found):
            log(f"pip download {spec} (source archive, ~77 MB)")
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            "-d", str(dl), spec], check=True)
            found = sorted(dl.glob("llama_cpp_python-*.tar.gz"))
        archive = found[-1]
    pkg_version = re.sub(r"^llama_cpp_python-|\.tar\.gz$", "", archive.name)
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    prefix = f"llama_cpp_python-{pkg_version}/vendor/llama.cpp/"
    changelog = ""
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if m.name.endswith("/CHANGELOG.md") and m.name.count("/") == 1:
                changelog = tar.extractfile(m).read().decode()
            if not m.name.startswith(prefix) or not (m.isfile() or m.isdir()):
                continue
            rel = m.name[len(prefix):]
            if not rel or _stripped(rel):
                continue
            if m.isdir():
                (tmp / rel).mkdir(parents=True, exist_ok=True)
                continue
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(tar.extractfile(m).read())
            os.chmod(tmp / rel, m.mode & 0o755 | 0o644)
    (tmp / "tools" / "CMakeLists.txt").write_text(TOOLS_CMAKE)
    (tmp / "examples" / "CMakeLists.txt").write_text(EXAMPLES_CMAKE)
    (tmp / "pocs").mkdir(exist_ok=True)
    (tmp / "pocs" / "CMakeLists.txt").write_text("# stripped by moelab\n")
    m = re.search(r"update llama\.cpp to ggml-org/llama\.cpp@([0-9a-f]+)", changelog)
    info = {"package": "llama-cpp-python", "version": pkg_version, "sdist_sha256": sha,
            "llama_cpp_commit": m.group(1) if m else "unknown", "stripped": list(STRIP), "kept": list(KEEP),
            "prepared": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "note": "tools/, examples/ and pocs/ CMakeLists.txt rewritten to build only llama-bench and llama-simple"}
    (tmp / VERSION_FILE).write_text(json.dumps(info, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    log(f"{dest}: llama.cpp {info['llama_cpp_commit']} (llama-cpp-python {pkg_version}), {size / 2**20:.1f} MiB, "
        f"{sum(1 for f in dest.rglob('*') if f.is_file())} files")
    return dest


def _stripped(rel: str) -> bool:
    from fnmatch import fnmatch

    parts = rel.rstrip("/").split("/")
    for keep in KEEP:  # a kept path, or a folder on the way to one
        if rel.rstrip("/") == keep or rel.startswith(keep + "/") or keep.startswith(rel.rstrip("/") + "/"):
            return False
    for pat in STRIP:
        n = pat.count("/") + 1
        if len(parts) >= n and fnmatch("/".join(parts[:n]), pat):
            return True
    return False


def source_info(src: Path = SRC) -> dict[str, Any]:
    f = src / VERSION_FILE
    return json.loads(f.read_text()) if f.exists() else {}


# ------------------------------------------------------------------------------------------------ build (GPU machine)
def build_dir(cuda: bool) -> Path:
    return ROOT / "build" / ("llama.cpp-cuda" if cuda else "llama.cpp-cpu")


def binary(name: str, cuda: bool) -> Path:
    return build_dir(cuda) / "bin" / name


def build(args: argparse.Namespace) -> Path:
    """CMake + ninja build of llama-bench and llama-simple; an existing build folder is reused (incremental)."""
    src = Path(args.src)
    if not (src / "CMakeLists.txt").exists():
        raise SystemExit(f"{src} has no llama.cpp source: run `python benchmarks/llama_cpp.py prepare` here and carry "
                         f"{src.relative_to(ROOT)}")
    cuda = not args.cpu
    out = build_dir(cuda)
    if all(binary(t, cuda).exists() for t in TARGETS) and not args.rebuild:
        log(f"{out}: already built ({', '.join(TARGETS)})")
        return out
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    flags = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
             "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_OPENSSL=OFF",
             "-DLLAMA_CURL=OFF", "-DLLAMA_LLGUIDANCE=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_EXAMPLES=ON",
             "-DGGML_NATIVE=ON", f"-DLLAMA_BUILD_COMMIT={source_info(src).get('llama_cpp_commit', 'unknown')}"]
    if cuda:
        flags += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={args.cuda_arch}"]
        if not shutil.which("nvcc") and Path("/usr/local/cuda/bin/nvcc").exists():
            flags.append("-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
    t0 = time.time()
    if not (out / "CMakeCache.txt").exists() or args.rebuild:
        log(f"configure {out} ({'CUDA sm_' + args.cuda_arch if cuda else 'CPU only'})")
        subprocess.run(["cmake", "-S", str(src), "-B", str(out), *gen, *flags], check=True,
                       stdout=None if args.verbose else subprocess.DEVNULL)
    log(f"build {' '.join(TARGETS)} with {args.jobs} jobs")
    proc = subprocess.Popen(["cmake", "--build", str(out), "--target", *TARGETS, "-j", str(args.jobs)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = 0.0
    tail: list[str] = []
    for line in proc.stdout:  # ninja's [n/N] lines, one a minute
        tail = (tail + [line.rstrip()])[-30:]
        if args.verbose or time.time() - last > 60:
            print("   ", line.rstrip()[:160], flush=True)
            last = time.time()
    if proc.wait() != 0:
        print("\n".join(tail))
        raise SystemExit(f"llama.cpp build failed (rc {proc.returncode})")
    log(f"built in {time.time() - t0:.0f} s: {', '.join(str(binary(t, cuda)) for t in TARGETS)}")
    return out


# ------------------------------------------------------------------------------------------------ bench (GPU machine)
def export_gguf(args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The model's GGUF in GGUF_DIR, written by moelab.export.gguf unless one from the same arguments is there."""
    from moelab.export import gguf as export

    cfg = export.model_config(args.model, random_init=args.random_init, num_layers=args.num_layers,
                              overrides=args.set)
    name = export.default_name(cfg, args.outtype)
    path = Path(args.gguf_dir) / name
    meta = path.with_suffix(".json")
    want = {"model": args.model, "cfg": cfg, "outtype": args.outtype}
    if path.exists() and meta.exists() and json.loads(meta.read_text()).get("args") == json.loads(json.dumps(want)):
        log(f"{path}: reused ({path.stat().st_size / 1e9:.1f} GB)")
        return path, json.loads(meta.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    need = export.planned_bytes(cfg, args.outtype)
    free = shutil.disk_usage(path.parent).free
    if free < need + 2e9:  # the disk holds one full-size file at a time: drop the others
        for old in path.parent.glob("*.gguf"):
            log(f"removing {old} ({old.stat().st_size / 1e9:.1f} GB): {free / 1e9:.0f} GB free, need {need / 1e9:.1f}")
            old.unlink()
            old.with_suffix(".json").unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        if free < need + 1e9:
            raise SystemExit(f"{path.parent}: {free / 1e9:.1f} GB free, the GGUF needs {need / 1e9:.1f} GB")
    cmd = [sys.executable, "-m", "moelab.export.gguf", "--model", args.model, "--outtype", args.outtype,
           "--out", str(path), *(["--random-init"] if args.random_init else []),
           *(["--num-layers", str(args.num_layers)] if args.num_layers else []),
           *[a for kv in args.set for a in ("--set", kv)]]
    log("export: " + " ".join(cmd[1:]))
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)  # its own process: the model's host copy is gone before the bench
    info = {"args": want, "seconds": round(time.time() - t0, 1), "bytes": path.stat().st_size}
    meta.write_text(json.dumps(info, indent=1, default=str))
    return path, info


def gguf_layout(path: Path) -> dict[str, Any]:
    """Layers, experts' bytes per layer and non-expert bytes, read from the file's tensor table."""
    from gguf import GGUFReader

    r = GGUFReader(path)
    per_layer: dict[int, int] = {}
    other = 0
    for t in r.tensors:
        m = re.match(r"blk\.(\d+)\.ffn_(gate|up|down)_exps\.", t.name)
        if m:
            per_layer[int(m.group(1))] = per_layer.get(int(m.group(1)), 0) + int(t.n_bytes)
        else:
            other += int(t.n_bytes)
    arch = str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8")

    def u(key: str) -> int:
        f = r.fields.get(f"{arch}.{key}")
        return int(f.parts[-1][0]) if f is not None else 0

    return {"arch": arch, "layers": u("block_count"), "experts": u("expert_count"), "top_k": u("expert_used_count"),
            "hidden": u("embedding_length"), "expert_layer_bytes": per_layer, "nonexpert_bytes": other,
            "file_bytes": path.stat().st_size}


def cpu_moe_points(layers: int, budgets: tuple[float, ...]) -> list[tuple[int, float]]:
    """(--n-cpu-moe, fraction of the experts on the GPU): all on the GPU, each budget, all on the CPU."""
    pts = {0: 1.0, layers: 0.0}
    for b in budgets:
        gpu = round(b * layers)
        pts.setdefault(layers - gpu, gpu / layers)
    return sorted(pts.items())


def device_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
        return out[0] if out else "cpu"
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    import pandas as pd

    cuda = not args.cpu
    exe = binary("llama-bench", cuda)
    if not exe.exists():
        raise SystemExit(f"{exe} is missing: run `python benchmarks/llama_cpp.py build` first (or `all`)")
    path, info = export_gguf(args)
    lay = gguf_layout(path)
    L = lay["layers"]
    budgets = tuple(float(b) for b in args.budgets.split(",")) if args.budgets else BUDGETS
    points = cpu_moe_points(L, budgets)
    if args.ncmoe:
        want = {int(x) for x in args.ncmoe.split(",")}
        points = [(n, (L - n) / L) for n in sorted(want)]
    dev = device_name() if cuda else "cpu"
    base = {"system": "llama.cpp", "model": args.model, "arch": lay["arch"], "num_layers": L,
            "num_experts": lay["experts"], "top_k": lay["top_k"], "hidden_size": lay["hidden"],
            "outtype": args.outtype, "gguf_bytes": lay["file_bytes"], "random_init": bool(args.random_init),
            "device_name": dev, "moelab_commit": git_commit(),
            "llama_cpp_source": source_info().get("version", "unknown"), "threads": args.threads}
    rows: list[dict[str, Any]] = []
    for ncmoe, frac in points:
        cmd = [str(exe), "-m", str(path), "-ngl", str(args.ngl), "-t", str(args.threads), "-r", str(args.reps),
               "-p", str(args.prompt), "-n", str(args.gen), "--n-cpu-moe", str(ncmoe), "-o", "json"]
        if args.depth:
            cmd += ["-d", str(args.depth)]
        if args.extra:
            cmd += args.extra.split()
        log(f"--n-cpu-moe {ncmoe} ({frac:.1%} of the experts on the GPU): {' '.join(cmd)}")
        t0 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            log(f"timed out after {args.timeout} s; next configuration")
            continue
        if p.returncode != 0:
            log(f"llama-bench failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
            continue
        gpu_layers = [li for li in range(L) if li >= ncmoe]
        gpu_bytes = lay["nonexpert_bytes"] + sum(lay["expert_layer_bytes"].get(li, 0) for li in gpu_layers)
        for r in json.loads(p.stdout[p.stdout.index("["):]):
            row = {**base, "n_cpu_moe": ncmoe, "expert_gpu_fraction": frac, "gpu_weight_bytes": gpu_bytes,
                   "test": (f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}" if r["n_prompt"] == 0
                            else f"pp{r['n_prompt']}+tg{r['n_gen']}"),
                   "n_prompt": r["n_prompt"], "n_gen": r["n_gen"], "n_depth": r.get("n_depth", 0),
                   "tokens_per_s": r["avg_ts"], "tokens_per_s_std": r["stddev_ts"],
                   "ms_per_token": 1e3 / r["avg_ts"] if r["avg_ts"] else None,
                   "llama_cpp_commit": r.get("build_commit"), "llama_cpp_build": r.get("build_number"),
                   "gpu_info": r.get("gpu_info"), "cpu_info": r.get("cpu_info"), "backends": r.get("backends"),
                   "n_gpu_layers": r.get("n_gpu_layers"), "flash_attn": r.get("flash_attn"),
                   "samples_ts": json.dumps(r.get("samples_ts")), "test_time": r.get("test_time"),
                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(cmd),
                   "wall_s": round(time.time() - t0, 1)}
            rows.append(row)
            if os.environ.get("OUT"):  # the device call's output folder: rows that survive a timeout, fetched back
                with open(Path(os.environ["OUT"]) / "llama_cpp_rows.jsonl", "a") as f:
                    f.write(json.dumps(row, default=str) + "\n")
            if not args.no_save:
                from moelab.results.store import append_row

                append_row(Path(args.results), row)
    if rows:
        df = pd.DataFrame(rows)
        cols = ["arch", "num_layers", "n_cpu_moe", "expert_gpu_fraction", "gpu_weight_bytes", "test", "tokens_per_s",
                "tokens_per_s_std", "ms_per_token", "device_name"]
        df["gpu_weight_bytes"] = (df["gpu_weight_bytes"] / 2**30).round(2)
        df = df.rename(columns={"gpu_weight_bytes": "gpu_weight_GiB"})
        cols[4] = "gpu_weight_GiB"
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(df[cols].round(3).to_string(index=False))
        if not args.no_save:
            log(f"{len(rows)} rows appended to {args.results}")
    else:
        log("no rows")
    return rows


def ingest(args: argparse.Namespace) -> None:
    """Append rows a device call left in $OUT/llama_cpp_rows.jsonl to the results file here."""
    from moelab.results.store import append_row

    n = 0
    for line in Path(args.jsonl).read_text().splitlines():
        if line.strip():
            append_row(Path(args.results), json.loads(line))
            n += 1
    log(f"{n} rows from {args.jsonl} appended to {args.results}")


# ------------------------------------------------------------------------------------------------ tokens (optional)
def tokens(args: argparse.Namespace) -> None:
    """Greedy continuations of llama-simple and of moelab (the plain model, no offload) on the built-in prompts.

    llama-simple prints text, so the comparison is of text: moelab's greedy ids are decoded with the model's
    tokenizer, llama.cpp's text is re-encoded with it for a token count. A trained model's own tokenizer is in its
    GGUF (moelab.export.gguf), so both read the same prompt ids.
    """
    import torch

    from moelab.export import gguf as export
    from moelab.models.build import materialize, plan_model
    from moelab.workloads.builtin import PROMPTS

    cuda = not args.cpu
    exe = binary("llama-simple", cuda)
    if not exe.exists():
        raise SystemExit(f"{exe} is missing: build first")
    path, _ = export_gguf(args)
    cfg = export.model_config(args.model, random_init=args.random_init, num_layers=args.num_layers, overrides=args.set)
    device = torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")
    cfg = {**cfg, "dtype": "bfloat16" if args.outtype == "bf16" else "float16" if device.type == "cuda" else "float32"}
    om = materialize(plan_model(cfg, device), device)
    om.reference.materialize()
    tok = om.tokenizer
    same = 0
    prompts = PROMPTS[: args.prompts]
    for text in prompts:
        ids = tok.encode(text)
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            out = om.model.generate(x, max_new_tokens=args.gen, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[0, len(ids):].tolist()
        if tok.eos_token_id is not None and tok.eos_token_id in new:  # llama-simple stops at EOS and prints nothing
            new = new[: new.index(tok.eos_token_id)]
        mine = tok.decode(new)
        p = subprocess.run([str(exe), "-m", str(path), "-n", str(args.gen), "-ngl", str(args.ngl if cuda else 0),
                            text], capture_output=True, text=True, timeout=300)
        theirs = p.stdout
        theirs = theirs[len(text):] if theirs.startswith(text) else theirs
        theirs = theirs[:-1] if theirs.endswith("\n") else theirs  # llama-simple ends its output with a newline
        n = len(os.path.commonprefix([mine, theirs]))
        same += mine == theirs
        print(f"--- prompt {text[:40]!r}: {'same' if mine == theirs else f'first {n} characters equal'}\n"
              f"  moelab:    {mine[:200]!r}\n  llama.cpp: {theirs[:200]!r}", flush=True)
    print(f"identical greedy continuations: {same}/{len(prompts)}")


# ------------------------------------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="download llama-cpp-python's source archive, keep a stripped llama.cpp")
    p.add_argument("--dest", default=str(SRC))
    p.add_argument("--sdist", help="a llama_cpp_python-*.tar.gz already downloaded")
    p.add_argument("--version", help="llama-cpp-python version (default: the newest)")

    def build_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--src", default=str(SRC))
        p.add_argument("--cpu", action="store_true", help="a CPU-only build (build/llama.cpp-cpu)")
        p.add_argument("--cuda-arch", default="90")
        p.add_argument("--jobs", type=int, default=16)
        p.add_argument("--rebuild", action="store_true")
        p.add_argument("--verbose", action="store_true")

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="qwen3_moe", help="a conf/model preset or a checkpoint directory")
        p.add_argument("--num-layers", type=int, help="model.num_layers (first N decoder layers)")
        p.add_argument("--random-init", action=argparse.BooleanOptionalAction, default=None,
                       help="random weights at the preset's shapes (default: on for presets without local weights)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a model config override")
        p.add_argument("--outtype", choices=["f16", "bf16"], default="f16")
        p.add_argument("--gguf-dir", default=str(GGUF_DIR))
        p.add_argument("--ngl", type=int, default=99)
        p.add_argument("--gen", "-n", type=int, default=32, help="tokens generated (tg test)")

    for name in ("build", "all"):
        build_args(sub.add_parser(name) if name == "build" else (p_all := sub.add_parser(name)))
    for p in (sub.add_parser("bench"), p_all):
        if p is not p_all:
            p.add_argument("--cpu", action="store_true", help="use the CPU-only build")
        model_args(p)
        p.add_argument("--prompt", "-p", type=int, default=24, help="prompt tokens (pp test; 0: none)")
        p.add_argument("--reps", "-r", type=int, default=3)
        p.add_argument("--depth", "-d", type=int, default=0, help="llama-bench -d (context already in the cache)")
        p.add_argument("--threads", "-t", type=int, default=16)
        p.add_argument("--budgets", help=f"expert fractions on the GPU (default {','.join(map(str, BUDGETS))})")
        p.add_argument("--ncmoe", help="explicit --n-cpu-moe values instead of the budgets")
        p.add_argument("--extra", help="more llama-bench arguments, e.g. '-fa 1'")
        p.add_argument("--timeout", type=int, default=240, help="seconds per llama-bench process")
        p.add_argument("--results", default=str(RESULTS))
        p.add_argument("--no-save", action="store_true")
    p = sub.add_parser("ingest", help="append a device call's $OUT/llama_cpp_rows.jsonl to the results here")
    p.add_argument("jsonl")
    p.add_argument("--results", default=str(RESULTS))
    p = sub.add_parser("tokens")
    p.add_argument("--cpu", action="store_true")
    model_args(p)
    p.add_argument("--prompts", type=int, default=6)
    args = ap.parse_args(argv)
    if getattr(args, "model", None) is not None and args.random_init is None:
        from moelab.export import gguf as export

        args.random_init = export.needs_random_init(args.model)
    if args.step == "prepare":
        prepare(args)
    elif args.step == "build":
        build(args)
    elif args.step == "bench":
        bench(args)
    elif args.step == "all":
        build(args)
        bench(args)
    elif args.step == "ingest":
        ingest(args)
    elif args.step == "tokens":
        tokens(args)


if __name__ == "__main__":
    main()
