"""A Django app with a proxy of the user model (``Staff``), as a site with a staff admin
has: its saves and deletes reach ``post_save``/``post_delete`` with ``Staff`` as sender.
Installed only in the servers of the tests that ask for it."""
