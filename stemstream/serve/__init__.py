"""stemstream.serve: the WebSocket server and its web page (``stemstream serve``)."""
