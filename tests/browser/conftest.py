"""Fixtures for the real-browser tests: headless Debian Chromium (Playwright), a baseline of the console
errors a stock ComfyUI page logs without the pack, and a server with the pack and the tiny test nodes.

Every test runs on each frontend of browser_support.FRONTENDS (the host's pinned frontend and a newer
release served with --front-end-root), one server (and one baseline) per frontend; the frontend is in the
test's name, e.g. ``test_x[frontend-1.58.1]``.

A test that asks for the ``nodes`` fixture runs with classic nodes and with the frontend's "Nodes 2.0" (Vue
nodes, setting ``Comfy.VueNodes.Enabled``) on the frontends it is tested on (browser_support.VUE_NODES_FRONTENDS):
ids ``classic-nodes`` and ``nodes-2.0``. Every page is opened with the mode set explicitly (classic unless the test
asks), so a test's setting never leaks into the next test on the same server.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser_support as bs  # noqa: E402


def pytest_generate_tests(metafunc):
    """The ``frontend`` parameter of every browser test (through the server fixture)."""
    if "frontend" in metafunc.fixturenames:
        metafunc.parametrize("frontend", bs.FRONTENDS, ids=[f"frontend-{v}" for v in bs.FRONTENDS],
                             scope="package", indirect=True)
    if "nodes" in metafunc.fixturenames:
        metafunc.parametrize("nodes", bs.NODE_MODES, ids=["classic-nodes", "nodes-2.0"])


def pytest_collection_modifyitems(config, items):
    """Nodes 2.0 runs on a frontend where that mode is not tested (the pinned 1.32.9) are not collected."""
    def impossible(item):
        params = getattr(getattr(item, "callspec", None), "params", {})
        return params.get("nodes") == "vue" and params.get("frontend") not in bs.VUE_NODES_FRONTENDS

    dropped = [item for item in items if impossible(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not impossible(item)]


@pytest.fixture
def nodes(request) -> str:
    """"classic" (LiteGraph-drawn nodes) or "vue" (Nodes 2.0); parametrised in pytest_generate_tests."""
    return request.param


@pytest.fixture(scope="package")
def frontend(request) -> str:
    """The frontend version the package's server serves (parametrised in pytest_generate_tests)."""
    return request.param


@pytest.fixture(scope="package")
def browser():
    if not Path(bs.CHROMIUM).exists():
        pytest.fail(f"{bs.CHROMIUM} is missing: run `make setup-test` (installs Debian's chromium) or set GS_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=bs.CHROMIUM, args=bs.CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture(scope="package")
def server(browser, frontend):
    """The server with the pack and the tiny test nodes (started while the baseline is taken)."""
    instance = bs.new_server(with_pack=True, frontend=frontend)
    try:
        yield instance  # the baseline fixture waits for it
    finally:
        instance.stop()


@pytest.fixture(scope="package")
def baseline(browser, server, frontend) -> set[str]:
    """Errors a page load logs on the same host and frontend with every custom node disabled (a stock
    ComfyUI page already logs a few 404s and a frontend TypeError); tests fail only on errors beyond these."""
    stock = bs.new_server(with_pack=False, frontend=frontend)
    try:
        page = bs.Page(browser, stock.wait_ready())
        page.open()
        page.screenshot("00-baseline-without-pack")
        errors = {bs.normalise(e) for e in page.errors}
        page.close()
    finally:
        stock.stop()
    server.wait_ready()
    return errors


@pytest.fixture
def page(browser, server, baseline, request):
    """A fresh page on the server (after the baseline is known), in the node mode the test asks for, with the
    server's output cache emptied (browser_support.empty_cache)."""
    mode = request.getfixturevalue("nodes") if "nodes" in request.fixturenames else "classic"
    bs.set_node_mode(server, mode)
    bs.empty_cache(server)
    instance = bs.Page(browser, server)
    instance.open()
    assert bs.node_mode(instance) == mode
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def shared_page(browser, server, baseline):
    """One page for a module's tests (each test loads its own graph into it), with classic nodes."""
    bs.set_node_mode(server, "classic")
    instance = bs.Page(browser, server)
    instance.open()
    yield instance
    instance.close()
