"""Pure frame codecs of the tracker protocols: bytes in, values out, and back.

Each module decodes one protocol's frames into plain values and maps them to
``core.contract`` readings for a provisioned tracker; its encoder builds the same
frames (for the tests, the simulator and the benchmark). They import only the
standard library and ``core``: no sockets, no database, no clock (times are
passed in). A frame that breaks its protocol raises ``ContractError`` with a
stable reason code (``core.contract.REASONS``).
"""
