"""Type stub for ``tnefparse.mapi`` (only what milterd uses)."""

from typing import Any

IMESSAGE_SIG: bytes

class TNEFMAPI_Attribute:
    attr_type: int
    name: int
    raw_data: Any
    @property
    def data(self) -> Any: ...

def decode_mapi(data: bytes, codepage: str = ...) -> list[TNEFMAPI_Attribute]: ...
