"""Reading message content within bounds: MIME parts streamed from the spool, decoded text and links, archive listing, file types by magic bytes."""
