"""`etp-search serve`: the store's search behind a versioned HTTP API and a web page.

    engine.py   model, store and indexes loaded once; live snapshots of a growing store; a bounded
                worker pool with one torch and one FAISS thread per query
    uploads.py  an uploaded ECG file (WFDB, CinC, CPSC2018 .mat, NumPy) -> EcgRecord, never by a client path
    plots.py    record thumbnails (downsampled JSON for the page's canvas) and ECG-paper PNG/SVG
    security.py bind rule, bearer token, request-size limit, JSON errors
    schemas.py  the API's pydantic models (they drive the OpenAPI page at /docs)
    app.py      the FastAPI routes under /api/v1 and the static page at /
    client.py   a small Python client that mirrors ``Searcher`` over HTTP (httpx)

FastAPI and uvicorn come with the ``serve`` extra (``pip install 'etp-search[serve]'``); the client
needs only httpx.
"""

API_PREFIX = "/api/v1"
