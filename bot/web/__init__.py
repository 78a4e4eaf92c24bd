"""The HTTP side: the FastAPI app, the REST routers, the agent console and the API docs."""
