from __future__ import annotations

from collections.abc import Iterator

import pytest

from dwebsocket.protocol import connection, deflate, frames
from tests.requirements import c_extension


@pytest.fixture(scope="module", params=["c", "python"])
def masking(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a module's tests with the C accelerator and with the pure-Python fallback."""
    if request.param == "python":
        saved = frames.apply_mask, connection.unmask, connection._scan
        codecs = deflate.Deflater, deflate.Inflater
        frames.apply_mask, connection.unmask = frames._py_apply_mask, frames._py_unmask
        connection._scan = None
        deflate.Deflater, deflate.Inflater = deflate.PyDeflater, deflate.PyInflater
        try:
            yield "python"
        finally:
            frames.apply_mask, connection.unmask, connection._scan = saved
            deflate.Deflater, deflate.Inflater = codecs
    else:
        c_extension(frames._c_apply_mask, "_speedups")
        assert frames.apply_mask is frames._c_apply_mask
        assert connection.unmask is frames._c_unmask
        assert connection._scan is frames.scan_messages is not None
        c_extension(deflate._codecs, "_deflate")
        assert deflate.Deflater is deflate._codecs.Deflater
        yield "c"
