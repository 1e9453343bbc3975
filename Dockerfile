FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PORT=3000 \
    DATABASE_URL=sqlite+aiosqlite:////data/delegate.db

RUN useradd --create-home --uid 10001 delegate \
    && mkdir /data && chown delegate:delegate /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY workers ./workers
RUN pip install .

USER delegate
VOLUME ["/data"]
EXPOSE 3000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"3000\")}/healthz', timeout=4)"

CMD ["delegate", "run"]
