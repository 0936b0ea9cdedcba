"""Render: a Digest record → an OutgoingEmail (templates) → MIME bytes. Pure: no database, no network."""
