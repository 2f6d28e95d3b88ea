"""Production settings: the base settings behind a TLS-terminating proxy, hardened
so that `manage.py check --deploy` has nothing to report."""
from demo import settings as _base

# The base settings, as `from demo.settings import *` would give them to Django (which
# reads only the upper-case names of a settings module), without a wildcard import.
globals().update((name, value) for name, value in vars(_base).items() if name.isupper())

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = True
SECURE_HSTS_SECONDS = 31536000
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
