"""The shared server suite (``tests/integration/test_default_backend.py``) on ASGI servers,
with sync and with async views (the ``server`` fixture of ``tests/asgi/conftest.py``)."""

from __future__ import annotations

import pytest

from tests.integration.test_default_backend import (  # noqa: F401 - collected here
    test_a_request_pipelined_before_an_upgrade_is_answered_first,
    test_an_http_1_0_upgrade_is_refused_400,
    test_an_upgrade_with_a_body_is_refused_400,
    test_an_upgrade_without_one_host_is_refused_400,
    test_client_closes_with_code_and_reason,
    test_compression_negotiated_unless_the_client_declines,
    test_connection_closed_escaping_the_view_is_a_normal_end,
    test_echo,
    test_fragmented_messages,
    test_handshake_and_first_frame_in_one_segment,
    test_nothing_after_the_close_frame_when_the_client_closes,
    test_nothing_after_the_close_frame_when_the_server_closes,
    test_one_mebibyte_both_ways,
    test_over_the_message_limit_closes_1009,
    test_ping_pong,
    test_plain_http,
    test_protocol_error_closes_1002_and_eof,
    test_read_and_count_messages,
    test_refused_before_accepting,
    test_refused_before_accepting_with_a_streamed_body,
    test_refused_handshakes,
    test_same_origin_allowed,
    test_server_closes_with_code_and_reason,
    test_server_ping_reaches_the_client,
    test_sessions_end_without_noise_in_the_server_log,
    test_subprotocol,
    test_view_error_closes_1011,
    test_view_returning_none_untouched_accepts_and_closes,
)

pytestmark = pytest.mark.server
