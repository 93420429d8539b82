"""Suite-wide settings."""

from hypothesis import settings

# A loaded CI host makes per-example timing meaningless: no deadlines.
settings.register_profile("mpa", deadline=None, print_blob=True)
settings.load_profile("mpa")
