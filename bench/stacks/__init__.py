"""The echo servers bench/compare.py measures, one module (or Django project) per stack."""
