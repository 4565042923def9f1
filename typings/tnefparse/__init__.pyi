"""Type stub for the ``tnefparse`` package (only what milterd uses: see mapi.pyi, properties.pyi)."""

class TNEF:
    LVL_ATTACHMENT: int
    ATTATTACHDATA: int
    ATTATTACHTITLE: int
    ATTATTACHRENDDATA: int
    ATTATTACHMENT: int
    ATTOEMCODEPAGE: int
