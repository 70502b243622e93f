import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

harness.put_host_first()


@pytest.fixture(scope="session")
def host(tmp_path_factory):
    """A real ComfyUI host with the pack and the tiny test nodes loaded (once per session)."""
    workdir = tmp_path_factory.mktemp("host")
    instance = harness.Host(workdir)
    yield instance
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def captured():
    store = harness.test_nodes_module().CAPTURED
    store.clear()
    return store


def pytest_collection_modifyitems(session, config, items):
    """Browser tests run last: Playwright's sync API leaves an asyncio loop marked as running in this
    thread, after which the in-process host's ``asyncio.run`` calls would fail."""
    browser = Path(__file__).resolve().parent / "browser"
    items.sort(key=lambda item: Path(str(item.fspath)).resolve().is_relative_to(browser))
