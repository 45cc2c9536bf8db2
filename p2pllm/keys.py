"""Where a signing key comes from: a keystore file (password from env or prompt), a private key in an
environment variable, or anvil's well-known dev mnemonic. Keys are never printed or logged."""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_CHAIN_ID = 31337


class KeyError_(ValueError):
    """The key source is missing, unreadable, or the password is wrong."""


@dataclass(frozen=True)
class KeySource:
    """How to obtain the account; exactly one of the fields is used, in this order."""

    keystore: Path | None = None
    password_env: str = "P2PLLM_KEYSTORE_PASSWORD"
    private_key_env: str | None = None
    dev_account: int | None = None


def dev_account(index: int) -> LocalAccount:
    """Anvil's dev account `index` (derived from its public test mnemonic; for local networks only)."""
    if not 0 <= index < 1000:
        raise KeyError_(f"dev account index must be in [0, 1000), got {index}")
    Account.enable_unaudited_hdwallet_features()
    return Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")


def _password(env: str, prompt: str) -> str:
    password = os.environ.get(env)
    if password is not None:
        return password
    if not os.isatty(0):
        raise KeyError_(f"no password: set {env} or run in a terminal to be prompted")
    return getpass.getpass(prompt)


def load_account(source: KeySource) -> LocalAccount:
    if source.keystore is not None:
        try:
            encrypted = json.loads(Path(source.keystore).read_text())
        except (OSError, ValueError) as exc:
            raise KeyError_(f"cannot read keystore {source.keystore}: {exc}") from exc
        try:
            key = Account.decrypt(encrypted, _password(source.password_env, f"password for {source.keystore}: "))
        except ValueError as exc:
            raise KeyError_(f"cannot decrypt keystore {source.keystore}: wrong password?") from exc
        return Account.from_key(key)
    if source.private_key_env is not None:
        raw = os.environ.get(source.private_key_env)
        if not raw:
            raise KeyError_(f"environment variable {source.private_key_env} is not set")
        try:
            return Account.from_key(raw.strip())
        except (ValueError, TypeError) as exc:
            raise KeyError_(f"{source.private_key_env} does not hold a valid private key") from exc
    if source.dev_account is not None:
        return dev_account(source.dev_account)
    raise KeyError_("no key given: use --keystore FILE, --private-key-env VAR or --dev-account N (anvil)")


def create_keystore(path: Path, password: str) -> str:
    """Write a new encrypted keystore (mode 0600); returns the address. Refuses to overwrite."""
    if path.exists():
        raise KeyError_(f"{path} already exists; refusing to overwrite a key")
    account = Account.create()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(Account.encrypt(account.key, password), handle)
    return account.address


def import_keystore(path: Path, private_key: str, password: str) -> str:
    """Encrypt an existing private key into a new keystore file; returns the address."""
    if path.exists():
        raise KeyError_(f"{path} already exists; refusing to overwrite a key")
    try:
        account = Account.from_key(private_key.strip())
    except (ValueError, TypeError) as exc:
        raise KeyError_("not a valid private key") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(Account.encrypt(account.key, password), handle)
    return account.address
