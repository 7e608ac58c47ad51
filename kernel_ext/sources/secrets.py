"""Datasource passwords: where they come from, how they are encrypted, and how they are kept out of text.

A datasource's password is given in its configuration table either by the name of an
environment variable (``password_env = "SHOP_DB_PASSWORD"``) or as a Fernet token
(``password_encrypted = "gAAAA..."``) made with the key in ``ANALYSIS_SECRET_KEY``. That
variable may hold several comma-separated keys: the first encrypts, all of them decrypt
(:class:`cryptography.fernet.MultiFernet`), so keys can rotate. A plaintext ``password`` key is
refused.

The resolved password travels as a :class:`Secret`, whose ``repr`` and ``str`` never show it;
:func:`redact` removes it (and any ``user:password@`` part of a DSN) from driver messages.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from analysis.errors import DatasourceError

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet

__all__ = [
    "Secret",
    "SecretKeyError",
    "decrypt",
    "encrypt",
    "multi_fernet",
    "redact",
    "resolve_password",
]

_DSN_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*):[^@\s]*@", re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


class SecretKeyError(DatasourceError):
    """``ANALYSIS_SECRET_KEY`` is missing or malformed, or a token does not decrypt with it."""


class Secret:
    """A string that does not show itself: ``repr``/``str`` print ``'***'``.

    Parameters
    ----------
    value
        The secret text; read it back with :meth:`reveal`.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret text, for handing to a driver and nothing else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


def multi_fernet(secret_key: str | None) -> MultiFernet:
    """The MultiFernet for ``secret_key`` (comma-separated Fernet keys, the first encrypts).

    Raises
    ------
    SecretKeyError
        When no key is given or a key is not a valid Fernet key.
    """
    from cryptography.fernet import Fernet, MultiFernet

    keys = [k.strip() for k in (secret_key or "").split(",") if k.strip()]
    if not keys:
        raise SecretKeyError(
            "ANALYSIS_SECRET_KEY is not set: it must hold the Fernet key that encrypts datasource "
            "passwords (generate one with `analysis datasource genkey`)."
        )
    fernets = []
    for i, key in enumerate(keys, 1):
        try:
            fernets.append(Fernet(key.encode("ascii")))
        except (ValueError, UnicodeEncodeError) as exc:
            raise SecretKeyError(
                f"Key {i} of ANALYSIS_SECRET_KEY is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes)."
            ) from exc
    return MultiFernet(fernets)


def encrypt(password: str, secret_key: str | None) -> str:
    """Encrypt ``password`` with the first key of ``secret_key``; return the Fernet token."""
    return multi_fernet(secret_key).encrypt(password.encode("utf-8")).decode("ascii")


def decrypt(token: str, secret_key: str | None) -> Secret:
    """Decrypt a Fernet ``token`` with any key of ``secret_key``.

    Raises
    ------
    SecretKeyError
        When the token is malformed or was made with none of the keys.
    """
    from cryptography.fernet import InvalidToken

    try:
        return Secret(multi_fernet(secret_key).decrypt(token.encode("ascii")).decode("utf-8"))
    except (InvalidToken, UnicodeError) as exc:
        raise SecretKeyError(
            "the encrypted password does not decrypt with any key in ANALYSIS_SECRET_KEY "
            "(wrong key, or the token is damaged)"
        ) from exc


def resolve_password(
    name: str, config: Mapping[str, Any], *, secret_key: str | None, environ: Mapping[str, str]
) -> Secret | None:
    """The password of datasource ``name`` from its configuration, or ``None`` when it has none.

    Parameters
    ----------
    name
        The datasource's name, for error messages.
    config
        Its configuration table: ``password_env`` or ``password_encrypted`` (not both).
    secret_key
        ``ANALYSIS_SECRET_KEY`` (one or more comma-separated Fernet keys).
    environ
        Where ``password_env`` is looked up.

    Raises
    ------
    DatasourceError
        A plaintext ``password``, both or malformed keys, an unset variable, or a token that
        does not decrypt. The message names the datasource, never the password.
    """
    if "password" in config:
        raise DatasourceError(
            f"Datasource {name!r}: a plaintext 'password' is not accepted; use password_env "
            "(an environment variable's name) or password_encrypted (`analysis datasource add`)."
        )
    env_name = config.get("password_env")
    token = config.get("password_encrypted")
    if env_name is not None and token is not None:
        raise DatasourceError(f"Datasource {name!r}: give password_env or password_encrypted, not both.")
    if env_name is not None:
        if not isinstance(env_name, str) or not env_name:
            raise DatasourceError(f"Datasource {name!r}: password_env must be a variable name.")
        value = environ.get(env_name)
        if value is None:
            raise DatasourceError(
                f"Datasource {name!r}: environment variable {env_name} (its password_env) is not set."
            )
        return Secret(value)
    if token is not None:
        if not isinstance(token, str) or not token:
            raise DatasourceError(f"Datasource {name!r}: password_encrypted must be a Fernet token string.")
        try:
            return decrypt(token, secret_key)
        except SecretKeyError as exc:
            raise SecretKeyError(f"Datasource {name!r}: {exc.message}.") from None
    return None


def redact(text: str, secrets: Iterable[Secret | str | None] = ()) -> str:
    """``text`` with every given secret and any DSN password replaced by ``***``.

    Both the secret as is and its URL-encoded form are removed, as are ``scheme://user:pw@``
    and ``password=...`` fragments, whatever the password.
    """
    for secret in secrets:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if not value:
            continue
        for form in {value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)}:
            text = text.replace(form, "***")
    text = _DSN_PASSWORD.sub(r"\g<scheme>:***@", text)
    return _KV_PASSWORD.sub(r"\g<key>***", text)
