"""The Textual chat app (installed as edge_moe.tui). Not built yet: see the TUI issue."""
