from django.contrib.auth.models import User


class Staff(User):
    class Meta:
        proxy = True
