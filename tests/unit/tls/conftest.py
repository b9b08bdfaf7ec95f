from __future__ import annotations

from pathlib import Path

import pytest

from meta1py_testing.certs import Pki, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One test PKI for the whole session (read-only for the tests)."""
    return make_pki(Path(tmp_path_factory.mktemp("pki")))
