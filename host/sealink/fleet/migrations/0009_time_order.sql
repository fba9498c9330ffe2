-- Records filtered by time only are paged in the order they were received (issue 14): the
-- keyset (received_ms, device, counter) is unique, and this index walks it from any cursor.
-- It also serves every lookup records_received served (its leading column), so that one goes.
CREATE INDEX records_received_key ON records (received_ms, device, counter);
DROP INDEX records_received;
