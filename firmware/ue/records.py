# A record as the node keeps it in its flash log: CBOR [device_id, ts_ms, body] (the priority
# and seq live in the log's own record header). One place for the format: the agent writes it,
# the uplink and the bench read it back.

from ue import cbor


def pack(device_id, ts_ms, body):
    return cbor.dumps([device_id, ts_ms, body])


def unpack(data):
    # [device_id, ts_ms, body]
    return cbor.loads(data)


class Batch:
    # The records of one message, decoded from their log payloads each time the payload
    # encoder iterates (it does twice): one decoded record in RAM at a time.
    def __init__(self, peeked):
        self.peeked = peeked

    def __iter__(self):
        for seq, prio, data in self.peeked:
            device_id, ts_ms, body = unpack(data)
            yield seq, prio, device_id, ts_ms, body
