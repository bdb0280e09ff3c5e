"""Authentication and ACL plug-ins for the amqtt fallback broker, reading Mosquitto's files.

amqtt 0.12.1's own ``FileAuthPlugin`` reads Argon2 or ``$6$`` hashes, not the ``$7$`` PBKDF2 hashes
of Mosquitto's password file, and its ``TopicAccessControlListPlugin`` takes its lists from the
broker's YAML, read once. These two take the same ``passwd`` and ``acl`` files that
``sensing.access`` makes for Mosquitto, and reread them when they change, so issuing or rotating a
secret needs no restart here either. As with Mosquitto's ``use_username_as_clientid``, a client's
id must be its username: no one can take over another's session by borrowing its client id
(amqtt cannot rewrite the id, so it refuses the connection instead).

The broker imports this module by name (see ``citywatch.embedded``), in its own process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from sensing.access import Rule, parse_acl, parse_passwords, permits
from sensing.credentials import verify_secret

_T = TypeVar("_T")


class _Watched(Generic[_T]):
    """A file parsed again whenever it is replaced (citywatch writes a new file and renames it
    into place) or its modification time or size changes."""

    def __init__(self, path: Path, parse: Callable[[str], _T]) -> None:
        self.path = path
        self._parse = parse
        self._stamp: tuple[int, int, int] | None = None
        self._value: _T | None = None

    def get(self) -> _T | None:
        try:
            st = os.stat(self.path)
        except OSError:
            self._stamp, self._value = None, None  # no file: nobody gets in
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._value = self._parse(self.path.read_text(encoding="utf-8"))
            self._stamp = stamp
        return self._value


class PasswordFileAuth(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped here
    """Username and secret against a Mosquitto password file; client id must be the username."""

    @dataclass
    class Config:
        password_file: str = ""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._file: _Watched[dict[str, str]] = _Watched(Path(self.config.password_file),
                                                        parse_passwords)

    async def authenticate(self, *, session: Session) -> bool | None:
        if not session.username or session.password is None:
            return False
        if session.client_id != session.username:
            self.context.logger.warning("refused %s: the client id must be the username %s",
                                        session.client_id, session.username)
            return False
        users = self._file.get() or {}
        hashed = users.get(session.username)
        return hashed is not None and verify_secret(session.password, hashed)


class AclFileTopics(BaseTopicPlugin):  # type: ignore[misc]
    """Publish and subscribe checked against a Mosquitto ACL file (the subset citywatch writes)."""

    @dataclass
    class Config:
        acl_file: str = ""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._file: _Watched[dict[str, list[Rule]]] = _Watched(Path(self.config.acl_file),
                                                               parse_acl)

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool | None:
        if session is None or not session.username or not topic:
            return False
        rules = (self._file.get() or {}).get(session.username, [])
        if action == Action.PUBLISH:
            return permits(rules, "write", topic)
        # Subscribing and receiving both need read access.
        return permits(rules, "read", topic)
