"""Settings of the pydeploy demo site: one module for every environment, driven by
environment variables (the deployer writes them to ``shared/.env`` and the app server
puts them in the process environment).

Environment variables:

- ``DJANGO_SECRET_KEY``: required unless DEBUG is on.
- ``DJANGO_DEBUG``: 1/true/yes/on to enable debug mode (default off).
- ``DJANGO_ALLOWED_HOSTS``: comma-separated host names (default none; localhost with DEBUG).
- ``DJANGO_CSRF_TRUSTED_ORIGINS``: comma-separated origins, e.g. https://example.org.
- ``DJANGO_HTTPS``: 1/true/yes/on when the site is served over HTTPS (redirects, secure
  cookies, HSTS; the TLS proxy in front must set X-Forwarded-Proto).
- ``DJANGO_HSTS_PRELOAD``: also ask for HSTS preloading (default off; only with HTTPS).
- ``DATABASE_URL``: a PostgreSQL database, ``postgres://user:password@host:5432/name``
  (the password percent-encoded); or the ``PG*`` variables of libpq (``PGDATABASE``,
  ``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGPASSWORD``, ``PGSSLMODE``...), which psycopg
  reads itself: ``PGDATABASE`` set means PostgreSQL. Neither set: SQLite.
- ``DJANGO_DATABASE_PATH``: the SQLite database (default ``<release>/data/db.sqlite3``).
- ``DJANGO_STATIC_ROOT``: where collectstatic writes (default ``<release>/staticfiles``).
- ``DJANGO_MEDIA_ROOT``: uploaded files (default ``<release>/media``).
- ``DJANGO_LOG_LEVEL``: level of the log written to stderr (default INFO).
"""
import logging
import os
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

# The release root: manage.py, VERSION and the ``data`` link to shared/data live here.
BASE_DIR = Path(__file__).resolve().parent.parent

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def env_bool(name, default=False):
    """A boolean from the environment; anything but a known spelling is an error, so
    that a typo such as DJANGO_HTTPS=ture does not silently turn a protection off."""
    value = os.environ.get(name)
    if value is None:
        return default
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(
        "%s must be one of 1/true/yes/on or 0/false/no/off, not %r" % (name, value)
    )


def env_list(name):
    """A comma-separated list from the environment, blanks dropped."""
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def read_version(path):
    """The release version: the VERSION file written by scripts/build-dist."""
    try:
        return path.read_text(encoding="utf-8").strip() or "dev"
    except FileNotFoundError:
        return "dev"


# Read once at startup; the home page and /health/ show it.
APP_VERSION = read_version(BASE_DIR / "VERSION")
# A release that holds an UNHEALTHY file (scripts/build-dist --variant unhealthy) fails its
# health check on purpose: /health/ answers 500.
APP_UNHEALTHY = (BASE_DIR / "UNHEALTHY").exists()

DEBUG = env_bool("DJANGO_DEBUG")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set: set it in the environment (50 or more random "
            "characters, e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(50))'), "
            "or set DJANGO_DEBUG=1 for local development."
        )
    # Development only: a fixed key, so sessions survive a restart of runserver.
    SECRET_KEY = "django-insecure-pydeploy-demo-development-key-never-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS")
if DEBUG and not ALLOWED_HOSTS:
    ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]"]

CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "guestbook",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_from_env():
    """The database: PostgreSQL from DATABASE_URL or the PG* variables (several app hosts
    share it), else SQLite in the shared data directory (one host): the release directory
    is read-only for the app user, <release>/data is a link to /srv/<app>/shared/data,
    which it may write."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            # The URL holds a password: name the scheme only.
            raise ImproperlyConfigured(
                "DATABASE_URL must be a postgres:// or postgresql:// URL, not %s://..." % parts.scheme
            )
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ImproperlyConfigured("DATABASE_URL names no database (postgres://user:password@host:port/NAME)")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            # ?sslmode=verify-full&sslrootcert=... go to libpq as they are.
            "OPTIONS": dict(parse_qsl(parts.query)),
            # Check a kept connection before use: a database restart does not fail requests.
            "CONN_HEALTH_CHECKS": True,
        }
    if os.environ.get("PGDATABASE"):
        # libpq reads PGHOST, PGPORT, PGUSER, PGPASSWORD and the rest from the environment.
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ["PGDATABASE"],
            "CONN_HEALTH_CHECKS": True,
        }
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DATABASE_PATH") or BASE_DIR / "data" / "db.sqlite3",
        "OPTIONS": {
            # Several app server workers share the file: wait for a lock rather than
            # fail at once, and take the write lock when a transaction starts so that
            # two writers never deadlock on a read-to-write upgrade.
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
        },
    }


DATABASES = {"default": database_from_env()}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Static files: collectstatic copies them, with content-hashed names and a manifest, to
# STATIC_ROOT (the deployer creates <release>/staticfiles writable by the app user) and
# nginx serves that directory at /static/.
STATIC_URL = "/static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT") or BASE_DIR / "staticfiles")
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT") or BASE_DIR / "media")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}

# Security headers, on with or without HTTPS.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

HTTPS = env_bool("DJANGO_HTTPS")
if HTTPS:
    # TLS ends at the proxy in front of nginx or at nginx itself, which must set
    # X-Forwarded-Proto (and strip any the client sent).
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 365 * 24 * 60 * 60
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD")
    # Preloading is a lasting commitment for the whole domain, made on purpose
    # (DJANGO_HSTS_PRELOAD=1), not a default worth a warning.
    SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
else:
    # Plain HTTP (the local demo on 127.0.0.1, or a site whose TLS is not set up yet):
    # HSTS (W004), the HTTPS redirect (W008) and secure-only cookies (W012, W016) would
    # break the site, so these checks of `check --deploy` are silenced, and only these.
    # Set DJANGO_HTTPS=1 as soon as the site is served over HTTPS.
    SILENCED_SYSTEM_CHECKS = [
        "security.W004",
        "security.W008",
        "security.W012",
        "security.W016",
    ]

# Everything goes to stderr, which the app server and supervisor collect.
LOG_LEVEL = os.environ.get("DJANGO_LOG_LEVEL", "").strip().upper() or "INFO"
if not isinstance(logging.getLevelName(LOG_LEVEL), int):
    raise ImproperlyConfigured(
        "DJANGO_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not %r" % LOG_LEVEL
    )
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "stream": "ext://sys.stderr",
            "formatter": "plain",
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Django's own loggers propagate to the root handler; no handlers of their own,
        # so nothing is logged twice.
        "django": {"level": LOG_LEVEL, "propagate": True},
    },
}
