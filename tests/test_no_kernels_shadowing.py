"""The repository's ``kernels/`` directory is ``fastattn.kernels``; it must never be imported as
the top-level ``kernels`` module, which is Hugging Face's package (a dependency of
transformers, imported by its model code). ``kernels/__init__.py`` hands a top-level import
over to the installed package; these tests run code from the repository root, where the
root is on ``sys.path`` exactly as for ``python -m pytest`` or a REPL started there."""
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
PROJECT_KERNELS = REPOSITORY / "kernels"


def _installed_kernels_dir() -> Path | None:
    try:
        dist = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(dist.locate_file("kernels")).resolve()


INSTALLED = _installed_kernels_dir()

# CI pins transformers together with the ``kernels`` distribution (.ci/constraints.txt): there
# these tests must run, not skip.
needs_hf_kernels = pytest.mark.skipif(
    INSTALLED is None and os.environ.get("CI") != "true",
    reason="Hugging Face's `kernels` distribution is not installed (CI installs it with transformers)")


def _run_from_root(code: str) -> subprocess.CompletedProcess:
    # `python -c` puts the current directory first on sys.path: the shadowing setting.
    return subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True,
                          timeout=300)


@needs_hf_kernels
def test_import_kernels_in_the_test_process_is_the_installed_package():
    import kernels

    assert INSTALLED is not None, "the `kernels` distribution must be installed in CI"
    assert Path(kernels.__file__).resolve().parent == INSTALLED
    assert Path(kernels.__file__).resolve().parent != PROJECT_KERNELS
    assert hasattr(kernels, "kernelize")  # Hugging Face's API, not fastattn's kernel modules


@needs_hf_kernels
def test_import_kernels_from_the_repository_root_finds_the_installed_package():
    proc = _run_from_root("import sys, kernels; print(sys.path[0] == ''); print(kernels.__file__)")
    assert proc.returncode == 0, proc.stderr
    root_first, path = proc.stdout.split()
    assert root_first == "True"
    assert Path(path).resolve().parent == INSTALLED


def test_without_the_installed_package_top_level_kernels_is_missing():
    # Keep the repository root on sys.path but drop every site directory: the project's
    # directory must not pose as `kernels`.
    proc = _run_from_root(
        "import sys\n"
        "sys.path[:] = [p for p in sys.path if 'site-packages' not in p and 'dist-packages' not in p]\n"
        "try:\n"
        "    import kernels\n"
        "except ModuleNotFoundError as exc:\n"
        "    print('missing', exc.name, 'kernels' in sys.modules)\n"
        "else:\n"
        "    print('imported', kernels.__file__)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["missing", "kernels", "False"]


def test_fastattn_kernels_is_the_repository_directory():
    import fastattn.kernels.attention

    assert Path(fastattn.kernels.attention.__file__).resolve().parent == PROJECT_KERNELS
    assert sys.modules.get("kernels") is None or Path(sys.modules["kernels"].__file__).resolve().parent != PROJECT_KERNELS


_MODELS_FROM_ROOT = """
import json, sys
sys.path.insert(1, {tests!r})
import torch
import fastattn, fastattn.integrations.transformers
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
from transformers.models.llama.modeling_llama import LlamaAttention
from hf_models import batch, make_model
import kernels

ids, mask = batch()
errors = {{}}
llama = make_model("llama")
with torch.no_grad():
    eager = llama(ids, attention_mask=mask).logits
    llama.set_attn_implementation("fastattn")
    errors["llama_attention"] = (llama(ids, attention_mask=mask).logits - eager)[mask.bool()].abs().max().item()
gpt2 = make_model("gpt2")
with torch.no_grad():
    eager = gpt2(ids, attention_mask=mask).logits
    report = fastattn.patch(gpt2, attention=False, ffn=True)
    errors["gpt2_mlp"] = (gpt2(ids, attention_mask=mask).logits - eager)[mask.bool()].abs().max().item()
print(json.dumps(dict(kernels=kernels.__file__, errors=errors,
                      mlp_swapped=sum(orig == "GPT2MLP" for _, orig, _ in report.swapped),
                      attention_class=type(llama.model.layers[0].self_attn).__name__)))
"""


@needs_hf_kernels
def test_transformers_models_work_from_the_repository_root():
    """GPT-2's MLP swapped by fastattn.patch and Llama's attention on attn_implementation="fastattn",
    in a process started at the repository root with Hugging Face's `kernels` installed."""
    proc = _run_from_root(_MODELS_FROM_ROOT.format(tests=str(REPOSITORY / "tests")))
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["kernels"]).resolve().parent == INSTALLED
    assert result["mlp_swapped"] == 2  # both layers
    assert result["attention_class"] == "LlamaAttention"
    assert result["errors"]["llama_attention"] < 1e-4
    assert result["errors"]["gpt2_mlp"] < 1e-4
