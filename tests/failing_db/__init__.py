"""A database backend for the tests (``ENGINE = "tests.failing_db"``): SQLite, whose
``close()`` fails while :data:`base.CLOSE_FAILS` is set, as a driver does that closes the
socket and reports the error it met (a server gone meanwhile)."""
