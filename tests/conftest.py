"""Suite-wide settings."""

from hypothesis import settings

# A loaded 2-core CI machine makes per-example timing meaningless: no deadlines.
settings.register_profile("mpa", deadline=None, print_blob=True)
settings.load_profile("mpa")
