"""What the pack costs to load and what it publishes: open_clip stays unimported until a CLIP node needs it, the
registry archive holds only what users run, the registry metadata is filled, and the README's capability table
names exactly the pack's nodes."""
import importlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from devkit import harness

ROOT = harness.ROOT
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# comfy-cli, installed by `make setup-test` into a tool environment of its own (scripts/setup.sh)
COMFY_CLI = Path(os.environ.get("GS_COMFY_CLI", ROOT / ".venv" / "tools" / "comfy-cli" / "bin" / "comfy"))


def test_loading_the_pack_does_not_import_open_clip():
    """A fresh host loads the pack (as ComfyUI does at start) without importing open_clip, and the OpenCLIP
    Loader's architecture list is there all the same. In a subprocess: this test session may have imported it."""
    script = (
        "import sys\nfrom devkit import harness\n"
        "host = harness.Host(harness.temp_workdir())\n"
        "spec = host.nodes.NODE_CLASS_MAPPINGS['GS_OpenCLIPLoader'].INPUT_TYPES()['required']['architecture']\n"
        "options = spec[0] if isinstance(spec[0], list) else spec[1]['options']\n"
        "print('open_clip imported:', 'open_clip' in sys.modules)\n"
        "print('architectures:', len(options), 'ViT-B-32' in options)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "open_clip imported: False" in result.stdout, result.stdout
    count = int(re.search(r"architectures: (\d+) True", result.stdout).group(1))
    assert count > 50, result.stdout


def test_the_architecture_list_read_without_open_clip_is_open_clips_own(host, monkeypatch):
    """nodes.toolkit.open_clip_model.architectures() reads open_clip's model configs without importing it; the list must be
    open_clip.list_models() exactly (names and order), as imported in a fresh process (a test session may have
    registered tiny test configs)."""
    open_clip_model = harness.loaded_module("nodes.toolkit.open_clip_model")
    listed = subprocess.run([sys.executable, "-c", "import open_clip; print('\\n'.join(open_clip.list_models()))"],
                            capture_output=True, text=True, timeout=300, check=True).stdout.split()
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    assert open_clip_model.architectures() == listed
    assert "open_clip" not in sys.modules


# ----------------------------------------------------------------------------------------------------------
# The registry archive


def git_files(*args: str) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", *args], cwd=ROOT, capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout: the archive is built from git's file list")
    return sorted(line for line in out.stdout.decode().splitlines() if line)


def archive_files() -> list[str]:
    """What `comfy node pack` zips: the git-tracked files (comfy-cli runs `git ls-files`) minus those matching
    .comfyignore's gitignore-style patterns, matched here by git itself."""
    ignored = set(git_files("--cached", "--ignored", "--exclude-from=.comfyignore"))
    return [name for name in git_files("--cached") if name not in ignored]


def test_the_registry_archive_holds_only_what_users_run():
    files = archive_files()
    development = [name for name in files
                   if name.split("/")[0] in ("tests", "devkit", "bench", "scripts", ".ci")
                   or name in ("Makefile", "requirements-test.txt", ".gitignore")]
    assert development == [], development
    must = ["__init__.py", "LICENSE", "README.md", "pyproject.toml", "requirements.txt"]
    must += [str(p.relative_to(ROOT)) for p in ROOT.glob("nodes/**/*.py")] + [str(p.relative_to(ROOT))
                                                                         for p in ROOT.glob("guidance/*.py")]
    must += [str(p.relative_to(ROOT)) for p in (ROOT / "web").rglob("*") if p.is_file()]
    must += [str(p.relative_to(ROOT)) for p in (ROOT / "example_workflows").rglob("*") if p.is_file()]
    readme = (ROOT / "README.md").read_text()
    must += re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)  # the pictures the README shows
    tracked = set(git_files("--cached"))
    missing = [name for name in must if name in tracked and name not in files]
    assert missing == [], f"files users need are left out of the archive: {missing}"


def test_comfy_node_pack_zips_the_files_the_archive_test_computes(tmp_path):
    """The real `comfy node pack` (comfy-cli, installed by `make setup-test`) on a clone of this commit."""
    if not COMFY_CLI.exists():
        pytest.skip(f"comfy-cli is not installed at {COMFY_CLI} (make setup-test installs it)")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    result = subprocess.run([str(COMFY_CLI), "--skip-prompt", "node", "pack"], cwd=clone, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    with zipfile.ZipFile(clone / "node.zip") as archive:
        zipped = sorted(archive.namelist())
    committed = subprocess.run(["git", "ls-files"], cwd=clone, capture_output=True, text=True, check=True).stdout
    ignored = subprocess.run(["git", "ls-files", "-ci", "--exclude-from=.comfyignore"], cwd=clone,
                             capture_output=True, text=True, check=True).stdout.split("\n")
    assert zipped == sorted(set(committed.splitlines()) - set(ignored))


def test_registry_metadata_is_filled():
    """[tool.comfy] Icon is a URL of an image committed here (the raw URL under the Repository address), square
    and at least 400 px as the registry asks; the classifiers are ones the registry accepts."""
    comfy = PYPROJECT["tool"]["comfy"]
    repository = PYPROJECT["project"]["urls"]["Repository"]
    owner_repo = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", repository).group(1)
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    assert comfy["Icon"].startswith(prefix), comfy["Icon"]
    icon = ROOT / comfy["Icon"][len(prefix):]
    assert icon.is_file() and icon.suffix in (".png", ".jpg", ".svg", ".gif"), icon
    with Image.open(icon) as image:
        assert image.size[0] == image.size[1] >= 400, image.size
    assert comfy["Icon"][len(prefix):] in archive_files() or not (ROOT / ".git").exists()
    classifiers = PYPROJECT["project"]["classifiers"]
    assert "Operating System :: OS Independent" in classifiers
    accelerators = {"GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend",
                    "GPU :: Apple Metal"}
    for classifier in classifiers:
        if classifier.startswith("Environment ::"):
            assert classifier[len("Environment :: "):] in accelerators, classifier
        if classifier.startswith("Operating System ::"):
            assert classifier[len("Operating System :: "):].startswith(("Microsoft", "POSIX", "MacOS",
                                                                        "OS Independent")), classifier


# ----------------------------------------------------------------------------------------------------------
# The README's capability table


def capability_table_ids(readme: str) -> set[str]:
    table = readme.split("| capability |", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"`(GS_\w+)`", table))


def test_the_readme_capability_table_names_exactly_the_packs_nodes(host):
    extension = harness.loaded_module("nodes.extension")
    registered = {node.GET_SCHEMA().node_id for node in extension.NODES}
    assert registered and registered <= set(host.nodes.NODE_CLASS_MAPPINGS)
    named = capability_table_ids((ROOT / "README.md").read_text())
    assert sorted(named - registered) == [], "the README names nodes the pack does not register"
    assert sorted(registered - named) == [], "the README's capability table misses registered nodes"
