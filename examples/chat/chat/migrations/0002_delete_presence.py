# ruff: noqa: RUF012
# Who is here now comes from dwebsocket.groups.presence, not from the database.
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("chat", "0001_initial")]

    operations = [migrations.DeleteModel(name="Presence")]
