"""Layout rules: guidance/ never imports the host; __init__.py does nothing at import."""
import subprocess
import sys
import textwrap

from devkit.harness import ROOT

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes",
               "execution", "server", "latent_preview"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError("blocked host module: " + name)
    sys.meta_path.insert(0, Block())
""")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=str(ROOT), capture_output=True, text=True,
                          timeout=120)


def test_guidance_imports_without_the_host():
    modules = sorted(p.stem for p in (ROOT / "guidance").glob("*.py") if p.stem != "__init__")
    code = "import importlib\n" + "".join(f"importlib.import_module('guidance.{m}')\n" for m in modules)
    code += "print('ok')\n"
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_the_blocker_really_blocks():
    result = run_python("import nodes\n")
    assert result.returncode != 0 and "blocked host module" in result.stderr


def test_pack_init_imports_nothing_heavy():
    code = textwrap.dedent(f"""
        import importlib.util, sys
        before = set(sys.modules)
        spec = importlib.util.spec_from_file_location("gs_pack", r"{ROOT / '__init__.py'}",
                                                      submodule_search_locations=[r"{ROOT}"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        new = sorted(set(sys.modules) - before)
        assert module.WEB_DIRECTORY == "./web", module.WEB_DIRECTORY
        assert callable(module.comfy_entrypoint)
        heavy = [m for m in new if m.split(".")[0] in ("torch", "numpy", "open_clip", "lpips", "requests", "urllib3")]
        assert not heavy, heavy
        print("ok")
    """)
    result = run_python(code)
    assert result.returncode == 0, result.stderr
