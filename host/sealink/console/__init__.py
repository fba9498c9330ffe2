"""`sealink console`: the operators' web console, a consumer of MQTT only (issue 12).

`feed` is the live model (no web code: a terminal view reuses it), `store` the console's own
SQLite, `web` the pages, `service` runs them together. This facade imports none of the
console extra's libraries, so the CLI can name what is missing.
"""

from sealink.console.config import ConsoleConfig, ConsoleError, load_console_config
from sealink.console.roles import ROLES, role_at_least

__all__ = ["ROLES", "ConsoleConfig", "ConsoleError", "load_console_config", "role_at_least"]
