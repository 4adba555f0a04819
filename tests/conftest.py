"""Shared test configuration: hypothesis profiles, the --device option, markers."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile("dev", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# The suite's tensors are tiny; on small shared machines torch's intra-op thread pool costs far
# more than it saves (a (256, 2) @ (2, 2) matmul measured tens of ms with 2 threads under load,
# microseconds with 1). One thread is also deterministic. FLOWGEN_TEST_THREADS overrides it.
torch.set_num_threads(int(os.environ.get("FLOWGEN_TEST_THREADS", "1")))


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device the tests run on (cpu, cuda, cuda:1, ...)")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """The device chosen with --device; skips the test when it is a CUDA device and none is present."""
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA device requested but not available")
    return dev


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
