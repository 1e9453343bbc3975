# The Python line here, in .python-version and in the locks in requirements/ is one and the same.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=3000 \
    DATABASE_URL=sqlite+aiosqlite:////data/delegate.db

RUN useradd --create-home --uid 10001 delegate \
    && mkdir /data && chown delegate:delegate /data

WORKDIR /app
# Dependencies first, from the lock, so a code change does not reinstall them.
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY workers ./workers
RUN pip install --no-deps .

USER delegate
VOLUME ["/data"]
EXPOSE 3000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PORT\", \"3000\")}/healthz', timeout=4)"

CMD ["delegate", "run"]
