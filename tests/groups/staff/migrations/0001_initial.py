from typing import ClassVar

import django.contrib.auth.models
from django.db import migrations


class Migration(migrations.Migration):
    initial = True
    dependencies: ClassVar = [("auth", "0012_alter_user_first_name_max_length")]
    operations: ClassVar = [
        migrations.CreateModel(
            name="Staff",
            fields=[],
            options={"proxy": True, "indexes": [], "constraints": []},
            bases=("auth.user",),
            managers=[("objects", django.contrib.auth.models.UserManager())],
        ),
    ]
