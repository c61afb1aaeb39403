"""pytest's side of the e2e tests: where the binaries and models are, the fixtures that start and
stop processes, and the stderr of those processes in the report of a test that fails.

  pytest tests/e2e                                   # from the repo root, after a build
  pytest tests/e2e/pd_faults_test.py -k held_blocks  # one test
  pytest tests/e2e --bin-dir build-tsan/apps --models /path/to/models
"""
import os

import pytest

from server_util import Proc, start_server

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# Where the C++ tests find them too (tests/test_util.h).
MODELS = os.environ.get("BATON_MODELS_DIR", os.path.join(os.path.dirname(ROOT), "shared", "models"))
# What the report of a failed test shows: the processes alive when it began and those it started.
SEEN = pytest.StashKey()


def pytest_addoption(parser):
    group = parser.getgroup("baton", "baton e2e tests")
    group.addoption("--bin-dir", default=os.path.join(ROOT, "build", "apps"),
                    help="the directory of baton-server, baton-proxy, ... (default: %(default)s)")
    group.addoption("--models", default=MODELS, help="the reference models (default: %(default)s)")
    # soak_test.py; the defaults are the bounded soak that ctest runs (bench/soak.sh runs longer).
    group.addoption("--soak-requests", type=int, default=1000, help="soak: requests to send (default: %(default)s)")
    group.addoption("--soak-concurrency", type=int, default=64, help="soak: requests in flight (default: %(default)s)")
    group.addoption("--soak-chaos-interval-s", type=float, default=0.5,
                    help="soak: seconds between two kill -9s (default: %(default)s)")
    group.addoption("--soak-kv-timeout-s", type=float, default=10,
                    help="soak: the instances' kv_timeout_s (default: %(default)s)")
    group.addoption("--soak-json", default="", help="soak: also write the result to this file")


@pytest.fixture(scope="session")
def bin_dir(pytestconfig):
    return pytestconfig.getoption("--bin-dir")


@pytest.fixture(scope="session")
def models_dir(pytestconfig):
    return pytestconfig.getoption("--models")


@pytest.fixture(scope="session")
def tiny_qwen3(models_dir):
    return os.path.join(models_dir, "tiny-qwen3")


@pytest.fixture(scope="module")
def server(bin_dir, tiny_qwen3):
    """One colocated baton-server on tiny-qwen3 that a module's tests share; it must exit cleanly."""
    srv = start_server(bin_dir, tiny_qwen3)
    yield srv
    rc = srv.stop()
    assert rc in (0, None), f"baton-server exited with {rc}:\n{srv.stderr_tail(30)}"


@pytest.fixture(scope="module")
def client(server):
    """The official OpenAI client of `server`."""
    import openai  # here, not at the top: it takes a second to import, and most tests do without
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(autouse=True)
def stop_leftover_processes():
    """Stops the processes a test started and did not stop (it failed half way, say); those of
    module fixtures, started before this, outlive it."""
    first = len(Proc.started)
    yield
    for p in Proc.started[first:]:
        p.stop()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[SEEN] = (len(Proc.started), [p for p in Proc.started if p.alive()])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and SEEN in item.stash:
        first, alive = item.stash[SEEN]
        for p in alive + Proc.started[first:]:
            if p.stderr_lines:
                report.sections.append((f"stderr of {p.name} (port {p.port}, exit {p.proc.poll()})", p.stderr_tail()))
    return report
