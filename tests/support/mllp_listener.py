"""A real MLLP listener for the HL7 tests: hl7apy's ``MLLPServer`` (a threading TCP server)
on a free loopback port, keeping every ORU^R01 it receives (parsed by hl7apy) and answering
each with an ACK whose code the test chooses per message."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

#: ``ack_code(message number, 1-based) -> "AA" | "AE" | "AR"``
AckRule = Callable[[int], str]


class MllpListener:
    """``with MllpListener() as ris``: ``ris.destination`` ("RIS@127.0.0.1:port"), and
    ``ris.messages`` (ER7 text of each message received, in order)."""

    def __init__(self, app: str = "RIS", ack_code: AckRule | None = None):
        self.app = app
        self.ack_code = ack_code or (lambda n: "AA")
        self.messages: list[str] = []
        self.answers: list[str] = []
        self._lock = threading.Lock()
        listener = self

        class Handler(AbstractHandler):  # type: ignore[misc]
            def reply(self) -> str:
                return listener._reply(self.incoming_message)

        self._server = MLLPServer("127.0.0.1", 0, {"ORU^R01^ORU_R01": (Handler,)})
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _reply(self, text: str) -> str:
        with self._lock:
            self.messages.append(text)
            n = len(self.messages)
        code = self.ack_code(n)
        with self._lock:
            self.answers.append(code)
        incoming = parse_message(text, find_groups=False)
        ack = Message("ACK", version="2.5")
        ack.msh.msh_3 = self.app
        ack.msh.msh_5 = incoming.msh.msh_3.value
        ack.msh.msh_7 = time.strftime("%Y%m%d%H%M%S")
        ack.msh.msh_9 = "ACK^R01^ACK"
        ack.msh.msh_10 = f"ACK{n}"
        ack.msh.msh_11 = "P"
        ack.msa.msa_1 = code
        ack.msa.msa_2 = incoming.msh.msh_10.value
        return "\x0b" + str(ack.to_er7()) + "\x1c\x0d"

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def destination(self) -> str:
        return f"{self.app}@127.0.0.1:{self.port}"

    def parsed(self) -> list[Any]:
        """Every message received, parsed by hl7apy (groups found)."""
        return [parse_message(m, find_groups=True) for m in list(self.messages)]

    def start(self) -> "MllpListener":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "MllpListener":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
