"""The milter edge: pymilter's callbacks (adapter), the pre-forking supervisor, and the in-process MTA stand-in that `milterd check` drives the adapter with."""
