# headend services image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY headend ./headend
COPY ingest ./ingest
COPY prepaid ./prepaid
COPY control ./control
COPY simulators ./simulators
COPY api ./api
COPY migrations ./migrations
COPY scenarios ./scenarios
RUN pip install --no-cache-dir -e .
ENV HEADEND_MIGRATIONS_DIR=/app/migrations
ENTRYPOINT ["headend"]
