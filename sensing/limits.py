"""Size limits shared by the decoder, the engine's MQTT link and the embedded broker: one source.

A message the decoder would refuse for its size should never be carried in full: the broker refuses
the packet from the publisher (its ``max_packet_size``) and tells the engine's session no more than
the engine accepts (MQTT 5 Maximum Packet Size in our CONNECT).
"""

from __future__ import annotations

from typing import Final

# The largest payload the decoder accepts. Contract payloads are small JSON objects (a reading is
# about 100 bytes, a camera event with its track a few kilobytes): 64 KiB is a wide margin.
MAX_PAYLOAD_BYTES: Final = 64 * 1024

# The MQTT framing around a payload: fixed header (at most 5 bytes), topic (2 bytes of length and
# at most about 120 for a contract topic: city/{kind <= 32}/{device_id <= 64}/telemetry), packet
# identifier (2) and properties (contract messages use none, a few dozen bytes leaves room).
PACKET_OVERHEAD_BYTES: Final = 1024

# The embedded broker's max_packet_size: a publisher's larger packet is refused by the broker.
MAX_PACKET_BYTES: Final = MAX_PAYLOAD_BYTES + PACKET_OVERHEAD_BYTES

# The Maximum Packet Size the engine announces in its CONNECT. A little more than the broker takes
# from publishers: a publisher may send its topic as an MQTT 5 topic alias, which the broker spells
# out again when it forwards the message, and a packet the broker accepted must reach us (to be
# stored or dead-lettered) rather than be dropped silently on the way. Mosquitto drops a message
# larger than a subscriber's Maximum Packet Size without counting it in $SYS.
ENGINE_MAX_PACKET_BYTES: Final = MAX_PACKET_BYTES + 256
