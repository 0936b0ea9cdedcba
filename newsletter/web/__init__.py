"""Web edge: the pages behind the links in emails. For now only feedback; the web front comes later."""
