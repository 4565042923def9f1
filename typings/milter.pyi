"""Type stub for pymilter's C module ``milter`` (only what milterd uses)."""

from typing import Any, Callable

CONTINUE: int
REJECT: int
DISCARD: int
ACCEPT: int
TEMPFAIL: int
SKIP: int
NOREPLY: int
SUCCESS: int
FAILURE: int
VERSION: int

ADDHDRS: int
CHGBODY: int
MODBODY: int
ADDRCPT: int
ADDRCPT_PAR: int
DELRCPT: int
CHGHDRS: int
QUARANTINE: int
CHGFROM: int
SETSYMLIST: int
CURR_ACTS: int
V1_ACTS: int
V2_ACTS: int
ALL_OPTS: int

P_RCPT_REJ: int
P_NR_CONN: int
P_NR_HELO: int
P_NR_MAIL: int
P_NR_RCPT: int
P_NR_DATA: int
P_NR_UNKN: int
P_NR_EOH: int
P_NR_BODY: int
P_NR_HDR: int
P_NOCONNECT: int
P_NOHELO: int
P_NOMAIL: int
P_NORCPT: int
P_NOBODY: int
P_NOHDRS: int
P_NOEOH: int
P_NOUNKNOWN: int
P_NODATA: int
P_SKIP: int
P_HDR_LEADSPC: int

class error(Exception): ...

class _MilterContext:
    """libmilter's per-connection context (not importable at runtime)."""

    def getpriv(self) -> Any: ...
    def setpriv(self, priv: Any) -> None: ...
    def setsymlist(self, stage: int, macros: str) -> None: ...

_Callback = Callable[..., int]

def setconn(conn: str) -> None: ...
def setbacklog(backlog: int) -> None: ...
def settimeout(timeout: int) -> None: ...
def opensocket(rmsock: bool) -> None: ...
def main() -> None: ...
def stop() -> None: ...
def getversion() -> tuple[int, int, int]: ...
def getdiag() -> str: ...
def setdbg(level: int) -> None: ...
def set_exception_policy(policy: int) -> None: ...
def set_flags(flags: int) -> None: ...
def set_connect_callback(func: _Callback) -> None: ...
def set_helo_callback(func: _Callback) -> None: ...
def set_envfrom_callback(func: _Callback) -> None: ...
def set_envrcpt_callback(func: _Callback) -> None: ...
def set_header_callback(func: _Callback) -> None: ...
def set_eoh_callback(func: _Callback) -> None: ...
def set_body_callback(func: _Callback) -> None: ...
def set_eom_callback(func: _Callback) -> None: ...
def set_abort_callback(func: _Callback) -> None: ...
def set_close_callback(func: _Callback) -> None: ...
def register(
    name: str,
    data: _Callback | None = ...,
    unknown: _Callback | None = ...,
    negotiate: _Callback | None = ...,
) -> None: ...
