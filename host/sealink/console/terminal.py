"""`sealink watch`: the console's live view in a terminal, for the gateway box.

The same `Feed` as the web console (so the same checks: a record is shown only once its
countersignature verified, a status or alarm only once its signature did, and what fails is
counted as rejected, never shown as valid), drawn with textual: the seals' health, the latest
impressions and the alarms, updated as they arrive.
"""

from __future__ import annotations

import datetime
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import BindingType
from textual.widgets import DataTable, Footer, Header, Static

from sealink.console.feed import Alarm, Feed, Health, Impression, Rejected, Update

__all__ = ["WatchApp"]

_ROWS = 500  # impressions and alarms kept on screen, the oldest dropped first

_HEALTH_COLUMNS = (
    "device",
    "state",
    "battery mV",
    "backlog",
    "journal free",
    "firmware",
    "gateway",
    "last status",
)
_IMPRESSION_COLUMNS = ("received", "device", "counter", "kind", "permit", "operator", "verified")
_ALARM_COLUMNS = ("time", "device", "what", "detail")


def _clock(time_ms: int) -> str:
    return datetime.datetime.fromtimestamp(time_ms / 1000).strftime("%H:%M:%S")


def _state(health: Health) -> str:
    if health.quarantined:
        return "QUARANTINED"
    if health.online:
        return "online"
    reason = health.get("offline_reason")
    return f"offline ({reason})" if reason else "offline"


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


class WatchApp(App[None]):
    """Follows one feed until the user quits (q)."""

    TITLE = "sealink watch"
    BINDINGS: ClassVar[list[BindingType]] = [("q", "quit", "Quit")]
    CSS = """
    DataTable { height: 1fr; }
    #devices { height: auto; max-height: 40%; }
    #summary { height: 1; padding: 0 1; }
    """

    def __init__(self, feed: Feed) -> None:
        super().__init__()
        self._feed = feed
        self.rejected = 0
        self.last_rejection = ""

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting to the broker...", id="summary")
        yield DataTable(id="devices", cursor_type="row")
        yield DataTable(id="impressions", cursor_type="row")
        yield DataTable(id="alarms", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        for table_id, columns in (
            ("devices", _HEALTH_COLUMNS),
            ("impressions", _IMPRESSION_COLUMNS),
            ("alarms", _ALARM_COLUMNS),
        ):
            table = self.table(table_id)
            for column in columns:
                table.add_column(column, key=column)
        self.run_worker(self._follow(), name="feed", exclusive=True)

    def table(self, name: str) -> DataTable[str]:
        """One of the three tables: devices, impressions, alarms."""
        return self.query_one(f"#{name}", DataTable)

    async def _follow(self) -> None:
        async with self._feed:
            self._summary()
            async for update in self._feed.subscribe():
                self.show(update)

    def show(self, update: Update) -> None:
        if isinstance(update, Impression):
            self._impression(update)
        elif isinstance(update, Alarm):
            self._alarm(update)
        elif isinstance(update, Health):
            self._health(update)
        elif isinstance(update, Rejected):
            self.rejected += 1
            self.last_rejection = f"{update.topic}: {update.reason}"
        self._summary()

    def _summary(self) -> None:
        gateways = (
            ", ".join(f"{g.gateway} {g.state}" for g in self._feed.gateways.values())
            or "no gateway heard yet"
        )
        line = f"broker {'up' if self._feed.connected else 'DOWN'} | {gateways}"
        if self.rejected:
            line += f" | REJECTED {self.rejected} (last: {self.last_rejection})"
        self.query_one("#summary", Static).update(line)

    def _health(self, health: Health) -> None:
        row = (
            health.device,
            _state(health),
            _cell(health.get("battery_mv")),
            _cell(health.get("backlog")),
            _cell(health.get("journal_free")),
            _cell(health.get("firmware")),
            health.gateway,
            _clock(health.time_ms),
        )
        table = self.table("devices")
        if health.device in table.rows:
            table.remove_row(health.device)
        table.add_row(*row, key=health.device)
        table.sort("device")

    def _impression(self, record: Impression) -> None:
        row = (
            _clock(record.received_ms),
            record.device,
            str(record.counter),
            record.kind_name,
            str(record.permit),
            str(record.operator),
            "countersignature ok",
        )
        self._append(self.table("impressions"), f"{record.device}:{record.counter}", row)

    def _alarm(self, alarm: Alarm) -> None:
        detail = alarm.body.get("detail") or ""
        row = (_clock(alarm.time_ms), alarm.device, alarm.what, str(detail))
        self._append(self.table("alarms"), alarm.key, row)

    @staticmethod
    def _append(table: DataTable[str], key: str, row: tuple[str, ...]) -> None:
        if key in table.rows:
            return
        table.add_row(*row, key=key)
        while table.row_count > _ROWS:
            table.remove_row(next(iter(table.rows)))
        table.move_cursor(row=table.row_count - 1)
