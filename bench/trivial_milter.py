"""The floor: a trivial pre-forked pymilter that answers every stage and adds two headers.

    python bench/trivial_milter.py SOCKET WORKERS

It negotiates what milterd negotiates (a reply at every stage, DATA and body
included), sets TCP_NODELAY on an inet listening socket, forks WORKERS
processes that share it, and does nothing else: no checks, no log.  Its row
in the benchmark shows what pymilter and libmilter themselves cost, so that
milterd's own cost is the difference.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import sys

import Milter
import milter


class Trivial(Milter.Base):
    """Accept everything; add X-Spam-Status and X-Spam-Score at end of message."""

    def negotiate(self, opts: list[int]) -> int:
        opts[0] &= Milter.ADDHDRS | Milter.CHGHDRS
        opts[1] &= Milter.P_NOUNKNOWN
        opts[2] = opts[3] = 0
        return Milter.CONTINUE

    def connect(self, hostname, family, hostaddr):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def hello(self, hostname):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def envfrom(self, sender, *params):  # type: ignore[no-untyped-def]
        self.size = 0
        return Milter.CONTINUE

    def envrcpt(self, recipient, *params):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def data(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def header(self, name, value):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def eoh(self):  # type: ignore[no-untyped-def]
        return Milter.CONTINUE

    def body(self, chunk):  # type: ignore[no-untyped-def]
        self.size += len(chunk)
        return Milter.CONTINUE

    def eom(self):  # type: ignore[no-untyped-def]
        self.addheader("X-Spam-Status", "No, score=0.0 required=5.0 tests=none")
        self.addheader("X-Spam-Score", "0.0")
        return Milter.CONTINUE


def main() -> int:
    spec, workers = sys.argv[1], int(sys.argv[2])
    Milter.factory = Trivial
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS)
    before = {int(n) for n in os.listdir("/proc/self/fd")}
    milter.setconn(spec)
    milter.setbacklog(128)
    # Register the callbacks as Milter.runmilter does, without serving yet.
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header(f, v))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: Milter.CONTINUE)
    milter.set_close_callback(Milter.close_callback)
    milter.register("trivial", data=lambda ctx: ctx.getpriv().data(), negotiate=Milter.negotiate_callback)
    milter.opensocket(True)
    if spec.startswith("inet"):
        for fd in {int(n) for n in os.listdir("/proc/self/fd")} - before:
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    sock = socket.socket(fileno=fd)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sock.detach()
            except OSError:
                continue
    else:
        os.chmod(spec.split(":", 1)[1], 0o666)
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            milter.main()
            os._exit(0)
        children.append(pid)

    def stop(*_args: object) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        signal.pause()


if __name__ == "__main__":
    sys.exit(main())
