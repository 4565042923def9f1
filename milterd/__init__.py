"""milterd: a mail content filter for Postfix, as a pre-forked milter."""

__version__ = "0.1.0"
