-- Messages the application composes itself (dionysus-rb's responder call: several events in
-- one message, records as their own JSON, tombstones with explicit keys): the row carries the
-- message's value, as the JSON text to send (text keeps the key order the wire needs), and
-- its Kafka key. NULL for the rows the relay builds from the current record.
ALTER TABLE dionysus_outbox ADD COLUMN message TEXT, ADD COLUMN message_key TEXT;
