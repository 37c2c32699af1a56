"""The I/O around the rules: aiohttp server, upstream client, collapsing."""
