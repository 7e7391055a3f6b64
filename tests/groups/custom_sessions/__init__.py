"""A Django app with a session model of its own (``CustomSession``, subclassing
``AbstractBaseSession``) and its engine (``SESSION_ENGINE =
"tests.groups.custom_sessions.backends"``), as Django's "extending database-backed
session engines" has it -- in place of ``django.contrib.sessions``, which such a site
need not install. Installed only in the servers of the tests that ask for it."""
