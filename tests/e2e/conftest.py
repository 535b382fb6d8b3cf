"""Fixtures for the end-to-end tests: a real `ferry serve` process on a free port with its own
data directory, and the mock upstream it forwards to."""

import json
import os
import pathlib
import queue
import re
import secrets
import subprocess
import threading

import pytest

from mock_upstream import MockUpstream

ROOT = pathlib.Path(__file__).resolve().parents[2]
ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def make_key():
    """A key of Ferry's format, `fy_<12>_<32>`, made the way Ferry makes them."""
    part = lambda n: "".join(ALPHABET[b & 31] for b in secrets.token_bytes(n))  # noqa: E731
    return f"fy_{part(12)}_{part(32)}"


def ferry_binary():
    path = pathlib.Path(os.environ.get("FERRY_BIN", ROOT / "target" / "debug" / "ferry"))
    if not path.exists():
        pytest.fail(f"no ferry binary at {path}: run `cargo build` first (or set FERRY_BIN)")
    return path


class Ferry:
    """A running `ferry serve`: its base URL, operator key, and everything it printed."""

    def __init__(self, data_dir, env=None, args=("--no-local-models",), start_timeout=30, operator_key=None):
        self.data_dir = data_dir
        self.operator_key = operator_key or make_key()
        self.lines = []
        environment = {**os.environ, "FERRY_OPERATOR_KEY": self.operator_key, "FERRY_LOG": "warn", **(env or {})}
        self.process = subprocess.Popen(
            [str(ferry_binary()), "serve", "--addr", "127.0.0.1:0", "--data-dir", str(data_dir), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=environment,
        )
        ready = queue.Queue()
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        try:
            self.url = ready.get(timeout=start_timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError("ferry did not start:\n" + "\n".join(self.lines))
        if self.url is None:
            raise RuntimeError("ferry exited:\n" + "\n".join(self.lines))

    def _read(self, ready):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("listening on "):
                ready.put(line.split()[-1])
        ready.put(None)

    def kill(self):
        """SIGKILL: no shutdown, no flushing — what a crash looks like."""
        self.process.kill()
        self.process.wait(timeout=10)

    def alive(self):
        return self.process.poll() is None

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def dashboard_series():
    """The metric families the Grafana dashboard (docs/grafana/ferry.json) queries."""
    dashboard = json.loads((ROOT / "docs" / "grafana" / "ferry.json").read_text())
    return {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"\bferry_[a-z_]+", target["expr"])
    }


# On pytest-xdist's workers (`-n`, as tests/run.sh runs them) a file's tests stay together on
# one worker, in order, since they share the file's servers; but these files' tests each start
# their own, so they are spread over the workers test by test.
SPREAD_TEST_BY_TEST = {"test_money.py", "test_scale_to_zero.py"}

try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # run without pytest-xdist: one process, nothing to schedule
    pass
else:

    class FileOrTestScheduling(LoadScopeScheduling):
        """A work unit is a file, or a single test of a file in SPREAD_TEST_BY_TEST. (Not
        `--dist loadgroup`: pytest-xdist 3.8 under pytest 9 ignores xdist_group marks.)"""

        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            return nodeid if path.rsplit("/", 1)[-1] in SPREAD_TEST_BY_TEST else path

    def pytest_xdist_make_scheduler(config, log):
        return FileOrTestScheduling(config, log)


def model_cache():
    """Pulled models are shared by every test run (and with the Rust tests)."""
    return os.environ.get("FERRY_MODELS_DIR", str(ROOT / "target" / "ferry-models"))


@pytest.fixture(scope="session")
def upstream():
    mock = MockUpstream().start()
    yield mock
    mock.stop()


@pytest.fixture(scope="session")
def ferry(tmp_path_factory):
    server = Ferry(tmp_path_factory.mktemp("ferry-data"))
    yield server
    server.stop()
    assert server.process.returncode == 0, "ferry should stop cleanly on SIGTERM:\n" + "\n".join(server.lines)
