"""The web face: StatsService over HTTP/1.1 and HTTP/2 for browsers, widgets, CDNs and curl."""
