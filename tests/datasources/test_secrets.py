"""Passwords: env or Fernet (MultiFernet rotation), never shown by repr, redacted from messages."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from analysis.errors import DatasourceError
from analysis.sources.secrets import Secret, SecretKeyError, decrypt, encrypt, redact, resolve_password

PASSWORD = "p@ss:w/rd's"


def test_secret_hides_itself() -> None:
    secret = Secret(PASSWORD)
    assert PASSWORD not in repr(secret)
    assert PASSWORD not in str(secret)
    assert PASSWORD not in repr({"password": secret})
    assert secret.reveal() == PASSWORD


def test_multifernet_decrypts_with_any_key_and_encrypts_with_the_first() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = encrypt(PASSWORD, old)
    assert decrypt(token, f"{new},{old}").reveal() == PASSWORD
    assert decrypt(encrypt(PASSWORD, f"{new},{old}"), new).reveal() == PASSWORD
    with pytest.raises(SecretKeyError, match="does not decrypt") as info:
        decrypt(token, new)
    assert PASSWORD not in str(info.value)


def test_missing_or_malformed_key() -> None:
    with pytest.raises(SecretKeyError, match="ANALYSIS_SECRET_KEY is not set"):
        encrypt(PASSWORD, None)
    with pytest.raises(SecretKeyError, match="Key 1 of ANALYSIS_SECRET_KEY is not a valid Fernet key"):
        encrypt(PASSWORD, "not-a-key")


def test_resolve_password_sources_and_errors() -> None:
    key = Fernet.generate_key().decode()
    env = {"DB_PW": PASSWORD}
    assert resolve_password("w", {"password_env": "DB_PW"}, secret_key=None, environ=env) == Secret(PASSWORD)
    token = encrypt(PASSWORD, key)
    assert resolve_password("w", {"password_encrypted": token}, secret_key=key, environ={}) == Secret(
        PASSWORD
    )
    assert resolve_password("w", {}, secret_key=None, environ={}) is None
    with pytest.raises(DatasourceError, match="'w': environment variable NOPE"):
        resolve_password("w", {"password_env": "NOPE"}, secret_key=None, environ={})
    with pytest.raises(DatasourceError, match="plaintext 'password' is not accepted") as info:
        resolve_password("w", {"password": PASSWORD}, secret_key=None, environ={})
    assert PASSWORD not in str(info.value)
    other = Fernet.generate_key().decode()
    with pytest.raises(DatasourceError, match="'w': the encrypted password does not decrypt"):
        resolve_password("w", {"password_encrypted": token}, secret_key=other, environ={})


def test_redact_removes_the_password_and_dsn_passwords() -> None:
    text = (
        f"failed for postgresql://bob:{PASSWORD}@db:5432/x and mysql://u:other-secret@h/x, "
        f"password={PASSWORD} host=db; raw {PASSWORD} and quoted p%40ss%3Aw%2Frd%27s"
    )
    out = redact(text, [Secret(PASSWORD)])
    assert PASSWORD not in out
    assert "other-secret" not in out
    assert "p%40ss" not in out
    assert "postgresql://bob:***@db:5432/x" in out
