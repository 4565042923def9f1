"""Type stub for ``tnefparse.properties`` (only what milterd uses)."""

MAPI_DISPLAY_NAME: int
MAPI_ATTACH_DATA_OBJ: int
MAPI_ATTACH_FILENAME: int
MAPI_ATTACH_LONG_FILENAME: int
