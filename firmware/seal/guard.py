# Policy between the inputs, the permits, the journal and the lock: what a press becomes, when
# the lock may open, and how every journal or chip fault fails closed (lock shut, alarm raised,
# and a trace in the journal's `state` of the record that could not be made).
# The guard owns its alarms and flags; the link asks for them when it wakes (the `wake` event).
from micropython import const

from seal.journal import JournalFull

# Wire numbers of sealproto (SPEC §4, §7) as const: a name imported from there costs RAM.
# firmware/tests/test_wire_constants.py checks them against sealproto.
_AL_CHIP_FAULT = const(8)
_AL_CLOCK_UNSET = const(6)
_AL_FORCED_STAMP = const(1)
_AL_JOURNAL_FAULT = const(5)
_AL_JOURNAL_FULL = const(4)
_AL_LOW_BATTERY = const(3)
_AL_RESERVE_EXHAUSTED = const(10)
_AL_ROLLBACK = const(7)
_AL_TAMPER = const(2)
_CA_MISSING_SHIFT = const(8)
_CA_TORN = const(1)
_F_CHIP_FAULT = const(64)
_F_CLOCK_UNSET = const(16)
_F_JOURNAL_FULL = const(8)
_F_LOCKED = const(1)
_F_LOW_BATTERY = const(4)
_F_PERMIT_ACTIVE = const(32)
_F_RESERVE_EXHAUSTED = const(128)
_F_TAMPERED = const(2)
_KIND_ALARM = const(5)
_KIND_FORCED = const(1)
_KIND_IMPRESSION = const(0)
_KIND_LOW_BATTERY = const(3)
_KIND_REBOOT = const(4)
_KIND_TAMPER = const(2)
_KIND_UNRECORDED = const(6)
_PE_COUNT = const(2)
_PE_ID = const(1)
_PE_NOT_AFTER = const(4)
_PE_NOT_BEFORE = const(3)
_PE_OPERATOR = const(5)
_PE_OPERATORS = const(6)
_OPERATOR = const(14)
_PERMIT = const(8)
_R_BAD_FIELD = const(1)
_R_BUSY = const(5)
_R_NO_TIME = const(4)
_R_OK = const(0)
_REVOKE = const(9)
_RV_PERMIT = const(1)
_TI_TIME = const(1)
_TIME = const(10)

# Recover from low battery only well above the threshold, so a sagging cell raises one alarm.
_BATTERY_HYSTERESIS_MV = const(100)
# Alarms wait for a session, the oldest dropped beyond this (SPEC §12).
_MAX_ALARMS = const(8)


class Guard:
    def __init__(self, journal, recorder, permits, lock, led, report, clock, set_time_ms,
                 low_battery_mv, wake):
        self._journal = journal
        self._recorder = recorder
        self._permits = permits
        self._lock = lock
        self._led = led
        self._report = report
        self._clock = clock
        self._set_time_ms = set_time_ms
        self._low_battery_mv = low_battery_mv
        # Set whenever the link has something new to send: a record, an alarm, a changed flag.
        self._wake = wake
        # (code, time_s, detail) of each alarm not yet sent, oldest first; the link takes them.
        self.alarms = []
        self.unlocked = False
        self.permit = 0
        self.case_open = False
        # Sticky until reboot, as STATUS reports it (SPEC §4.3).
        self.tampered = False
        self.low_battery = False
        self.faulted = False
        # The chip failed its last command: no record can be made until it answers again.
        self.chip_fault = False
        self._full_alarmed = False
        self._clock_alarmed = False
        lock.value(0)
        led.value(0)
        report("lock", 0)
        report("counter", journal.next_counter - 1)

    def raise_alarm(self, code, detail=0):
        self._report("alarm", code)
        alarms = self.alarms
        if len(alarms) >= _MAX_ALARMS:
            alarms.pop(0)
        alarms.append((code, self._clock(), detail))
        self._wake.set()

    def record_alarm(self, code, detail=0):
        # An alarm that must reach the gateway the seal is enrolled with, not only whoever
        # holds the session now: raised, and journaled as an ALARM record (SPEC §12).
        self.raise_alarm(code, detail)
        self._record(_KIND_ALARM, cause=code, alarm=code)

    def boot(self, reset_cause):
        # The boot's first record (SPEC §12): a REBOOT when the boot was unclean (the MCU's
        # reset cause, a torn record, records the chip counted that the journal lacks), then
        # what earlier boots could not record.
        cause = reset_cause | (_CA_TORN if self._journal.discarded else 0)
        found = 0
        try:
            found = self._recorder.audit()
        except OSError:
            self._chip_failed(_KIND_REBOOT)
        if found:
            self.raise_alarm(_AL_ROLLBACK, found >> _CA_MISSING_SHIFT)
        # Not recorded, the missing records are found again at the next boot.
        if cause | found and not self.chip_fault:
            self._record(_KIND_REBOOT, cause=cause | found, alarm=_AL_ROLLBACK if found else 0,
                         owed=False)
        if not (self.faulted or self.chip_fault):
            self._catch_up()

    def _record(self, kind, permit=0, operator=0, cause=None, alarm=0, owed=True):
        # The record's counter once it counts, else 0 with its alarm raised and its trace left
        # in `state`: a press (IMPRESSION, FORCED) adds to `unrecorded`, any other record sets
        # the bit of `alarm`, the code it would have shown as. Records owed from before go first.
        if self.faulted:
            self._recover()
        journal = self._journal
        recorder = self._recorder
        if self.faulted:
            self.raise_alarm(_AL_JOURNAL_FAULT, kind)
        elif not owed or self._catch_up():
            try:
                counter = recorder.record(kind, permit, operator, cause)
            except JournalFull:
                # A press on a journal with no room at all is counted and alarmed below; an
                # owed record already has its trace.
                if kind < _KIND_ALARM and (kind > _KIND_FORCED or not journal.exhausted):
                    self.raise_alarm(_AL_JOURNAL_FULL, kind)
                counter = 0
            except (OSError, ValueError):
                if recorder.chip_failed:
                    self._chip_failed(kind)
                else:
                    self.faulted = True
                    self.raise_alarm(_AL_JOURNAL_FAULT, kind)
                counter = 0
            if counter:
                if recorder.lag:
                    # Journaled, so it counts; the chip did not count it: the next record
                    # waits for it.
                    self._chip_failed(kind)
                else:
                    self.chip_fault = False
                self._report("counter", counter)
                self._wake.set()
                return counter
        press = kind <= _KIND_FORCED
        if press or alarm:
            try:
                journal.missed(0 if press else alarm)
                if press and journal.exhausted:
                    self.raise_alarm(_AL_RESERVE_EXHAUSTED, journal.unrecorded)
            except OSError:
                # The journal's `state` cannot be written either: the live alarm is all there is.
                if not self.faulted:
                    self.faulted = True
                    self.raise_alarm(_AL_JOURNAL_FAULT, kind)
        return 0

    def _catch_up(self):
        # Records owed, oldest first: the count of presses that got none (UNRECORDED), one
        # ALARM record per alarm whose own record could not be made. False while one fails.
        journal = self._journal
        if journal.unrecorded and not self._record(_KIND_UNRECORDED, cause=journal.unrecorded,
                                                   owed=False):
            return False
        code = 0
        while journal.pending >> code:
            if journal.pending >> code & 1 and not self._record(_KIND_ALARM, cause=code,
                                                                owed=False):
                return False
            code += 1
        return True

    def _chip_failed(self, kind):
        self.chip_fault = True
        self.raise_alarm(_AL_CHIP_FAULT, kind)
        try:
            self._journal.missed(_AL_CHIP_FAULT)
        except OSError:
            self.faulted = True

    def _recover(self):
        # A failed append leaves the journal's tail unknown: reopen it (the same recovery as
        # after a power cut) and continue from what is really on flash.
        try:
            self._journal.open()
        except OSError:
            return
        self.faulted = False

    async def on_press(self, level=1):
        if not level:
            return
        # Decided now, not at the last tick: the permit may have expired or run out since.
        self.update_lock()
        if self.unlocked:
            if self._record(_KIND_IMPRESSION, self.permit, self._permits.operator):
                self._permits.use()
        elif self._record(_KIND_FORCED):
            self.raise_alarm(_AL_FORCED_STAMP)
        self.update_lock()

    async def on_tamper(self, level):
        self.case_open = bool(level)
        if level:
            self.tampered = True
            self._record(_KIND_TAMPER, alarm=_AL_TAMPER)
            self.raise_alarm(_AL_TAMPER)
        self.update_lock()

    def check_battery(self, mv):
        if not self.low_battery and mv < self._low_battery_mv:
            self.low_battery = True
            self._record(_KIND_LOW_BATTERY, alarm=_AL_LOW_BATTERY)
            self.raise_alarm(_AL_LOW_BATTERY, mv)
        elif self.low_battery and mv >= self._low_battery_mv + _BATTERY_HYSTERESIS_MV:
            self.low_battery = False
            self._wake.set()

    def update_lock(self):
        journal = self._journal
        if self.chip_fault:
            try:
                self._recorder.check_chip()
                self.chip_fault = False
                self._wake.set()
            except OSError:
                pass
        if (journal.unrecorded or journal.pending) and not (
                journal.exhausted or self.faulted or self.chip_fault):
            # Room again, or a chip that answers again: what is owed is recorded now.
            self._catch_up()
        full = journal.full
        if full != self._full_alarmed:
            self._full_alarmed = full
            self._wake.set()
            if full:
                # Alarms without a record of their own are journaled as ALARM records.
                self.raise_alarm(_AL_JOURNAL_FULL)
                self._record(_KIND_ALARM, cause=_AL_JOURNAL_FULL, alarm=_AL_JOURNAL_FULL)
        permit = 0
        if not (full or self.case_open or self.faulted or self.chip_fault):
            permit = self._permits.active()
        self.permit = permit
        unlocked = permit != 0
        if unlocked != self.unlocked:
            self.unlocked = unlocked
            self._lock.value(1 if unlocked else 0)
            self._led.value(1 if unlocked else 0)
            self._report("lock", 1 if unlocked else 0)
            self._wake.set()

    def set_time_ms(self, ms):
        if self._clock() == 0:
            self._wake.set()  # CLOCK_UNSET clears
        self._set_time_ms(ms)
        self.update_lock()

    def command(self, kind, msg):
        if kind in (_PERMIT, _REVOKE):
            code = self._permit_command(kind, msg)
        elif kind == _OPERATOR:
            # The operator table (SPEC §5.7), kept by the permits' Ident; a board with neither
            # keypad nor reader has none.
            ident = self._permits.ident
            if ident is None:
                return _R_BAD_FIELD
            try:
                code = ident.command(msg)
            except OSError:
                return _R_BUSY
        elif kind == _TIME:
            if msg[_TI_TIME] == 0:
                return _R_BAD_FIELD
            self.set_time_ms(msg[_TI_TIME])
            code = _R_OK
        else:
            return _R_BAD_FIELD
        self.update_lock()
        return code

    def _permit_command(self, kind, msg):
        # Permits are stored in the journal's `state`: a journal fault answers BUSY (the host
        # resends) and leaves the lock shut until the journal reopens.
        if self.faulted:
            self._recover()
        if self.faulted:
            return _R_BUSY
        try:
            if kind == _REVOKE:
                return self._permits.revoke(msg[_RV_PERMIT])
            code = self._permits.grant(msg[_PE_ID], msg[_PE_COUNT], msg[_PE_NOT_BEFORE],
                                       msg[_PE_NOT_AFTER], msg[_PE_OPERATOR],
                                       msg.get(_PE_OPERATORS, b""))
        except OSError:
            self.faulted = True
            self.raise_alarm(_AL_JOURNAL_FAULT, kind)
            return _R_BUSY
        if code == _R_NO_TIME:
            self.raise_alarm(_AL_CLOCK_UNSET)
            if not self._clock_alarmed:
                # Once a boot: a host that keeps asking must not fill the journal with these.
                self._clock_alarmed = True
                self._record(_KIND_ALARM, cause=_AL_CLOCK_UNSET, alarm=_AL_CLOCK_UNSET)
        return code

    def flags(self):
        flags = 0 if self.unlocked else _F_LOCKED
        if self.tampered:
            flags |= _F_TAMPERED
        if self.low_battery:
            flags |= _F_LOW_BATTERY
        if self._journal.full:
            flags |= _F_JOURNAL_FULL
        if self._clock() == 0:
            flags |= _F_CLOCK_UNSET
        if self._permits.installed():
            flags |= _F_PERMIT_ACTIVE
        if self.chip_fault:
            flags |= _F_CHIP_FAULT
        if self._journal.exhausted:
            flags |= _F_RESERVE_EXHAUSTED
        return flags

    def permit_left(self):
        return self._permits.left if self._permits.installed() else 0
